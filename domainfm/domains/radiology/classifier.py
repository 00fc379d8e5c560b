"""A deployable radiograph classifier: the ConVIRT image tower (any PEFT state) and a multi-label head.

ConVIRT (Zhang et al., MLHC 2022, arXiv 2010.00747) evaluates its image encoder by linear probes and
fine-tuning on CheXpert-style multi-label findings (``evaluate.probe``); this module trains that
classifier once more on the store's labelled train images and keeps it, so that it can be exported as a
MONAI bundle and explained. Loss: binary cross-entropy per label; score: macro AUROC on the test split.
The image tower is a ConVIRT checkpoint's or a converted foundation checkpoint's; images are standardised
by its transform record, and the classifier's record starts from it (letterboxed as radiographs are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.shared.errors import DomainfmError

CLASSIFIER_KEY = "domainfm_radiology_classifier"


class RadiographClassifier(nn.Module):
    """An image tower and a linear head over its pooled embedding; ``forward`` returns label logits."""

    def __init__(self, tower: nn.Module, n_labels: int) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(tower.embed_dim, n_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_labels]`` of normalised radiographs ``[B, 1, H, W]``."""
        return self.head(self.tower(images))


def build_classifier(meta: dict[str, Any]) -> RadiographClassifier:
    """A randomly initialised classifier of the shape ``meta`` (a checkpoint's metadata) describes."""
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.peft.methods import apply_peft

    args = dict(meta["encoder"])
    tower = apply_peft(create_backbone(args.pop("name"), **args), meta["peft"], **meta["peft_options"])
    return RadiographClassifier(tower, len(meta["label_names"]))


def save_classifier(model: RadiographClassifier, meta: dict[str, Any], path: Path) -> Path:
    """Weights, rebuild metadata and the input transform record in one safetensors file, written atomically."""
    from domainfm.domains.radiology.deploy import input_transform
    from domainfm.shared.tasks.checkpoint import save_model_checkpoint

    return save_model_checkpoint(model, path, CLASSIFIER_KEY, {**meta, "transform": input_transform(meta).to_dict()})


def load_classifier(path: Path) -> tuple[RadiographClassifier, dict[str, Any]]:
    """A classifier saved by :func:`train_classifier` (eval mode) and its metadata."""
    from domainfm.shared.tasks.checkpoint import load_model_checkpoint

    return load_model_checkpoint(path, CLASSIFIER_KEY, "domainfm radiology train", build_classifier)


def train_classifier(
    store_path: Path,
    out: Path,
    checkpoint: Path | None = None,
    backbone: str = "test_resnet",
    peft: str = "full",
    peft_options: dict[str, Any] | None = None,
    label_fraction: float = 1.0,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    text_model: Path | None = None,
) -> dict[str, Any]:
    """Trains a classifier on ``label_fraction`` of the labelled train images; test macro AUROC; saves it.

    ``text_model`` allows a ConVIRT checkpoint's text-tower folder that lies outside the checkpoint's folder.
    """
    from domainfm.domains.radiology.images import display_transform
    from domainfm.domains.radiology.pretrain import (
        foundation_image_encoder,
        load_convirt,
        radiograph_transform,
        store_normalization,
    )
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.engine import resolve_device
    from domainfm.shared.model.encoders import downstream_transform, fit_store, is_foundation_checkpoint, tile_input
    from domainfm.shared.peft.methods import apply_peft, count_parameters
    from domainfm.shared.tasks.finetune import finetune, predict
    from domainfm.shared.tasks.metrics import multilabel_macro_auroc
    from domainfm.shared.tasks.subsets import label_fraction as choose_labelled
    from domainfm.shared.tiles.schema import SPLITS
    from domainfm.shared.tiles.split_counts import require_splits
    from domainfm.shared.tiles.store import TileStore

    store = TileStore(store_path)
    if "labels" not in store.spec.companions:
        raise DomainfmError(f"{store.path} has no labels: ingest it with --labels LABELS.csv")
    require_splits(store, ("train",), "radiology train needs images in train")
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    size = store.spec.tile_shape[-1]
    if is_foundation_checkpoint(checkpoint):
        tower, encoder_meta = foundation_image_encoder(Path(checkpoint))  # type: ignore[arg-type]
    elif checkpoint is not None:
        convirt, _, encoder_meta = load_convirt(Path(checkpoint), text_model)
        tower = convirt.image_tower
    else:
        tower = create_backbone(backbone, in_chans=1, img_size=size)
        encoder_meta = {"normalization": store_normalization(store), "image_size": size}
    normalization = encoder_meta.get("normalization")  # kept for older readers; None for a foundation tower
    record = fit_store(radiograph_transform(encoder_meta), store.spec.tile_shape[0], size, checkpoint or store.path)
    prepare = tile_input(record)
    transform = downstream_transform(record, geometry="letterbox", details=display_transform(size).details)
    build_args = tower.build_args
    tower = apply_peft(tower, peft, **(peft_options or {}))
    labels = torch.from_numpy(store.companion("labels")[:].astype(np.float32))
    model = RadiographClassifier(tower, labels.shape[1]).to(torch_device)
    train = choose_labelled(np.flatnonzero(store.index["split"] == SPLITS["train"]), label_fraction, seed)

    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels[batch["tile_id"].cpu()].to(torch_device))

    finetune(model, store, train, loss, prepare, epochs, batch_size, lr, seed, torch_device, progress)
    test = np.flatnonzero(store.index["split"] == SPLITS["test"])
    scores = predict(model, store, test, prepare, torch_device, torch.sigmoid)
    meta = {
        "encoder": build_args,
        "peft": peft,
        "peft_options": peft_options or {},
        "label_names": list(store.spec.label_names),
        "normalization": normalization,
        "transform": transform.to_dict(),
        "image_size": size,
        "checkpoint": str(checkpoint) if checkpoint else None,
    }
    saved = save_classifier(model.cpu(), meta, Path(out) / "classifier.safetensors")
    return {
        "classifier": str(saved),
        "init": "convirt" if checkpoint else "random",
        "peft": peft,
        "train_images": len(train),
        "test_images": len(test),
        "trainable_encoder_parameters": count_parameters(tower)["trainable"],
        "macro_auroc": multilabel_macro_auroc(scores, labels[test]) if len(test) else None,
    }
