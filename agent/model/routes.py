"""The five route kinds: HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, UDPRoute.

Parsing fills in the CRD defaults and enforces the CRDs' CEL rules, so an object
that the API server would have refused is refused here too, naming its field.
Filters and backend references are parsed by route_filters.py.

Pure: reads only the document it is given.  It never resolves a parentRef or a
backendRef (translate/attach.py and translate/backends.py do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.filters import (
    BackendObjectReference,
    Retry,
    RouteFilter,
    Timeouts,
)
from agent.model.fields import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    GEP2257_DURATION,
    GROUP_NAME,
    HOSTNAME,
    HTTP_HEADER_NAME,
    KIND_NAME,
    FieldError,
    Fields,
    each,
)
from agent.model.meta import GATEWAY_GROUP, ObjectMeta
from agent.model.route_filters import (
    HEADER_VALUE,
    HTTP_METHODS,
    PATH_CHARS,
    parse_backend_object_ref,
    parse_filters,
)

GRPC_SERVICE = re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE)
GRPC_METHOD = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")

HTTP_ROUTE = "HTTPRoute"
GRPC_ROUTE = "GRPCRoute"
TLS_ROUTE = "TLSRoute"
TCP_ROUTE = "TCPRoute"
UDP_ROUTE = "UDPRoute"
L4_ROUTE_KINDS = (TCP_ROUTE, UDP_ROUTE, TLS_ROUTE)
# Every route kind gatewaylb reads: the one list of them.
ROUTE_KINDS = (HTTP_ROUTE, GRPC_ROUTE, *L4_ROUTE_KINDS)


@dataclass(frozen=True, slots=True)
class ParentReference:
    group: str
    kind: str
    namespace: str | None
    name: str
    section_name: str | None
    port: int | None


@dataclass(frozen=True, slots=True)
class BackendRef:
    ref: BackendObjectReference
    weight: int
    filters: tuple[RouteFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class StringMatch:
    type: str  # Exact | RegularExpression (| PathPrefix for paths)
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class HTTPRouteMatch:
    path: StringMatch  # name is unused for paths
    headers: tuple[StringMatch, ...]
    query_params: tuple[StringMatch, ...]
    method: str | None


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    name: str | None
    matches: tuple[HTTPRouteMatch, ...]
    filters: tuple[RouteFilter, ...]
    backend_refs: tuple[BackendRef, ...]
    timeouts: Timeouts | None
    retry: Retry | None = None
    # An extended field this agent reads but does not implement; kept so that
    # translate can report it as unsupported rather than silently ignore it.
    has_session_persistence: bool = False


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    meta: ObjectMeta
    parent_refs: tuple[ParentReference, ...]
    hostnames: tuple[str, ...]
    rules: tuple[HTTPRouteRule, ...]
    kind: str = HTTP_ROUTE


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    type: str  # Exact | RegularExpression
    service: str | None
    method: str | None


@dataclass(frozen=True, slots=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None
    headers: tuple[StringMatch, ...]


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    name: str | None
    matches: tuple[GRPCRouteMatch, ...]
    filters: tuple[RouteFilter, ...]
    backend_refs: tuple[BackendRef, ...]
    has_session_persistence: bool = False


@dataclass(frozen=True, slots=True)
class GRPCRoute:
    meta: ObjectMeta
    parent_refs: tuple[ParentReference, ...]
    hostnames: tuple[str, ...]
    rules: tuple[GRPCRouteRule, ...]
    kind: str = GRPC_ROUTE


@dataclass(frozen=True, slots=True)
class L4RouteRule:
    name: str | None
    backend_refs: tuple[BackendRef, ...]


@dataclass(frozen=True, slots=True)
class L4Route:
    """A TCPRoute, UDPRoute or TLSRoute: backends only, no request matching
    (a TLSRoute matches on SNI through its hostnames)."""

    kind: str
    meta: ObjectMeta
    parent_refs: tuple[ParentReference, ...]
    hostnames: tuple[str, ...]
    rules: tuple[L4RouteRule, ...]


Route = HTTPRoute | GRPCRoute | L4Route


# -- parsing: shared pieces --------------------------------------------------------


def _parent_ref(f: Fields) -> ParentReference:
    return ParentReference(
        group=f.string("group", GATEWAY_GROUP, max_len=253, pattern=GROUP_NAME),
        kind=f.string("kind", "Gateway", max_len=63, min_len=1, pattern=KIND_NAME),
        namespace=f.opt_string("namespace", max_len=63, pattern=DNS1123_LABEL) or None,
        name=f.string("name", max_len=253, min_len=1),
        section_name=f.opt_string("sectionName", max_len=253, pattern=DNS1123_SUBDOMAIN) or None,
        port=f.opt_integer("port", minimum=1, maximum=65535),
    )


def parse_parent_refs(spec: Fields) -> tuple[ParentReference, ...]:
    refs = each(spec.items("parentRefs", max_items=32), _parent_ref)
    # CEL: several references to one parent must each name a distinct section/port,
    # and either all of them or none of them set sectionName (and likewise port).
    by_parent: dict[tuple[str, str, str | None, str], list[ParentReference]] = {}
    for ref in refs:
        by_parent.setdefault((ref.group, ref.kind, ref.namespace, ref.name), []).append(ref)
    for same in by_parent.values():
        if len(same) < 2:
            continue
        if (
            len({r.section_name is None for r in same}) > 1
            or len({r.port is None for r in same}) > 1
        ):
            raise spec.error(
                "parentRefs",
                "sectionName or port must be specified when parentRefs includes 2 or more "
                "references to the same parent",
            )
        if len({(r.section_name, r.port) for r in same}) != len(same):
            raise spec.error(
                "parentRefs",
                "sectionName or port must be unique when parentRefs includes 2 or more "
                "references to the same parent",
            )
    return tuple(refs)


def parse_hostnames(spec: Fields, *, min_items: int = 0, max_items: int = 16) -> tuple[str, ...]:
    names = spec.strings(
        "hostnames", min_items=min_items, max_items=max_items, max_len=253, pattern=HOSTNAME
    )
    return tuple(dict.fromkeys(names))  # duplicates carry no meaning


def _string_match(
    f: Fields, *, value_max: int, value_pattern: re.Pattern[str] | None
) -> StringMatch:
    kind = f.string("type", "Exact", enum=("Exact", "RegularExpression"))
    value = f.string("value", max_len=value_max, min_len=1)
    if kind == "Exact" and value_pattern is not None and not value_pattern.fullmatch(value):
        raise f.error("value", "contains characters that are not valid here")
    if kind == "RegularExpression":
        check_regex(value, f.at("value"))
    return StringMatch(
        kind, f.string("name", max_len=256, min_len=1, pattern=HTTP_HEADER_NAME), value
    )


def check_regex(value: str, path: str) -> None:
    if "\n" in value or "\r" in value or "\x00" in value:
        raise FieldError(path, "a regular expression must not contain line breaks or NUL")
    try:
        re.compile(value)
    except (re.error, ValueError, OverflowError, RecursionError) as exc:
        raise FieldError(path, f"invalid regular expression: {exc}") from None


def _unique_header_names(matches: tuple[StringMatch, ...], f: Fields, key: str) -> None:
    names = [m.name.lower() for m in matches]
    if len(set(names)) != len(names):
        raise f.error(key, "a header or query parameter name may appear only once per match")


# -- HTTPRoute ---------------------------------------------------------------------


HTTP_FILTERS = (
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "ExtensionRef",
    "CORS",
    "ExternalAuth",
)


def _http_path(f: Fields | None) -> StringMatch:
    if f is None:
        return StringMatch("PathPrefix", "", "/")
    kind = f.string("type", "PathPrefix", enum=("Exact", "PathPrefix", "RegularExpression"))
    value = f.string("value", "/", max_len=1024)
    at = f.at("value")
    if kind == "RegularExpression":
        check_regex(value, at)
        return StringMatch(kind, "", value)
    if not value.startswith("/"):
        raise FieldError(at, "must be an absolute path starting with '/'")
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if bad in value:
            raise FieldError(at, f"must not contain {bad!r}")
    if value.endswith("/..") or value.endswith("/."):
        raise FieldError(at, "must not end with '/..' or '/.'")
    if not PATH_CHARS.fullmatch(value):
        raise FieldError(at, "contains characters that are not valid in a URL path")
    return StringMatch(kind, "", value)


def _http_match(f: Fields) -> HTTPRouteMatch:
    headers = tuple(
        _string_match(h, value_max=4096, value_pattern=HEADER_VALUE)
        for h in f.items("headers", max_items=16)
    )
    _unique_header_names(headers, f, "headers")
    params = tuple(
        _string_match(q, value_max=1024, value_pattern=HEADER_VALUE)
        for q in f.items("queryParams", max_items=16)
    )
    if len({p.name for p in params}) != len(params):
        raise f.error("queryParams", "a query parameter name may appear only once per match")
    return HTTPRouteMatch(
        path=_http_path(f.opt_obj("path")),
        headers=headers,
        query_params=params,
        method=f.opt_string("method", enum=HTTP_METHODS),
    )


def _backend_refs(
    rule: Fields, *, filters: tuple[str, ...] | None, min_items: int = 0
) -> tuple[BackendRef, ...]:
    out = []
    for b in rule.items("backendRefs", min_items=min_items, max_items=16):
        out.append(
            BackendRef(
                ref=parse_backend_object_ref(b),
                weight=b.integer("weight", 1, minimum=0, maximum=1_000_000),
                filters=parse_filters(b, allowed=filters) if filters else (),
            )
        )
    return tuple(out)


def _rule_names(rules: list[Fields], spec: Fields) -> None:
    names = [r.opt_string("name", max_len=253, pattern=DNS1123_SUBDOMAIN) for r in rules]
    present = [n for n in names if n]
    if len(set(present)) != len(present):
        raise spec.error("rules", "rule names must be unique within the route")


def _prefix_rewrite_needs_one_prefix_match(
    rule: Fields, filters: tuple[RouteFilter, ...], matches: tuple[HTTPRouteMatch, ...]
) -> None:
    for flt in filters:
        modifier = None
        if flt.request_redirect is not None:
            modifier = flt.request_redirect.path
        elif flt.url_rewrite is not None:
            modifier = flt.url_rewrite.path
        if (
            modifier is not None
            and modifier.type == "ReplacePrefixMatch"
            and (len(matches) != 1 or matches[0].path.type != "PathPrefix")
        ):
            raise rule.error(
                "matches",
                f"{flt.type} with path.replacePrefixMatch needs exactly one PathPrefix match",
            )


MAX_RETRY_ATTEMPTS = 100


def _retry(rt: Fields | None) -> Retry | None:
    if rt is None:
        return None
    return Retry(
        codes=rt.integers("codes", minimum=400, maximum=599, max_items=64),
        # No bound in the API; one here so that a typo cannot make the proxy
        # hammer a failing backend.
        attempts=rt.opt_integer("attempts", minimum=1, maximum=MAX_RETRY_ATTEMPTS),
        backoff=rt.opt_string("backoff", pattern=GEP2257_DURATION),
    )


def _http_rule(r: Fields) -> HTTPRouteRule:
    match_fields = r.items("matches", max_items=64)
    matches = (
        tuple(_http_match(m) for m in match_fields)
        if r.has("matches")
        else (HTTPRouteMatch(StringMatch("PathPrefix", "", "/"), (), (), None),)
    )
    filters = parse_filters(r, allowed=HTTP_FILTERS)
    backend_refs = _backend_refs(r, filters=HTTP_FILTERS)
    if backend_refs and any(f.type == "RequestRedirect" for f in filters):
        raise r.error(
            "filters", "a RequestRedirect filter must not be used together with backendRefs"
        )
    _prefix_rewrite_needs_one_prefix_match(r, filters, matches)
    for b in backend_refs:
        _prefix_rewrite_needs_one_prefix_match(r, b.filters, matches)
    timeouts = None
    t = r.opt_obj("timeouts")
    if t is not None:
        timeouts = Timeouts(
            request=t.opt_string("request", pattern=GEP2257_DURATION),
            backend_request=t.opt_string("backendRequest", pattern=GEP2257_DURATION),
        )
        req = duration_seconds(timeouts.request)
        backend = duration_seconds(timeouts.backend_request)
        if req and backend is not None and backend > req:
            raise t.error("backendRequest", "cannot be longer than the request timeout")
    return HTTPRouteRule(
        name=r.opt_string("name") or None,
        matches=matches,
        filters=filters,
        backend_refs=backend_refs,
        timeouts=timeouts,
        retry=_retry(r.opt_obj("retry")),
        has_session_persistence=r.has("sessionPersistence"),
    )


def parse_http_route(doc: Fields, meta: ObjectMeta) -> HTTPRoute:
    spec = doc.opt_obj("spec") or Fields({}, "spec")
    rule_fields = spec.items("rules", max_items=16)
    if not spec.has("rules"):
        rule_fields = [Fields({}, spec.at("rules[0]"))]
    _rule_names(rule_fields, spec)
    rules = each(rule_fields, _http_rule)
    total_matches = sum(len(r.items("matches", max_items=64)) for r in rule_fields)
    if total_matches > 128:
        raise spec.error(
            "rules", "the total number of matches across all rules must be at most 128"
        )
    return HTTPRoute(
        meta=meta,
        parent_refs=parse_parent_refs(spec),
        hostnames=parse_hostnames(spec),
        rules=tuple(rules),
    )


def duration_seconds(value: str | None) -> float | None:
    """Seconds in a GEP-2257 duration such as "1h30m" or "500ms"."""
    if value is None:
        return None
    total = 0.0
    for number, unit in re.findall(r"([0-9]+)(h|ms|m|s)", value):
        total += int(number) * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[unit]
    return total


# -- GRPCRoute ---------------------------------------------------------------------

GRPC_FILTERS = ("ResponseHeaderModifier", "RequestHeaderModifier", "RequestMirror", "ExtensionRef")


def _grpc_match(f: Fields) -> GRPCRouteMatch:
    method = None
    mf = f.opt_obj("method")
    if mf is not None:
        kind = mf.string("type", "Exact", enum=("Exact", "RegularExpression"))
        service = mf.opt_string("service", max_len=1024) or None
        name = mf.opt_string("method", max_len=1024) or None
        if service is None and name is None:
            raise mf.error("service", "one or both of service and method must be set")
        if kind == "Exact":
            if service is not None and not GRPC_SERVICE.fullmatch(service):
                raise mf.error("service", "is not a valid gRPC service name")
            if name is not None and not GRPC_METHOD.fullmatch(name):
                raise mf.error("method", "is not a valid gRPC method name")
        else:
            if service is not None:
                check_regex(service, mf.at("service"))
            if name is not None:
                check_regex(name, mf.at("method"))
        method = GRPCMethodMatch(kind, service, name)
    headers = tuple(
        _string_match(h, value_max=4096, value_pattern=HEADER_VALUE)
        for h in f.items("headers", max_items=16)
    )
    _unique_header_names(headers, f, "headers")
    return GRPCRouteMatch(method=method, headers=headers)


def parse_grpc_route(doc: Fields, meta: ObjectMeta) -> GRPCRoute:
    spec = doc.opt_obj("spec") or Fields({}, "spec")
    rule_fields = spec.items("rules", max_items=16)
    _rule_names(rule_fields, spec)
    rules = []
    total = 0
    for r in rule_fields:
        match_fields = r.items("matches", max_items=64)
        total += len(match_fields)
        rules.append(
            GRPCRouteRule(
                name=r.opt_string("name") or None,
                matches=tuple(_grpc_match(m) for m in match_fields),
                filters=parse_filters(r, allowed=GRPC_FILTERS),
                backend_refs=_backend_refs(r, filters=GRPC_FILTERS),
                has_session_persistence=r.has("sessionPersistence"),
            )
        )
    if total > 128:
        raise spec.error(
            "rules", "the total number of matches across all rules must be at most 128"
        )
    return GRPCRoute(
        meta=meta,
        parent_refs=parse_parent_refs(spec),
        hostnames=parse_hostnames(spec),
        rules=tuple(rules),
    )


# -- TCPRoute, UDPRoute, TLSRoute ---------------------------------------------------


def parse_l4_route(doc: Fields, meta: ObjectMeta, *, kind: str, version: str) -> L4Route:
    spec = doc.obj("spec")
    # v1 (and TLSRoute v1alpha3) carry exactly one rule; v1alpha2 up to 16.
    single_rule = version == "v1" or (kind == TLS_ROUTE and version == "v1alpha3")
    rule_fields = spec.items("rules", min_items=1, max_items=1 if single_rule else 16)
    _rule_names(rule_fields, spec)
    rules = tuple(
        each(
            rule_fields,
            lambda r: L4RouteRule(
                name=r.opt_string("name") or None,
                backend_refs=_backend_refs(r, filters=None, min_items=1),
            ),
        )
    )
    hostnames: tuple[str, ...] = ()
    if kind == TLS_ROUTE:
        hostnames = parse_hostnames(spec, min_items=1 if single_rule else 0, max_items=1024)
        for i, h in enumerate(hostnames):
            if _looks_like_ip(h):
                raise FieldError(spec.at(f"hostnames[{i}]"), "a hostname cannot be an IP address")
    return L4Route(
        kind=kind,
        meta=meta,
        parent_refs=parse_parent_refs(spec),
        hostnames=hostnames,
        rules=rules,
    )


def _looks_like_ip(value: str) -> bool:
    return all(part.isdigit() for part in value.split("."))
