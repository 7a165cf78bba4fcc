"""bench.warmup: one real cell on small planted data, and the report's pairing by seed (synthetic rows)."""

from dataclasses import replace

import pandas as pd
import pytest

from bench import field
from bench.warmup import cell, report
from seqattn_core.lem import warmup_for


@pytest.mark.slow
def test_a_cell_ranks_every_field_at_each_warmup(tmp_path):
    problem, = field.problems(field.FieldBench(problems=("planted",), planted_rows=4_000, planted_noise=3), tmp_path)
    rows = cell(replace(problem, epochs=1), seed=0, warmups=(0.1, 0.5))
    assert [r["warmup"] for r in rows] == [0.1, 0.5]
    for r in rows:
        assert 0.5 < r["aukc"] < 1 and 0.4 < r["auc_k1"] < 1 and r["epochs"] == 1


def test_report_pairs_each_warmup_with_ten_percent_at_the_same_seed():
    rows = [{"problem": "Criteo", "epochs": 1, "seed": seed, "warmup": w, "aukc": 0.70 + 0.01 * seed + 0.1 * w,
             "auc_k1": 0.6} for seed in range(3) for w in (0.1, 0.25, 0.5)]
    text = report(pd.DataFrame(rows), warmup_for)
    table = text[0]
    assert "| Criteo | 1 | 25% | 0.7350 ± 0.0082 | 0.6000 ± 0.0000 | +0.0150 (3/3) |" in table
    assert "| Criteo | 1 | 50% (default) | 0.7600 ± 0.0082 | 0.6000 ± 0.0000 | +0.0400 (3/3) |" in table
    assert text[1] == ("- 1 epoch(s): the default (50%) has the higher AUKC in 6 of 6 pairs (another warm-up, same "
                       "data and seed).")
