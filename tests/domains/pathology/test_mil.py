"""Gated ABMIL (Ilse et al. 2018): masking, invariances, a planted-instance task, determinism, heat-maps."""

import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from domainfm.domains.pathology.mil import (
    GatedABMIL,
    MILResult,
    attention_heatmap,
    attention_overlay,
    evaluate_mil,
    fit_mil,
    predict_mil,
    train_mil,
)

DIM = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One bag per step is a tiny workload: intra-op threads only add contention (40x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_bags(n: int, seed: int, shift: float = 3.0) -> tuple[list[torch.Tensor], list[int], list[torch.Tensor]]:
    """Gaussian bags of 20-60 tiles; odd bags are positive and hold 2-5 tiles shifted along a fixed direction."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(DIM)
    direction[:4] = 1.0
    bags, labels, planted = [], [], []
    for i in range(n):
        size = int(torch.randint(20, 61, (1,), generator=g))
        bag = torch.randn(size, DIM, generator=g)
        idx = torch.zeros(0, dtype=torch.long)
        if i % 2:
            idx = torch.randperm(size, generator=g)[: int(torch.randint(2, 6, (1,), generator=g))]
            bag[idx] += shift * direction
        bags.append(bag)
        labels.append(i % 2)
        planted.append(idx)
    return bags, labels, planted


def padded(bags: list[torch.Tensor], fill: float = float("nan")) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(b) for b in bags)
    batch = torch.full((len(bags), n, bags[0].shape[1]), fill)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        batch[i, : len(b)], mask[i, : len(b)] = b, True
    return batch, mask


@pytest.fixture(scope="module")
def trained() -> tuple[GatedABMIL, list[torch.Tensor], list[int], list[torch.Tensor]]:
    train_b, train_y, _ = planted_bags(48, seed=1)
    model = train_mil(train_b, train_y, n_classes=2, epochs=8, lr=1e-3, seed=0)
    test_b, test_y, test_planted = planted_bags(40, seed=2)
    return model, test_b, test_y, test_planted


def test_attention_sums_to_one_and_is_zero_on_padding() -> None:
    model = GatedABMIL(DIM, 3).eval()
    bags = [torch.randn(n, DIM) for n in (5, 9, 1)]
    batch, mask = padded(bags)  # NaN padding must not leak into anything
    with torch.no_grad():
        logits, attention = model(batch, mask)
    assert logits.shape == (3, 3) and attention.shape == (3, 9)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(attention.sum(1), torch.ones(3))
    assert (attention[~mask] == 0).all()
    assert (attention[mask] > 0).all()
    assert attention[2, 0] == 1.0


def test_padded_batch_matches_each_bag_alone() -> None:
    model = GatedABMIL(DIM, 2).eval()
    bags = [torch.randn(n, DIM) for n in (7, 3, 12)]
    batch, mask = padded(bags, fill=5.0)
    with torch.no_grad():
        logits, attention = model(batch, mask)
        for i, bag in enumerate(bags):
            alone_logits, alone_attention = model(bag)
            assert alone_logits.shape == (2,) and alone_attention.shape == (len(bag),)
            torch.testing.assert_close(logits[i], alone_logits)
            torch.testing.assert_close(attention[i, : len(bag)], alone_attention)
            torch.testing.assert_close(model(batch[i], mask[i])[0], alone_logits)  # one padded bag, [N] mask


def test_permuting_the_bag_permutes_attention_and_keeps_logits() -> None:
    model = GatedABMIL(DIM, 2).eval()
    bag = torch.randn(25, DIM)
    perm = torch.randperm(25)
    with torch.no_grad():
        logits, attention = model(bag)
        permuted_logits, permuted_attention = model(bag[perm])
    torch.testing.assert_close(permuted_logits, logits)
    torch.testing.assert_close(permuted_attention, attention[perm])


def test_bad_inputs_are_refused() -> None:
    model = GatedABMIL(DIM, 2)
    with pytest.raises(ValueError, match="at least one real tile"):
        model(torch.zeros(0, DIM))
    with pytest.raises(ValueError, match="at least one real tile"):
        model(torch.randn(2, 4, DIM), torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="bag must be"):
        model(torch.randn(4, DIM + 1))
    with pytest.raises(ValueError, match="labels must lie"):
        train_mil([torch.randn(3, DIM)], [2], n_classes=2, epochs=1)
    with pytest.raises(ValueError, match="as many labels"):
        train_mil([torch.randn(3, DIM)], [0, 1], n_classes=2, epochs=1)


def test_planted_instances_are_learned_and_attended(trained) -> None:
    model, bags, labels, planted = trained
    assert len(model.history) == 8 and model.history[-1] < 0.5 * model.history[0]
    metrics = evaluate_mil(model, bags, labels)
    assert metrics["auroc"] > 0.9 and metrics["balanced_accuracy"] > 0.8 and metrics["n_slides"] == 40
    ratios = []
    with torch.no_grad():
        for bag, label, idx in zip(bags, labels, planted, strict=True):
            if label:
                _, attention = model(bag)
                ratios.append(float(attention[idx].mean()) * len(bag))  # mean planted weight / uniform weight
    assert np.mean(ratios) > 3.0


def test_training_is_deterministic_for_a_seed() -> None:
    bags, labels, _ = planted_bags(8, seed=3)
    state = torch.get_rng_state()
    runs = [train_mil(bags, labels, 2, epochs=2, seed=s, max_tiles=10) for s in (5, 5, 6)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    assert runs[0].history == runs[1].history
    for (name, a), b in zip(runs[0].state_dict().items(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert runs[0].history != runs[2].history
    assert not runs[0].training


def test_fit_mil_and_multiclass_metrics() -> None:
    g = torch.Generator().manual_seed(0)
    centres = 3.0 * torch.eye(3, DIM)
    bags = [torch.randn(10, DIM, generator=g) + centres[i % 3] for i in range(12)]
    labels = [i % 3 for i in range(12)]
    # held-out bags whose class signal is weaker, so the scores are neither 0 nor 1 and a wrong formula shows
    held_labels = [0] * 6 + [1] * 3 + [2] * 3  # unbalanced: accuracy and balanced accuracy differ
    held_out = [torch.randn(10, DIM, generator=g) + 0.35 * centres[y] for y in held_labels]
    result = fit_mil(bags, labels, held_out, held_labels, n_classes=3, epochs=3, lr=1e-3)
    assert isinstance(result, MILResult) and len(result.history) == 3
    assert set(result.metrics) == {"accuracy", "balanced_accuracy", "auroc", "n_slides"}
    assert result.metrics["n_slides"] == 12
    # the reported scores are those of the returned model on the evaluation bags, recomputed here
    probs = predict_mil(result.model, held_out)
    predicted, target = probs.argmax(1), torch.tensor(held_labels)
    recalls = [float((predicted[target == c] == c).float().mean()) for c in range(3)]  # every class is true
    assert result.metrics["accuracy"] == pytest.approx(float((predicted == target).float().mean()))
    assert result.metrics["balanced_accuracy"] == pytest.approx(sum(recalls) / 3)

    def pairs_in_order(c: int) -> float:  # one-vs-rest AUROC: positive-negative pairs ranked right, ties half
        pos, neg = probs[target == c, c], probs[target != c, c]
        return float(((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean())

    assert result.metrics["auroc"] == pytest.approx(sum(pairs_in_order(c) for c in range(3)) / 3, abs=1e-6)
    one_class = evaluate_mil(result.model, bags[:1], labels[:1])
    assert math.isnan(one_class["auroc"]) and one_class["n_slides"] == 1


def blend(pixel: np.ndarray, value: float) -> np.ndarray:
    colour = np.asarray(matplotlib.colormaps["inferno"](value)[:3]) * 255.0
    return np.rint(0.5 * pixel + 0.5 * colour).astype(np.uint8)


def test_attention_overlay_colours_exactly_the_tile_footprints() -> None:
    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    # tiles of 512 level-0 px, thumbnail downsample 64 -> 8 x 8 thumbnail px
    coords = np.array([[0, 0], [512, 0], [256, 0], [1024, 1024], [2048, 2048]])
    attention = np.array([0.1, 0.47, 0.31, 0.9, np.nan])
    overlay = attention_overlay(thumb, coords, 512, 64, attention)
    assert overlay.shape == thumb.shape and overlay.dtype == np.uint8
    covered = np.zeros(thumb.shape[:2], dtype=bool)
    covered[0:8, 0:16] = covered[16:24, 16:24] = True
    np.testing.assert_array_equal(overlay[~covered], thumb[~covered])  # incl. the NaN tile at (32, 32)
    scaled = (attention[:4] - 0.1) / 0.8
    np.testing.assert_array_equal(overlay[20, 20], blend(thumb[20, 20], scaled[3]))  # highest: top of the map
    np.testing.assert_array_equal(overlay[2, 1], blend(thumb[2, 1], scaled[0]))  # only tile 0
    np.testing.assert_array_equal(overlay[2, 5], blend(thumb[2, 5], (scaled[0] + scaled[2]) / 2))  # overlap
    np.testing.assert_array_equal(overlay[2, 10], blend(thumb[2, 10], (scaled[1] + scaled[2]) / 2))
    np.testing.assert_array_equal(overlay[2, 14], blend(thumb[2, 14], scaled[1]))
    with pytest.raises(ValueError, match="attention values"):
        attention_overlay(thumb, coords, 512, 64, attention[:3])


@pytest.mark.parametrize("shape", [(30, 90, 3), (90, 30, 3)])
def test_attention_heatmap_writes_a_coloured_png(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    thumb = np.full(shape, 230, dtype=np.uint8)
    coords = np.array([[0, 0], [640, 640]])
    attention = np.array([0.2, 0.8])
    out = attention_heatmap(thumb, coords, 640, 32, attention, tmp_path / "maps" / "slide.png", title="slide 1")
    assert out == tmp_path / "maps" / "slide.png" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["slide.png"]  # no temporary file left behind
    image = np.asarray(Image.open(out).convert("RGB"))
    height, width = image.shape[:2]
    assert (width > height) == (shape[1] > shape[0])
    hot = blend(thumb[0, 0], 1.0)  # the top-attention tile, drawn with nearest-neighbour resampling
    assert (image == hot).all(axis=2).sum() > 100


def test_slide_labels_from_tile_annotations():
    """``tiles:CLASS``: a slide is positive when any tile carries CLASS; slides nobody annotated are left out."""
    from domainfm.domains.pathology.embed import Embeddings
    from domainfm.domains.pathology.slide_heads import slide_labels
    from domainfm.shared.errors import DomainfmError

    slide = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    label = np.array([-1, 1, 0, 0, 0, -1, -1, 1])  # classes: stroma 0, tumor 1; -1 unlabelled
    n = len(slide)
    attrs = {"slides": [{"path": f"s{i}.svs"} for i in range(4)], "label_names": ["stroma", "tumor"]}
    embeddings = Embeddings(
        Path("e.zarr"), np.zeros((n, 4), np.float32), np.zeros((n, 2), np.int64), slide, np.full(n, 0.5),
        label, np.zeros(n, np.int8), attrs,
    )  # fmt: skip
    names, mapping = slide_labels(embeddings, "tiles:tumor")
    assert names == ["no_tumor", "tumor"] and mapping == {0: 1, 1: 0, 3: 1}  # slide 2 has no labelled tile
    names, mapping = slide_labels(embeddings, "tiles:stroma")
    assert mapping == {0: 1, 1: 1, 3: 0}
    with pytest.raises(DomainfmError, match=r"no tile class 'necrosis'; the tiles' classes are: stroma, tumor"):
        slide_labels(embeddings, "tiles:necrosis")
