"""ConVIRT pretraining on a radiology tile store, and its checkpoints.

Recipe (Zhang et al., MLHC 2022, arXiv 2010.00747; ``shared/methods/convirt.md``): Adam, lr 1e-4, weight
decay 1e-6, batch 32, tau 0.1, lambda 0.75, one sentence sampled uniformly per report per step (a study
whose report has no sentence is left out of the step), the paper's augmentations on the device. The
paper's plateau schedule and early stopping on a val loss are not used: training runs the given epochs.

A checkpoint is one safetensors file whose metadata rebuilds the model: image backbone name and size,
text-tower options, the trained tokenizer's JSON (or the local Hugging Face folder's path), projection
size and the normalisation the images were trained with.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.domains.radiology.convirt import ConVIRT, augment_images, convirt_loss
from domainfm.domains.radiology.text import SentenceTokenizer, create_text_tower, text_options, train_tokenizer
from domainfm.shared.backbones import create_backbone
from domainfm.shared.engine import resolve_device
from domainfm.shared.engine.training import fit, make_trainer, step_task
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream

METADATA_KEY = "domainfm_convirt"


class ConVIRTCheckpointError(DomainfmError, ValueError):
    """A file that is not a domainfm ConVIRT checkpoint."""


def store_sentences(store: TileStore, split: str = "train") -> list[str]:
    """Every report sentence of ``split``."""
    ids = np.flatnonzero(store.index["split"] == SPLITS[split])
    texts = store.companion("sentences")[:]
    return [s for i in ids for s in str(texts[i]).split("\n") if s]


def build_model(meta: dict[str, Any], tokenizer: SentenceTokenizer, image_checkpoint: Path | None = None) -> ConVIRT:
    """A ConVIRT model of the shape ``meta`` describes (random towers unless weights are given)."""
    text = {k: v for k, v in meta["text"].items() if k != "vocab_size"}
    image = create_backbone(meta["backbone"], in_chans=1, img_size=meta["image_size"], checkpoint=image_checkpoint)
    return ConVIRT(image, create_text_tower(tokenizer.vocab_size, **text), meta["projection_dim"])


def normalise(tiles: torch.Tensor, normalization: dict[str, float]) -> torch.Tensor:
    """uint8 tiles -> [0, 1] -> ``(x - mean) / std`` with the training normalisation."""
    return (tiles.float() / 255 - normalization["mean"]) / normalization["std"]


def save_convirt(model: ConVIRT, meta: dict[str, Any], path: Path) -> Path:
    """Weights and rebuild metadata in one safetensors file, written atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, partial, {METADATA_KEY: json.dumps(meta)})
    partial.replace(path)
    return path


def load_convirt(path: Path) -> tuple[ConVIRT, SentenceTokenizer, dict[str, Any]]:
    """Model (eval mode), tokenizer and metadata of a ConVIRT checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as error:  # not a file, not safetensors
        raise ConVIRTCheckpointError(f"{path} is not a safetensors checkpoint: {error}") from error
    if raw is None:
        raise ConVIRTCheckpointError(f"{path} has no {METADATA_KEY} metadata: not written by `radiology pretrain`")
    meta = json.loads(raw)
    local = meta["text"].get("local_model")
    tokenizer = SentenceTokenizer(Path(local) if local else meta["tokenizer"], meta["text"]["max_length"])
    model = build_model(meta, tokenizer)
    result = model.load_state_dict(load_file(str(path)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConVIRTCheckpointError(
            f"{path} does not fit its own metadata: missing {result.missing_keys[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}"
        )
    return model.eval(), tokenizer, meta


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
) -> dict[str, Any]:
    """Trains ConVIRT on the store's train split; writes ``convirt.safetensors`` and ``history.json``."""
    store, out = TileStore(store_path), Path(out)
    if "sentences" not in store.spec.companions:
        raise DomainfmError(f"{store.path} has no report sentences: ingest it with `domainfm radiology ingest`")
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    options = text_options(text)
    if options["local_model"]:
        tokenizer = SentenceTokenizer(Path(options["local_model"]), options["max_length"])
    else:
        path = train_tokenizer(store_sentences(store), out / "tokenizer.json", options["vocab_size"])
        tokenizer = SentenceTokenizer(path, options["max_length"])
    stats = store.stats
    normalization = {"mean": float(stats["mean"][0]) / 255, "std": max(float(stats["std"][0]) / 255, 1e-6)}
    meta = {
        "kind": "convirt",
        "backbone": backbone,
        "image_size": store.spec.tile_shape[-1],
        "text": options,
        "tokenizer": tokenizer.to_json(),
        "projection_dim": projection_dim,
        "normalization": normalization,
        "tau": tau,
        "lam": lam,
    }
    model = build_model(meta, tokenizer, image_checkpoint).to(torch_device)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)

    def step(batch: dict) -> torch.Tensor:
        keep = [i for i, s in enumerate(batch["sentences"]) if s]
        chosen = [str(rng.choice(batch["sentences"][i].split("\n"))) for i in keep]
        images = augment_images(batch["tiles"][keep].float() / 255, hflip, generator, augment_strength)
        images = (images - normalization["mean"]) / normalization["std"]
        tokens = {k: v.to(torch_device) for k, v in tokenizer(chosen).items()}
        v, u = model(images, **tokens)
        return convirt_loss(v, u, tau, lam)

    def optimizers(parameters: list) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)

    from lightning.pytorch.callbacks import ModelCheckpoint

    resume = out / "resume"
    task = step_task(step, model, optimizers)
    trainer = make_trainer(epochs, torch_device, progress, [ModelCheckpoint(resume, save_top_k=0, save_last=True)])
    stream = TileStream(
        store, batch_size, split="train", seed=seed, device=torch_device, normalize=False,
        companions=("sentences",), drop_last=True,
    )  # fmt: skip
    if len(stream) == 0:
        raise DomainfmError(f"{store.path}: fewer train images than one batch of {batch_size}; lower --batch_size")
    start = time.perf_counter()
    fit(trainer, task, stream, resume / "last.ckpt")
    checkpoint = save_convirt(
        model.cpu(), {**meta, "epochs": epochs, "trained_on": str(store.path)}, out / "convirt.safetensors"
    )
    history = {"losses": task.losses, "seconds": time.perf_counter() - start, "epochs": epochs}
    (out / "history.json").write_text(json.dumps(history, indent=2))
    shutil.rmtree(resume, ignore_errors=True)
    return {"checkpoint": checkpoint, **history}
