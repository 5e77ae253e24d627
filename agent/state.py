"""DesiredState: what this node must program, in terms a kernel engineer reads.

- VIPs: the addresses the node serves.
- L4 frontends: (vip, protocol, port) -> weighted endpoint set.  Weights are
  integers in one common unit per frontend; `reject_weight` is the share of new
  flows that must be refused (it belongs to backendRefs that are invalid or have
  no ready endpoint) and is never handed to the valid backends.  A backend of
  weight 0 takes no new flow but keeps its established ones (a terminating
  endpoint).  A frontend without any positive weight refuses every new flow.
- L7 listeners: what the local proxy worker serves, with routing tables already
  ordered by the Gateway API's precedence rules.

Nothing here knows about Gateway API objects' validation or status; nothing
here knows about nftables or BPF.  `to_dict` is the stable printable form used
by `gatewaylb translate -o json`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from agent.filters import Retry, RouteFilter, Timeouts
from agent.refs import ListenerRef, ObjectRef

TCP = "tcp"
UDP = "udp"
_SCALARS = frozenset({str, int, bool, float})


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    ip: str
    port: int
    weight: int


@dataclass(frozen=True, slots=True)
class FrontendSource:
    """Which Gateway listener (and route) a frontend serves; metrics labels."""

    namespace: str
    gateway: str
    # The listener's name; "namespace/name/listener" for one a ListenerSet adds.
    listener: str
    route: str = ""  # "namespace/name" of the route carrying the traffic


# A kernel frontend's identity, the same in both dataplanes and in status:
# (VIP, "tcp" | "udp", port).
FrontendKey = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class L4Frontend:
    vip: str
    protocol: str  # tcp | udp
    port: int
    backends: tuple[Backend, ...]
    reject_weight: int
    source: FrontendSource

    @property
    def key(self) -> FrontendKey:
        return (self.vip, self.protocol, self.port)

    @property
    def total_weight(self) -> int:
        return sum(b.weight for b in self.backends) + self.reject_weight

    @property
    def accepts_new_flows(self) -> bool:
        return any(b.weight > 0 for b in self.backends)


# -- L7 -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendTLS:
    """TLS from the proxy to a Service's endpoints (a BackendTLSPolicy)."""

    policy: str  # namespace/name
    # Sent as SNI, and the name the certificate must carry (HAProxy verifies
    # the SNI it sent: the two cannot differ).
    hostname: str
    # PEM bundle of trusted CAs; None: the system's trust store.
    ca_pem: bytes | None = dataclasses.field(repr=False)
    # The certificate the proxy presents when the backend asks for one: its
    # Gateway's spec.tls.backend.clientCertificateRef.
    client_certificate: TLSCertificate | None = None


@dataclass(frozen=True, slots=True)
class ServiceBackend:
    """One backendRef of an L7 rule resolved to its ready endpoints."""

    name: str  # namespace/service:port, for config names and logs
    weight: int
    endpoints: tuple[Backend, ...]
    app_protocol: str | None = None
    filters: tuple[RouteFilter, ...] = ()
    tls: BackendTLS | None = None


@dataclass(frozen=True, slots=True)
class BackendSet:
    services: tuple[ServiceBackend, ...]
    # Weight of backendRefs that are invalid or have no endpoints: requests
    # that fall in this share get HTTP 500 (or a refused connection for TLS).
    invalid_weight: int = 0


@dataclass(frozen=True, slots=True)
class MatchRule:
    type: str
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    path_type: str  # Exact | PathPrefix | RegularExpression
    path: str
    headers: tuple[MatchRule, ...] = ()
    query_params: tuple[MatchRule, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True)
class HTTPRouteEntry:
    """One match of one rule: the unit of HTTP routing precedence."""

    route: ObjectRef
    rule: int
    match: HTTPMatch
    filters: tuple[RouteFilter, ...]
    backends: BackendSet
    timeouts: Timeouts | None = None
    grpc: bool = False
    retry: Retry | None = None


@dataclass(frozen=True, slots=True)
class VirtualHost:
    """Requests whose Host (or SNI) matches `hostname` ("*" matches any)."""

    hostname: str
    routes: tuple[HTTPRouteEntry, ...]


@dataclass(frozen=True, slots=True)
class TLSCertificate:
    secret: str  # namespace/name
    cert_pem: bytes = dataclasses.field(repr=False)
    key_pem: bytes = dataclasses.field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientValidation:
    """Client certificates a TLS listener asks for (Gateway spec.tls.frontend)."""

    ca_pem: bytes = dataclasses.field(repr=False)
    # AllowInsecureFallback: a missing or failing certificate is let through.
    insecure_fallback: bool = False


@dataclass(frozen=True, slots=True)
class TLSRouteEntry:
    """A TLSRoute on a TLS listener: SNI names -> backends (passthrough, or the
    decrypted stream when the listener terminates)."""

    route: ObjectRef
    hostnames: tuple[str, ...]
    backends: BackendSet


@dataclass(frozen=True, slots=True)
class L7Listener:
    gateway: str  # namespace/name
    listener: str
    vips: tuple[str, ...]
    port: int
    protocol: str  # HTTP | HTTPS | TLS
    tls_mode: str | None  # Terminate | Passthrough
    hostname: str | None
    certificates: tuple[TLSCertificate, ...] = ()
    virtual_hosts: tuple[VirtualHost, ...] = ()
    tls_routes: tuple[TLSRouteEntry, ...] = ()
    # TLS listener in Terminate mode carrying a TCPRoute: decrypted stream.
    tcp_backends: BackendSet | None = None
    # namespace/name of the ListenerSet that adds this listener; "" for the Gateway's own.
    listener_set: str = ""
    client_validation: ClientValidation | None = None

    @property
    def owner(self) -> ListenerRef:
        """The listener as the status that carries it names it."""
        if self.listener_set:
            kind, key = "ListenerSet", self.listener_set
        else:
            kind, key = "Gateway", self.gateway
        namespace, _, name = key.partition("/")
        return ListenerRef(ObjectRef(kind, namespace, name), self.listener)


# -- announcement -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announcement:
    """A VIP this node may announce.  `ready` is False when no listener on it
    can take a new flow (every backend gone): BGP then withdraws it, so the
    router stops sending traffic this node would refuse."""

    vip: str
    ready: bool
    gateways: tuple[str, ...]  # namespace/name of the Gateways using it


@dataclass(frozen=True, slots=True)
class BGPPeer:
    address: str
    asn: int
    port: int = 179
    password: str = dataclasses.field(default="", repr=False)
    hold_time: int = 90  # seconds; keepalive is a third of it unless set
    keepalive_time: int = 0
    ebgp_multihop: int = 0  # TTL; 0 = directly connected
    source: str = ""  # GatewayLBConfig name, for logs and conditions


@dataclass(frozen=True, slots=True)
class BGPSettings:
    local_asn: int
    peers: tuple[BGPPeer, ...]
    router_id: str = ""  # "" = this node's address towards the first peer
    graceful_restart: bool = True
    restart_time: int = 120  # seconds a peer keeps our routes while we restart


@dataclass(frozen=True, slots=True)
class L2Settings:
    interfaces: tuple[str, ...]  # empty = every interface with a route to the VIP's subnet
    heartbeat_interval_ms: int = 200
    dead_after_ms: int = 1000


@dataclass(frozen=True, slots=True)
class AnnounceSettings:
    l2: L2Settings | None = None
    bgp: BGPSettings | None = None


@dataclass(frozen=True, slots=True)
class DesiredState:
    vips: tuple[str, ...] = ()
    l4: tuple[L4Frontend, ...] = ()
    l7: tuple[L7Listener, ...] = ()
    announcements: tuple[Announcement, ...] = ()
    announce: AnnounceSettings = AnnounceSettings()

    def to_dict(self) -> dict[str, Any]:
        return {
            "vips": list(self.vips),
            "l4": [_plain(f) for f in self.l4],
            "l7": [_plain(listener) for listener in self.l7],
            "announcements": [_plain(a) for a in self.announcements],
            "announce": _plain(self.announce),
        }


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain(value: Any) -> Any:
    """A dataclass tree as JSON-ready data; secrets are shown by fingerprint only."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, ObjectRef | ListenerRef):
        return str(value)  # "Kind namespace/name", as status and logs name it
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for name in _field_names(type(value)):
            item = getattr(value, name)
            if name == "password" and item:
                out[name] = _fingerprint(item.encode())
            elif item is not None:
                out[name] = _plain(item)
        return out
    if isinstance(value, bytes):
        return _fingerprint(value)
    return value


def _fingerprint(secret: bytes) -> str:
    return "sha256:" + hashlib.sha256(secret).hexdigest()[:16]
