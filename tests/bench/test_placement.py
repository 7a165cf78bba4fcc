"""bench.placement runs end to end on a world of two (the planner's side: a few tables)."""

from bench.placement import time_place


def test_time_place_reports_every_rank_and_the_plan():
    r = time_place(world=2, tables=4)
    assert r["plan"] == "TorchRec planner" and sum(r["per rank"]) == 4 and len(r["per rank"]) == 2
    assert r["seconds"] > 0
