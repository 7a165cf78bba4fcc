"""bench.cross_buckets: the report pairs each seed's two jobs (synthetic rows; the jobs are test_job's)."""

import pandas as pd

from bench.cross_buckets import report


def test_report_pairs_the_budget_with_the_flat_cap_at_each_seed():
    rows = [{"data": "planted", "crosses": 1, "seed": seed, "budgeted": budgeted,
             "auc": 0.80 + (0.01 if budgeted and seed == 0 else 0.0),
             "picked": "a x b (143)" if budgeted else "c x d (65,536)"}
            for seed in range(3) for budgeted in (True, False)]
    table, _, summary = report(pd.DataFrame(rows))
    assert "| planted | 1 | 0 | 0.8100 | 0.8000 | +0.0100 | a x b (143) | c x d (65,536) |" in table
    assert "| planted | 1 | 2 | 0.8000 | 0.8000 | +0.0000 | a x b (143) | c x d (65,536) |" in table
    assert summary == ("- planted, 1 cross(es): the budget minus flat 65,536 is +0.0033 AUC on average; "
                       "higher on 1, equal on 2, lower on 0 of 3 seeds.")
