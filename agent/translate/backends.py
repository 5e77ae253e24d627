"""backendRef -> Service -> ready endpoints, and the weight arithmetic.

A backendRef resolves to endpoints, or fails with one of the route reasons the
spec defines (InvalidKind, RefNotPermitted, BackendNotFound).  Permission is
judged before existence, so a missing Service in another namespace without a
ReferenceGrant reads RefNotPermitted (the spec must not leak existence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.filters import (
    BackendObjectReference,
    RouteFilter,
)
from agent.model.meta import CORE_GROUP, Key
from agent.model.routes import (
    UDP_ROUTE,
)
from agent.state import Backend, BackendSet, BackendTLS, ServiceBackend
from agent.translate.backendtls import BackendTLSPolicies
from agent.translate.index import SnapshotIndex
from agent.translate.refs import reference_permitted
from agent.translate.status import R_BACKEND_NOT_FOUND, R_INVALID_KIND, R_REF_NOT_PERMITTED

# Above this many weight units an exact split is not worth its size in the
# kernel (nftables slots, Maglev proportions); shares are rounded instead.
EXACT_WEIGHT_LIMIT = 1_000_000
ROUNDED_WEIGHT_TOTAL = 65_536


@dataclass(frozen=True, slots=True)
class RefError:
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ResolvedService:
    """A Service port and its endpoints: (ip, port, serving-only) triples."""

    name: str
    endpoints: tuple[tuple[str, int, bool], ...]
    app_protocol: str | None
    service: Key
    # A BackendTLSPolicy's TLS for this port; `tls_refused` says why its
    # policy cannot be honoured, and the port is then not reached at all.
    tls: BackendTLS | None = None
    tls_refused: str | None = None


Resolution = ResolvedService | RefError


class BackendResolver:
    """Resolves backendRefs against one snapshot; memoizes per Service port."""

    def __init__(self, index: SnapshotIndex, tls: BackendTLSPolicies | None = None) -> None:
        self._index = index
        self._tls = tls
        self._services: dict[tuple[Key, int, str], Resolution] = {}

    def resolve(
        self, ref: BackendObjectReference, *, route_kind: str, route_namespace: str
    ) -> Resolution:
        if ref.group != CORE_GROUP or ref.kind != "Service":
            kind = f"{ref.kind}.{ref.group}" if ref.group else ref.kind
            return RefError(R_INVALID_KIND, f"backendRef {ref.name}: unsupported kind {kind}")
        namespace = ref.namespace or route_namespace
        if not reference_permitted(
            self._index,
            from_kind=route_kind,
            from_namespace=route_namespace,
            to_kind="Service",
            to_namespace=namespace,
            to_name=ref.name,
        ):
            return RefError(
                R_REF_NOT_PERMITTED,
                f"backendRef Service {namespace}/{ref.name}: no ReferenceGrant in namespace "
                f"{namespace} allows {route_kind}s from {route_namespace}",
            )
        assert ref.port is not None  # the parser requires it for Services
        protocol = "UDP" if route_kind == UDP_ROUTE else "TCP"
        cache_key = (Key(namespace, ref.name), ref.port, protocol)
        cached = self._services.get(cache_key)
        if cached is None:
            cached = self._resolve_service(cache_key[0], ref.port, protocol)
            self._services[cache_key] = cached
        return cached

    def _resolve_service(self, key: Key, port: int, protocol: str) -> Resolution:
        service = self._index.services.get(key)
        if service is None:
            invalid = self._index.invalid.get(("Service", key))
            if invalid is not None:
                return RefError(R_BACKEND_NOT_FOUND, f"Service {key} is invalid: {invalid}")
            return RefError(R_BACKEND_NOT_FOUND, f"Service {key} not found")
        if service.type == "ExternalName":
            return RefError(R_BACKEND_NOT_FOUND, f"Service {key}: ExternalName is not supported")
        service_port = next(
            (p for p in service.ports if p.port == port and p.protocol == protocol), None
        )
        if service_port is None:
            return RefError(R_BACKEND_NOT_FOUND, f"Service {key} has no {protocol} port {port}")
        seen: dict[tuple[str, int], bool] = {}
        for es in self._index.slices.get(key, ()):
            if es.address_type == "FQDN":
                continue
            target: int | None = None
            for ep in es.ports:
                if ep.name == service_port.name and ep.protocol == protocol:
                    target = ep.port
                    break
            if target is None and not es.ports and isinstance(service_port.target_port, int):
                target = service_port.target_port
            if target is None and not es.ports and service_port.target_port is None:
                target = port
            if target is None:
                continue
            for endpoint in es.endpoints:
                # Ready endpoints take new flows; serving-but-terminating ones keep
                # their established flows only (weight 0), like kube-proxy.
                if endpoint.ready:
                    serving_only = False
                elif endpoint.serving and endpoint.terminating:
                    serving_only = True
                else:
                    continue
                for address in endpoint.addresses:
                    k = (address, target)
                    # An address listed twice (slices overlap while they are
                    # rewritten) counts once, ready if any copy is ready.
                    seen[k] = seen.get(k, True) and serving_only
        endpoints = tuple(sorted((ip, p, so) for (ip, p), so in seen.items()))
        policy = self._tls.for_port(key, service_port.name) if self._tls is not None else None
        return ResolvedService(
            name=f"{key}:{port}",
            endpoints=endpoints,
            app_protocol=service_port.app_protocol,
            service=key,
            tls=policy.tls if policy is not None else None,
            tls_refused=policy.refused if policy is not None else None,
        )


def family_of(ip: str) -> int:
    # Addresses were validated and canonicalised by the parser.
    return 6 if ":" in ip else 4


@dataclass(frozen=True, slots=True)
class WeightedResolution:
    weight: int
    resolution: Resolution
    filters: tuple[RouteFilter, ...] = ()


def l4_backends(refs: list[WeightedResolution], family: int) -> tuple[tuple[Backend, ...], int]:
    """Split each backendRef's weight evenly over its ready endpoints of one
    address family; return integer endpoint weights and the refused share.

    The share of refs that are invalid or have no ready endpoint is refused, not
    handed to the others (the Gateway API's rule for invalid backends).
    """
    groups: list[tuple[int, list[tuple[str, int]], list[tuple[str, int]]]] = []
    rejected = 0
    for item in refs:
        if item.weight == 0 and isinstance(item.resolution, RefError):
            continue
        if isinstance(item.resolution, RefError):
            rejected += item.weight
            continue
        ready = [
            (ip, p) for ip, p, so in item.resolution.endpoints if not so and family_of(ip) == family
        ]
        draining = [
            (ip, p) for ip, p, so in item.resolution.endpoints if so and family_of(ip) == family
        ]
        if item.weight > 0 and not ready:
            rejected += item.weight
        groups.append((item.weight, ready, draining))

    counts = [len(ready) for weight, ready, _ in groups if weight > 0 and ready]
    lcm = math.lcm(*counts) if counts else 1
    weights: dict[tuple[str, int], int] = {}
    for weight, ready, draining in groups:
        for ep in draining:
            weights.setdefault(ep, 0)
        if weight == 0 or not ready:
            for ep in ready:
                weights.setdefault(ep, 0)
            continue
        share = weight * (lcm // len(ready))
        for ep in ready:
            weights[ep] = weights.get(ep, 0) + share
    reject = rejected * lcm
    total = sum(weights.values()) + reject
    if total > EXACT_WEIGHT_LIMIT:
        weights, reject = _round_shares(weights, reject)
    divisor = math.gcd(reject, *weights.values())
    if divisor > 1:
        weights = {ep: w // divisor for ep, w in weights.items()}
        reject //= divisor
    backends = tuple(sorted(Backend(ip, port, w) for (ip, port), w in weights.items()))
    return backends, reject


def _round_shares(
    weights: dict[tuple[str, int], int], reject: int
) -> tuple[dict[tuple[str, int], int], int]:
    """Largest-remainder rounding to ROUNDED_WEIGHT_TOTAL, keeping every positive
    share at least 1 so no live endpoint silently drops out."""
    keys: list[tuple[str, int] | None] = [*weights.keys(), None]
    values = [*weights.values(), reject]
    total = sum(values)
    exact = [v * ROUNDED_WEIGHT_TOTAL / total for v in values]
    rounded = [max(1, int(x)) if v > 0 else 0 for x, v in zip(exact, values, strict=True)]
    short = ROUNDED_WEIGHT_TOTAL - sum(rounded)
    order = sorted(range(len(values)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order[: max(0, short)]:
        if values[i] > 0:
            rounded[i] += 1
    out = {k: r for k, r in zip(keys, rounded, strict=True) if k is not None}
    return out, rounded[-1]


def l7_backends(refs: list[WeightedResolution], family: int | None = None) -> BackendSet:
    """An L7 rule's backends: one weighted group per valid Service (the proxy
    balances inside it), the invalid share kept apart so it answers 500."""
    services: list[ServiceBackend] = []
    invalid = 0
    for item in refs:
        res = item.resolution
        if isinstance(res, RefError) or res.tls_refused is not None:
            invalid += item.weight
            continue
        endpoints = tuple(
            Backend(ip, port, 0 if so else 1)
            for ip, port, so in res.endpoints
            if family is None or family_of(ip) == family
        )
        services.append(
            ServiceBackend(
                res.name, item.weight, endpoints, res.app_protocol, item.filters, res.tls
            )
        )
    return BackendSet(tuple(services), invalid)
