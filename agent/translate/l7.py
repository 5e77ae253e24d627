"""HTTPRoute and GRPCRoute rules into ordered routing tables for the proxy.

Precedence is the Gateway API's: the most specific hostname first; within a
hostname, Exact path, then RegularExpression, then the longest PathPrefix; then a
method match, more header matches, more query matches; then the oldest route,
then namespace/name, then rule and match order.

Pure: it only builds and orders the entries of rules translate already
accepted.  It never judges a route or resolves a backend, and never renders
proxy configuration (agent/proxy does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.filters import (
    Retry,
    RouteFilter,
    Timeouts,
)
from agent.model.meta import ObjectMeta, age_order
from agent.model.routes import (
    GRPCRoute,
    GRPCRouteMatch,
    HTTPRoute,
    HTTPRouteMatch,
)
from agent.refs import ObjectRef
from agent.state import BackendSet, HTTPMatch, HTTPRouteEntry, MatchRule, VirtualHost
from agent.translate.hostnames import specificity

_PATH_RANK = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry before ordering: carries what the precedence key needs."""

    meta: ObjectMeta
    match_index: int
    entry: HTTPRouteEntry

    def sort_key(self) -> tuple[object, ...]:
        m = self.entry.match
        return (
            _PATH_RANK[m.path_type],
            -len(m.path),
            m.method is None,
            -len(m.headers),
            -len(m.query_params),
            age_order(self.meta),
            self.entry.rule,
            self.match_index,
        )


def http_match(match: HTTPRouteMatch) -> HTTPMatch:
    return HTTPMatch(
        path_type=match.path.type,
        path=match.path.value,
        headers=tuple(MatchRule(h.type, h.name, h.value) for h in match.headers),
        query_params=tuple(MatchRule(q.type, q.name, q.value) for q in match.query_params),
        method=match.method,
    )


def grpc_match(match: GRPCRouteMatch | None) -> HTTPMatch:
    """A gRPC service/method match is an HTTP/2 path match on /service/method."""
    headers = tuple(MatchRule(h.type, h.name, h.value) for h in match.headers) if match else ()
    method = match.method if match else None
    if method is None:
        return HTTPMatch("PathPrefix", "/", headers, (), None)
    if method.type == "Exact":
        if method.service and method.method:
            return HTTPMatch("Exact", f"/{method.service}/{method.method}", headers)
        if method.service:
            return HTTPMatch("PathPrefix", f"/{method.service}/", headers)
        return HTTPMatch("RegularExpression", f"/[^/]+/{re.escape(method.method or '')}", headers)
    service = method.service or "[^/]+"
    name = method.method or "[^/]+"
    return HTTPMatch("RegularExpression", f"/{service}/{name}", headers)


def route_entries(
    route: HTTPRoute | GRPCRoute,
    rule_backends: dict[int, BackendSet],
) -> list[PendingEntry]:
    """Every (rule, match) of a route whose rule survived validation."""
    out: list[PendingEntry] = []
    name = ObjectRef(route.kind, route.meta.namespace, route.meta.name)
    for rule_index, backends in sorted(rule_backends.items()):
        filters: tuple[RouteFilter, ...]
        timeouts: Timeouts | None = None
        retry: Retry | None = None
        if isinstance(route, HTTPRoute):
            rule = route.rules[rule_index]
            filters = rule.filters
            timeouts = rule.timeouts
            retry = rule.retry
            matches = [http_match(m) for m in rule.matches]
            grpc = False
        else:
            grule = route.rules[rule_index]
            filters = grule.filters
            matches = [grpc_match(m) for m in grule.matches] or [grpc_match(None)]
            grpc = True
        for match_index, match in enumerate(matches):
            entry = HTTPRouteEntry(
                route=name,
                rule=rule_index,
                match=match,
                filters=filters,
                backends=backends,
                timeouts=timeouts,
                grpc=grpc,
                retry=retry,
            )
            out.append(PendingEntry(route.meta, match_index, entry))
    return out


def virtual_hosts(by_hostname: dict[str, list[PendingEntry]]) -> tuple[VirtualHost, ...]:
    hosts = []
    for hostname in sorted(by_hostname, key=specificity):
        entries = sorted(by_hostname[hostname], key=PendingEntry.sort_key)
        hosts.append(VirtualHost(hostname, tuple(p.entry for p in entries)))
    return tuple(hosts)
