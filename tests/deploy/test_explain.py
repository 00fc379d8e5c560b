"""Explanations of deployed models: completeness, the model-randomisation sanity check, overlays, slides, CLI.

Backbone families: CNN (radiology ResNet), ViT (pathology ViT + DVPT), Swin (remote-sensing SwinV2).
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from domainfm.cli import main
from domainfm.shared.deploy import Deployable, build_network, load_deployable, read_input
from domainfm.shared.explain import ExplainError, attribute, render_overlay
from domainfm.shared.explain.sanity import randomised, spearman

FAMILIES = {"cnn": "radiology.classifier", "vit": "pathology.tile_classifier", "swin": "remote_sensing.cloud_mask"}
# Completeness: |sum(attributions) - (f(x) - f(baseline))| / |f(x) - f(baseline)|. ReLU/max-pool networks are
# piecewise linear along the path (the integrand jumps), so quadrature converges like 1/steps, erratically:
# with 2048 trapezoid steps the three families measured 1.3e-5 (CNN), 4.2e-4 (ViT) and 5.3e-4 (SwinV2).
# The negative control, gradient x (x - x') at the input alone (no path), is off by 88-141 %.
COMPLETENESS_TOLERANCE = 0.01
# Randomisation: Spearman correlation of |attribution| before vs after redrawing every weight. Measured
# -0.08..0.40 for IG on the sample inputs and seeds 0-1; an explanation that echoes the input scores exactly 1.
RANK_CORRELATION_LIMIT = 0.5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add synchronisation (100x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(deployables, kind: str, index: int = 0) -> tuple[Deployable, torch.Tensor]:
    checkpoint, inputs = deployables[kind]
    deployable = load_deployable(checkpoint)
    return deployable, read_input(inputs[index], deployable.card)


def _valid_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.width > 100 and image.height > 100
        return image.size


def _selected(deployable: Deployable, images: torch.Tensor, target: int) -> torch.Tensor:
    """The explained scalar, computed here from the raw network output (not through the explain package)."""
    with torch.no_grad():
        out = deployable.network(images)
    return out.flatten(2).sum(-1)[:, target] if deployable.card.task == "segmentation" else out[:, target]


@pytest.mark.parametrize("family", FAMILIES)
def test_integrated_gradients_are_complete(deployables, family: str):
    deployable, image = _load(deployables, FAMILIES[family])
    result = attribute(
        deployable,
        image,
        "integrated_gradients",
        n_steps=2048,
        integration="riemann_trapezoid",
        internal_batch_size=512,
    )
    transform = deployable.network.transform  # the default baseline: the input that standardises to zero
    baseline = (transform.mean / transform.record.scale).expand_as(image)
    score = float(_selected(deployable, image, result.target)[0])
    baseline_score = float(_selected(deployable, baseline, result.target)[0])
    difference = score - baseline_score
    assert abs(difference) > 1e-3, "the model must respond to the input for the check to mean anything"
    assert result.score == pytest.approx(score, rel=1e-5, abs=1e-5)
    assert result.baseline_score == pytest.approx(baseline_score, rel=1e-5, abs=1e-5)
    error = float(result.map.double().sum()) - difference
    assert abs(error) / abs(difference) < COMPLETENESS_TOLERANCE, (family, error, difference)
    assert result.delta == pytest.approx(error, abs=1e-4)  # captum's convergence delta is the same error
    assert result.map.shape == image.shape[1:]
    # Negative control: gradient x (x - baseline) at the input alone is not complete; the check catches it.
    x = image.clone().requires_grad_(True)
    out = deployable.network(x)
    scalar = (
        out.flatten(2).sum(-1)[0, result.target] if deployable.card.task == "segmentation" else out[0, result.target]
    )
    (gradient,) = torch.autograd.grad(scalar, x)
    one_point = float((gradient * (image - baseline)).sum())
    assert abs(one_point - difference) / abs(difference) > COMPLETENESS_TOLERANCE


def test_default_baseline_is_the_training_mean(deployables):
    from domainfm.shared.explain.baselines import make_baseline

    for kind in FAMILIES.values():
        deployable, image = _load(deployables, kind)
        baseline = make_baseline(deployable.network, image, "mean")
        standardised = deployable.network.transform(baseline)  # every deploy network transforms its input first
        torch.testing.assert_close(standardised, torch.zeros_like(standardised), atol=1e-4, rtol=0)
    with pytest.raises(ExplainError, match="unknown baseline 'grey'; choose from mean, zeros, blur"):
        attribute(deployable, image, "occlusion", baseline="grey")


def _rank_correlation(before: np.ndarray, after: np.ndarray) -> float:
    return float(spearmanr(np.abs(before).ravel(), np.abs(after).ravel()).statistic)


def _passes_randomisation(explain, deployable: Deployable, image: torch.Tensor) -> tuple[bool, float]:
    """Adebayo et al.'s check: the trained model's map vs the map with every weight redrawn.

    It passes when the rank correlation of |map| is low.
    """
    before, target = explain(deployable, image, None)
    after, _ = explain(randomised(deployable, seed=0), image, target)
    rho = _rank_correlation(before, after)
    return rho < RANK_CORRELATION_LIMIT, rho


@pytest.mark.parametrize("family", FAMILIES)
def test_attributions_fail_to_survive_weight_randomisation(deployables, family: str):
    deployable, image = _load(deployables, FAMILIES[family])
    trained_state = {k: v.clone() for k, v in deployable.network.state_dict().items()}
    scrambled = randomised(deployable, seed=0)
    with torch.no_grad():
        assert not torch.allclose(scrambled.network(image), deployable.network(image))
    for key, value in deployable.network.state_dict().items():  # the original is left as it was
        assert torch.equal(value, trained_state[key]), key

    def integrated_gradients(model: Deployable, x: torch.Tensor, target: int | None):
        result = attribute(model, x, "integrated_gradients", target, n_steps=64)
        return result.heatmap(), result.target

    def input_times_constant(model: Deployable, x: torch.Tensor, target: int | None):
        return 3.0 * x[0].sum(0).numpy(), target  # ignores the model: the failure the check must catch

    passed, rho = _passes_randomisation(integrated_gradients, deployable, image)
    assert passed, f"IG rank correlation {rho:.3f} after randomisation"
    control_passed, control_rho = _passes_randomisation(input_times_constant, deployable, image)
    assert not control_passed and control_rho == pytest.approx(1.0)


def test_spearman_helper_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    b[:20] = b[0]  # ties
    assert spearman(a, b) == pytest.approx(float(spearmanr(a, b).statistic), abs=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_shap_and_occlusion_write_overlays(deployables, family: str, tmp_path: Path):
    deployable, image = _load(deployables, FAMILIES[family])
    for method in ("gradient_shap", "occlusion"):
        result = attribute(deployable, image, method)
        assert result.map.shape == image.shape[1:]
        assert torch.isfinite(result.map).all() and result.map.abs().sum() > 0
        _valid_png(render_overlay(image, result, deployable.card, f"{family} {method}", tmp_path / f"{method}.png"))
    # One window over the whole input: every pixel's occlusion value is exactly f(x) - f(baseline).
    side = image.shape[-1]
    whole = attribute(deployable, image, "occlusion", window=side, stride=side, baseline="zeros")
    difference = float(
        _selected(deployable, image, whole.target)[0] - _selected(deployable, 0 * image, whole.target)[0]
    )
    torch.testing.assert_close(whole.map, torch.full_like(whole.map, difference), atol=1e-4, rtol=1e-4)


def test_segmentation_explains_the_map_sum(deployables):
    for kind in ("remote_sensing.cloud_mask", "remote_sensing.curtain", "segmentation.gms"):
        deployable, image = _load(deployables, kind)
        result = attribute(deployable, image, "integrated_gradients", n_steps=4)
        with torch.no_grad():
            expected = float(deployable.network(image).sum())  # logits (sigmoid cards) or probabilities (GMS)
        assert result.score == pytest.approx(expected, rel=1e-5)
        assert "sum over the map" in result.explained
        assert ("probabilities" in result.explained) == (deployable.card.activation == "none")


def _reference_rollout(deployable: Deployable, image: torch.Tensor) -> torch.Tensor:
    """Rollout from timm's own (unfused) attention probabilities, captured after the softmax."""
    model = next(m for m in deployable.network.modules() if hasattr(m, "blocks") and hasattr(m, "patch_embed"))
    captured, handles = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o.detach())))
    try:
        with torch.no_grad():
            deployable.network(image)
    finally:
        for block, handle in zip(model.blocks, handles, strict=True):
            block.attn.fused_attn = True
            handle.remove()
    rollout = torch.eye(captured[0].shape[-1])
    for attention in captured:
        a = attention[0].mean(0) + torch.eye(attention.shape[-1])
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    return rollout


def test_attention_rollout_on_the_vit(deployables, tmp_path: Path):
    deployable, image = _load(deployables, "pathology.tile_classifier")
    result = attribute(deployable, image, "attention_rollout")
    heat = result.map
    assert heat.shape == image.shape[-2:] and (heat >= 0).all()
    assert float(heat.sum()) == pytest.approx(1.0, abs=1e-5)  # documented: a distribution over the pixels
    rows, cols = result.details["patch_grid"]
    patch = image.shape[-1] // cols
    blocks = heat.reshape(rows, patch, cols, patch)
    assert torch.allclose(blocks, blocks[:, :1, :, :1].expand_as(blocks))  # constant within each patch
    assert result.details["extra_tokens"] == 1  # the class token; DVPT puts no prompt in the sequence
    reference = _reference_rollout(deployable, image)[0, -rows * cols :]
    torch.testing.assert_close(blocks.sum((1, 3)).flatten(), reference / reference.sum(), atol=1e-5, rtol=1e-4)
    assert result.details["patch_share"][0] == pytest.approx(float(reference.sum()), abs=1e-5)
    _valid_png(render_overlay(image, result, deployable.card, "rollout", tmp_path / "rollout.png"))


def test_attention_rollout_skips_vpt_prompt_tokens(deployables):
    deployable, image = _load(deployables, "pathology.tile_classifier")
    build = {**deployable.card.build, "peft": "vpt_deep", "peft_options": {"tokens": 3}}
    torch.manual_seed(0)
    vpt = Deployable(
        build_network(deployable.card.kind, build), dataclasses.replace(deployable.card, build=build), Path()
    )
    result = attribute(vpt, image, "attention_rollout")
    assert result.details["extra_tokens"] == 1 + 3 and result.details["tokens"] == 1 + 3 + 4
    assert float(result.map.sum()) == pytest.approx(1.0, abs=1e-5)
    assert 0 < result.details["patch_share"][0] < 1  # some of the class token's attention went to prompts


def test_attention_rollout_refuses_cnn_and_swin(deployables):
    for kind in ("radiology.classifier", "remote_sensing.cloud_mask"):
        deployable, image = _load(deployables, kind)
        with pytest.raises(ExplainError, match=r"ViT-family backbones.*integrated_gradients"):
            attribute(deployable, image, "attention_rollout")


def test_targets_by_name_and_index(deployables):
    deployable, image = _load(deployables, "pathology.tile_classifier")
    names = deployable.card.class_names
    whole = {"window": 32, "stride": 32}  # one occlusion: cheap
    assert attribute(deployable, image, "occlusion", target=names[2], **whole).target == 2
    assert attribute(deployable, image, "occlusion", target="3", **whole).target_name == names[3]
    predicted = int(deployable.network(image).argmax())
    assert attribute(deployable, image, "occlusion", **whole).target == predicted
    with pytest.raises(ExplainError, match=r"unknown target 'nope'.*0=background"):
        attribute(deployable, image, "occlusion", target="nope")
    with pytest.raises(ExplainError, match="unknown method"):
        attribute(deployable, image, "saliency")
    with pytest.raises(ExplainError, match=r"unknown option\(s\) \['n_step'\]"):
        attribute(deployable, image, "integrated_gradients", n_step=10)
    with pytest.raises(ExplainError, match="n_steps must be at least 2"):
        attribute(deployable, image, "integrated_gradients", n_steps=1)


def test_slide_overlay_from_tile_attributions(deployables, tmp_path: Path, capsys):
    checkpoint, _ = deployables["pathology.tile_classifier"]
    slide = tmp_path / "slide.svs"
    assert main(["pathology", "phantom", "--out", str(slide), "--size", "1024"]) == 0
    capsys.readouterr()
    out = tmp_path / "slide.png"
    command = ["explain", "--checkpoint", str(checkpoint), "--input", str(slide), "--out", str(out)]
    assert main([*command, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tiles"] > 0 and summary["mpp"] == 2.0 and summary["tile_px"] == 32  # the training mpp
    assert sum(summary["predicted_classes"].values()) == summary["tiles"]
    assert 0 < summary["painted_fraction"] < 1  # tissue tiles coloured, background left as it is
    assert summary["options"]["n_steps"] == 16 and summary["median_relative_delta"] < 0.05  # slide default
    _valid_png(out)
    assert main([*command[:-1], str(tmp_path / "occlusion.png"), "--method", "occlusion", "--target", "tumor"]) == 0
    assert "target: tumor" in capsys.readouterr().out
    _valid_png(tmp_path / "occlusion.png")


def test_cli_end_to_end(deployables, tmp_path: Path, capsys):
    checkpoint, inputs = deployables["radiology.classifier"]
    out = tmp_path / "explained.png"
    out.write_bytes(b"a user's picture")
    command = ["explain", "--checkpoint", str(checkpoint), "--input", str(inputs[0]), "--out", str(out)]
    for extra in ([], ["--overwrite"]):  # a file domainfm did not write is never replaced
        assert main([*command, *extra]) == 2
        assert "domainfm did not write" in capsys.readouterr().err and out.read_bytes() == b"a user's picture"
    out.unlink()
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "logit of label" in printed and f"wrote {out}" in printed
    _valid_png(out)
    assert main(command) == 2 and "pass --overwrite" in capsys.readouterr().err  # ours: replaced on request only
    command.append("--overwrite")
    assert main([*command, "--method", "occlusion", "--target", "effusion", "--json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert numbers["target_name"] == "effusion" and numbers["method"] == "occlusion"
    assert main([*command, "--target", "spleen"]) == 2
    error = capsys.readouterr().err
    assert "unknown target 'spleen'" in error and "cardiomegaly" in error
    assert main([*command, "--method", "attention_rollout"]) == 2
    assert "ViT-family" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    assert (
        main(["explain", "--checkpoint", str(checkpoint), "--input", str(broken), "--out", str(out), "--overwrite"])
        == 2
    )
    assert "cannot be read" in capsys.readouterr().err
