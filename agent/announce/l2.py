"""L2 announcement of VIPs: one node of a segment answers ARP and NDP for each VIP.

Every node serves every VIP (the dataplanes translate L4 VIP traffic before
routing, L7 VIPs are local addresses on `lo`, and `agent/dataplane/vips.py`
refuses ports nobody serves); this module only decides which node's MAC the
LAN learns for a VIP, and makes the LAN learn another one fast when that node
dies.

Owns, on each announce interface: AF_PACKET sockets for heartbeats, ARP and
IPv6 neighbour solicitations; the solicited-node multicast memberships of the
candidate IPv6 VIPs; and the sysctls `net.ipv4.conf.<iface>.arp_ignore` and
`arp_announce` (raised to 1 and 2, and left so on close: a restarting agent must
not open a window in which every node answers ARP for the VIPs).  Never touches
addresses, routes, other sysctls, or interfaces it was not told to announce on.

Membership.  Every `heartbeat_interval_ms` each node broadcasts an Ethernet
frame with the IEEE local-experimental ethertype 0x88B5 on each announce
interface (magic, version, flags, sequence, node name); a peer is live until
`dead_after_ms` passes without one.  On the segment itself rather than over IP
or through the API server: it needs no address (IPv6-only nodes work), and it
measures exactly what matters, that a node still reaches the clients' segment;
an API-server lease stays valid for a node whose NIC is dead.

Ownership.  The owner of a VIP is the rendezvous (highest-random-weight) hash
winner among the ready live nodes: every node computes the same answer from the
same member list without talking, VIPs spread evenly, and a node that joins or
leaves moves only the VIPs it wins or loses.  A starting node listens for
`dead_after_ms` first (its heartbeats say "not ready" meanwhile): alone with an
empty peer list it would claim every VIP and pull clients away from the
rightful owners until their heartbeats arrive; and peers leave a not-ready node
out of the hash, so nobody stops answering for a VIP before its new owner
starts.  `close()` sends one "leaving" heartbeat so peers take over at once.

ARP.  The owner answers ARP requests for its IPv4 VIPs from a packet socket.
Linux answers ARP for any local address on any interface by default, so every
node would answer for the `lo`-bound L7 VIPs: `arp_ignore=1` (answer only for
addresses of the receiving interface) stops that, and `arp_announce=2` (use an
address of the outgoing interface as sender of the kernel's own ARP requests)
stops a node that replies from a VIP from advertising the VIP with its own MAC
to the client it asks for.  kube-proxy's IPVS `strictARP` sets the same two.
On takeover the owner sends gratuitous ARP (request and reply, sender = target
= VIP) three times over a second: clients update an existing entry from it (a
Linux client creates a new entry from it only with arp_accept=1).

NDP.  Linux answers a neighbour solicitation only for addresses of the
receiving interface (ndisc_recv_ns looks the target up on that device only), so
IPv6 needs no sysctl (tests/e2e/test_l2_announce_e2e.py checks it).  The owner
answers with a solicited NA (S+O, target link-layer address option) built whole
and sent from a packet socket: it goes straight to the solicitor's MAC without
the kernel first resolving the solicitor, and its source is the VIP, as Linux
does for its own addresses.  Solicitations arrive on an ETH_P_IPV6 packet socket
with a classic BPF filter (ICMPv6 type 135 only), so no other IPv6 traffic is
copied to user space, and unicast NUD probes are seen too.  For NICs and
MLD-snooping switches to deliver the multicast solicitations at all, an IPv6
socket joins the solicited-node group of every candidate VIP, not only the owned
ones, so that a takeover does not wait for an MLD report to reach a switch.  On
takeover the owner sends unsolicited NAs (O flag) to ff02::1.

Thread.  Heartbeats, replies and expiry run in one daemon thread that polls
with a 50 ms timeout, never in the agent's asyncio loop: a loop held for a
second by a large translation would miss heartbeats, and peers would take over
every VIP.  `apply` hands the thread a new configuration and waits for it; all
sockets are opened, used and closed by that thread only.

Limits.  With empty `interfaces`, the interfaces are found from the routes at
each `apply` only.  A VIP is announced on every announce interface, all assumed
to be one broadcast domain of the same nodes: a segment split in two gets one
owner per half.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import heapq
import ipaddress
import logging
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.state import Announcement, L2Settings

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
# IEEE 802 "local experimental ethertype 1": meant for private protocols, so no
# standard frame on the LAN can be mistaken for a heartbeat.
ETH_P_HEARTBEAT = 0x88B5
ARPHRD_ETHER = 1
SO_ATTACH_FILTER = 26
BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = bytes(6)
MIN_FRAME = 60  # Ethernet minimum without FCS; NICs pad shorter frames anyway

ETH = struct.Struct("!6s6sH")
ARP = struct.Struct("!HHBBH6s4s6s4s")
ARP_REQUEST = 1
ARP_REPLY = 2
IPV6 = struct.Struct("!IHBB16s16s")
IPPROTO_ICMPV6 = 58
NDP_HOP_LIMIT = 255  # RFC 4861: anything else may have come from off-link
NS_TYPE = 135
NA_TYPE = 136
NA_SOLICITED = 0x40000000
NA_OVERRIDE = 0x20000000
OPT_SOURCE_LL = 1
OPT_TARGET_LL = 2
ALL_NODES = ipaddress.IPv6Address("ff02::1")
UNSPECIFIED = "::"

HEARTBEAT = struct.Struct("!4sBBHQ")  # magic, version, flags, name length, sequence
HEARTBEAT_MAGIC = b"gLB2"
HEARTBEAT_VERSION = 1
FLAG_READY = 0x01
FLAG_LEAVING = 0x02
MAX_NAME = 253  # a Kubernetes node name is a DNS subdomain

TICK_S = 0.05  # poll timeout: the granularity of expiry and resends
# Gratuitous ARP / unsolicited NA after a takeover: the first may be lost, or
# reach a client while it still resolves with the dead owner.
ANNOUNCE_DELAYS_S = (0.0, 0.5, 1.0)
MAX_ANNOUNCE_PER_TICK = 1000  # thousands of VIPs must not delay heartbeats
RETRY_S = 5.0  # reopen interfaces that were missing or went away
APPLY_TIMEOUT_S = 5.0
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


# -- heartbeats ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node: str
    seq: int
    ready: bool = True  # False while the sender still listens after its start
    leaving: bool = False  # the sender is closing: take its VIPs now


def encode_heartbeat(hb: Heartbeat) -> bytes:
    name = hb.node.encode()
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"node name must be 1..{MAX_NAME} bytes: {hb.node!r}")
    flags = (FLAG_READY if hb.ready else 0) | (FLAG_LEAVING if hb.leaving else 0)
    seq = hb.seq & 0xFFFF_FFFF_FFFF_FFFF
    return HEARTBEAT.pack(HEARTBEAT_MAGIC, HEARTBEAT_VERSION, flags, len(name), seq) + name


def decode_heartbeat(payload: bytes) -> Heartbeat | None:
    """None for anything but a well-formed heartbeat of this version.  Bytes
    after the name are Ethernet padding."""
    if len(payload) < HEARTBEAT.size:
        return None
    magic, version, flags, length, seq = HEARTBEAT.unpack_from(payload)
    if magic != HEARTBEAT_MAGIC or version != HEARTBEAT_VERSION or not 0 < length <= MAX_NAME:
        return None
    raw = payload[HEARTBEAT.size : HEARTBEAT.size + length]
    if len(raw) != length:
        return None
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        return None
    return Heartbeat(name, seq, bool(flags & FLAG_READY), bool(flags & FLAG_LEAVING))


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return (ETH.pack(dst, src, ethertype) + payload).ljust(MIN_FRAME, b"\0")


def heartbeat_frame(mac: bytes, hb: Heartbeat) -> bytes:
    return ethernet(BROADCAST_MAC, mac, ETH_P_HEARTBEAT, encode_heartbeat(hb))


@dataclass(frozen=True, slots=True)
class _Peer:
    last_seen: float
    ready: bool


class Membership:
    """The peers heard on the segment.  Pure: the caller passes the clock."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._peers: dict[str, _Peer] = {}

    def heard(self, hb: Heartbeat, now: float) -> None:
        if hb.node == self.node:
            return
        if hb.leaving:
            self._peers.pop(hb.node, None)
        else:
            self._peers[hb.node] = _Peer(now, hb.ready)

    def expire(self, now: float, dead_after: float) -> tuple[str, ...]:
        """Forget peers silent for longer than `dead_after`; returns them."""
        dead = tuple(n for n, p in sorted(self._peers.items()) if now - p.last_seen > dead_after)
        for name in dead:
            del self._peers[name]
        return dead

    def live(self) -> tuple[str, ...]:
        return tuple(sorted({self.node, *self._peers}))

    def ready_peers(self) -> frozenset[str]:
        return frozenset(n for n, p in self._peers.items() if p.ready)


# -- ownership --------------------------------------------------------------------------


def rendezvous_weight(node: str, vip: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{vip}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(vip: str, nodes: Iterable[str]) -> str | None:
    """The node with the highest weight for `vip`; the name breaks (unlikely) ties."""
    return max(nodes, key=lambda n: (rendezvous_weight(n, vip), n), default=None)


def owned_by(node: str, vips: Iterable[str], nodes: Iterable[str]) -> frozenset[str]:
    members = tuple(nodes)
    return frozenset(v for v in vips if owner_of(v, members) == node)


# -- ARP ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArpRequest:
    sender_mac: bytes
    sender_ip: str
    target_ip: str


def arp_frame(op: int, eth_dst: bytes, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    spa_b = ipaddress.IPv4Address(spa).packed
    tpa_b = ipaddress.IPv4Address(tpa).packed
    body = ARP.pack(ARPHRD_ETHER, ETH_P_IPV4, 6, 4, op, sha, spa_b, tha, tpa_b)
    return ethernet(eth_dst, sha, ETH_P_ARP, body)


def parse_arp_request(frame: bytes) -> ArpRequest | None:
    if len(frame) < ETH.size + ARP.size:
        return None
    if ETH.unpack_from(frame)[2] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = ARP.unpack_from(frame, ETH.size)
    if (htype, ptype, hlen, plen, op) != (ARPHRD_ETHER, ETH_P_IPV4, 6, 4, ARP_REQUEST):
        return None
    return ArpRequest(sha, str(ipaddress.IPv4Address(spa)), str(ipaddress.IPv4Address(tpa)))


def arp_reply(mac: bytes, request: ArpRequest) -> bytes:
    return arp_frame(
        ARP_REPLY, request.sender_mac, mac, request.target_ip, request.sender_mac, request.sender_ip
    )


def gratuitous_arp(mac: bytes, vip: str) -> tuple[bytes, bytes]:
    """A broadcast request (RFC 5227 announcement) and reply, both with sender =
    target = VIP: clients update an entry from either, and some only from one."""
    request = arp_frame(ARP_REQUEST, BROADCAST_MAC, mac, vip, ZERO_MAC, vip)
    reply = arp_frame(ARP_REPLY, BROADCAST_MAC, mac, vip, BROADCAST_MAC, vip)
    return request, reply


# -- NDP ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Solicitation:
    sender_mac: bytes
    source: str  # "::" for duplicate address detection
    target: str


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """RFC 4443 checksum over the pseudo-header and `message`; 0 when `message`
    already carries a correct one."""
    data = src + dst + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6) + message
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def multicast_mac(group: ipaddress.IPv6Address) -> bytes:
    return b"\x33\x33" + group.packed[-4:]


def solicited_node_group(addr: str) -> str:
    low = ipaddress.IPv6Address(addr).packed[-3:]
    return str(ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + low))


def _link_layer_option(options: bytes, kind: int) -> bytes | None:
    """The link-layer address in option `kind`; b"" when absent; None when the
    options are malformed (a zero length would loop forever: RFC 4861 drops)."""
    while options:
        if len(options) < 2 or options[1] == 0 or len(options) < options[1] * 8:
            return None
        if options[0] == kind and options[1] == 1:
            return options[2:8]
        options = options[options[1] * 8 :]
    return b""


def parse_neighbor_solicitation(frame: bytes) -> Solicitation | None:
    """A valid NS (RFC 4861 7.1.1) or None."""
    start = ETH.size + IPV6.size
    if len(frame) < start + 24 or ETH.unpack_from(frame)[2] != ETH_P_IPV6:
        return None
    vtf, length, next_header, hops, src, dst = IPV6.unpack_from(frame, ETH.size)
    message = frame[start : start + length]
    if vtf >> 28 != 6 or next_header != IPPROTO_ICMPV6 or hops != NDP_HOP_LIMIT:
        return None
    if len(message) != length or length < 24 or message[:2] != bytes((NS_TYPE, 0)):
        return None
    if icmpv6_checksum(src, dst, message) != 0:
        return None
    target = ipaddress.IPv6Address(message[8:24])
    lladdr = _link_layer_option(message[24:], OPT_SOURCE_LL)
    if target.is_multicast or lladdr is None:
        return None
    sender = lladdr or ETH.unpack_from(frame)[1]
    return Solicitation(sender, str(ipaddress.IPv6Address(src)), str(target))


def neighbor_advertisement(
    mac: bytes, target: str, eth_dst: bytes, ip_dst: str, *, solicited: bool
) -> bytes:
    """An NA for `target` with the override flag and our MAC as target
    link-layer address; the IPv6 source is the target itself."""
    src = ipaddress.IPv6Address(target).packed
    dst = ipaddress.IPv6Address(ip_dst).packed
    flags = NA_OVERRIDE | (NA_SOLICITED if solicited else 0)
    body = struct.pack("!BBHI16sBB6s", NA_TYPE, 0, 0, flags, src, OPT_TARGET_LL, 1, mac)
    body = body[:2] + struct.pack("!H", icmpv6_checksum(src, dst, body)) + body[4:]
    header = IPV6.pack(6 << 28, len(body), IPPROTO_ICMPV6, NDP_HOP_LIMIT, src, dst)
    return ethernet(eth_dst, mac, ETH_P_IPV6, header + body)


def solicited_na(mac: bytes, sol: Solicitation) -> bytes:
    if sol.source == UNSPECIFIED:  # DAD probe: RFC 4861 7.2.4, to all nodes, S=0
        return unsolicited_na(mac, sol.target)
    return neighbor_advertisement(mac, sol.target, sol.sender_mac, sol.source, solicited=True)


def unsolicited_na(mac: bytes, vip: str) -> bytes:
    return neighbor_advertisement(
        mac, vip, multicast_mac(ALL_NODES), str(ALL_NODES), solicited=False
    )


def announcements_for(mac: bytes, vip: str) -> tuple[tuple[int, bytes], ...]:
    """(ethertype, frame) to send on takeover of `vip`."""
    if ipaddress.ip_address(vip).version == 4:
        return tuple((ETH_P_ARP, f) for f in gratuitous_arp(mac, vip))
    return ((ETH_P_IPV6, unsolicited_na(mac, vip)),)


# -- interfaces ------------------------------------------------------------------------


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


# -- the loop -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Config:
    interfaces: tuple[str, ...] = ()
    vips: frozenset[str] = frozenset()
    heartbeat_s: float = 0.2
    dead_after_s: float = 1.0

    def groups(self) -> frozenset[str]:
        return frozenset(solicited_node_group(v) for v in self.vips if ":" in v)


def _summary(vips: Iterable[str], limit: int = 10) -> str:
    ordered = sorted(vips)
    return ",".join(ordered[:limit]) + (",..." if len(ordered) > limit else "")


class _Engine:
    """Ports, membership and ownership; driven by the loop thread only.  The
    public fields are swapped whole, so other threads may read them."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.cfg = _Config()
        self.selector = selectors.DefaultSelector()
        self.ports: dict[str, _Port] = {}
        self.membership = Membership(node)
        self.owned: frozenset[str] = frozenset()
        self.live: tuple[str, ...] = (node,)
        self.changes = 0
        self._computed_for: tuple[frozenset[str], frozenset[str]] | None = None
        self._warm_until: float | None = None  # None while no port is open
        self._next_heartbeat = 0.0
        self._last_heartbeat = 0.0
        self._seq = 0
        self._pending: list[tuple[float, str]] = []  # heap of (due, vip) announcements
        self._retry_at = 0.0
        self._unavailable: dict[str, str] = {}  # interface -> last error logged
        self._duplicate_warned = False

    # -- configuration

    def reconfigure(self, cfg: _Config, now: float) -> None:
        self.cfg = cfg
        self._sync_ports(now)

    def _sync_ports(self, now: float) -> None:
        for name in [n for n in self.ports if n not in self.cfg.interfaces]:
            self._close_port(self.ports[name])
        for name in self.cfg.interfaces:
            if name not in self.ports:
                self._open_port(name, now)
        for name in list(self._unavailable):
            if name not in self.cfg.interfaces:
                del self._unavailable[name]
        groups = self.cfg.groups()
        for port in self.ports.values():
            port.set_groups(groups)
        self._retry_at = now + RETRY_S

    def _open_port(self, name: str, now: float) -> None:
        try:
            port = _Port.open(name)
        except OSError as exc:
            error = exc.strerror or str(exc)
            if self._unavailable.get(name) != error:  # once per distinct error
                log.warning("event=l2_interface_unavailable interface=%s error=%s", name, error)
            self._unavailable[name] = error
            return
        self._unavailable.pop(name, None)
        self.ports[name] = port
        for ethertype, sock in port.socks.items():
            self.selector.register(sock, selectors.EVENT_READ, (port, ethertype))
        if self._warm_until is None:
            # Listen a full dead interval before claiming anything (see module doc).
            self._warm_until = now + self.cfg.dead_after_s
        for vip in self.owned:  # a new port learns our VIPs like after a takeover
            heapq.heappush(self._pending, (now, vip))
        log.info("event=l2_interface_open interface=%s mac=%s", name, port.mac.hex(":"))

    def _close_port(self, port: _Port) -> None:
        for sock in port.socks.values():
            self.selector.unregister(sock)
        port.close()
        del self.ports[port.name]
        if not self.ports:
            self._warm_until = None
        log.info("event=l2_interface_closed interface=%s", port.name)

    # -- time

    def _ready(self, now: float) -> bool:
        return self._warm_until is not None and now >= self._warm_until

    def timeout(self, now: float) -> float:
        due = min(self._next_heartbeat, self._pending[0][0] if self._pending else now + TICK_S)
        return max(0.0, min(TICK_S, due - now))

    def tick(self, now: float) -> None:
        if self._unavailable and now >= self._retry_at:
            self._sync_ports(now)
        self._expire(now)
        self._reconcile_ownership(now)
        if now >= self._next_heartbeat:
            self._check_stall(now)
            self._heartbeat(now)
        self._send_due(now)

    def _check_stall(self, now: float) -> None:
        if self._last_heartbeat and now - self._last_heartbeat > self.cfg.dead_after_s:
            # This thread was stalled long enough for peers to declare us dead
            # and announce our VIPs; they give them back on our next heartbeat
            # without our noticing any change, so announce them again.
            log.warning("event=l2_stalled seconds=%.2f", now - self._last_heartbeat)
            for vip in self.owned:
                heapq.heappush(self._pending, (now, vip))

    def _heartbeat(self, now: float, *, leaving: bool = False) -> None:
        self._seq += 1
        hb = Heartbeat(self.node, self._seq, ready=self._ready(now), leaving=leaving)
        for port in self.ports.values():
            port.send(ETH_P_HEARTBEAT, heartbeat_frame(port.mac, hb))
        self._last_heartbeat = now
        self._next_heartbeat = now + self.cfg.heartbeat_s

    def _expire(self, now: float) -> None:
        for name in self.membership.expire(now, self.cfg.dead_after_s):
            log.info("event=l2_peer_down node=%s reason=timeout", name)
        self.live = self.membership.live()

    # -- ownership

    def _reconcile_ownership(self, now: float) -> None:
        ready = self._ready(now)
        members = self.membership.ready_peers() | ({self.node} if ready else frozenset())
        if self._computed_for == (members, self.cfg.vips):
            return
        if ready and self._computed_for is not None and self.node not in self._computed_for[0]:
            self._next_heartbeat = now  # tell peers at once that we take part now
        self._computed_for = (members, self.cfg.vips)
        owned = owned_by(self.node, self.cfg.vips, members)
        gained, lost = owned - self.owned, self.owned - owned
        self.owned = owned
        self.changes += len(gained) + len(lost)
        for vip in gained:
            for delay in ANNOUNCE_DELAYS_S:
                heapq.heappush(self._pending, (now + delay, vip))
        if gained:
            log.info("event=l2_takeover count=%d vips=%s", len(gained), _summary(gained))
        if lost:
            log.info("event=l2_release count=%d vips=%s", len(lost), _summary(lost))

    def _send_due(self, now: float) -> None:
        sent = 0
        while self._pending and self._pending[0][0] <= now and sent < MAX_ANNOUNCE_PER_TICK:
            vip = heapq.heappop(self._pending)[1]
            if vip not in self.owned:  # released meanwhile
                continue
            for port in self.ports.values():
                for ethertype, frame in announcements_for(port.mac, vip):
                    port.send(ethertype, frame)
            sent += 1

    # -- receiving

    def handle(self, port: _Port, ethertype: int, now: float) -> None:
        if self.ports.get(port.name) is not port:  # closed earlier in this round
            return
        try:
            frames = port.read(ethertype)
        except OSError as exc:  # ENETDOWN and friends; reading clears the error
            port.report(exc)
            if port.gone():
                self._close_port(port)
                self._unavailable[port.name] = "gone"
            return
        handler = self._handlers[ethertype]
        for frame in frames:
            handler(self, port, frame, now)

    def _on_heartbeat(self, port: _Port, frame: bytes, now: float) -> None:
        hb = decode_heartbeat(frame[ETH.size :])
        if hb is None:
            return
        if hb.node == self.node:
            self._check_own_name(frame[6:12])
            return
        known = hb.node in self.membership.live()
        self.membership.heard(hb, now)
        if hb.leaving:
            log.info("event=l2_peer_down node=%s reason=leaving", hb.node)
        elif not known:
            log.info("event=l2_peer_up node=%s interface=%s", hb.node, port.name)
        self.live = self.membership.live()

    def _check_own_name(self, src_mac: bytes) -> None:
        # Our own frame seen on another of our ports is fine; another machine
        # with our name would make both claim the same VIPs.
        if not self._duplicate_warned and all(p.mac != src_mac for p in self.ports.values()):
            self._duplicate_warned = True
            log.warning("event=l2_duplicate_node_name node=%s mac=%s", self.node, src_mac.hex(":"))

    def _on_arp(self, port: _Port, frame: bytes, now: float) -> None:
        req = parse_arp_request(frame)
        # sender == target: someone's own gratuitous ARP, not a question
        if req and req.target_ip in self.owned and req.sender_ip != req.target_ip:
            port.send(ETH_P_ARP, arp_reply(port.mac, req))

    def _on_solicitation(self, port: _Port, frame: bytes, now: float) -> None:
        sol = parse_neighbor_solicitation(frame)
        if sol and sol.target in self.owned:
            port.send(ETH_P_IPV6, solicited_na(port.mac, sol))

    _handlers: dict[int, Callable[[_Engine, _Port, bytes, float], None]] = {
        ETH_P_HEARTBEAT: _on_heartbeat,
        ETH_P_ARP: _on_arp,
        ETH_P_IPV6: _on_solicitation,
    }

    def close(self, now: float) -> None:
        if self.ports:
            self._heartbeat(now, leaving=True)
        for port in list(self.ports.values()):
            self._close_port(port)
        self.owned = frozenset()
        self.selector.close()


# -- the API ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    config: _Config | None  # None: stop
    done: threading.Event


def _canonical_vips(announcements: Sequence[Announcement]) -> frozenset[str]:
    out: set[str] = set()
    for a in announcements:
        try:
            out.add(str(ipaddress.ip_address(a.vip)))
        except ValueError:
            log.warning("event=l2_invalid_vip vip=%s gateways=%s", a.vip, ",".join(a.gateways))
    return frozenset(out)


def _config(announcements: Sequence[Announcement], settings: L2Settings) -> _Config:
    vips = _canonical_vips(announcements)
    heartbeat = max(settings.heartbeat_interval_ms, 10) / 1000
    dead_after = settings.dead_after_ms / 1000
    if dead_after < 2 * heartbeat:
        # One lost heartbeat must not look like a dead node.
        log.warning(
            "event=l2_settings_adjusted dead_after_ms=%d used_ms=%d",
            settings.dead_after_ms,
            int(3 * heartbeat * 1000),
        )
        dead_after = 3 * heartbeat
    interfaces = tuple(dict.fromkeys(settings.interfaces)) or discover_interfaces(sorted(vips))
    return _Config(interfaces, vips, heartbeat, dead_after)


class L2Announcer:
    """Answers ARP/NDP for the VIPs this node owns among the live nodes of the
    segment.  Synchronous and thread-safe; the socket loop runs in its own
    daemon thread, started by the first `apply`."""

    def __init__(self, node_name: str) -> None:
        encode_heartbeat(Heartbeat(node_name, 0))  # validates the name
        self.node_name = node_name
        self._engine = _Engine(node_name)
        self._lock = threading.Lock()  # serialises apply and close
        self._inbox: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- commands

    def apply(self, announcements: Sequence[Announcement], settings: L2Settings) -> None:
        """Announce exactly these VIPs (ready or not: a not-ready VIP still needs
        a node that answers for it) on the interfaces of `settings`."""
        config = _config(announcements, settings)
        with self._lock:
            if self._closed:
                log.warning("event=l2_apply_after_close")
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"l2-announce-{self.node_name}", daemon=True
                )
                self._thread.start()
            self._call(config)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._call(None)
                self._thread.join(APPLY_TIMEOUT_S)
            self._wake_r.close()
            self._wake_w.close()

    # -- metrics

    def owned(self) -> frozenset[str]:
        return self._engine.owned

    @property
    def ownership_changes(self) -> int:
        """Takeovers plus releases by this node, counted per VIP."""
        return self._engine.changes

    def live_nodes(self) -> tuple[str, ...]:
        """Nodes heard within the dead interval, this one included, sorted."""
        return self._engine.live

    # -- the thread

    def _call(self, config: _Config | None) -> None:
        request = _Request(config, threading.Event())
        self._inbox.put(request)
        self._wake_w.send(b"\0")
        if not request.done.wait(APPLY_TIMEOUT_S):
            log.warning("event=l2_loop_slow waited_s=%.0f", APPLY_TIMEOUT_S)

    def _run(self) -> None:
        engine = self._engine
        engine.selector.register(self._wake_r, selectors.EVENT_READ, None)
        while True:
            try:
                if not self._serve_inbox():
                    return
                # Read before expiring: after a stall, the heartbeats queued
                # meanwhile must count before anyone is declared dead.
                for key, _ in engine.selector.select(engine.timeout(time.monotonic())):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    else:
                        port, ethertype = key.data
                        engine.handle(port, ethertype, time.monotonic())
                engine.tick(time.monotonic())
            except Exception:  # a bug must not end announcing: log, back off, go on
                log.exception("event=l2_loop_error")
                time.sleep(0.1)

    def _serve_inbox(self) -> bool:
        while True:
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                return True
            try:
                if request.config is None:
                    self._engine.selector.unregister(self._wake_r)
                    self._engine.close(time.monotonic())
                    return False
                self._engine.reconfigure(request.config, time.monotonic())
            finally:
                request.done.set()
