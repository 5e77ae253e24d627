"""Network-namespace labs for `gatewaylb demo`, e2e tests and benchmarks.

Owns only namespaces named with a per-run prefix (`glb-<6 hex>-`) and the
processes started in them; never the host's interfaces, routes or ruleset.
`Lab` builds the standard topology (see `topology`) and always tears it down;
`cleanup_leftovers` removes what killed runs left behind.
"""

from agent.lab.netns import NetnsWorker, cleanup_leftovers, new_prefix, run_in
from agent.lab.topology import VIP4_NET, VIP6_NET, Host, Lab, vip4, vip6
from agent.lab.waiting import wait_for

__all__ = [
    "VIP4_NET",
    "VIP6_NET",
    "Host",
    "Lab",
    "NetnsWorker",
    "cleanup_leftovers",
    "new_prefix",
    "run_in",
    "vip4",
    "vip6",
    "wait_for",
]
