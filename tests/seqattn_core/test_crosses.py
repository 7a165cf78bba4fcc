import numpy as np
import pytest

from seqattn_core.batches import BatchSource
from seqattn_core.crosses import CrossFeature, cross_ids, prescreen_pairs


def test_exact_ids_when_the_product_fits_and_hashed_ids_in_range_otherwise():
    a, b = np.array([0, 1, 2]), np.array([3, 0, 1])
    assert cross_ids(a, b, card_a=3, card_b=4, buckets=12).tolist() == [3, 4, 9]
    h = cross_ids(np.arange(1000), np.arange(1000), card_a=1000, card_b=1000, buckets=97)
    assert h.min() >= 0 and h.max() < 97 and len(np.unique(h)) > 90


@pytest.mark.parametrize("card_a, card_b, buckets", [(50, 40, 2000), (50, 40, 1999), (3000, 3000, 65536)])
def test_a_rows_id_does_not_depend_on_the_batch_it_is_in(card_a: int, card_b: int, buckets: int) -> None:
    # The rule used to choose exact or hashed ids by the batch's largest id, so a batch of small ids
    # and the same rows inside a larger batch got different ids.
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, card_a, 5000), rng.integers(0, card_b, 5000)
    a[:50], b[:50] = rng.integers(0, 3, 50), rng.integers(0, 3, 50)  # a batch of only small ids
    whole = cross_ids(a, b, card_a, card_b, buckets)
    small = np.flatnonzero((a < 3) & (b < 3))
    assert len(small) > 0
    assert cross_ids(a[small], b[small], card_a, card_b, buckets).tolist() == whole[small].tolist()
    one_by_one = [int(cross_ids(a[i : i + 1], b[i : i + 1], card_a, card_b, buckets)[0]) for i in range(200)]
    assert one_by_one == whole[:200].tolist()
    assert whole.min() >= 0 and whole.max() < buckets


def test_batch_source_gives_each_row_the_same_cross_id_in_any_batch() -> None:
    rng = np.random.default_rng(2)
    n, cards = 4000, {"a": 300, "b": 300}
    sparse = {k: (rng.integers(0, c, n), np.ones(n, np.int32)) for k, c in cards.items()}
    src = BatchSource(np.zeros((n, 0), np.float32), sparse, np.zeros(n, np.float32),
                      [CrossFeature("a", "b", buckets=4096)], cards)
    whole = src.batch(0, n).sparse["a_X_b"].values().tolist()
    pieces = [v for s in range(0, n, 7) for v in src.batch(s, min(s + 7, n)).sparse["a_X_b"].values().tolist()]
    assert pieces == whole
    expect = cross_ids(sparse["a"][0], sparse["b"][0], 300, 300, 4096)
    assert whole == expect.tolist()


def test_prescreen_ranks_the_planted_xor_pair_first_and_drops_noise_pairs():
    rng = np.random.default_rng(0)
    n = 40_000
    ids = {k: rng.integers(0, 10, n) for k in ("a", "b", "n1", "n2", "n3")}
    logit = np.where((ids["a"] % 2) ^ (ids["b"] % 2), 1.5, -1.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    ranked = prescreen_pairs(ids, {k: 10 for k in ids}, y, max_candidates=5)
    assert ranked[0][0] == CrossFeature("a", "b", 100)
    assert all(c.name == "a_X_b" for c, _ in ranked)  # pure-noise pairs show no held-out gain
