"""Talking to gobgp: running the gobgp and gobgpd binaries, and reading the JSON
of `gobgp global -j`, `gobgp global rib -j` and `gobgp neighbor -j` (gobgpd 3.10).

Also owns BGPError, the one error of the package.  Holds no state: it never
starts, signals or adopts a daemon and never writes a file (the announcer
does); the parsers are pure and raise BGPError or ValueError on output they
cannot read.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Mapping
from typing import Any

from agent.announce.bgp.plan import GlobalConfig

CLI_TIMEOUT = 10.0

# api.PeerState_SessionState; JSON leaves out 0 (unknown).
SESSION_STATES = {
    0: "unknown",
    1: "idle",
    2: "connect",
    3: "active",
    4: "opensent",
    5: "openconfirm",
    6: "established",
}


class BGPError(RuntimeError):
    pass


def parse_rib(text: str) -> frozenset[str]:
    """VIPs with a path of our own in `gobgp global rib -a FAMILY -j` output.

    Only host routes (/32, /128) from no neighbour count: a path learned from
    a peer carries "neighbor-ip", and other prefixes are not ours to manage."""
    data = json.loads(text or "{}")
    vips: set[str] = set()
    if not isinstance(data, Mapping):
        raise BGPError(f"unexpected RIB listing: {text[:200]!r}")
    for prefix, paths in data.items():
        try:
            net = ipaddress.ip_network(prefix)
        except ValueError:
            continue
        if net.prefixlen != net.max_prefixlen or not isinstance(paths, list):
            continue
        if any(isinstance(p, Mapping) and not p.get("neighbor-ip") for p in paths):
            vips.add(str(net.network_address))
    return frozenset(vips)


def parse_neighbors(text: str) -> dict[str, str]:
    """Peer address -> FSM state (lower case) from `gobgp neighbor -j`."""
    data = json.loads(text or "[]")
    if not isinstance(data, list):
        raise BGPError(f"unexpected neighbour listing: {text[:200]!r}")
    states: dict[str, str] = {}
    for peer in data:
        if not isinstance(peer, Mapping):
            continue
        state = peer.get("state") or {}
        conf = peer.get("conf") or {}
        address = conf.get("neighbor_address") or state.get("neighbor_address")
        if not address:
            continue
        code = state.get("session_state", 0)
        states[str(address)] = SESSION_STATES.get(code, f"state-{code}")
    return states


def parse_global(text: str) -> GlobalConfig | None:
    """The running daemon's global settings from `gobgp global -j`; None
    while it has none (started, initial configuration not read yet)."""
    data = json.loads(text or "{}")
    if not isinstance(data, Mapping) or not data.get("asn"):
        return None
    return GlobalConfig(int(data["asn"]), str(data.get("router_id", "")), _port(data))


def _port(data: Mapping[str, Any]) -> int:
    # listen_port is left out of the JSON when 0 (gobgpd's "default 179").
    return int(data.get("listen_port", 0))


def run_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`argv` run to completion, its return code left to the caller; BGPError
    when it cannot start or outlasts CLI_TIMEOUT."""
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BGPError(f"{argv[0]}: {exc}") from None
