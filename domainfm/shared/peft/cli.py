"""``domainfm peft count`` (``domainfm peft compare`` is the study in :mod:`domainfm.studies.shared.peft.cli`)."""

from __future__ import annotations

from typing import Any

DEFAULT_METHODS = ["linear", "full", "bitfit", "vpt_shallow", "vpt_deep", "adaptformer", "lora", "dvpt"]


def count(backbone: str, method: str, options: dict[str, Any] | None = None, json: bool = False) -> None:
    """Trainable parameters of a PEFT method on a backbone, the total, and the fraction of the backbone.

    Args:
        backbone: A registered backbone name (built on the meta device: no memory, any size).
        method: A PEFT method (``linear, full, bitfit, vpt_shallow, vpt_deep, adaptformer, lora, dvpt``).
        options: The method's options, e.g. ``{bottleneck: 32, prompts: 10, share_every: 3}`` for DVPT.
        json: Print JSON.
    """
    import json as json_module

    import torch

    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.peft.methods import apply_peft, count_parameters

    with torch.device("meta"):
        counts = count_parameters(apply_peft(create_backbone(backbone), method, **(options or {})))
    counts["options"] = options or {}
    if json:
        print(json_module.dumps(counts, indent=2))
    else:
        print(
            f"{backbone} + {method}: {counts['trainable']:,} trainable of {counts['total']:,} "
            f"({100 * counts['fraction_of_backbone']:.3f} % of the backbone's {counts['backbone_parameters']:,})"
        )
