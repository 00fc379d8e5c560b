"""ConVIRT evaluation: zero-shot retrieval (Precision@k), linear probe and kNN at label fractions.

Protocols of Zhang et al. (MLHC 2022, arXiv 2010.00747), ``shared/methods/convirt.md`` section 2:

* **Retrieval** in the CheXpert 8x200 layout: candidates ``candidate.csv`` (``Path`` + one 0/1 column per
  category), image queries (same columns) and text queries (``Text``, ``Variable``). Candidates are ranked
  by cosine similarity of the projected, normalised embeddings; a hit is a candidate whose label for the
  query's category is 1. Precision@k is averaged over the queries of a category, then over categories
  (macro), and reported with its chance level (the mean category prevalence among candidates).
* **Linear probe**: the frozen image tower's pooled features (projection heads removed), a logistic
  regression per label trained on a seeded fraction of the train split, macro AUROC on the test split.
* **kNN**: cosine k-nearest neighbours in the same features; a label's score is its mean over neighbours.

Each probe also runs on a random-initialised image tower of the same architecture: the baseline ConVIRT
has to beat.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.radiology.convirt import ConVIRT
from domainfm.domains.radiology.images import letterbox, read_radiograph
from domainfm.domains.radiology.pretrain import normalise
from domainfm.domains.radiology.text import SentenceTokenizer
from domainfm.shared.backbones import create_backbone
from domainfm.shared.engine import resolve_device
from domainfm.shared.tiles.schema import SPLITS
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
def _embed_files(model: ConVIRT, paths: list[str], meta: dict[str, Any], device: torch.device) -> torch.Tensor:
    size = meta["image_size"]
    out = []
    for start in range(0, len(paths), 32):
        tiles = np.stack([np.round(letterbox(read_radiograph(Path(p)), size) * 255) for p in paths[start : start + 32]])
        images = normalise(torch.from_numpy(tiles)[:, None].to(device), meta["normalization"])
        out.append(model.embed_images(images).cpu())
    return torch.cat(out)


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
) -> dict[str, Any]:
    """Image->image and text->image Precision@k (per category and macro mean) with chance levels."""
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    rows = _read_csv(Path(candidates))
    categories = [c for c in rows[0] if c != "Path"]
    base = Path(candidates).parent
    paths = [str(Path(r["Path"]) if Path(r["Path"]).is_absolute() else base / r["Path"]) for r in rows]
    labels = torch.tensor([[float(r[c] or 0) > 0 for c in categories] for r in rows])
    candidate_embeddings = _embed_files(model, paths, meta, torch_device)
    result: dict[str, Any] = {"candidates": len(rows), "categories": categories}
    result["chance"] = float(labels.float().mean(0).mean())
    queries: dict[str, tuple[torch.Tensor, list[str]]] = {}
    if image_queries is not None:
        query_rows = _read_csv(Path(image_queries))
        qbase = Path(image_queries).parent
        qpaths = [str(Path(r["Path"]) if Path(r["Path"]).is_absolute() else qbase / r["Path"]) for r in query_rows]
        query_categories = [next(c for c in categories if float(r.get(c) or 0) > 0) for r in query_rows]
        queries["image_to_image"] = (_embed_files(model, qpaths, meta, torch_device), query_categories)
    if text_queries is not None:
        query_rows = _read_csv(Path(text_queries))
        tokens = {k: v.to(torch_device) for k, v in tokenizer([r["Text"] for r in query_rows]).items()}
        queries["text_to_image"] = (model.embed_text(**tokens).cpu(), [r["Variable"] for r in query_rows])
    for name, (embeddings, query_categories) in queries.items():
        unknown = sorted(set(query_categories) - set(categories))
        if unknown:
            raise ValueError(f"{name} queries name categories {unknown} that the candidates lack ({categories})")
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
    tower: nn.Module, store: TileStore, ids: np.ndarray, normalization: dict[str, float], device: torch.device
) -> torch.Tensor:
    """Pooled image-tower features of the given tiles (store order of ``ids``)."""
    tower = tower.to(device).eval()
    stream = TileStream(store, 64, indices=ids, shuffle=False, device=device, normalize=False)
    return torch.cat([tower(normalise(b["tiles"], normalization)).float().cpu() for b in stream])


def label_fraction(store: TileStore, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of the train split's tile ids (at least 2)."""
    train = np.flatnonzero(store.index["split"] == SPLITS["train"])
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train, size=max(2, round(fraction * len(train))), replace=False))


def _macro_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro AUROC over the labels that have both classes in ``labels``."""
    from torchmetrics.functional.classification import binary_auroc

    values = [
        float(binary_auroc(scores[:, j], labels[:, j].long()))
        for j in range(labels.shape[1])
        if 0 < int(labels[:, j].sum()) < len(labels)
    ]
    return float(np.mean(values)) if values else float("nan")


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, steps: int = 300, weight_decay: float = 1e-3) -> Any:
    """A multi-label logistic regression on standardised features; returns ``score(features) -> probs``."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    head = nn.Linear(features.shape[1], labels.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=weight_decay)
    x, y = (features - mean) / std, labels.float()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(head(x), y).backward()
        optimizer.step()
    return lambda f: torch.sigmoid(head((f - mean) / std)).detach()


def knn_scores(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Mean label of each test item's ``k`` cosine-nearest train items."""
    similarity = nn.functional.normalize(test, dim=1) @ nn.functional.normalize(train, dim=1).T
    neighbours = similarity.topk(min(k, len(train)), dim=1).indices
    return labels.float()[neighbours].mean(dim=1)


def probe(
    model: ConVIRT,
    meta: dict[str, Any],
    store: TileStore,
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0),
    method: str = "linear",
    k: int = 10,
    seed: int = 0,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Test-split macro AUROC of a linear probe or kNN, ConVIRT vs random init, per label fraction."""
    if "labels" not in store.spec.companions:
        raise ValueError(f"{store.path} has no labels: ingest it with --labels LABELS.csv")
    torch_device = resolve_device(device)
    labels = torch.from_numpy(store.companion("labels")[:].astype(np.int64))
    test = np.flatnonzero(store.index["split"] == SPLITS["test"])
    torch.manual_seed(seed)
    random_tower = create_backbone(meta["backbone"], in_chans=1, img_size=meta["image_size"])
    towers = {"convirt": model.image_tower, "random": random_tower}
    train_all = np.flatnonzero(store.index["split"] == SPLITS["train"])
    rows = []
    for init, tower in towers.items():
        features_train = tower_features(tower, store, train_all, meta["normalization"], torch_device)
        features_test = tower_features(tower, store, test, meta["normalization"], torch_device)
        position = {tile: i for i, tile in enumerate(train_all)}
        for fraction in fractions:
            subset = label_fraction(store, fraction, seed)
            rows_subset = [position[t] for t in subset]
            x, y = features_train[rows_subset], labels[subset]
            knn = method == "knn"
            scores = knn_scores(x, y, features_test, k) if knn else fit_logistic(x, y)(features_test)
            auroc = _macro_auroc(scores, labels[test])
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
