"""BIRD 2 as the router of a BGP lab (agent/lab/fabric.py): the configuration
that peers with every node of a Fabric and installs what they announce into
the router's kernel table, ECMP across nodes.  Only text: the tests start and
stop BIRD themselves."""

from __future__ import annotations

from agent.lab.fabric import Fabric

ROUTER_ASN, NODE_ASN = 64512, 64513


def bird_config(fabric: Fabric, *, hold: int = 3, graceful_restart: bool = True) -> str:
    sessions = "".join(
        f"protocol bgp {n.role.replace('-', '_')} from nodes "
        f"{{ neighbor {n.ip4} as {NODE_ASN}; }}\n"
        for n in fabric.nodes
    )
    restart = "  graceful restart on;\n" if graceful_restart else ""
    return f"""router id {fabric.router.ip4};
protocol device {{ scan time 1; }}
protocol kernel {{ merge paths on; ipv4 {{ import none; export all; }}; }}
template bgp nodes {{
  local as {ROUTER_ASN};
  hold time {hold};
  keepalive time 1;
  passive on;             # the nodes' gobgpd connect, it never listens
  error wait time 1, 2;   # not 60 s before a node that failed may come back
{restart}  ipv4 {{ import all; export none; }};
}}
{sessions}"""
