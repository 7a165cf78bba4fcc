"""bench.field_methods: a method's ranking does not depend on what ran before it in the process."""

import torch

from bench.field import Problem, job_spec
from bench.field_methods import Search, rank_adafs, split_search
from pipelines.dataset import load_dataset
from pipelines.synth import write_synth


def test_adafs_ranking_ignores_the_global_random_state(tmp_path):
    write_synth(tmp_path / "planted", rows=3000, seed=0, n_noise=2)
    spec = job_spec(Problem("planted", str(tmp_path / "planted"), "", 1, 256, ()), seed=0)
    search = Search(split_search(load_dataset(spec.dataset, seed=0)), spec)
    orders = []
    for state in (1, 2):
        torch.manual_seed(state)  # as if other methods had drawn from torch's generator before
        orders.append(rank_adafs(search).order)
    assert orders[0] == orders[1]
