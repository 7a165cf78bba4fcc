"""The CUDA path against the CPU, on one machine: test_job's planted job (60k rows, 2 epochs) on a
few training seeds, with the selection checks that test_job makes. Run it twice on a GPU host, the
second time with the GPU hidden, and compare the lines seed by seed (docs/gpu.md):

    python -m bench.gpu_check --label gpu 0 1 2 3
    CUDA_VISIBLE_DEVICES= python -m bench.gpu_check --label cpu 0 1 2 3
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pipelines.engine import device
from pipelines.job import run_job
from pipelines.spec import load_spec
from pipelines.synth import write_synth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="", help="a tag for each line, e.g. gpu or cpu")
    parser.add_argument("seeds", nargs="+", type=int, help="training seeds")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="seqattn-gpu-check-")
    truth = write_synth(out, rows=60_000, seed=0, n_noise=10)
    planted = {frozenset(p) for p in truth["pairs"]}  # the crosses test_job expects
    (dup, original), = truth["duplicate_of"].items()
    print(f"device {device()} (cuda available: {torch.cuda.is_available()})", flush=True)
    for seed in args.seeds:
        spec = load_spec({"name": "gpu-check", "dataset": {"path": out, "label": "label"},
                          "selection": {"features": len(truth["relevant_alone"]),
                                        "crosses": len(truth["pairs"] + truth["interactions"]),
                                        "embedding_dims": [4, 8, 16]},
                          "training": {"epochs": 2, "batch_size": 512, "seed": seed}})
        t = time.perf_counter()
        fs = run_job(spec)
        kept = {f.name for f in fs.features}
        missing = sorted(set(truth["relevant_alone"]) - {original if k == dup else k for k in kept})
        print(f"RESULT {args.label} seed={seed} s={time.perf_counter() - t:.1f} auc={fs.metrics.val_auc:.4f} "
              f"one_dup={len(kept & {dup, original}) == 1} relevant_kept={not missing} "
              f"crosses_ok={({frozenset(c.features) for c in fs.crosses} == planted)} missing={missing}", flush=True)


if __name__ == "__main__":
    main()
