"""Downstream tasks on a (pretrained) SwinV2 encoder: 3D cloud curtains, per-pixel masks, scene labels.

* ``curtain``: SatVision-TOA's 3D cloud retrieval (arXiv 2411.17000, section 4 of
  ``shared/methods/satvision.md``) with a head that reads heights from channels (:class:`CurtainHead`):
  last-stage features -> 1x1 conv + PixelShuffle back to the chip's pixels (SimMIM's decoder shape) -> the
  track (the chip's central column, as :func:`~domainfm.domains.remote_sensing.curtain.curtain` defines
  it) resampled to the 91 along-track samples -> a per-sample profile (1-D convs) of 40 height logits.
  SatVision's FCN decoder instead resizes a 2-D map to 91 x 40, so height bin *k* comes from chip column
  *k* x W / 40, which a translation-equivariant Swin encoder cannot tell apart; on the phantom study that
  head reached a cloud IoU of 0.20-0.23, this one 0.34-0.55 (docs/remote_sensing.md). BCE on logits
  (positives weighted by the labelled set's negatives-per-positive, at most 20, because
  cloudy bins are rare; SatVision uses plain BCE); scored by the cloud IoU (binary Jaccard, SatVision's
  "mIoU"), the mean IoU over cloud and clear, and the false-negative rate.
* ``segment``: SatVision's FCN decoder (:class:`UpsamplingDecoder`) at the chip's size for a per-pixel
  mask (BCE; cloud IoU).
* ``multilabel``: pooled features -> linear; BCE; macro AUROC (e.g. Sentinel-2 scene labels).

Every task takes any method of the shared PEFT module (``linear`` = frozen encoder, ``full``, ``lora``,
``dvpt``, ...); the head always trains. A task trains on a seeded number of labelled train chips and is
scored on the test split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.remote_sensing.curtain import CURTAIN_SHAPE
from domainfm.domains.remote_sensing.pretrain import input_transform, load_encoder, prepare
from domainfm.domains.remote_sensing.simmim import encode
from domainfm.shared.backbones import create_backbone
from domainfm.shared.engine import resolve_device
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tasks.finetune import finetune, predict
from domainfm.shared.tasks.subsets import label_fraction
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.split_counts import require_splits
from domainfm.shared.tiles.store import TileStore

TARGETS = {"curtain": "curtain", "segment": "cloud_mask", "multilabel": "labels"}
TASK_KEY = "domainfm_remote_sensing_task"


class UpsamplingDecoder(nn.Sequential):
    """Transposed convolutions (stride 2, ReLU) from ``stride``-times smaller features, then a 3x3 conv."""

    def __init__(self, in_channels: int, stride: int, out_channels: int = 1, dropout: float = 0.2) -> None:
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(int(math.log2(stride))):
            layers += [nn.ConvTranspose2d(width, max(width // 2, 16), 2, stride=2), nn.ReLU()]
            width = max(width // 2, 16)
        layers += [nn.Conv2d(width, out_channels, 3, padding=1), nn.Dropout(dropout)]
        super().__init__(*layers)


class CurtainHead(nn.Module):
    """Features ``[B, C, h, w]`` -> curtain logits ``[B, samples, heights]`` along the chip's central column.

    A 1x1 conv and PixelShuffle give ``hidden`` channels per chip pixel; the two central columns (the
    track) are averaged, resampled linearly to ``samples`` along-track points, and a 3-tap and a 1x1 1-D
    conv turn each point's channels into ``heights`` logits, so the height of a cloud is a function of what
    the encoder saw under the track, not of where in the chip it lies.
    """

    def __init__(
        self,
        in_channels: int,
        stride: int,
        shape: tuple[int, int] = CURTAIN_SHAPE,
        hidden: int = 32,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.samples = shape[0]
        self.to_pixels = nn.Sequential(
            nn.Conv2d(in_channels, hidden * stride**2, 1), nn.PixelShuffle(stride), nn.ReLU()
        )
        self.profile = nn.Sequential(
            nn.Conv1d(hidden, 2 * hidden, 3, padding=1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(2 * hidden, shape[1], 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Curtain logits ``[B, samples, heights]``."""
        pixels = self.to_pixels(features)
        width = pixels.shape[-1]
        track = pixels[..., width // 2 - 1 : width // 2 + 1].mean(-1)
        track = nn.functional.interpolate(track, size=self.samples, mode="linear", align_corners=True)
        return self.profile(track).transpose(1, 2)


class DownstreamModel(nn.Module):
    """A SwinV2 encoder and a task head; ``forward`` returns logits."""

    def __init__(self, backbone: nn.Module, task: str, image_size: int, outputs: int = 1) -> None:
        super().__init__()
        self.backbone, self.task = backbone, task
        with torch.no_grad():
            features = encode(backbone, torch.zeros(1, backbone.in_chans, image_size, image_size))
        if task == "multilabel":
            self.head: nn.Module = nn.Linear(backbone.embed_dim, outputs)
        elif task == "curtain":
            self.head = CurtainHead(features.shape[1], image_size // features.shape[-1])
        else:
            self.head = UpsamplingDecoder(features.shape[1], image_size // features.shape[-1], outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Task logits: ``[B, 91, 40]`` curtain, ``[B, 1, H, W]`` mask, or ``[B, labels]``."""
        if self.task == "multilabel":
            return self.head(self.backbone(images))
        return self.head(encode(self.backbone, images))


def build_task_model(meta: dict[str, Any]) -> DownstreamModel:
    """A randomly initialised downstream model of the shape ``meta`` (a checkpoint's metadata) describes."""
    from domainfm.shared.peft.methods import apply_peft

    args = dict(meta["encoder"])
    encoder = apply_peft(create_backbone(args.pop("name"), **args), meta["peft"], **meta["peft_options"])
    return DownstreamModel(encoder, meta["task"], meta["image_size"], meta["outputs"])


def save_task_model(model: DownstreamModel, meta: dict[str, Any], path: Path) -> Path:
    """Weights, rebuild metadata and the input transform record in one safetensors file, written atomically."""
    from domainfm.domains.remote_sensing.deploy import input_transform
    from domainfm.shared.tasks.checkpoint import save_model_checkpoint

    return save_model_checkpoint(model, path, TASK_KEY, {**meta, "transform": input_transform(meta).to_dict()})


def load_task_model(path: Path) -> tuple[DownstreamModel, dict[str, Any]]:
    """A downstream model saved by :func:`train_task` (eval mode) and its metadata."""
    from domainfm.shared.tasks.checkpoint import load_model_checkpoint

    return load_model_checkpoint(path, TASK_KEY, "domainfm remote-sensing train --out DIR", build_task_model)


def _scores(task: str, logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    if task == "multilabel":
        from domainfm.shared.tasks.metrics import multilabel_macro_auroc

        return {"macro_auroc": multilabel_macro_auroc(logits, target)}
    predicted, truth = logits > 0, target.bool()
    tp, fp, fn = (predicted & truth).sum(), (predicted & ~truth).sum(), (~predicted & truth).sum()
    tn = (~predicted & ~truth).sum()
    cloud_iou = float(tp / (tp + fp + fn).clamp_min(1))
    clear_iou = float(tn / (tn + fp + fn).clamp_min(1))
    return {
        "cloud_iou": cloud_iou,
        "miou": (cloud_iou + clear_iou) / 2,
        "false_negative_rate": float(fn / (fn + tp).clamp_min(1)),
    }


def _positive_weight(store: TileStore, target: str, ids: np.ndarray, task: str) -> torch.Tensor:
    """Negatives per positive among the labelled targets (at most 20): rare clouds still weigh in the loss."""
    values = np.asarray(store.companion(target)[:])[ids].astype(np.float64)
    axes = 0 if task == "multilabel" else None
    positive = values.sum(axis=axes)
    weight = (values.size / (values.shape[1] if task == "multilabel" else 1) - positive) / np.maximum(positive, 1)
    return torch.as_tensor(np.clip(weight, 1.0, 20.0), dtype=torch.float32)


def _pretrained_record(
    meta: dict[str, Any], channels: list[dict[str, Any]], task: str, size: int
) -> dict[str, Any] | None:
    """The input transform a SimMIM checkpoint carries (continued from a release), on this task's grid.

    ``None`` when the checkpoint carries none or the store's bands differ from its bands (the encoder is then
    remapped to them and the store's own scaling applies, as for any checkpoint).
    """
    record = meta.get("transform")
    if not record or [c["name"] for c in channels] != list(record["channels"]):
        return None
    return {**record, "size": [size, size], "geometry": "window" if task == "segment" else "exact"}


def train_task(
    store_path: Any,
    task: str = "curtain",
    checkpoint: Any = None,
    backbone: str = "test_swinv2",
    peft: str = "full",
    peft_options: dict[str, Any] | None = None,
    labelled: int | None = None,
    epochs: int = 20,
    batch_size: int = 16,
    lr: float = 3e-4,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    out: Any = None,
) -> dict[str, Any]:
    """Trains ``task`` from a SimMIM checkpoint (or from scratch) on ``labelled`` train chips; test scores.

    With ``out``, the trained model is saved as ``out/<task>.safetensors`` (:func:`save_task_model`).
    """
    from domainfm.shared.peft.methods import apply_peft, count_parameters

    if task not in TARGETS:
        raise DomainfmError(f"unknown task {task!r}; choose from {list(TARGETS)}")
    store = TileStore(store_path)
    require_splits(store, ("train", "test"), f"training the {task} task (fits on train, scores on test)")
    target_name = TARGETS[task]
    if target_name not in store.spec.companions:
        raise DomainfmError(f"{store.path} has no {target_name} companion for the {task} task")
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    size = store.spec.tile_shape[-1]
    record = None
    if checkpoint is not None:
        encoder, meta = load_encoder(checkpoint, store.spec.channels)
        transform = meta["input_transform"]
        record = _pretrained_record(meta, store.spec.channels, task, size)
    else:
        encoder = create_backbone(backbone, in_chans=store.spec.tile_shape[0], img_size=size)
        transform = input_transform(store)
    outputs = store.spec.companions[target_name].shape[0] if task == "multilabel" else 1
    build_args = encoder.build_args
    encoder = apply_peft(encoder, peft, **(peft_options or {}))
    model = DownstreamModel(encoder, task, size, outputs).to(torch_device)
    train = np.flatnonzero(store.index["split"] == SPLITS["train"])
    if labelled is not None:
        train = label_fraction(train, count=labelled, seed=seed)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=_positive_weight(store, target_name, train, task).to(torch_device))

    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return loss_fn(logits, batch[target_name].float())

    def inputs(tiles: torch.Tensor) -> torch.Tensor:
        return prepare(tiles, transform)

    finetune(model, store, train, loss, inputs, epochs, batch_size, lr, seed, torch_device, progress, (target_name,))
    test = np.flatnonzero(store.index["split"] == SPLITS["test"])
    logits = predict(model, store, test, inputs, torch_device, batch_size=32)
    targets = torch.from_numpy(np.asarray(store.companion(target_name)[:])[test])
    counts = count_parameters(encoder)
    saved = {}
    if out is not None:
        meta = {
            "task": task,
            "encoder": build_args,
            "peft": peft,
            "peft_options": peft_options or {},
            "image_size": size,
            "outputs": outputs,
            "input_transform": transform,
            "bands": store.spec.channels,
            "target": target_name,
            "label_names": list(store.spec.label_names) if task == "multilabel" else [target_name],
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
        }
        if record is not None:
            meta["transform"] = record
        saved = {"model": str(save_task_model(model.cpu(), meta, Path(out) / f"{task}.safetensors"))}
    return {
        **saved,
        "task": task,
        "init": "simmim" if checkpoint is not None else "scratch",
        "peft": peft,
        "labelled_chips": len(train),
        "test_chips": len(test),
        "trainable_encoder_parameters": counts["trainable"],
        **_scores(task, logits, targets),
    }
