"""bench.selector_defaults: one real cell on Mice Protein (the sample data), and the choice rule on
synthetic rows: a variant replaces the defaults only with a gain above its paired sd."""

import pandas as pd

from bench.datasets import PAPER_FILES
from bench.selector_defaults import KS, VARIANTS, against_baselines, behind_points, cell, choose


def test_a_cell_scores_every_k(shared_data):
    shared_data(PAPER_FILES["Mice Protein"])
    rows = cell("Mice Protein", 0, "omp", {})
    assert [r["k"] for r in rows] == list(KS)
    assert all(0.5 < r["acc"] <= 1 and r["method"] == "omp" for r in rows)


def _rows(gains: dict[str, list[float]]) -> pd.DataFrame:
    """Accuracy per variant and seed: the defaults' 0.8 + 0.01 * seed plus the variant's gain at that seed."""
    return pd.DataFrame([{"dataset": d, "seed": s, "method": m, "k": k, "acc": 0.8 + 0.01 * s + g[s], "seconds": 1.0}
                         for m, g in gains.items() for s in range(3) for d in ("A", "B") for k in KS])


def test_only_a_gain_larger_than_its_paired_sd_replaces_the_defaults():
    steady, noisy = [0.02, 0.03, 0.025], [0.09, -0.06, 0.03]  # noisy: larger mean, sd above it
    others = {m: [0.0, 0.0, 0.0] for m in ("defaults", "learning rate 1e-3", "learning rate 1e-2",
                                            "width 128", "warm-up 0.3", "held-out gates 0.2")}
    chosen, rows = choose(_rows({**others, "epochs 300": noisy, "width 32": steady, "omp": [0.0] * 3}))
    assert chosen == "width 32"
    assert ["width 32", "0.8350", "+0.0250", "0.0050", "3 / 3", "1.0 s"] in rows
    chosen, _ = choose(_rows({**others, "epochs 300": noisy, "width 32": [0.0] * 3, "omp": [0.0] * 3}))
    assert chosen == "defaults"


def test_each_selector_is_paired_with_omp_and_the_lasso_path_by_seed():
    df = _rows({"defaults": [0.0, 0.0, 0.0], "omp": [-0.01, -0.02, 0.0], "lasso": [0.05, 0.05, 0.05]})
    rows = against_baselines(df, ("defaults",))
    assert rows[0] == ["A", "10", "defaults", "omp", "0.810 ± 0.008", "+0.010", "0.010", "at or above"]
    assert rows[1][-3:] == ["-0.050", "0.000", "behind"]
    assert len(rows) == 2 * len(KS) * 2


def test_where_the_defaults_are_behind_every_variant_is_shown_against_that_baseline():
    gains = {m: [0.0, 0.0, 0.0] for m in VARIANTS} | {"omp": [0.03, 0.02, 0.04], "lasso": [-0.01] * 3,
                                                     "epochs 300": [0.05, 0.04, 0.05]}
    rows = behind_points(_rows(gains))
    assert len(rows) == 2 * len(KS) * len(VARIANTS)  # behind OMP at every data set and k, never behind the lasso
    assert ["A", "10", "omp", "epochs 300", "+0.017", "0.006", "at or above"] in rows
    assert ["A", "10", "omp", "defaults", "-0.030", "0.010", "behind"] in rows
