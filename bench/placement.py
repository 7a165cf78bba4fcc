"""How long ``pipelines.engine.place`` takes against the number of tables, on a gloo world of ``--world``
processes (timing only; the numbers quoted beside ``PLANNER_MAX_TABLES``).

At ``PLANNER_MAX_TABLES`` tables TorchRec's planner still plans; one table more and the plan is built
directly (``pipelines.engine.balanced_ranks``). Every table has 500 rows of 8 dims; each rank times
its own ``place`` call and the slower rank is reported.

Example::

    python -m bench.placement --world 2 --tables 1000 1001 4000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def _rank(rank: int, world: int, tables: int, store: str, out: mp.Queue) -> None:
    import torch
    import torch.distributed as dist

    from pipelines import engine
    from seqattn_core.lem import LargeEmbeddingModel, LEMConfig, SparseFeature

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        cfg = LEMConfig(dense=(), sparse=tuple(SparseFeature(f"f{i}", 500) for i in range(tables)), embedding_dim=8)
        start = time.perf_counter()
        placed = engine.place(LargeEmbeddingModel(cfg, None, device=torch.device("meta")), 0.01)
        seconds = time.perf_counter() - start
        held = sum(s.ranks == [rank] for s in placed.plan.plan["ebc"].values())
        out.put((rank, seconds, held, tables > engine.PLANNER_MAX_TABLES))
    finally:
        dist.destroy_process_group()


def time_place(world: int, tables: int) -> dict[str, object]:
    """``place`` for ``tables`` tables on ``world`` spawned gloo ranks: seconds (slowest rank), the
    tables each rank holds, and whether the plan was built directly."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_rank, args=(r, world, tables, str(Path(tmp) / "store"), out))
                 for r in range(world)]
        for p in procs:
            p.start()
        got = sorted(out.get(timeout=1800) for _ in procs)
        for p in procs:
            p.join()
    return {"tables": tables, "world": world, "seconds": max(g[1] for g in got),
            "per rank": [g[2] for g in got], "plan": "direct" if got[0][3] else "TorchRec planner"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--tables", type=int, nargs="+", default=[1000, 1001, 4000])
    args = parser.parse_args()
    print("| tables | world | plan | place s | tables per rank |\n|---|---|---|---|---|")
    for n in args.tables:
        r = time_place(args.world, n)
        print(f"| {r['tables']:,} | {r['world']} | {r['plan']} | {r['seconds']:.1f} | {r['per rank']} |", flush=True)


if __name__ == "__main__":
    main()
