"""Section f: SequentialAttention++ block pruning of the LEM's MLP tower against block-magnitude
pruning, the speed of the block-sparse (BSR) tower against the dense one, and attention-head
pruning of the AutoInt interaction.

Both methods run the same ACDC schedule (:class:`seqattn_core.pruning.PruningConfig`: dense,
sparsify with the exponential ramp, sparse; two cycles) inside one training run of the product's
TorchRec LEM, on the same split, epochs and seed; only the tile ranking differs: the norm of the
tile in use, attention-scaled (SequentialAttention++'s default), the attention logits alone
(``rank_by="logits"``), or the plain norm (magnitude). The table follows the paper's layout:
methods as rows, block sparsities as columns; one table per tile size (8x8 and 16x16).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn
from torch.utils import benchmark
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from bench import markdown_table, mean_std
from bench.lem import Problem, job_spec, make_problems, model_config, train_eval
from pipelines.dataset import EncodedDataset, load_dataset
from pipelines.engine import place
from pipelines.spec import JobSpec
from pipelines.stages import batch_source, evaluate
from seqattn_core.lem import LargeEmbeddingModel, SelectionConfig
from seqattn_core.pruning import BlockSparsifier, PruningConfig
from seqattn_core.training import train

SA, SA_LOGITS, MAGNITUDE = "SequentialAttention++", "SequentialAttention++ (logit ranking)", "block magnitude"
# Each method's PruningConfig settings: SA++ ranks the tiles by their norm in use (the default) or by
# the attention logits (PruningConfig.rank_by); magnitude is the baseline.
METHODS = {SA: {"method": "attention"}, SA_LOGITS: {"method": "attention", "rank_by": "logits"},
           MAGNITUDE: {"method": "magnitude"}}
ABLATION = ("The logit ranking's settings (rate ×100, Adam eps 1e-3) were chosen on these seeds, so "
            "[pruning_ablation.md](pruning_ablation.md) (`python -m bench.pruning_ablation`) checks both rankings on "
            "other seeds and with more rows or steps; it also ablates the attention's clip, the logits' learning "
            "rate and weight decay, and shows which inputs each ranking's kept tiles read; "
            "[pruning_schedule.md](pruning_schedule.md) (`python -m bench.pruning_schedule`) moves the tile size "
            "and the number of cycles.")


@dataclass(frozen=True)
class PruningBench:
    seeds: tuple[int, ...] = (0, 1, 2)
    sparsities: tuple[float, ...] = (0.9, 0.95)
    blocks: tuple[int, ...] = (8, 16)  # tile sizes: one paper table each
    epochs: int = 3
    batch_size: int = 1024
    planted_rows: int = 100_000
    planted_noise: int = 6
    speed_sparsities: tuple[float, ...] = (0.8, 0.9, 0.95)
    speed_batches: tuple[int, ...] = (1, 64, 1024)
    heads: int = 8
    heads_kept: tuple[int, ...] = (1, 2, 4)


def train_pruned(data: EncodedDataset, spec: JobSpec, pruning: PruningConfig | None,
                 inspect: bool = False) -> dict[str, object]:
    """One run of the LEM (every feature, no crosses) with the tower pruned by ``pruning``. With
    ``inspect``, also the training rows' log-loss and :func:`kept_by_input` of the first pruned layer."""
    config = model_config(data)
    names = tuple(f.name for f in config.sparse)
    t = spec.training
    torch.manual_seed(t.seed)
    model = LargeEmbeddingModel(config, None, device=torch.device("meta"), pruning=pruning)
    placed = place(model, t.learning_rate)
    source = batch_source(data.train, data, config.dense, names, ())
    steps = source.num_batches(t.batch_size)
    train(placed.forward, placed.model, placed.optimizer,
          lambda e: source.batches(t.batch_size, seed=t.seed * 1000 + e),
          steps, t.epochs, gate_optimizer=placed.optimizer)
    metrics = evaluate(placed, batch_source(data.valid, data, config.dense, names, ()))
    achieved = model.pruner.block_sparsity() if model.pruner is not None else 0.0
    out: dict[str, object] = {"auc": metrics["auc"], "logloss": metrics["logloss"], "achieved": achieved}
    if inspect:
        out["train_logloss"] = evaluate(placed, source)["logloss"]
        if model.pruner is not None:
            out["kept_by_input"] = kept_by_input(model, next(iter(source.batches(t.batch_size, seed=0))).sparse)
    return out


@torch.no_grad()
def kept_by_input(model: LargeEmbeddingModel, sparse: KeyedJaggedTensor) -> dict[str, int]:
    """Kept tiles of the first pruned layer, by the input each tile column reads: ``"dense"`` (the
    dense projection) or a feature's embedding. The tower's input is the DCN's output, whose column
    ``j`` is input column ``j`` scaled, so a tile column reads one field (the dims are multiples of the
    block; a straddling tile counts for its first column)."""
    if model.interaction is not None:
        raise ValueError("kept_by_input: with AutoInt the tower's columns are attention heads, not fields")
    kt = model.embeddings(sparse)  # the KeyedTensor's order is the sharding's, as in forward
    columns = ["dense"] * (model.config.dense_dim if model.n_dense else 0)
    columns += [key for key, width in zip(kt.keys(), kt.length_per_key()) for _ in range(width)]
    layer = model.pruner.layers[0]
    counts: Counter[str] = Counter()
    for j, kept in enumerate(layer.mask.sum(0).tolist()):
        counts[columns[j * layer.block]] += int(kept)
    return dict(counts)


def quality(problem: Problem, cfg: PruningBench, seed: int) -> list[dict[str, object]]:
    spec = job_spec(problem, cfg, seed)
    data = load_dataset(spec.dataset, seed=seed)
    rows = [{"method": "dense (no pruning)", "sparsity": 0.0, "block": 0, **train_pruned(data, spec, None)}]
    for block, sparsity in itertools.product(cfg.blocks, cfg.sparsities):
        for label, settings in METHODS.items():
            pruning = PruningConfig(sparsity=sparsity, block=block, **settings)
            rows.append({"method": label, "sparsity": sparsity, "block": block, **train_pruned(data, spec, pruning)})
    return [{**r, "problem": problem.name, "seed": seed} for r in rows]


def heads(problem: Problem, cfg: PruningBench, seed: int) -> list[dict[str, object]]:
    """AutoInt LEM with ``cfg.heads`` heads: Sequential Attention keeps k of them within one run
    (the dropped heads are switched off for the run's last phase), against a k-head model trained
    from scratch for the same epochs, and against all heads."""
    spec = job_spec(problem, cfg, seed)
    data = load_dataset(spec.dataset, seed=seed)
    full = replace(model_config(data), interaction="autoint", attention_heads=cfg.heads, head_dim=8)
    rows = [{"variant": f"all {cfg.heads} heads", "k": cfg.heads, **train_eval(data, spec, full)}]
    for k in cfg.heads_kept:
        chosen = train_eval(data, spec, full, SelectionConfig(features=None, keep_heads=k))
        rows.append({"variant": "Sequential Attention", "k": k, **chosen})
        rows.append({"variant": "trained with k heads", "k": k,
                     **train_eval(data, spec, replace(full, attention_heads=k))})
    return [{**r, "problem": problem.name, "seed": seed} for r in rows]


def _heads_table(df: pd.DataFrame) -> str:
    rows = []
    for (problem, variant), g in df.groupby(["problem", "variant"], sort=False):
        rows.append([problem, variant] + [
            f"{mean_std(list(g[g.k == k].logloss), 4)} / {mean_std(list(g[g.k == k].auc), 4)}"
            if (g.k == k).any() else "—"
            for k in sorted(df.k.unique())])
    return markdown_table(["data", "variant"] + [f"{k} head(s): log-loss / AUC" for k in sorted(df.k.unique())], rows)


def speed(widths: tuple[int, ...], cfg: PruningBench) -> pd.DataFrame:
    """Median time of the tower's pruned layers, dense vs BSR, per tile size, sparsity and batch size."""
    torch.manual_seed(0)
    rows = []
    for block, sparsity in itertools.product(cfg.blocks, cfg.speed_sparsities):
        tower = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths, widths[1:])])
        sparsifier = BlockSparsifier.wrap(tower, PruningConfig(sparsity=sparsity, block=block, method="magnitude"))
        sparsifier.update(1.0)
        dense = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths, widths[1:])])
        fast = nn.Sequential(*[nn.Sequential(layer.to_inference(), nn.ReLU()) for layer in sparsifier.layers])
        for batch in cfg.speed_batches:
            x = torch.randn(batch, widths[0])
            times = {}
            for name, module in (("dense", dense), ("bsr", fast)):
                with torch.no_grad():
                    timer = benchmark.Timer("m(x)", globals={"m": module, "x": x}, num_threads=torch.get_num_threads())
                    times[name] = timer.blocked_autorange(min_run_time=0.3).median * 1e3
            rows.append({"block": block, "sparsity": sparsity, "batch": batch, "dense_ms": times["dense"],
                         "bsr_ms": times["bsr"], "speedup": times["dense"] / times["bsr"]})
    return pd.DataFrame(rows)


def _paper_table(df: pd.DataFrame, sparsities: tuple[float, ...]) -> str:
    rows = []
    for (problem, method), g in df.groupby(["problem", "method"], sort=False):
        cells = []
        for s in sparsities:
            part = g[g.sparsity == s] if method != "dense (no pruning)" else g
            cells.append(f"{mean_std(list(part.logloss), 4)} / {mean_std(list(part.auc), 4)}" if len(part) else "—")
        rows.append([problem, method] + cells)
    return markdown_table(["data", "method"] + [f"{s:.0%} block sparsity: log-loss / AUC" for s in sparsities], rows)


def _verdicts(df: pd.DataFrame, sparsities: tuple[float, ...]) -> str:
    """Each SequentialAttention++ ranking minus block magnitude, paired by seed, as a table, and
    which cells meet the issue's bar (mean log-loss at most magnitude's) and by more than the spread."""
    rows, met, clear = [], {sa: 0 for sa in (SA, SA_LOGITS)}, {sa: 0 for sa in (SA, SA_LOGITS)}
    for problem, s in itertools.product(df.problem.unique(), sparsities):
        g = df[(df.problem == problem) & (df.sparsity == s)]
        d = {m: g.pivot_table(index="seed", columns="method", values=m) for m in ("logloss", "auc")}
        cells = [problem, f"{s:.0%}"]
        for sa in (SA, SA_LOGITS):
            diff, auc = (d[m][sa] - d[m][MAGNITUDE] for m in ("logloss", "auc"))
            met[sa] += diff.mean() <= 0
            clear[sa] += diff.mean() + diff.std(ddof=0) < 0
            cells.append(f"{diff.mean():+.4f} ± {diff.std(ddof=0):.4f} ({int((diff <= 0).sum())}/{len(diff)}); "
                         f"AUC {auc.mean():+.4f}")
        rows.append(cells)
    table = markdown_table(["data", "sparsity"]
                           + [f"{sa} minus magnitude: log-loss (seeds ≤ 0); AUC" for sa in (SA, SA_LOGITS)],
                           rows)
    return table + "\n\n**What this means.** Cells where the mean log-loss is at most magnitude's (the issue's bar), " \
        f"of {len(rows)}: " + "; ".join(f"{sa} {met[sa]} (below by more than one standard deviation: {clear[sa]})"
                                         for sa in (SA, SA_LOGITS)) + ". "


def _against_dense(df: pd.DataFrame) -> str:
    """Where a pruned tower beats the dense one on log-loss but not on AUC, say so: the gain is then
    in calibration (how sure the model is), not in how it ranks."""
    out = []
    for problem, g in df.groupby("problem", sort=False):
        dense = g[g.sparsity == 0]
        sa = g[g.method == SA]
        ll, auc = sa.logloss.mean() - dense.logloss.mean(), sa.auc.mean() - dense.auc.mean()
        out.append(f"{problem}: SequentialAttention++ (both sparsities) minus the dense tower: log-loss {ll:+.4f}, "
                   f"AUC {auc:+.4f}" + ("; lower log-loss with lower AUC means the gain is in calibration, "
                                       "not in ranking." if ll < 0 and auc < 0 else "."))
    return " ".join(out) + " "


def _plot(sp: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for (block, batch), g in sp.groupby(["block", "batch"]):
        ax.plot(g.sparsity * 100, g.speedup, marker="o", ls="-" if block == sp.block.min() else "--",
                label=f"{block}x{block} tiles, batch {batch}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("block sparsity (%)")
    ax.set_ylabel("speed-up of BSR over dense (x)")
    ax.set_title("MLP tower: block-sparse vs dense, 1 thread")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: PruningBench, img_dir: Path, work: Path, log: Callable[[str], None] = print) -> str:
    problems = make_problems(cfg, work)
    rows, head_rows = [], []
    for problem in problems:
        for seed in cfg.seeds:
            log(f"f: {problem.name} seed {seed}")
            rows += quality(problem, cfg, seed)
            head_rows += heads(problem, cfg, seed)
    df, head_df = pd.DataFrame(rows), pd.DataFrame(head_rows)
    # The Frappe tower: dense projection (16) + 10 tables x 16 -> 256 -> 128.
    data = load_dataset(job_spec(problems[0], cfg, cfg.seeds[0]).dataset, seed=cfg.seeds[0])
    config = model_config(data)
    widths = (config.dense_dim * bool(config.dense) + sum(config.table_dims().values()),) + tuple(config.hidden)
    log("f: speed")
    sp = speed(widths, cfg)
    _plot(sp, img_dir / "pruning_speed.png")
    achieved = df[df.sparsity > 0].groupby("sparsity").achieved.mean()
    tiles = " and ".join(f"{b}×{b}" for b in cfg.blocks)
    by_block = []
    for block in cfg.blocks:
        part = df[(df.block == block) | (df.sparsity == 0)]
        by_block += [f"### {block}×{block} tiles", "", _paper_table(part, cfg.sparsities), "",
                     _verdicts(part, cfg.sparsities) + _against_dense(part), ""]
    return "\n".join([
        "## f. SequentialAttention++: block-sparse MLP towers",
        "",
        f"The LEM with every feature and no crosses, {cfg.epochs} epochs, batch {cfg.batch_size}; the tower's hidden "
        f"layers ({' → '.join(map(str, widths))}) pruned in {tiles} tiles, the 1-unit output layer left "
        f"dense. Validation log-loss / AUC, mean ± std over {len(cfg.seeds)} seed(s). Data: "
        + "; ".join(f"{p.name} ({p.note})" for p in problems) + ". Block sparsity reached at the end: "
        + ", ".join(f"{s:.0%} → {a:.3f}" for s, a in achieved.items()) + ".",
        "",
        *by_block,
        ABLATION,
        "",
        "### Attention-head pruning (AutoInt interaction)",
        "",
        f"The LEM with AutoInt's self-attention over the fields ({cfg.heads} heads of 8 dims) instead of DCN. "
        "Sequential Attention gates the heads' outputs and keeps k of them inside one run (no retraining: the kept "
        "heads keep their weights, the others are off for the last phase); the comparison is a k-head model "
        "trained from scratch for the same epochs. Validation log-loss / AUC.",
        "",
        _heads_table(head_df),
        "",
        "### Speed of the block-sparse tower",
        "",
        f"The same tower ({' → '.join(map(str, widths))}, ReLU) with dense weights against BSR weights "
        "(`torch.sparse_bsr`, multiplied as `W @ x.T` through `torch.addmm`), median of `torch.utils.benchmark` runs, "
        "one thread.",
        "",
        markdown_table(["tiles", "block sparsity", "batch", "dense ms", "BSR ms", "speed-up"],
                       [[f"{r.block}×{r.block}", f"{r.sparsity:.0%}", r.batch, f"{r.dense_ms:.3f}", f"{r.bsr_ms:.3f}",
                         f"{r.speedup:.2f}x"]
                        for r in sp.itertuples()]),
        "",
        "![pruning speed](img/pruning_speed.png)",
        "",
    ])
