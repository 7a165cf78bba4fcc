"""Planted-truth CTR data: we know which features matter, so a selection can be graded.

The label is ``Bernoulli(sigmoid(logit))`` where the logit sums independent parts, one per kind
of structure a recommender feature selector has to get right:

- ``rel_0``, ``rel_1``: additive per-id effects (``rel_1`` is a string column with a few nulls);
- ``dup_rel_0``: an exact copy of ``rel_0`` under another name; keeping both wastes a slot;
- ``pair_a0 x pair_b0``, ``pair_a1 x pair_b1``: each id carries a balanced random sign and the
  effect is ``w * sign(a) * sign(b)``, an XOR. Half the ids of ``b`` have each sign, so whatever
  ``a`` is the effect is ``+w`` or ``-w`` with probability 1/2: each feature alone is exactly
  useless in expectation, the pair is strong. Only a cross (or both features) recovers it;
- ``high_0``, ``high_1``: 20,000 and 10,000 Zipf-distributed ids with additive effects plus a
  rank-8 dot product ``<u[high_0], v[high_1]>`` (matrix factorisation), the part that needs
  many embedding dimensions;
- ``low_0`` (3 ids, a categorical string) and ``low_1`` (5 ids): strong, and a 4-wide embedding
  is plenty;
- ``tags``: a ``list<int64>`` column whose effect is the mean of its tags' effects;
- ``dense_0``: a linear effect; ``dense_noise_0``, ``dense_noise_1`` (the latter in units of
  hundreds, to test standardisation): none;
- ``noise_XX``: sparse columns of cardinality 2 to 10,000 with no effect at all.

Strengths are set so that a two-epoch embedding model on ~100k rows finds every relevant feature
(each relevant part moves the logit by 0.5-0.9 standard deviations; see ``truth["effect_sd"]``).

Example::

    >>> table, truth = synth_table(rows=2_000, seed=0, n_noise=3)
    >>> truth["duplicate_of"], truth["pairs"][0], "noise_00" in truth["irrelevant"]
    ({'dup_rel_0': 'rel_0'}, ['pair_a0', 'pair_b0'], True)
    >>> table.num_rows, table.schema.field("tags").type
    (2000, ListType(list<item: int64>))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["synth_table", "with_keys", "write_partitioned_synth", "write_synth"]

LABEL = "label"
BIAS = -1.0  # base click rate around 0.3
NOISE_CARDINALITIES = (2, 10, 100, 1_000, 10_000)
LOW_0_VALUES = ("android", "ios", "web")
DRIFT_GAINER = "noise_02"  # a cardinality-100 noise column that becomes relevant after the drift


@dataclass(frozen=True)
class _Sparse:
    """One planted sparse feature: how its ids are drawn and what each id adds to the logit."""

    cardinality: int
    zipf: float = 0.0  # 0: uniform ids; s > 0: P(id k) ~ (k + 1) ** -s, a realistic long tail
    effect_sd: float = 0.0  # per-id additive effects ~ N(0, effect_sd)


# Cardinalities and strengths of the planted features (the truth.json "params").
RELEVANT: dict[str, _Sparse] = {
    "rel_0": _Sparse(100, 0.0, 0.8),
    "rel_1": _Sparse(1_000, 1.0, 0.8),
    "high_0": _Sparse(20_000, 1.05, 0.8),
    "high_1": _Sparse(10_000, 1.05, 0.8),
    "low_1": _Sparse(5, 0.0, 0.0),  # fixed effects below: a few well-separated levels
}
LOW_0_EFFECTS = (-0.8, 0.1, 0.7)
LOW_1_EFFECTS = (-0.7, -0.3, 0.0, 0.4, 0.8)
PAIRS = (("pair_a0", "pair_b0", 10, 12), ("pair_a1", "pair_b1", 30, 20))
PAIR_WEIGHT = 0.8
MF_RANK = 8
MF_SD = 0.7  # sd of <u, v>
TAG_CARDINALITY, TAG_EFFECT_SD, TAG_MEAN_LENGTH = 500, 1.0, 2.0
DENSE_WEIGHT = 0.6


class _Planted:
    """The generating parameters (drawn once from the seed) and a sampler of rows from them."""

    def __init__(self, seed: int, n_noise: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.seed, self.n_noise = seed, n_noise
        self.effects = {name: rng.normal(0.0, f.effect_sd, f.cardinality) for name, f in RELEVANT.items()}
        self.effects["low_1"] = np.array(LOW_1_EFFECTS)
        self.effects["low_0"] = np.array(LOW_0_EFFECTS)
        self.effects["tags"] = rng.normal(0.0, TAG_EFFECT_SD, TAG_CARDINALITY)
        self.effects[DRIFT_GAINER] = rng.normal(0.0, 0.9, NOISE_CARDINALITIES[2])
        # Balanced signs: exactly half of each pair feature's ids are +1, so the other feature's
        # marginal is flat whatever this one's distribution.
        self.signs = {}
        for a, b, card_a, card_b in PAIRS:
            for name, card in ((a, card_a), (b, card_b)):
                self.signs[name] = rng.permutation(np.resize([1.0, -1.0], card))
        # <u, v> has sd MF_SD when entries are N(0, s^2) with rank * s^4 = MF_SD^2.
        s = (MF_SD**2 / MF_RANK) ** 0.25
        self.u = rng.normal(0.0, s, (RELEVANT["high_0"].cardinality, MF_RANK))
        self.v = rng.normal(0.0, s, (RELEVANT["high_1"].cardinality, MF_RANK))

    def sample(self, rows: int, rng: np.random.Generator, drifted: bool = False) -> tuple[pa.Table, dict[str, Any]]:
        ids: dict[str, np.ndarray] = {}
        parts: dict[str, np.ndarray] = {}
        for name, f in RELEVANT.items():
            ids[name] = _draw_ids(rng, f.cardinality, f.zipf, rows)
            parts[name] = self.effects[name][ids[name]]
        if drifted:
            parts["rel_0"] = np.zeros(rows)
        ids["low_0"] = rng.integers(0, len(LOW_0_VALUES), rows)
        parts["low_0"] = self.effects["low_0"][ids["low_0"]]
        for a, b, card_a, card_b in PAIRS:
            ids[a], ids[b] = rng.integers(0, card_a, rows), rng.integers(0, card_b, rows)
            parts[f"{a}_X_{b}"] = PAIR_WEIGHT * self.signs[a][ids[a]] * self.signs[b][ids[b]]
        parts["high_0_X_high_1"] = np.einsum("ij,ij->i", self.u[ids["high_0"]], self.v[ids["high_1"]])

        lengths = np.where(rng.random(rows) < 0.05, 0, 1 + rng.poisson(TAG_MEAN_LENGTH - 1, rows)).clip(0, 8)
        tag_values = _draw_ids(rng, TAG_CARDINALITY, 0.8, int(lengths.sum()))
        tag_rows = np.repeat(np.arange(rows), lengths)
        sums = np.bincount(tag_rows, weights=self.effects["tags"][tag_values], minlength=rows)
        parts["tags"] = sums / np.maximum(lengths, 1)

        dense_0 = rng.normal(0.0, 1.0, rows)
        parts["dense_0"] = DENSE_WEIGHT * dense_0

        noise = {}
        for k in range(self.n_noise):
            card = _noise_cardinality(k)
            noise[f"noise_{k:02d}"] = _draw_ids(rng, card, 1.0 if k % 2 else 0.0, rows)
        if drifted and DRIFT_GAINER in noise:
            parts[DRIFT_GAINER] = self.effects[DRIFT_GAINER][noise[DRIFT_GAINER]]

        # Nulls carry no effect: the model sees an empty bag for them.
        rel_1_null = rng.random(rows) < 0.02
        tags_null = rng.random(rows) < 0.01
        parts["rel_1"][rel_1_null] = 0.0
        parts["tags"][tags_null] = 0.0
        logit = BIAS + sum(parts.values())
        label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        columns: dict[str, pa.Array] = {
            LABEL: pa.array(label),
            "rel_0": pa.array(ids["rel_0"]),
            "dup_rel_0": pa.array(ids["rel_0"]),
            "rel_1": pa.array(np.char.add("r", ids["rel_1"].astype(str)), mask=rel_1_null),
            "high_0": pa.array(ids["high_0"]),
            "high_1": pa.array(ids["high_1"]),
            # A pandas-style categorical column (Arrow dictionary), as many feature stores write.
            "low_0": pa.DictionaryArray.from_arrays(pa.array(ids["low_0"].astype(np.int32)), pa.array(LOW_0_VALUES)),
            "low_1": pa.array(ids["low_1"].astype(np.int32)),
            **{name: pa.array(ids[name]) for a, b, _, _ in PAIRS for name in (a, b)},
            "tags": pa.ListArray.from_arrays(offsets, pa.array(tag_values), mask=pa.array(tags_null)),
            "dense_0": pa.array(dense_0),
            "dense_noise_0": pa.array(rng.normal(0.0, 1.0, rows)),
            "dense_noise_1": pa.array(100.0 * rng.lognormal(0.0, 1.0, rows)),
        }
        for k, (name, values) in enumerate(noise.items()):
            # Every third noise column is a string, so the noise looks like the signal's types.
            columns[name] = pa.array(np.char.add(f"n{k}_", values.astype(str))) if k % 3 == 2 else pa.array(values)

        truth = self._truth(columns, parts, np.asarray(logit), label, drifted)
        return pa.table(columns), truth

    def _truth(
        self,
        columns: dict[str, pa.Array],
        parts: dict[str, np.ndarray],
        logit: np.ndarray,
        label: np.ndarray,
        drifted: bool,
    ) -> dict[str, Any]:
        pairs = [[a, b] for a, b, _, _ in PAIRS]
        in_pairs = [n for p in pairs for n in p]
        alone = ["rel_1", "high_0", "high_1", "low_0", "low_1", "tags", "dense_0"]
        alone = alone + ([DRIFT_GAINER] if drifted and DRIFT_GAINER in columns else ["rel_0"])
        relevant = sorted(set(alone) | set(in_pairs))
        duplicate_of = {} if drifted else {"dup_rel_0": "rel_0"}
        features = [c for c in columns if c != LABEL]
        irrelevant = [c for c in features if c not in relevant and c not in duplicate_of]
        return {
            "label": LABEL,
            "rows": len(label),
            "relevant": relevant,
            "relevant_alone": sorted(alone),
            "duplicate_of": duplicate_of,
            "pairs": pairs,
            "interactions": [["high_0", "high_1"]],
            "high_cardinality": ["high_0", "high_1"],
            "low_cardinality": ["low_0", "low_1"],
            "multi_valued": ["tags"],
            "irrelevant": irrelevant,
            "dense": ["dense_0", "dense_noise_0", "dense_noise_1"],
            "sparse": [c for c in features if not c.startswith("dense")],
            "effect_sd": {k: round(float(np.std(v)), 4) for k, v in parts.items() if np.any(v)},
            "base_rate": round(float(label.mean()), 4),
            "oracle_auc": round(_auc(label, logit), 4),
            "params": {
                "seed": self.seed,
                "n_noise": self.n_noise,
                "bias": BIAS,
                "cardinalities": {
                    **{n: f.cardinality for n, f in RELEVANT.items()},
                    "low_0": len(LOW_0_VALUES),
                    **{n: c for a, b, ca, cb in PAIRS for n, c in ((a, ca), (b, cb))},
                    "tags": TAG_CARDINALITY,
                    **{f"noise_{k:02d}": _noise_cardinality(k) for k in range(self.n_noise)},
                },
                "zipf": {n: f.zipf for n, f in RELEVANT.items() if f.zipf},
                "effect_sd_per_id": {n: f.effect_sd for n, f in RELEVANT.items() if f.effect_sd},
                "low_0_effects": dict(zip(LOW_0_VALUES, LOW_0_EFFECTS)),
                "low_1_effects": list(LOW_1_EFFECTS),
                "pair_weight": PAIR_WEIGHT,
                "mf_rank": MF_RANK,
                "mf_sd": MF_SD,
                "tag_effect_sd": TAG_EFFECT_SD,
                "dense_weight": DENSE_WEIGHT,
                "drifted": drifted,
            },
        }


def _noise_cardinality(k: int) -> int:
    return NOISE_CARDINALITIES[k % len(NOISE_CARDINALITIES)]


def _draw_ids(rng: np.random.Generator, cardinality: int, zipf: float, n: int) -> np.ndarray:
    if zipf <= 0:
        return rng.integers(0, cardinality, n)
    p = np.arange(1, cardinality + 1, dtype=np.float64) ** -zipf
    # Shuffle which id is popular, so id order says nothing about frequency.
    ranks = rng.permutation(cardinality)
    return ranks[rng.choice(cardinality, size=n, p=p / p.sum())]


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula; ties are vanishingly rare for a float logit."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    pos = label.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def synth_table(
    rows: int = 200_000, seed: int = 0, n_noise: int = 20, drifted: bool = False
) -> tuple[pa.Table, dict[str, Any]]:
    """The planted table in memory and its truth (what :func:`write_synth` writes).

    ``drifted=True`` samples the post-drift world of :func:`write_partitioned_synth`: ``rel_0``
    loses its effect and ``noise_02`` gains one (needs ``n_noise >= 3``).
    """
    if rows < 1:
        raise ValueError(f"rows: must be at least 1, got {rows}")
    if n_noise < 0:
        raise ValueError(f"n_noise: must be at least 0, got {n_noise}")
    return _Planted(seed, n_noise).sample(rows, np.random.default_rng([seed, 1]), drifted)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # readers never see half a truth file


SYNTH_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def with_keys(table: pa.Table, entity: str | None = None, timestamp: str | None = None,
              start: datetime = SYNTH_EPOCH) -> pa.Table:
    """``table`` with a key column ``entity`` (int64, the row's position: one entity per row, as an
    impression id) and an event-time column ``timestamp`` (UTC, ``start`` plus one second a row),
    appended last; what a feature store (Feast) needs to serve the rows. Either may be None.

    Example::

        >>> t = with_keys(pa.table({"x": [1, 2]}), entity="row_id", timestamp="event_timestamp")
        >>> t.column_names, t.column("row_id").to_pylist(), str(t.schema.field("event_timestamp").type)
        (['x', 'row_id', 'event_timestamp'], [0, 1], 'timestamp[us, tz=UTC]')
    """
    for flag, name in (("entity", entity), ("timestamp", timestamp)):
        if name is not None and name in table.column_names:
            raise ValueError(f"{flag}: column {name!r} exists already; choose another name")
    if entity is not None and entity == timestamp:
        raise ValueError(f"timestamp: {timestamp!r} is the entity column's name too")
    n = table.num_rows
    if entity is not None:
        table = table.append_column(entity, pa.array(np.arange(n, dtype=np.int64)))
    if timestamp is not None:
        base = np.datetime64(start.replace(tzinfo=None), "us")
        times = base + np.arange(n, dtype=np.int64) * np.timedelta64(1_000_000, "us")
        table = table.append_column(timestamp, pa.array(times, pa.timestamp("us", tz="UTC")))
    return table


def write_synth(
    out_dir: str | os.PathLike[str], rows: int = 200_000, seed: int = 0, n_noise: int = 20, files: int = 1,
    entity: str | None = None, timestamp: str | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/data.parquet`` (or ``part-00000.parquet``... when ``files > 1``) and
    ``out_dir/truth.json``; returns the truth. About 1.5 s for the default 200k rows.

    ``entity`` and ``timestamp`` (opt-in, off by default so the default output stays as it is) add
    a row key and an event time column (:func:`with_keys`) for a feature store; the truth then
    names them (``entity``, ``timestamp``). A job reads a key as one more (useless) sparse
    candidate unless ``dataset.sparse`` is listed; a timestamp column is never a feature.

    Example::

        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> truth = write_synth(out, rows=1_000, seed=1, n_noise=2)
        >>> sorted(os.listdir(out)), truth["high_cardinality"]
        (['data.parquet', 'truth.json'], ['high_0', 'high_1'])
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, truth = synth_table(rows, seed, n_noise)
    if entity is not None or timestamp is not None:
        table = with_keys(table, entity, timestamp)
        truth.update({"entity": entity, "timestamp": timestamp})
    if files <= 1:
        pq.write_table(table, out / "data.parquet")
        truth["files"] = ["data.parquet"]
    else:
        bounds = np.linspace(0, rows, files + 1).astype(int)
        truth["files"] = []
        for k in range(files):
            name = f"part-{k:05d}.parquet"
            pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), out / name)
            truth["files"].append(name)
    _write_json(out / "truth.json", truth)
    return truth


def write_synth_chunks(out: str | os.PathLike[str], rows: int, seed: int = 0, n_noise: int = 20,
                       chunk: int = 1_000_000) -> None:
    """``seqattn synth``'s data (the same planted parameters from ``seed``, the same 35 columns) in
    chunks of ``chunk`` rows, one Parquet file each, so that memory stays that of one chunk. The
    rows are new draws, not those of the one-table sample: this writes tables of any size (e.g.
    32M rows for ``bench.scale``) in the memory of one chunk."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    planted = _Planted(seed, n_noise)
    files: list[str] = []
    truth: dict[str, Any] | None = None
    for k, start in enumerate(range(0, rows, chunk)):
        table, part = planted.sample(min(chunk, rows - start), np.random.default_rng([seed, 1, k]))
        name = f"part-{k:05d}.parquet"
        pq.write_table(table, out / name)
        files.append(name)
        truth = truth or part
        del table
    assert truth is not None
    _write_json(out / "truth.json", {**truth, "rows": rows, "files": files, "written_by": "chunked",
                                     "note": "effect_sd, base_rate and oracle_auc are those of the first chunk"})


def write_partitioned_synth(
    out_dir: str | os.PathLike[str],
    days: int = 7,
    rows_per_day: int = 20_000,
    drift_day: int | None = 4,
    seed: int = 0,
    n_noise: int = 20,
    start: date = date(2026, 1, 1),
) -> dict[str, Any]:
    """Write one hive partition per day, ``out_dir/day=YYYY-MM-DD/part.parquet``, plus truth.json.

    Each day holds ``rows_per_day`` rows, so a window of the last ``k`` days is the same size however
    many days were written. The layout is what a schedule's window reads as is
    (``window: {path: out_dir, partition: day}``, :mod:`pipelines.continual`); ``seqattn synth --days``
    calls this.

    From day index ``drift_day`` on (0-based; ``None``: never; ``>= days``: not within these days)
    the world changes: ``rel_0`` stops mattering and ``noise_02`` starts, so a continual pipeline
    should notice and re-select. truth.json holds ``before`` and ``after`` (each a
    :func:`synth_table` truth of one day), ``days`` and the first drifted date ``drift_date``.

    Example::

        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> truth = write_partitioned_synth(out, days=3, rows_per_day=500, drift_day=2)
        >>> sorted(os.listdir(out))[:2], truth["drift_date"]
        (['day=2026-01-01', 'day=2026-01-02'], '2026-01-03')
        >>> "rel_0" in truth["before"]["relevant"], "rel_0" in truth["after"]["relevant"]
        (True, False)
    """
    if days < 1:
        raise ValueError(f"days: must be at least 1, got {days}")
    if rows_per_day < 1:
        raise ValueError(f"rows_per_day: must be at least 1, got {rows_per_day}")
    if drift_day is not None and drift_day < 0:  # a negative index would drift every day yet name the last one
        raise ValueError(f"drift_day: must be at least 0 (a 0-based day index) or None, got {drift_day}")
    if drift_day is not None and n_noise <= 2:
        raise ValueError(f"n_noise: the drift makes noise_02 relevant, so it needs n_noise >= 3, got {n_noise}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    planted = _Planted(seed, n_noise)
    names: list[str] = []
    truths: dict[str, Any] = {}
    for k in range(days):
        day = (start + timedelta(days=k)).isoformat()
        drifted = drift_day is not None and k >= drift_day
        table, truth = planted.sample(rows_per_day, np.random.default_rng([seed, 1, k]), drifted)
        folder = out / f"day={day}"
        folder.mkdir(exist_ok=True)
        pq.write_table(table, folder / "part.parquet")
        names.append(day)
        truths.setdefault("after" if drifted else "before", truth)
    summary = {
        "days": names,
        "drift_day": drift_day,
        "drift_date": names[drift_day] if drift_day is not None and drift_day < days else None,
        "before": truths.get("before"),
        "after": truths.get("after"),
    }
    _write_json(out / "truth.json", summary)
    return summary
