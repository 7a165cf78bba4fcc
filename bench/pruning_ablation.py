"""Ablation of SequentialAttention++'s settings against block-magnitude pruning (bench section f).

Section f compares the two methods at the defaults. This grid asks how the attention's settings
move it against magnitude on our data: what happens to the logits at a phase boundary (``reset``:
folded into the weights and zeroed; ``carry``: kept into the sparsify phase), the clip of the
attention weights (1 = they can only shrink tiles; 8 = they may amplify them), the tile logits'
learning rate (as a multiple of the run's), and an L2 penalty on the pruned weights (the paper's
reading of the softmax mask as a group sparsity penalty needs one; it is given to both methods).
A second study ranks the tiles two ways (``PruningConfig.rank_by``: the tile's norm in use, or the
attention logits) on seeds section f does not use, with more rows (planted 400k and 1M), more steps
(Frappe: 6 epochs, or batch 256) or fewer (one epoch; Frappe also 2), against block magnitude, and
shows which inputs each method's kept tiles read (:func:`bench.pruning.kept_by_input`). Two
follow-ups give every method the same weight decay (1e-2, and 1), and try the logit ranking's rate
where it loses most. Every cell is one run of the product's TorchRec LEM, the same as section f's;
the runs are independent, so they go to a process pool.

    python -m bench.pruning_ablation --procs 2     # writes docs/pruning_ablation.md (~50 min on 2 cores)
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from bench import markdown_table, study_parser
from bench.datasets import FRAPPE, sample_path
from bench.pruning import MAGNITUDE, METHODS, SA, SA_LOGITS

SPARSITIES = (0.9, 0.95)
LOGITS = ("reset", "carry")
CLIPS = (1.0, 8.0)
LR_SCALES = (1.0, 10.0)
# ``weight_decay`` is lambda in ``lambda * sum ||W||^2`` added to the mean log-loss: 1e-3 and 1e-2 move
# the tower's weights a little, 1 pins them near zero (on Frappe it can collapse a run).
WEIGHT_DECAYS = (0.0, 1e-3, 1e-2, 1.0)
# The ranking study: (data, planted rows or None for Frappe, epochs, batch, seeds). Section f runs
# seeds 0-2 at 3 epochs, batch 1024 on 100k planted rows; the first two lines use 17 other seeds. The
# last three train shorter: one pass over the data is how CTR models are usually trained, and there
# the pruned Frappe tower is still worse than the dense one.
REGIMES = (("planted", 100_000, 3, 1024, range(3, 20)), ("Frappe", None, 3, 1024, range(3, 20)),
           ("planted", 400_000, 3, 1024, range(5)), ("planted", 1_000_000, 3, 1024, range(3)),
           ("Frappe", None, 6, 1024, range(5)), ("Frappe", None, 3, 256, range(5)),
           ("planted", 100_000, 1, 1024, range(10)), ("Frappe", None, 1, 1024, range(10)),
           ("Frappe", None, 2, 1024, range(10)))
# inputs_report's regimes: ((problem, rows, epochs, batch), label): section f's two, and Frappe at 6 epochs,
# where the logit ranking loses clearly.
INPUTS = ((("Frappe", None, 3, 1024), "Frappe, 3 epochs"), (("Frappe", None, 6, 1024), "Frappe, 6 epochs"),
          (("planted", 100_000, 3, 1024), "planted 100k, 3 epochs"))
RANKINGS = (SA, SA_LOGITS)  # each against MAGNITUDE, with section f's settings (bench.pruning.METHODS)
# Two follow-ups on the ranking study: every method with the weight decays DECAYS on section f's regimes
# (held-out seeds), and the logit ranking's rate on Frappe at 6 epochs (where ×100 loses clearly).
DECAYED = (("planted", 100_000, 3, 1024, range(3, 10)), ("Frappe", None, 3, 1024, range(3, 10)))
DECAYS = (1e-2, 1.0)
LOGIT_RATES, RATE_SEEDS = (10.0, 25.0, 50.0), range(5)
PAIRED_HEADER = (["data, training", "sparsity", "seeds", "magnitude log-loss"]
                 + [f"{v} minus magnitude" for v in RANKINGS])


def run_cell(cell: tuple) -> dict[str, object]:
    """One run: (study, problem, rows, path, seed, epochs, batch, sparsity, variant, PruningConfig settings)."""
    import torch

    torch.set_num_threads(1)
    from bench.lem import Problem, job_spec
    from bench.pruning import PruningBench, train_pruned
    from pipelines.dataset import load_dataset
    from seqattn_core.pruning import PruningConfig

    study, problem, rows, path, seed, epochs, batch, sparsity, variant, settings = cell
    spec = job_spec(Problem(problem, path, ""), PruningBench(epochs=epochs, batch_size=batch), seed)
    data = load_dataset(spec.dataset, seed=seed)
    pruning = PruningConfig(sparsity=sparsity, **{"block": 8, **settings})  # bench.pruning_schedule sets block
    return {"study": study, "problem": problem, "rows": rows, "seed": seed, "epochs": epochs, "batch": batch,
            "sparsity": sparsity, "variant": variant, **settings,
            **train_pruned(data, spec, pruning, inspect=study == "ranking"),
            "cardinalities": data.cardinalities}


def _grid(problems: dict[str, str], seeds: tuple[int, ...], epochs: int) -> list[tuple]:
    cells = []
    for (name, path), seed, sparsity, wd in itertools.product(problems.items(), seeds, SPARSITIES, WEIGHT_DECAYS):
        grid = [("magnitude", "reset", 1.0, 1.0)] + [
            ("attention", *x) for x in itertools.product(LOGITS, CLIPS, LR_SCALES)]
        cells += [("grid", name, None, path, seed, epochs, 1024, sparsity, "grid",
                   {"method": m, "logits": logits, "clip": clip, "logit_lr_scale": lr, "weight_decay": wd})
                  for m, logits, clip, lr in grid]
    return cells


def _rankings(paths: dict[tuple[str, int | None], str]) -> list[tuple]:
    """The ranking study's cells, then the two follow-ups' (``DECAYED``, ``LOGIT_RATES``)."""
    cells = [("ranking", name, rows, paths[name, rows], seed, epochs, batch, sparsity, variant, settings)
             for name, rows, epochs, batch, seeds in REGIMES for seed in seeds for sparsity in SPARSITIES
             for variant, settings in METHODS.items()]
    cells += [("decay", name, rows, paths[name, rows], seed, epochs, batch, sparsity, variant,
               {**settings, "weight_decay": wd})
              for name, rows, epochs, batch, seeds in DECAYED for seed in seeds for sparsity in SPARSITIES
              for wd in DECAYS for variant, settings in METHODS.items()]
    return cells + [("rate", "Frappe", None, paths["Frappe", None], seed, 6, 1024, sparsity, f"{SA_LOGITS} ×{rate:g}",
                     {**METHODS[SA_LOGITS], "logit_lr_scale": rate})
                    for seed in RATE_SEEDS for sparsity in SPARSITIES for rate in LOGIT_RATES]


def _spans(seeds: list[int]) -> str:
    """Seeds as runs: ``[3, 5, 6, 7]`` -> ``"3, 5-7"``."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _versus_magnitude(df: pd.DataFrame,
                      variants: tuple[str, ...]) -> tuple[list[list[str]], dict[tuple[str, str], tuple[int, int]]]:
    """Per regime and sparsity: the seeds, magnitude's mean log-loss, then each variant's log-loss
    (and AUC) minus magnitude's, paired by seed; with, per (variant, data), the cells at or below."""
    if "weight_decay" not in df:
        df = df.assign(weight_decay=float("nan"))
    # Rows in a fixed order (the pool returns runs in any): planted before Frappe, then by size and length.
    df = df.sort_values(["problem", "rows", "epochs", "batch", "weight_decay", "sparsity", "seed"],
                        ascending=[False, True, True, False, True, True, True])
    df = df.assign(regime=[f"{p}{f' {int(r) // 1000}k' if r == r else ''}, {e} epochs, batch {b}"
                           f"{f', weight decay {w:g}' if w == w else ''}"
                           for p, r, e, b, w in zip(df.problem, df.rows, df.epochs, df.batch, df.weight_decay)])
    keys = ["regime", "sparsity", "seed"]
    mag = df[df.variant == MAGNITUDE].set_index(keys).sort_index()
    rows, wins = [], {}
    for (problem, regime, s), g in df[df.variant != MAGNITUDE].groupby(["problem", "regime", "sparsity"], sort=False):
        cells = [regime, f"{s:.0%}", _spans(sorted(g.seed.unique())), f"{mag.loc[(regime, s)].logloss.mean():.4f}"]
        for variant in variants:
            v = g[g.variant == variant].set_index(keys)
            d, auc = (v[m] - mag[m].reindex(v.index) for m in ("logloss", "auc"))
            won, seen = wins.get((variant, problem), (0, 0))
            wins[variant, problem] = (won + int(d.mean() <= 0), seen + 1)
            cells.append(f"{d.mean():+.4f} ± {d.std(ddof=0):.4f} ({int((d <= 0).sum())}/{len(d)}); "
                         f"AUC {auc.mean():+.4f}")
        rows.append(cells)
    return rows, wins


def ranking_report(df: pd.DataFrame) -> str:
    """Each ranking's log-loss (and AUC) minus magnitude's, paired by seed, per regime and sparsity."""
    rows, wins = _versus_magnitude(df, RANKINGS)
    one_epoch = _versus_magnitude(df[df.epochs == 1], RANKINGS)[1]
    return "\n".join([
        "## Ranking the tiles by weight or by the attention logits",
        "",
        "`rank_by: weight` (the default) keeps the tiles whose weight in use, `||W_b * a_b||`, is largest. With the "
        "attention clipped at 1, every tile above the mean attention is capped, so among the tiles the attention "
        "favours this ranks by the norm alone, as magnitude does. `rank_by: logits` keeps the tiles with the "
        "largest attention logits (the mask's own score) and gives the logits momentum-SGD-like steps (Adam eps "
        "1e-3, rate x100), so a logit sums how much its tile lowers the loss. Each cell: log-loss minus block "
        "magnitude's at the same seed, mean ± std (seeds at or below magnitude's); then the AUC difference. The "
        "first two regimes are section f's on other seeds.",
        "",
        markdown_table(PAIRED_HEADER, rows),
        "",
        "**What this means.** Cells where the mean is at most magnitude's: "
        + "; ".join(f"{v} on {p}: {won} of {n}" for (v, p), (won, n) in wins.items())
        + ". Of those, in one-epoch runs: "
        + "; ".join(f"{v} on {p}: {won} of {n}" for (v, p), (won, n) in one_epoch.items()) + ".",
        "",
    ])


def _in_regime(df: pd.DataFrame, regime: tuple) -> pd.DataFrame:
    """The rows of one ``(problem, rows, epochs, batch, seeds)`` regime (any seed)."""
    name, rows, epochs, batch, _ = regime
    return df[(df.problem == name) & (df.epochs == epochs) & (df.batch == batch)
              & ((df.rows == rows) if rows else df.rows.isna())]


def followups_report(df: pd.DataFrame) -> str:
    """The ranking study's two follow-ups (``DECAYED``, ``LOGIT_RATES``), each against magnitude."""
    decay = df[df.study == "decay"]
    decay_rows = _versus_magnitude(decay, RANKINGS)[0]
    plain = df[(df.study == "ranking") & (df.variant == MAGNITUDE)]
    verdicts, shift, kept = [], [], decay
    for wd in DECAYS:
        at = decay[decay.weight_decay == wd]
        wins = _versus_magnitude(at, RANKINGS)[1]
        verdicts.append(f"decay {wd:g}: " + ", ".join(f"{v} on {p} {won} of {n}" for (v, p), (won, n) in wins.items()))
        for regime in DECAYED:
            with_decay = _in_regime(at[at.variant == MAGNITUDE], regime)
            worst = with_decay.loc[with_decay.logloss.idxmax()]
            # The row filters run at once, inside this iteration (B023 is about late binding).
            kept = kept.drop(_in_regime(kept, regime)[lambda g: (g.seed == worst.seed) & (g.weight_decay == wd)].index)  # noqa: B023
            without = _in_regime(plain, regime)[lambda g: g.seed.isin(with_decay.seed)]  # noqa: B023
            shift.append(f"{regime[0]}, decay {wd:g}: {without.logloss.mean():.4f} without, "
                         f"{with_decay.logloss.mean():.4f} "
                         f"with (its worst run: seed {worst.seed}, {worst.sparsity:.0%}, {worst.logloss:.4f})")
    rated = tuple(f"{SA_LOGITS} ×{r:g}" for r in (*LOGIT_RATES, 100.0))
    six = _in_regime(df, ("Frappe", None, 6, 1024, RATE_SEEDS))[
        lambda d: (d.study == "rate") | ((d.study == "ranking") & d.variant.isin([MAGNITUDE, SA_LOGITS]))]
    rate_rows, rate_wins = _versus_magnitude(six.replace({"variant": {SA_LOGITS: rated[-1]}}), rated)
    return "\n".join([
        "### Follow-up: weight decay for every method",
        "",
        "The paper reads the softmax mask, with an L2 penalty on the weights, as a group-sparsity regulariser. "
        "Here every method, magnitude included, gets the same weight decay "
        f"({' and '.join(f'{wd:g}' for wd in DECAYS)}: "
        "lambda in lambda * sum ||W||^2, added to the mean log-loss) on the pruned layers, on the first two regimes "
        "above (section f's, held-out seeds). Cells as above, against magnitude with the same decay.",
        "",
        markdown_table(PAIRED_HEADER, decay_rows),
        "",
        "**What this means.** Cells where the mean is at most magnitude's, " + "; ".join(verdicts)
        + ". Magnitude's own mean log-loss (both sparsities, the same seeds) without and with the decay: "
        + "; ".join(shift) + ". One run that collapses can decide a mean, so here is the same table without the "
        "seed of magnitude's worst run in each regime and decay:",
        "",
        markdown_table(PAIRED_HEADER, _versus_magnitude(kept, RANKINGS)[0]),
        "",
        "### Follow-up: the logit ranking's rate on Frappe at 6 epochs",
        "",
        "Where the logit ranking loses most (Frappe, 6 epochs): is it because the logits move too far in twice "
        "the steps? Each column is the logits' rate (× the run's, Adam eps 1e-3); ×100 is the ranking study's.",
        "",
        markdown_table(["data, training", "sparsity", "seeds", "magnitude log-loss"]
                       + [f"rate ×{v.rsplit('×', 1)[1]}" for v in rated],
                       rate_rows),
        "",
        "**What this means.** Cells where the mean is at most magnitude's: "
        + "; ".join(f"{v.rsplit(' ', 1)[1]}: {won} of {n}" for (v, _), (won, n) in rate_wins.items()) + ".",
        "",
    ])


def inputs_report(df: pd.DataFrame) -> str:
    """Where each method's kept tiles read from, with the training rows' log-loss beside the
    validation's, in section f's regimes (on the ranking study's seeds) and Frappe at 6 epochs."""
    rows = []
    for (problem, rows_, epochs, batch), regime in INPUTS:
        g = _in_regime(df, (problem, rows_, epochs, batch, None))[lambda d: d.sparsity == 0.9]
        for variant in METHODS:
            v = g[g.variant == variant]
            if v.empty:
                continue
            share = pd.DataFrame(list(v.kept_by_input)).fillna(0).pipe(lambda k: k.div(k.sum(axis=1), axis=0)).mean()
            card = v.cardinalities.iloc[0]
            top = ", ".join(f"{name}{f' ({card[name]:,})' if name in card else ''} {x:.0%}"
                            for name, x in share.sort_values(ascending=False).items() if x >= 0.03)
            rows.append([regime, variant, f"{v.train_logloss.mean():.4f}", f"{v.logloss.mean():.4f}", top])
    return "\n".join([
        "### Where the kept tiles read from",
        "",
        "The first pruned layer's kept tiles by the input their columns read (a feature's embedding, with the "
        "feature's number of ids in the first seed's training split in brackets, or `dense`: the dense "
        "projection), share of the kept tiles, mean over the seeds above at 90 % sparsity (inputs under 3 % "
        "left out); with the log-loss on the training rows beside the validation log-loss.",
        "",
        markdown_table(["data, training", "method", "train log-loss", "validation log-loss", "kept tiles read"], rows),
        "",
    ])


def report(df: pd.DataFrame, seconds: float, procs: int, epochs: int) -> str:
    """Log-loss of each attention setting minus magnitude's (same seed, sparsity and weight decay),
    then :func:`ranking_report` and :func:`inputs_report` on the ranking study's runs, and
    :func:`followups_report`."""
    runs, rankings = len(df), df[df.study != "grid"]
    df = df[df.study == "grid"].rename(columns={"logit_lr_scale": "lr_scale", "weight_decay": "wd"})
    mag = df[df.method == "magnitude"].set_index(["problem", "sparsity", "wd", "seed"]).logloss
    att = df[df.method == "attention"].copy()
    att["diff"] = att.logloss.values - mag.reindex(list(zip(att.problem, att.sparsity, att.wd, att.seed))).values
    cols = [(p, s) for p in df.problem.unique() for s in SPARSITIES]
    axes = ["logits", "wd", "clip", "lr_scale"]
    rows = []
    for (logits, wd, clip, lr), g in att.groupby(axes):  # sorted: the pool returns rows in any order
        cells = []
        for p, s in cols:
            d = g[(g.problem == p) & (g.sparsity == s)]["diff"]
            cells.append(f"{d.mean():+.4f} ± {d.std(ddof=0):.4f} ({int((d <= 0).sum())}/{len(d)})")
        rows.append([logits, f"{wd:g}", f"{clip:g}", f"{lr:g}"] + cells)
    base = [[p, f"{s:.0%}", f"{wd:g}", f"{g.logloss.mean():.4f} ± {g.logloss.std(ddof=0):.4f}"]
            for (p, s, wd), g in df[df.method == "magnitude"].groupby(["problem", "sparsity", "wd"])]

    def by(problem: str, column: str, value: object) -> float:
        return float(att[(att.problem == problem) & (att[column] == value)]["diff"].mean())

    def name(key: tuple) -> str:
        return "{} / wd {:g} / clip {:g} / lr ×{:g}".format(*key)

    best = att.groupby(axes)["diff"].mean().idxmin()
    wins = (att.groupby(axes + ["problem", "sparsity"])["diff"].mean() <= 0).groupby(level=[0, 1, 2, 3]).all()
    from bench.run import cpu_model

    return "\n".join([
        "# SequentialAttention++ ablation",
        "",
        f"*Generated by `python -m bench.pruning_ablation --procs {procs}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC ({os.cpu_count()} CPUs, {cpu_model()}; "
        f"{seconds / 60:.1f} min; {runs} runs, one thread each).*",
        "",
        "## The attention's settings",
        "",
        f"Same model, data, split, schedule and {epochs} epochs as section f of [benchmarks.md](benchmarks.md). "
        "Each cell: the "
        "attention method's validation log-loss minus block magnitude's at the same seed, sparsity and weight decay, "
        "mean ± std over seeds (in brackets: seeds where the attention was at most magnitude's). Negative is better "
        "for SequentialAttention++. *logits*: at a phase boundary the attention is folded into the weights and the "
        "logits zeroed (`reset`), or the dense phase's logits are kept into the sparsify phase (`carry`).",
        "",
        markdown_table(["logits", "weight decay", "clip", "logit lr ×"] + [f"{p} {s:.0%}" for p, s in cols], rows),
        "",
        "Block magnitude's own log-loss:",
        "",
        markdown_table(["data", "sparsity", "weight decay", "log-loss"], base),
        "",
        f"**What this means.** Settings whose mean is at most magnitude's in every column: "
        f"{', '.join(name(k) for k, ok in wins.items() if ok) or 'none'}. "
        f"The smallest mean difference over all columns is {name(best)}. "
        + " ".join(f"{p}: mean difference with `reset` {by(p, 'logits', 'reset'):+.4f}, "
                   f"`carry` {by(p, 'logits', 'carry'):+.4f}; "
                   f"clip 1 {by(p, 'clip', 1.0):+.4f}, clip 8 {by(p, 'clip', 8.0):+.4f}; "
                   + ", ".join(f"logit lr ×{lr:g} {by(p, 'lr_scale', lr):+.4f}" for lr in LR_SCALES) + "."
                   for p in df.problem.unique())
        + " (Before commit bb1fcfa the attention was not folded into the weights at a boundary, so zeroing the "
        "logits made every shrunken tile jump back to full size; this grid is after the fix.)",
        "",
        ranking_report(rankings[rankings.study == "ranking"]),
        inputs_report(rankings[rankings.study == "ranking"]),
        followups_report(rankings),
    ])


def main() -> None:
    parser = study_parser(__doc__, "pruning_ablation.md", seeds=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    from pipelines.synth import write_synth

    with tempfile.TemporaryDirectory() as work:
        paths = {("Frappe", None): str(sample_path(FRAPPE))}
        for rows in sorted({r for _, r, *_ in REGIMES if r}):  # 100k is section f's planted problem
            paths["planted", rows] = str(Path(work) / f"planted{rows}")
            write_synth(Path(paths["planted", rows]), rows=rows, seed=0, n_noise=6)
        problems = {"Frappe": paths["Frappe", None], "planted": paths["planted", 100_000]}
        # The longest runs first, so the pool ends together.
        cells = sorted(_rankings(paths), key=lambda c: -(c[2] or 0) * c[5])
        cells += _grid(problems, tuple(range(args.seeds)), args.epochs)
        start = time.perf_counter()
        with get_context("spawn").Pool(args.procs) as pool:
            rows = []
            for i, row in enumerate(pool.imap_unordered(run_cell, cells), 1):
                rows.append(row)
                print(f"{i}/{len(cells)} {row['problem']} seed {row['seed']} {row['variant']} {row['sparsity']}: "
                      f"{row['logloss']:.4f}", flush=True)
        seconds = time.perf_counter() - start
    args.out.write_text(report(pd.DataFrame(rows), seconds, args.procs, args.epochs))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
