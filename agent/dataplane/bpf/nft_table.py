"""The nftables table that does what the programs only mark.

Owns `table inet gatewaylb_ebpf`: reject a refused new flow (tcp reset, else
icmpx port-unreachable) and exempt translated packets from conntrack
(notrack), both in prerouting at raw priority, before conntrack, so a refused
or translated flow leaves no entry; and masquerade hairpin flows
(postrouting).  The mark bits are those of layouts.py, which the programs are
compiled with.  `render` is pure (the table as libnftables JSON commands);
`ensure` and `delete` apply it.  Never touches another table; the nftables
dataplane's tables are agent/dataplane/nft/'s.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

from agent.dataplane.bpf import EbpfError
from agent.dataplane.bpf.layouts import MARK_MASQ, MARK_NOTRACK, MARK_REJECT

NFT_TABLE: Final = "gatewaylb_ebpf"
Cmd = dict[str, Any]

# (name, type, hook, priority) of the base chains
_CHAINS: Final = (
    ("reject", "filter", "prerouting", -300),  # raw priority: before conntrack
    ("masquerade", "nat", "postrouting", 100),
)


def _mark(bit: int) -> Cmd:
    return {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, bit]}, "right": bit}}


def _rule(chain: str, *expr: Cmd) -> Cmd:
    rule = {"family": "inet", "table": NFT_TABLE, "chain": chain, "expr": list(expr)}
    return {"add": {"rule": rule}}


def render() -> list[Cmd]:
    """The whole table; its chains are flushed and filled in the same
    transaction, so applying it again (a restart) leaves one copy of each rule."""
    tcp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
    cmds: list[Cmd] = [{"add": {"table": {"family": "inet", "name": NFT_TABLE}}}]
    for name, kind, hook, prio in _CHAINS:
        chain = {"family": "inet", "table": NFT_TABLE, "name": name}
        base = {"type": kind, "hook": hook, "prio": prio, "policy": "accept"}
        cmds.append({"add": {"chain": {**chain, **base}}})
        cmds.append({"flush": {"chain": chain}})
    return [
        *cmds,
        _rule("reject", _mark(MARK_REJECT), tcp, {"reject": {"type": "tcp reset"}}),
        _rule(
            "reject",
            _mark(MARK_REJECT),
            {"reject": {"type": "icmpx", "expr": "port-unreachable"}},
        ),
        _rule("masquerade", _mark(MARK_MASQ), {"masquerade": None}),
        # Flows the programs translate need no conntrack entry (the flow
        # table is their state): skipping it is most of the per-packet
        # cost left in netfilter.  A host firewall that drops untracked
        # packets in forward must accept `ct state untracked` for VIPs.
        _rule("reject", _mark(MARK_NOTRACK), {"notrack": None}),
    ]


def _apply(cmds: list[Cmd]) -> None:
    import nftables  # untyped binding

    nft: Any = nftables.Nftables()
    rc, _output, error = nft.json_cmd({"nftables": cmds})
    if rc != 0:
        raise EbpfError(f"nftables: {str(error).strip()}")


def ensure() -> None:
    _apply(render())


def delete() -> None:
    with contextlib.suppress(EbpfError):
        _apply([{"delete": {"table": {"family": "inet", "name": NFT_TABLE}}}])
