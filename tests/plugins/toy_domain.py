"""A toy domain, entirely outside ``domainfm/``: grey pictures of any size, "bright" vs "dark".

It brings what a real domain brings (a reader into the tile store, a store spec, a head on a shared
backbone with PEFT, a checkpoint, a deploy module with a card) and registers itself with
``register_domain``; ``tests/plugins/test_toy_domain.py`` then runs it through ingest, fine-tuning,
predict, a MONAI bundle and explain without anything under ``domainfm/shared`` naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.shared.backbones import create_backbone
from domainfm.shared.deploy.card import Deployable, ModelCard, contract_network
from domainfm.shared.model import InputTransform, transform_array
from domainfm.shared.peft.methods import apply_peft
from domainfm.shared.plugins import DomainPlugin
from domainfm.shared.tasks.checkpoint import load_model_checkpoint, save_model_checkpoint
from domainfm.shared.tasks.finetune import finetune
from domainfm.shared.tiles.schema import SPLITS, StoreSpec, TileBatch
from domainfm.shared.tiles.store import TileStore

NAME = "toy"
KIND = "toy.brightness"
KEY = "domainfm_toy_brightness"
SIZE = 16
CLASSES = ["dark", "bright"]
PLUGIN = DomainPlugin(name=NAME, deploy=__name__, checkpoint_keys=(KEY,), producers=("toy train",))


def input_transform(mean: float = 0.5, std: float = 0.25) -> InputTransform:
    """Any grey picture, resized to 16 x 16, rounded to uint8, scaled to [0, 1] and standardised."""
    return InputTransform(
        channels=["grey"], size=[SIZE, SIZE], geometry="resize", scale=1 / 255, mean=[mean], std=[std],
        quantise="uint8", input_range=[0.0, 255.0],
    )  # fmt: skip


def read_picture(path: Path, card: ModelCard | None = None) -> np.ndarray:
    """A grey picture as raw ``[1, H, W]`` float values 0..255."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32)[None]


INPUT_READERS = {".png": read_picture}


def spec() -> StoreSpec:
    """The toy store: 16 x 16 grey uint8 tiles, labelled."""
    return StoreSpec(NAME, (1, SIZE, SIZE), "uint8", [{"name": "grey"}], label_names=CLASSES, codec="none")


def reader(path: str | Path) -> Iterator[TileBatch]:
    """One picture -> one tile, through the model's own transform; the label is in the file name."""
    tile = transform_array(read_picture(Path(path)), input_transform())
    label = CLASSES.index(Path(path).stem.split("_")[0])
    split = 0 if int(Path(path).stem.split("_")[1]) % 4 else 2  # train, every fourth file test
    yield TileBatch(tile[None], index={"label": np.array([label]), "split": np.array([split])})


class Classifier(nn.Module):
    """Shared backbone (+ PEFT) and a linear head."""

    def __init__(self, build: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = create_backbone(build["backbone"], in_chans=1)
        apply_peft(self.backbone, build["peft"])
        self.head = nn.Linear(self.backbone.embed_dim, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """The deployed network, randomly initialised."""
    assert kind == KIND
    return contract_network(input_transform(**build["normalization"]), Classifier(build))


def card(build: dict[str, Any], source: Path) -> ModelCard:
    return ModelCard.for_transform(
        input_transform(**build["normalization"]), kind=KIND, task="classification", out_channels=2,
        activation="softmax", class_names=CLASSES, build=build, details={"source": str(source)},
    )  # fmt: skip


def deployable(path: Path) -> Deployable:
    model, build = load_model_checkpoint(path, KEY, "toy train", Classifier)
    return Deployable(contract_network(input_transform(**build["normalization"]), model), card(build, path), Path(path))


def train(store: Path, out: Path, epochs: int = 30, seed: int = 0) -> Path:
    """Fine-tunes the classifier (DVPT on a tiny ViT) on the train split with the shared task layer, and saves it.

    Store tiles are standardised by the model's own transform module (what the deployed network runs).
    """
    torch.manual_seed(seed)
    build = {"backbone": "test_vit", "peft": "dvpt", "normalization": {"mean": 0.5, "std": 0.25}}
    model = Classifier(build)
    tiles = TileStore(store)
    train_ids = np.flatnonzero(tiles.index["split"] == SPLITS["train"])
    transform = input_transform(**build["normalization"]).module()
    finetune(
        model, tiles, train_ids, lambda out, batch: nn.functional.cross_entropy(out, batch["label"].long()),
        transform.standardise, epochs=epochs, batch_size=8, lr=3e-3, seed=seed, device=torch.device("cpu"),
    )  # fmt: skip
    return save_model_checkpoint(model.eval(), out, KEY, build)
