"""Inference latency on this host: measurement, and a small linear model of lookups and widths.

``max_inference_ms`` is a budget per 1,024-row batch. Latency does not depend on the weights, so a
candidate configuration is timed with random weights before anything is retrained. The linear model
``ms = a + b * lookups + c * width`` (fitted with non-negative coefficients on a few measured
configurations) says how far to trim; a measurement then confirms it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LinearRegression
from torch import nn

from seqattn_core.batches import Batch


@torch.no_grad()
def measure_inference_ms(model: nn.Module, batch: Batch, repeats: int = 15) -> float:
    """Median wall time of one forward pass over ``batch`` in eval mode, in milliseconds."""
    model.eval()
    for _ in range(3):
        model(batch.dense, batch.sparse)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(batch.dense, batch.sparse)
        times.append((time.perf_counter() - t) * 1000)
    return float(statistics.median(times))


@dataclass(frozen=True)
class LatencyModel:
    """``ms = intercept + per_lookup * lookups + per_width * width`` for one batch size.

    Example::

        >>> lm = LatencyModel.fit([(2, 16, 1.0), (4, 32, 1.5), (8, 64, 2.5)])
        >>> round(lm.predict(6, 48), 2)
        2.0
    """

    intercept: float
    per_lookup: float
    per_width: float

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, int, float]]) -> LatencyModel:
        """Fit on ``(lookups, width, ms)`` samples."""
        x = np.array([[s[0], s[1]] for s in samples], dtype=float)
        y = np.array([s[2] for s in samples], dtype=float)
        reg = LinearRegression(positive=True).fit(x, y)
        return cls(float(reg.intercept_), float(reg.coef_[0]), float(reg.coef_[1]))

    def predict(self, lookups: int, width: int) -> float:
        return self.intercept + self.per_lookup * lookups + self.per_width * width
