"""Shared backbones: a registry of timm architectures behind one interface.

``create_backbone(name, in_chans=..., img_size=..., checkpoint=None)`` builds any registered backbone
(ViT-S/B, FlexiViT-S, Swin-T, SwinV2-T, ResNet-50, tiny test variants, the SatVision-TOA giant spec)
with any number of input channels, from local weights only.
"""

from domainfm.shared.backbones.channels import adapt_input_channels
from domainfm.shared.backbones.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    read_backbone_metadata,
    read_state_dict,
    save_backbone,
)
from domainfm.shared.backbones.specs import (
    BACKBONES,
    BackboneSpec,
    get_backbone_spec,
    list_backbones,
    register_backbone,
)
from domainfm.shared.backbones.wrapper import Backbone, create_backbone, load_backbone

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "CheckpointError",
    "CheckpointMismatchError",
    "adapt_input_channels",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
    "load_backbone",
    "read_backbone_metadata",
    "read_state_dict",
    "register_backbone",
    "save_backbone",
]
