"""Section c: the large embedding model on TorchRec — what the gates cost, and what crosses and
embedding dimensions buy against the simple alternatives.

Every model here is the product's own LEM (TorchRec ``EmbeddingBagCollection`` under
``DistributedModelParallel``, FBGEMM's fused CPU kernels), trained by the product's own loop
(:func:`pipelines.stages.fit`) on the same train/validation split, with the same epochs and batch size.

* **Cost.** The gated selection run against a plain run of the very same model (same tables, same
  crosses, same widths, no gates): training rows/s of each, and the whole selection (cross
  pre-screen + gated run) divided by the plain run. Each is timed twice, in A-B-B-A order.
* **Crosses.** Retrained models with no crosses, every pair crossed, the pre-screen's top ``k``
  taken as they come, and Sequential Attention's ``k`` (features kept as they are). On Frappe the
  pre-screen's ranking is also set against a ground truth that costs one model per pair: the AUC
  lift of adding that one cross to a one-hot logistic regression of all fields.
* **Dimensions.** One width for all tables (the smallest and the reference choice), the cardinality
  rules of Merlin/NVTabular, fastai and Ginart et al.'s power law (snapped to the same choices), and
  Sequential Attention's dimension blocks re-spending the reference model's memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from bench import gate_holdout_for, markdown_table, mean_std
from bench.datasets import FRAPPE, sample_path
from pipelines.dataset import EncodedDataset, load_dataset
from pipelines.job import run_job
from pipelines.spec import JobSpec, load_spec
from pipelines.stages import batch_source, evaluate, fit, plan_job
from pipelines.synth import write_synth
from seqattn_core.batches import first_ids
from seqattn_core.crosses import MAX_BUCKETS, CrossFeature, cross_buckets, prescreen_pairs  # section c: a flat cap
from seqattn_core.dimensions import heuristic_dims, mb
from seqattn_core.lem import LEMConfig, SelectionConfig, SparseFeature

DIM_CHOICES = (4, 8, 16, 32)
HELD_OUT = ", held-out gates"  # the suffix of the job run with selection.gate_holdout by bench.gate_holdout_for


@dataclass(frozen=True)
class LEMBench:
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 2
    batch_size: int = 1024
    planted_rows: int = 100_000
    planted_noise: int = 6
    crosses: int = 3
    ground_truth_pairs: bool = True  # the one-LR-per-pair ranking on Frappe


class RunSettings(Protocol):
    """What the shared helpers below read from a section's config (LEMBench, PruningBench)."""

    epochs: int
    batch_size: int
    planted_rows: int
    planted_noise: int


@dataclass(frozen=True)
class Problem:
    name: str
    path: str
    note: str


def job_spec(problem: Problem, cfg: RunSettings, seed: int, **selection: Any) -> JobSpec:
    """The JobSpec of one benchmark run on ``problem`` at ``seed``: every feature kept and nothing
    searched unless ``selection`` says so, with the section's epochs and batch size (sections c, f)."""
    return load_spec({"name": "bench", "dataset": {"path": problem.path, "label": "label"},
                      "selection": {"features": None, "crosses": 0, "embedding_dims": [], **selection},
                      "training": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "seed": seed}})


def model_config(data: EncodedDataset, crosses: Sequence[CrossFeature] = (), dims: dict[str, int] | None = None,
                 embedding_dim: int = 16) -> LEMConfig:
    """The LEM of every column of ``data`` plus ``crosses``, tables ``embedding_dim`` wide unless
    ``dims`` gives a table its own width."""
    sparse_features = tuple(SparseFeature(n, data.cardinalities[n], n in data.multi_valued) for n in data.sparse_names)
    return LEMConfig(dense=tuple(data.dense_names), sparse=sparse_features, crosses=tuple(crosses),
                     embedding_dim=embedding_dim, embedding_dims=dims or {})


def train_eval(data: EncodedDataset, spec: JobSpec, config: LEMConfig,
               selection: SelectionConfig | None = None) -> dict[str, float]:
    """Train ``config`` (gated when ``selection`` is given) and score it on the validation split."""
    sparse_names = tuple(f.name for f in config.sparse)
    train_src = batch_source(data.train, data, config.dense, sparse_names, config.crosses)
    placed, seconds = fit(config, selection, train_src, spec, "bench", None)
    metrics = evaluate(placed, batch_source(data.valid, data, config.dense, sparse_names, config.crosses))
    return {"auc": metrics["auc"], "logloss": metrics["logloss"], "seconds": seconds,
            "rows_per_s": len(data.train) * spec.training.epochs / seconds, "mb": mb(config.embedding_bytes())}


def _all_pairs(data: EncodedDataset) -> list[CrossFeature]:
    single = [n for n in data.sparse_names if n not in data.multi_valued]
    return [CrossFeature(a, b, cross_buckets(data.cardinalities[a], data.cardinalities[b], MAX_BUCKETS))
            for a, b in itertools.combinations(single, 2)]


# -- the three studies ----------------------------------------------------------------------------
def cost(problem: Problem, cfg: LEMBench, seed: int) -> dict[str, float]:
    """Gated selection run vs a plain run of the same model (crosses + dims + features searched)."""
    data = load_dataset(job_spec(problem, cfg, seed).dataset, seed=seed)
    n_features = len(data.dense_names) + len(data.sparse_names)
    spec = job_spec(problem, cfg, seed, features=max(1, n_features // 2), crosses=cfg.crosses,
                 embedding_dims=list(DIM_CHOICES))
    plan = plan_job(spec, data)  # the job's own search space: pre-screened crosses, widest choice
    model, selection, prescreen_s = plan.search, plan.selection, plan.timings.get("prescreen_s", 0.0)
    # A-B-B-A order: the first run in a process pays one-off costs and the machine's load drifts,
    # so each variant gets one early and one late run and the mean of its two counts.
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "gated": []}
    for variant in ("plain", "gated", "gated", "plain"):
        runs[variant].append(train_eval(data, spec, model, selection if variant == "gated" else None))
    plain_s, gated_s = (float(np.mean([r["seconds"] for r in runs[v]])) for v in ("plain", "gated"))
    rows = len(data.train) * spec.training.epochs
    return {"plain_rows_per_s": rows / plain_s, "gated_rows_per_s": rows / gated_s,
            "plain_s": plain_s, "gated_s": gated_s, "prescreen_s": prescreen_s,
            "tables": len(model.table_rows())}


def crosses(problem: Problem, cfg: LEMBench, seed: int) -> list[dict[str, Any]]:
    """AUC of retrained models with no crosses, all pairs, the pre-screen's top k, and Sequential Attention's k."""
    spec = job_spec(problem, cfg, seed)
    data = load_dataset(spec.dataset, seed=seed)
    ranked = plan_job(job_spec(problem, cfg, seed, crosses=cfg.crosses), data).crosses
    rows = []
    for variant, chosen in (("no crosses", []), ("all pairs", _all_pairs(data)),
                            (f"pre-screen top {cfg.crosses}", ranked[: cfg.crosses])):
        rows.append({"variant": variant, "crosses": len(chosen), **train_eval(data, spec, model_config(data, chosen))})
    for holdout in sorted({0.0, gate_holdout_for(cfg.epochs)}):  # the paper's gates, then the held-out rule's
        fs = run_job(job_spec(problem, cfg, seed, crosses=cfg.crosses, gate_holdout=holdout))
        rows.append({"variant": f"Sequential Attention {cfg.crosses}" + (HELD_OUT if holdout else ""),
                     "crosses": len(fs.crosses), "auc": fs.metrics.val_auc, "logloss": fs.metrics.val_logloss,
                     "mb": fs.metrics.embedding_mb, "seconds": fs.timings["selection_s"] + fs.timings["retrain_s"],
                     "picked": ", ".join(" x ".join(c.features) for c in sorted(fs.crosses, key=lambda c: c.rank)),
                     "reference_auc": fs.metrics.val_auc_all_features})
    return [{**r, "seed": seed, "problem": problem.name} for r in rows]


def dimensions(problem: Problem, cfg: LEMBench, seed: int) -> list[dict[str, Any]]:
    """AUC and memory of fixed widths, cardinality rules, and Sequential Attention's blocks."""
    spec = job_spec(problem, cfg, seed)
    data = load_dataset(spec.dataset, seed=seed)
    rows = []
    for width in (min(DIM_CHOICES), 16):
        rows.append({"variant": f"fixed {width}", **train_eval(data, spec, model_config(data, embedding_dim=width))})
    for rule, label in (("merlin", "Merlin rule"), ("fastai", "fastai rule"), ("power_law", "power law (Ginart)")):
        dims = heuristic_dims(rule, {n: data.cardinalities[n] for n in data.sparse_names}, DIM_CHOICES)
        rows.append({"variant": label, **train_eval(data, spec, model_config(data, dims=dims))})
    fs = run_job(job_spec(problem, cfg, seed, embedding_dims=list(DIM_CHOICES)))
    rows.append({"variant": "Sequential Attention blocks", "auc": fs.metrics.val_auc, "logloss": fs.metrics.val_logloss,
                 "mb": fs.metrics.embedding_mb, "seconds": fs.timings["selection_s"] + fs.timings["retrain_s"],
                 "dims": {f.name: f.embedding_dim for f in fs.features if f.embedding_dim}})
    return [{**r, "seed": seed, "problem": problem.name} for r in rows]


def pair_ground_truth(path: str, seed: int) -> pd.DataFrame:
    """Frappe: the pre-screen's gain per pair next to the AUC lift of adding that pair, alone, to a
    one-hot logistic regression of every field (one fit per pair: the expensive ground truth)."""
    data = load_dataset(job_spec(Problem("", path, ""), LEMBench(), seed).dataset, seed=seed)
    single = [n for n in data.sparse_names if n not in data.multi_valued]
    ranked = prescreen_pairs({n: first_ids(*data.train.sparse[n]) for n in single}, data.cardinalities,
                             data.train.labels, max_candidates=len(single) ** 2, seed=seed, min_gain=-np.inf)
    gains = {c.name: g for c, g in ranked}
    ids = {n: (first_ids(*data.train.sparse[n]), first_ids(*data.valid.sparse[n])) for n in single}

    def auc(columns: list[tuple[np.ndarray, np.ndarray]]) -> float:
        # Ids are already dense codes (validation ids unseen in training share code 0), so each
        # column one-hot encodes as it is.
        widths = [int(max(c[0].max(), c[1].max())) + 1 for c in columns]
        offsets = np.cumsum([0] + widths)
        mats = []
        for part in (0, 1):
            cols = np.stack([c[part] + off for c, off in zip(columns, offsets)], axis=1)
            rows = np.repeat(np.arange(len(cols)), cols.shape[1])
            mats.append(sparse.csr_matrix((np.ones(cols.size), (rows, cols.ravel())), shape=(len(cols), offsets[-1])))
        model = LogisticRegression(max_iter=300).fit(mats[0], data.train.labels)
        return float(roc_auc_score(data.valid.labels, model.predict_proba(mats[1])[:, 1]))

    base_cols = [ids[n] for n in single]
    base = auc(base_cols)
    rows = []
    for c in _all_pairs(data):
        cards = data.cardinalities[c.a], data.cardinalities[c.b]
        pair = tuple(c.ids(ids[c.a][p], ids[c.b][p], *cards) for p in (0, 1))
        rows.append({"pair": f"{c.a} x {c.b}", "lift": auc(base_cols + [pair]) - base,
                     "gain": gains.get(c.name, float("nan"))})
    return pd.DataFrame(rows).assign(base_auc=base)


# -- the report -----------------------------------------------------------------------------------
def make_problems(cfg: RunSettings, work: Path) -> list[Problem]:
    """Sections c and f's data: Frappe (the sample data) and planted rows written under ``work``."""
    planted = work / "planted"
    truth = write_synth(planted, rows=cfg.planted_rows, seed=0, n_noise=cfg.planted_noise)
    n_cols = len(truth["dense"]) + len(truth["sparse"])
    return [
        Problem("Frappe", str(sample_path(FRAPPE)), "86,582 rows, 10 categorical fields"),
        Problem("planted", str(planted), f"`seqattn synth`, {cfg.planted_rows:,} rows, {n_cols} columns, seed 0"),
    ]


def _ratio_rows(costs: pd.DataFrame) -> list[list[str]]:
    rows = []
    for name, g in costs.groupby("problem", sort=False):
        speed = g.gated_rows_per_s / g.plain_rows_per_s
        whole = (g.gated_s + g.prescreen_s) / g.plain_s
        rows.append([name, str(int(g.tables.iloc[0])), mean_std(list(g.plain_rows_per_s), 0),
                     mean_std(list(g.gated_rows_per_s), 0), mean_std(list(speed), 3), mean_std(list(whole), 3)])
    return rows


def _variant_table(df: pd.DataFrame, with_crosses: bool) -> str:
    rows = []
    for (problem, variant), g in df.groupby(["problem", "variant"], sort=False):
        row = [problem, variant]
        if with_crosses:
            row.append(str(int(g.crosses.iloc[0])))
        row += [mean_std(list(g.auc), 4), mean_std(list(g.logloss), 4), f"{g.mb.mean():.2f}", f"{g.seconds.mean():.1f}"]
        rows.append(row)
    header = ["data", "variant"] + (["crosses"] if with_crosses else []) + [
        "val AUC", "val log-loss", "embedding MB", "train s"]
    return markdown_table(header, rows)


def _gap(df: pd.DataFrame, problem: str, a: str, b: str) -> tuple[float, float]:
    """Mean and std over seeds of AUC(a) - AUC(b), paired by seed."""
    d = df[df.problem == problem].pivot_table(index="seed", columns="variant", values="auc")
    diff = (d[a] - d[b]).to_numpy()
    return float(diff.mean()), float(diff.std())


def _meaning(cost_df: pd.DataFrame, cross_df: pd.DataFrame, dim_df: pd.DataFrame, sa_cross: str) -> str:
    """The report's reading of the three tables, computed from them."""
    out = []
    for name, g in cost_df.groupby("problem", sort=False):
        speed = float((g.gated_rows_per_s / g.plain_rows_per_s).mean())
        whole = float(((g.gated_s + g.prescreen_s) / g.plain_s).mean())
        out.append(f"{name}: the gates keep {speed:.2f}x the plain rows/s (goal ≥ 0.85: "
                   f"{'met' if speed >= 0.85 else 'missed'}) and the whole selection costs {whole:.2f} plain runs "
                   f"(goal ≤ 1.5: {'met' if whole <= 1.5 else 'missed'}).")
    for name, g in cross_df.groupby("problem", sort=False):
        auc = g.groupby("variant", sort=False).auc.mean()
        size = g.groupby("variant", sort=False).mb.mean()
        best = auc.idxmax()
        text = (f"{name}: best crosses variant by AUC is {best} ({auc[best]:.4f}); Sequential Attention "
                f"{auc[sa_cross]:.4f} with {size[sa_cross]:.1f} MB of tables, against {auc['all pairs']:.4f} for all "
                f"pairs with {size['all pairs']:.1f} MB")
        prescreen = [v for v in auc.index if v.startswith("pre-screen")][0]
        text += f"; the pre-screen's own top picks score {auc[prescreen]:.4f}"
        for variant, gates in ((sa_cross, "the paper's gates"), (sa_cross + HELD_OUT, "held-out gates")):
            if variant in auc:
                gap = auc[variant] - auc[prescreen]
                verdict = ("ties them" if abs(gap) <= 0.001 else f"adds {gap:.4f} AUC over them" if gap > 0
                           else f"trails them by {-gap:.4f} AUC")
                text += f"; the gated race with {gates} {verdict}"
        text += "."
        out.append(text)
    for name, g in dim_df.groupby("problem", sort=False):
        auc = g.groupby("variant", sort=False).auc.mean()
        size = g.groupby("variant", sort=False).mb.mean()
        best = auc.idxmax()
        sa = "Sequential Attention blocks"
        out.append(f"{name}: best dimension variant is {best} ({auc[best]:.4f} at {size[best]:.2f} MB); Sequential "
                   f"Attention's blocks reach {auc[sa]:.4f} at {size[sa]:.2f} MB, {auc[sa] - auc['fixed 16']:+.4f} "
                   f"against one fixed width of 16 at {size['fixed 16']:.2f} MB.")
    return "**What this means.** " + " ".join(out)


def _plot(cross_df: pd.DataFrame, dim_df: pd.DataFrame, path: Path) -> None:
    problems = list(dict.fromkeys(cross_df.problem))
    fig, axes = plt.subplots(2, len(problems), figsize=(6 * len(problems), 8), squeeze=False)
    for j, problem in enumerate(problems):
        g = cross_df[cross_df.problem == problem].groupby("variant", sort=False).auc
        ax = axes[0][j]
        ax.bar(range(len(g)), g.mean(), yerr=g.std().fillna(0), color="tab:blue")
        ax.set_xticks(range(len(g)), list(g.groups), rotation=20, ha="right", fontsize=8)
        ax.set_ylim(g.mean().min() - 0.02, g.mean().max() + 0.01)
        ax.set_title(f"{problem}: crosses")
        ax.set_ylabel("validation AUC")
        ax = axes[1][j]
        for variant, d in dim_df[dim_df.problem == problem].groupby("variant", sort=False):
            ax.errorbar(d.mb.mean(), d.auc.mean(), yerr=d.auc.std() if len(d) > 1 else 0, fmt="o", label=variant)
        ax.set_xscale("log")
        ax.set_xlabel("embedding MB (log)")
        ax.set_ylabel("validation AUC")
        ax.set_title(f"{problem}: embedding dimensions")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: LEMBench, img_dir: Path, work: Path, log: Callable[[str], None] = print) -> str:
    problems = make_problems(cfg, work)
    costs, cross_rows, dim_rows = [], [], []
    for problem in problems:
        for seed in cfg.seeds:
            log(f"c: {problem.name} seed {seed}: cost")
            costs.append({"problem": problem.name, "seed": seed, **cost(problem, cfg, seed)})
            log(f"c: {problem.name} seed {seed}: crosses")
            cross_rows += crosses(problem, cfg, seed)
            log(f"c: {problem.name} seed {seed}: dimensions")
            dim_rows += dimensions(problem, cfg, seed)
    cost_df, cross_df, dim_df = pd.DataFrame(costs), pd.DataFrame(cross_rows), pd.DataFrame(dim_rows)
    _plot(cross_df, dim_df, img_dir / "lem.png")
    sa_cross = f"Sequential Attention {cfg.crosses}"
    lines = [
        "## c. The large embedding model: cost of the gates, crosses and embedding dimensions",
        "",
        f"The product's TorchRec LEM (DMP, FBGEMM fused CPU kernels), {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"the same train/validation split for every variant of a seed; mean ± std over {len(cfg.seeds)} seed(s) "
        "(the seed sets the split and the initialisation). Data: "
        + "; ".join(f"{p.name} ({p.note})" for p in problems) + ".",
        "",
        "### Cost: one selection run against one plain training run of the same model",
        "",
        f"The searched model holds every feature, the pre-screened cross candidates and every table at "
        f"{max(DIM_CHOICES)} dims; the gated run selects half the features, {cfg.crosses} crosses and the "
        "dimension blocks in the same epochs. Goals from the issue: rows/s ratio ≥ 0.85, selection ÷ plain ≤ 1.5.",
        "",
        markdown_table(["data", "tables", "plain rows/s", "gated rows/s", "rows/s ratio (gated ÷ plain)",
                        "selection ÷ plain run (pre-screen + gated run)"], _ratio_rows(cost_df)),
        "",
        "### Crosses",
        "",
        "Every feature kept; only the crosses differ. Sequential Attention's row is the job itself "
        f"(`features: null, crosses: {cfg.crosses}`), retrained on its picks; its time is selection + retraining. "
        f"*{HELD_OUT.removeprefix(', ')}*: the same job with `selection.gate_holdout: {gate_holdout_for(cfg.epochs)}` "
        "(the gates learn from held-out rows; `bench.gate_holdout_for`).",
        "",
        _variant_table(cross_df, with_crosses=True),
        "",
    ]
    for problem in problems:
        mean, std = _gap(cross_df, problem.name, sa_cross, "no crosses")
        picks = cross_df[(cross_df.problem == problem.name) & (cross_df.variant == sa_cross)].picked.iloc[0]
        lines.append(f"- {problem.name}: Sequential Attention's crosses minus no crosses: {mean:+.4f} ± {std:.4f} AUC "
                     f"(paired by seed); picks (seed {cfg.seeds[0]}, in order): {picks}.")
        if (cross_df.variant == sa_cross + HELD_OUT).any():
            mean, std = _gap(cross_df, problem.name, sa_cross + HELD_OUT, sa_cross)
            picks = cross_df[(cross_df.problem == problem.name) & (cross_df.variant == sa_cross + HELD_OUT)].picked
            lines.append(f"  With held-out gates (`gate_holdout: {gate_holdout_for(cfg.epochs)}`): {mean:+.4f} ± "
                         f"{std:.4f} AUC against the paper's gates (paired by seed); picks (seed {cfg.seeds[0]}): "
                         f"{picks.iloc[0]}.")
    if cfg.ground_truth_pairs:
        log("c: Frappe pair ground truth")
        gt = pair_ground_truth(problems[0].path, cfg.seeds[0])
        by_lift = gt.sort_values("lift", ascending=False).head(6)
        by_gain = gt.sort_values("gain", ascending=False).head(6)
        lines += [
            "",
            f"**Frappe: the pre-screen against the expensive ground truth** (seed {cfg.seeds[0]}). Ground truth: the "
            f"validation AUC lift of adding one cross to a one-hot logistic regression of all fields (AUC "
            f"{gt.base_auc.iloc[0]:.4f}), one fit per pair ({len(gt)} fits). Pre-screen: held-out log-loss gain over "
            "the additive model, one fit in all (`seqattn_core/crosses.py`).",
            "",
            markdown_table(["rank", "by ground-truth lift", "lift", "by pre-screen gain", "gain (nats)"],
                           [[i + 1, a.pair, f"{a.lift:+.4f}", b.pair, f"{b.gain:.4f}"]
                            for i, (a, b) in enumerate(zip(by_lift.itertuples(), by_gain.itertuples()))]),
            "",
            f"Spearman correlation of the two rankings over all {len(gt)} pairs: "
            f"{gt[['lift', 'gain']].rank().corr().iloc[0, 1]:.3f}; top-3 overlap: "
            f"{len(set(by_lift.pair[:3]) & set(by_gain.pair[:3]))}/3.",
        ]
    lines += [
        "",
        "### Embedding dimensions",
        "",
        f"Every feature kept, no crosses; choices {list(DIM_CHOICES)}. The rules map a table's cardinality to a "
        "width, snapped up to the nearest choice. Sequential Attention re-spends the memory of the 16-dim "
        "model (no `max_embedding_mb`), so compare it with `fixed 16` at about the same MB.",
        "",
        _variant_table(dim_df, with_crosses=False),
        "",
    ]
    for problem in problems:
        mean, std = _gap(dim_df, problem.name, "Sequential Attention blocks", "fixed 16")
        dims = dim_df[(dim_df.problem == problem.name) & (dim_df.variant == "Sequential Attention blocks")].dims.iloc[0]
        shown = ", ".join(f"{n} {d}" for n, d in sorted(dims.items(), key=lambda kv: -kv[1]))
        lines.append(f"- {problem.name}: Sequential Attention blocks minus fixed 16: {mean:+.4f} ± {std:.4f} AUC; "
                     f"widths chosen (seed {cfg.seeds[0]}): {shown}.")
    lines += ["", _meaning(cost_df, cross_df, dim_df, sa_cross), "", "![LEM](img/lem.png)", ""]
    return "\n".join(lines)
