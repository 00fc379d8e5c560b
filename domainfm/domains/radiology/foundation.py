"""Radiology foundation encoders users hold, as ``domainfm models`` converts them.

Both take 3-channel images: their publishers read a radiograph as an RGB picture, i.e. the grey value
copied into red, green and blue. So each transform has three channels, all ``grey``: a 1-channel
radiograph (display values 0..255, as ``radiology ingest`` reads a DICOM or a picture) is repeated three
times before the transform. For RAD-DINO, whose mean/std are the same in the three channels, this is
exactly a 1-channel model whose patch-embedding filters are summed over RGB
(``load_backbone(FILE, in_chans=1)`` does that fold); BiomedCLIP's per-channel statistics differ, so its
grey input must be repeated.

Geometry: both publishers resize the shorter side to the model's size and centre-crop the square.
domainfm's transforms have no crop; the entries use ``resize`` (the whole image squashed to the square),
which is the publisher's transform exactly for square inputs and keeps the full field of view for others
(``letterbox``, the radiology classifiers' geometry, would add black bands neither model saw in training).
Give square (centre-cropped) radiographs to reproduce the published embedding exactly.

Papers: RAD-DINO (Perez-Garcia et al., arXiv 2401.10815); BiomedCLIP (Zhang et al., arXiv 2303.00915);
DINOv2 (Oquab et al., arXiv 2304.07193).
"""

from __future__ import annotations

from domainfm.shared.foundation.catalogue import FoundationModel
from domainfm.shared.model.transform import InputTransform

GREY3 = ["grey", "grey", "grey"]
# RAD-DINO's preprocessor_config.json (microsoft/rad-dino): BitImageProcessor statistics of its training data.
RAD_DINO_MEAN = [0.5307, 0.5307, 0.5307]
RAD_DINO_STD = [0.2583, 0.2583, 0.2583]
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
VERBS = ("radiology train", "radiology eval")


def radiograph_transform(size: int, mean: list[float], std: list[float], publisher: str) -> InputTransform:
    """A radiograph's display values (0..255) repeated into 3 channels, resized to ``size``, standardised."""
    return InputTransform(
        channels=GREY3,
        size=[size, size],
        geometry="resize",
        scale=1 / 255,
        mean=mean,
        std=std,
        quantise="uint8",
        input_range=[0.0, 255.0],
        details={
            "channels": "a 1-channel radiograph (display values 0..255, air dark) is repeated into the 3 channels, "
            "as the publisher reads a grey picture as RGB",
            "publisher_transform": publisher,
            "geometry": "resize of the whole image to the square; identical to the publisher's shorter-side "
            "resize + centre crop for square inputs (give square crops to match exactly)",
            "units": "display values 0..255, scaled to [0, 1] before mean/std",
        },
    )


FOUNDATION_MODELS: tuple[FoundationModel, ...] = (
    FoundationModel(
        name="rad_dino",
        title="RAD-DINO (ViT-B/14 DINOv2 on chest X-rays, Microsoft)",
        backbone="rad_dino",
        layout="hf_dinov2",
        transform=radiograph_transform(
            518,
            RAD_DINO_MEAN,
            RAD_DINO_STD,
            "bicubic resize of the shorter side to 518, centre crop 518x518, /255, mean 0.5307, std 0.2583",
        ),
        domain="radiology",
        paper="Perez-Garcia et al., Exploring scalable medical image encoders beyond text supervision, Nature "
        "Machine Intelligence 2025 (arXiv 2401.10815)",
        licence="MIT (research use only, per the model card)",
        source="Hugging Face microsoft/rad-dino (open): the folder (model.safetensors + config.json), a "
        "transformers Dinov2Model; the checkpoint it also releases for the original DINOv2 code converts with "
        "--layout dinov2_github",
        verbs=VERBS,
        notes="Embedding: class token of last_hidden_state (768; pooler_output is the same). Mean/std as "
        "published in preprocessor_config.json (0.5307/0.2583; not re-checked against the file offline). "
        "Patch tokens (37x37 at 518) are the features for segmentation. mask_token is kept beside the backbone. "
        "A 1-channel model: load_backbone(FILE, in_chans=1) (exact, the three means/stds being equal).",
    ),
    FoundationModel(
        name="biomedclip",
        title="BiomedCLIP image tower (ViT-B/16, Microsoft)",
        backbone="biomedclip",
        layout="open_clip",
        transform=radiograph_transform(
            224,
            OPENAI_CLIP_MEAN,
            OPENAI_CLIP_STD,
            "open_clip: bicubic resize of the shorter side to 224, centre crop 224, OpenAI CLIP mean/std",
        ),
        domain="radiology",
        paper="Zhang et al., BiomedCLIP: a multimodal biomedical foundation model pretrained from fifteen million "
        "scientific image-text pairs, arXiv 2303.00915",
        licence="MIT",
        source="Hugging Face microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (open): "
        "open_clip_pytorch_model.bin with open_clip_config.json beside it",
        verbs=VERBS,
        notes="Backbone(x) is the trunk's class token (768); the CLIP image embedding is Backbone(x) @ proj.T "
        "(extra proj, 512). The PubMedBERT text tower and logit_scale are kept beside the backbone under "
        "extra.text.* / extra.logit_scale for zero-shot use (not yet wired to a verb). Trained on PubMed "
        "figures of all modalities, not radiographs only.",
    ),
)
