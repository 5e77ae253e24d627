"""The filters of HTTPRoute and GRPCRoute rules, and backend object references.

Parsing fills in the CRD defaults and enforces the CRDs' CEL rules, so a
filter the API server would have refused is refused here too, naming its
field.  The values are the plain types of agent/filters.py, carried as they
are into the desired state.  Pure: reads only the document it is given.
"""

from __future__ import annotations

import re

from agent.filters import (
    BackendObjectReference,
    CORSPolicy,
    HeaderModifier,
    LocalObjectReference,
    PathModifier,
    RequestMirror,
    RequestRedirect,
    RouteFilter,
    URLRewrite,
)
from agent.model.fields import (
    DNS1123_LABEL,
    GROUP_NAME,
    HTTP_HEADER_NAME,
    KIND_NAME,
    Fields,
)
from agent.model.meta import CORE_GROUP

# Same language as the CRD's ^[!-~]+([\t ]?[!-~]+)*$, without its nested
# repetition (exponential backtracking on a trailing newline).
HEADER_VALUE = re.compile(r"^[!-~]+(?:[\t ][!-~]+)*$")
PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$")
PLAIN_HOSTNAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CORS_ORIGIN = re.compile(
    r"(^\*$)|(^(http(s)?):\/\/(((\*\.)?([a-zA-Z0-9\-]+\.)*[a-zA-Z0-9-]+|\*)(:([0-9]{1,5}))?)$)"
)
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def parse_backend_object_ref(f: Fields) -> BackendObjectReference:
    ref = BackendObjectReference(
        group=f.string("group", CORE_GROUP, max_len=253, pattern=GROUP_NAME),
        kind=f.string("kind", "Service", max_len=63, min_len=1, pattern=KIND_NAME),
        name=f.string("name", max_len=253, min_len=1),
        namespace=f.opt_string("namespace", max_len=63, pattern=DNS1123_LABEL) or None,
        port=f.opt_integer("port", minimum=1, maximum=65535),
    )
    if ref.group == CORE_GROUP and ref.kind == "Service" and ref.port is None:
        raise f.error("port", "required for a Service reference")
    return ref


def _header_pairs(f: Fields, key: str) -> tuple[tuple[str, str], ...]:
    out = []
    seen: set[str] = set()
    for h in f.items(key, max_items=16):
        name = h.string("name", max_len=256, min_len=1, pattern=HTTP_HEADER_NAME)
        value = h.string("value", max_len=4096, min_len=1, pattern=HEADER_VALUE)
        if name.lower() in seen:
            raise h.error("name", f"header {name!r} is listed twice")
        seen.add(name.lower())
        out.append((name, value))
    return tuple(out)


def _header_modifier(f: Fields) -> HeaderModifier:
    return HeaderModifier(
        set=_header_pairs(f, "set"),
        add=_header_pairs(f, "add"),
        remove=f.strings("remove", max_items=16, max_len=256, pattern=HTTP_HEADER_NAME),
    )


def _path_modifier(f: Fields) -> PathModifier:
    kind = f.string("type", enum=("ReplaceFullPath", "ReplacePrefixMatch"))
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    other = "replacePrefixMatch" if kind == "ReplaceFullPath" else "replaceFullPath"
    if f.has(other):
        raise f.error(other, f"must not be set when type is {kind}")
    value = f.string(key, max_len=1024)
    if value and not value.startswith("/"):
        raise f.error(key, "must be an absolute path starting with '/'")
    if value and not PATH_CHARS.fullmatch(value):
        raise f.error(key, "contains characters that are not valid in a URL path")
    return PathModifier(kind, value)


def _filter_type_fields() -> dict[str, str]:
    return {
        "RequestHeaderModifier": "requestHeaderModifier",
        "ResponseHeaderModifier": "responseHeaderModifier",
        "RequestRedirect": "requestRedirect",
        "URLRewrite": "urlRewrite",
        "RequestMirror": "requestMirror",
        "CORS": "cors",
        "ExtensionRef": "extensionRef",
        "ExternalAuth": "externalAuth",
    }


FILTER_FIELDS = _filter_type_fields()


def parse_filters(container: Fields, *, allowed: tuple[str, ...]) -> tuple[RouteFilter, ...]:
    filters = []
    counts: dict[str, int] = {}
    for f in container.items("filters", max_items=16):
        kind = f.string("type", enum=allowed)
        for other_type, other_field in FILTER_FIELDS.items():
            if other_type != kind and f.has(other_field):
                raise f.error(other_field, f"must not be set when type is {kind}")
        body = f.obj(FILTER_FIELDS[kind])
        counts[kind] = counts.get(kind, 0) + 1
        if kind != "RequestMirror" and counts[kind] > 1:
            raise f.error("type", f"the {kind} filter cannot be repeated")
        filters.append(_parse_filter(kind, body))
    if "RequestRedirect" in counts and "URLRewrite" in counts:
        raise container.error("filters", "may not use both RequestRedirect and URLRewrite")
    return tuple(filters)


def _redirect_status(body: Fields) -> int:
    code = body.integer("statusCode", 302)
    if code not in (301, 302, 303, 307, 308):
        shown = code if -(10**6) < code < 10**6 else "out of range"
        raise body.error(
            "statusCode", f"unsupported value {shown}: must be one of 301, 302, 303, 307, 308"
        )
    return code


def _parse_filter(kind: str, body: Fields) -> RouteFilter:
    if kind == "RequestHeaderModifier":
        return RouteFilter(kind, request_header_modifier=_header_modifier(body))
    if kind == "ResponseHeaderModifier":
        return RouteFilter(kind, response_header_modifier=_header_modifier(body))
    if kind == "RequestRedirect":
        path = body.opt_obj("path")
        return RouteFilter(
            kind,
            request_redirect=RequestRedirect(
                scheme=body.opt_string("scheme", enum=("http", "https")),
                hostname=body.opt_string("hostname", max_len=253, pattern=PLAIN_HOSTNAME),
                path=_path_modifier(path) if path else None,
                port=body.opt_integer("port", minimum=1, maximum=65535),
                status_code=_redirect_status(body),
            ),
        )
    if kind == "URLRewrite":
        path = body.opt_obj("path")
        return RouteFilter(
            kind,
            url_rewrite=URLRewrite(
                hostname=body.opt_string("hostname", max_len=253, pattern=PLAIN_HOSTNAME),
                path=_path_modifier(path) if path else None,
            ),
        )
    if kind == "RequestMirror":
        numerator, denominator = 100, 100
        fraction = body.opt_obj("fraction")
        if body.has("percent") and fraction is not None:
            raise body.error("fraction", "only one of percent or fraction may be set")
        if body.has("percent"):
            numerator = body.integer("percent", minimum=0, maximum=100)
        elif fraction is not None:
            numerator = fraction.integer("numerator", minimum=0)
            denominator = fraction.integer("denominator", 100, minimum=1)
            if numerator > denominator:
                raise fraction.error("numerator", "must be less than or equal to denominator")
        return RouteFilter(
            kind,
            request_mirror=RequestMirror(
                backend=parse_backend_object_ref(body.obj("backendRef")),
                numerator=numerator,
                denominator=denominator,
            ),
        )
    if kind == "CORS":
        origins = body.strings("allowOrigins", max_items=64, max_len=253, pattern=CORS_ORIGIN)
        methods = body.strings("allowMethods", max_items=9, enum=(*HTTP_METHODS, "*"))
        headers = body.strings("allowHeaders", max_items=64, max_len=256, pattern=HTTP_HEADER_NAME)
        for key, values in (
            ("allowOrigins", origins),
            ("allowMethods", methods),
            ("allowHeaders", headers),
        ):
            if "*" in values and len(values) > 1:
                raise body.error(key, "cannot contain '*' alongside other values")
        return RouteFilter(
            kind,
            cors=CORSPolicy(
                allow_origins=origins,
                allow_methods=methods,
                allow_headers=headers,
                expose_headers=body.strings(
                    "exposeHeaders", max_items=64, max_len=256, pattern=HTTP_HEADER_NAME
                ),
                max_age=body.integer("maxAge", 5, minimum=1, maximum=2**31 - 1),
                allow_credentials=body.boolean("allowCredentials"),
            ),
        )
    if kind == "ExtensionRef":
        return RouteFilter(
            kind,
            extension_ref=LocalObjectReference(
                group=body.string("group", max_len=253, pattern=GROUP_NAME),
                kind=body.string("kind", max_len=63, min_len=1, pattern=KIND_NAME),
                name=body.string("name", max_len=253, min_len=1),
            ),
        )
    # ExternalAuth: accepted by the schema; this agent does not implement it, and
    # translate reports the rule as unsupported.
    return RouteFilter(kind)
