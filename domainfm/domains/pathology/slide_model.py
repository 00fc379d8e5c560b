"""An ABMIL slide classifier as one deployable model: the tile encoder with its transform, then the ABMIL head.

``domainfm pathology mil`` trains gated-attention ABMIL (Ilse, Tomczak & Welling, ICML 2018, arXiv
1802.04712; :mod:`.mil`) on frozen tile embeddings. To predict slides it never saw, the encoder that made
those embeddings has to travel with the head, so ``mil`` saves ``OUT/slide_classifier.safetensors``: one
safetensors file (loaded strictly, :mod:`domainfm.shared.tasks.checkpoint`) holding the encoder and the
head, with metadata that rebuilds both and the encoder's input transform record (the project's model
contract, ``docs/architecture.md``). Deployed, it is ``ContractModel(transform, SlideClassifier)``: raw
RGB tiles ``[N, 3, t, t]`` in 0..255 -> the record's standardisation -> encoder -> ABMIL over the N tiles
as **one bag** -> slide logits ``[1, classes]``; a MONAI bundle therefore runs each input picture as a bag
of one tile.

``pathology predict`` does not hold a slide's tiles: :class:`AttentionPool` streams them batch by batch.
ABMIL's per-tile parts (projection ``h_k``, gated score ``s_k``) do not depend on the other tiles; only the
softmax over the bag and the pooled ``z = sum_k a_k h_k`` do, and both are accumulated exactly with a
running maximum (the log-sum-exp of the online softmax, Milakov & Gimelshein 2018, arXiv 1805.02867), in
float64. So memory per slide is one score and a few class values per tile, never the tiles or embeddings.
A tile's own probabilities are the slide model applied to that tile alone (a bag of one: attention 1, so
``softmax(classifier(h_k))``), the ABMIL instance-level reading of a tile.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.pathology.mil import GatedABMIL
from domainfm.shared.errors import DomainfmError

SLIDE_KEY = "domainfm_pathology_slide_classifier"
KIND = "pathology.slide_classifier"
FILENAME = "slide_classifier.safetensors"
PRODUCER = "domainfm pathology mil"
CHECK_TILES = 8  # tiles of the tile store re-embedded to check the saved encoder made the bags
# relative L2 error per tile: another encoder (another seed, another checkpoint) is off by ~1; embeddings
# made on a GPU (TF32 convolutions) and re-made on the CPU differ by ~1e-3
CHECK_TOLERANCE = 1e-2


class SlideClassifier(nn.Module):
    """A tile encoder and a :class:`~.mil.GatedABMIL` head; ``forward`` takes a batch of tiles as one bag.

    Args:
        encoder: The tile encoder (pooled embedding ``[N, D]`` of standardised tiles).
        head: The trained ABMIL head (``in_dim == D``).
    """

    def __init__(self, encoder: nn.Module, head: GatedABMIL) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Slide logits ``[1, classes]`` of standardised tiles ``[N, 3, t, t]`` taken as one bag."""
        logits, _ = self.head(self.encoder(tiles))
        return logits[None]

    def tile_parts(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-tile ``(h [N, hidden], score [N], tile logits [N, classes])`` of standardised tiles."""
        h = self.head.project(self.encoder(tiles).to(self.head.classifier.weight.dtype))
        return h, self.head.attention_scores(h), self.head.classifier(h)


class AttentionPool:
    """ABMIL's softmax pooling over a bag streamed in parts (module docstring): exact, in float64.

    Args:
        head: The ABMIL head whose classifier maps the pooled embedding to slide logits.
        n_tiles: Tiles in the bag (scores are kept per tile, in the order they are added).
    """

    def __init__(self, head: GatedABMIL, n_tiles: int) -> None:
        self.head, self.scores, self.count = head, np.empty(n_tiles, np.float64), 0
        self.peak, self.total, self.pooled = -np.inf, 0.0, None

    def add(self, h: torch.Tensor, scores: torch.Tensor) -> None:
        """Adds tiles' projections ``h [n, hidden]`` and gated scores ``[n]``."""
        s = scores.detach().double().cpu().numpy()
        h64 = h.detach().double().cpu().numpy()
        self.scores[self.count : self.count + len(s)] = s
        self.count += len(s)
        peak = max(self.peak, float(s.max()))
        rescale = np.exp(self.peak - peak) if np.isfinite(self.peak) else 0.0
        weights = np.exp(s - peak)
        weighted = weights @ h64
        self.pooled = weighted if self.pooled is None else self.pooled * rescale + weighted
        self.total = self.total * rescale + float(weights.sum())
        self.peak = peak

    def attention(self) -> np.ndarray:
        """Attention ``[N]`` of every tile (sums to 1)."""
        return np.exp(self.scores[: self.count] - self.peak) / self.total

    @torch.no_grad()
    def logits(self) -> np.ndarray:
        """Slide logits ``[classes]`` (float64): the classifier on ``sum_k a_k h_k``."""
        if self.pooled is None:
            raise ValueError("ABMIL needs at least one tile")
        weight = self.head.classifier.weight.detach().double().cpu().numpy()
        bias = self.head.classifier.bias.detach().double().cpu().numpy()
        return weight @ (self.pooled / self.total) + bias


def build_slide_classifier(meta: dict[str, Any]) -> SlideClassifier:
    """A randomly initialised slide classifier of the shape ``meta`` (its checkpoint's metadata) describes."""
    from domainfm.shared.backbones import create_backbone

    encoder = create_backbone(**meta["encoder"])
    head = GatedABMIL(encoder.embed_dim, len(meta["label_names"]), **meta["head"])
    return SlideClassifier(encoder, head).eval()


def save_slide_classifier(model: SlideClassifier, meta: dict[str, Any], path: Path) -> Path:
    """Weights and the metadata that rebuilds them (with the transform record) in one file, atomically."""
    from domainfm.shared.tasks.checkpoint import save_model_checkpoint

    return save_model_checkpoint(model, path, SLIDE_KEY, meta)


def load_slide_classifier(path: Path) -> tuple[SlideClassifier, dict[str, Any]]:
    """The slide classifier in ``path`` (rebuilt from its metadata, every tensor loaded strictly, eval mode)."""
    from domainfm.shared.tasks.checkpoint import load_model_checkpoint

    return load_model_checkpoint(path, SLIDE_KEY, PRODUCER, build_slide_classifier)


def _encoder(attrs: dict[str, Any], source: Path) -> nn.Module:
    """The encoder that made an embedding store: its checkpoint, or the seeded random initialisation."""
    from domainfm.domains.pathology.pretrain import load_encoder
    from domainfm.shared.backbones import create_backbone

    meta = attrs["encoder_meta"]
    if meta.get("checkpoint"):
        checkpoint = Path(meta["checkpoint"])
        if not checkpoint.is_file():
            raise DomainfmError(
                f"{source}: its encoder {checkpoint} is gone, so the slide model cannot be saved with it; put the "
                "encoder back there (or re-embed) and rerun `domainfm pathology mil`"
            )
        return load_encoder(checkpoint)[0]
    torch.manual_seed(int(meta["random_init_seed"]))
    return create_backbone(**attrs["encoder"])


def _check_encoder(encoder: nn.Module, prepare: Any, embeddings: Any, store: Any) -> None:
    """Re-embeds a few stored tiles and refuses an encoder whose features differ from the store's."""
    rows = np.linspace(0, len(embeddings.features) - 1, min(CHECK_TILES, len(embeddings.features))).astype(int)
    # `pathology embed` writes row i of the embedding store from tile i of the tile store
    tiles = torch.from_numpy(np.stack([np.asarray(store.tiles[int(i)]) for i in rows]))
    with torch.no_grad():
        features = encoder(prepare(tiles)).float().numpy()
    stored = embeddings.features[rows]
    error = np.linalg.norm(features - stored, axis=1) / np.maximum(np.linalg.norm(stored, axis=1), 1e-12)
    if not (error <= CHECK_TOLERANCE).all():
        raise DomainfmError(
            f"{embeddings.path}: its encoder no longer gives the stored embeddings (changed since `pathology "
            "embed`?); re-embed the tiles with the encoder you mean and rerun `domainfm pathology mil`"
        )


def slide_classifier_from_mil(head: GatedABMIL, embeddings: Any, mpp: float, names: list[str], out: Path) -> Path:
    """Saves ``OUT/slide_classifier.safetensors``: the encoder that made ``embeddings`` and the trained head.

    The encoder is rebuilt from the embedding store's record (its checkpoint, or its seeded random
    initialisation) and checked against the stored features on a few tiles when the tile store is still
    there; the transform record is the one the tiles were embedded with, at the bags' ``mpp``.
    """
    from domainfm.domains.pathology.pretrain import encoder_transform, store_transform
    from domainfm.shared.model.encoders import downstream_transform, tile_input
    from domainfm.shared.tiles.store import TileStore

    attrs = embeddings.attrs
    encoder = _encoder(attrs, embeddings.path).eval()
    tile_px = int(attrs["tile_px"])
    store_path = Path(attrs["tile_store"])
    store = TileStore(store_path) if (store_path / "zarr.json").is_file() else None
    meta_source = attrs["encoder_meta"].get("checkpoint") or embeddings.path
    record = (
        store_transform(attrs["encoder_meta"], store, meta_source)
        if store is not None
        else encoder_transform(attrs["encoder_meta"])
    )
    if store is not None:
        _check_encoder(encoder, tile_input(record), embeddings, store)
    else:
        warnings.warn(f"{store_path} is gone: the saved encoder is not checked against {embeddings.path}", stacklevel=2)
    tissue = (store.spec.value_scaling.get("tissue") or {}) if store is not None else {}
    meta = {
        "encoder": encoder.build_args,
        "head": {"hidden": head.project[0].out_features, "attention_dim": head.attention_v.out_features},
        "label_names": list(names),
        "transform": downstream_transform(record, details={"mpps": [mpp], "tile_px": tile_px}).to_dict(),
        "tile_px": tile_px,
        "mpps": [mpp],
        "min_tissue": tissue.get("min_tissue"),
        "embeddings": str(Path(embeddings.path).resolve()),
        "encoder_checkpoint": attrs["encoder_meta"].get("checkpoint"),
    }
    model = SlideClassifier(encoder, head).cpu().eval()
    return save_slide_classifier(model, meta, Path(out) / FILENAME)


def input_transform(meta: dict[str, Any]) -> Any:
    """The slide classifier's input transform record (tiles of exactly ``tile_px`` at its mpp)."""
    from domainfm.shared.model import InputTransform

    return InputTransform.from_dict(meta["transform"])


def network(build: dict[str, Any]) -> nn.Module:
    """The contract network (transform -> encoder -> ABMIL over the batch as one bag), randomly initialised."""
    from domainfm.shared.deploy.card import contract_network

    return contract_network(input_transform(build), build_slide_classifier(build), output_grid="fixed")


def card(meta: dict[str, Any], source: Path) -> Any:
    """The card of a slide classifier with checkpoint metadata ``meta``."""
    from domainfm.shared.deploy.card import ModelCard

    size = int(meta["tile_px"])
    return ModelCard.for_transform(
        input_transform(meta),
        kind=KIND,
        task="classification",
        out_channels=len(meta["label_names"]),
        activation="softmax",
        class_names=list(meta["label_names"]),
        build=meta,
        details={
            "backbone": meta["encoder"]["name"],
            "head": "gated-attention ABMIL (Ilse et al. 2018)",
            "mpps": meta["mpps"],
            "min_tissue": meta.get("min_tissue"),
            "pretrained_encoder": meta.get("encoder_checkpoint"),
            "source": str(source),
            "input": f"the tissue tiles of one slide, RGB {size}x{size} px at mpps[0], as one batch (one bag); "
            "pred is [1, classes]",
        },
    )


def deployable(path: Path) -> Any:
    """The slide classifier in ``path`` as a deployable network with its card."""
    from domainfm.shared.deploy.card import Deployable, contract_network

    model, meta = load_slide_classifier(path)
    return Deployable(contract_network(input_transform(meta), model, "fixed"), card(meta, path), Path(path))
