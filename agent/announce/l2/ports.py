"""The kernel side of an announce interface: its AF_PACKET sockets (the IPv6 one
behind a classic BPF filter), its solicited-node multicast memberships, its
ARP sysctls, and the discovery of announce interfaces from on-link routes.

A `_Port` is used by the loop thread only.  This module never decides what to
send or to whom (the engine does), never builds or parses a frame beyond the
BPF filter's offsets, and of the sysctls only raises arp_ignore and
arp_announce, never lowers them (see strict_arp).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.announce.l2.frames import (
    ARPHRD_ETHER,
    ETH,
    ETH_P_ARP,
    ETH_P_HEARTBEAT,
    ETH_P_IPV6,
    IPPROTO_ICMPV6,
    IPV6,
    NS_TYPE,
)

# The name the logger had before the package was split: the JSON log's
# "logger" field and any per-logger level set by name stay the same.
log = logging.getLogger("agent.announce.l2")

SO_ATTACH_FILTER = 26
MAX_FRAMES_PER_READ = 64

# Classic BPF on the ETH_P_IPV6 packet socket, offsets from the Ethernet header:
# only ICMPv6 (next header 58 right after the fixed header, as RFC 4861 messages
# are sent) of type 135 reaches user space.
NS_FILTER = (
    (0x30, 0, 0, ETH.size + 6),  # ldb [20]: IPv6 next header
    (0x15, 0, 3, IPPROTO_ICMPV6),  # jeq #58, else drop
    (0x30, 0, 0, ETH.size + IPV6.size),  # ldb [54]: ICMPv6 type
    (0x15, 0, 1, NS_TYPE),  # jeq #135, else drop
    (0x06, 0, 0, 0xFFFF),  # accept the frame
    (0x06, 0, 0, 0),  # drop
)


@dataclass(frozen=True, slots=True)
class OnLinkRoute:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    ifname: str


def covering_interfaces(vips: Iterable[str], routes: Iterable[OnLinkRoute]) -> tuple[str, ...]:
    """Interfaces with an on-link route covering at least one VIP, sorted."""
    addrs = [ipaddress.ip_address(v) for v in vips]
    found = {
        r.ifname
        for r in routes
        if any(a.version == r.network.version and a in r.network for a in addrs)
    }
    return tuple(sorted(found))


def _on_link_routes() -> list[OnLinkRoute]:
    """Main-table unicast routes without gateway on Ethernet interfaces."""
    from pyroute2 import IPRoute

    out: list[OnLinkRoute] = []
    with IPRoute() as ipr:
        names = {
            link["index"]: link.get("IFLA_IFNAME")
            for link in ipr.get_links()
            if link["ifi_type"] == ARPHRD_ETHER
        }
        for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for route in ipr.get_routes(family=family, table=254):
                name = names.get(route.get("RTA_OIF"))
                if not name or route["type"] != 1 or route.get("RTA_GATEWAY"):
                    continue
                if route.get("RTA_MULTIPATH"):
                    continue
                dst = f"{route.get('RTA_DST') or any_addr}/{route['dst_len']}"
                out.append(OnLinkRoute(ipaddress.ip_network(dst, strict=False), name))
    return out


def discover_interfaces(vips: Iterable[str]) -> tuple[str, ...]:
    vips = tuple(vips)
    try:
        found = covering_interfaces(vips, _on_link_routes())
    except Exception as exc:  # netlink trouble: announce nowhere until the next apply
        log.warning("event=l2_interface_lookup_failed error=%r", exc)
        return ()
    if vips and not found:
        log.warning("event=l2_no_interface vips=%d reason=no_on_link_route", len(vips))
    return found


# Values under which the kernel does not answer ARP for an address of another
# interface (lo); 3 still answers for scope global addresses.
_ARP_IGNORE_STRICT = frozenset({"1", "2", "8"})


def strict_arp(ifname: str, root: Path = Path("/proc/sys/net/ipv4/conf")) -> None:
    """arp_ignore=1 and arp_announce=2 on `ifname`, unless already as strict."""
    conf = root / ifname
    if not conf.is_dir():  # no IPv4 on the interface: nothing to answer
        return
    for key, value, strict in (
        ("arp_ignore", "1", _ARP_IGNORE_STRICT),
        ("arp_announce", "2", frozenset({"2"})),
    ):
        current = (conf / key).read_text().strip()
        if current not in strict:
            (conf / key).write_text(value)
            log.info(
                "event=l2_sysctl interface=%s key=%s old=%s new=%s", ifname, key, current, value
            )


def _attach_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> None:
    insns = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    # struct sock_fprog: unsigned short len, (padding), struct sock_filter *filter
    fprog = struct.pack("HL", len(program), ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _packet_socket(
    ifname: str, proto: int, program: Sequence[tuple[int, int, int, int]] = ()
) -> socket.socket:
    # Protocol 0 until bound: no frame queues before the filter is in place.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        if program:
            _attach_filter(sock, program)
        sock.bind((ifname, proto))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Port:
    """One announce interface: its packet sockets and multicast memberships.
    Used by the loop thread only."""

    def __init__(self, name: str, index: int, socks: dict[int, socket.socket]) -> None:
        self.name = name
        self.index = index
        self.socks = socks  # by ethertype
        info = socks[ETH_P_HEARTBEAT].getsockname()
        self.mac: bytes = info[4]
        self.hatype: int = info[3]
        self.groups: set[str] = set()
        self._mcast: socket.socket | None = None
        self._last_error = ""

    @classmethod
    def open(cls, name: str) -> _Port:
        index = socket.if_nametoindex(name)  # OSError when missing
        socks: dict[int, socket.socket] = {}
        try:
            socks[ETH_P_HEARTBEAT] = _packet_socket(name, ETH_P_HEARTBEAT)
            socks[ETH_P_ARP] = _packet_socket(name, ETH_P_ARP)
            socks[ETH_P_IPV6] = _packet_socket(name, ETH_P_IPV6, NS_FILTER)
            port = cls(name, index, socks)
            if port.hatype != ARPHRD_ETHER:
                raise OSError(f"not an Ethernet interface (hardware type {port.hatype})")
        except BaseException:
            for sock in socks.values():
                sock.close()
            raise
        try:
            strict_arp(name)
        except OSError as exc:
            # Announce anyway: the kernel answers ARP for the VIPs on this node
            # whether or not we do; the operator must set the sysctls.
            log.warning("event=l2_strict_arp_failed interface=%s error=%s", name, exc)
        return port

    def gone(self) -> bool:
        try:
            return socket.if_nametoindex(self.name) != self.index
        except OSError:
            return True

    def send(self, ethertype: int, frame: bytes) -> None:
        try:
            self.socks[ethertype].send(frame)
        except OSError as exc:  # link down: report once, keep trying
            self.report(exc)

    def report(self, exc: OSError) -> None:
        text = exc.strerror or str(exc)
        if text != self._last_error:
            self._last_error = text
            log.warning("event=l2_interface_error interface=%s error=%s", self.name, text)

    def set_groups(self, groups: frozenset[str]) -> None:
        """Join/leave solicited-node groups; a failed join is retried next time."""
        for group in sorted(groups - self.groups):
            try:
                self._mcast_sock().setsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, self._mreq(group)
                )
                self.groups.add(group)
            except OSError as exc:  # IPv6 disabled on the interface
                self.report(exc)
        for group in sorted(self.groups - groups):
            with contextlib.suppress(OSError):
                self._mcast_sock().setsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, self._mreq(group)
                )
            self.groups.discard(group)

    def _mcast_sock(self) -> socket.socket:
        # One per interface: closing it leaves all its groups at once.
        if self._mcast is None:
            self._mcast = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        return self._mcast

    def _mreq(self, group: str) -> bytes:
        return socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", self.index)

    def read(self, ethertype: int) -> list[bytes]:
        frames: list[bytes] = []
        sock = self.socks[ethertype]
        for _ in range(MAX_FRAMES_PER_READ):
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] != socket.PACKET_OUTGOING:
                frames.append(data)
        return frames

    def close(self) -> None:
        for sock in (*self.socks.values(), *([self._mcast] if self._mcast else [])):
            sock.close()
