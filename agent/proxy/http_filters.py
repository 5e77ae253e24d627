"""HTTPRoute filters as HAProxy rules: header modifiers, URL rewrites,
redirects, CORS, and the GEP-2257 durations of timeouts.

Each function returns the lines of one filter under a condition (`cond`,
` if ...`, possibly empty) or raises `Unrepresentable`; every manifest value
goes through `agent.proxy.escape`.

Pure: never runs haproxy, never writes a file; it does not choose backends or
decide which entry a request selects (`http_frontend` does).
"""

from __future__ import annotations

import re

from agent.filters import CORSPolicy, HeaderModifier, PathModifier, RouteFilter
from agent.proxy import escape
from agent.proxy.acls import anon
from agent.proxy.escape import Unrepresentable, word
from agent.state import HTTPMatch, L7Listener

SUPPORTED_FILTERS = frozenset(
    {"RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "CORS"}
)

_DURATION_PART = re.compile(r"([0-9]+)(ms|h|m|s)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def duration_ms(value: str) -> int:
    """A GEP-2257 duration (`1h30m`, `500ms`) in milliseconds."""
    pos, total = 0, 0
    if not value:
        raise Unrepresentable("empty duration")
    while pos < len(value):
        m = _DURATION_PART.match(value, pos)
        if m is None:
            raise Unrepresentable(f"duration {value!r} is not a GEP-2257 duration")
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    return total


def lf(literal: str) -> str:
    """A literal inside a log-format string we compose (before quoting)."""
    return literal.replace("%", "%%")


def header_lines(directive: str, mod: HeaderModifier, cond: str = "") -> list[str]:
    out = []
    for verb, pairs in (("set-header", mod.set), ("add-header", mod.add)):
        for name, value in pairs:
            header = word(escape.fetch_arg_name(name))
            out.append(f"{directive} {verb} {header} {escape.logformat(value)}{cond}")
    for name in mod.remove:
        out.append(f"{directive} del-header {word(escape.fetch_arg_name(name))}{cond}")
    return out


# -- rewrites and redirects ------------------------------------------------------------------


def _prefix(m: HTTPMatch) -> str:
    if m.path_type != "PathPrefix":
        raise Unrepresentable("ReplacePrefixMatch needs a PathPrefix match")
    return m.path.rstrip("/")


def path_rewrite(mod: PathModifier, match: HTTPMatch, cond: str) -> list[str]:
    """A path modifier (of a URLRewrite or a redirect) of an entry matching `match`."""
    if mod.type == "ReplaceFullPath":
        path = escape.target_path(mod.value or "/")
        return [f"http-request set-path {escape.logformat(path)}{cond}"]
    if mod.type != "ReplacePrefixMatch":
        raise Unrepresentable(f"path modifier {mod.type!r} is not supported")
    prefix = _prefix(match)
    escape.target_path(prefix or "/")
    replacement = escape.target_path(mod.value or "/").rstrip("/")
    rx = escape.regex_literal(prefix)
    rep = lf(replacement)
    if not prefix:
        # Prefix "/": every path.  "/" itself becomes the replacement.
        if not replacement:
            return []
        return [
            f"http-request replace-path {word('^(/.+)$')} {word(rep + chr(92) + '1')}{cond}",
            f"http-request replace-path {word('^/$')} {word(rep)}{cond}",
        ]
    if replacement:
        pattern = word("^" + rx + "(/.*)?$")
        return [f"http-request replace-path {pattern} {word(rep + chr(92) + '1')}{cond}"]
    # Replacement "/": the exact prefix becomes "/", the rest keeps its
    # leading slash.  In this order neither rule can match the other's output.
    return [
        f"http-request replace-path {word('^' + rx + '$')} '/'{cond}",
        f"http-request replace-path {word('^' + rx + '(/.*)$')} {word(chr(92) + '1')}{cond}",
    ]


def listener_scheme(ls: L7Listener) -> str:
    return "https" if ls.protocol == "HTTPS" else "http"


def redirect(flt: RouteFilter, ls: L7Listener, match: HTTPMatch, cond: str) -> list[str]:
    """A RequestRedirect of an entry matching `match` on listener `ls`."""
    rd = flt.request_redirect
    assert rd is not None
    if rd.status_code not in (301, 302, 303, 307, 308):
        raise Unrepresentable(f"redirect status {rd.status_code} is not supported")
    out: list[str] = []
    if rd.path is not None:
        out.extend(path_rewrite(rd.path, match, cond))
    scheme = rd.scheme or listener_scheme(ls)
    if scheme not in ("http", "https"):
        raise Unrepresentable(f"redirect scheme {scheme!r} is not supported")
    if rd.port is not None:
        if not 1 <= rd.port <= 65535:
            raise Unrepresentable(f"redirect port {rd.port} is out of range")
        port = rd.port
    elif rd.scheme is not None:
        port = 443 if scheme == "https" else 80
    else:
        port = ls.port
    host = "%[var(txn.host)]"
    if rd.hostname is not None:
        host = lf(escape.hostname(rd.hostname, wildcard=False))
    well_known = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    port_part = "" if well_known else f":{port}"
    location = f"{scheme}://{host}{port_part}%[pathq]"
    out.append(f"http-request redirect location {word(location)} code {rd.status_code}{cond}")
    return out


# -- CORS -----------------------------------------------------------------------------------


def cors_origin_pattern(origin: str) -> str:
    """One allowOrigins entry as PCRE: `*` any origin; `*.` before a host any
    number of labels; a host of `*` any host."""
    if origin == "*":
        return ".+"
    scheme, _, rest = origin.partition("://")
    host, colon, port = rest.partition(":")
    if host == "*":
        host_re = r"[A-Za-z0-9.-]+"
    elif host.startswith("*."):
        host_re = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\." + escape.regex_literal(host[2:])
    else:
        host_re = escape.regex_literal(host)
    port_re = ":" + escape.regex_literal(port) if colon else ""
    return escape.regex_literal(scheme + "://") + host_re + port_re


def cors_lines(cors: CORSPolicy, cond: str) -> list[str]:
    """The CORS filter: a preflight is answered here, never forwarded (204
    with the policy's headers from an allowed origin, 403 from another);
    other requests from an allowed origin are forwarded and their response
    carries the allow-origin, credentials and expose headers.  The
    allowed origin is echoed back, never `*`, so that credentials can be
    allowed and caches told (Vary: Origin)."""
    patterns = "|".join(cors_origin_pattern(o) for o in cors.allow_origins)
    origin_ok = anon(f"req.fhdr(origin) -m reg -i -- {word(f'^(?:{patterns})$')}")
    preflight = (
        f"{cond} {anon('method -m str -- OPTIONS')} "
        f"{anon('req.fhdr(access-control-request-method) -m found')} {origin_ok}"
    )
    # "*" cannot be combined with credentials (browsers refuse it): the
    # requested method and headers are echoed instead.  Values are words of
    # log-format: the echoes are sample expressions, the rest literal text.
    echo = cors.allow_credentials

    def literal(*values: str) -> str:
        return escape.logformat(", ".join(values))

    headers = [("access-control-allow-origin", word("%[req.fhdr(origin)]"))]
    if cors.allow_credentials:
        headers.append(("access-control-allow-credentials", literal("true")))
    if cors.allow_methods == ("*",):
        method = word("%[req.fhdr(access-control-request-method)]") if echo else literal("*")
        headers.append(("access-control-allow-methods", method))
    elif cors.allow_methods:
        headers.append(("access-control-allow-methods", literal(*cors.allow_methods)))
    if cors.allow_headers == ("*",):
        asked = word("%[req.fhdr(access-control-request-headers)]") if echo else literal("*")
        headers.append(("access-control-allow-headers", asked))
    elif cors.allow_headers:
        headers.append(("access-control-allow-headers", literal(*cors.allow_headers)))
    if cors.expose_headers:
        headers.append(("access-control-expose-headers", literal(*cors.expose_headers)))
    headers.append(("access-control-max-age", literal(str(int(cors.max_age)))))
    headers.append(("vary", literal("Origin")))
    answer = "".join(f" hdr {name} {value}" for name, value in headers)
    # A preflight is the proxy's to answer, allowed or not: a backend that
    # knows nothing of the policy must not be the one to judge the origin.
    refused = (
        f"{cond} {anon('method -m str -- OPTIONS')} "
        f"{anon('req.fhdr(access-control-request-method) -m found')} "
        f"{anon('req.fhdr(origin) -m found')}"
    )
    out = [
        f"http-request return status 204{answer}{preflight}",
        "http-request return status 403 content-type text/plain "
        f"string {word('CORS: origin not allowed')}{refused}",
    ]
    out.append(f"http-request set-var(txn.cors) req.fhdr(origin){cond} {origin_ok}")
    found = f"{cond} {anon('var(txn.cors) -m found')}"
    origin = word("%[var(txn.cors)]")
    out.append(f"http-response set-header access-control-allow-origin {origin}{found}")
    if cors.allow_credentials:
        out.append(f"http-response set-header access-control-allow-credentials 'true'{found}")
    if cors.expose_headers:
        exposed = escape.logformat(", ".join(cors.expose_headers))
        out.append(f"http-response set-header access-control-expose-headers {exposed}{found}")
    out.append(f"http-response add-header vary 'Origin'{found}")
    return out
