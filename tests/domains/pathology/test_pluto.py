"""PLUTO-style objective: token forward, masking, crops, losses, gradients, EMA teacher and a short training."""

import itertools
import math

import pytest
import torch

from domainfm.domains.pathology import pluto
from domainfm.domains.pathology.pluto import (
    Pluto,
    PlutoConfig,
    crop_transforms,
    multi_crop,
    random_token_mask,
    teacher_momentum,
)
from domainfm.shared.backbones import create_backbone

TINY = {"out_dim": 256, "head_hidden": 128, "head_bottleneck": 64, "global_size": 64, "local_size": 32, "n_local": 2}


def tiny_model(name: str = "test_vit", seed: int = 0, **overrides) -> Pluto:
    torch.manual_seed(seed)
    return Pluto(create_backbone(name, img_size=64), PlutoConfig(**{**TINY, **overrides}))


def test_the_student_sees_the_mask_token_instead_of_the_masked_patches():
    model = tiny_model().eval()
    images = torch.randn(2, 3, 64, 64)
    mask = random_token_mask(2, 16, 0.4, torch.Generator().manual_seed(0))
    assert torch.all(mask.sum(1) == round(0.4 * 16))
    hidden = mask.view(2, 1, 4, 4).repeat_interleave(16, 2).repeat_interleave(16, 3)  # row-major patch grid
    with torch.no_grad():
        masked = model.backbone.forward_features(images, mask=mask, mask_token=model.mask_token)
        repainted = torch.where(hidden, torch.randn_like(images), images)
        assert torch.equal(model.backbone.forward_features(repainted, mask=mask, mask_token=model.mask_token), masked)
        assert not torch.allclose(masked, model.backbone.forward_features(images))
        other = model.backbone.forward_features(images, mask=mask, mask_token=model.mask_token + 1)
        assert not torch.allclose(other, masked)


def test_crops_stay_inside_the_image_and_are_reproducible():
    theta = crop_transforms(200, (0.05, 1.0), torch.Generator().manual_seed(0))
    reach = theta[:, :, :2].abs().sum(-1) + theta[:, :, 2].abs()  # furthest sampled coordinate per axis
    assert torch.all(reach <= 1 + 1e-6)
    images = torch.randn(3, 3, 64, 64)
    crops = multi_crop(images, 2, 32, (0.2, 0.5), torch.Generator().manual_seed(1), jitter=0.1)
    assert crops.shape == (6, 3, 32, 32)
    assert torch.equal(crops, multi_crop(images, 2, 32, (0.2, 0.5), torch.Generator().manual_seed(1), jitter=0.1))


def test_every_enabled_loss_term_is_finite_and_positive_and_sums_to_the_total():
    model = tiny_model()
    out = model(torch.randn(4, 3, 64, 64), torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "dino", "ibot", "mae", "fourier"}
    for term in ("dino", "ibot", "mae", "fourier"):
        assert torch.isfinite(out[term]) and out[term] > 0, term
    expected = out["dino"] + out["ibot"] + out["mae"] + 0.1 * out["fourier"]
    assert torch.allclose(out["loss"], expected)


def test_a_zero_fourier_weight_gives_exactly_zero_and_skips_the_computation(monkeypatch: pytest.MonkeyPatch):
    def fail(*args, **kwargs):
        raise AssertionError("fourier_loss must not run when fourier_weight is 0")

    monkeypatch.setattr(pluto, "fourier_loss", fail)
    model = tiny_model(fourier_weight=0.0)
    out = model(torch.randn(4, 3, 64, 64), torch.Generator().manual_seed(0))
    assert out["fourier"].item() == 0.0
    assert torch.allclose(out["loss"], out["dino"] + out["ibot"] + out["mae"])


def test_gradients_reach_the_student_only_and_centres_update():
    model = tiny_model()
    model(torch.randn(4, 3, 64, 64), torch.Generator().manual_seed(0))["loss"].backward()
    for name, module in {"backbone": model.backbone, "head": model.head, "decoder": model.decoder}.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    for param in [*model.teacher.parameters(), *model.teacher_head.parameters()]:
        assert param.grad is None and not param.requires_grad
    assert model.center.abs().sum() > 0 and model.patch_center.abs().sum() > 0
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert not trainable & {id(p) for p in model.teacher.parameters()}


def test_separate_heads_linear_decoder_and_no_local_crops_also_train():
    model = tiny_model("test_flexivit", shared_head=False, decoder_depth=0, n_local=0)
    assert model.patch_head is not None and model.teacher_patch_head is not None
    out = model(torch.randn(2, 3, 64, 64), torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.patch_head.prototypes.grad is not None
    assert all(not p.requires_grad for p in model.teacher_patch_head.parameters())


def test_the_teacher_stays_in_eval_mode_and_is_the_encoder():
    model = tiny_model().train()
    assert model.backbone.training and not model.teacher.training and not model.teacher_head.training
    assert model.encoder() is model.teacher


def test_centres_warm_start_on_the_first_training_batch_and_stay_fixed_in_eval():
    model = tiny_model().eval()
    images = torch.randn(4, 3, 64, 64)
    model(images, torch.Generator().manual_seed(0))
    assert not model.center_ready and model.center.abs().sum() == 0
    model.train()
    model(images, torch.Generator().manual_seed(0))
    assert model.center_ready and model.patch_center_ready
    first = model.center.clone()
    model(images, torch.Generator().manual_seed(0))  # same crops: the batch mean equals the centre
    torch.testing.assert_close(model.center, first)
    model(images, torch.Generator().manual_seed(1))
    assert not torch.equal(model.center, first)


def test_crop_sizes_must_be_multiples_of_the_patch():
    with pytest.raises(ValueError, match="local_size"):
        tiny_model(local_size=40)


def test_update_teacher_is_an_exponential_moving_average():
    model = tiny_model()
    with torch.no_grad():
        for param in [*model.backbone.parameters(), *model.head.parameters()]:
            param.add_(torch.randn_like(param))
    pairs = [
        (model.backbone.model.patch_embed.proj.weight, model.teacher.model.patch_embed.proj.weight),
        (model.head.prototypes, model.teacher_head.prototypes),
    ]
    expected = [0.9 * t + 0.1 * s for s, t in pairs]
    model.update_teacher(0.9)
    for (_, teacher), want in zip(pairs, expected, strict=True):
        torch.testing.assert_close(teacher, want, rtol=1e-6, atol=1e-7)
    model.update_teacher(0.0)
    assert torch.equal(model.teacher.model.blocks[0].attn.qkv.weight, model.backbone.model.blocks[0].attn.qkv.weight)


def test_teacher_momentum_follows_a_cosine_from_base_to_one():
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert teacher_momentum(500, 100, 0.996) == pytest.approx(1.0)
    values = [teacher_momentum(step, 100) for step in range(101)]
    assert all(a <= b for a, b in itertools.pairwise(values))


def textures(n: int, generator: torch.Generator) -> torch.Tensor:
    """Half vertical stripes, half diagonal checks, random frequency and phase, plus noise."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    images = []
    for i in range(n):
        freq = 0.3 + 0.2 * torch.rand((), generator=generator)
        phase = 2 * math.pi * torch.rand((), generator=generator)
        base = (
            torch.sin(freq * xx + phase) if i % 2 == 0 else torch.sin(freq * (xx + yy) + phase) * torch.cos(freq * yy)
        )
        image = torch.stack([base, 0.5 * base, -base]) + 0.1 * torch.randn(3, 64, 64, generator=generator)
        images.append(image)
    return torch.stack(images)


def test_thirty_steps_of_adamw_lower_the_total_loss():
    model = tiny_model()
    generator = torch.Generator().manual_seed(0)
    data = textures(16, generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.04)
    losses = []
    for step in range(30):
        batch = data[torch.randperm(16, generator=generator)[:8]]
        loss = model(batch, generator)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_teacher(teacher_momentum(step, 30, 0.99))
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5  # seeds 0-5 drop by 1.3-1.9
