"""The segmentation domain as shared code sees it (registered through the ``domainfm.plugins`` entry point).

Names only: nothing heavy is imported here.
"""

from domainfm.shared.plugins import DomainPlugin

PLUGIN = DomainPlugin(
    name="segmentation",
    deploy="domainfm.domains.segmentation.deploy",
    checkpoint_keys=("domainfm_segmentation",),
    producers=("segmentation train",),
)
