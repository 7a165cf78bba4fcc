"""Continual pipelines: schedule specs, windows, warm start, and three windows of drifting data."""

import json
import os
from datetime import datetime, timezone

import pytest
import yaml

from pipelines.continual import (
    Cadence,
    ScheduleSpec,
    load_schedule,
    materialize_window,
    run_step,
    select_window,
    warm_start_spec,
)
from pipelines.errors import SpecError
from pipelines.registry import Registry
from pipelines.synth import write_partitioned_synth
from services.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _schedule(tmp_path, **over):
    job = {"name": "ctr", "dataset": {"path": "ignored", "label": "label"}, "selection": {"features": 4}}
    data = {"name": "daily", "job": job, "window": {"path": str(tmp_path), "size": 2}, "cadence": {"cron": "0 3 * * *"}}
    data.update(over)
    return data


def test_schedule_file_with_a_job_file_beside_it(tmp_path):
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"name": "ctr", "dataset": {"path": "x", "label": "y"}}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**_schedule(tmp_path), "job": "job.yaml",
                                                     "promotion": {"epsilon": 0.01}}))
    s = load_schedule(tmp_path / "s.yaml")
    assert s.job.name == "ctr" and s.promotion.epsilon == 0.01 and s.window.size == 2
    assert s.warm_start.mode == "none"


@pytest.mark.parametrize("change, field, words", [
    ({"cadence": {"cron": "0 3 * *"}}, "cadence.cron", "not a cron expression"),
    ({"cadence": {"interval": "5 parsecs"}}, "cadence.interval", "not an interval"),
    ({"cadence": {"cron": "0 0 30 2 *"}}, "cadence.cron", "never fires"),
    ({"cadence": {"interval": "1" + "0" * 400 + "d"}}, "cadence.interval", "longer than the longest interval"),
    ({"cadence": {"interval": "3651d"}}, "cadence.interval", "longer than the longest interval"),
    ({"cadence": {"cron": "0 3 * * *", "interval": "1d"}}, "cadence", "exactly one"),
    ({"window": {"path": "d", "size": 0}}, "window.size", "greater than or equal to 1"),
    ({"job": {"name": "ctr", "dataset": {"path": "d", "label": "y"}, "training": {"epoch": 2}}},
     "job.training.epoch", "did you mean 'epochs'"),
    ({"job": "missing.yaml"}, "job", "not found"),
    ({"promotion": {"epsilon": -1}}, "promotion.epsilon", "greater than or equal to 0"),
    ({"windw": {}}, "windw", "unknown field"),
])
def test_bad_schedules_name_the_field(tmp_path, change, field, words):
    with pytest.raises(SpecError) as err:
        load_schedule(_schedule(tmp_path, **change))
    assert err.value.field == field and words in err.value.message


def test_cadence_next_run():
    after = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert Cadence(cron="0 3 * * *").next_run(after) == datetime(2026, 1, 2, 3, 0, tzinfo=timezone.utc)
    assert Cadence(interval="90m").next_run(after) == datetime(2026, 1, 1, 13, 30, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """Six days of planted data; the truth drifts on day index 4 (rel_0 stops, noise_02 starts)."""
    root = tmp_path_factory.mktemp("days")
    return root, write_partitioned_synth(root, days=6, rows_per_day=12_000, drift_day=4, seed=0, n_noise=6)


def test_windows_end_at_as_of_and_link_the_files(drifting, tmp_path):
    root, truth = drifting
    spec = ScheduleSpec.model_validate(_schedule(root))
    assert select_window(spec.window) == ("day", truth["days"][-2:])
    key, values = select_window(spec.window, as_of=truth["days"][2])
    assert values == truth["days"][1:3]
    out = materialize_window(root, key, values, tmp_path / "w")
    assert sorted(p.name for p in out.iterdir()) == [f"day={v}" for v in values]
    linked = out / f"day={values[0]}" / "part.parquet"
    assert os.path.samefile(linked, root / f"day={values[0]}" / "part.parquet")
    with pytest.raises(SpecError, match="no day partition at or before"):
        select_window(spec.window, as_of="2025-12-31")
    with pytest.raises(SpecError) as err:
        select_window(ScheduleSpec.model_validate(
            _schedule(root, window={"path": str(root), "partition": "hour"})).window)
    assert err.value.field == "window.partition"


def test_a_partition_symlinked_in_from_outside_the_roots_is_refused_when_linked(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.roots import DataRoots

    data, outside = tmp_path / "data", tmp_path / "outside"
    for day in ("2026-01-01", "2026-01-02"):
        (data / f"day={day}").mkdir(parents=True)
        pq.write_table(pa.table({"label": [0, 1], "u": [1, 2]}), data / f"day={day}" / "part.parquet")
    outside.mkdir()
    pq.write_table(pa.table({"label": [0, 1], "u": [7, 8]}), outside / "secret.parquet")
    roots = DataRoots.of([data])
    key, values = select_window(ScheduleSpec.model_validate(_schedule(data)).window)
    materialize_window(data, key, values, tmp_path / "w1", roots)  # inside the roots: linked
    # After the schedule was created, a partition file becomes a symlink to a file outside the roots.
    (data / "day=2026-01-02" / "part.parquet").unlink()
    (data / "day=2026-01-02" / "part.parquet").symlink_to(outside / "secret.parquet")
    with pytest.raises(SpecError) as err:
        materialize_window(data, key, values, tmp_path / "w2", roots)
    assert err.value.field == "window.path" and "outside the data roots" in err.value.message
    assert not (tmp_path / "w2" / "day=2026-01-02" / "part.parquet").exists()


def test_warm_start_keeps_previous_picks_and_explores_the_best_others(drifting, tmp_path):
    from pipelines.spec import Candidate, FeatureSet, SelectedFeature

    spec = ScheduleSpec.model_validate(_schedule(tmp_path)).job
    prev = FeatureSet(name="ctr", spec=spec,
                      features=[SelectedFeature(name="high_0", kind="sparse", rank=1, score=0.9)],
                      candidates=[Candidate(name=n, kind=k, score=s, selected=n == "high_0") for n, k, s in [
                          ("dense_0", "dense", 0.5), ("high_0", "sparse", 0.9), ("noise_00", "sparse", 0.01),
                          ("rel_1", "sparse", 0.4), ("noise_01", "sparse", 0.0)]])
    ws = warm_start_spec(spec, prev, explore=0.5)
    assert ws.dataset.sparse == ["high_0", "rel_1"] and ws.dataset.dense == ["dense_0"]
    assert ws.selection.features == 3  # capped at the candidates left
    assert warm_start_spec(spec, prev, explore=1.0).dataset.sparse == ["high_0", "noise_00", "rel_1", "noise_01"]


@pytest.mark.slow
def test_three_windows_two_stable_versions_then_the_drift(drifting, tmp_path, capsys):
    root, truth = drifting
    home = tmp_path / "home"
    # Windows of 2 days every 2 days: days 0-1, 2-3 (before the drift) and 4-5 (after it).
    schedule = {**_schedule(root), "cadence": {"interval": "2d"},
                "job": {"name": "ctr", "dataset": {"path": "ignored", "label": "label"},
                        "selection": {"features": 6},
                        "training": {"epochs": 2, "batch_size": 512}},
                # Each window validates on its own rows: AUCs of 4,800 validation rows differ by about
                # 0.01 between windows from sampling alone, so the policy allows that much.
                "promotion": {"epsilon": 0.02}}
    reg = Registry(home)
    days = truth["days"]
    first = run_step(load_schedule(schedule), as_of=days[1], registry=reg)
    second = run_step(load_schedule(schedule), as_of=days[3], registry=reg)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(schedule))
    code = main(["pipeline", "run", str(tmp_path / "s.yaml"), "--as-of", days[5], "--home", str(home)])
    out = capsys.readouterr().out
    assert code == 0 and "version 3" in out and "jaccard" in out

    v1, v2, v3 = (reg.get("ctr", v) for v in (1, 2, 3))
    records = reg.versions("ctr")
    assert [r.decision for r in records[:2]] == ["promoted", "promoted"]
    assert first.window.values == tuple(days[0:2]) and second.window.values == tuple(days[2:4])
    assert records[1].jaccard is not None and records[2].jaccard is not None
    assert json.loads(records[2].source)["window"] == days[4:6]

    def kept(fs):
        return {"rel_0" if f.name == "dup_rel_0" else f.name for f in fs.features}  # exact copies: one slot

    # Before the drift: rel_0 (or its exact copy) matters and both versions keep it; they agree.
    assert "rel_0" in kept(v1) and "rel_0" in kept(v2)
    assert {"dense_0", "high_0"} <= kept(v1) & kept(v2) & kept(v3)
    raw = {f.name for f in v1.features}, {f.name for f in v2.features}
    assert records[1].jaccard == pytest.approx(len(raw[0] & raw[1]) / len(raw[0] | raw[1]))
    assert records[1].jaccard >= 0.5 and records[1].rank_correlation > 0.5
    # After it: noise_02 now drives clicks and rel_0 no longer does.
    assert "noise_02" in kept(v3) and "noise_02" not in kept(v1) | kept(v2)
    assert "rel_0" not in kept(v3)
