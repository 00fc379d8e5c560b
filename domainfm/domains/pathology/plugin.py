"""The pathology domain as shared code sees it (registered through the ``domainfm.plugins`` entry point).

Whole-slide images are explained tile by tile (:mod:`.slide_inputs`); bundle metadata names the DICOM
modality SM (slide microscopy). Names only: nothing heavy is imported here.
"""

from domainfm.shared.plugins import DomainPlugin

PLUGIN = DomainPlugin(
    name="pathology",
    deploy="domainfm.domains.pathology.deploy",
    checkpoint_keys=(
        "domainfm_pathology_tile_classifier",
        "domainfm_pathology_instances",
        "domainfm_pathology_slide_classifier",
    ),
    producers=("pathology train", "pathology instances-train", "pathology mil"),
    modality="SM",
    large_inputs="domainfm.domains.pathology.slide_inputs:SLIDES",
    foundation_models="domainfm.domains.pathology.foundation:FOUNDATION_MODELS",
    image_readers=("pathology tile IMAGES_OR_FOLDER --out STORE --assume-mpp MPP",),
)
