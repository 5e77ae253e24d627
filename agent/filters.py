"""What a route asks of the traffic it carries: filters, timeouts, retries,
references to backends.  Plain frozen values, parsed by the model
(model/route_filters.py, model/routes.py) and carried as they are by the
desired state (state.py), so that the desired state depends on nothing of the
model.

Owns these types only: no parsing, no validation, no I/O.  It must never import
anything of the agent (agent.model least of all), or the desired state would
depend on the model again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackendObjectReference:
    group: str
    kind: str
    name: str
    namespace: str | None
    port: int | None


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...]
    add: tuple[tuple[str, str], ...]
    remove: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: str  # ReplaceFullPath | ReplacePrefixMatch
    value: str


@dataclass(frozen=True, slots=True)
class RequestRedirect:
    scheme: str | None
    hostname: str | None
    path: PathModifier | None
    port: int | None
    status_code: int


@dataclass(frozen=True, slots=True)
class URLRewrite:
    hostname: str | None
    path: PathModifier | None


@dataclass(frozen=True, slots=True)
class RequestMirror:
    backend: BackendObjectReference
    # Share of requests to mirror, as numerator/denominator (100/100 when unset).
    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True)
class CORSPolicy:
    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    max_age: int
    allow_credentials: bool


@dataclass(frozen=True, slots=True)
class LocalObjectReference:
    group: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class RouteFilter:
    """One HTTPRoute or GRPCRoute filter; exactly the field its type names is set."""

    type: str
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    request_mirror: RequestMirror | None = None
    cors: CORSPolicy | None = None
    extension_ref: LocalObjectReference | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    request: str | None
    backend_request: str | None


@dataclass(frozen=True, slots=True)
class Retry:
    """rules[].retry: retry a backend request that answered one of `codes`,
    at most `attempts` times (None: the implementation's default), waiting at
    least `backoff` between tries."""

    codes: tuple[int, ...]
    attempts: int | None
    backoff: str | None
