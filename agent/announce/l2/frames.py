"""The wire formats of L2 announcement: heartbeat, ARP and NDP frames as bytes.

Owns the layouts (Ethernet, the heartbeat payload, ARP, IPv6 with ICMPv6
neighbour solicitations and advertisements and their checksum) and which frames
a takeover sends.  Pure functions of their arguments: it never opens a socket,
reads a clock or logs, so every frame is checked against the RFC layouts
without a kernel (tests/unit/test_l2_announce.py).  Why the frames look as they
do is in the package docstring (ARP, NDP).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_ARP = 0x0806
ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
# IEEE 802 "local experimental ethertype 1": meant for private protocols, so no
# standard frame on the LAN can be mistaken for a heartbeat.
ETH_P_HEARTBEAT = 0x88B5
ARPHRD_ETHER = 1
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
