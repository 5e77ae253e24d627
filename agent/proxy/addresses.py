"""VIPs of L7 listeners as local addresses, so the proxy can bind them.

The L7 proxy (HAProxy) binds `VIP:port` directly.  For that the VIP must be a
local address of the node: it is added as a host address (/32, /128) on `lo`
(this kernel has no dummy driver; `lo` needs none), marked with its own address
protocol (IFA_PROTO = ADDRESS_PROTO) so that this reconciler adopts and removes
exactly the addresses it made and never one an operator or another agent put
there.  IPv4 addresses also carry the label `lo:gatewaylb` for people reading
`ip addr`.

L4 frontends on the same VIP keep working: the L4 dataplanes DNAT in
prerouting/output, before the local-delivery decision, so a packet for an L4
port never reaches the local socket layer; only L7 ports are delivered to the
proxy.

ARP: Linux answers ARP for any local address on any interface by default.  On
a node where a VIP must be announced by one node only, set
`net.ipv4.conf.all.arp_ignore=1` and `arp_announce=2` (as kube-proxy's strict
ARP does); IPv6 neighbour discovery answers only on the owning interface.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

ADDRESS_PROTO = 0xA7  # IFA_PROTO of our addresses (0-3 are the kernel's)
LABEL = "lo:gatewaylb"
IFA_F_NODAD = 0x02


@dataclass(frozen=True, slots=True)
class AddressChange:
    added: tuple[str, ...]
    removed: tuple[str, ...]


class VIPAddresses:
    """Reconciles the set of VIP host addresses on `ifname` (default `lo`).

    `netns` is a name under /run/netns; by default the caller's namespace.
    Idempotent: reconciling the same set twice changes nothing.
    """

    def __init__(self, netns: str | None = None, ifname: str = "lo") -> None:
        self.netns = netns
        self.ifname = ifname

    def _ipr(self) -> Any:
        return IPRoute(netns=self.netns) if self.netns else IPRoute()

    def _index(self, ipr: Any) -> int:
        found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise RuntimeError(f"interface {self.ifname} not found")
        return int(found[0])

    def _dump(self, ipr: Any, index: int) -> tuple[set[str], set[str]]:
        """(ours, foreign): canonical addresses on the interface."""
        ours: set[str] = set()
        foreign: set[str] = set()
        for msg in ipr.get_addr(index=index):
            addr = msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL")
            if addr is None:
                continue
            canonical = str(ipaddress.ip_address(addr))
            if msg.get("IFA_PROTO") == ADDRESS_PROTO:
                ours.add(canonical)
            else:
                foreign.add(canonical)
        return ours, foreign

    def current(self) -> set[str]:
        """The addresses this reconciler owns now."""
        with self._ipr() as ipr:
            return self._dump(ipr, self._index(ipr))[0]

    def reconcile(self, vips: Iterable[str], *, remove: bool = True) -> AddressChange:
        """Make our addresses exactly `vips`; with remove=False only add the
        missing ones (a caller that must bind before it may unbind)."""
        want = {str(ipaddress.ip_address(v)) for v in vips}
        with self._ipr() as ipr:
            index = self._index(ipr)
            ours, foreign = self._dump(ipr, index)
            added = sorted(want - ours - foreign, key=_sort_key)
            removed = sorted(ours - want, key=_sort_key) if remove else []
            for addr in added:
                self._add(ipr, index, addr)
            for addr in removed:
                self._delete(ipr, index, addr)
        return AddressChange(tuple(added), tuple(removed))

    def cleanup(self) -> tuple[str, ...]:
        """Remove every address of ours; returns them."""
        return self.reconcile(()).removed

    def _add(self, ipr: Any, index: int, addr: str) -> None:
        ip = ipaddress.ip_address(addr)
        if ip.version == 4:
            ipr.addr(
                "add", index=index, address=addr, prefixlen=32, proto=ADDRESS_PROTO, label=LABEL
            )
        else:
            ipr.addr(
                "add",
                index=index,
                address=addr,
                prefixlen=128,
                proto=ADDRESS_PROTO,
                flags=IFA_F_NODAD,
            )

    def _delete(self, ipr: Any, index: int, addr: str) -> None:
        prefixlen = 32 if ipaddress.ip_address(addr).version == 4 else 128
        ipr.addr("del", index=index, address=addr, prefixlen=prefixlen)


def _sort_key(addr: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(addr)
    return (ip.version, int(ip))


def node_addresses(netns: str | None = None) -> frozenset[str]:
    """Every address of the node (this network namespace) but the VIPs this
    agent put on `lo`: the real host addresses no VIP may take over."""
    out: set[str] = set()
    with IPRoute(netns=netns) if netns else IPRoute() as ipr:
        for msg in ipr.get_addr():
            addr = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")  # LOCAL: ours on ptp links
            if addr is not None and msg.get("IFA_PROTO") != ADDRESS_PROTO:
                out.add(str(ipaddress.ip_address(addr)))
    return frozenset(out)
