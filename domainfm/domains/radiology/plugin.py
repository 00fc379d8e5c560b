"""The radiology domain as shared code sees it (registered through the ``domainfm.plugins`` entry point).

Bundle metadata names the DICOM modality DX (digital radiography). Names only: nothing heavy is imported.
"""

from domainfm.shared.plugins import DomainPlugin

PLUGIN = DomainPlugin(
    name="radiology",
    deploy="domainfm.domains.radiology.deploy",
    checkpoint_keys=("domainfm_radiology_classifier",),
    producers=("radiology train",),
    modality="DX",
    foundation_models="domainfm.domains.radiology.foundation:FOUNDATION_MODELS",
)
