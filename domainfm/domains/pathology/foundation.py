"""Pathology foundation encoders users hold, as ``domainfm models`` converts and pathology verbs use them.

Each entry carries the publisher's preprocessing as an :class:`InputTransform`: RGB tiles at the stated
microns per pixel, resized to the model's input, scaled to [0, 1] and standardised with the publisher's
mean/std. Getting any of these wrong is silent and ruins embeddings, so the record travels with the
converted checkpoint and every verb applies it.

Papers: UNI/UNI2 (Chen et al., Nature Medicine 2024); Virchow (Vorontsov et al., arXiv 2309.07778; Nature
Medicine 2024); Virchow2 (Zimmermann et al., arXiv 2408.00738); H-optimus-0/1 (Saillard et al., Bioptimus
2024, github.com/bioptimus/releases); Prov-GigaPath (Xu et al., Nature 2024); Phikon (Filiot et al. 2023,
medRxiv doi:10.1101/2023.07.21.23292757); Phikon-v2 (Filiot et al., arXiv 2409.09173). Facts that could not
be checked against the publisher's files offline are said so in each entry's ``notes``.
"""

from __future__ import annotations

from domainfm.shared.foundation.catalogue import FoundationModel
from domainfm.shared.model.transform import InputTransform

RGB = ["red", "green", "blue"]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# H-optimus-0's own statistics (bioptimus/H-optimus-0 model card and timm pretrained_cfg).
H_OPTIMUS_MEAN = [0.707223, 0.578729, 0.703617]
H_OPTIMUS_STD = [0.211883, 0.230117, 0.177517]
VERBS = ("pathology embed", "pathology probe", "pathology train", "pathology mil")


def tile_transform(
    size: int, mpp: float, mean: list[float], std: list[float], publisher: str | None = None
) -> InputTransform:
    """RGB tiles (0..255) at ``mpp``, resized to ``size``, scaled to [0, 1] and standardised.

    ``publisher`` describes the publisher's own resizing where it is not a plain resize to ``size``.
    """
    details: dict[str, object] = {"mpp": mpp, "units": "RGB 0..255, scaled to [0, 1] before mean/std"}
    if publisher:
        details["publisher_transform"] = publisher
    return InputTransform(
        channels=RGB,
        size=[size, size],
        geometry="resize",
        scale=1 / 255,
        mean=mean,
        std=std,
        quantise="uint8",
        input_range=[0.0, 255.0],
        details=details,
    )


FOUNDATION_MODELS: tuple[FoundationModel, ...] = (
    FoundationModel(
        name="uni",
        title="UNI (ViT-L/16, Mahmood lab)",
        backbone="uni",
        layout="timm",
        transform=tile_transform(224, 0.5, IMAGENET_MEAN, IMAGENET_STD),
        domain="pathology",
        paper="Chen et al., Towards a general-purpose foundation model for computational pathology, Nature "
        "Medicine 2024",
        licence="CC-BY-NC-ND-4.0 (research only)",
        source="Hugging Face MahmoodLab/UNI (gated): pytorch_model.bin (timm keys); also config.json",
        gated=True,
        verbs=VERBS,
    ),
    FoundationModel(
        name="uni2_h",
        title="UNI2-h (ViT-H/14, Mahmood lab)",
        backbone="uni2_h",
        layout="timm",
        transform=tile_transform(224, 0.5, IMAGENET_MEAN, IMAGENET_STD),
        domain="pathology",
        paper="Chen et al., Towards a general-purpose foundation model for computational pathology, Nature "
        "Medicine 2024 (UNI2-h: the model card's update)",
        licence="CC-BY-NC-ND-4.0 (research only)",
        source="Hugging Face MahmoodLab/UNI2-h (gated): pytorch_model.bin (timm keys); config.json beside it",
        gated=True,
        verbs=VERBS,
        notes="Embedding: class token (1536). The hub config.json cannot hold the SwiGLU/SiLU layers the card "
        "passes to timm; the backbone spec carries them. mpp 0.5 (20x) as for UNI: not stated for UNI2-h on the "
        "card as read offline.",
    ),
    FoundationModel(
        name="virchow",
        title="Virchow (ViT-H/14, Paige)",
        backbone="virchow",
        layout="timm",
        transform=tile_transform(224, 0.5, IMAGENET_MEAN, IMAGENET_STD),
        domain="pathology",
        pooling="cls_mean",
        paper="Vorontsov et al., A foundation model for clinical-grade computational pathology and rare cancers "
        "detection, Nature Medicine 2024 (arXiv 2309.07778)",
        licence="Apache-2.0 + Paige terms",
        source="Hugging Face paige-ai/Virchow (gated): pytorch_model.bin or model.safetensors (timm keys); "
        "config.json beside it",
        gated=True,
        verbs=VERBS,
        notes="Embedding (model card): concat(class token, mean of the 256 patch tokens) = 2560 values, Paige asks "
        "for an institutional e-mail and research use; "
        "pooling cls_mean. Tiles at 20x (0.5 mpp).",
    ),
    FoundationModel(
        name="virchow2",
        title="Virchow2 (ViT-H/14 with 4 registers, Paige)",
        backbone="virchow2",
        layout="timm",
        transform=tile_transform(224, 0.5, IMAGENET_MEAN, IMAGENET_STD),
        domain="pathology",
        pooling="cls_mean",
        paper="Zimmermann et al., Virchow2: Scaling self-supervised mixed magnification models in pathology, "
        "arXiv 2408.00738",
        licence="CC-BY-NC-ND-4.0 (research only)",
        source="Hugging Face paige-ai/Virchow2 (gated): pytorch_model.bin or model.safetensors (timm keys); "
        "config.json beside it",
        gated=True,
        verbs=VERBS,
        notes="Embedding (model card): concat(class token, mean of the patch tokens after the 4 registers) = "
        "2560 values, pooling cls_mean. Trained on mixed magnifications (5x-40x); 0.5 mpp (20x) is the usual "
        "setting. Whether the position embedding covers the class and register tokens (timm no_embed_class) is "
        "read from config.json; a mismatch fails on pos_embed's shape.",
    ),
    FoundationModel(
        name="h_optimus_0",
        title="H-optimus-0 (ViT-g/14 with 4 registers, Bioptimus)",
        backbone="h_optimus_0",
        layout="timm",
        transform=tile_transform(224, 0.5, H_OPTIMUS_MEAN, H_OPTIMUS_STD),
        domain="pathology",
        paper="Saillard et al., H-optimus-0, Bioptimus 2024 (github.com/bioptimus/releases)",
        licence="Apache-2.0",
        source="Hugging Face bioptimus/H-optimus-0 (access form): model.safetensors or pytorch_model.bin (timm "
        "keys); config.json beside it. The original checkpoint.pth (bioptimus/releases) converts with "
        "--layout dinov2_github if it holds the DINOv2 code's keys",
        gated=True,
        verbs=VERBS,
        notes="Embedding: class token (1536). The card: 224x224 tiles at 0.5 mpp, timm created with "
        "init_values=1e-5, dynamic_img_size=False (so exactly 224 inputs).",
    ),
    FoundationModel(
        name="h_optimus_1",
        title="H-optimus-1 (ViT-g/14 with 4 registers, Bioptimus)",
        backbone="h_optimus_1",
        layout="timm",
        transform=tile_transform(224, 0.5, H_OPTIMUS_MEAN, H_OPTIMUS_STD),
        domain="pathology",
        paper="Bioptimus, H-optimus-1, 2025 (github.com/bioptimus/releases)",
        licence="non-commercial (unverified)",
        source="Hugging Face bioptimus/H-optimus-1 (gated): model.safetensors or pytorch_model.bin (timm keys); "
        "config.json beside it",
        gated=True,
        verbs=VERBS,
        notes="Licence: Bioptimus non-commercial terms on the model card (not verified offline). "
        "Architecture and mean/std taken as H-optimus-0's (same card recipe); not verified offline "
        "against H-optimus-1's own files. A different width fails the strict shape check by name.",
    ),
    FoundationModel(
        name="prov_gigapath",
        title="Prov-GigaPath tile encoder (ViT-g, Providence/Microsoft)",
        backbone="prov_gigapath",
        layout="timm",
        transform=tile_transform(
            224,
            0.5,
            IMAGENET_MEAN,
            IMAGENET_STD,
            publisher="bicubic resize of the shorter side to 256, centre crop 224 (the card's transform); "
            "domainfm resizes the whole tile to 224: give 224 px tiles (or 256 px tiles centre-cropped) to match",
        ),
        domain="pathology",
        paper="Xu et al., A whole-slide foundation model for digital pathology from real-world data, Nature 2024",
        licence="Apache-2.0 + access terms",
        source="Hugging Face prov-gigapath/prov-gigapath (gated): pytorch_model.bin (tile encoder, timm keys) "
        "and config.json; the slide encoder (slide_encoder.pth) is not converted",
        gated=True,
        verbs=VERBS,
        notes="Embedding: class token (1536). config.json's model_args (patch_size 16 at 224, mlp_ratio 5.33334, "
        "over timm's vit_giant_patch14_dinov2) are read at conversion and override the spec; the spec's patch "
        "16 is from the hub config as recalled, not verified offline.",
    ),
    FoundationModel(
        name="phikon",
        title="Phikon (ViT-B/16 iBOT, Owkin)",
        backbone="phikon",
        layout="hf_vit",
        transform=tile_transform(224, 0.5, IMAGENET_MEAN, IMAGENET_STD),
        domain="pathology",
        paper="Filiot et al., Scaling self-supervised learning for histopathology with masked image modeling, "
        "medRxiv 2023 (doi:10.1101/2023.07.21.23292757)",
        licence="Owkin non-commercial",
        source="Hugging Face owkin/phikon (open): the folder (model.safetensors or pytorch_model.bin + "
        "config.json), a transformers ViTModel",
        verbs=VERBS,
        notes="Embedding: class token of last_hidden_state (768), as the card extracts it; the ViTModel pooler is "
        "dropped. LayerNorm eps 1e-12 as in ViTModel. Tiles at 20x (0.5 mpp).",
    ),
    FoundationModel(
        name="phikon_v2",
        title="Phikon-v2 (ViT-L/16 DINOv2, Owkin)",
        backbone="phikon_v2",
        layout="hf_dinov2",
        transform=tile_transform(224, 0.5, IMAGENET_MEAN, IMAGENET_STD),
        domain="pathology",
        paper="Filiot et al., Phikon-v2, a large and public feature extractor for biomarker prediction, "
        "arXiv 2409.09173",
        licence="Owkin non-commercial",
        source="Hugging Face owkin/phikon-v2 (open): the folder (model.safetensors + config.json), a "
        "transformers Dinov2Model",
        verbs=VERBS,
        notes="Embedding: class token of last_hidden_state (1024). The input size is read from config.json "
        "(224 expected; not verified offline). Tiles at 20x (0.5 mpp).",
    ),
)
