"""Tile- and slide-level heads on a pathology encoder.

* **Linear probe** on frozen embeddings (the eva protocol for patch tasks, ``shared/methods/pluto.md``
  section 2): multinomial logistic regression on standardised features, trained on the train split and
  scored on the test split by accuracy, balanced accuracy and macro one-vs-rest AUROC.
* **Tile classifier** trained end to end with any method of the shared PEFT module (``linear`` = frozen
  encoder, ``full``, ``lora``, ``dvpt``, ...); saved as ``tile_classifier.safetensors`` with what rebuilds
  it (encoder build arguments, PEFT method and options, classes, and the input transform record, started
  from the encoder's: a PLUTO encoder's, a converted foundation checkpoint's, or the store's statistics).
* **Slide-level MIL** (gated-attention ABMIL, :mod:`.mil`) on embedding stores: one bag per slide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.pathology.data_splits import require_splits
from domainfm.domains.pathology.embed import Embeddings
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tasks.probes import fit_softmax_probe
from domainfm.shared.tasks.subsets import label_fraction
from domainfm.shared.tiles.schema import SPLITS

CLASSIFIER_KEY = "domainfm_pathology_tile_classifier"
NO_LABELS = "tiles carry no labels (tile with --labels FILE, or phantom slides with --truth_labels)"


def classification_scores(probabilities: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro one-vs-rest AUROC (over classes present in ``labels``)."""
    from torchmetrics.functional.classification import multiclass_accuracy

    from domainfm.shared.tasks.metrics import multiclass_macro_auroc

    predicted = probabilities.argmax(1)
    balanced = multiclass_accuracy(predicted, labels, n_classes, average="none")
    seen = [c for c in range(n_classes) if int((labels == c).sum()) > 0]
    return {
        "accuracy": float((predicted == labels).float().mean()),
        "balanced_accuracy": float(balanced[seen].mean()) if seen else float("nan"),
        "macro_auroc": multiclass_macro_auroc(probabilities, labels, n_classes),
    }


def linear_probe(
    embeddings: Embeddings, mpp: float | None = None, labelled: float = 1.0, seed: int = 0
) -> dict[str, Any]:
    """Linear probe of the tile labels: train split (a seeded ``labelled`` fraction of it) -> test split.

    The fraction is stratified: ``round(labelled * n)`` tiles of each class, at least one.
    """
    names = embeddings.attrs.get("label_names") or []
    if not names or (embeddings.label < 0).all():
        raise DomainfmError(f"{embeddings.path}: {NO_LABELS}")
    keep = embeddings.label >= 0
    if mpp is not None:
        keep &= np.isclose(embeddings.mpp, mpp)
    require_splits(embeddings.path, embeddings.split[keep], ("train", "test"), "a linear probe of labelled tiles")
    train = np.flatnonzero(keep & (embeddings.split == SPLITS["train"]))
    test = np.flatnonzero(keep & (embeddings.split == SPLITS["test"]))
    if len(train) < 2 or len(test) < 1:
        raise DomainfmError(f"{embeddings.path}: need train and test tiles with labels; got {len(train)}, {len(test)}")
    if labelled < 1.0:
        train = label_fraction(train, labelled, seed, labels=embeddings.label[train])
    torch.manual_seed(seed)
    x = torch.from_numpy(embeddings.features)
    y = torch.from_numpy(embeddings.label.astype(np.int64))
    score = fit_softmax_probe(x[train], y[train], len(names))
    return {
        **classification_scores(score(x[test]), y[test], len(names)),
        "train_tiles": len(train),
        "test_tiles": len(test),
        "classes_in_test": sorted({names[i] for i in embeddings.label[test]}),
    }


class TileClassifier(nn.Module):
    """An encoder (any PEFT state) and a linear head over its pooled embedding."""

    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_classes]`` of normalised images ``[B, 3, H, W]``."""
        return self.head(self.backbone(images))


def save_tile_classifier(model: TileClassifier, meta: dict[str, Any], path: Path) -> Path:
    """Weights, rebuild metadata and the input transform record in one safetensors file, written atomically."""
    from domainfm.domains.pathology.deploy import input_transform
    from domainfm.shared.tasks.checkpoint import save_model_checkpoint

    return save_model_checkpoint(model, path, CLASSIFIER_KEY, {**meta, "transform": input_transform(meta).to_dict()})


def build_tile_classifier(meta: dict[str, Any]) -> TileClassifier:
    """A randomly initialised tile classifier of the shape ``meta`` (a checkpoint's metadata) describes."""
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.peft.methods import apply_peft

    args = dict(meta["encoder"])
    backbone = apply_peft(create_backbone(args.pop("name"), **args), meta["peft"], **meta["peft_options"])
    return TileClassifier(backbone, len(meta["label_names"]))


def load_tile_classifier(path: Path) -> tuple[TileClassifier, dict[str, Any]]:
    """A tile classifier saved by :func:`train_tile_classifier` (rebuilt, PEFT reapplied, weights loaded)."""
    from domainfm.shared.tasks.checkpoint import load_model_checkpoint

    return load_model_checkpoint(path, CLASSIFIER_KEY, "domainfm pathology train", build_tile_classifier)


def _init_name(encoder_meta: dict[str, Any]) -> str:
    """``pluto``, or the converted foundation model's catalogue name."""
    return str((encoder_meta.get("foundation") or {}).get("model") or "pluto")


def train_tile_classifier(
    store_path: Path,
    out: Path,
    checkpoint: Path | None = None,
    backbone: str = "test_vit",
    peft: str = "linear",
    peft_options: dict[str, Any] | None = None,
    labelled: int | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Trains a tile classifier on the store's labelled train tiles with ``peft``; test scores; saves it.

    ``checkpoint`` is a ``pathology pretrain`` encoder or a converted foundation checkpoint; the tiles go
    through its transform record, and the classifier's record starts from it.
    """
    from domainfm.domains.pathology.pretrain import load_encoder, store_normalization, store_transform, tile_transform
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.engine import resolve_device
    from domainfm.shared.model.encoders import downstream_transform, tile_input
    from domainfm.shared.peft.methods import apply_peft, count_parameters
    from domainfm.shared.tasks.finetune import finetune, predict
    from domainfm.shared.tiles.store import TileStore

    store = TileStore(store_path)
    names = list(store.spec.label_names)
    labels = store.index["label"]
    if not names or (labels < 0).all():
        raise DomainfmError(f"{store.path}: {NO_LABELS}")
    require_splits(store.path, store.index["split"][labels >= 0], ("train", "test"), "a tile classifier")
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    tile_px, mpps = store.spec.tile_shape[-1], store.spec.value_scaling.get("mpps")
    if checkpoint is not None:
        encoder, encoder_meta = load_encoder(Path(checkpoint))
    else:
        encoder = create_backbone(backbone, in_chans=3, img_size=tile_px)
        normalization = store_normalization(store)
        encoder_meta = {
            "normalization": normalization,
            "transform": tile_transform(normalization, tile_px, mpps).to_dict(),
        }
    record = store_transform(encoder_meta, store, checkpoint or store.path)
    prepare = tile_input(record)
    build_args = encoder.build_args
    encoder = apply_peft(encoder, peft, **(peft_options or {}))
    model = TileClassifier(encoder, len(names)).to(torch_device)
    train = np.flatnonzero((store.index["split"] == SPLITS["train"]) & (labels >= 0))
    if labelled is not None:
        train = label_fraction(train, count=labelled, seed=seed)
    target = torch.from_numpy(labels.astype(np.int64))

    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target[batch["tile_id"].cpu()].to(torch_device))

    finetune(model, store, train, loss, prepare, epochs, batch_size, lr, seed, torch_device, progress)
    test = np.flatnonzero((store.index["split"] == SPLITS["test"]) & (labels >= 0))
    probabilities = predict(model, store, test, prepare, torch_device, lambda logits: torch.softmax(logits, 1))
    meta = {
        "encoder": build_args,
        "peft": peft,
        "peft_options": peft_options or {},
        "label_names": names,
        "normalization": encoder_meta.get("normalization"),  # older readers; None for a converted encoder
        "transform": downstream_transform(record, details={"mpps": mpps, "tile_px": tile_px}).to_dict(),
        "tile_px": tile_px,
        "mpps": mpps,
        "checkpoint": str(checkpoint) if checkpoint else None,
    }
    saved = save_tile_classifier(model.cpu(), meta, Path(out) / "tile_classifier.safetensors")
    scores = classification_scores(probabilities, target[test], len(names)) if len(test) else {}
    return {
        "classifier": str(saved),
        "init": _init_name(encoder_meta) if checkpoint else "random",
        "peft": peft,
        "train_tiles": len(train),
        "test_tiles": len(test),
        "trainable_encoder_parameters": count_parameters(encoder)["trainable"],
        **scores,
    }
