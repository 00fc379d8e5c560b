"""ConVIRT pretraining on a radiology tile store, and its checkpoints.

Recipe (Zhang et al., MLHC 2022, arXiv 2010.00747; ``shared/methods/convirt.md``): Adam, lr 1e-4, weight
decay 1e-6, batch 32, tau 0.1, lambda 0.75, one sentence sampled uniformly per report per step (a study
whose report has no sentence is left out of the step), the paper's augmentations on the device. The
paper's plateau schedule and early stopping on a val loss are not used: training runs the given epochs.

A checkpoint is one safetensors file whose metadata rebuilds the model: image backbone name and size,
text-tower options, the trained tokenizer's JSON (or the local Hugging Face folder's path), projection
size and the normalisation the images were trained with: ``transform``, the image tower's
:class:`~domainfm.shared.model.InputTransform` record (:func:`.images.display_transform` of the store's
statistics: letterbox, uint8, scale 1/255, ``(x - mean) / std``), which downstream verbs apply, and
``normalization`` (the same mean/std in [0, 1] units, for older readers).

The image tower may start from a converted foundation checkpoint (``--image_checkpoint FILE`` of
``domainfm models convert``): the tower is then the file's backbone (its architecture, pooling and
channels; ``image_tower`` in the metadata rebuilds it) and the record is the file's own, fitted to the
one-channel store (:func:`~domainfm.shared.model.encoders.fit_store`: a grey radiograph is replicated to
every channel of an RGB encoder and standardised with the encoder's per-channel mean/std), letterboxed to
the encoder's input size as radiographs are.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.domains.radiology.convirt import ConVIRT, augment_images, convirt_loss
from domainfm.domains.radiology.images import display_transform
from domainfm.domains.radiology.text import SentenceTokenizer, create_text_tower, text_options, train_tokenizer
from domainfm.shared.backbones import create_backbone
from domainfm.shared.engine import resolve_device
from domainfm.shared.engine.distributed import tile_generators
from domainfm.shared.engine.training import data_parallel_only, fit, resumable_trainer, step_task, trainer_device
from domainfm.shared.errors import DomainfmError
from domainfm.shared.model import InputTransform, TransformModule, standardise
from domainfm.shared.model.encoders import (
    downstream_transform,
    fit_store,
    foundation_encoder,
    is_foundation_checkpoint,
    record_or,
)
from domainfm.shared.tasks.checkpoint import load_weights, read_checkpoint_metadata, save_checkpoint
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.split_counts import pretraining_tiles
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream

METADATA_KEY = "domainfm_convirt"


class ConVIRTCheckpointError(DomainfmError, ValueError):
    """A file that is not a domainfm ConVIRT checkpoint."""


def store_sentences(store: TileStore, ids: np.ndarray | None = None) -> list[str]:
    """Every report sentence of the studies ``ids`` (default: every study outside the test split)."""
    if ids is None:
        ids = np.flatnonzero(store.index["split"] != SPLITS["test"])
    texts = store.companion("sentences")[:]
    return [s for i in ids for s in str(texts[i]).split("\n") if s]


def build_model(meta: dict[str, Any], tokenizer: SentenceTokenizer, image_checkpoint: Path | None = None) -> ConVIRT:
    """A ConVIRT model of the shape ``meta`` describes (random towers unless weights are given)."""
    text = {k: v for k, v in meta["text"].items() if k != "vocab_size"}
    if meta.get("image_tower"):  # started from a converted foundation checkpoint: its own architecture
        args = dict(meta["image_tower"])
        image = create_backbone(args.pop("name"), checkpoint=image_checkpoint, **args)
    else:
        image = create_backbone(meta["backbone"], in_chans=1, img_size=meta["image_size"], checkpoint=image_checkpoint)
    return ConVIRT(image, create_text_tower(tokenizer.vocab_size, **text), meta["projection_dim"])


def store_normalization(store: TileStore) -> dict[str, float]:
    """Mean and std of the store's grey values in [0, 1] units (from the statistics computed at ingest)."""
    stats = store.stats
    return {"mean": float(stats["mean"][0]) / 255, "std": max(float(stats["std"][0]) / 255, 1e-6)}


def normalise(tiles: torch.Tensor, normalization: dict[str, float]) -> torch.Tensor:
    """uint8 tiles -> [0, 1] -> ``(x - mean) / std`` (the contract's standardisation, as ``display_transform``)."""
    return standardise(tiles, [normalization["mean"]], [normalization["std"]], scale=1 / 255)


def radiograph_transform(meta: dict[str, Any]) -> InputTransform:
    """The image tower's record of a ConVIRT checkpoint's ``meta`` (older ones: from their normalisation)."""

    def derive() -> InputTransform:
        norm = meta["normalization"]
        return display_transform(int(meta["image_size"]), mean=float(norm["mean"]), std=float(norm["std"]))

    return record_or(meta, derive)


def foundation_image_encoder(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A converted foundation checkpoint as a radiograph image tower, and metadata like a ConVIRT checkpoint's.

    The metadata holds ``transform`` (the file's record, not yet fitted to a store), ``image_tower`` (its
    ``create_backbone`` arguments), ``backbone``, ``image_size`` (the encoder's input size), ``init`` (the
    catalogue name) and ``checkpoint``.
    """
    backbone, record, foundation = foundation_encoder(path)
    meta = {
        "transform": record.to_dict(),
        "image_tower": backbone.build_args,
        "backbone": backbone.name,
        "image_size": record.size[0],
        "init": str(foundation.get("model") or "foundation"),
        "checkpoint": str(path),
    }
    return backbone, meta


def save_convirt(model: ConVIRT, meta: dict[str, Any], path: Path) -> Path:
    """Weights and rebuild metadata in one safetensors file, written atomically."""
    return save_checkpoint(path, model.state_dict(), {METADATA_KEY: meta})


def confined_text_model(path: Path, local: str | Path, text_model: Path | None) -> Path:
    """The text-tower folder a checkpoint's metadata names, if the user allowed it; else an error.

    A checkpoint is data, so the folder it points at is read only when it is the folder the user passed
    (``--text_model``) or lies beside the checkpoint (in its folder or below). Anything else would let a
    downloaded checkpoint make domainfm load a model from anywhere on the machine.
    """
    folder = Path(local).expanduser().resolve()
    if text_model is not None and Path(text_model).expanduser().resolve() == folder:
        return folder
    if folder.is_relative_to(Path(path).resolve().parent):
        return folder
    raise ConVIRTCheckpointError(
        f"{path}: its text tower is the Hugging Face folder {local}, outside the checkpoint's folder; "
        f"pass --text_model {local} to allow reading it (or copy the folder beside the checkpoint)"
    )


def load_convirt(path: Path, text_model: Path | None = None) -> tuple[ConVIRT, SentenceTokenizer, dict[str, Any]]:
    """Model (eval mode), tokenizer and metadata of a ConVIRT checkpoint.

    ``text_model`` is the local Hugging Face folder of the text tower, when the checkpoint was trained from
    one kept outside the checkpoint's folder (see :func:`confined_text_model`).
    """
    producer = "domainfm radiology pretrain"
    meta = read_checkpoint_metadata(path, METADATA_KEY, producer, ConVIRTCheckpointError)
    try:
        text = meta["text"]
        local = text.get("local_model")
        max_length = int(text["max_length"])
        source = confined_text_model(path, local, text_model) if local else str(meta["tokenizer"])
    except (KeyError, TypeError, AttributeError, ValueError) as cause:
        raise ConVIRTCheckpointError(
            f"{path}: its {METADATA_KEY} metadata lacks or mistypes a field ({type(cause).__name__}: {cause}); "
            f"recreate it with `{producer}`"
        ) from cause
    tokenizer = SentenceTokenizer(source, max_length)
    if local:  # build from the folder allowed above, never from the metadata's own string
        meta = {**meta, "text": {**text, "local_model": str(source)}}
    try:
        built = build_model(meta, tokenizer)
    except (KeyError, TypeError, AttributeError) as cause:
        raise ConVIRTCheckpointError(
            f"{path}: its {METADATA_KEY} metadata lacks or mistypes a field ({type(cause).__name__}: {cause}); "
            f"recreate it with `{producer}`"
        ) from cause
    model = load_weights(built, path, producer, ConVIRTCheckpointError)
    return model.eval(), tokenizer, meta


def _tokenizer(
    store: TileStore, out: Path, options: dict[str, Any], given: Path | None, resumed: bool, write: bool
) -> SentenceTokenizer:
    """The run's tokenizer: the local model's; ``given``; the saved one when resuming; else trained on the store.

    Only the writing process (global rank zero) writes ``OUT/tokenizer.json``; the others train theirs in a
    temporary folder and take rank zero's when training starts (WordPiece training is not reproducible
    from one process to the next).
    """
    if options["local_model"]:
        return SentenceTokenizer(Path(options["local_model"]), options["max_length"])
    saved = out / "tokenizer.json"
    if given is not None:
        tokenizer = SentenceTokenizer(Path(given), options["max_length"])
        if write:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(tokenizer.to_json() or "")
        return tokenizer
    if resumed and saved.is_file():  # the resumed weights index this vocabulary
        return SentenceTokenizer(saved, options["max_length"])
    if write:
        return SentenceTokenizer(
            train_tokenizer(store_sentences(store), saved, options["vocab_size"]), options["max_length"]
        )
    with tempfile.TemporaryDirectory() as folder:
        path = train_tokenizer(store_sentences(store), Path(folder) / "tokenizer.json", options["vocab_size"])
        return SentenceTokenizer(path.read_text(), options["max_length"])


def _share_tokenizer(shared: dict[str, Any], model: ConVIRT, meta: dict[str, Any], max_length: int) -> Any:
    """A callback that gives every process global rank zero's tokenizer before the model is wrapped.

    Runs in Lightning's ``setup``, after the processes have connected and before DDP copies rank zero's
    weights to the others; a process whose vocabulary size differed resizes its (frozen) word embeddings.
    """
    import lightning

    class ShareTokenizer(lightning.Callback):
        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            own = shared["tokenizer"].to_json()
            if own is None:  # a local Hugging Face tokenizer: the same files everywhere
                return
            text = trainer.strategy.broadcast(own, src=0)
            if text != own:
                tokenizer = SentenceTokenizer(text, max_length)
                encoder = model.text_tower.encoder
                if tokenizer.vocab_size != encoder.get_input_embeddings().num_embeddings:
                    encoder.resize_token_embeddings(tokenizer.vocab_size)
                    encoder.embeddings.requires_grad_(False)
                shared["tokenizer"] = tokenizer
            meta["tokenizer"] = text

    return ShareTokenizer()


def pretrain(
    store_path: Path,
    out: Path,
    backbone: str = "test_resnet",
    image_checkpoint: Path | None = None,
    text: dict[str, Any] | None = None,
    projection_dim: int = 512,
    tau: float = 0.1,
    lam: float = 0.75,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 1e-6,
    hflip: float = 0.5,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    augment_strength: float = 1.0,
    *,
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    tokenizer: Path | None = None,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Trains ConVIRT on every study outside the test split; writes ``convirt.safetensors`` and ``history.json``.

    With several processes (``devices``, ``num_nodes``), ``batch_size`` is per process and the loss is that
    of the global batch (:func:`.convirt.convirt_loss`); global rank zero writes the outputs. A tile's
    sentence choice and augmentation are drawn from its own generator (seed, epoch, tile id), so they do
    not depend on the number of processes. ``tokenizer`` is a ``tokenizer.json`` to use instead of
    training one on the store (e.g. a previous run's); ``callbacks`` are added to the Lightning trainer.
    """
    store, out = TileStore(store_path), Path(out)
    if "sentences" not in store.spec.companions:
        raise DomainfmError(
            f"{store.path} holds no reports (ingested with labels only): ConVIRT pretraining needs radiographs "
            "with reports; ingest again with --reports FILE, or use this store for `radiology train` and "
            "`radiology eval probe|knn|finetune`"
        )
    ids, used = pretraining_tiles(store.path, store.index["split"], group="patient")  # every study outside test
    data_parallel_only(strategy, "radiology pretrain")
    trainer, resume = resumable_trainer(
        out, epochs, resolve_device(device), progress, callbacks, devices=devices, strategy=strategy,
        num_nodes=num_nodes,
    )  # fmt: skip
    torch_device = trainer_device(trainer)
    torch.manual_seed(seed)
    options = text_options(text)
    resumed = (resume / "last.ckpt").exists()
    text_tokenizer = _tokenizer(store, out, options, tokenizer, resumed, trainer.is_global_zero)
    size = store.spec.tile_shape[-1]
    image: dict[str, Any] = {"backbone": backbone, "normalization": store_normalization(store)}
    record = display_transform(size, image["normalization"]["mean"], image["normalization"]["std"])
    if is_foundation_checkpoint(image_checkpoint):
        tower, tower_meta = foundation_image_encoder(Path(image_checkpoint))  # type: ignore[arg-type]
        fitted = fit_store(radiograph_transform(tower_meta), store.spec.tile_shape[0], size, image_checkpoint)
        record = downstream_transform(fitted, geometry="letterbox", details=record.details)
        image = {"backbone": tower.name, "image_tower": tower_meta["image_tower"], "normalization": None}
        image["foundation"] = tower_meta["init"]
    meta = {
        "kind": "convirt",
        **image,
        "image_size": size,
        "transform": record.to_dict(),
        "text": options,
        "tokenizer": text_tokenizer.to_json(),
        "projection_dim": projection_dim,
        "tau": tau,
        "lam": lam,
    }
    model = build_model(meta, text_tokenizer, image_checkpoint).to(torch_device)
    transform = TransformModule(record).to(torch_device)
    shared = {"tokenizer": text_tokenizer}

    def step(batch: dict) -> torch.Tensor:
        sentences = [[s for s in str(report).split("\n") if s] for report in batch["sentences"]]
        keep = [i for i, parts in enumerate(sentences) if parts]
        generators = tile_generators(batch["tile_id"][keep], seed, trainer.current_epoch)
        chosen = [
            sentences[i][int(torch.randint(len(sentences[i]), (), generator=g))]
            for i, g in zip(keep, generators, strict=True)
        ]
        tiles = transform.geometry(batch["tiles"][keep])  # raw values on the tower's grid (a no-op at store size)
        images = augment_images(tiles / 255, hflip, generators, augment_strength)  # augmented in [0, 1]
        # the record's channel mapping and (x * scale - mean) / std, of x = images * 255 (raw units)
        images = standardise(transform.channels(images), transform.mean, transform.std, record.scale * 255)
        tokens = {k: v.to(torch_device) for k, v in shared["tokenizer"](chosen).items()}
        v, u = model(images, **tokens)
        return convirt_loss(v, u, tau, lam)

    def optimizers(parameters: list) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)

    task = step_task(step, model, optimizers)
    trainer.callbacks.append(_share_tokenizer(shared, model, meta, options["max_length"]))
    stream = TileStream(
        store, batch_size, indices=ids, seed=seed, device=torch_device, normalize=False,
        companions=("sentences",), drop_last=True,
    )  # fmt: skip
    if len(stream.tile_ids) < batch_size * trainer.world_size:
        raise DomainfmError(
            f"{store.path}: {len(ids)} images outside the test split (in {', '.join(used)}), fewer than one batch "
            f"of {batch_size} in each of {trainer.world_size} processes; lower --batch_size or ingest more studies"
        )
    start = time.perf_counter()
    fit(trainer, task, stream, resume / "last.ckpt")
    history = {"losses": task.losses, "seconds": time.perf_counter() - start, "epochs": epochs, "splits": used}
    checkpoint = out / "convirt.safetensors"
    if trainer.is_global_zero:
        save_convirt(model.cpu(), {**meta, "epochs": epochs, "trained_on": str(store.path)}, checkpoint)
        (out / "history.json").write_text(json.dumps(history, indent=2))
        shutil.rmtree(resume, ignore_errors=True)
    return {"checkpoint": checkpoint, **history}
