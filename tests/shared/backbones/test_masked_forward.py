"""Masked forward: ``Backbone.forward_features(x, mask=..., mask_token=...)`` (DINOv2/iBOT/SimMIM masking).

The references below are written from timm's own modules (patch embedding, class token, position
embedding, blocks or stages, final norm) with SimMIM's blend ``x * (1 - m) + token * m``; the backbone's
masked path must equal them, equal timm's ``forward_features`` when nothing is masked, hide the masked
patches' pixels completely, and keep working with PEFT adapters and prompts (they hook into the modules).
"""

import pytest
import timm
import torch
from torch import nn

from domainfm.shared.backbones import create_backbone, get_backbone_spec
from domainfm.shared.backbones.wrapper import Backbone
from domainfm.shared.peft.methods import apply_peft

TRANSFORMERS = ["test_vit", "test_flexivit", "test_swin", "test_swinv2", "test_swinv2_cr"]


def build(name: str, img_size: int = 64) -> Backbone:
    """A tiny random backbone whose blocks all act; ``test_swinv2_cr`` is a tiny timm ``swinv2_cr``.

    SwinV2 starts its post-norms at zero weight (every block the identity), so those are drawn around 1,
    as after training: otherwise the blocks and the adapters in them could not change the output.
    """
    torch.manual_seed(0)
    if name != "test_swinv2_cr":
        backbone = create_backbone(name, img_size=img_size)
    else:
        model = timm.create_model(
            "swinv2_cr_tiny_224",
            embed_dim=32,
            depths=(1, 1),
            num_heads=(2, 4),
            window_size=4,
            img_size=img_size,
            num_classes=0,
            pretrained=False,
        )
        backbone = Backbone(get_backbone_spec("satvision_toa_giant"), model, 3, img_size)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, nn.LayerNorm) and module.elementwise_affine and not module.weight.any():
                module.weight.normal_(1.0, 0.1)
    return backbone.eval()


def grid_of(backbone: Backbone, size: int) -> tuple[int, int]:
    patch = backbone.model.patch_embed.patch_size
    return size // patch[0], size // patch[1]


def random_mask(batch: int, grid: tuple[int, int], ratio: float = 0.4, seed: int = 1) -> torch.Tensor:
    scores = torch.rand(batch, grid[0] * grid[1], generator=torch.Generator().manual_seed(seed))
    return scores < ratio


def blend(embeddings: torch.Tensor, mask: torch.Tensor, token: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """SimMIM's ``x * (1 - m) + token * m`` over NHWC or NCHW patch embeddings."""
    if channels_last:
        weight = mask.reshape(*embeddings.shape[:-1], 1).float()
        return embeddings * (1 - weight) + token * weight
    weight = mask.reshape(embeddings.shape[0], 1, *embeddings.shape[2:]).float()
    return embeddings * (1 - weight) + token.view(-1, 1, 1) * weight


def reference(backbone: Backbone, images: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """The masked forward written out from timm's modules, at the model's own input size."""
    model = backbone.model
    if backbone.feature_format == "tokens":  # ViT, FlexiViT
        x = blend(model.patch_embed(images), mask, token, channels_last=True).flatten(1, 2)  # [B, N, D]
        prefix = [t.expand(len(x), -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
        if model.no_embed_class:  # FlexiViT: the position embedding skips the class token
            x = torch.cat([*prefix, x + model.pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + model.pos_embed
        x = model.norm_pre(model.patch_drop(x))  # VPT inserts its prompts here (a hook on norm_pre)
        for block in model.blocks:
            x = block(x)
        return model.norm(x)
    if hasattr(model, "stages"):  # swinv2_cr: NCHW throughout, no final norm
        x = blend(model.patch_embed(images), mask, token, channels_last=False)
        for stage in model.stages:
            x = stage(x)
        return x
    x = blend(model.patch_embed(images), mask, token, channels_last=True)  # Swin, SwinV2: NHWC
    for stage in model.layers:
        x = stage(x)
    return model.norm(x).permute(0, 3, 1, 2)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_masked_forward_equals_the_timm_reference_and_no_mask_equals_forward_features(name: str):
    backbone = build(name)
    images = torch.randn(2, 3, 64, 64)
    mask = random_mask(2, grid_of(backbone, 64))
    token = torch.randn(backbone.patch_embed_dim)
    with torch.no_grad():
        masked = backbone.forward_features(images, mask=mask, mask_token=token)
        assert max_diff(masked, reference(backbone, images, mask, token)) < 1e-6
        plain = backbone.forward_features(images)
        timm_features = backbone.model.forward_features(images)
        if getattr(backbone.model, "output_fmt", "NCHW") == "NHWC":
            timm_features = timm_features.permute(0, 3, 1, 2)
        assert torch.equal(plain, timm_features)  # mask=None is timm's forward, bit for bit
        unmasked = torch.zeros_like(mask)
        assert torch.equal(backbone.forward_features(images, mask=unmasked, mask_token=token), plain)
        assert not torch.allclose(masked, plain)


@pytest.mark.parametrize("size", [64, 32])
@pytest.mark.parametrize("name", ["test_vit", "test_flexivit"])
def test_vit_masks_at_any_input_size_and_in_either_mask_layout(name: str, size: int):
    backbone = build(name)
    images = torch.randn(2, 3, size, size)
    grid = grid_of(backbone, size)
    mask = random_mask(2, grid)
    token = torch.randn(backbone.patch_embed_dim)
    with torch.no_grad():
        flat = backbone.forward_features(images, mask=mask, mask_token=token)
        square = backbone.forward_features(images, mask=mask.view(2, *grid), mask_token=token)
        nothing = backbone.forward_features(images, mask=torch.zeros_like(mask), mask_token=token)
        assert torch.equal(flat, square)
        assert torch.equal(nothing, backbone.forward_features(images))
    assert flat.shape == (2, backbone.num_prefix_tokens + grid[0] * grid[1], backbone.embed_dim)


def pixel_mask(mask: torch.Tensor, backbone: Backbone, size: int) -> torch.Tensor:
    """The patch mask ``[B, N]`` as a pixel mask ``[B, 1, size, size]``."""
    grid = grid_of(backbone, size)
    patch = size // grid[0]
    cells = mask.view(-1, 1, *grid)
    return cells.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_masked_patches_reach_the_output_only_through_the_mask_token(name: str):
    backbone = build(name)
    images = torch.randn(2, 3, 64, 64)
    mask = random_mask(2, grid_of(backbone, 64))
    hidden = pixel_mask(mask, backbone, 64)
    token = torch.randn(backbone.patch_embed_dim, requires_grad=True)
    images.requires_grad_(True)
    out = backbone.forward_features(images, mask=mask, mask_token=token)
    (out * torch.randn_like(out)).sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0  # the mask token is learned
    assert torch.all(images.grad.masked_select(hidden) == 0)  # masked pixels get no gradient
    assert images.grad.masked_select(~hidden).abs().sum() > 0
    with torch.no_grad():
        repainted = torch.where(hidden, torch.randn_like(images), images)  # other pixels under the mask
        assert torch.equal(backbone.forward_features(repainted, mask=mask, mask_token=token), out)
        other_token = backbone.forward_features(images, mask=mask, mask_token=token + 1)
        assert not torch.allclose(other_token, out)


@pytest.mark.parametrize("name", ["test_vit", "test_swinv2"])
def test_gradient_checkpointing_gives_the_same_masked_forward(name: str):
    backbone = build(name)  # eval mode: checkpointing still runs whenever gradients are recorded
    images = torch.randn(2, 3, 64, 64)
    mask = random_mask(2, grid_of(backbone, 64))
    token = torch.randn(backbone.patch_embed_dim, requires_grad=True)
    plain = backbone.forward_features(images, mask=mask, mask_token=token)
    (grad,) = torch.autograd.grad(plain.sum(), token)
    backbone.set_grad_checkpointing(True)
    checkpointed = backbone.forward_features(images, mask=mask, mask_token=token)
    (checkpointed_grad,) = torch.autograd.grad(checkpointed.sum(), token)
    assert max_diff(checkpointed.detach(), plain.detach()) < 1e-6 and max_diff(checkpointed_grad, grad) < 1e-5


PEFT = [
    ("test_vit", "dvpt", {"bottleneck": 8, "prompts": 4, "share_every": 1}),
    ("test_vit", "lora", {"rank": 4}),
    ("test_vit", "vpt_shallow", {"tokens": 3}),
    ("test_vit", "vpt_deep", {"tokens": 3}),
    ("test_flexivit", "vpt_shallow", {"tokens": 3}),
    ("test_swinv2", "dvpt", {"bottleneck": 8, "prompts": 4}),
    ("test_swinv2", "lora", {"rank": 4}),
]


@pytest.mark.parametrize(("name", "method", "options"), PEFT, ids=[f"{n}-{m}" for n, m, _ in PEFT])
def test_peft_adapters_and_prompts_act_in_the_masked_forward(name: str, method: str, options: dict):
    backbone = apply_peft(build(name), method, **options).eval()
    adapter = {k: p for k, p in backbone.named_parameters() if p.requires_grad}
    assert adapter
    with torch.no_grad():  # non-zero adapters (LoRA's B starts at zero), so that they change the output
        for parameter in adapter.values():
            parameter.copy_(torch.randn_like(parameter) * 0.1)
    images = torch.randn(2, 3, 64, 64)
    mask = random_mask(2, grid_of(backbone, 64))
    token = torch.randn(backbone.patch_embed_dim, requires_grad=True)
    masked = backbone.forward_features(images, mask=mask, mask_token=token)
    with torch.no_grad():
        assert max_diff(masked, reference(backbone, images, mask, token)) < 1e-6
        plain = backbone.forward_features(images)
        assert masked.shape == plain.shape  # VPT's prompts are in both
        assert torch.equal(backbone.forward_features(images, mask=torch.zeros_like(mask), mask_token=token), plain)
    if method.startswith("vpt"):
        prompts = options["tokens"]
        assert plain.shape[1] == backbone.num_prefix_tokens + prompts + mask.shape[1]
    (masked * torch.randn_like(masked)).sum().backward()
    assert token.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.values()), method


def test_masks_that_do_not_fit_fail_clearly():
    backbone = build("test_vit")
    images = torch.randn(2, 3, 64, 64)
    token = torch.zeros(backbone.patch_embed_dim)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="no mask_token"):
        backbone.forward_features(images, mask=mask)
    with pytest.raises(TypeError, match="boolean"):
        backbone.forward_features(images, mask=mask.float(), mask_token=token)
    with pytest.raises(ValueError, match="does not fit"):
        backbone.forward_features(images, mask=torch.zeros(2, 15, dtype=torch.bool), mask_token=token)
    with pytest.raises(ValueError, match="mask_token must be"):
        backbone.forward_features(images, mask=mask, mask_token=torch.zeros(3))
    resnet = create_backbone("test_resnet").eval()
    assert resnet.forward_features(images).ndim == 4  # no mask: unchanged
    with pytest.raises(ValueError, match="no patch embedding"):
        resnet.forward_features(images, mask=mask, mask_token=token)


def test_the_mask_token_width_is_the_patch_embedding_width():
    assert build("test_vit").patch_embed_dim == build("test_vit").embed_dim
    swin = build("test_swinv2")
    assert swin.patch_embed_dim == swin.feature_info[0]["num_chs"] < swin.embed_dim
    assert build("test_swinv2_cr").patch_embed_dim == 32
