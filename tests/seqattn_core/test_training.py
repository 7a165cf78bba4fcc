"""The training loop's helpers."""

import torch

from seqattn_core.training import model_device


def test_batches_go_where_the_model_parameters_live():
    assert model_device(torch.nn.Linear(2, 1)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 1, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU
