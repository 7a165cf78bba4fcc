import pytest

from seqattn_core.dimensions import DimensionBlocks, heuristic_dims, validate_dim_choices


def test_blocks_costs_and_prefix_prerequisites():
    blocks = DimensionBlocks({"user": 1000, "item": 50}, (4, 8, 16, 32))
    assert blocks.widths == (4, 8, 16)
    assert blocks.costs()[:3] == [1000 * 4 * 4, 1000 * 8 * 4, 1000 * 16 * 4]
    assert blocks.prerequisites() == [-1, 0, 1, -1, 3, 4]
    assert blocks.dims_from_selection([0, 1, 3]) == {"user": 16, "item": 8}
    assert blocks.dims_from_selection([1]) == {"user": 4, "item": 4}  # a block without its prefix counts for nothing


def test_dims_must_be_multiples_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        validate_dim_choices([4, 6])


def test_heuristics_snap_to_choices():
    cards = {"small": 10, "big": 100_000}
    for method in ("merlin", "fastai"):
        dims = heuristic_dims(method, cards, (4, 8, 16, 32, 64))
        assert dims["big"] >= dims["small"]
    pl = heuristic_dims("power_law", cards, (4, 8, 16, 32))
    assert pl["small"] == 32 and pl["big"] < 32
