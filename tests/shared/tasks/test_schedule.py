import math

import pytest
import torch

from domainfm.shared.tasks.schedule import adamw_warmup_cosine, warmup_cosine


def test_warmup_then_cosine_to_zero():
    factor = warmup_cosine(epochs=6, warmup=2)
    assert [factor(e) for e in range(2)] == pytest.approx([1 / 3, 2 / 3])
    assert factor(2) == pytest.approx(1.0)
    assert factor(4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert factor(6) == pytest.approx(0.0) and factor(9) == pytest.approx(0.0)


def test_decay_on_matrices_only_or_on_everything():
    model = torch.nn.Linear(3, 2)
    matrices = adamw_warmup_cosine(1e-3, 0.05, 4, 1)(list(model.parameters()))
    assert [g["weight_decay"] for g in matrices["optimizer"].param_groups] == [0.05, 0.0]
    everything = adamw_warmup_cosine(1e-3, 0.01, 4, 1, decay_vectors=True)(list(model.parameters()))
    (group,) = everything["optimizer"].param_groups
    assert group["weight_decay"] == 0.01 and len(group["params"]) == 2 and group["betas"] == (0.9, 0.999)
    assert everything["lr_scheduler"]["interval"] == "epoch"
    assert everything["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-3 / 2)  # first warm-up epoch


def test_warmup_is_capped_below_the_epochs():
    optimizer = adamw_warmup_cosine(1.0, 0.0, 2, 10)([torch.nn.Parameter(torch.zeros(2, 2))])["optimizer"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)  # warm-up of 1 epoch, not 10
