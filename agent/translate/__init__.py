"""The pure core: Gateway API semantics, from a Snapshot to a DesiredState and a
StatusReport.  No I/O, no clock, no kernel: nothing here may import from
agent.dataplane, agent.proxy, agent.announce, agent.sources or agent.kube."""

from agent.translate.addresses import HostAddresses
from agent.translate.core import DEFAULT_CONTROLLER_NAME, Translation, translate

__all__ = ["DEFAULT_CONTROLLER_NAME", "HostAddresses", "Translation", "translate"]
