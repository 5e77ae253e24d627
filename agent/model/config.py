"""GatewayLBConfig: the object a GatewayClass's `spec.parametersRef` names.

It carries what the Gateway API leaves to the implementation and a bare-metal
cluster needs: address pools for Gateways that ask for no address (IPAM), and
how this node announces VIPs (L2 interfaces, BGP peers).  Cluster-scoped, group
`gatewaylb.io`, version `v1alpha1`; the CRD is in deploy/daemonset/.

Every rule a CRD schema could not express (an address range that runs
backwards, overlapping pools, a peer that is not an IP address) is checked here
so that the error names the field; a GatewayClass that references a malformed
config is then not Accepted, with that error as the message.

Pure: reads only the document it is given, never a file or the cluster.  It
never assigns an address (translate/ipam.py does) and never announces one
(agent/announce does).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from agent.model.fields import DNS1123_SUBDOMAIN, FieldError, Fields
from agent.model.meta import ObjectMeta
from agent.state import BGPPeer, BGPSettings, L2Settings

CONFIG_GROUP = "gatewaylb.io"
CONFIG_KIND = "GatewayLBConfig"
INTERFACE_NAME = re.compile(r"^[^\s/:]{1,15}$")
MAX_ASN = 4_294_967_295

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, order=True)
class AddressRange:
    """An inclusive range of one address family, as integers for arithmetic."""

    version: int
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return address.version == self.version and self.first <= int(address) <= self.last

    def address(self, offset: int) -> str:
        return str(ipaddress.ip_address(self.first + offset))


@dataclass(frozen=True, slots=True)
class AddressPool:
    name: str
    ranges: tuple[AddressRange, ...]
    auto_assign: bool = True

    def contains(self, address: IPAddress) -> bool:
        return any(address in r for r in self.ranges)


@dataclass(frozen=True, slots=True)
class GatewayLBConfig:
    meta: ObjectMeta
    pools: tuple[AddressPool, ...]
    l2: L2Settings | None
    bgp: BGPSettings | None


def parse_range(text: str, path: str) -> AddressRange:
    """`192.0.2.0/28` (network and broadcast addresses left out for IPv4 CIDRs
    longer than /31, as no host can use them), `192.0.2.10-192.0.2.20`, or one
    address."""
    text = text.strip()
    try:
        if "-" in text:
            lo_text, hi_text = (part.strip() for part in text.split("-", 1))
            lo, hi = ipaddress.ip_address(lo_text), ipaddress.ip_address(hi_text)
        elif "/" in text:
            net = ipaddress.ip_network(text, strict=True)
            first, last = int(net.network_address), int(net.broadcast_address)
            if net.version == 4 and net.prefixlen < 31:
                first, last = first + 1, last - 1
            return AddressRange(net.version, first, last)
        else:
            lo = hi = ipaddress.ip_address(text)
    except ValueError as exc:
        raise FieldError(
            path, f"{text[:64]!r} is not a CIDR, a range or an address: {exc}"
        ) from None
    if lo.version != hi.version:
        raise FieldError(path, f"{text!r}: both ends must be of one address family")
    if int(hi) < int(lo):
        raise FieldError(path, f"{text!r}: the range runs backwards")
    return AddressRange(lo.version, int(lo), int(hi))


def _overlap(a: AddressRange, b: AddressRange) -> bool:
    return a.version == b.version and a.first <= b.last and b.first <= a.last


def _parse_pools(spec: Fields) -> tuple[AddressPool, ...]:
    pools: list[AddressPool] = []
    seen: list[tuple[str, AddressRange]] = []
    for pf in spec.items("addressPools", max_items=64):
        name = pf.string("name", max_len=63, min_len=1, pattern=DNS1123_SUBDOMAIN)
        if any(p.name == name for p in pools):
            raise pf.error("name", f"pool {name!r} is defined twice")
        texts = pf.strings("addresses", min_items=1, max_items=256, max_len=100)
        ranges: list[AddressRange] = []
        for i, text in enumerate(texts):
            at = f"{pf.at('addresses')}[{i}]"
            rng = parse_range(text, at)
            for other_pool, other in seen:
                if _overlap(rng, other):
                    raise FieldError(at, f"{text!r} overlaps an address of pool {other_pool!r}")
            seen.append((name, rng))
            ranges.append(rng)
        pools.append(AddressPool(name, tuple(ranges), pf.boolean("autoAssign", True)))
    return tuple(pools)


def _parse_l2(f: Fields) -> L2Settings:
    interval = f.integer("heartbeatIntervalMilliseconds", 200, minimum=20, maximum=10_000)
    dead = f.integer("deadAfterMilliseconds", 1000, minimum=60, maximum=60_000)
    if dead < 3 * interval:
        raise f.error(
            "deadAfterMilliseconds",
            f"must be at least 3 heartbeat intervals ({3 * interval}), got {dead}",
        )
    return L2Settings(
        interfaces=f.strings("interfaces", max_items=32, pattern=INTERFACE_NAME),
        heartbeat_interval_ms=interval,
        dead_after_ms=dead,
    )


def _ip(f: Fields, key: str) -> str:
    text = f.string(key, max_len=64, min_len=1)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise f.error(key, f"{text[:64]!r} is not an IP address") from None


def _parse_peer(f: Fields, source: str) -> BGPPeer:
    hold = f.integer("holdTimeSeconds", 90, minimum=3, maximum=65535)
    keepalive = f.integer("keepaliveTimeSeconds", 0, minimum=0, maximum=21845)
    if keepalive and keepalive * 3 > hold:
        raise f.error("keepaliveTimeSeconds", f"must be at most a third of holdTime ({hold})")
    return BGPPeer(
        address=_ip(f, "address"),
        asn=f.integer("asn", minimum=1, maximum=MAX_ASN),
        port=f.integer("port", 179, minimum=1, maximum=65535),
        password=f.string("password", "", max_len=80),
        hold_time=hold,
        keepalive_time=keepalive,
        ebgp_multihop=f.integer("ebgpMultihop", 0, minimum=0, maximum=255),
        source=source,
    )


def _parse_bgp(f: Fields, source: str) -> BGPSettings:
    peers = tuple(_parse_peer(p, source) for p in f.items("peers", min_items=1, max_items=64))
    seen: set[str] = set()
    for i, peer in enumerate(peers):
        if peer.address in seen:
            raise FieldError(f"{f.at('peers')}[{i}].address", f"{peer.address} is listed twice")
        seen.add(peer.address)
    router_id = f.opt_string("routerID", max_len=15)
    if router_id is not None:
        try:
            ipaddress.IPv4Address(router_id)
        except ValueError:
            raise f.error("routerID", f"{router_id!r} is not an IPv4 address") from None
    gr = f.opt_obj("gracefulRestart")
    return BGPSettings(
        local_asn=f.integer("localASN", minimum=1, maximum=MAX_ASN),
        peers=peers,
        router_id=router_id or "",
        graceful_restart=gr.boolean("enabled", True) if gr else True,
        restart_time=gr.integer("restartTimeSeconds", 120, minimum=1, maximum=4095) if gr else 120,
    )


def parse_config(doc: Fields, meta: ObjectMeta) -> GatewayLBConfig:
    spec = doc.obj("spec")
    announce = spec.opt_obj("announce")
    l2 = announce.opt_obj("l2") if announce else None
    bgp = announce.opt_obj("bgp") if announce else None
    return GatewayLBConfig(
        meta=meta,
        pools=_parse_pools(spec),
        l2=_parse_l2(l2) if l2 is not None else None,
        bgp=_parse_bgp(bgp, meta.name) if bgp is not None else None,
    )
