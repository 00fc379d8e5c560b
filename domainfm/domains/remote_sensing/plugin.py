"""The remote-sensing domain as shared code sees it (registered through the ``domainfm.plugins`` entry point).

Names only: nothing heavy is imported here.
"""

from domainfm.shared.plugins import DomainPlugin

PLUGIN = DomainPlugin(
    name="remote_sensing",
    deploy="domainfm.domains.remote_sensing.deploy",
    checkpoint_keys=("domainfm_remote_sensing_task",),
    producers=("remote-sensing train --out DIR",),
    foundation_models="domainfm.domains.remote_sensing.foundation:FOUNDATION_MODELS",
)
