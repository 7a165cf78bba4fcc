"""bench.pruning_schedule pairs SequentialAttention++ with magnitude at the same seed and schedule."""

import pandas as pd

from bench.pruning import MAGNITUDE, SA, SA_LOGITS
from bench.pruning_schedule import SCHEDULES, _cells, report


def _runs() -> pd.DataFrame:
    rows = []
    for problem in ("planted", "Frappe"):
        for seed in (3, 4):
            for sparsity in (0.9, 0.95):
                for block, cycles in SCHEDULES:
                    # seeds differ more than methods: pairing gives exact diffs
                    base = 0.3 + 0.01 * seed + 0.001 * block
                    gap = -0.002 if (block, cycles) == (4, 2) else 0.001
                    common = {"problem": problem, "seed": seed, "sparsity": sparsity, "block": block, "cycles": cycles}
                    rows += [{**common, "variant": MAGNITUDE, "logloss": base},
                             {**common, "variant": SA, "logloss": base + gap},
                             {**common, "variant": SA_LOGITS, "logloss": base + 0.003}]
    return pd.DataFrame(rows)


def test_report_pairs_by_seed_and_schedule():
    text = report(_runs(), 60.0, 2)
    ours, logits = text.split(f"**{SA_LOGITS}** minus magnitude")
    row = next(line for line in ours.splitlines() if line.startswith("| Frappe | 95% |"))
    assert row.split("|")[3].strip() == "+0.0010 ± 0.0000 (0/2)"  # 8x8, 2 cycles
    assert row.split("|")[4].strip() == "-0.0020 ± 0.0000 (2/2)"  # 4x4, 2 cycles
    row = next(line for line in logits.splitlines() if line.startswith("| Frappe | 95% |"))
    assert row.split("|")[4].strip() == "+0.0030 ± 0.0000 (0/2)"
    assert f"in every row: {SA}: 4x4 tiles, 2 cycles; {SA_LOGITS}: none." in text
    assert "Frappe: 4x4 tiles, 2 cycles" in text and "planted: 4x4 tiles, 2 cycles" in text


def test_cells_set_the_tile_size_and_cycles_of_both_methods():
    cells = _cells({"Frappe": "f.parquet"}, range(3, 4))
    assert len(cells) == 2 * len(SCHEDULES) * 3  # sparsities x schedules x methods
    assert {(c[-1]["block"], c[-1]["cycles"]) for c in cells} == set(SCHEDULES)
    assert {c[-2] for c in cells} == {SA, SA_LOGITS, MAGNITUDE}
