"""Launch options: refused strategies, the FSDP setting of the giant SwinV2, weight decay under FSDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from domainfm.shared.engine.training import data_parallel_only, make_trainer, step_task
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tasks.schedule import adamw_warmup_cosine


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_strategies_that_spawn_or_fork_the_trainer_are_refused(strategy: str):
    with pytest.raises(DomainfmError, match="torchrun or SLURM"):
        make_trainer(1, torch.device("cpu"), progress=False, strategy=strategy, devices=2)


def test_a_cpu_trainer_takes_the_process_count_and_strategy():
    trainer = make_trainer(1, torch.device("cpu"), progress=False, devices=2, strategy="ddp")
    assert trainer.world_size == 2 and type(trainer.strategy).__name__ == "DDPStrategy"
    assert make_trainer(1, torch.device("cpu"), progress=False).world_size == 1


def test_sharded_strategies_are_refused_where_only_ddp_is_exact():
    for strategy in ("fsdp", "deepspeed_stage_2"):
        with pytest.raises(DomainfmError, match="only for SimMIM pretraining of the giant SwinV2"):
            data_parallel_only(strategy, "pathology pretrain")
    data_parallel_only("ddp", "pathology pretrain")
    # the page the message points to names the command that takes sharded strategies
    docs = (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()
    assert "`fsdp` for `remote-sensing pretrain` only" in docs


def test_fsdp_wraps_and_checkpoints_each_swinv2_block():
    from domainfm.domains.remote_sensing.pretrain import _strategy
    from domainfm.shared.backbones import create_backbone

    backbone = create_backbone("test_swinv2", in_chans=14, img_size=32)
    block = type(backbone.transformer_blocks()[0])
    strategy = _strategy("fsdp", {"sharding_strategy": "SHARD_GRAD_OP", "state_dict_type": "sharded"}, backbone)
    assert type(strategy).__name__ == "FSDPStrategy"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {block}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {block}
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP" and strategy._state_dict_type == "sharded"
    assert _strategy("ddp", None, backbone) == "ddp"
    with pytest.raises(DomainfmError, match="unknown fsdp option"):
        _strategy("fsdp", {"shard": "FULL"}, backbone)
    with pytest.raises(DomainfmError, match="use --strategy fsdp"):
        _strategy("ddp", {"cpu_offload": True}, backbone)


def test_weight_decay_keeps_to_matrices_when_fsdp_shows_parameters_flat():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    step_task(lambda batch: torch.zeros(()), model, adamw_warmup_cosine(1e-3, 0.05, 2, 0))
    for parameter in model.parameters():  # FSDP's sharded views: 1-D slices of a flat parameter
        parameter.data = parameter.data.flatten()
    groups = adamw_warmup_cosine(1e-3, 0.05, 2, 0)(list(model.parameters()))["optimizer"].param_groups
    decayed = {id(p) for group in groups if group["weight_decay"] > 0 for p in group["params"]}
    assert decayed == {id(model[0].weight)}
