"""ConVIRT evaluation: zero-shot retrieval (Precision@k), linear probe and kNN at label fractions.

Protocols of Zhang et al. (MLHC 2022, arXiv 2010.00747), ``shared/methods/convirt.md`` section 2:

* **Retrieval** with the CheXpert 8x200 files of the ConVIRT repository: candidates ``candidate.csv``
  (``Path`` + a column per label), image and text queries (``Variable`` + ``Path``/``Text``). Candidates are ranked
  by cosine similarity of the projected, normalised embeddings; a hit is a candidate whose label for the
  query's category is 1. Precision@k is averaged over the queries of a category, then over categories
  (macro), and reported with its chance level (the mean category prevalence among candidates).
* **Linear probe**: the frozen image tower's pooled features (projection heads removed), a logistic
  regression per label trained on a seeded fraction of the train split, macro AUROC on the test split.
* **kNN**: cosine k-nearest neighbours in the same features; a label's score is its mean over neighbours.
* **Full fine-tune**: the image tower and a linear head trained together (Adam 1e-4, BCE) on the fraction.

Each probe also runs on a random-initialised image tower of the same architecture: the baseline ConVIRT
has to beat. Images are standardised by the tower's transform record (the ConVIRT checkpoint's, or a
converted foundation checkpoint's fitted to the one-channel store: grey replicated to its channels), and a
converted foundation checkpoint is probed directly (rows named by its catalogue name).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.radiology.convirt import ConVIRT
from domainfm.domains.radiology.images import ingest_tile
from domainfm.domains.radiology.pretrain import radiograph_transform
from domainfm.domains.radiology.text import SentenceTokenizer
from domainfm.shared.backbones import create_backbone
from domainfm.shared.engine import resolve_device
from domainfm.shared.errors import DomainfmError
from domainfm.shared.model import InputTransform
from domainfm.shared.model.encoders import fit_store, tile_input
from domainfm.shared.tasks.metrics import multilabel_macro_auroc
from domainfm.shared.tasks.probes import fit_logistic_probe, knn_scores
from domainfm.shared.tasks.subsets import label_fraction
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.split_counts import require_splits
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream


def precision_at_k(similarity: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Per query: the fraction of its ``k`` most similar candidates that are relevant.

    Args:
        similarity: ``[queries, candidates]`` scores.
        relevant: ``[queries, candidates]`` booleans.
        k: Candidates looked at (at most the number of candidates).
    """
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
    return relevant.gather(1, top).float().mean(dim=1)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


@torch.no_grad()
def embed_files(model: ConVIRT, paths: list[str], meta: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Projected, normalised embeddings of radiograph files (read and letterboxed as at ingest)."""
    size = meta["image_size"]
    prepare = tile_input(fit_store(radiograph_transform(meta), 1, size, meta.get("checkpoint") or "the checkpoint"))
    out = []
    for start in range(0, len(paths), 32):
        tiles = np.stack([ingest_tile(Path(p), size) for p in paths[start : start + 32]])
        images = prepare(torch.from_numpy(tiles).to(device))
        out.append(model.embed_images(images).cpu())
    return torch.cat(out)


def _resolve(path: str, root: Path) -> str:
    return str(Path(path) if Path(path).is_absolute() else root / path)


@torch.no_grad()
def retrieval(
    model: ConVIRT,
    tokenizer: SentenceTokenizer,
    meta: dict[str, Any],
    candidates: Path,
    image_queries: Path | None = None,
    text_queries: Path | None = None,
    ks: tuple[int, ...] = (5, 10, 50),
    device: str = "auto",
    image_root: Path | None = None,
) -> dict[str, Any]:
    """Image->image and text->image Precision@k (per category and macro mean) with chance levels.

    The CSVs are those of the ConVIRT repository (CheXpert 8x200): ``candidate.csv`` with ``Path`` and a
    column per CheXpert label (1.0 = positive; 0, -1 and blank are not hits), ``image-retrieval/query.csv``
    with ``Variable,Path`` and ``text-retrieval/query.csv`` with ``Variable,Text``. Relative paths resolve
    against ``image_root`` (default: each CSV's folder).
    """
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    rows = _read_csv(Path(candidates))
    query_sets: dict[str, list[dict[str, str]]] = {}
    if image_queries is not None:
        query_sets["image_to_image"] = _read_csv(Path(image_queries))
    if text_queries is not None:
        query_sets["text_to_image"] = _read_csv(Path(text_queries))
    categories = list(dict.fromkeys(r["Variable"] for queries in query_sets.values() for r in queries))
    missing = [c for c in categories if c not in rows[0]]
    if missing:
        raise ValueError(f"{candidates} has no column for the query categories {missing}")

    def positive(value: str | None) -> bool:
        try:
            return float(value or 0) == 1.0
        except ValueError as error:
            raise ValueError(f"{candidates}: label values must be numbers, found {value!r}") from error

    labels = torch.tensor([[positive(r[c]) for c in categories] for r in rows])
    root = Path(image_root) if image_root else Path(candidates).parent
    candidate_embeddings = embed_files(model, [_resolve(r["Path"], root) for r in rows], meta, torch_device)
    result: dict[str, Any] = {"candidates": len(rows), "categories": categories}
    result["chance"] = float(labels.float().mean(0).mean())
    for name, queries in query_sets.items():
        if name == "image_to_image":
            query_root = Path(image_root) if image_root else Path(image_queries).parent  # type: ignore[arg-type]
            embeddings = embed_files(model, [_resolve(r["Path"], query_root) for r in queries], meta, torch_device)
        else:
            tokens = {k: v.to(torch_device) for k, v in tokenizer([r["Text"] for r in queries]).items()}
            embeddings = model.embed_text(**tokens).cpu()
        query_categories = [r["Variable"] for r in queries]
        similarity = embeddings @ candidate_embeddings.T
        relevant = torch.stack([labels[:, categories.index(c)] for c in query_categories])
        per_direction: dict[str, Any] = {}
        for k in ks:
            precision = precision_at_k(similarity, relevant, k)
            per_category = {
                c: float(precision[[i for i, q in enumerate(query_categories) if q == c]].mean())
                for c in categories
                if c in query_categories
            }
            per_direction[f"precision_at_{k}"] = float(np.mean(list(per_category.values())))
            per_direction[f"precision_at_{k}_per_category"] = per_category
        result[name] = per_direction
    return result


@torch.no_grad()
def tower_features(
    tower: nn.Module, store: TileStore, ids: np.ndarray, record: InputTransform, device: torch.device
) -> torch.Tensor:
    """Pooled image-tower features of the given tiles (store order of ``ids``), standardised by ``record``."""
    tower = tower.to(device).eval()
    prepare = tile_input(record)
    stream = TileStream(store, 64, indices=ids, shuffle=False, device=device, normalize=False)
    return torch.cat([tower(prepare(b["tiles"])).float().cpu() for b in stream])


def finetune_scores(
    tower: nn.Module,
    store: TileStore,
    subset: np.ndarray,
    test: np.ndarray,
    record: InputTransform,
    epochs: int,
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """Fine-tunes a copy of ``tower`` with a linear head on ``subset`` (Adam 1e-4, BCE); test-set scores."""
    import copy

    from domainfm.shared.tasks.finetune import finetune, predict

    torch.manual_seed(seed)
    labels = torch.from_numpy(store.companion("labels")[:].astype(np.float32))
    network = nn.Sequential(copy.deepcopy(tower), nn.Linear(tower.embed_dim, labels.shape[1])).to(device)

    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels[batch["tile_id"].cpu()].to(device))

    prepare = tile_input(record)
    adam = lambda parameters: torch.optim.Adam(parameters, lr=1e-4)  # noqa: E731
    finetune(network, store, subset, loss, prepare, epochs, 32, 1e-4, seed, device, optimizer=adam)
    return predict(network, store, test, prepare, device, torch.sigmoid)


def random_tower(meta: dict[str, Any]) -> nn.Module:
    """A random-initialised image tower of the architecture ``meta`` describes (the probes' baseline)."""
    if meta.get("image_tower"):
        args = dict(meta["image_tower"])
        return create_backbone(args.pop("name"), **args)
    return create_backbone(meta["backbone"], in_chans=1, img_size=meta["image_size"])


def probe(
    model: ConVIRT | nn.Module,
    meta: dict[str, Any],
    store: TileStore,
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0),
    method: str = "linear",
    k: int = 10,
    seed: int = 0,
    device: str = "auto",
    finetune_epochs: int = 10,
) -> list[dict[str, Any]]:
    """Test-split macro AUROC of a linear probe, kNN or full fine-tune, ConVIRT vs random init, per fraction.

    ``model`` is a ConVIRT model (its image tower is probed) or an image tower itself, e.g. a converted
    foundation checkpoint from :func:`.pretrain.foundation_image_encoder` (rows named by ``meta["init"]``).
    """
    if "labels" not in store.spec.companions:
        raise DomainfmError(f"{store.path} has no labels: ingest it with --labels LABELS.csv")
    require_splits(
        store,
        ("train", "test"),
        f"radiology eval {'probe' if method == 'linear' else method} needs images in train, test",
    )
    torch_device = resolve_device(device)
    labels = torch.from_numpy(store.companion("labels")[:].astype(np.int64))
    test = np.flatnonzero(store.index["split"] == SPLITS["test"])
    channels, size = store.spec.tile_shape[0], store.spec.tile_shape[-1]
    record = fit_store(radiograph_transform(meta), channels, size, meta.get("checkpoint") or "the checkpoint")
    torch.manual_seed(seed)
    tower = model.image_tower if isinstance(model, ConVIRT) else model
    towers = {str(meta.get("init", "convirt")): tower, "random": random_tower(meta)}
    train_all = np.flatnonzero(store.index["split"] == SPLITS["train"])
    rows = []
    for init, tower in towers.items():
        features_train = tower_features(tower, store, train_all, record, torch_device)
        features_test = tower_features(tower, store, test, record, torch_device)
        position = {tile: i for i, tile in enumerate(train_all)}
        for fraction in fractions:
            subset = label_fraction(train_all, fraction, seed)
            rows_subset = [position[t] for t in subset]
            x, y = features_train[rows_subset], labels[subset]
            if method == "knn":
                scores = knn_scores(x, y, features_test, k)
            elif method == "finetune":
                scores = finetune_scores(tower, store, subset, test, record, finetune_epochs, seed, torch_device)
            else:
                scores = fit_logistic_probe(x, y)(features_test)
            auroc = multilabel_macro_auroc(scores, labels[test])
            rows.append(
                {
                    "init": init,
                    "method": method,
                    "label_fraction": fraction,
                    "train_images": len(subset),
                    "auroc": auroc,
                }
            )
    return rows
