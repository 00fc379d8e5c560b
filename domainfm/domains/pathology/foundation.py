"""Pathology foundation encoders users hold, as ``domainfm models`` converts and pathology verbs use them.

Each entry carries the publisher's preprocessing as an :class:`InputTransform`: RGB tiles at the stated
microns per pixel, resized to the model's input, scaled to [0, 1] and standardised with the publisher's
mean/std. Getting any of these wrong is silent and ruins embeddings, so the record travels with the
converted checkpoint and every verb applies it.
"""

from __future__ import annotations

from domainfm.shared.foundation.catalogue import FoundationModel
from domainfm.shared.model.transform import InputTransform

RGB = ["red", "green", "blue"]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
VERBS = ("pathology embed", "pathology probe", "pathology train", "pathology mil")


def tile_transform(size: int, mpp: float, mean: list[float], std: list[float]) -> InputTransform:
    """RGB tiles (0..255) at ``mpp``, resized to ``size``, scaled to [0, 1] and standardised."""
    return InputTransform(
        channels=RGB,
        size=[size, size],
        geometry="resize",
        scale=1 / 255,
        mean=mean,
        std=std,
        quantise="uint8",
        input_range=[0.0, 255.0],
        details={"mpp": mpp, "units": "RGB 0..255, scaled to [0, 1] before mean/std"},
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
)
