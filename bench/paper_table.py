"""Section b: the Sequential Attention paper's feature-selection table (Yasuda et al., ICLR 2023).

Protocol of the paper: select k features (the paper reports k = 50; here also 10 and 25), retrain
a one-hidden-layer MLP on them, report test accuracy on a held-out split, mean ± std over seeds.
Here each seed draws its own stratified 80/20 split; every method selects on the training part only
and the same MLP (scikit-learn ``MLPClassifier``, standardised inputs) is retrained on its picks. The
data are the offline copies in the shared folder, several of them subsets, so most rows are
approximate reproductions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench import METHOD_LABELS, markdown_table, mean_std, paired, timed_selection
from bench.datasets import PAPER_DATASETS, Dataset

# Published figures, quoted (not measured here): k = 50 test accuracy of Sequential Attention.
PUBLISHED = {"MNIST": 0.956, "ISOLET": 0.920, "Fashion-MNIST": 0.854}
# The one public PyTorch port of the method, same protocol, as published by its authors.
PUBLIC_PORT = {"MNIST": 0.941, "ISOLET": 0.909, "Fashion-MNIST": 0.860}
NOT_OFFLINE = ("Fashion-MNIST", "Activity")


@dataclass(frozen=True)
class PaperBench:
    ks: tuple[int, ...] = (10, 25, 50)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    datasets: tuple[str, ...] = ("Mice Protein", "ISOLET", "MNIST", "COIL-20")
    methods: tuple[str, ...] = ("seqattn", "oneshot", "omp", "lasso", "mi", "random")
    attention: Mapping[str, Any] = field(default_factory=dict)  # SequentialAttentionSelector kwargs
    hidden: int = 128
    mlp_epochs: int = 300


def mlp_accuracy(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray,
                 cfg: PaperBench, seed: int) -> float:
    """Test accuracy of the paper's final model (one hidden layer, standardised inputs) trained on
    ``Xtr``: the score every method's picks get, here and in ``bench.selector_defaults``."""
    model = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(cfg.hidden,), max_iter=cfg.mlp_epochs, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xtr, ytr)
    return float(model.score(Xte, yte))


def _greedy_estimate(data: Dataset, k: int, seed: int) -> tuple[int, float]:
    """How many model fits forward selection with cv=3 needs for k picks, and a lower bound on
    the seconds: the wrapper's measured cost per candidate in a real two-step run over 30 random
    columns, times the d + (d-1) + ... + (d-k+1) candidates. Later steps fit wider models, which
    cost more (in a trial on Mice Protein a full k=50 run took about 15 minutes against a bound of
    about one), so the bound is loose."""
    d = data.X.shape[1]
    Xtr, _, ytr, _ = train_test_split(data.X, data.y, test_size=0.2, random_state=seed, stratify=data.y)
    sample = np.random.default_rng(seed).permutation(d)[: min(d, 30)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, seconds = timed_selection("greedy", Xtr[:, sample], ytr, 2, seed)
    candidates = sum(d - i for i in range(k))
    return 3 * candidates, candidates * seconds / (2 * len(sample) - 1)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def run_dataset(data: Dataset, cfg: PaperBench, log: Callable[[str], None]) -> pd.DataFrame:
    records = []
    for seed in cfg.seeds:
        Xtr, Xte, ytr, yte = train_test_split(data.X, data.y, test_size=0.2, random_state=seed, stratify=data.y)
        acc = mlp_accuracy(Xtr, ytr, Xte, yte, cfg, seed)
        records.append({"method": "all", "k": data.X.shape[1], "seed": seed, "acc": acc, "seconds": 0.0})
        log(f"{data.name} seed={seed} all {data.X.shape[1]} features: acc={acc:.4f}")
        for k in cfg.ks:
            for method in cfg.methods:
                options = dict(cfg.attention) if method in ("seqattn", "oneshot") else {}
                picked, seconds = timed_selection(method, Xtr, ytr, k, seed, **options)
                acc = mlp_accuracy(Xtr[:, picked], ytr, Xte[:, picked], yte, cfg, seed)
                records.append({"method": method, "k": k, "seed": seed, "acc": acc, "seconds": seconds})
                log(f"{data.name} seed={seed} k={k} {method}: acc={acc:.4f} selection {seconds:.1f}s")
    return pd.DataFrame.from_records(records)


def paired_rows(results: Mapping[str, pd.DataFrame], against: tuple[str, ...] = ("omp", "lasso")) -> list[list[str]]:
    """Sequential Attention's accuracy minus each of ``against``'s, paired by seed, per dataset and k."""
    rows = []
    for name, res in results.items():
        for k in sorted(res[res.method != "all"].k.unique()):
            at = res[res.k == k].pivot_table(index="seed", columns="method", values="acc")
            for m in against:
                if m in at and "seqattn" in at:
                    d, sd, verdict = paired(at["seqattn"], at[m])
                    rows.append([name, str(k), METHOD_LABELS[m], f"{d:+.3f}", f"{sd:.3f}",
                                 f"{int((at['seqattn'] >= at[m]).sum())} / {len(at)}", verdict])
    return rows


def _meaning(results: Mapping[str, pd.DataFrame], data: Mapping[str, Dataset], methods: tuple[str, ...],
             tolerance: float = 0.005) -> str:
    """The paragraph under the table, written from its numbers."""
    parts, wins = [], 0
    for name, res in results.items():
        means = res.groupby("method").acc.mean()
        picked = means.drop("all")
        best = picked.max()
        top = [METHOD_LABELS[m] for m in picked.index if picked[m] >= best - 1e-9]
        text = f"{name}: {', '.join(top)} ({best:.3f}; all {data[name].X.shape[1]} features {means['all']:.3f})"
        if "seqattn" in picked:
            ours = picked["seqattn"]
            wins += ours >= best - 1e-9
            if ours < best - 1e-9:
                rank = int((picked > ours).sum()) + 1
                text += f", Sequential Attention {rank} of {len(picked)} ({ours:.3f})"
        parts.append(text)
    lines = ["Best method per dataset: " + "; ".join(parts) + "."]
    if "seqattn" in methods:
        lines.append(f"Sequential Attention has the best (or tied best) mean accuracy on {wins} of {len(results)} "
                     "datasets.")
        behind, noise = [], []
        for name, res in results.items():
            stats = res[res.method != "all"].groupby("method").acc.agg(["mean", lambda a: np.std(a)])
            stats.columns = ["mean", "std"]
            best = stats["mean"].idxmax()
            gap = stats.loc[best, "mean"] - stats.loc["seqattn", "mean"]
            spread = max(stats.loc[best, "std"], stats.loc["seqattn", "std"])
            if gap > tolerance:
                behind.append(f"{name} (by {gap:.3f}, to {METHOD_LABELS[best]}"
                              + (", more than one std across seeds)" if gap > spread else ", within one std)"))
            elif gap > 0 and gap <= spread:
                noise.append(name)
        if behind:
            lines.append(f"It trails the best method by more than {tolerance} on " + ", ".join(behind) + ".")
        if noise:
            lines.append(f"On {', '.join(noise)} its gap to the best is smaller than the spread across seeds: "
                         "a tie within noise.")
    if "seqattn" in methods and "oneshot" in methods:
        gaps = [res[res.method == "seqattn"].acc.mean() - res[res.method == "oneshot"].acc.mean()
                for res in results.values()]
        lines.append("Sequential minus one-shot attention: " + ", ".join(
            f"{n} {g:+.3f}" for n, g in zip(results, gaps)) + ".")
    mean_time = {m: float(np.mean([res[res.method == m].seconds.mean() for res in results.values()]))
                 for m in methods}
    lines.append("Mean selection time over datasets: " + ", ".join(
        f"{METHOD_LABELS[m]} {t:.1f} s" for m, t in mean_time.items()) + ".")
    for name in results:
        if name in PUBLISHED and "seqattn" in methods:
            ours = results[name][results[name].method == "seqattn"].acc.mean()
            relation = "at or above" if ours >= PUBLISHED[name] else "below"
            lines.append(f"On {name} ours is {ours:.3f}, {relation} the published {PUBLISHED[name]:.3f}; the data here "
                         "is a subset with a different split and final model, so this is not a like-for-like "
                         "comparison" + (" (fewer training rows are expected to cost accuracy)." if relation == "below"
                                         else "."))
    return " ".join(lines)


def _plot(results: Mapping[str, pd.DataFrame], methods: tuple[str, ...], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 4))
    names = list(results)
    width = 0.8 / (len(methods) + 1)
    for j, m in enumerate(("all",) + methods):
        means = [results[n][results[n].method == m].acc.mean() for n in names]
        stds = [results[n][results[n].method == m].acc.std(ddof=0) for n in names]
        ax.bar(np.arange(len(names)) + j * width, means, width, yerr=stds, capsize=2,
               label="all features" if m == "all" else METHOD_LABELS[m])
    for i, n in enumerate(names):
        if n in PUBLISHED:
            ax.hlines(PUBLISHED[n], i - width / 2, i + 0.8, colors="black", linestyles="dashed")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    lowest = min(results[n][results[n].method == m].acc.mean() for n in names for m in ("all",) + methods)
    ax.set(ylabel="test accuracy", title="k = 50, one-hidden-layer MLP retrained on the picks "
           "(dashed: published Sequential Attention)", ylim=(max(0.0, lowest - 0.05), 1.01))
    ax.legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: PaperBench, img_dir: Path, log: Callable[[str], None] = print) -> str:
    """Run every dataset and return the markdown section (figure written to ``img_dir``)."""
    data = {name: PAPER_DATASETS[name]() for name in cfg.datasets}
    k = max(cfg.ks)  # the paper's own table (k = 50)
    greedy = {name: _greedy_estimate(d, k, cfg.seeds[0]) for name, d in data.items()}
    every_k = {name: run_dataset(d, cfg, log) for name, d in data.items()}
    results = {name: res[(res.method == "all") | (res.k == k)] for name, res in every_k.items()}
    columns = cfg.methods + ("greedy",)  # the wrapper's column holds its estimated cost
    _plot(results, cfg.methods, img_dir / "paper_table.png")
    header = ["dataset", "fidelity", "all features"] + [METHOD_LABELS[m] for m in columns] + [
        "published Seq. Attention", "public PyTorch port"]

    def cell(res: pd.DataFrame, name: str, m: str, value: str) -> str:
        if m == "greedy":
            return f"not run (≥ {_duration(greedy[name][1])} per seed, est.)"
        return mean_std(list(res[res.method == m][value])) if value == "acc" \
            else f"{res[res.method == m][value].mean():.2f}"

    rows = []
    for name, res in results.items():
        rows.append([f"{name} ({data[name].X.shape[0]:,} × {data[name].X.shape[1]})", data[name].fidelity]
                    + [cell(res, name, m, "acc") for m in ("all",) + columns]
                    + [PUBLISHED.get(name, "n/a"), PUBLIC_PORT.get(name, "n/a")])
    for name in NOT_OFFLINE:
        rows.append([name, "not reproduced: not in ../shared/data (no offline copy)"] + ["—"] * (len(columns) + 1)
                    + [PUBLISHED.get(name, "n/a"), PUBLIC_PORT.get(name, "n/a")])
    by_k = [[name, str(kk)] + [mean_std(list(res[(res.method == m) & (res.k == kk)].acc)) for m in cfg.methods]
            for name, res in every_k.items() for kk in cfg.ks]
    verdicts = paired_rows(every_k)
    met = sum(r[-1] != "behind" for r in verdicts)
    time_rows = [[name] + [cell(res, name, m, "seconds") for m in columns] for name, res in results.items()]
    notes = "; ".join(f"{n}: {fits:,} fits, at least {_duration(est)} per seed" for n, (fits, est) in greedy.items())
    lines = [
        f"## b. The paper's table (k = {', '.join(map(str, cfg.ks))})",
        "",
        f"Test accuracy, mean ± std over {len(cfg.seeds)} seed(s) (each seed its own stratified 80/20 split and "
        f"MLP initialisation). Final model for every method: one hidden layer of {cfg.hidden} ReLU units "
        f"(scikit-learn MLPClassifier, Adam, up to {cfg.mlp_epochs} epochs, standardised inputs), retrained on the "
        f"picked features. Sequential Attention runs `SequentialAttentionSelector` with its defaults "
        f"({', '.join(f'{a}={v}' for a, v in cfg.attention.items()) or 'as shipped'}). The first table is the "
        f"paper's (k = {k}); its last two columns are **published figures, quoted, not measured here**: the "
        "paper's Sequential Attention and the one public PyTorch port.",
        "",
        markdown_table(header, rows),
        "",
        "Fidelity: Mice Protein is the exact file the paper's loader reads; ISOLET (1,560 of 7,797 rows) and MNIST "
        "(5,000 training images, not 60,000) are subsets; COIL-20 is resized to 20×20. Fashion-MNIST and Activity "
        "(UCI HAR) could not be reproduced offline: they are not in ../shared/data.",
        "",
        f"Every k (test accuracy, mean ± std over {len(cfg.seeds)} seeds):",
        "",
        markdown_table(["dataset", "k"] + [METHOD_LABELS[m] for m in cfg.methods], by_k),
        "",
        "Sequential Attention minus OMP and minus the lasso path, paired by seed (the same split and MLP seed); "
        "the bar: at or above, or within one paired standard deviation.",
        "",
        markdown_table(["dataset", "k", "against", "SA minus it, mean", "paired sd", "seeds SA ≥ it", "verdict"],
                       verdicts),
        "",
        f"Verdicts: {met} of {len(verdicts)} comparisons at or above, or within one paired sd"
        + (f"; behind: {', '.join(f'{r[0]} k={r[1]} against {r[2]} ({r[3]})' for r in verdicts if r[-1] == 'behind')}"
           if met < len(verdicts) else "") + ".",
        "",
        f"Selection time in seconds at k = {k} (mean over seeds):",
        "",
        markdown_table(["dataset"] + [METHOD_LABELS[m] for m in columns], time_rows),
        "",
        "The greedy wrapper (forward selection retraining a logistic regression for every candidate at every step, "
        "cv=3) was not run: it does not fit in this benchmark's time budget. A lower bound on its cost, extrapolated "
        "from the wrapper's measured cost per candidate in a two-step run on 30 columns (an estimate, not a run; later "
        f"steps fit wider, slower models): {notes}.",
        "",
        f"**What this means (k = {k}).** " + _meaning(results, data, cfg.methods),
        "",
        "![paper table](img/paper_table.png)",
        "",
    ]
    return "\n".join(lines)
