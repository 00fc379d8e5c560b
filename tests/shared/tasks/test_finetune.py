from pathlib import Path

import numpy as np
import torch
from torch import nn

from domainfm.shared.tasks.finetune import finetune, predict
from domainfm.studies.shared.peft.phantom import build_phantom_store


class _Pooled(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(3, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.mean(dim=(2, 3)))


def test_finetune_trains_and_predict_scores_the_ids_in_store_order(tmp_path: Path):
    store = build_phantom_store(tmp_path / "p.zarr", n=40, classes=2, size=16, seed=0)
    torch.manual_seed(0)
    model = _Pooled(2)
    before = model.head.weight.detach().clone()
    target = torch.from_numpy(store.index["label"].astype(np.int64))
    seen: list[int] = []

    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        seen.extend(batch["tile_id"].tolist())
        return nn.functional.cross_entropy(logits, target[batch["tile_id"]])

    def prepare(tiles: torch.Tensor) -> torch.Tensor:
        return tiles.float() / 255

    train = np.arange(0, 40, 2)
    trained = finetune(model, store, train, loss, prepare, 2, 8, 1e-2, 0, torch.device("cpu"))
    assert trained is model and not model.training and sorted(seen) == sorted(list(train) * 2)
    assert not torch.equal(before, model.head.weight)
    ids = np.array([1, 3, 5])
    probabilities = predict(model, store, ids, prepare, torch.device("cpu"), lambda z: z.softmax(1))
    with torch.no_grad():
        one = model(prepare(torch.as_tensor(np.asarray(store.read([3])["tiles"])))).softmax(1)
    assert probabilities.shape == (3, 2) and torch.allclose(probabilities[1], one[0], atol=1e-6)
    assert predict(model, store, ids[:0], prepare, torch.device("cpu")).numel() == 0
