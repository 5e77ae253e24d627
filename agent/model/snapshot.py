"""The Snapshot: every object the agent needs, parsed, typed and frozen.

`parse_object` turns one untrusted document into a model object; `SnapshotBuilder`
collects them (dropping duplicates) into a `Snapshot`, which is all that the
translate core ever sees.  Sources (files, Kubernetes) only produce snapshots.

An object whose identity can be read but whose spec is malformed becomes an
`InvalidObject`: it is kept so that translate can give it a status naming the
bad field, instead of it silently vanishing.

Where no API server validated the documents (manifest files), the builder can
also warn about fields and kinds the API server would have rejected
(`check_fields`); such warnings never change what is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from agent.gcpause import gc_paused
from agent.model.config import CONFIG_GROUP, CONFIG_KIND, GatewayLBConfig, parse_config
from agent.model.core import (
    ConfigMap,
    EndpointSlice,
    Namespace,
    Secret,
    Service,
    parse_config_map,
    parse_endpoint_slice,
    parse_namespace,
    parse_secret,
    parse_service,
)
from agent.model.fields import FieldError, Fields
from agent.model.gateway import (
    Gateway,
    GatewayClass,
    ListenerSet,
    ReferenceGrant,
    parse_gateway,
    parse_gateway_class,
    parse_listener_set,
    parse_parent_gateway_reference,
    parse_reference_grant,
)
from agent.model.known import unknown_fields, unknown_kind_problem
from agent.model.meta import GATEWAY_GROUP, ObjectMeta, parse_meta
from agent.model.policy import BackendTLSPolicy, parse_backend_tls_policy
from agent.model.routes import (
    L4_ROUTE_KINDS,
    ROUTE_KINDS,
    GRPCRoute,
    HTTPRoute,
    L4Route,
    ParentReference,
    parse_grpc_route,
    parse_http_route,
    parse_l4_route,
    parse_parent_refs,
)

# kind -> the API versions the targeted release's CRDs (and core Kubernetes) serve.
SERVED_VERSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "GatewayClass": (GATEWAY_GROUP, ("v1", "v1beta1")),
    "Gateway": (GATEWAY_GROUP, ("v1", "v1beta1")),
    "ListenerSet": (GATEWAY_GROUP, ("v1",)),
    "HTTPRoute": (GATEWAY_GROUP, ("v1", "v1beta1")),
    "GRPCRoute": (GATEWAY_GROUP, ("v1",)),
    "ReferenceGrant": (GATEWAY_GROUP, ("v1", "v1beta1")),
    "BackendTLSPolicy": (GATEWAY_GROUP, ("v1",)),
    "TCPRoute": (GATEWAY_GROUP, ("v1", "v1alpha2")),
    "UDPRoute": (GATEWAY_GROUP, ("v1", "v1alpha2")),
    "TLSRoute": (GATEWAY_GROUP, ("v1", "v1alpha3", "v1alpha2")),
    "Service": ("", ("v1",)),
    "Namespace": ("", ("v1",)),
    "Secret": ("", ("v1",)),
    "ConfigMap": ("", ("v1",)),
    "EndpointSlice": ("discovery.k8s.io", ("v1",)),
    CONFIG_KIND: (CONFIG_GROUP, ("v1alpha1",)),
}
CLUSTER_SCOPED = frozenset({"GatewayClass", "Namespace", CONFIG_KIND})


@dataclass(frozen=True, slots=True)
class InvalidObject:
    """A Gateway API object whose spec is malformed, known by name."""

    kind: str
    meta: ObjectMeta
    error: str
    # Read best-effort from the malformed spec, so the right status can be given.
    gateway_class: str | None = None
    controller_name: str | None = None
    parent_refs: tuple[ParentReference, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadProblem:
    """A document that could not be used at all (not even its name), or, among
    a Snapshot's warnings, a flaw that did not stop it from being used."""

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}" if self.source else self.message


Parsed = (
    GatewayClass
    | Gateway
    | ListenerSet
    | HTTPRoute
    | GRPCRoute
    | L4Route
    | ReferenceGrant
    | BackendTLSPolicy
    | Service
    | EndpointSlice
    | Namespace
    | Secret
    | ConfigMap
    | GatewayLBConfig
    | InvalidObject
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    gateway_classes: tuple[GatewayClass, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    listener_sets: tuple[ListenerSet, ...] = ()
    http_routes: tuple[HTTPRoute, ...] = ()
    grpc_routes: tuple[GRPCRoute, ...] = ()
    l4_routes: tuple[L4Route, ...] = ()
    reference_grants: tuple[ReferenceGrant, ...] = ()
    backend_tls_policies: tuple[BackendTLSPolicy, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    secrets: tuple[Secret, ...] = ()
    config_maps: tuple[ConfigMap, ...] = ()
    configs: tuple[GatewayLBConfig, ...] = ()
    invalid: tuple[InvalidObject, ...] = ()
    problems: tuple[LoadProblem, ...] = ()
    # Unknown fields and kinds (manifest files only): the objects are used as written.
    warnings: tuple[LoadProblem, ...] = ()


_SPEC_PARSERS: dict[str, Callable[[Fields, ObjectMeta], Any]] = {
    "GatewayClass": parse_gateway_class,
    "Gateway": parse_gateway,
    "ListenerSet": parse_listener_set,
    "HTTPRoute": parse_http_route,
    "GRPCRoute": parse_grpc_route,
    "ReferenceGrant": parse_reference_grant,
    "BackendTLSPolicy": parse_backend_tls_policy,
    "Service": parse_service,
    "Namespace": parse_namespace,
    "Secret": parse_secret,
    "ConfigMap": parse_config_map,
    "EndpointSlice": parse_endpoint_slice,
    CONFIG_KIND: parse_config,
}


def _describe(kind: str, meta: ObjectMeta) -> str:
    return f"{kind} {meta.key}"


def parse_object(doc: object, source: str = "") -> Parsed | LoadProblem | None:
    """One document in, one model object out; None for kinds the agent ignores."""
    if not isinstance(doc, dict):
        return LoadProblem(source, "a document must be an object with apiVersion and kind")
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return LoadProblem(source, "apiVersion and kind must be strings")
    if kind not in SERVED_VERSIONS:
        return None  # Deployments, ConfigMaps, ...: not ours to read
    group, _, version = api_version.rpartition("/")
    want_group, versions = SERVED_VERSIONS[kind]
    if group != want_group:
        return None  # the same kind name in another API group
    if version not in versions:
        served = ", ".join(f"{want_group}/{v}" if want_group else v for v in versions)
        return LoadProblem(source, f"{kind}: apiVersion {api_version!r} is not served ({served})")
    fields = Fields(doc, "")
    try:
        meta = parse_meta(
            fields, namespaced=kind not in CLUSTER_SCOPED, api_version=api_version, source=source
        )
    except FieldError as exc:
        return LoadProblem(source, f"{kind}: {exc}")
    try:
        if kind in L4_ROUTE_KINDS:
            return parse_l4_route(fields, meta, kind=kind, version=version)
        parsed: Parsed = _SPEC_PARSERS[kind](fields, meta)
        return parsed
    except FieldError as exc:
        return _invalid(kind, meta, doc, str(exc))
    except RecursionError:
        return _invalid(kind, meta, doc, "object is nested too deeply")


def _invalid(kind: str, meta: ObjectMeta, doc: dict[str, Any], error: str) -> InvalidObject:
    spec = doc.get("spec")
    gateway_class = None
    controller_name = None
    parent_refs: tuple[ParentReference, ...] = ()
    if isinstance(spec, dict):
        if kind == "GatewayClass" and isinstance(spec.get("controllerName"), str):
            controller_name = spec["controllerName"]
        if kind == "Gateway" and isinstance(spec.get("gatewayClassName"), str):
            gateway_class = spec["gatewayClassName"]
        if kind in ROUTE_KINDS:
            parent_refs = _best_effort_parent_refs(spec)
        if kind == "ListenerSet":
            parent_refs = _best_effort_parent_gateway(spec)
    return InvalidObject(
        kind=kind,
        meta=meta,
        error=error,
        gateway_class=gateway_class,
        controller_name=controller_name,
        parent_refs=parent_refs,
    )


def _best_effort_parent_refs(spec: dict[str, Any]) -> tuple[ParentReference, ...]:
    refs = spec.get("parentRefs")
    if not isinstance(refs, list):
        return ()
    out: list[ParentReference] = []
    for ref in refs[:32]:
        try:
            out.extend(parse_parent_refs(Fields({"parentRefs": [ref]}, "spec")))
        except FieldError:
            continue
    return tuple(dict.fromkeys(out))


def _best_effort_parent_gateway(spec: dict[str, Any]) -> tuple[ParentReference, ...]:
    """A malformed ListenerSet's parentRef, as a route's would read, so that
    translate can tell whether the ListenerSet is ours to give a status."""
    try:
        ref = parse_parent_gateway_reference(Fields(spec, "spec").obj("parentRef"))
    except FieldError:
        return ()
    return (ParentReference(ref.group, ref.kind, ref.namespace, ref.name, None, None),)


def _best_effort_name(kind: str, doc: dict[str, Any]) -> str:
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return kind
    namespace = meta.get("namespace")
    prefix = f"{namespace}/" if isinstance(namespace, str) else ""
    return f"{kind} {prefix}{meta['name']}"


def field_warnings(
    doc: object, source: str, parsed: Parsed | LoadProblem | None
) -> list[LoadProblem]:
    """What strict validation by an API server would have said of one document
    that `parse_object` turned into `parsed`: its unknown kind or fields."""
    if not isinstance(doc, dict):
        return []
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return []
    if parsed is None:
        problem = unknown_kind_problem(kind, api_version, SERVED_VERSIONS)
        return [LoadProblem(source, problem)] if problem else []
    unknown = unknown_fields(doc, kind, api_version)
    if not unknown:
        return []
    if isinstance(parsed, LoadProblem):
        name = _best_effort_name(kind, doc)
    else:
        name = _describe(kind, parsed.meta)
    return [LoadProblem(source, f"{name}: {u}") for u in unknown]


_CHECK_BATCH = 256


@dataclass
class SnapshotBuilder:
    """Collects parsed objects; the first definition of a name wins.

    With `check_fields`, documents added with `add_documents` are also checked
    for unknown kinds and fields, as `kubectl --validate=strict` would: worth it
    only where no API server has pruned them already.
    """

    check_fields: bool = False
    _objects: dict[tuple[str, str, str], Parsed] = field(default_factory=dict)
    _problems: list[LoadProblem] = field(default_factory=list)
    _warnings: list[LoadProblem] = field(default_factory=list)

    def add(self, item: Parsed | LoadProblem | None) -> None:
        if item is None:
            return
        if isinstance(item, LoadProblem):
            self._problems.append(item)
            return
        kind = item.kind if isinstance(item, InvalidObject | L4Route) else type(item).__name__
        key = (kind, item.meta.namespace, item.meta.name)
        first = self._objects.get(key)
        if first is not None:
            where = f" (first defined at {first.meta.source})" if first.meta.source else ""
            self._problems.append(
                LoadProblem(item.meta.source, f"duplicate {_describe(kind, item.meta)}{where}")
            )
            return
        self._objects[key] = item

    def add_documents(self, docs: Iterable[tuple[object, str]]) -> None:
        if not self.check_fields:
            for doc, source in docs:
                self.add(parse_object(doc, source))
            return
        # Parsing and checking take turns by batch, not by document, so that
        # each keeps its working set in the CPU caches: on bench/translate.py's
        # 30k documents the check adds 22% to parsing turn by turn, 6-10% by batch.
        remaining = iter(docs)
        while batch := list(islice(remaining, _CHECK_BATCH)):
            parsed = [parse_object(doc, source) for doc, source in batch]
            for (doc, source), item in zip(batch, parsed, strict=True):
                self._warnings.extend(field_warnings(doc, source, item))
            for item in parsed:
                self.add(item)

    def build(self) -> Snapshot:
        buckets: dict[type, list[Any]] = {}
        for key in sorted(self._objects):
            obj = self._objects[key]
            buckets.setdefault(type(obj), []).append(obj)

        def of(cls: type) -> tuple[Any, ...]:
            return tuple(buckets.get(cls, ()))

        return Snapshot(
            gateway_classes=of(GatewayClass),
            gateways=of(Gateway),
            listener_sets=of(ListenerSet),
            http_routes=of(HTTPRoute),
            grpc_routes=of(GRPCRoute),
            l4_routes=of(L4Route),
            reference_grants=of(ReferenceGrant),
            backend_tls_policies=of(BackendTLSPolicy),
            services=of(Service),
            endpoint_slices=of(EndpointSlice),
            namespaces=of(Namespace),
            secrets=of(Secret),
            config_maps=of(ConfigMap),
            configs=of(GatewayLBConfig),
            invalid=of(InvalidObject),
            problems=tuple(self._problems),
            warnings=tuple(self._warnings),
        )


def build_snapshot(docs: Iterable[tuple[object, str]], *, check_fields: bool = False) -> Snapshot:
    with gc_paused():
        builder = SnapshotBuilder(check_fields=check_fields)
        builder.add_documents(docs)
        return builder.build()
