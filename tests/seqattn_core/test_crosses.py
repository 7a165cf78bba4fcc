import numpy as np

from seqattn_core.crosses import CrossFeature, cross_ids, prescreen_pairs


def test_exact_ids_when_the_product_fits_and_hashed_ids_in_range_otherwise():
    a, b = np.array([0, 1, 2]), np.array([3, 0, 1])
    assert cross_ids(a, b, card_b=4, buckets=12).tolist() == [3, 4, 9]
    h = cross_ids(np.arange(1000), np.arange(1000), card_b=1000, buckets=97)
    assert h.min() >= 0 and h.max() < 97 and len(np.unique(h)) > 90


def test_prescreen_ranks_the_planted_xor_pair_first_and_drops_noise_pairs():
    rng = np.random.default_rng(0)
    n = 40_000
    ids = {k: rng.integers(0, 10, n) for k in ("a", "b", "n1", "n2", "n3")}
    logit = np.where((ids["a"] % 2) ^ (ids["b"] % 2), 1.5, -1.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    ranked = prescreen_pairs(ids, {k: 10 for k in ids}, y, max_candidates=5)
    assert ranked[0][0] == CrossFeature("a", "b", 100)
    assert all(c.name == "a_X_b" for c, _ in ranked)  # pure-noise pairs show no held-out gain
