"""Embedding-dimension candidates: each table's vector split into blocks that match the choices.

With choices ``(4, 8, 16, 32)`` a table of width 32 is cut into blocks ``[0:4] [4:8] [8:16]
[16:32]``. Keeping the first ``j`` blocks gives dimension ``choices[j-1]``, so blocks are selected in
prefix order (a block's prerequisite is the block before it). The first block is always kept: a
feature that survives feature selection needs at least the smallest dimension.

Also holds the cardinality heuristics users compare against: Merlin/NVTabular's rule, fastai's
rule and Ginart et al.'s power law (mixed-dimension embeddings, arXiv:1909.11810).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

BYTES_PER_FLOAT = 4


def validate_dim_choices(choices: Sequence[int]) -> tuple[int, ...]:
    """Sorted unique choices; FBGEMM's fused kernels need multiples of 4."""
    for d in choices:
        if d <= 0 or d % 4:
            raise ValueError(
                f"embedding_dims: {d} is not a positive multiple of 4 (FBGEMM's fused kernels need it)"
            )
    return tuple(sorted(set(int(d) for d in choices)))


@dataclass(frozen=True)
class DimensionBlocks:
    """The block candidates of a set of tables.

    Example::

        >>> blocks = DimensionBlocks({"user": 1000, "item": 50}, (4, 8, 16))
        >>> blocks.widths, blocks.tables
        ((4, 8), ('user', 'user', 'item', 'item'))
        >>> blocks.prerequisites()
        [-1, 0, -1, 2]
        >>> blocks.dims_from_selection([0])    # user gets its first optional block, item none
        {'user': 8, 'item': 4}
    """

    rows: Mapping[str, int]
    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", validate_dim_choices(self.choices))
        object.__setattr__(self, "rows", dict(self.rows))

    @property
    def widths(self) -> tuple[int, ...]:
        """Widths of the optional blocks, after the mandatory first ``choices[0]`` columns."""
        return tuple(b - a for a, b in zip(self.choices, self.choices[1:]))

    @property
    def tables(self) -> tuple[str, ...]:
        """Owner table of each optional block, table-major."""
        return tuple(t for t in self.rows for _ in self.widths)

    def __len__(self) -> int:
        return len(self.rows) * len(self.widths)

    def costs(self) -> list[float]:
        """Bytes of each optional block: rows x width x 4."""
        return [float(self.rows[t] * w * BYTES_PER_FLOAT) for t in self.rows for w in self.widths]

    def prerequisites(self) -> list[int]:
        nb = len(self.widths)
        return [-1 if j == 0 else i * nb + j - 1 for i in range(len(self.rows)) for j in range(nb)]

    def blocks_of(self, table: str) -> list[int]:
        i = list(self.rows).index(table)
        nb = len(self.widths)
        return list(range(i * nb, (i + 1) * nb))

    def dims_from_selection(self, selected: Sequence[int]) -> dict[str, int]:
        """Dimension per table: the choice reached by its selected prefix of blocks."""
        chosen = set(int(i) for i in selected)
        dims = {}
        for t in self.rows:
            n = 0
            for b in self.blocks_of(t):
                if b not in chosen:
                    break
                n += 1
            dims[t] = self.choices[n]
        return dims

    def mandatory_bytes(self, tables: Sequence[str] | None = None) -> float:
        return float(sum(self.rows[t] for t in (tables or self.rows)) * self.choices[0] * BYTES_PER_FLOAT)


def embedding_bytes(rows: Mapping[str, int], dims: Mapping[str, int]) -> int:
    """Bytes of float32 tables with the given rows and dims."""
    return sum(int(rows[t]) * int(dims[t]) * BYTES_PER_FLOAT for t in dims)


def snap(dim: float, choices: Sequence[int]) -> int:
    """The smallest choice >= ``dim`` (or the largest choice)."""
    for c in sorted(choices):
        if c >= dim:
            return int(c)
    return int(max(choices))


def merlin_dim(cardinality: int) -> float:
    """NVTabular/Merlin's default: 16 * cardinality ** 0.25."""
    return 16 * cardinality**0.25


def fastai_dim(cardinality: int) -> float:
    """fastai's ``emb_sz_rule``: min(600, 1.6 * cardinality ** 0.56)."""
    return min(600.0, 1.6 * cardinality**0.56)


def power_law_dims(
    cardinalities: Mapping[str, int], base_dim: int, alpha: float = 0.3
) -> dict[str, float]:
    """Ginart et al.'s power rule as in DLRM's ``md_solver`` (no frequency data): row popularity is
    taken as 1 / cardinality and ``d_i = base_dim * (n_i / n_min) ** -alpha``, so the smallest table
    gets ``base_dim`` and larger tables get fewer dimensions."""
    n_min = min(cardinalities.values())
    return {t: base_dim * (n / n_min) ** -alpha for t, n in cardinalities.items()}


def heuristic_dims(
    method: str, cardinalities: Mapping[str, int], choices: Sequence[int]
) -> dict[str, int]:
    """Dims by a cardinality rule, snapped to ``choices``: method in merlin, fastai, power_law."""
    if method == "merlin":
        raw = {t: merlin_dim(n) for t, n in cardinalities.items()}
    elif method == "fastai":
        raw = {t: fastai_dim(n) for t, n in cardinalities.items()}
    elif method == "power_law":
        raw = power_law_dims(cardinalities, max(choices))
    else:
        raise ValueError(f"method: unknown heuristic {method!r}")
    return {t: snap(max(1.0, d), choices) for t, d in raw.items()}


def mb(nbytes: float) -> float:
    return round(nbytes / 2**20, 6) if math.isfinite(nbytes) else nbytes
