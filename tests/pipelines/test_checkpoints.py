"""Checkpoints of the training stages, in one process (a world of one): what a restarted Ray worker
does, without Ray. The Ray kill test (test_ray_job.py) covers the same path across processes."""

import shutil

import numpy as np
import pytest
import torch
from ray.train import Checkpoint

from pipelines.checkpoints import CheckpointedStages, restore, snapshot
from pipelines.dataset import load_dataset
from pipelines.engine import place
from pipelines.errors import SpecError
from pipelines.events import Progress
from pipelines.spec import load_spec
from pipelines.stages import plan_job, run_stages, seed_everything
from pipelines.synth import write_synth
from seqattn_core.batches import BatchSource
from seqattn_core.lem import LargeEmbeddingModel, LEMConfig, SelectionConfig, SparseFeature

pytestmark = pytest.mark.usefixtures("one_thread")


def _placed(seed=0):
    torch.manual_seed(seed)
    cfg = LEMConfig(dense=("d",), sparse=tuple(SparseFeature(f"s{i}", 40) for i in range(3)), embedding_dim=8,
                    hidden=(16,))
    return place(LargeEmbeddingModel(cfg, SelectionConfig(features=2), device=torch.device("meta")), 0.01)


def _batch():
    rng = np.random.default_rng(0)
    sparse = {f"s{i}": (rng.integers(0, 40, 64), np.ones(64, np.int32)) for i in range(3)}
    return BatchSource(rng.random((64, 1)).astype(np.float32), sparse,
                       (rng.random(64) < 0.5).astype(np.float32)).batch(0, 64)


def _steps(placed, batch, n=3):
    out = []
    for _ in range(n):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(placed.forward(batch.dense, batch.sparse),
                                                                    batch.labels)
        placed.optimizer.zero_grad()
        loss.backward()
        placed.optimizer.step()
        out.append(float(loss))
    return out


def test_snapshot_and_restore_continue_exactly():
    batch = _batch()
    a = _placed()
    _steps(a, batch)
    saved = snapshot(a)
    want = _steps(a, batch)
    b = _placed(seed=1)  # other initial weights: everything must come from the snapshot
    restore(b, saved)
    assert _steps(b, batch) == want


def test_remember_and_agree_replay_after_a_restart(tmp_path):
    published = []

    def report(metrics, directory):
        dest = tmp_path / f"ckpt-{len(published)}"
        shutil.copytree(directory, dest)
        published.append(dest)

    hooks = CheckpointedStages(0, report=report)
    assert hooks.remember("selection", lambda: {"kept": [1, 2]}) == {"kept": [1, 2]}
    placed = _placed()
    hooks.epoch_end("retrain", placed, 0)
    again = CheckpointedStages.resume(Checkpoint.from_directory(published[-1]), 0)
    assert again.resumed_from == ("retrain", 0)
    assert again.remember("selection", lambda: pytest.fail("must be replayed, not recomputed")) == {"kept": [1, 2]}
    assert again.start("retrain", _placed(seed=5)) == 1 and again.start("reference", _placed()) == 0
    with pytest.raises(SpecError, match="too small"):
        again.agree("latency", lambda: (_ for _ in ()).throw(SpecError("constraints.max_inference_ms", "too small")))
    with pytest.raises(RuntimeError, match="no state for worker 1"):
        CheckpointedStages.resume(Checkpoint.from_directory(published[-1]), 1)


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt-data")
    write_synth(out, rows=6_000, seed=4, n_noise=3)
    spec = load_spec({"name": "ckpt", "dataset": {"path": str(out), "label": "label"},
                      "selection": {"features": 4}, "training": {"epochs": 2, "batch_size": 256}})
    data = load_dataset(spec.dataset, seed=0)
    return spec, data, plan_job(spec, data)


def test_a_job_resumed_from_a_mid_selection_checkpoint_ends_like_an_uninterrupted_one(small_job, tmp_path):
    spec, data, plan = small_job
    published = []

    def report(metrics, directory):
        dest = tmp_path / f"ckpt-{len(published)}"
        shutil.copytree(directory, dest)
        published.append((metrics["stage"], metrics["epoch"], dest))

    seed_everything(0)
    whole = run_stages(spec, data, plan, hooks=CheckpointedStages(0, report=report))
    assert [(s, e) for s, e, _ in published] == [("selection", 0), ("selection", 1), ("retrain", 0), ("retrain", 1),
                                                  ("reference", 0), ("reference", 1)]
    # "Kill" after the first selection epoch: a fresh process starts from that checkpoint.
    seed_everything(123)  # a restarted worker's RNG is not the dead one's; the checkpoint must not need it
    events = []
    resumed_hooks = CheckpointedStages.resume(Checkpoint.from_directory(published[0][2]), 0, report=lambda m, d: None)
    resumed = run_stages(spec, data, plan, on_event=events.append, hooks=resumed_hooks)
    first_epochs = [e.epoch for e in events if isinstance(e, Progress) and e.stage == "selection"]
    assert min(first_epochs) == 1  # epoch 0 was not trained again
    assert [f.name for f in resumed.features] == [f.name for f in whole.features]
    assert resumed.metrics.val_auc == pytest.approx(whole.metrics.val_auc, abs=1e-6)
