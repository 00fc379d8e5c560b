"""The catalogue of foundation models a user may already hold on disk, registered by the domains.

An entry says what a published encoder is (the backbone it is rebuilt as, how it pools, its input
transform: size, mpp or bands, normalisation), where a user obtains its weights (nothing is downloaded;
gated models say so), its licence, which file layout the publisher ships (a converter in
:mod:`domainfm.shared.foundation.layouts`) and which verbs use it. Domains list their entries in their
plugin (``DomainPlugin.foundation_models``); shared code loads them on first lookup, so ``shared`` names
no domain and no model beyond the architectures it can build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domainfm.shared.model.transform import InputTransform
from domainfm.shared.registry import Registry

POOLINGS = ("model", "cls_mean")


@dataclass(frozen=True)
class FoundationModel:
    """One published foundation model as domainfm rebuilds it.

    Attributes:
        name: Catalogue key (``domainfm models show NAME``), e.g. ``uni``, ``satvision_toa_giant``.
        title: The model's published name.
        backbone: Registered backbone spec it is rebuilt as (its full-size architecture).
        layout: Converter of the publisher's file layout (``timm``, ``hf_vit``, ``hf_dinov2``,
            ``dinov2_github``, ``open_clip``, ``satvision_deepspeed``).
        transform: The model's own preprocessing (size, geometry, scale, mean/std, channels, details).
        domain: The domain whose verbs use it (for listings; shared code never branches on it).
        pooling: ``model`` (the architecture's own pooling: class token or average) or ``cls_mean``
            (class token concatenated with the mean patch token, as Virchow publishes its embedding).
        paper: Where it is described.
        licence: Its weights' licence.
        source: Where a user obtains the weights and which file(s) to give ``models convert``.
        gated: Whether access must be requested from the publisher first.
        verbs: The ``domainfm`` verbs that take the converted file.
        notes: Anything a user must know (e.g. the published embedding's definition).
    """

    name: str
    title: str
    backbone: str
    layout: str
    transform: InputTransform
    domain: str
    pooling: str = "model"
    paper: str = ""
    licence: str = ""
    source: str = ""
    gated: bool = False
    verbs: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"foundation model {self.name}: pooling {self.pooling!r} is not one of {POOLINGS}")

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (``domainfm models list --json``)."""
        from domainfm.shared.backbones.specs import get_backbone_spec

        spec = get_backbone_spec(self.backbone)
        record = self.transform
        return {
            "name": self.name,
            "title": self.title,
            "domain": self.domain,
            "architecture": f"{spec.timm_name} ({spec.description})",
            "backbone": self.backbone,
            "input_size": list(record.size),
            "channels": list(record.channels),
            "geometry": record.geometry,
            "normalisation": {"scale": record.scale, "mean": list(record.mean), "std": list(record.std)},
            "mpp": record.details.get("mpp"),
            "bands": record.details.get("bands"),
            "pooling": self.pooling,
            "layout": self.layout,
            "licence": self.licence,
            "gated": self.gated,
            "source": self.source,
            "paper": self.paper,
            "verbs": list(self.verbs),
            "notes": self.notes,
        }


FOUNDATION_MODELS: Registry[FoundationModel] = Registry("foundation model")
_loaded: set[str] = set()


def register_foundation_model(entry: FoundationModel) -> FoundationModel:
    """Adds ``entry`` to the catalogue (a name already taken is an error)."""
    return FOUNDATION_MODELS.add(entry.name, entry)


def foundation_models() -> Registry[FoundationModel]:
    """The catalogue, with every registered domain's entries loaded."""
    from domainfm.shared import plugins

    registry = plugins.domains()
    for name in registry:
        spec = registry.get(name).foundation_models
        if spec and name not in _loaded:
            _loaded.add(name)
            for entry in plugins.load(spec):
                if entry.name not in FOUNDATION_MODELS:
                    register_foundation_model(entry)
    return FOUNDATION_MODELS


def foundation_model(name: str) -> FoundationModel:
    """The catalogue entry ``name``; an unknown name lists the known ones."""
    return foundation_models().get(name)
