"""GatewayClass acceptance, Gateway addresses, and listener validation.

Produces, for each Gateway of our classes, the verdict on every listener
(accepted? conflicted? refs resolved? which route kinds?) before any route is
looked at; attach.py then counts routes onto these listeners.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.model.config import CONFIG_GROUP, CONFIG_KIND, AddressPool, GatewayLBConfig
from agent.model.core import EndpointSlice
from agent.model.gateway import (
    FrontendTLS,
    FrontendValidation,
    Gateway,
    GatewayClass,
    Listener,
    ParametersReference,
    SecretReference,
)
from agent.model.meta import CORE_GROUP, GATEWAY_GROUP, GroupKind, Key, age_order
from agent.model.routes import GRPC_ROUTE, HTTP_ROUTE, TCP_ROUTE, TLS_ROUTE, UDP_ROUTE
from agent.model.snapshot import InvalidObject
from agent.state import ClientValidation, TLSCertificate
from agent.translate.cabundles import resolve_ca_bundles
from agent.translate.index import SnapshotIndex
from agent.translate.ipam import AddressRequest, assign
from agent.translate.refs import reference_permitted
from agent.translate.status import (
    ACCEPTED,
    CONFLICTED,
    INSECURE_FRONTEND_VALIDATION_MODE,
    PROGRAMMED,
    R_ACCEPTED,
    R_ADDRESS_NOT_ASSIGNED,
    R_ADDRESS_NOT_USABLE,
    R_CONFIGURATION_CHANGED,
    R_HOSTNAME_CONFLICT,
    R_INVALID,
    R_INVALID_CA_CERTIFICATE_KIND,
    R_INVALID_CERTIFICATE_REF,
    R_INVALID_CLIENT_CERTIFICATE_REF,
    R_INVALID_PARAMETERS,
    R_INVALID_ROUTE_KINDS,
    R_LISTENERS_NOT_VALID,
    R_NO_CONFLICTS,
    R_NO_VALID_CA_CERTIFICATE,
    R_PORT_UNAVAILABLE,
    R_PROGRAMMED,
    R_PROTOCOL_CONFLICT,
    R_REF_NOT_PERMITTED,
    R_RESOLVED_REFS,
    R_SUPPORTED_VERSION,
    R_UNSUPPORTED_ADDRESS,
    R_UNSUPPORTED_PROTOCOL,
    RESOLVED_REFS,
    SUPPORTED_VERSION,
    Condition,
    GatewayClassStatus,
    GatewayStatus,
    ListenerStatus,
)

GATEWAY_API_VERSION = "v1.6.1"

# Route kinds each listener protocol can carry (and carries by default).
_HTTP_KINDS = (GroupKind(GATEWAY_GROUP, HTTP_ROUTE), GroupKind(GATEWAY_GROUP, GRPC_ROUTE))
ROUTE_KINDS_BY_PROTOCOL: dict[tuple[str, str | None], tuple[GroupKind, ...]] = {
    ("HTTP", None): _HTTP_KINDS,
    ("HTTPS", "Terminate"): _HTTP_KINDS,
    ("TLS", "Passthrough"): (GroupKind(GATEWAY_GROUP, TLS_ROUTE),),
    ("TLS", "Terminate"): (
        GroupKind(GATEWAY_GROUP, TLS_ROUTE),
        GroupKind(GATEWAY_GROUP, TCP_ROUTE),
    ),
    ("TCP", None): (GroupKind(GATEWAY_GROUP, TCP_ROUTE),),
    ("UDP", None): (GroupKind(GATEWAY_GROUP, UDP_ROUTE),),
}
L4_PROTOCOLS = ("TCP", "UDP")
L7_PROTOCOLS = ("HTTP", "HTTPS", "TLS")


def transport_of(protocol: str) -> str:
    return "udp" if protocol == "UDP" else "tcp"


@dataclass
class ListenerState:
    listener: Listener
    gateway: Key
    # The ListenerSet that adds this listener to the Gateway; None for the
    # Gateway's own.  Its namespace is the one allowedRoutes "Same" and
    # certificate references are relative to.
    listener_set: Key | None = None
    supported_kinds: tuple[GroupKind, ...] = ()
    # (reason, message) when the listener is not accepted / conflicted / unresolved.
    not_accepted: tuple[str, str] | None = None
    conflict: tuple[str, str] | None = None
    unresolved: tuple[str, str] | None = None
    certificates: list[TLSCertificate] = field(default_factory=list)
    client_validation: ClientValidation | None = None
    attached_routes: int = 0

    @property
    def tls_mode(self) -> str | None:
        return self.listener.tls.mode if self.listener.tls is not None else None

    @property
    def owner_kind(self) -> str:
        return "Gateway" if self.listener_set is None else "ListenerSet"

    @property
    def owner_namespace(self) -> str:
        return (self.listener_set or self.gateway).namespace

    @property
    def owner(self) -> str:
        return f"{self.owner_kind} {self.listener_set or self.gateway}"

    @property
    def label(self) -> str:
        """The listener as its Gateway's status and messages name it."""
        prefix = f"ListenerSet {self.listener_set} " if self.listener_set is not None else ""
        return f"{prefix}listener {self.listener.name}"

    @property
    def metrics_name(self) -> str:
        """The `listener` label: "namespace/name/listener" for a ListenerSet's."""
        if self.listener_set is None:
            return self.listener.name
        return f"{self.listener_set}/{self.listener.name}"

    @property
    def valid(self) -> bool:
        """Accepted with every reference resolved."""
        return self.accepted and self.unresolved is None

    @property
    def accepted(self) -> bool:
        return self.not_accepted is None and self.conflict is None

    @property
    def needs_certificates(self) -> bool:
        return self.listener.protocol in ("HTTPS", "TLS") and self.tls_mode == "Terminate"

    @property
    def programmable(self) -> bool:
        """Would the dataplane serve this listener (given its Gateway is programmed)?"""
        if not self.accepted:
            return False
        return not (self.needs_certificates and not self.certificates)

    def status(self, generation: int, gateway_programmed: bool) -> ListenerStatus:
        conds: list[Condition] = []
        if self.conflict is not None:
            reason, message = self.conflict
            conds.append(Condition(ACCEPTED, False, reason, message, generation))
        elif self.not_accepted is not None:
            reason, message = self.not_accepted
            conds.append(Condition(ACCEPTED, False, reason, message, generation))
        else:
            conds.append(Condition(ACCEPTED, True, R_ACCEPTED, "Listener is accepted", generation))
        if self.unresolved is not None:
            reason, message = self.unresolved
            conds.append(Condition(RESOLVED_REFS, False, reason, message, generation))
        else:
            conds.append(
                Condition(
                    RESOLVED_REFS, True, R_RESOLVED_REFS, "All references resolved", generation
                )
            )
        if self.conflict is not None:
            reason, message = self.conflict
            conds.append(Condition(CONFLICTED, True, reason, message, generation))
        else:
            conds.append(Condition(CONFLICTED, False, R_NO_CONFLICTS, "No conflicts", generation))
        if self.programmable and gateway_programmed:
            conds.append(
                Condition(PROGRAMMED, True, R_PROGRAMMED, "Listener is programmed", generation)
            )
        elif self.conflict is not None:
            conds.append(
                Condition(PROGRAMMED, False, self.conflict[0], self.conflict[1], generation)
            )
        elif self.programmable:
            conds.append(
                Condition(PROGRAMMED, False, R_INVALID, "the Gateway is not programmed", generation)
            )
        else:
            why = (self.not_accepted or self.unresolved or ("", "listener is invalid"))[1]
            conds.append(Condition(PROGRAMMED, False, R_INVALID, why, generation))
        kinds = () if not self.accepted else self.supported_kinds
        return ListenerStatus(
            name=self.listener.name,
            supported_kinds=tuple((k.group, k.kind) for k in kinds),
            attached_routes=self.attached_routes,
            conditions=tuple(conds),
        )


class AttachedListeners(Protocol):
    """What a Gateway needs of a ListenerSet that names it (listenersets.py):
    whether it is admitted and accepted, and its listeners."""

    listeners: list[ListenerState]

    @property
    def attached(self) -> bool: ...

    @property
    def accepted(self) -> bool: ...


@dataclass
class GatewayState:
    gateway: Gateway
    listeners: list[ListenerState]
    vips: tuple[str, ...] = ()
    wanted: int = 0  # addresses still to be assigned from the class's pools
    # (reason, message) when the Gateway as a whole is not accepted / programmed.
    not_accepted: tuple[str, str] | None = None
    not_programmed: tuple[str, str] | None = None
    # Its references outside listeners (spec.tls.backend.clientCertificateRef).
    unresolved: tuple[str, str] | None = None
    client_certificate: TLSCertificate | None = None
    # ListenerSets whose parentRef names this Gateway and which it allows, in
    # the spec's order of precedence (see listenersets.py).
    listener_sets: list[AttachedListeners] = field(default_factory=list)
    # Set by settle() once listener verdicts are final: routes ask for every parentRef.
    _accepted: bool | None = None

    kind = "Gateway"

    @property
    def key(self) -> Key:
        return self.gateway.meta.key

    @property
    def gateway_key(self) -> Key:
        return self.key

    @property
    def accepted(self) -> bool:
        if self._accepted is not None:
            return self._accepted
        return self.not_accepted is None and any(ls.accepted for ls in self.listeners)

    @property
    def set_listeners(self) -> list[ListenerState]:
        """The listeners that attached ListenerSets add, after the Gateway's own."""
        return [ls for s in self.listener_sets if s.attached for ls in s.listeners]

    def settle(self) -> None:
        """Listener verdicts are final (after claim_ports); remember the result."""
        self._accepted = None
        self._accepted = self.accepted

    @property
    def programmed(self) -> bool:
        # The Gateway's own configuration (its addresses and the listeners that
        # are valid) is programmed even while some listener cannot be served,
        # e.g. for want of a certificate: that listener says so in its own
        # status.  The conformance suite needs such Gateways Programmed=True.
        return self.accepted and self.not_programmed is None

    def status(self) -> GatewayStatus:
        gen = self.gateway.meta.generation
        conds: list[Condition] = []
        invalid = [ls for ls in self.listeners if not ls.accepted or ls.unresolved is not None]
        if self.not_accepted is not None:
            conds.append(Condition(ACCEPTED, False, *self.not_accepted, gen))
        elif not any(ls.accepted for ls in self.listeners):
            conds.append(
                Condition(ACCEPTED, False, R_LISTENERS_NOT_VALID, "No listener is valid", gen)
            )
        elif invalid:
            names = ", ".join(ls.listener.name for ls in invalid)
            conds.append(
                Condition(ACCEPTED, True, R_LISTENERS_NOT_VALID, f"Invalid listeners: {names}", gen)
            )
        else:
            conds.append(Condition(ACCEPTED, True, R_ACCEPTED, "Gateway is accepted", gen))
        if self.unresolved is not None:
            conds.append(Condition(RESOLVED_REFS, False, *self.unresolved, gen))
        else:
            conds.append(
                Condition(RESOLVED_REFS, True, R_RESOLVED_REFS, "All references resolved", gen)
            )
        insecure = _insecure_ports(self.gateway.frontend_tls)
        if insecure:
            conds.append(
                Condition(
                    INSECURE_FRONTEND_VALIDATION_MODE,
                    True,
                    R_CONFIGURATION_CHANGED,
                    f"client certificate validation is AllowInsecureFallback on {insecure}: "
                    "connections without a valid client certificate are accepted",
                    gen,
                )
            )
        programmed = self.programmed
        if programmed:
            conds.append(Condition(PROGRAMMED, True, R_PROGRAMMED, "Gateway is programmed", gen))
        elif not self.accepted:
            conds.append(Condition(PROGRAMMED, False, R_INVALID, "Gateway is not accepted", gen))
        else:
            assert self.not_programmed is not None
            conds.append(Condition(PROGRAMMED, False, *self.not_programmed, gen))
        return GatewayStatus(
            addresses=self.vips if programmed else (),
            conditions=tuple(conds),
            listeners=tuple(ls.status(gen, programmed) for ls in self.listeners),
            attached_listener_sets=sum(1 for s in self.listener_sets if s.accepted),
        )


# -- GatewayClass ------------------------------------------------------------------


def gateway_class_status(
    gc: GatewayClass,
    supported_features: tuple[str, ...],
    configs: Mapping[str, GatewayLBConfig | InvalidObject],
) -> tuple[GatewayClassStatus, GatewayLBConfig | None, bool]:
    """The class's status, its GatewayLBConfig (if it names one) and whether
    it is accepted."""
    gen = gc.meta.generation
    config: GatewayLBConfig | None = None
    problem = None
    if gc.parameters_ref is not None:
        config, problem = _class_config(gc.parameters_ref, configs)
    if problem is not None:
        accepted = Condition(ACCEPTED, False, R_INVALID_PARAMETERS, problem, gen)
    else:
        accepted = Condition(ACCEPTED, True, R_ACCEPTED, "GatewayClass is accepted", gen)
    version = Condition(
        SUPPORTED_VERSION,
        True,
        R_SUPPORTED_VERSION,
        f"Gateway API {GATEWAY_API_VERSION} is supported",
        gen,
    )
    status = GatewayClassStatus((accepted, version), supported_features)
    return status, config, accepted.status


def _class_config(
    ref: ParametersReference, configs: Mapping[str, GatewayLBConfig | InvalidObject]
) -> tuple[GatewayLBConfig | None, str | None]:
    what = f"parametersRef {ref.kind}.{ref.group or 'core'} {ref.name}"
    if (ref.group, ref.kind) != (CONFIG_GROUP, CONFIG_KIND):
        return None, (
            f"{what}: this controller takes parameters only of kind {CONFIG_KIND}.{CONFIG_GROUP}"
        )
    found = configs.get(ref.name)
    if found is None:
        return None, f"{what}: not found"
    if isinstance(found, InvalidObject):
        return None, f"{what} is invalid: {found.error}"
    return found, None


def invalid_class_status(inv: InvalidObject) -> GatewayClassStatus:
    gen = inv.meta.generation
    return GatewayClassStatus(
        (Condition(ACCEPTED, False, R_INVALID, f"invalid GatewayClass: {inv.error}", gen),), ()
    )


def invalid_gateway_state(inv: InvalidObject) -> GatewayState:
    """Stands in for a malformed Gateway when routes name it as their parent."""
    gateway = Gateway(inv.meta, inv.gateway_class or "", (), (), None)
    return GatewayState(gateway, [], not_accepted=(R_INVALID, f"invalid Gateway: {inv.error}"))


# -- Gateway -----------------------------------------------------------------------


def _address_problem(gateway: Gateway) -> tuple[str, str] | None:
    for i, addr in enumerate(gateway.addresses):
        if addr.type != "IPAddress":
            return (
                R_UNSUPPORTED_ADDRESS,
                f"spec.addresses[{i}]: address type {addr.type!r} is not supported "
                "(only IPAddress)",
            )
        if addr.value is None:
            continue
        try:
            ip = ipaddress.ip_address(addr.value)
        except ValueError:
            return (
                R_UNSUPPORTED_ADDRESS,
                f"spec.addresses[{i}]: {addr.value[:64]!r} is not an IP address",
            )
        if getattr(ip, "scope_id", None):
            return (
                R_UNSUPPORTED_ADDRESS,
                f"spec.addresses[{i}]: {addr.value[:64]!r}: an address with a zone cannot be "
                "a virtual IP",
            )
    return None


@dataclass(frozen=True, slots=True)
class HostAddresses:
    """Addresses of real hosts, which a VIP must not take over: the node would
    then intercept traffic meant for that host (MetalLB and Cilium's LB-IPAM
    refuse them too).  `node` are this node's own addresses, which only the
    agent can read; endpoint addresses come from the snapshot.  `allowed`
    lifts the rule for users who need it (`run --allow-host-addresses`)."""

    node: frozenset[str] = frozenset()
    allowed: bool = False


def host_addresses(hosts: HostAddresses, slices: Iterable[EndpointSlice]) -> dict[str, str]:
    """address -> what it is, for the messages; empty when host addresses are allowed."""
    if hosts.allowed:
        return {}
    out: dict[str, str] = {}
    for es in slices:
        for ep in es.endpoints:
            for address in ep.addresses:
                out.setdefault(
                    _canonical(address),
                    f"an endpoint address (EndpointSlice {es.meta.namespace}/{es.meta.name})",
                )
    for address in hosts.node:
        out[_canonical(address)] = "an address of this node"
    out.pop("", None)
    return out


def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return ""


def _usable_vips(
    gateway: Gateway, pools: tuple[AddressPool, ...] | None, hosts: Mapping[str, str]
) -> GatewayState:
    """The addresses the Gateway names, and how many it leaves to the pools."""
    state = GatewayState(gateway, [])
    vips: list[str] = []
    for i, addr in enumerate(gateway.addresses):
        if addr.value is None:
            state.wanted += 1
            continue
        ip = ipaddress.ip_address(addr.value)
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback or str(ip) == "255.255.255.255":
            state.not_programmed = (
                R_ADDRESS_NOT_USABLE,
                f"spec.addresses[{i}]: {ip} cannot be used as a virtual IP",
            )
            return state
        if str(ip) in hosts:
            state.not_programmed = (
                R_ADDRESS_NOT_USABLE,
                f"spec.addresses[{i}]: {ip} is {hosts[str(ip)]}: a VIP must not be a real "
                "host's address, whose traffic this node would intercept "
                "(`gatewaylb run --allow-host-addresses` allows it)",
            )
            return state
        if pools and not any(p.contains(ip) for p in pools):
            names = ", ".join(p.name for p in pools)
            state.not_programmed = (
                R_ADDRESS_NOT_USABLE,
                f"spec.addresses[{i}]: {ip} is in none of the address pools of "
                f"GatewayClass {gateway.class_name} ({names})",
            )
            return state
        if str(ip) not in vips:
            vips.append(str(ip))
    if not gateway.addresses:
        state.wanted = 1
    state.vips = tuple(vips)
    if state.wanted and not pools:
        state.wanted = 0
        state.not_programmed = (
            R_ADDRESS_NOT_ASSIGNED,
            "spec.addresses asks for an address to be assigned and GatewayClass "
            f"{gateway.class_name} has no address pool (spec.parametersRef to a "
            f"{CONFIG_KIND} with addressPools)",
        )
    return state


def assign_addresses(
    states: Iterable[GatewayState],
    pools_of: Mapping[Key, tuple[AddressPool, ...]],
    prior: Mapping[Key, tuple[str, ...]],
    hosts: Iterable[str] = (),
) -> None:
    """Give Gateways that want addresses some from their pools (see ipam.py),
    never a host's address."""
    ordered = sorted(states, key=lambda s: age_order(s.gateway.meta))
    claimed = [v for s in ordered if s.accepted for v in s.vips]
    claimed += hosts
    requests = []
    for state in ordered:
        if not state.wanted or not state.accepted or state.not_programmed is not None:
            continue
        auto = tuple(p for p in pools_of.get(state.key, ()) if p.auto_assign)
        recorded = (*state.gateway.status_addresses, *prior.get(state.key, ()))
        requests.append(AddressRequest(state.key, auto, state.wanted, recorded))
    assigned = assign(requests, claimed)
    for state in ordered:
        if state.key not in assigned:
            continue
        got = assigned[state.key]
        if got is None:
            names = ", ".join(p.name for p in pools_of.get(state.key, ()) if p.auto_assign)
            state.not_programmed = (
                R_ADDRESS_NOT_ASSIGNED,
                f"no free address in the address pools of GatewayClass "
                f"{state.gateway.class_name} ({names or 'none with autoAssign'})",
            )
            continue
        state.vips = tuple(dict.fromkeys((*state.vips, *got)))


def _supported_kinds(ls: ListenerState) -> None:
    allowed = ROUTE_KINDS_BY_PROTOCOL[(ls.listener.protocol, ls.tls_mode)]
    requested = ls.listener.allowed_routes.kinds
    if requested is None:
        ls.supported_kinds = allowed
        return
    valid = tuple(dict.fromkeys(k for k in requested if k in allowed))
    invalid = [k for k in requested if k not in allowed]
    ls.supported_kinds = valid
    if invalid:
        names = ", ".join(f"{k.kind}.{k.group}" if k.group else k.kind for k in invalid)
        ls.unresolved = (
            R_INVALID_ROUTE_KINDS,
            f"route kinds not supported on a {ls.listener.protocol} listener: {names}",
        )


def _mark_conflicts(listeners: list[ListenerState]) -> None:
    """Listeners that share a port must be distinct; all indistinct ones lose
    (the spec forbids picking a winner)."""
    by_port: dict[tuple[int, str], list[ListenerState]] = {}
    for ls in listeners:
        if ls.not_accepted is None:
            key = (ls.listener.port, transport_of(ls.listener.protocol))
            by_port.setdefault(key, []).append(ls)
    for (port, transport), group in by_port.items():
        if len(group) < 2 or transport == "udp":
            continue  # two UDP listeners on one port are refused by the CRD already
        protocols = {ls.listener.protocol for ls in group}
        message = ""
        if "TCP" in protocols:
            message = f"port {port}: a TCP listener cannot share its port with another listener"
        elif "HTTP" in protocols and len(protocols) > 1:
            message = f"port {port}: HTTP cannot share its port with HTTPS or TLS listeners"
        # TLS listeners in Terminate and Passthrough mode share a port: the
        # proxy tells them apart by the SNI of the ClientHello (TLSRouteModeMixed).
        if message:
            for ls in group:
                ls.conflict = (R_PROTOCOL_CONFLICT, message)
            continue
        by_hostname: dict[str | None, list[ListenerState]] = {}
        for ls in group:
            by_hostname.setdefault(ls.listener.hostname, []).append(ls)
        for hostname, same in by_hostname.items():
            if len(same) > 1:
                shown = hostname or "(no hostname)"
                for ls in same:
                    ls.conflict = (
                        R_HOSTNAME_CONFLICT,
                        f"port {port}: listeners {', '.join(s.listener.name for s in same)} "
                        f"share hostname {shown}",
                    )


def listener_conflict(new: ListenerState, taken: Iterable[ListenerState]) -> tuple[str, str] | None:
    """Why `new` cannot join listeners that already hold their ports (those
    of a Gateway and of the ListenerSets before it): the spec's precedence
    lets the earlier ones keep them."""
    port, transport = new.listener.port, transport_of(new.listener.protocol)
    for old in taken:
        if old.listener.port != port or transport_of(old.listener.protocol) != transport:
            continue
        protocols = {old.listener.protocol, new.listener.protocol}
        where = f"port {port}: {old.owner} listener {old.listener.name} ({old.listener.protocol})"
        if "TCP" in protocols or transport == "udp":
            return (R_PROTOCOL_CONFLICT, f"{where} holds this port whole")
        if "HTTP" in protocols and len(protocols) > 1:
            return (R_PROTOCOL_CONFLICT, f"{where}: HTTP cannot share a port with HTTPS or TLS")
        if old.listener.hostname == new.listener.hostname:
            shown = new.listener.hostname or "(no hostname)"
            return (R_HOSTNAME_CONFLICT, f"{where} has hostname {shown} already")
    return None


# No \s* before the body: with the lazy body class it made matching quadratic.
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]+?)-----END \1-----")


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    for match in _PEM_BLOCK.finditer(data):
        try:
            der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
        except (binascii.Error, ValueError):
            return []
        # Every certificate and key in DER is an ASN.1 SEQUENCE.
        if not der or der[0] != 0x30:
            return []
        out.append((match.group(1).decode(), der))
    return out


def check_key_pair(cert: bytes | None, key: bytes | None) -> str | None:
    """Why a tls.crt / tls.key pair is unusable, or None when it looks right.

    A structural check (PEM armour, base64, ASN.1 framing); the proxy's own
    configuration check is the final word on the key matching the certificate.
    """
    if not cert or not key:
        return "must hold tls.crt and tls.key"
    certs = [b for b in _pem_blocks(cert) if b[0] == "CERTIFICATE"]
    keys = [b for b in _pem_blocks(key) if b[0].endswith("PRIVATE KEY")]
    if not certs:
        return "tls.crt holds no PEM certificate"
    if len(keys) != 1:
        return "tls.key must hold exactly one PEM private key"
    return None


def _secret_problem(
    index: SnapshotIndex,
    ref: SecretReference,
    *,
    from_kind: str,
    from_namespace: str,
    where: str,
    bad_ref: str,
) -> tuple[str, str] | TLSCertificate:
    """A certificate reference resolved to its key pair, or (reason, message)."""
    namespace = ref.namespace or from_namespace
    if ref.group != CORE_GROUP or ref.kind != "Secret":
        return (bad_ref, f"{where}: unsupported kind {ref.kind}.{ref.group}")
    if not reference_permitted(
        index,
        from_kind=from_kind,
        from_namespace=from_namespace,
        to_kind="Secret",
        to_namespace=namespace,
        to_name=ref.name,
    ):
        return (
            R_REF_NOT_PERMITTED,
            f"{where}: Secret {namespace}/{ref.name} is in another namespace and no "
            "ReferenceGrant allows it",
        )
    secret = index.secrets.get(Key(namespace, ref.name))
    if secret is None:
        invalid = index.invalid.get(("Secret", Key(namespace, ref.name)))
        found = f"is invalid: {invalid}" if invalid is not None else "not found"
        return (bad_ref, f"{where}: Secret {namespace}/{ref.name} {found}")
    cert, key = secret.get("tls.crt"), secret.get("tls.key")
    problem = check_key_pair(cert, key)
    if problem is not None:
        return (bad_ref, f"{where}: Secret {namespace}/{ref.name} {problem}")
    assert cert is not None and key is not None
    return TLSCertificate(f"{namespace}/{ref.name}", cert, key)


def _resolve_client_certificate(state: GatewayState, index: SnapshotIndex) -> None:
    ref = state.gateway.backend_client_certificate
    if ref is None:
        return
    found = _secret_problem(
        index,
        ref,
        from_kind="Gateway",
        from_namespace=state.key.namespace,
        where="spec.tls.backend.clientCertificateRef",
        bad_ref=R_INVALID_CLIENT_CERTIFICATE_REF,
    )
    if isinstance(found, TLSCertificate):
        state.client_certificate = found
    else:
        state.unresolved = found


def _resolve_certificates(ls: ListenerState, index: SnapshotIndex) -> None:
    assert ls.listener.tls is not None
    problems: list[tuple[str, str]] = []
    for i, ref in enumerate(ls.listener.tls.certificate_refs):
        found = _secret_problem(
            index,
            ref,
            from_kind=ls.owner_kind,
            from_namespace=ls.owner_namespace,
            where=f"tls.certificateRefs[{i}]",
            bad_ref=R_INVALID_CERTIFICATE_REF,
        )
        if isinstance(found, TLSCertificate):
            ls.certificates.append(found)
        else:
            problems.append(found)
    if problems:
        ls.unresolved = (problems[0][0], "; ".join(m for _, m in problems))


def _insecure_ports(frontend: FrontendTLS | None) -> str:
    if frontend is None:
        return ""
    where = []
    if frontend.default is not None and frontend.default.mode == "AllowInsecureFallback":
        where.append("the default")
    where += [
        f"port {port}"
        for port, v in frontend.per_port
        if v is not None and v.mode == "AllowInsecureFallback"
    ]
    return ", ".join(where)


def _resolve_client_validation(
    ls: ListenerState, frontend: FrontendTLS, index: SnapshotIndex
) -> None:
    """The CA bundle a terminating listener checks client certificates
    against (spec.tls.frontend, per port or the default)."""
    port = ls.listener.port
    validation: FrontendValidation | None = frontend.for_port(port)
    if validation is None:
        return
    at = (
        f"spec.tls.frontend.perPort[port={port}]"
        if any(p == port for p, _ in frontend.per_port)
        else "spec.tls.frontend.default"
    )
    refs = validation.ca_certificate_refs
    bundles = resolve_ca_bundles(
        index,
        refs,
        where=f"{at}.validation",
        from_kind="Gateway",
        from_namespace=ls.gateway.namespace,
        namespaces=[ref.namespace for ref in refs],
        bad_kind=R_INVALID_CA_CERTIFICATE_KIND,
    )
    if ls.unresolved is None:
        ls.unresolved = bundles.unresolved
    if not bundles.pems:
        ls.not_accepted = (R_NO_VALID_CA_CERTIFICATE, f"{at}: no caCertificateRef is usable")
        return
    insecure = validation.mode == "AllowInsecureFallback"
    ls.client_validation = ClientValidation(bundles.pem, insecure)


def judge_listener(
    ls: ListenerState, index: SnapshotIndex, frontend: FrontendTLS | None = None
) -> None:
    """A listener on its own: its protocol, route kinds and certificates
    (its own, and those it checks clients' against)."""
    protocol = ls.listener.protocol
    if (protocol, ls.tls_mode) not in ROUTE_KINDS_BY_PROTOCOL:
        if protocol in L7_PROTOCOLS:
            ls.not_accepted = (R_UNSUPPORTED_PROTOCOL, f"unsupported TLS mode for {protocol}")
        else:
            ls.not_accepted = (
                R_UNSUPPORTED_PROTOCOL,
                f"protocol {protocol!r} is not supported (supported: HTTP, HTTPS, TLS, TCP, UDP)",
            )
        return
    _supported_kinds(ls)
    if ls.needs_certificates:
        _resolve_certificates(ls, index)
        if frontend is not None:
            _resolve_client_validation(ls, frontend, index)


def evaluate_gateway(
    gateway: Gateway,
    class_accepted: bool,
    index: SnapshotIndex,
    pools: tuple[AddressPool, ...] | None = None,
    hosts: Mapping[str, str] | None = None,
) -> GatewayState:
    state = GatewayState(
        gateway=gateway,
        listeners=[
            ListenerState(listener=lst, gateway=gateway.meta.key) for lst in gateway.listeners
        ],
    )
    for ls in state.listeners:
        judge_listener(ls, index, gateway.frontend_tls)
    _mark_conflicts(state.listeners)

    if not class_accepted:
        state.not_accepted = (
            R_INVALID,
            f"GatewayClass {gateway.class_name} is not accepted",
        )
    elif gateway.infrastructure_parameters_ref is not None:
        ref = gateway.infrastructure_parameters_ref
        state.not_accepted = (
            R_INVALID_PARAMETERS,
            f"spec.infrastructure.parametersRef: {ref.kind}.{ref.group} is not supported",
        )
    else:
        state.not_accepted = _address_problem(gateway)
    _resolve_client_certificate(state, index)
    if state.not_accepted is None:
        addresses = _usable_vips(gateway, pools, hosts or {})
        state.vips, state.wanted = addresses.vips, addresses.wanted
        state.not_programmed = addresses.not_programmed
    return state


def claim_ports(states: list[GatewayState]) -> None:
    """Two Gateways cannot serve the same VIP, transport and port: the older one
    keeps it, the newer one's listener reads PortUnavailable."""
    owners: dict[tuple[str, str, int], tuple[Key, str]] = {}
    for state in sorted(states, key=lambda s: age_order(s.gateway.meta)):
        if not state.accepted or not state.vips:
            continue
        for ls in (*state.listeners, *state.set_listeners):
            if not ls.accepted:
                continue
            transport = transport_of(ls.listener.protocol)
            keys = [(vip, transport, ls.listener.port) for vip in state.vips]
            taken = next((owners[k] for k in keys if k in owners), None)
            if taken is not None and taken[0] != state.key:
                ls.not_accepted = (
                    R_PORT_UNAVAILABLE,
                    f"{transport.upper()} port {ls.listener.port} is already used on this address "
                    f"by Gateway {taken[0]} {taken[1]}",
                )
                continue
            for k in keys:
                owners.setdefault(k, (state.key, ls.label))
