"""The model contract: ``InputTransform -> Backbone (+PEFT) -> Head`` as one ``nn.Module``.

A model carries its preprocessing (as open_clip creates transforms with the model and timm's
``pretrained_cfg`` carries mean/std/input size): :class:`InputTransform` is a JSON record saved with the
weights, :class:`ContractModel` runs it in front of the network and maps segmentation outputs back onto
the input's pixel grid, so training stores, evaluation, ``predict``, MONAI bundles and explanations see
the same tensor for the same raw input.
"""

from domainfm.shared.model.transform import (
    GEOMETRIES,
    ContractModel,
    InputTransform,
    TransformError,
    TransformModule,
    apply_geometry,
    check_input,
    map_to_input,
    standardise,
    transform_array,
)

__all__ = [
    "GEOMETRIES",
    "ContractModel",
    "InputTransform",
    "TransformError",
    "TransformModule",
    "apply_geometry",
    "check_input",
    "map_to_input",
    "standardise",
    "transform_array",
]
