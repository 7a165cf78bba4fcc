"""bench.pruning_ablation's reports pair each variant with magnitude at the same seed (synthetic runs)."""

import pandas as pd

from bench.pruning import MAGNITUDE, SA, SA_LOGITS
from bench.pruning_ablation import LOGIT_RATES, followups_report


def _runs() -> pd.DataFrame:
    rows = []
    for seed in range(3, 5):
        for sparsity in (0.9, 0.95):
            base = 0.30 + 0.01 * seed  # seeds differ more than the methods: only pairing by seed gives exact diffs
            common = {"problem": "Frappe", "rows": float("nan"), "seed": seed, "sparsity": sparsity, "auc": 0.9}
            decay = {**common, "study": "decay", "weight_decay": 1.0, "epochs": 3, "batch": 1024}
            rows += [{**common, "study": "ranking", "epochs": 3, "batch": 1024, "variant": MAGNITUDE, "logloss": base},
                     {**decay, "variant": MAGNITUDE, "logloss": base - 0.02},
                     {**decay, "variant": SA, "logloss": base - 0.021},
                     {**decay, "variant": SA_LOGITS, "logloss": base - 0.018},
                     {**common, "study": "ranking", "epochs": 6, "batch": 1024, "variant": MAGNITUDE, "logloss": base},
                     {**common, "study": "ranking", "epochs": 6, "batch": 1024, "variant": SA_LOGITS,
                      "logloss": base + 0.01}]
            rows += [{**common, "study": "rate", "epochs": 6, "batch": 1024, "variant": f"{SA_LOGITS} ×{r:g}",
                      "logloss": base + r / 10_000} for r in LOGIT_RATES]
    return pd.DataFrame(rows)


def test_followups_pair_with_magnitude_at_the_same_seed(monkeypatch):
    import bench.pruning_ablation as ablation

    monkeypatch.setattr(ablation, "DECAYED", (("Frappe", None, 3, 1024, range(3, 5)),))
    monkeypatch.setattr(ablation, "DECAYS", (1.0,))
    text = followups_report(_runs())
    decay, rate = text.split("### Follow-up: the logit ranking's rate")
    assert "| Frappe, 3 epochs, batch 1024, weight decay 1 | 90% | 3-4 | 0.3150 | -0.0010 ± 0.0000 (2/2); " \
           "AUC +0.0000 | +0.0020 ± 0.0000 (0/2); AUC +0.0000 |" in decay
    assert "Frappe, decay 1: 0.3350 without, 0.3150 with (its worst run: seed 4" in decay
    cells = [f"+{r / 10_000:.4f} ± 0.0000 (0/2)" for r in LOGIT_RATES] + ["+0.0100 ± 0.0000 (0/2)"]
    row = next(line for line in rate.splitlines() if line.startswith("| Frappe, 6 epochs, batch 1024 | 95% |"))
    assert [c.split(";")[0].strip() for c in row.strip("|").split("|")[4:]] == cells
