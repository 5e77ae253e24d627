"""What gobgpd should run with: the node's settings validated into a
DaemonConfig (peers, router id, graceful restart), and the VIPs to announce.

Pure: its one question to the system, the source address towards a peer,
comes in as a function.  Never renders text, runs a process or logs; a problem
comes back as a message for the announcer to report, and one bad peer or VIP
leaves the others in.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agent.state import Announcement, BGPPeer, BGPSettings

ASN_MAX = 4294967295
RESTART_TIME_MAX = 4095  # 12 bits in the graceful-restart capability
TCP_MD5_KEY_MAX = 80  # bytes, TCP_MD5SIG_MAXKEYLEN


# -- the configuration as data -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A validated peer, ready to render."""

    address: str  # normalised
    asn: int
    port: int
    hold_time: int
    keepalive_time: int  # 0 = a third of the hold time (gobgpd's default)
    ebgp_multihop: int
    password: str = field(default="", repr=False)

    @property
    def family(self) -> str:
        return "ipv6-unicast" if ":" in self.address else "ipv4-unicast"


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    asn: int
    router_id: str
    listen_port: int = -1


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    global_: GlobalConfig
    peers: tuple[PeerConfig, ...]
    graceful_restart: bool
    restart_time: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What `plan` makes of the settings: a config, or None when the settings
    as a whole are unusable, and the problems found."""

    config: DaemonConfig | None
    problems: tuple[str, ...]


# -- validation ------------------------------------------------------------------------------


def peer_name(peer: BGPPeer) -> str:
    where = f" (from {peer.source})" if peer.source else ""
    return f"BGP peer {peer.address!r}{where}"


def peer_problem(peer: BGPPeer) -> str | None:
    """Why `peer` cannot be configured, or None."""
    try:
        addr = ipaddress.ip_address(peer.address)
    except ValueError:
        return "address is not an IP address"
    if addr.is_unspecified or addr.is_multicast:
        return "address cannot be a BGP neighbour"
    if addr.is_link_local and addr.version == 6:
        # gobgpd would need the interface (fe80::1%eth0); not supported here.
        return "IPv6 link-local neighbours are not supported"
    if not 1 <= peer.asn <= ASN_MAX:
        return f"ASN {peer.asn} is out of range 1..{ASN_MAX}"
    if not 1 <= peer.port <= 65535:
        return f"port {peer.port} is out of range 1..65535"
    if not 3 <= peer.hold_time <= 65535:
        # 0 (no keepalives) is legal BGP, but gobgpd reads 0 as "use 90 s".
        return f"hold time {peer.hold_time} is out of range 3..65535"
    if not 0 <= peer.keepalive_time < peer.hold_time:
        return f"keepalive time {peer.keepalive_time} must be below the hold time"
    if not 0 <= peer.ebgp_multihop <= 255:
        return f"eBGP multihop TTL {peer.ebgp_multihop} is out of range 0..255"
    return _password_problem(peer.password)


def _password_problem(password: str) -> str | None:
    try:
        key = password.encode()
    except UnicodeEncodeError:
        return "password is not valid Unicode text"
    if len(key) > TCP_MD5_KEY_MAX:
        return f"password is longer than {TCP_MD5_KEY_MAX} bytes (TCP-MD5 limit)"
    return None


def validate_peers(peers: Sequence[BGPPeer]) -> tuple[tuple[PeerConfig, ...], tuple[str, ...]]:
    """The usable peers (in order, first of a duplicated address wins) and a
    message for each one left out."""
    good: list[PeerConfig] = []
    problems: list[str] = []
    seen: set[str] = set()
    for peer in peers:
        reason = peer_problem(peer)
        if reason is not None:
            problems.append(f"{peer_name(peer)}: {reason}; peer skipped")
            continue
        address = str(ipaddress.ip_address(peer.address))
        if address in seen:
            problems.append(f"{peer_name(peer)}: configured more than once; duplicate skipped")
            continue
        seen.add(address)
        good.append(
            PeerConfig(
                address=address,
                asn=peer.asn,
                port=peer.port,
                hold_time=peer.hold_time,
                keepalive_time=peer.keepalive_time,
                ebgp_multihop=peer.ebgp_multihop,
                password=peer.password,
            )
        )
    return tuple(good), tuple(problems)


def settings_problems(settings: BGPSettings) -> tuple[str, ...]:
    """Problems with the node-wide settings; any of them means no config."""
    problems: list[str] = []
    if not 1 <= settings.local_asn <= ASN_MAX:
        problems.append(f"BGP local ASN {settings.local_asn} is out of range 1..{ASN_MAX}")
    if settings.router_id and not _is_router_id(settings.router_id):
        problems.append(f"BGP router id {settings.router_id!r} is not an IPv4 address")
    if settings.graceful_restart and not 1 <= settings.restart_time <= RESTART_TIME_MAX:
        problems.append(
            f"BGP graceful-restart time {settings.restart_time} is out of range "
            f"1..{RESTART_TIME_MAX}"
        )
    return tuple(f"{p}; BGP configuration not applied" for p in problems)


def _is_router_id(value: str) -> bool:
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return not addr.is_unspecified


def fallback_router_id(node_name: str) -> str:
    """A stable 32-bit id from the node name, for nodes without an IPv4 path
    to their first peer (IPv6-only): the router id must be 32 bits."""
    value = int.from_bytes(hashlib.sha256(node_name.encode()).digest()[:4], "big")
    return str(ipaddress.IPv4Address(value if 0 < value < 0xFFFFFFFF else 1))


def plan(
    settings: BGPSettings,
    node_name: str,
    route_source: Callable[[str], str | None],
) -> Plan:
    """Settings to a daemon config.  `route_source(peer)` is the preferred
    source address towards a peer (the kernel's choice), for the router id."""
    problems = settings_problems(settings)
    peers, peer_problems = validate_peers(settings.peers)
    if problems:
        return Plan(None, problems + peer_problems)
    router_id = str(ipaddress.IPv4Address(settings.router_id)) if settings.router_id else ""
    if not router_id:
        source = route_source(peers[0].address) if peers else None
        router_id = source if source and _is_router_id(source) else fallback_router_id(node_name)
    config = DaemonConfig(
        GlobalConfig(settings.local_asn, router_id),
        peers,
        settings.graceful_restart,
        settings.restart_time,
    )
    return Plan(config, peer_problems)


def desired_vips(announcements: Iterable[Announcement]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Normalised addresses of the ready VIPs, and messages for unusable ones."""
    vips: set[str] = set()
    problems: list[str] = []
    for ann in announcements:
        try:
            addr = ipaddress.ip_address(ann.vip)
        except ValueError:
            problems.append(f"VIP {ann.vip!r} (gateways {', '.join(ann.gateways)}): not an IP")
            continue
        if ann.ready:
            vips.add(str(addr))
    return frozenset(vips), tuple(problems)
