"""Section g's report: the tables, the "what this means" readings and the plots, rendered from the
raw frames of one run of :mod:`bench.field` (``render``), so a kept run can be re-rendered; and the
section's entry point, ``run``: the measurements of :mod:`bench.field`, then ``render``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from bench import gate_holdout_for, markdown_table, mean_std, paired, pool_map
from bench.field import (
    FRACTIONS,
    SA_METHODS,
    FieldBench,
    Problem,
    aukc,
    dimensions,
    k_at,
    placement_probe,
    problems,
    run_problem,
    scale,
)
from bench.field_methods import METHODS
from pipelines.engine import PLANNER_MAX_TABLES
from seqattn_core.lem import warmup_for


# -- the report -----------------------------------------------------------------------------------
def _label(name: str) -> str:
    return METHODS[name].label


def summary(curves: pd.DataFrame, rankings: pd.DataFrame) -> pd.DataFrame:
    """Per problem x method x seed: AUKC, the metrics at 25/50/75 %, and the ranking's cost."""
    out = []
    for (problem, method, seed), g in curves.groupby(["problem", "method", "seed"], sort=False):
        g = g.sort_values("k")
        n = int(g.n.iloc[0])
        row = {"problem": problem, "method": method, "seed": seed, "n": n, "aukc": aukc(list(g.k), list(g.auc), n),
               "curve_points": len(g)}
        for f in FRACTIONS:
            k = k_at(f, n)
            hit = g[g.k == k]
            row[f"auc_{f}"] = float(hit.auc.iloc[0]) if len(hit) else math.nan
            row[f"logloss_{f}"] = float(hit.logloss.iloc[0]) if len(hit) else math.nan
        out.append(row)
    df = pd.DataFrame(out)
    return df.merge(rankings[["problem", "method", "seed", "seconds", "train_runs"]], on=["problem", "method", "seed"])


def _ms(values: Sequence[float], digits: int = 4) -> str:
    values = [v for v in values if not math.isnan(v)]
    return mean_std(values, digits) if values else "–"


def _k_table(s: pd.DataFrame, problem: str, n: int) -> str:
    rows = []
    for method, g in s[s.problem == problem].groupby("method", sort=False):
        row = [_label(method)]
        for f in FRACTIONS:
            row += [_ms(list(g[f"auc_{f}"])), _ms(list(g[f"logloss_{f}"]))]
        row.append(_ms(list(g.aukc)))
        rows.append(row)
    header = ["method"]
    for f in FRACTIONS:
        header += [f"k={k_at(f, n)} ({int(f * 100)} %): AUC", "log-loss"]
    return markdown_table(header + ["AUKC"], rows)


VARIANTS = ("sa_paper", "sa_crosses", "sa_dims")  # Sequential Attention itself, in other settings


def _paired_table(s: pd.DataFrame, problem: str) -> str:
    """Sequential Attention's AUKC minus every other one-run method's, paired by seed."""
    sub = s[s.problem == problem].pivot_table(index="seed", columns="method", values="aukc")
    runs = s[s.problem == problem].groupby("method").train_runs.mean()
    rows = []
    for m in sub.columns:
        if m == "sa" or m in VARIANTS or runs[m] > 1:
            continue
        mean, sd, verdict = paired(sub["sa"], sub[m])
        rows.append([_label(m), f"{mean:+.4f}", f"{sd:.4f}", f"{int((sub['sa'] >= sub[m]).sum())} / {len(sub)}",
                     verdict])
    return markdown_table(["other one-run method", "SA AUKC minus its, mean", "paired sd", "seeds SA ≥ it",
                           "verdict"], rows)


def _cost_table(s: pd.DataFrame, rankings: pd.DataFrame, problem: str, plain_s: pd.Series) -> str:
    rows = []
    sub = s[s.problem == problem]
    for method, g in sub.groupby("method", sort=False):
        ratio = [r.seconds / plain_s[r.seed] for r in g.itertuples()]
        notes = rankings[(rankings.problem == problem) & (rankings.method == method)].note.iloc[0]
        rows.append([_label(method), METHODS[method].cite, f"{g.seconds.mean():.1f}", f"{g.train_runs.mean():.0f}",
                     f"{np.mean(ratio):.2f}", str(int(g.curve_points.iloc[0])), notes or ""])
    return markdown_table(["method", "paper", "ranking wall s", "training runs (ranking)", "ranking ÷ one plain run",
                           "retrained models for its curve", "note"], rows)


def _meaning(s: pd.DataFrame, rankings: pd.DataFrame, problem: str, n: int, plain: pd.Series) -> str:
    sub = s[s.problem == problem]
    cols = ["aukc", *[f"auc_{f}" for f in FRACTIONS]]
    mean = sub.groupby("method", sort=False)[cols].mean()
    std = sub.groupby("method", sort=False)[cols].std(ddof=0).fillna(0)
    # The plain top-k methods: the + crosses / + dims variants retrain a different model (crosses, widths).
    top_k = mean.drop(index=[m for m in ("sa_crosses", "sa_dims") if m in mean.index])
    others = top_k.drop(index=[m for m in VARIANTS if m in top_k.index])
    out = [f"**What this means ({problem}).**"]
    order = top_k.aukc.sort_values(ascending=False)
    out.append(f"Among the plain top-k methods the AUKC order is "
               f"{', '.join(f'{_label(m)} {v:.4f}' for m, v in order.head(5).items())}; last: "
               f"{_label(order.index[-1])} {order.iloc[-1]:.4f}.")
    for f in FRACTIONS:
        col = f"auc_{f}"
        best = others[col].idxmax()
        sa_v = mean.loc["sa", col]
        gap = others.loc[best, col] - sa_v
        if best == "sa":
            runner = others[col].drop(index="sa").idxmax()
            out.append(f"At k={k_at(f, n)} Sequential Attention is best ({sa_v:.4f} ± {std.loc['sa', col]:.4f}; next "
                       f"{_label(runner)} {others.loc[runner, col]:.4f}).")
        else:
            within = "within 0.001 of it" if gap <= 0.001 else f"{gap:.4f} behind"
            out.append(f"At k={k_at(f, n)} the best is {_label(best)} ({others.loc[best, col]:.4f} ± "
                       f"{std.loc[best, col]:.4f}); Sequential Attention {sa_v:.4f} ± {std.loc['sa', col]:.4f} "
                       f"is {within}.")
    if len(sub.seed.unique()) > 1:
        spread = float(std.drop(index=[m for m in ("random",) if m in std.index])[
            [f"auc_{f}" for f in FRACTIONS]].to_numpy().mean())
        out.append(f"The seed-to-seed std of a retrained AUC (random left out) averages {spread:.4f} here, "
                   f"{'above' if spread > 0.001 else 'below'} the 0.001 that counts as significant in CTR work, so "
                   f"gaps under about {2 * spread:.3f} are not resolved by {len(sub.seed.unique())} seeds.")
    losses = [(m, others.aukc[m] - mean.aukc["sa"]) for m in others.index if m != "sa" and
              others.aukc[m] - mean.aukc["sa"] > 0.001]
    if losses:
        out.append("Where Sequential Attention does not win on AUKC: " + ", ".join(
            f"{_label(m)} is ahead by {d:.4f}" for m, d in sorted(losses, key=lambda x: -x[1])) + ".")
    else:
        out.append("No other top-k method beats Sequential Attention on AUKC by more than 0.001.")
    if "random" in mean.index:
        below = [m for m in top_k.index if m != "random" and top_k.aukc[m] < mean.aukc["random"] + 0.001]
        out.append(f"Against a random order Sequential Attention's AUKC is {mean.aukc['sa'] - mean.aukc['random']:+.4f}"
                   + (f"; no better than random: {', '.join(_label(m) for m in below)}." if below else "."))
    if "sa_paper" in mean.index:
        d, sd, _ = paired(sub[sub.method == "sa"].sort_values("seed").aukc,
                          sub[sub.method == "sa_paper"].sort_values("seed").aukc)
        share = gate_holdout_for(int(rankings[rankings.problem == problem].epochs.iloc[0]))
        out.append(f"Sequential Attention's gates here hold out {share:.0%} of the rows (`gate_holdout_for`: 20 % "
                   "from two epochs on, none in one epoch); against the paper's gates (the job's default), trained "
                   f"on the training loss: AUKC {d:+.4f} ± {sd:.4f} (paired by seed)."
                   + (" In one epoch the two are the same run." if share == 0 else ""))
    variants = [m for m in ("sa_crosses", "sa_dims") if m in mean.index]
    crosses = rankings[(rankings.problem == problem) & (rankings.method == "sa_crosses")].crosses
    if variants:
        text = (f"The Sequential Attention variants that also race crosses (+ crosses) and widths (+ dims) reach AUKC "
                f"{', '.join(f'{mean.aukc[m]:.4f}' for m in variants)} and, at k = 25/50/75 %, "
                f"{'; '.join(', '.join(f'{mean.loc[m, c]:.4f}' for c in cols[1:]) for m in variants)} "
                "(their models add the picked crosses among the kept fields and the chosen widths).")
        if len(crosses) and all(len(c) == 0 for c in crosses):
            text += (" Here the job's cross pre-screen found no pair with a positive held-out gain, so + crosses "
                     "raced no cross and equals the features-only run.")
        out.append(text)
    cost = {m: float(np.mean([r.seconds / plain[r.seed] for r in g.itertuples()]))
            for m, g in sub.groupby("method", sort=False)}
    runs = sub.groupby("method", sort=False).train_runs.mean()
    gated = [m for m in ("oneshot", "autofield", "adafs", "shufflegate", "group_lasso") if m in cost]
    text = (f"Cost: Sequential Attention's ranking took {cost['sa']:.1f} plain runs of wall time (one training run "
            "for the whole order)")
    if gated:
        text += (f"; the other one-run gated methods {min(cost[m] for m in gated):.1f} to "
                 f"{max(cost[m] for m in gated):.1f}")
    if "permutation" in cost:
        text += f", permutation importance {cost['permutation']:.1f} (its training run plus {n} x 5 shuffled scorings)"
    if "greedy" in cost:
        text += f", the greedy wrapper {cost['greedy']:.1f} ({runs['greedy']:.0f} training runs)"
    out.append(text + ".")
    return " ".join(out)


COLORS = {"sa": "tab:red", "sa_paper": "tab:pink", "sa_crosses": "darkred", "sa_dims": "salmon",
          "oneshot": "tab:orange",
          "autofield": "tab:blue", "adafs": "tab:cyan", "shufflegate": "tab:green", "shark": "tab:olive",
          "permutation": "tab:purple", "group_lasso": "tab:brown", "mi": "tab:pink", "greedy": "black",
          "random": "grey"}
STYLES = {"sa_crosses": "--", "sa_dims": "--", "random": ":", "greedy": "-."}


def _plot_curves(curves: pd.DataFrame, path: Path) -> None:
    probs = list(dict.fromkeys(curves.problem))
    fig, axes = plt.subplots(1, len(probs), figsize=(6.5 * len(probs), 5), squeeze=False)
    for ax, problem in zip(axes[0], probs):
        sub = curves[curves.problem == problem]
        for method, g in sub.groupby("method", sort=False):
            color, ls = COLORS[method], STYLES.get(method, "-")
            stats = g.groupby("k").auc.agg(["mean", "std"]).fillna(0)
            ax.plot(stats.index, stats["mean"], ls, color=color, label=_label(method), lw=2 if method == "sa" else 1.2)
            ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color=color,
                            alpha=0.12)
        ax.set_xlabel("k (fields kept)")
        ax.set_ylabel("validation AUC of the retrained model")
        ax.set_title(f"{problem}: AUC against k (mean ± std over seeds)")
        lo = sub.groupby(["method", "k"]).auc.mean().quantile(0.15)
        ax.set_ylim(lo, sub.auc.max() + 0.003)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_cost(s: pd.DataFrame, plain: dict[str, pd.Series], path: Path) -> None:
    probs = list(dict.fromkeys(s.problem))
    fig, axes = plt.subplots(1, len(probs), figsize=(6 * len(probs), 4.5), squeeze=False)
    for ax, problem in zip(axes[0], probs):
        sub = s[s.problem == problem]
        for method, g in sub.groupby("method", sort=False):
            ratio = np.mean([r.seconds / plain[problem][r.seed] for r in g.itertuples()])
            ax.errorbar(max(ratio, 1e-2), g.aukc.mean(), yerr=g.aukc.std(ddof=0),
                        fmt="*" if method in SA_METHODS else "o",
                        color=COLORS[method], ms=12 if method in SA_METHODS else 7, label=_label(method))
        ax.set_xscale("log")
        ax.set_ylabel("AUKC")
        ax.set_xlabel("ranking wall time ÷ one plain training run (log; no training shown at 0.01)")
        ax.set_title(f"{problem}: quality against selection cost")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_dims(dims: pd.DataFrame, path: Path) -> None:
    probs = list(dict.fromkeys(dims.problem))
    fig, axes = plt.subplots(1, len(probs), figsize=(6 * len(probs), 4.5), squeeze=False)
    markers = {"fixed": "o-", "power law (Ginart)": "s-", "Sequential Attention blocks": "*-"}
    for ax, problem in zip(axes[0], probs):
        for variant, g in dims[dims.problem == problem].groupby("variant", sort=False):
            stats = g.groupby("setting", sort=False).agg(mb=("mb", "mean"), auc=("auc", "mean"), sd=("auc", "std"))
            stats = stats.sort_values("mb")
            ax.errorbar(stats.mb, stats.auc, yerr=stats.sd.fillna(0), fmt=markers[variant], label=variant, ms=8)
        ax.set_xscale("log")
        ax.set_xlabel("embedding MB (log)")
        ax.set_ylabel("validation AUC")
        ax.set_title(f"{problem}: embedding memory against AUC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_scale(sc: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, axis, x, label in ((axes[0], "candidates", "fields", "candidate fields"),
                               (axes[1], "rows", "train_rows", "training rows")):
        g = sc[sc.axis == axis].sort_values(x)
        for col, name in (("select_s", "Sequential Attention selection run"), ("plain_s", "one plain training run"),
                          ("mi_s", "MI filter")):
            ax.plot(g[x], g[col], "o-", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{label} (log)")
        ax.set_ylabel("wall s (log)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Exponent b of y ~ x^b (least squares on logs)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def render(cfg: FieldBench, probs: list[Problem], curves_df: pd.DataFrame, rank_df: pd.DataFrame, dim_df: pd.DataFrame,
           sc: pd.DataFrame, probe: dict[str, Any] | None, img_dir: Path) -> str:
    """The plots and the markdown of section g from the raw frames of one run."""
    s = summary(curves_df, rank_df)
    plain_train = {p: g.groupby("seed").plain_s.first() for p, g in rank_df.groupby("problem", sort=False)}
    _plot_curves(curves_df, img_dir / "field-curves.png")
    _plot_cost(s, plain_train, img_dir / "field-cost.png")
    if len(dim_df):
        _plot_dims(dim_df, img_dir / "field-dims.png")
    if len(sc):
        _plot_scale(sc, img_dir / "field-scale.png")
    return _report(cfg, probs, curves_df, rank_df, s, plain_train, dim_df, sc, probe)


def _report(cfg: FieldBench, probs: list[Problem], curves: pd.DataFrame, rankings: pd.DataFrame, s: pd.DataFrame,
            plain: dict[str, pd.Series], dims: pd.DataFrame, sc: pd.DataFrame,
            probe: dict[str, Any] | None = None) -> str:
    warmups = ", ".join(f"{p.name} {warmup_for(p.epochs):.0%}" for p in probs)
    lines = [
        "## g. Against the field: the ERASE protocol",
        "",
        "Every method ranks the fields; then the same TorchRec LEM (DMP, FBGEMM fused CPU kernels, DCN-v2 tower, "
        "16-dim tables) is retrained from scratch on the top k fields and scored on the validation split "
        "(the protocol of ERASE, Jia et al., KDD 2024). The seed fixes the 80/20 train/validation split and the "
        f"initialisation; mean ± std over {len(cfg.seeds)} seed(s). Rankers see only the train split: its first 80 % "
        "to train, its last 20 % as held-out search data (AutoField's architecture steps, AdaFS's and group lasso's "
        "read-out, SHARK, permutation importance, the greedy wrapper's scores). Code: `bench/field.py` (protocol, "
        "tables, plots) and `bench/field_methods.py` (one function per method, each citing its paper).",
        "",
        "Data: " + "; ".join(f"**{p.name}**: {p.note}" for p in probs) + ". A larger public dataset: none could "
        "be installed from a package registry without a download at run time. Searching the PyPI index for "
        "Criteo, Avazu, MovieLens and KuaiRec found only API clients and SDKs; the libraries that do load such "
        "data (scikit-learn's and TFDS's fetchers, RecBole, LightFM, Surprise) download it when first used, which "
        "these machines cannot do. The shared raw Criteo/Avazu samples (8-9k rows) are smaller than the 20k sample.",
        "",
        "Methods. *Sequential Attention* is the job's own gated run with `features` = every field, so its pick order "
        "ranks them all in one run (the races start after the job's warm-up, [warmup.md](warmup.md): "
        f"{warmups}), and from two epochs on its gates learn from 20 % of the search-train rows that the weights "
        "never train on (`selection.gate_holdout`, [architecture.md](architecture.md)); *paper's gates* is the same "
        "run with the gates trained on the training loss, the job's default (`gate_holdout: 0`; in one epoch the "
        "two are the same run); "
        f"*+ crosses* also races 3 crosses from the job's pre-screen in the same run, and "
        "the retrained model at k keeps those whose two fields are both among the k; *+ dims* also races the "
        "dimension blocks (4/8/16/32) and retrains at the chosen widths. *One-shot attention*: the same gates, one "
        "phase, no warm-up, fields ranked by the final gate. *AutoField*: keep/drop logits per field, Gumbel-softmax, "
        "first-order DARTS (logits stepped on held-out batches, weights on training batches). *AdaFS (soft)*: a "
        "controller network weighs the fields per example (OptFS's per-value gates would need a gate per embedding "
        "row inside FBGEMM's fused tables, so AdaFS was the cleaner one to implement faithfully). *ShuffleGate*: "
        "gate g mixes each field with a batch-shuffled copy of itself, L1 on g (λ = 1e-4; larger λ closed every gate). "
        "*SHARK*: first-order "
        "Taylor importance |Σ e·∂L/∂e| of the trained all-features model. *Permutation importance*: scikit-learn's "
        "`permutation_importance` (5 shuffles per field, AUC drop) on the same trained model. *Group lasso*: "
        "penalty λ Σ_f RMS‖e_f‖ (λ = 0.02) on each field's pooled embedding, ranked by the norm. *MI filter*: "
        "scikit-learn's `mutual_info_classif` on the ids. *Greedy forward*: retrains the LEM for every remaining "
        f"field at every step ({', '.join(cfg.greedy_problems) or 'nowhere'}; elsewhere it does not fit: on Criteo the "
        f"full order is {sum(range(2, 40))} training runs, on the planted data {sum(range(2, 41))}). "
        "*Random*: a random order per seed. *All features* is every curve's last "
        "point (k = all).",
        "",
    ]
    for p in probs:
        sub = s[s.problem == p.name]
        if not len(sub):
            continue
        n = int(sub.n.iloc[0])
        ks = sorted(curves[curves.problem == p.name].k.unique())
        allf = curves[(curves.problem == p.name) & (curves.k == n)].groupby("seed")
        lines += [
            f"### {p.name}: retrained AUC and log-loss at k = 25 / 50 / 75 % of {n} fields",
            "",
            f"All {n} fields: AUC {_ms(list(allf.auc.mean()))}, log-loss {_ms(list(allf.logloss.mean()))}. "
            f"AUKC = area under the AUC-versus-k curve over k = 1..{n}, divided by {n - 1} (the mean AUC over k; "
            f"trapezoids between the retrained k = {', '.join(map(str, ks))}).",
            "",
            _k_table(s, p.name, n),
            "",
            f"Paired by seed ({p.name}): Sequential Attention's AUKC against every other method that costs at most "
            "one training run (the acceptance bar: at or above, or within one paired standard deviation).",
            "",
            _paired_table(s, p.name),
            "",
        ]
        if p.name == "Criteo":
            lines += ["*Published* (ERASE, full Criteo, 45M rows, Wide&Deep): all 39 fields 0.8012 AUC. The 20k-row "
                      "sample here is over 2,000 times smaller, so absolute AUCs are far lower; the ranking of methods "
                      "is what carries over.", ""]
        lines += [
            f"**Selection cost ({p.name}).** Ranking wall time (mean over seeds) and training runs; one plain run = "
            "placing and training the all-features LEM on the search rows, timed in the same process "
            f"({', '.join(f'{v:.1f} s' for v in plain[p.name])} by seed; wall time, placement included, as in every "
            "ranking's wall time). Every method's "
            "ranking is a full order, so its whole curve needs one ranking plus one retrained model per k.",
            "",
            _cost_table(s, rankings, p.name, plain[p.name]),
            "",
            _meaning(s, rankings, p.name, n, plain[p.name]),
            "",
        ]
        order_rows = []
        for method, g in rankings[(rankings.problem == p.name)
                                  & (rankings.seed == cfg.seeds[0])].groupby("method", sort=False):
            order = g.order.iloc[0]
            shown = ", ".join(order[:10]) + (" ..." if len(order) > 10 else "")
            extra = f" (crosses: {', '.join(g.crosses.iloc[0])})" if g.crosses.iloc[0] else ""
            order_rows.append([_label(method), shown + extra])
        lines += [f"Top of each ranking ({p.name}, seed {cfg.seeds[0]}):", "",
                  markdown_table(["method", "fields, best first"], order_rows), ""]
    lines += ["![AUC against k](img/field-curves.png)", "", "![quality against cost](img/field-cost.png)", ""]
    if len(dims):
        lines += [
            "### Embedding dimensions: memory against AUC",
            "",
            "Every field kept, no crosses. *Fixed*: one width for all tables (4, 8, 16, 32). *Power law*: Ginart et "
            "al.'s mixed dimensions by cardinality (`seqattn_core.dimensions.power_law_dims`, the smallest table "
            "gets the base width, larger ones less), snapped to the choices up to the base. *Sequential Attention "
            "blocks*: the job's dimension race (choices 4/8/16/32) with `max_embedding_mb` set to each power-law "
            "model's memory (equal memory), selected on the search rows and retrained at the chosen widths.",
            "",
            markdown_table(["data", "method", "setting", "embedding MB", "val AUC", "val log-loss", "fields kept"],
                           [[prob, var, setting, f"{g.mb.mean():.3f}", _ms(list(g.auc)), _ms(list(g.logloss)),
                             f"{g.fields.mean():.0f}" if "fields" in g and not g.fields.isna().all() else "all"]
                            for (prob, var, setting), g in dims.groupby(["problem", "variant", "setting"],
                                                                        sort=False)]),
            "",
            _dims_meaning(dims),
            "",
            "![memory against AUC](img/field-dims.png)",
            "",
        ]
    if len(sc):
        lines += _scale_report(sc, cfg, probe)
    return "\n".join(lines)


def _dims_meaning(dims: pd.DataFrame) -> str:
    """Sequential Attention's widths against the power law at the same memory, paired by seed."""
    out = ["**What this means (dimensions).** Sequential Attention's widths minus the power law's AUC at the same "
           "memory, paired by seed:"]
    for problem, g in dims.groupby("problem", sort=False):
        parts = []
        for setting in g[g.variant == "power law (Ginart)"].setting.unique():
            law = g[(g.variant == "power law (Ginart)") & (g.setting == setting)].sort_values("seed")
            sa = g[(g.variant == "Sequential Attention blocks") & (g.setting == f"at power law {setting}")]
            if not len(sa):
                continue
            sa = sa.sort_values("seed")
            d, sd, verdict = paired(sa.auc, law.auc)
            parts.append(f"{setting} ({law.mb.mean():.3f} MB against {sa.mb.mean():.3f} MB): {d:+.4f} ± {sd:.4f}, "
                         f"{verdict}")
        out.append(f"{problem}: " + "; ".join(parts) + ".")
    return " ".join(out)


def _scale_report(sc: pd.DataFrame, cfg: FieldBench, probe: dict[str, Any] | None) -> list[str]:
    sc = sc.assign(select_setup_s=sc.select_s - sc.select_train_s, plain_setup_s=sc.plain_s - sc.plain_train_s)
    cand = sc[sc.axis == "candidates"].sort_values("fields")
    rows_ = sc[sc.axis == "rows"].sort_values("train_rows")
    table = markdown_table(
        ["axis", "candidate fields", "rows (search-train)", "distinct ids", "k selected", "SA selection s",
         "of which training loop s", "plain run s", "of which training loop s", "SA ÷ plain", "MI filter s"],
        [[r.axis, r.fields, f"{r.train_rows:,}", f"{r.ids:,}", r.k, f"{r.select_s:.1f}", f"{r.select_train_s:.1f}",
          f"{r.plain_s:.1f}", f"{r.plain_train_s:.1f}", f"{r.select_s / r.plain_s:.2f}", f"{r.mi_s:.2f}"]
         for r in sc.itertuples()])
    lines = [
        "### Scale: selection time against candidates and rows (timing only)",
        "",
        f"Planted data (`seqattn synth`, seed 0) with more noise columns; one Sequential Attention selection run "
        f"(k = 10 % of the fields; wall time including the job's planning and the model's placement), one plain "
        f"training run of the same all-features model (wall time including placement) and the MI filter, "
        f"{cfg.scale_epochs} epoch(s), batch 512, on the search rows (80 % of the train split). The training-loop "
        "columns leave out placement (TorchRec's sharding planner and `DistributedModelParallel`). No retraining "
        "and no AUC here: these points only time the search. The `large` row is the 400-field problem with the "
        "most distinct ids this generator gives (its noise columns have at most 10,000 ids each).",
        "",
        table,
        "",
    ]
    if len(cand) > 1 and len(rows_) > 1:
        ratio = sc.select_s / sc.plain_s
        lines.append(
            f"**Measured growth.** Against candidates ({', '.join(map(str, cand.fields))} fields at "
            f"{cand.rows.iloc[0]:,} rows): the selection's wall time grows as "
            f"n^{_slope(cand.fields, cand.select_s):.2f} "
            f"(its training loop as n^{_slope(cand.fields, cand.select_train_s):.2f}, placement and planning as "
            f"n^{_slope(cand.fields, cand.select_setup_s):.2f}), the plain run as "
            f"n^{_slope(cand.fields, cand.plain_s):.2f}, "
            f"the MI filter as n^{_slope(cand.fields, cand.mi_s):.2f}. Against rows "
            f"({', '.join(f'{r:,}' for r in rows_.train_rows)} at {rows_.fields.iloc[0]} fields): selection "
            f"rows^{_slope(rows_.train_rows, rows_.select_s):.2f}, plain run "
            f"rows^{_slope(rows_.train_rows, rows_.plain_s):.2f}. "
            + ("Exponents well below 1 mean that fixed per-run costs (placement, evaluation set-up) still dominate "
               "at these sizes."
               if min(_slope(rows_.train_rows, rows_.select_s), _slope(rows_.train_rows, rows_.plain_s)) < 0.8
               else "")
            + f" At {cand.fields.iloc[-1]:,} fields placement and planning are "
            f"{(cand.select_setup_s / cand.select_s).iloc[-1]:.0%} of the selection run's wall time and "
            f"{(cand.plain_setup_s / cand.plain_s).iloc[-1]:.0%} of the plain run's (the planner's time varies from "
            "run to run, which is why SA ÷ plain can fall below 1 there). "
            f"Over all points one selection run costs {ratio.min():.2f}x to {ratio.max():.2f}x one plain run; the "
            "greedy wrapper costs about (number of candidates) x k plain runs (at 1,000 candidates and k = 100: "
            f"{sum(range(901, 1001)):,} runs). Wall-clock times on a 2-core machine shared with other jobs: expect "
            "±30 % noise per point.")
    if probe is not None:
        if probe["placed"]:
            lines += ["", f"**{probe['fields']:,} candidate fields** ({probe['rows']:,} rows, {probe['ids']:,} "
                          f"distinct ids): placement alone took {probe['seconds']:.0f} s"
                          + (f". Past {PLANNER_MAX_TABLES:,} tables the plan is built directly, every table whole "
                             "on one rank, the largest first to the least-loaded rank (here a world of one: all on "
                             "rank 0), instead of running TorchRec's planner, whose time grows as measured above "
                             "(`pipelines/engine.py`)." if probe["tables"] > PLANNER_MAX_TABLES else ".")]
        else:
            lines += ["", f"**{probe['fields']:,} candidate fields** ({probe['rows']:,} rows of `seqattn synth`): the "
                          f"placement alone (TorchRec's sharding planner for one table per field, then DMP) had not "
                          f"finished after {probe['seconds']:.0f} s and was stopped, so this point has no selection "
                          "time. The limit at this size is the planner, which runs before any training: see the "
                          "growth of the placement time above."]
    lines += ["", "![scale](img/field-scale.png)", ""]
    return lines


# Relative wall time of each problem's measurements (section g, 2026-11-27): the longest starts first.
PROBLEM_COST = {"planted": 3, "Criteo": 2, "Frappe": 1}


def _measure_in_worker(args: tuple[Problem, FieldBench, int]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`_measure_problem` in a spawned worker, with the parent's thread limits (torch and BLAS)."""
    problem, cfg, threads = args
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return _measure_problem(problem, cfg)


def _measure_problem(problem: Problem, cfg: FieldBench,
                     log: Callable[[str], None] = print) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One problem's curves, rankings and (when asked for) dimension points."""
    curves, rankings = run_problem(problem, cfg, log)
    dims = dimensions(problem, cfg.seeds, log) if problem.name in cfg.dim_problems else pd.DataFrame()
    return curves, rankings, dims


def run(cfg: FieldBench, img_dir: Path, work: Path, log: Callable[[str], None] = print) -> str:
    """Section g end to end: every measurement of :mod:`bench.field`, then :func:`render`."""
    # Timing-only scale points first: the quickest to fail (TorchRec's planner on many tables).
    sc = scale(cfg, work, log) if cfg.scale_candidates else pd.DataFrame()
    probe = None
    if cfg.placement_probe_fields:
        log(f"g: placement probe, {cfg.placement_probe_fields} fields (at most {cfg.placement_timeout_s:.0f} s)")
        probe = placement_probe(cfg.placement_probe_fields, cfg.scale_candidate_rows, cfg.placement_timeout_s, work)
    probs = problems(cfg, work)
    # Problems are independent: up to ``cfg.procs`` of them run side by side, one spawned process each
    # (each with its own process group), the longest first.
    jobs = sorted(probs, key=lambda p: -PROBLEM_COST.get(p.name, 0))
    if cfg.procs > 1 and len(jobs) > 1:
        parts, _ = pool_map(_measure_in_worker, [(p, cfg, torch.get_num_threads()) for p in jobs],
                            min(cfg.procs, len(jobs)))
    else:
        parts = [_measure_problem(p, cfg, log) for p in jobs]
    curves_df = pd.concat([c for c, _, _ in parts], ignore_index=True)
    rank_df = pd.concat([r for _, r, _ in parts], ignore_index=True)
    dim_df = pd.concat([d for _, _, d in parts], ignore_index=True)
    order = {p.name: i for i, p in enumerate(probs)}  # the report keeps the problems' order
    curves_df = curves_df.sort_values("problem", key=lambda c: c.map(order), kind="stable")
    rank_df = rank_df.sort_values("problem", key=lambda c: c.map(order), kind="stable")
    dim_df = dim_df.sort_values("problem", key=lambda c: c.map(order), kind="stable") if len(dim_df) else dim_df
    keep = os.environ.get("SEQATTN_BENCH_KEEP")  # a folder to keep the raw frames in (re-rendering, checks)
    if keep:
        pd.to_pickle({"curves": curves_df, "rankings": rank_df, "dims": dim_df, "scale": sc, "probe": probe},
                     Path(keep) / "field.pkl")
    return render(cfg, probs, curves_df, rank_df, dim_df, sc, probe, img_dir)
