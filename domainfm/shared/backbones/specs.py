"""The backbone registry: named specs over timm architectures.

Every entry names a timm architecture plus the keyword arguments that make it ours (image size,
tiny widths for tests, the SatVision-TOA giant shape). Nothing here builds a model; ``create_backbone``
does. Papers: ViT (Dosovitskiy et al., arXiv 2010.11929), FlexiViT (Beyer et al., arXiv 2212.08013),
Swin (Liu et al., arXiv 2103.14030), SwinV2 (Liu et al., arXiv 2111.09883), ResNet (He et al.,
arXiv 1512.03385), SatVision-TOA (arXiv 2411.17000), DINOv2 (Oquab et al., arXiv 2304.07193).

Published encoders rebuilt from converted checkpoints (``domainfm models``) keep the publisher's timm
arguments here. Arguments that are classes in timm (a SwiGLU MLP, a LayerNorm with another eps) are
module-level functions below, so this module imports no model code and checkpoint metadata never has to
hold them: it stores the spec's name plus JSON overrides (widths, depth, size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from domainfm.shared.registry import Registry

Family = Literal["vit", "flexivit", "swin", "swinv2", "resnet"]
TOKEN_FAMILIES: frozenset[str] = frozenset({"vit", "flexivit"})


@dataclass(frozen=True)
class BackboneSpec:
    """What a registered backbone is, readable without building it.

    Attributes:
        name: Registry key, the name users pass to ``create_backbone``.
        timm_name: The timm architecture it is built from (random init; nothing downloads).
        family: Architecture family; decides the feature format and which PEFT methods apply.
        img_size: Default input size (square); ``None`` for fully convolutional families.
        description: One line for listings.
        paper: Where the architecture comes from.
        timm_kwargs: Extra keyword arguments for ``timm.create_model``.
        test_variant: A tiny random-initialised model for CPU tests.
        giant: Too large to instantiate in tests or on CPU (registered for configs and FSDP docs).
    """

    name: str
    timm_name: str
    family: Family
    img_size: int | None
    description: str
    paper: str
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    test_variant: bool = False
    giant: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "timm_kwargs", dict(self.timm_kwargs))  # a copy: registered specs stay as built

    @property
    def feature_format(self) -> str:
        """``"tokens"`` (``[B, N, D]``) for ViT families, ``"nchw"`` (``[B, C, H, W]``) otherwise."""
        return "tokens" if self.family in TOKEN_FAMILIES else "nchw"


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def swiglu_packed(**kwargs: Any) -> Any:
    """The ``SwiGLUPacked`` MLP of timm (fc1 packs gate and value; DINOv2's SwiGLU FFN), imported when built."""
    from timm.layers import SwiGLUPacked

    return SwiGLUPacked(**kwargs)


def layer_norm_eps12(normalized_shape: int, **kwargs: Any) -> Any:
    """``nn.LayerNorm`` with eps 1e-12 (Hugging Face ``ViTModel``'s default; timm uses 1e-6)."""
    from torch import nn

    return nn.LayerNorm(normalized_shape, eps=1e-12, **kwargs)


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Adds a spec to the registry; its name must be new."""
    return BACKBONES.add(spec.name, spec)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec registered under ``name`` (unknown names list the close matches)."""
    return BACKBONES.get(name)


def list_backbones(*, include_test: bool = True, include_giant: bool = True) -> list[str]:
    """Registered backbone names, optionally without tiny test variants or giant specs."""
    return [
        name
        for name in BACKBONES.names()
        if (include_test or not BACKBONES.get(name).test_variant) and (include_giant or not BACKBONES.get(name).giant)
    ]


_VIT = "ViT, Dosovitskiy et al. 2021 (arXiv 2010.11929)"
_FLEXIVIT = "FlexiViT, Beyer et al. 2023 (arXiv 2212.08013)"
_SWIN = "Swin Transformer, Liu et al. 2021 (arXiv 2103.14030)"
_SWINV2 = "Swin Transformer V2, Liu et al. 2022 (arXiv 2111.09883)"
_RESNET = "ResNet, He et al. 2016 (arXiv 1512.03385)"
# ViTs accept any input size (position embeddings interpolated on the fly): X-rays, tiles and chips differ.
_DYNAMIC = {"dynamic_img_size": True}
_TINY_SWIN = {"embed_dim": 32, "depths": (1, 1), "num_heads": (2, 4), "window_size": 4}
_DINOV2 = "DINOv2, Oquab et al. 2023 (arXiv 2304.07193)"
# UNI2-h's published timm kwargs (MahmoodLab/UNI2-h model card) over timm's vit_giant_patch14_224.
_UNI2_H = {
    "patch_size": 14,
    "embed_dim": 1536,
    "depth": 24,
    "num_heads": 24,
    "init_values": 1e-5,
    "mlp_ratio": 2.66667 * 2,
    "no_embed_class": True,
    "mlp_layer": swiglu_packed,
    "act_layer": "silu",
    "reg_tokens": 8,
}
# Virchow's published timm kwargs (paige-ai/Virchow config.json + the mlp/act layers its card passes).
_VIRCHOW = {"init_values": 1e-5, "mlp_ratio": 5.3375, "mlp_layer": swiglu_packed, "act_layer": "silu"}

for _spec in (
    BackboneSpec("vit_small_patch16_224", "vit_small_patch16_224", "vit", 224, "ViT-S/16, 22 M", _VIT, _DYNAMIC),
    BackboneSpec("vit_base_patch16_224", "vit_base_patch16_224", "vit", 224, "ViT-B/16, 86 M", _VIT, _DYNAMIC),
    BackboneSpec(
        "flexivit_small",
        "flexivit_small",
        "flexivit",
        224,
        "FlexiViT-S (PLUTO's backbone), 22 M; patch size resampled from checkpoints",
        _FLEXIVIT,
        _DYNAMIC,
    ),
    BackboneSpec("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", "swin", 224, "Swin-T, 28 M", _SWIN),
    BackboneSpec("swinv2_tiny_window8_256", "swinv2_tiny_window8_256", "swinv2", 256, "SwinV2-T, 28 M", _SWINV2),
    BackboneSpec("resnet50", "resnet50", "resnet", None, "ResNet-50 (ConVIRT's image encoder), 24 M", _RESNET),
    # SatVision-TOA giant as pytorch-caney builds it: Microsoft's SwinV2 (timm's plain ``swinv2``, whose
    # state dict timm maps from Microsoft's) plus a LayerNorm after every 6th block of each stage
    # (``extra_norm_period``, added by domainfm: ``backbones.periodic_norm``).
    BackboneSpec(
        "satvision_toa_giant",
        "swinv2_base_window8_256",
        "swinv2",
        128,
        "SatVision-TOA giant SwinV2 (~2.6 B): 14 MODIS bands, patch 4, window 8, embed 512, depths 2-2-42-2, "
        "extra norm every 6 blocks",
        "SatVision-TOA, NASA GSFC 2024 (arXiv 2411.17000); " + _SWINV2,
        {
            "in_chans": 14,
            "embed_dim": 512,
            "depths": (2, 2, 42, 2),
            "num_heads": (16, 32, 64, 128),
            "window_size": 8,
            "extra_norm_period": 6,
            "drop_path_rate": 0.1,
        },
        giant=True,
    ),
    # Published foundation encoders (``domainfm models list``): full-size architectures, loaded from
    # converted checkpoints (``domainfm models convert``), whose metadata may override the widths.
    BackboneSpec(
        "uni",
        "vit_large_patch16_224",
        "vit",
        224,
        "UNI ViT-L/16 (histology, Mahmood lab): LayerScale 1e-5, class-token pooling",
        "UNI, Chen et al. 2024 (Nature Medicine, doi:10.1038/s41591-024-02857-3); " + _VIT,
        {**_DYNAMIC, "init_values": 1e-5},
        giant=True,
    ),
    BackboneSpec(
        "uni2_h",
        "vit_giant_patch14_224",
        "vit",
        224,
        "UNI2-h ViT-H/14 (Mahmood lab): 1536 wide, depth 24, SwiGLU, 8 registers, LayerScale 1e-5",
        "UNI, Chen et al. 2024 (Nature Medicine, doi:10.1038/s41591-024-02857-3); " + _VIT,
        {**_DYNAMIC, **_UNI2_H},
        giant=True,
    ),
    BackboneSpec(
        "virchow",
        "vit_huge_patch14_224",
        "vit",
        224,
        "Virchow ViT-H/14 (Paige): SwiGLU + SiLU, mlp_ratio 5.3375, LayerScale 1e-5; embedding class + mean token",
        "Virchow, Vorontsov et al. 2024 (arXiv 2309.07778); " + _VIT,
        {**_DYNAMIC, **_VIRCHOW},
        giant=True,
    ),
    BackboneSpec(
        "virchow2",
        "vit_huge_patch14_224",
        "vit",
        224,
        "Virchow2 ViT-H/14 (Paige): Virchow's blocks with 4 registers; embedding class + mean patch token",
        "Virchow2, Zimmermann et al. 2024 (arXiv 2408.00738); " + _VIT,
        {**_DYNAMIC, **_VIRCHOW, "reg_tokens": 4},
        giant=True,
    ),
    BackboneSpec(
        "h_optimus_0",
        "vit_giant_patch14_reg4_dinov2",
        "vit",
        224,
        "H-optimus-0 ViT-g/14 (Bioptimus): DINOv2 giant, SwiGLU, 4 registers, LayerScale 1e-5, fixed 224 input",
        "H-optimus-0, Saillard et al. 2024 (Bioptimus, github.com/bioptimus/releases); " + _DINOV2,
        {"init_values": 1e-5, "dynamic_img_size": False},
        giant=True,
    ),
    BackboneSpec(
        "h_optimus_1",
        "vit_giant_patch14_reg4_dinov2",
        "vit",
        224,
        "H-optimus-1 ViT-g/14 (Bioptimus): H-optimus-0's architecture, retrained on more slides",
        "H-optimus-1, Bioptimus 2025 (github.com/bioptimus/releases); " + _DINOV2,
        {"init_values": 1e-5, "dynamic_img_size": False},
        giant=True,
    ),
    BackboneSpec(
        "prov_gigapath",
        "vit_giant_patch14_dinov2",
        "vit",
        224,
        "Prov-GigaPath tile encoder ViT-g (Providence/Microsoft): DINOv2 giant blocks, SwiGLU, patch 16 at 224",
        "Prov-GigaPath, Xu et al. 2024 (Nature, doi:10.1038/s41586-024-07441-w); " + _DINOV2,
        {**_DYNAMIC, "init_values": 1e-5, "patch_size": 16, "mlp_ratio": 5.33334},
        giant=True,
    ),
    BackboneSpec(
        "phikon",
        "vit_base_patch16_224",
        "vit",
        224,
        "Phikon ViT-B/16 (Owkin, iBOT): Hugging Face ViTModel, LayerNorm eps 1e-12",
        "Phikon, Filiot et al. 2023 (medRxiv, doi:10.1101/2023.07.21.23292757); " + _VIT,
        {**_DYNAMIC, "norm_layer": layer_norm_eps12},
        giant=True,
    ),
    BackboneSpec(
        "phikon_v2",
        "vit_large_patch16_224",
        "vit",
        224,
        "Phikon-v2 ViT-L/16 (Owkin, DINOv2): Hugging Face Dinov2Model, LayerScale",
        "Phikon-v2, Filiot et al. 2024 (arXiv 2409.09173); " + _DINOV2,
        {**_DYNAMIC, "init_values": 1e-5},
        giant=True,
    ),
    BackboneSpec(
        "rad_dino",
        "vit_base_patch14_dinov2",
        "vit",
        518,
        "RAD-DINO ViT-B/14 (Microsoft, DINOv2 on chest X-rays) at 518: LayerScale, one class token, no registers",
        "RAD-DINO, Perez-Garcia et al. 2024 (arXiv 2401.10815); " + _DINOV2,
        dict(_DYNAMIC),
        giant=True,
    ),
    BackboneSpec(
        "biomedclip",
        "vit_base_patch16_224",
        "vit",
        224,
        "BiomedCLIP image tower ViT-B/16 (Microsoft, open_clip timm trunk); class-token pooling",
        "BiomedCLIP, Zhang et al. 2023 (arXiv 2303.00915); " + _VIT,
        dict(_DYNAMIC),
        giant=True,
    ),
    # Tiny random-initialised variants of each family, for CPU tests and the quickstart.
    BackboneSpec(
        "test_vit",
        "vit_small_patch16_224",
        "vit",
        64,
        "tiny ViT for tests (d=64, depth 2)",
        _VIT,
        {**_DYNAMIC, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0},
        test_variant=True,
    ),
    BackboneSpec(
        "test_flexivit",
        "flexivit_small",
        "flexivit",
        64,
        "tiny FlexiViT for tests (d=48, depth 2)",
        _FLEXIVIT,
        {**_DYNAMIC, "embed_dim": 48, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0},
        test_variant=True,
    ),
    BackboneSpec(
        "test_swin",
        "swin_tiny_patch4_window7_224",
        "swin",
        64,
        "tiny Swin for tests",
        _SWIN,
        _TINY_SWIN,
        test_variant=True,
    ),
    BackboneSpec(
        "test_swinv2",
        "swinv2_tiny_window8_256",
        "swinv2",
        64,
        "tiny SwinV2 for tests",
        _SWINV2,
        _TINY_SWIN,
        test_variant=True,
    ),
    BackboneSpec(
        "test_resnet",
        "test_resnet",
        "resnet",
        None,
        "timm's tiny ResNet for tests",
        _RESNET,
        test_variant=True,
    ),
):
    register_backbone(_spec)
