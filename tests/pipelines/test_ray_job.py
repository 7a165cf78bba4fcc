"""The Ray runner on a real two-node cluster: two ``ray start --block`` processes on loopback
(:mod:`ray_nodes`), owned by this module and stopped by pid at the end. Jobs reach it through
``RAY_ADDRESS``."""

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray
from ray_nodes import RayNodes

from pipelines import ray_stream
from pipelines.cluster import connect
from pipelines.errors import SpecError
from pipelines.events import CheckpointSaved, PlanChosen, Progress, Resumed, StageStarted, WorkerStarted
from pipelines.job import run_job, use_ray
from pipelines.preprocessing import vocabulary
from pipelines.ray_job import RayOptions, run_ray_job
from pipelines.spec import DatasetSpec, load_spec
from pipelines.stream import SplitRule, open_parquet, scan_statistics
from pipelines.synth import write_synth

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node (2 CPUs each) on 127.0.0.1.

    Token authentication is off for this throwaway cluster: the driver (this process) imported
    Ray before the fixture could set a token, and Ray reads its auth mode once, at import.
    """
    assert not ray.is_initialized()
    nodes = RayNodes(Path(tempfile.mkdtemp(prefix="sa-ray-", dir="/tmp")))
    temp = nodes.temp
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "SEQATTN_HOME")}
    os.environ["SEQATTN_HOME"] = str(temp / "home")
    try:
        nodes.start_head(num_cpus=2)
        nodes.add_worker(num_cpus=2)
        os.environ["RAY_ADDRESS"] = nodes.address
        assert connect() is False  # RAY_ADDRESS set: joined, not started
        deadline = time.time() + 90
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if time.time() > deadline:
                raise RuntimeError(f"the worker node did not join: {nodes.log(nodes.procs[1])}")
            time.sleep(0.5)
        yield {"address": nodes.address, "home": temp / "home", "pids": [p.pid for p in nodes.procs]}
    finally:
        ray.shutdown()
        nodes.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    # Four noise columns of at most 1,000 ids: the eight planted features then win by a wide margin
    # (gate scores >= 0.26 against <= 0.09 over three seeds), so "the same features" is a fair test.
    truth = write_synth(out, rows=30_000, seed=0, n_noise=4, files=3)
    return out, truth


def _spec(path, workers, reader="auto", **training):
    return load_spec({"name": "ray-t", "dataset": {"path": str(path), "label": "label", "reader": reader},
                      "selection": {"features": 8},
                      "training": {"epochs": 2, "batch_size": 512, "num_workers": workers, **training}})


def _kept(fs):
    return {"rel_0" if f.name == "dup_rel_0" else f.name for f in fs.features}  # exact copies share a slot


@pytest.fixture(scope="module")
def two_workers(cluster, planted):
    path, _ = planted
    events = []
    fs = run_ray_job(_spec(path, 2), on_event=events.append, job_id="j-two",
                     options=RayOptions(placement_strategy="SPREAD", run_name="two"))
    return fs, events


def test_tables_are_sharded_across_the_two_workers(two_workers):
    _, events = two_workers
    plan = next(e for e in events if isinstance(e, PlanChosen) and e.stage == "selection")
    assert plan.world_size == 2
    kinds = {t["sharding_type"] for t in plan.tables.values()}
    assert kinds <= {"table_wise", "column_wise"}  # CPU + gloo: no row_wise, no replicas
    whole_tables = [t["ranks"] for t in plan.tables.values() if t["sharding_type"] in ("table_wise", "column_wise")]
    # Really sharded: some tables live only on worker 0, others only on worker 1.
    assert [0] in whole_tables and [1] in whole_tables


def test_workers_ran_on_both_nodes_of_the_cluster(two_workers, cluster):
    _, events = two_workers
    workers = {e.rank: e for e in events if isinstance(e, WorkerStarted)}
    assert sorted(workers) == [0, 1]
    assert workers[0].node != workers[1].node
    assert not set(cluster["pids"]) & {w.pid for w in workers.values()}


def test_progress_reaches_the_caller_while_the_job_runs(two_workers, planted):
    fs, events = two_workers
    stages = [e.stage for e in events if isinstance(e, StageStarted)]
    assert stages == ["load", "selection", "retrain", "reference", "done"]
    progress = [e for e in events if isinstance(e, Progress) and e.stage == "selection"]
    assert progress[-1].picks["features"] == 8
    # rows count both workers' rows: one epoch is the whole train split
    epoch_end = [e for e in progress if e.epoch == 0][-1]
    assert abs(epoch_end.rows - fs.metrics.train_rows) <= 2 * 512
    checkpoints = [(e.stage, e.epoch) for e in events if isinstance(e, CheckpointSaved)]
    assert checkpoints == [(s, e) for s in ("selection", "retrain", "reference") for e in (0, 1)]
    assert fs.job_id == "j-two" and fs.metrics.train_rows == 24_000 and fs.timings["read_s"] > 0


def test_one_worker_and_two_workers_select_the_same_features(two_workers, planted):
    path, _ = planted
    assert not use_ray(_spec(path, 1)) and use_ray(_spec(path, 2))
    one = run_job(_spec(path, 1))  # in this process: the same stages, one worker
    two, _ = two_workers
    assert _kept(one) == _kept(two) == set(planted[1]["relevant_alone"])
    # One retrain on 24k rows moves by about +-0.02 AUC with its initial weights and batch order.
    assert abs(one.metrics.val_auc - two.metrics.val_auc) < 0.04


def test_a_streamed_job_on_two_workers_picks_what_one_process_picks(cluster, planted, tmp_path):
    """Statistics from Ray tasks, each worker reading its own half of the train rows from the files."""
    path, truth = planted
    events = []
    two = run_ray_job(_spec(path, 2, reader="stream"), on_event=events.append, options=RayOptions(run_name="streamed"),
                      artifacts=tmp_path / "two")
    one = run_job(_spec(path, 1, reader="stream"), artifacts=tmp_path / "one")
    assert _kept(one) == _kept(two) == set(truth["relevant_alone"])
    assert two.metrics.train_rows == one.metrics.train_rows  # the same hash split
    epoch_end = [e for e in events if isinstance(e, Progress) and e.stage == "selection" and e.epoch == 0][-1]
    assert two.metrics.train_rows - 1 <= epoch_end.rows <= two.metrics.train_rows  # two equal halves, rows x world
    assert "shard_s" in two.timings and two.timings["encode_s"] == 0  # no driver encoding, no Ray Data shards
    assert abs(one.metrics.val_auc - two.metrics.val_auc) < 0.04
    # The driver wrote the vocabularies the workers encoded with: those of the in-process run.
    both = {f.name for f in one.features if f.kind == "sparse"} & {f.name for f in two.features}
    assert both
    for name in both:
        assert vocabulary(tmp_path / "two", name).equals(vocabulary(tmp_path / "one", name))


@pytest.mark.parametrize("share", [None, 20])
def test_statistics_scanned_by_ray_tasks_are_the_in_process_ones(cluster, planted, monkeypatch, share):
    """One task per file, each sampling its share of the rows (or, forced, far too few: then scanned again)."""
    path, _ = planted
    if share is not None:
        monkeypatch.setattr(ray_stream, "task_sample_rows", lambda *args: share)
    files, columns = open_parquet(DatasetSpec(path=str(path), label="label"))
    rule = SplitRule(0.2, seed=1)
    whole = scan_statistics(files, columns, rule, sample_rows=3_000)
    spread = ray_stream.scan_on_ray(files, columns, rule, sample_rows=3_000, rows_per_task=1)
    assert len(ray_stream.task_parts([p.metadata.row_group(p.row_group).num_rows for p in files.pieces()], 1)) == 3
    assert spread.sample.equals(whole.sample) and spread.sample.num_rows == 3_000
    assert spread.piece_rows == whole.piece_rows and spread.train_rows == whole.train_rows
    assert all(spread.vocabularies[c].equals(whole.vocabularies[c]) for c in columns.sparse)


def test_a_killed_worker_is_replaced_and_the_job_resumes_from_its_checkpoint(two_workers, planted, cluster):
    path, _ = planted
    run_dir = cluster["home"] / "ray" / "killed"
    pids, killed, events = {}, [], []

    def kill_after_a_registered_checkpoint() -> None:
        # Ray Train registers a reported checkpoint at its next poll of the workers (every 2 s);
        # kill worker 1 once the run's checkpoint index lists one, i.e. mid-run and resumable.
        deadline = time.time() + 60
        snapshot = run_dir / "checkpoint_manager_snapshot.json"
        while time.time() < deadline:
            if snapshot.exists() and "checkpoint_" in snapshot.read_text():
                os.kill(pids[1], signal.SIGKILL)
                killed.append(pids[1])
                return
            time.sleep(0.05)

    def on_event(event):
        events.append(event)
        if isinstance(event, WorkerStarted) and event.rank not in pids:
            pids[event.rank] = event.pid
        if isinstance(event, CheckpointSaved) and not killed and len(pids) == 2 and not hasattr(on_event, "armed"):
            on_event.armed = True
            threading.Thread(target=kill_after_a_registered_checkpoint, daemon=True).start()

    fs = run_ray_job(_spec(path, 2), on_event=on_event,
                     options=RayOptions(run_name="killed", max_failures=2))
    assert killed, "the job finished before worker 1 could be killed"
    resumed = [e for e in events if isinstance(e, Resumed)]
    assert resumed, "the restarted workers did not resume from a checkpoint"
    restarted = {e.pid for e in events if isinstance(e, WorkerStarted)} - set(pids.values())
    assert len(restarted) == 2  # a new worker group
    unkilled, _ = two_workers
    assert _kept(fs) == _kept(unkilled)
    assert [f.name for f in fs.features] == [f.name for f in unkilled.features]
    assert abs(fs.metrics.val_auc - unkilled.metrics.val_auc) < 0.01


@pytest.mark.parametrize("damage, words", [
    ("missing", "not found"),
    ("schema", "'rel_0' is string"),
    ("unreadable", "cannot read"),
])
def test_bad_data_fails_at_once_with_a_clear_error(cluster, tmp_path, damage, words):
    root = tmp_path / "d"
    write_synth(root, rows=600, seed=1, n_noise=2, files=2)
    if damage == "missing":
        root = tmp_path / "nothing-here"
    elif damage == "schema":
        import pyarrow as pa
        import pyarrow.parquet as pq

        f = root / "part-00001.parquet"
        t = pq.read_table(f)
        t = t.set_column(t.column_names.index("rel_0"), "rel_0",
                         pa.array([str(v) for v in t.column("rel_0").to_pylist()]))
        pq.write_table(t, f)
    else:
        (root / "part-00001.parquet").write_bytes(b"PAR1 but then nothing")
    start = time.perf_counter()
    with pytest.raises(SpecError) as err:
        run_job(_spec(root, 2))
    assert err.value.field == "dataset.path" and words in err.value.message
    assert time.perf_counter() - start < 10


def test_more_workers_than_the_cluster_holds_is_a_clear_error(cluster, planted):
    path, _ = planted
    start = time.perf_counter()
    with pytest.raises(SpecError) as err:
        run_job(_spec(path, 16))
    assert err.value.field == "training.num_workers" and "the Ray cluster has 4" in err.value.message
    assert time.perf_counter() - start < 10


def test_placement_comes_from_the_option_then_the_environment(monkeypatch):
    from pipelines.ray_job import PLACEMENT_ENV, _placement

    monkeypatch.delenv(PLACEMENT_ENV, raising=False)
    assert _placement(RayOptions()) == "PACK"
    monkeypatch.setenv(PLACEMENT_ENV, "spread")
    assert _placement(RayOptions()) == "SPREAD"
    assert _placement(RayOptions(placement_strategy="PACK")) == "PACK"
    monkeypatch.setenv(PLACEMENT_ENV, "everywhere")
    with pytest.raises(SpecError) as err:
        _placement(RayOptions())
    assert err.value.field == PLACEMENT_ENV and "SPREAD" in err.value.message



def test_ray_data_reads_refuse_a_file_swapped_for_a_symlink_after_the_check(cluster, tmp_path):
    from pipelines.ray_data import check_parquet, read_parquet
    from pipelines.roots import DataRoots
    from pipelines.spec import DatasetSpec

    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    write_synth(root / "d", rows=600, seed=1, n_noise=2, files=2)
    write_synth(outside, rows=600, seed=2, n_noise=2, files=1)
    roots = DataRoots.of([root])
    source = check_parquet(DatasetSpec(path=roots.check(str(root / "d")), label="label"), roots)
    assert read_parquet(source).num_rows == 600
    victim = root / "d" / "part-00001.parquet"
    victim.unlink()
    victim.symlink_to(next(outside.glob("*.parquet")))
    with pytest.raises(SpecError) as err:
        read_parquet(source)
    assert err.value.field == "dataset.path" and "outside the data roots" in err.value.message


def test_held_out_gates_run_on_two_workers(two_workers, planted):
    """The same job with held-out gates on two workers: it finishes, picks its 8 features and
    retrains to about the paper's gates' AUC (tests/pipelines/test_engine.py checks that two
    workers' gate gradients equal one worker's over the same rows)."""
    path, _ = planted
    spec = load_spec({"name": "ray-t", "dataset": {"path": str(path), "label": "label"},
                      "selection": {"features": 8, "gate_holdout": 0.2},
                      "training": {"epochs": 2, "batch_size": 512, "num_workers": 2}})
    fs = run_ray_job(spec, options=RayOptions(run_name="held-out"))
    paper, _ = two_workers
    assert fs.spec.selection.gate_holdout == 0.2 and len(fs.features) == 8
    assert abs(fs.metrics.val_auc - paper.metrics.val_auc) < 0.04
