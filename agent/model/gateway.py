"""GatewayClass, Gateway, ListenerSet and ReferenceGrant, with the defaults and
validation rules their CRDs declare (OpenAPI defaults and the CEL rules the API
server enforces).

A Gateway's `status.addresses` is read too, leniently (a damaged status never
makes the Gateway invalid): it is what keeps pool addresses stable (see
translate/ipam.py).  Pure: reads only the document it is given.  It never
resolves a reference or settles a conflict between objects; translate does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.model.fields import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    GROUP_NAME,
    HOSTNAME,
    KIND_NAME,
    FieldError,
    Fields,
    each,
)
from agent.model.meta import CORE_GROUP, GATEWAY_GROUP, GroupKind, Key, ObjectMeta

PROTOCOL_PATTERN = re.compile(
    r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
    r"|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$"
)
ADDRESS_TYPE_PATTERN = re.compile(
    r"^Hostname|IPAddress|NamedAddress"
    r"|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"
)


@dataclass(frozen=True, slots=True)
class ParametersReference:
    group: str
    kind: str
    name: str
    namespace: str | None


@dataclass(frozen=True, slots=True)
class GatewayClass:
    meta: ObjectMeta
    controller_name: str
    parameters_ref: ParametersReference | None
    description: str | None


@dataclass(frozen=True, slots=True)
class LabelSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...]
    match_expressions: tuple[LabelSelectorRequirement, ...]

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True, slots=True)
class AllowedRoutes:
    namespaces_from: str  # Same | All | Selector
    selector: LabelSelector | None
    # None: the listener did not restrict kinds (the protocol's defaults apply).
    kinds: tuple[GroupKind, ...] | None


@dataclass(frozen=True, slots=True)
class SecretReference:
    group: str
    kind: str
    name: str
    namespace: str | None


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    mode: str  # Terminate | Passthrough
    certificate_refs: tuple[SecretReference, ...]
    options: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    hostname: str | None
    port: int
    protocol: str
    tls: ListenerTLS | None
    allowed_routes: AllowedRoutes


@dataclass(frozen=True, slots=True)
class AllowedListeners:
    """Which ListenerSets may add listeners to a Gateway (spec.allowedListeners)."""

    namespaces_from: str  # None | Same | All | Selector
    selector: LabelSelector | None


NO_LISTENER_SETS = AllowedListeners("None", None)


@dataclass(frozen=True, slots=True)
class CACertificateReference:
    group: str
    kind: str
    name: str
    namespace: str | None


@dataclass(frozen=True, slots=True)
class FrontendValidation:
    """Client certificates the Gateway's TLS listeners ask for and check."""

    ca_certificate_refs: tuple[CACertificateReference, ...]
    mode: str  # AllowValidOnly | AllowInsecureFallback


@dataclass(frozen=True, slots=True)
class FrontendTLS:
    """spec.tls.frontend: a default validation and per-port ones."""

    default: FrontendValidation | None
    per_port: tuple[tuple[int, FrontendValidation | None], ...]

    def for_port(self, port: int) -> FrontendValidation | None:
        for p, validation in self.per_port:
            if p == port:
                return validation
        return self.default


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    type: str
    value: str | None


@dataclass(frozen=True, slots=True)
class Gateway:
    meta: ObjectMeta
    class_name: str
    listeners: tuple[Listener, ...]
    addresses: tuple[GatewayAddress, ...]
    infrastructure_parameters_ref: ParametersReference | None
    # status.addresses as last written: the record that keeps an address taken
    # from a pool stable across restarts and agents (see translate/ipam.py).
    status_addresses: tuple[str, ...] = ()
    allowed_listeners: AllowedListeners = NO_LISTENER_SETS
    # spec.tls.backend.clientCertificateRef: what the proxy presents to
    # backends that ask for a client certificate (over a BackendTLSPolicy).
    backend_client_certificate: SecretReference | None = None
    frontend_tls: FrontendTLS | None = None

    def listener(self, name: str) -> Listener | None:
        for listener in self.listeners:
            if listener.name == name:
                return listener
        return None


@dataclass(frozen=True, slots=True)
class ParentGatewayReference:
    group: str
    kind: str
    name: str
    namespace: str | None


@dataclass(frozen=True, slots=True)
class ListenerSet:
    """Listeners added to a Gateway from another object (and, often, by another
    team): its parent must allow it (Gateway spec.allowedListeners)."""

    meta: ObjectMeta
    parent_ref: ParentGatewayReference
    listeners: tuple[Listener, ...]

    @property
    def parent_key(self) -> Key:
        return Key(self.parent_ref.namespace or self.meta.namespace, self.parent_ref.name)


@dataclass(frozen=True, slots=True)
class ReferenceGrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True)
class ReferenceGrantTo:
    group: str
    kind: str
    name: str | None


@dataclass(frozen=True, slots=True)
class ReferenceGrant:
    meta: ObjectMeta
    from_: tuple[ReferenceGrantFrom, ...]
    to: tuple[ReferenceGrantTo, ...]


# -- parsing ---------------------------------------------------------------------


def _parameters_ref(f: Fields, *, namespaced: bool) -> ParametersReference:
    return ParametersReference(
        group=f.string("group", max_len=253, pattern=GROUP_NAME),
        kind=f.string("kind", max_len=63, min_len=1, pattern=KIND_NAME),
        name=f.string("name", max_len=253, min_len=1),
        namespace=f.opt_string("namespace", max_len=63, pattern=DNS1123_LABEL)
        if namespaced
        else None,
    )


def parse_gateway_class(doc: Fields, meta: ObjectMeta) -> GatewayClass:
    spec = doc.obj("spec")
    ref = spec.opt_obj("parametersRef")
    return GatewayClass(
        meta=meta,
        controller_name=spec.string("controllerName", max_len=253, min_len=1),
        parameters_ref=_parameters_ref(ref, namespaced=True) if ref else None,
        description=spec.opt_string("description", max_len=64),
    )


def parse_label_selector(f: Fields) -> LabelSelector:
    exprs = []
    for e in f.items("matchExpressions"):
        op = e.string("operator", enum=("In", "NotIn", "Exists", "DoesNotExist"))
        values = e.strings("values", max_len=63)
        if op in ("In", "NotIn") and not values:
            raise e.error("values", f"must be non-empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise e.error("values", f"must be empty for operator {op}")
        exprs.append(LabelSelectorRequirement(e.string("key", max_len=317, min_len=1), op, values))
    return LabelSelector(match_labels=f.string_map("matchLabels"), match_expressions=tuple(exprs))


def _allowed_routes(f: Fields | None) -> AllowedRoutes:
    if f is None:
        return AllowedRoutes("Same", None, None)
    ns = f.opt_obj("namespaces")
    namespaces_from = "Same"
    selector = None
    if ns is not None:
        namespaces_from = ns.string("from", "Same", enum=("All", "Selector", "Same"))
        sel = ns.opt_obj("selector")
        if sel is not None:
            selector = parse_label_selector(sel)
        if namespaces_from == "Selector" and selector is None:
            raise ns.error("selector", "required when from is Selector")
    kinds: tuple[GroupKind, ...] | None = None
    if f.has("kinds"):
        kinds = tuple(
            GroupKind(
                k.string("group", GATEWAY_GROUP, max_len=253, pattern=GROUP_NAME),
                k.string("kind", max_len=63, min_len=1, pattern=KIND_NAME),
            )
            for k in f.items("kinds", max_items=8)
        )
    return AllowedRoutes(namespaces_from, selector, kinds)


def parse_secret_reference(f: Fields) -> SecretReference:
    return SecretReference(
        group=f.string("group", CORE_GROUP, max_len=253, pattern=GROUP_NAME),
        kind=f.string("kind", "Secret", max_len=63, min_len=1, pattern=KIND_NAME),
        name=f.string("name", max_len=253, min_len=1),
        namespace=f.opt_string("namespace", max_len=63, pattern=DNS1123_LABEL),
    )


def _listener_tls(f: Fields) -> ListenerTLS:
    mode = f.string("mode", "Terminate", enum=("Terminate", "Passthrough"))
    refs = tuple(parse_secret_reference(r) for r in f.items("certificateRefs", max_items=64))
    options = f.string_map("options")
    if mode == "Terminate" and not refs and not options:
        raise f.error(
            "certificateRefs", "certificateRefs or options must be set when mode is Terminate"
        )
    return ListenerTLS(mode=mode, certificate_refs=refs, options=options)


def _listener(f: Fields) -> Listener:
    protocol = f.string("protocol", max_len=255, min_len=1, pattern=PROTOCOL_PATTERN)
    tls_fields = f.opt_obj("tls")
    hostname = f.opt_string("hostname", max_len=253, pattern=HOSTNAME) or None
    if protocol in ("HTTP", "TCP", "UDP") and tls_fields is not None:
        raise f.error("tls", f"must not be set for protocol {protocol}")
    if protocol in ("TCP", "UDP") and hostname is not None:
        raise f.error("hostname", f"must not be set for protocol {protocol}")
    tls = _listener_tls(tls_fields) if tls_fields is not None else None
    if protocol == "HTTPS" and tls is not None and tls.mode != "Terminate":
        raise f.error("tls.mode", "must be Terminate for protocol HTTPS")
    # The CRD defaults tls.mode to Terminate before its CEL rule "tls mode must
    # be set for protocol TLS" runs, so only a missing tls block breaks it.
    if protocol == "TLS" and tls_fields is None:
        raise f.error("tls.mode", "must be set for protocol TLS")
    return Listener(
        name=f.string("name", max_len=253, min_len=1, pattern=DNS1123_SUBDOMAIN),
        hostname=hostname,
        port=f.integer("port", minimum=1, maximum=65535),
        protocol=protocol,
        tls=tls,
        allowed_routes=_allowed_routes(f.opt_obj("allowedRoutes")),
    )


def _listeners(spec: Fields, owner: str) -> tuple[Listener, ...]:
    listener_fields = spec.items("listeners", min_items=1, max_items=64)
    listeners = tuple(each(listener_fields, _listener))
    names: set[str] = set()
    combos: set[tuple[int, str, str | None]] = set()
    for lf, listener in zip(listener_fields, listeners, strict=True):
        if listener.name in names:
            raise lf.error("name", f"listener name {listener.name!r} must be unique in the {owner}")
        names.add(listener.name)
        combo = (listener.port, listener.protocol, listener.hostname)
        if combo in combos:
            raise FieldError(
                lf.path, "the combination of port, protocol and hostname must be unique"
            )
        combos.add(combo)
    return listeners


def _allowed_listeners(f: Fields | None) -> AllowedListeners:
    ns = f.opt_obj("namespaces") if f is not None else None
    if ns is None:
        return NO_LISTENER_SETS
    namespaces_from = ns.string("from", "None", enum=("All", "Selector", "Same", "None"))
    sel = ns.opt_obj("selector")
    selector = parse_label_selector(sel) if sel is not None else None
    if namespaces_from == "Selector" and selector is None:
        raise ns.error("selector", "required when from is Selector")
    return AllowedListeners(namespaces_from, selector)


def parse_gateway(doc: Fields, meta: ObjectMeta) -> Gateway:
    spec = doc.obj("spec")
    listeners = _listeners(spec, "Gateway")
    addresses = []
    seen_addresses: set[tuple[str, str]] = set()
    for a in spec.items("addresses", max_items=16):
        kind = a.string("type", "IPAddress", max_len=253, min_len=1, pattern=ADDRESS_TYPE_PATTERN)
        value = a.opt_string("value", max_len=253) or None
        if kind == "Hostname" and value is not None and not HOSTNAME.fullmatch(value):
            raise a.error("value", "must be a valid hostname")
        if value is not None and kind in ("IPAddress", "Hostname"):
            if (kind, value) in seen_addresses:
                raise a.error("value", f"{kind} values must be unique")
            seen_addresses.add((kind, value))
        addresses.append(GatewayAddress(kind, value))
    infra = spec.opt_obj("infrastructure")
    infra_ref = infra.opt_obj("parametersRef") if infra else None
    return Gateway(
        meta=meta,
        class_name=spec.string("gatewayClassName", max_len=253, min_len=1),
        listeners=listeners,
        addresses=tuple(addresses),
        infrastructure_parameters_ref=(
            _parameters_ref(infra_ref, namespaced=False) if infra_ref else None
        ),
        status_addresses=_status_addresses(doc.raw("status")),
        allowed_listeners=_allowed_listeners(spec.opt_obj("allowedListeners")),
        backend_client_certificate=_backend_client_certificate(spec.opt_obj("tls")),
        frontend_tls=_frontend_tls(spec.opt_obj("tls")),
    )


def _validation(f: Fields | None) -> FrontendValidation | None:
    v = f.opt_obj("validation") if f is not None else None
    if v is None:
        return None
    refs = tuple(
        CACertificateReference(
            group=r.string("group", max_len=253, pattern=GROUP_NAME),
            kind=r.string("kind", max_len=63, min_len=1, pattern=KIND_NAME),
            name=r.string("name", max_len=253, min_len=1),
            namespace=r.opt_string("namespace", max_len=63, pattern=DNS1123_LABEL),
        )
        for r in v.items("caCertificateRefs", min_items=1, max_items=16)
    )
    mode = v.string("mode", "AllowValidOnly", enum=("AllowValidOnly", "AllowInsecureFallback"))
    return FrontendValidation(refs, mode)


def _frontend_tls(tls: Fields | None) -> FrontendTLS | None:
    frontend = tls.opt_obj("frontend") if tls is not None else None
    if frontend is None:
        return None
    per_port: list[tuple[int, FrontendValidation | None]] = []
    for item in frontend.items("perPort", max_items=64):
        port = item.integer("port", minimum=1, maximum=65535)
        if any(p == port for p, _ in per_port):
            raise item.error("port", "Port for TLS configuration must be unique within the Gateway")
        per_port.append((port, _validation(item.obj("tls"))))
    return FrontendTLS(_validation(frontend.obj("default")), tuple(per_port))


def _backend_client_certificate(tls: Fields | None) -> SecretReference | None:
    backend = tls.opt_obj("backend") if tls is not None else None
    ref = backend.opt_obj("clientCertificateRef") if backend is not None else None
    return parse_secret_reference(ref) if ref is not None else None


def _status_addresses(status: object) -> tuple[str, ...]:
    """IP addresses from a Gateway's status, read leniently: status is written
    by a controller, and a damaged one must not make the Gateway invalid."""
    if not isinstance(status, dict) or not isinstance(status.get("addresses"), list):
        return ()
    out: list[str] = []
    for item in status["addresses"][:16]:
        if isinstance(item, dict) and item.get("type", "IPAddress") == "IPAddress":
            value = item.get("value")
            if isinstance(value, str) and len(value) <= 64:
                out.append(value)
    return tuple(out)


def parse_parent_gateway_reference(f: Fields) -> ParentGatewayReference:
    return ParentGatewayReference(
        group=f.string("group", GATEWAY_GROUP, max_len=253, pattern=GROUP_NAME),
        kind=f.string("kind", "Gateway", max_len=63, min_len=1, pattern=KIND_NAME),
        name=f.string("name", max_len=253, min_len=1),
        namespace=f.opt_string("namespace", max_len=63, min_len=1, pattern=DNS1123_LABEL),
    )


def parse_listener_set(doc: Fields, meta: ObjectMeta) -> ListenerSet:
    spec = doc.obj("spec")
    return ListenerSet(
        meta=meta,
        parent_ref=parse_parent_gateway_reference(spec.obj("parentRef")),
        listeners=_listeners(spec, "ListenerSet"),
    )


def parse_reference_grant(doc: Fields, meta: ObjectMeta) -> ReferenceGrant:
    spec = doc.obj("spec")
    from_ = tuple(
        ReferenceGrantFrom(
            group=f.string("group", max_len=253, pattern=GROUP_NAME),
            kind=f.string("kind", max_len=63, min_len=1, pattern=KIND_NAME),
            namespace=f.string("namespace", max_len=63, min_len=1, pattern=DNS1123_LABEL),
        )
        for f in spec.items("from", min_items=1, max_items=16)
    )
    to = tuple(
        ReferenceGrantTo(
            group=t.string("group", max_len=253, pattern=GROUP_NAME),
            kind=t.string("kind", max_len=63, min_len=1, pattern=KIND_NAME),
            name=t.opt_string("name", max_len=253) or None,
        )
        for t in spec.items("to", min_items=1, max_items=16)
    )
    return ReferenceGrant(meta=meta, from_=from_, to=to)
