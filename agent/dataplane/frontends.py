"""One L4 frontend in canonical form, the same for both kernel dataplanes.

`normalise` validates a frontend of the desired state (protocol, port, VIP,
backends of the VIP's family, weights that fit 32 bits) and gives it one
canonical form (addresses in canonical text, duplicate backends merged,
sorted), so the nftables and eBPF dataplanes accept and refuse exactly the
same input and compare desired with programmed the same way.  Pure: never
touches the kernel.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import socket
from dataclasses import dataclass

from agent.state import TCP, UDP, Backend, FrontendKey, L4Frontend

Key = FrontendKey


@dataclass(frozen=True, slots=True)
class FrontendSpec:
    """One frontend in canonical form; equal specs mean identical kernel objects
    (in either dataplane)."""

    vip: str
    protocol: str
    port: int
    backends: tuple[Backend, ...]  # sorted, unique (ip, port); weight 0 kept
    reject_weight: int

    @property
    def key(self) -> Key:
        return (self.vip, self.protocol, self.port)

    @property
    def v6(self) -> bool:
        return is_ipv6(self.vip)

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.key, self.backends, self.reject_weight)


@functools.lru_cache(maxsize=1 << 17)
def _fingerprint(key: Key, backends: tuple[Backend, ...], reject: int) -> str:
    # Cached: a reconcile at 10k frontends compares 10k fingerprints.
    text = repr((key, [(b.ip, b.port, b.weight) for b in backends], reject))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FrontendError(ValueError):
    """A frontend that cannot be programmed; reported for that frontend only."""


@functools.lru_cache(maxsize=1 << 16)
def is_ipv6(ip: str) -> bool:
    return _canonical_ip(ip)[1] == 6


def canonical_ip(text: str) -> str:
    return _canonical_ip(text)[0]


@functools.lru_cache(maxsize=1 << 16)
def _canonical_ip(text: str) -> tuple[str, int]:
    """(canonical text, version); cached: backend addresses repeat across frontends."""
    try:
        # IPv4 the fast way: glibc's inet_pton takes exactly the dotted quads
        # ipaddress takes (no leading zeros, four parts), inet_ntop prints them back.
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)), 4
    except (OSError, TypeError):
        ip = ipaddress.ip_address(text)
        if getattr(ip, "scope_id", None):  # "fe80::1%eth0": no dataplane has zones
            raise ValueError(f"{text!r} has a zone") from None
        return str(ip), ip.version


def normalise(fe: L4Frontend) -> FrontendSpec:
    """Validate one frontend and give it a canonical form (sorted, duplicates merged)."""
    if fe.protocol not in (TCP, UDP):
        raise FrontendError(f"unsupported protocol {fe.protocol!r}")
    if not 0 < fe.port < 65536:
        raise FrontendError(f"port {fe.port} out of range")
    try:
        vip, version = _canonical_ip(fe.vip)
    except (ValueError, TypeError) as exc:
        raise FrontendError(f"bad vip {fe.vip!r}") from exc
    if fe.reject_weight < 0:
        raise FrontendError("negative reject weight")
    merged: dict[tuple[str, int], int] = {}
    for b in fe.backends:
        try:
            ip, ip_version = _canonical_ip(b.ip)
        except (ValueError, TypeError) as exc:
            raise FrontendError(f"bad backend ip {b.ip!r}") from exc
        if ip_version != version:
            raise FrontendError(f"backend {b.ip} is not of the vip's address family")
        if not 0 < b.port < 65536 or b.weight < 0:
            raise FrontendError(f"bad backend {b.ip}:{b.port} weight {b.weight}")
        k = (ip, b.port)
        merged[k] = merged.get(k, 0) + b.weight
    backends = tuple(Backend(ip, port, w) for (ip, port), w in sorted(merged.items()))
    total = sum(b.weight for b in backends) + fe.reject_weight
    if total >= 2**32:
        raise FrontendError("total weight does not fit 32 bits")
    return FrontendSpec(vip, fe.protocol, fe.port, backends, fe.reject_weight)
