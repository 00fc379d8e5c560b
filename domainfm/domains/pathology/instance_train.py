"""Training, evaluating and applying the nuclei/gland instance head (``domainfm pathology instances-*``, ``predict``).

* :func:`train_instances`: the encoder (random, a ``pathology pretrain`` PLUTO encoder or a converted
  foundation checkpoint) adapted by any ``apply_peft`` method (``linear`` keeps it frozen), and the
  HoVer-Net-style head (:mod:`.instances`) trained on the train tiles of an instance store
  (:mod:`.instance_data`) through the shared fine-tuning loop; saved as ``instances.safetensors`` (one
  safetensors file, atomically, with the metadata that rebuilds it and its input transform record).
  Resumable: ``OUT/resume/last.ckpt`` (Lightning: weights, optimiser,
  epoch, the per-epoch losses) is written after every epoch and a rerun of the same command continues from
  it (epoch ``k`` reads the stream's order ``k`` either way, so the resumed run ends with the weights an
  uninterrupted one has); ``OUT/resume/settings.json`` records the options, and a rerun with other options
  is refused by name rather than mixing two runs. The folder is removed once the segmenter is saved.
* :func:`evaluate_instances`: PQ, AJI, object Dice and count error (:mod:`domainfm.shared.tasks.instance_metrics`)
  of the predicted instances of a split's tiles against their ``instances`` companion, overall and per class.
* :func:`segment_picture`: a picture of any size through the deployed network (:func:`contract_model`:
  overlapping windows whose maps are blended, then one watershed over the whole picture, HoVer-Net's
  tile-then-stitch inference), which ``domainfm pathology predict`` runs per picture (an instance map TIFF, a
  GeoJSON FeatureCollection in level-0 coordinates with class and score that QuPath imports, and a QC
  picture with the contours, :func:`write_instance_qc`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.domains.pathology.instances import (
    INSTANCES_KEY,
    InstanceSegmenter,
    hover_loss,
    instances_from_maps,
    probabilities_of,
)
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.schema import SPLITS

INSTANCE_COMPANIONS = ("instances", "instance_class")
RESUME = "resume"


def _epoch_losses(losses: list[float]) -> Any:
    """A Lightning callback keeping each epoch's mean step loss; its state is saved in ``last.ckpt``."""
    import lightning

    class EpochLosses(lightning.Callback):
        def __init__(self) -> None:
            self.epochs: list[float] = []
            self.start = 0

        def on_train_epoch_start(self, trainer: Any, _: Any) -> None:
            self.start = len(losses)

        def on_train_epoch_end(self, trainer: Any, _: Any) -> None:
            self.epochs.append(float(np.mean(losses[self.start :])) if len(losses) > self.start else float("nan"))

        def state_dict(self) -> dict[str, Any]:
            return {"epochs": list(self.epochs)}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.epochs = [float(v) for v in state["epochs"]]

    return EpochLosses()


def _claim_resume(folder: Path, settings: dict[str, Any]) -> bool:
    """Records ``settings`` for a new run; for a run to resume, refuses other settings. Returns whether resuming."""
    record = folder / "settings.json"
    if (folder / "last.ckpt").exists():
        saved = json.loads(record.read_text()) if record.is_file() else None
        if saved != settings:
            changed = sorted(k for k in settings if (saved or {}).get(k) != settings[k]) if saved else ["unknown"]
            raise DomainfmError(
                f"{folder}: a stopped instances-train run with other options ({', '.join(changed)}) would be "
                "resumed here; rerun it with the same options, or delete that folder (or choose another --out) "
                "to start again"
            )
        return True
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2))
    return False


def _instance_classes(store: Any) -> list[str]:
    names = store.spec.value_scaling.get("instance_classes")
    if not names or "instances" not in store.spec.companions:
        raise DomainfmError(
            f"{store.path} holds no instance companions; make it with `domainfm pathology instances-tile`"
        )
    return list(names)


def _encoder(checkpoint: Path | None, backbone: str, store: Any) -> tuple[Any, dict[str, Any]]:
    from domainfm.domains.pathology.pretrain import load_encoder, store_normalization, tile_transform
    from domainfm.shared.backbones import create_backbone

    if checkpoint is not None:
        return load_encoder(Path(checkpoint))
    tile_px = store.spec.tile_shape[-1]
    normalization = store_normalization(store)
    mpps = store.spec.value_scaling.get("mpps")
    meta = {"normalization": normalization, "transform": tile_transform(normalization, tile_px, mpps).to_dict()}
    return create_backbone(backbone, in_chans=3, img_size=tile_px), meta


def train_instances(
    store_path: Path,
    out: Path,
    checkpoint: Path | None = None,
    backbone: str = "test_vit",
    peft: str = "linear",
    peft_options: dict[str, Any] | None = None,
    labelled: float = 1.0,
    epochs: int = 20,
    batch_size: int = 8,
    lr: float = 1e-3,
    width: int = 64,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Trains the instance head (and whatever ``peft`` leaves trainable) on the store's train tiles; saves it.

    ``labelled`` is the seeded fraction of train tiles used (at least two).
    """
    from domainfm.domains.pathology.heads import _init_name
    from domainfm.domains.pathology.pretrain import store_transform
    from domainfm.shared.engine import resolve_device
    from domainfm.shared.model.encoders import downstream_transform, tile_input
    from domainfm.shared.peft.methods import apply_peft, count_parameters
    from domainfm.shared.tasks.checkpoint import save_model_checkpoint
    from domainfm.shared.tasks.finetune import finetune
    from domainfm.shared.tasks.subsets import label_fraction
    from domainfm.shared.tiles.store import TileStore

    store = TileStore(store_path)
    names = _instance_classes(store)
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    encoder, encoder_meta = _encoder(checkpoint, backbone, store)
    record = store_transform(encoder_meta, store, checkpoint or store.path)
    build_args = encoder.build_args
    encoder = apply_peft(encoder, peft, **(peft_options or {}))
    model = InstanceSegmenter(encoder, len(names), width=width).to(torch_device)
    train = np.flatnonzero(store.index["split"] == SPLITS["train"])
    if labelled < 1.0:
        train = label_fraction(train, labelled, seed)
    losses: list[float] = []
    resume = Path(out) / RESUME
    settings = {"store": str(Path(store_path).resolve()), "checkpoint": str(checkpoint) if checkpoint else None,
                "backbone": backbone, "peft": peft, "peft_options": peft_options or {}, "labelled": labelled,
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "width": width, "seed": seed,
                "train_tiles": len(train)}  # fmt: skip
    resumed = _claim_resume(resume, json.loads(json.dumps(settings, default=str)))
    history = _epoch_losses(losses)

    def loss(output: torch.Tensor, batch: dict) -> torch.Tensor:
        value = hover_loss(output, batch["instances"].long(), batch["instance_class"].long())
        losses.append(float(value.detach()))
        return value

    finetune(
        model, store, train, loss, tile_input(record), epochs, batch_size, lr, seed, torch_device, progress,
        companions=INSTANCE_COMPANIONS, resume_dir=resume, callbacks=[history],
    )  # fmt: skip
    mpps = store.spec.value_scaling.get("mpps")
    meta = {
        "encoder": build_args,
        "peft": peft,
        "peft_options": peft_options or {},
        "class_names": names,
        "indices": model.indices,
        "width": width,
        "tile_px": store.spec.tile_shape[-1],
        "mpps": mpps,
        "checkpoint": str(checkpoint) if checkpoint else None,
        # window: the dense head slides over pictures larger than a tile (maps on the input's grid)
        "transform": downstream_transform(record, geometry="window", details={"mpps": mpps}).to_dict(),
    }
    saved = save_model_checkpoint(model.cpu(), Path(out) / "instances.safetensors", INSTANCES_KEY, meta)
    shutil.rmtree(resume, ignore_errors=True)
    epoch_losses = history.epochs
    return {
        "segmenter": str(saved),
        "init": _init_name(encoder_meta) if checkpoint else "random",
        "peft": peft,
        "train_tiles": len(train),
        "epochs": epochs,
        "resumed": resumed,
        "epoch_losses": epoch_losses,
        "first_epoch_loss": epoch_losses[0] if epoch_losses else float("nan"),
        "last_epoch_loss": epoch_losses[-1] if epoch_losses else float("nan"),
        "trainable_parameters": count_parameters(encoder)["trainable"]
        + sum(p.numel() for p in model.head.parameters()),
    }


def _prepare_for(meta: dict[str, Any]) -> Any:
    from domainfm.shared.model import InputTransform
    from domainfm.shared.model.encoders import tile_input

    return tile_input(InputTransform.from_dict(meta["transform"]))


@torch.no_grad()
def evaluate_instances(
    checkpoint: Path,
    store_path: Path,
    split: str = "test",
    min_size: int = 6,
    device: str = "auto",
    batch_size: int = 16,
) -> dict[str, Any]:
    """PQ, AJI, object Dice and count error of the segmenter on a split's tiles (overall and per class)."""
    from domainfm.domains.pathology.instances import load_segmenter
    from domainfm.shared.engine import resolve_device
    from domainfm.shared.tasks.instance_metrics import InstanceScores
    from domainfm.shared.tiles.store import TileStore
    from domainfm.shared.tiles.stream import TileStream

    model, meta = load_segmenter(Path(checkpoint))
    store = TileStore(store_path)
    names = _instance_classes(store)
    if names != meta["class_names"]:
        raise DomainfmError(
            f"{store.path}: its instance classes {names} differ from the segmenter's {meta['class_names']} "
            f"({checkpoint})"
        )
    if split not in SPLITS:
        raise DomainfmError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    ids = np.flatnonzero(store.index["split"] == SPLITS[split])
    if not len(ids):
        raise DomainfmError(f"{store.path}: no tiles in the {split} split")
    torch_device = resolve_device(device)
    model.to(torch_device)
    prepare = _prepare_for(meta)
    scores = InstanceScores(names)
    stream = TileStream(
        store, batch_size, indices=ids, shuffle=False, device=torch_device, normalize=False,
        companions=INSTANCE_COMPANIONS,
    )  # fmt: skip
    for batch in stream:
        maps = probabilities_of(model(prepare(batch["tiles"]))).cpu().numpy()
        truth, truth_class = batch["instances"].cpu().numpy(), batch["instance_class"].cpu().numpy()
        for k in range(len(maps)):
            pred, pred_class, _ = instances_from_maps(maps[k], min_size)
            scores.update(truth[k], pred, truth_class[k], pred_class)
    return {"split": split, "tiles": len(ids), **scores.compute()}


def contract_model(model: InstanceSegmenter, meta: dict[str, Any]) -> Any:
    """The segmenter as its deployed network: raw RGB 0..255 pictures of any size -> maps on their grid.

    The record's ``window`` geometry slides the training tile over larger pictures (MONAI's sliding
    window, Gaussian-blended, a quarter window of overlap) and averages the maps, as HoVer-Net infers.
    """
    from domainfm.domains.pathology.instances import InstanceMaps
    from domainfm.shared.model import ContractModel, InputTransform

    return ContractModel(InputTransform.from_dict(meta["transform"]), InstanceMaps(model), output_grid="input")


def segment_picture(
    network: Any, meta: dict[str, Any], picture: Path, mpp: float | None, min_size: int, device: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The instances of one picture through the deployed network (:func:`contract_model` or the deployable's).

    ``mpp`` is the picture's resolution; when it differs from the segmenter's, the picture is resampled to
    the segmenter's mpp (the instance map is at that mpp) and ``downsample`` (returned) maps it back to the
    picture's own pixels (level 0). Returns ``(image, ids, classes, scores, downsample)``.
    """
    from PIL import Image

    model_mpp = (meta.get("mpps") or [None])[0]
    downsample = float(model_mpp) / float(mpp) if (mpp and model_mpp) else 1.0
    try:
        with Image.open(picture) as opened:
            rgb = opened.convert("RGB")
            if downsample != 1.0:
                size = (max(1, round(rgb.width / downsample)), max(1, round(rgb.height / downsample)))
                rgb = rgb.resize(size, Image.Resampling.BILINEAR)
            image = np.asarray(rgb)
    except OSError as error:
        raise DomainfmError(f"{picture}: not a readable picture ({error})") from error
    raw = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None].to(device)
    with torch.no_grad():
        maps = network(raw)[0].cpu().numpy()
    ids, classes, scores = instances_from_maps(maps, min_size)
    return image, ids, classes, scores, downsample


def draw_contours(image: np.ndarray, ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """A copy of ``image`` ``[H, W, 3]`` with every object's contour in its class colour (a 1-px inner boundary)."""
    from skimage.segmentation import find_boundaries

    from domainfm.domains.pathology.instance_geojson import PALETTE

    picture = image.copy()
    edges = find_boundaries(ids, mode="inner")
    palette = np.array(PALETTE, np.uint8)
    klass = np.asarray(classes)[ids]
    picture[edges] = palette[np.clip(klass[edges], 0, None) % len(palette)]
    return picture


def write_instance_qc(path: Path, image: np.ndarray, ids: np.ndarray, classes: np.ndarray) -> Path:
    """The picture with every object's contour drawn in its class colour (a 1-px boundary), as PNG."""
    from PIL import Image

    Image.fromarray(draw_contours(image, ids, classes)).save(path)
    return path
