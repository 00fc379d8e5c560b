"""One domain's real pretraining for the DDP equivalence tests, recording its first optimiser step.

Run as ``python ddp_worker.py SPEC.json`` (one process) or as
``torchrun --standalone --nproc_per_node 2 ddp_worker.py SPEC.json`` (two CPU processes, gloo). Each run of
the spec calls the domain's own entry point (``pretrain`` of radiology, pathology and remote sensing,
``train_segmenter`` for segmentation) with ``devices`` equal to the world size and strategy ``ddp`` when
there are several processes, plus :class:`Recorder`, which writes after the first backward pass (so after
DDP's gradient all-reduce) every parameter's gradient, the loss and the tile ids the process read to
``RECORD/rank{R}.pt``.

Randomness: crops, masks, flips, sentence choice and posterior noise are the real code's per-tile draws
(``tile_generators``: seeded by seed, epoch and tile id) and stay on. Dropout and stochastic depth draw from
torch's global generator, which differs between processes on purpose, so the recorder sets their
probabilities to zero in both runs.

A run's ``variant`` replaces one global-batch helper by its per-process form (to show the tests can fail):
``local_negatives`` (ConVIRT without the gather) or ``local_centre`` (PLUTO centres from the process's
batch only).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import nn

TEXT = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64, "vocab_size": 300, "frozen_layers": 1}
OBJECTIVE = {"out_dim": 64, "head_hidden": 32, "head_bottleneck": 16, "local_size": 16, "n_local": 1}


class Recorder(lightning.Callback):
    """Writes the first step's gradients, loss and tile ids of this process (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.tile_ids: list[int] = []
        self.done = False

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        for module in pl_module.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if hasattr(module, "drop_prob"):  # timm DropPath
                module.drop_prob = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: dict, batch_idx: int) -> None:
        if not self.done:
            self.tile_ids = [int(i) for i in batch["tile_id"].tolist()]

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.done:
            return
        self.done = True
        named = list(pl_module.module.named_parameters())
        record = {
            "grads": {n: p.grad.detach().clone() for n, p in named if p.grad is not None},
            "trainable": [n for n, p in named if p.requires_grad],
            "tile_ids": self.tile_ids,
            "loss": float(pl_module.losses[-1]),
            "world": int(trainer.world_size),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(record, self.folder / f"rank{trainer.global_rank}.pt")


def apply_variant(variant: str | None) -> None:
    """Replaces one global-batch helper by its per-process form (``None``: the real code)."""
    if variant is None:
        return
    if variant == "local_negatives":
        import domainfm.domains.radiology.convirt as convirt

        convirt.gather_with_grad = lambda tensor: tensor
    elif variant == "local_centre":
        import domainfm.domains.pathology.pluto as pluto

        pluto.all_reduce_mean = lambda tensor: tensor.detach().clone()
    else:
        raise ValueError(f"unknown variant {variant!r}")


def run(spec: dict[str, Any]) -> None:
    """Runs one domain's training for one epoch (one step on the test stores) with a :class:`Recorder`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    options = {
        "device": "cpu",
        "progress": False,
        "devices": world,
        "strategy": "ddp" if world > 1 else "auto",
        "callbacks": [Recorder(Path(spec["record"]))],
    }
    store, out, batch = Path(spec["store"]), Path(spec["out"]), int(spec["batch_size"])
    domain = spec["domain"]
    if domain == "radiology":
        from domainfm.domains.radiology.pretrain import pretrain

        tokenizer = Path(spec["tokenizer"]) if spec.get("tokenizer") else None
        pretrain(store, out, "test_vit", text=TEXT, projection_dim=16, epochs=1, batch_size=batch,
                 tokenizer=tokenizer, **options)  # fmt: skip
    elif domain == "pathology":
        from domainfm.domains.pathology.pretrain import pretrain

        pretrain(store, out, "test_vit", objective=OBJECTIVE, epochs=1, batch_size=batch, **options)
    elif domain == "remote_sensing":
        from domainfm.domains.remote_sensing.pretrain import pretrain

        pretrain(store, out, "test_swinv2", mask_patch=8, epochs=1, batch_size=batch, **options)
    elif domain == "segmentation":
        from domainfm.domains.segmentation.models import GMSSegmenter
        from domainfm.domains.segmentation.train import train_segmenter
        from domainfm.domains.segmentation.vae import TINY_VAE, create_vae
        from domainfm.shared.tiles.store import TileStore

        torch.manual_seed(0)
        model = GMSSegmenter(create_vae(TINY_VAE), TINY_VAE, {"base": 8, "groups": 4})
        train_segmenter(model, TileStore(store), 1, batch_size=batch, seed=0, **options)
    else:
        raise ValueError(f"unknown domain {domain!r}")


def main(path: str) -> None:
    """Runs every run of the spec file in order (each variant applied for the runs after it)."""
    for spec in json.loads(Path(path).read_text())["runs"]:
        apply_variant(spec.get("variant"))
        run(spec)


if __name__ == "__main__":
    main(sys.argv[1])
