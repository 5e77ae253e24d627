"""VIP traffic that no dataplane translates: refused, never forwarded.

A VIP is not a local address of the node (only L7 VIPs are, see below), so a
packet for a VIP port without a listener would be routed like any other
destination: with `--announce bgp` the router sends it to this node, which
sends it back to the router, until its TTL runs out; with `--announce l2` the
owner sends it back onto the LAN with ICMP redirects.  So `VIPGuard` refuses,
before the DNAT of either dataplane and before the routing decision, every new
flow to a VIP that no listener serves, as kube-proxy's nftables mode does for
service IPs: TCP gets a reset, UDP an ICMP port unreachable, other protocols
(ICMP echo included) are dropped; each counted in the named counter
`unserved` (`gatewaylb_vip_unserved_packets_total`).  Only new flows: ICMP
errors about a served flow (conntrack: related) pass.

L7 VIPs are host addresses on `lo` (`VIPAddresses`), since HAProxy binds
VIP:port; the guard also keeps a process listening on 0.0.0.0 (sshd, the
kubelet, this agent's metrics port) from answering on them.  L4-only VIPs
get no address: ten thousand addresses would cost seconds of netlink per sync,
and nothing needs them (the dataplanes translate before routing).

Owns `table inet gatewaylb_vips`: sets `vips4`/`vips6` (the VIPs) and
`served4`/`served6` (vip . l4proto . port of every L4 frontend and L7
listener), the counter, and one base chain at prerouting priority -150 (after
conntrack, so only new flows are refused; before DNAT at -100, so the VIP is
still the destination).  Every change is one nft transaction that rewrites the
sets whole.  It never touches another table.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from agent.proxy.addresses import VIPAddresses
from agent.reconcile import Outcome
from agent.state import TCP, DesiredState, FrontendKey

if TYPE_CHECKING:
    from agent.dataplane.nft.netlink import NetlinkReader

log = logging.getLogger(__name__)

TABLE: Final = "gatewaylb_vips"
PRIORITY: Final = -150

ServedKey = FrontendKey


class GuardError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class GuardState:
    vips: frozenset[str]
    served: frozenset[ServedKey]


def guard_state(desired: DesiredState) -> GuardState:
    """The VIPs and the (vip, protocol, port) keys their listeners serve."""
    vips = {_canonical(v) for v in desired.vips}
    served = {(_canonical(f.vip), f.protocol, f.port) for f in desired.l4}
    for listener in desired.l7:
        for vip in listener.vips:
            served.add((_canonical(vip), TCP, listener.port))
    vips.update(v for v, _, _ in served)
    return GuardState(frozenset(vips), frozenset(served))


def l7_vips(desired: DesiredState) -> frozenset[str]:
    """The VIPs the proxy binds: local addresses of the node."""
    return frozenset(_canonical(vip) for listener in desired.l7 for vip in listener.vips)


def _canonical(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def _family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def render_guard(state: GuardState) -> str:
    """One nft script: the table (created if missing), its sets rewritten whole
    and its chain's rules rewritten, as one transaction."""
    t = f"inet {TABLE}"
    lines = [
        f"add table {t}",
        f"add set {t} vips4 {{ type ipv4_addr; }}",
        f"add set {t} vips6 {{ type ipv6_addr; }}",
        f"add set {t} served4 {{ type ipv4_addr . inet_proto . inet_service; }}",
        f"add set {t} served6 {{ type ipv6_addr . inet_proto . inet_service; }}",
        f"add counter {t} unserved",
        f"add chain {t} prerouting "
        f"{{ type filter hook prerouting priority {PRIORITY}; policy accept; }}",
        f"flush chain {t} prerouting",
    ]
    for s in ("vips4", "vips6", "served4", "served6"):
        lines.append(f"flush set {t} {s}")
    for family, ip in ((4, "ip"), (6, "ip6")):
        for proto, verdict in (("tcp", "reject with tcp reset"), ("udp", "reject")):
            lines.append(
                f"add rule {t} prerouting meta l4proto {proto} {ip} daddr @vips{family} "
                f"{ip} daddr . meta l4proto . th dport != @served{family} "
                f'ct state new counter name "unserved" {verdict}'
            )
        lines.append(
            f"add rule {t} prerouting {ip} daddr @vips{family} meta l4proto != tcp "
            f'meta l4proto != udp ct state new counter name "unserved" drop'
        )
        vips = sorted((v for v in state.vips if _family(v) == family), key=_sort_ip)
        if vips:
            lines.append(f"add element {t} vips{family} {{ {', '.join(vips)} }}")
        served = sorted(
            (k for k in state.served if _family(k[0]) == family),
            key=lambda k: (_sort_ip(k[0]), k[1], k[2]),
        )
        if served:
            elems = ", ".join(f"{vip} . {proto} . {port}" for vip, proto, port in served)
            lines.append(f"add element {t} served{family} {{ {elems} }}")
    return "\n".join(lines) + "\n"


def _sort_ip(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return (addr.version, int(addr))


class VIPGuard:
    """The guard table in the network namespace of the constructing thread."""

    def __init__(self) -> None:
        import nftables  # untyped binding

        self._nft: Any = nftables.Nftables()
        self._applied: GuardState | None = None
        self._reader: NetlinkReader | None = None

    def _cmd(self, script: str) -> str:
        rc, output, error = self._nft.cmd(script)
        if rc != 0:
            raise GuardError(f"nftables: {str(error).strip()}")
        return str(output)

    def apply(self, state: GuardState) -> bool:
        """Make the table say `state`; False when it already did (no write)."""
        if state == self._applied:
            return False
        self._cmd(render_guard(state))
        self._applied = state
        return True

    def unserved_packets(self) -> int:
        """Packets refused so far (0 when the table is absent).  Read over
        netlink: `list counter` through libnftables fills its whole cache
        first, 6 s at 10k nftables frontends, on every scrape."""
        if self._reader is None:
            from agent.dataplane.nft.netlink import NetlinkReader

            self._reader = NetlinkReader()
        counted = self._reader.counter(TABLE, "unserved")
        return counted[0] if counted is not None else 0

    def cleanup(self) -> None:
        self._nft.cmd(f"delete table inet {TABLE}")
        self._applied = None


class NodeVIPs:
    """The L7 VIPs' host addresses and the guard of unserved VIP ports, as the
    three stages the agent loop runs: `adding` (L7 VIPs made local before the
    proxy binds them), `removing` (stale ones removed once nothing binds them)
    and `guarding` (the guard brought up to date after the L4 dataplane)."""

    name = "vips"

    def __init__(self, addresses: VIPAddresses, guard: VIPGuard) -> None:
        self.addresses = addresses
        self.guard = guard
        self.adding = _Step(self.name, "add", self._add)
        self.removing = _Step(self.name, "remove", self._remove)
        self.guarding = _Step(self.name, "guard", self._guard)

    def _add(self, desired: DesiredState) -> int:
        return len(self.addresses.reconcile(l7_vips(desired), remove=False).added)

    def _remove(self, desired: DesiredState) -> int:
        change = self.addresses.reconcile(l7_vips(desired))
        return len(change.added) + len(change.removed)

    def _guard(self, desired: DesiredState) -> int:
        return int(self.guard.apply(guard_state(desired)))

    def cleanup(self) -> tuple[str, ...]:
        self.guard.cleanup()
        return self.addresses.cleanup()


@dataclass(frozen=True, slots=True)
class _Step:
    """One of NodeVIPs' stages; all three share the `vips` metrics label."""

    name: str
    step: str
    write: Callable[[DesiredState], int]

    def reconcile(self, desired: DesiredState) -> Outcome:
        return Outcome(changed=self.write(desired))
