"""translate: Snapshot -> (DesiredState, StatusReport).  Pure and deterministic.

The order of work follows the spec's dependencies: GatewayClasses decide which
Gateways are ours; Gateways and their listeners are judged on their own; routes
are then attached to listeners (which counts attachedRoutes) and their
backendRefs resolved; only then are Gateway statuses final and the dataplane's
desired state built from what is accepted and programmable.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.filters import (
    BackendObjectReference,
    RouteFilter,
)
from agent.gcpause import gc_paused
from agent.model.config import CONFIG_KIND, AddressPool, GatewayLBConfig
from agent.model.meta import Key, ObjectMeta, age_order
from agent.model.routes import (
    ROUTE_KINDS,
    TCP_ROUTE,
    TLS_ROUTE,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
    L4Route,
    Route,
    duration_seconds,
)
from agent.model.snapshot import InvalidObject, Snapshot
from agent.refs import ObjectRef
from agent.state import (
    TCP,
    UDP,
    Announcement,
    AnnounceSettings,
    BackendSet,
    BGPPeer,
    DesiredState,
    FrontendSource,
    L4Frontend,
    L7Listener,
    TLSCertificate,
    TLSRouteEntry,
)
from agent.translate.addresses import HostAddresses, assign_addresses, host_addresses
from agent.translate.attach import Parents, ParentVerdict, evaluate_parent, parent_ref_status
from agent.translate.backends import (
    BackendResolver,
    RefError,
    ResolvedService,
    WeightedResolution,
    l4_backends,
    l7_backends,
)
from agent.translate.backendtls import BackendTLSPolicies
from agent.translate.conflicts import claim_ports
from agent.translate.evaluate import evaluate_gateway
from agent.translate.features import RETRY_CODES, SUPPORTED_FEATURES, UNSUPPORTED_FILTERS
from agent.translate.gatewayclasses import gateway_class_status, invalid_class_status
from agent.translate.gateways import GatewayState, invalid_gateway_state
from agent.translate.index import SnapshotIndex
from agent.translate.l7 import PendingEntry, route_entries, virtual_hosts
from agent.translate.listeners import L4_PROTOCOLS, ListenerState
from agent.translate.listenersets import attach_listener_sets
from agent.translate.status import (
    ACCEPTED,
    PARTIALLY_INVALID,
    PROGRAMMED,
    R_ACCEPTED,
    R_INVALID,
    R_RESOLVED_REFS,
    R_UNSUPPORTED_VALUE,
    RESOLVED_REFS,
    Condition,
    GatewayStatus,
    ListenerSetStatus,
    ObjectStatus,
    RouteParentStatus,
    RouteStatus,
    Status,
    StatusReport,
)

DEFAULT_CONTROLLER_NAME = "gatewaylb.io/agent"


@dataclass(frozen=True, slots=True)
class Translation:
    desired: DesiredState
    status: StatusReport


@dataclass
class RouteResult:
    route: Route
    verdicts: list[ParentVerdict]
    # rule index -> its resolved backends, for rules that can be served.
    rules: dict[int, list[WeightedResolution]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # "rule N: why"
    ref_errors: list[RefError] = field(default_factory=list)

    @property
    def servable(self) -> bool:
        return bool(self.rules)


def translate(
    snapshot: Snapshot,
    controller_name: str = DEFAULT_CONTROLLER_NAME,
    prior_addresses: Mapping[Key, tuple[str, ...]] | None = None,
    hosts: HostAddresses | None = None,
) -> Translation:
    """`prior_addresses`: the addresses Gateways held when this agent last
    wrote status (a standalone agent's status file); Kubernetes Gateways carry
    theirs in status.addresses.  `hosts`: addresses of real hosts that no VIP
    may take (this node's; endpoints' come from the snapshot)."""
    with gc_paused():
        return _translate(
            snapshot, controller_name, prior_addresses or {}, hosts or HostAddresses()
        )


def _translate(
    snapshot: Snapshot,
    controller_name: str,
    prior_addresses: Mapping[Key, tuple[str, ...]],
    host_rule: HostAddresses,
) -> Translation:
    index = SnapshotIndex.build(snapshot)
    hosts = host_addresses(host_rule, snapshot.endpoint_slices) if snapshot.gateways else {}
    statuses: list[ObjectStatus] = []

    all_configs: dict[str, GatewayLBConfig | InvalidObject] = {
        c.meta.name: c for c in snapshot.configs
    }
    for inv in snapshot.invalid:
        if inv.kind == CONFIG_KIND:
            all_configs[inv.meta.name] = inv
    classes: dict[str, bool] = {}
    configs: dict[str, GatewayLBConfig] = {}  # class name -> its config
    for gc in snapshot.gateway_classes:
        if gc.controller_name != controller_name:
            continue
        class_status, config, ok = gateway_class_status(gc, SUPPORTED_FEATURES, all_configs)
        classes[gc.meta.name] = ok
        if config is not None:
            configs[gc.meta.name] = config
        statuses.append(_object_status("GatewayClass", gc.meta, class_status))
    for inv in snapshot.invalid:
        if inv.kind == "GatewayClass" and inv.controller_name == controller_name:
            classes[inv.meta.name] = False
            statuses.append(_object_status("GatewayClass", inv.meta, invalid_class_status(inv)))

    gateways: dict[Key, GatewayState] = {}
    pools_of: dict[Key, tuple[AddressPool, ...]] = {}
    for gw in snapshot.gateways:
        if gw.class_name in classes:
            config = configs.get(gw.class_name)
            pools = config.pools if config is not None else None
            gateways[gw.meta.key] = evaluate_gateway(
                gw, classes[gw.class_name], index, pools, hosts
            )
            pools_of[gw.meta.key] = pools or ()
    listener_sets = attach_listener_sets(snapshot.listener_sets, gateways, index)
    assign_addresses(gateways.values(), pools_of, prior_addresses, hosts)
    claim_ports(list(gateways.values()))
    for state in gateways.values():
        state.settle()
    # Malformed Gateways of ours: routes naming them are told so (NoMatchingParent).
    parent_gateways = dict(gateways)
    for inv in snapshot.invalid:
        if inv.kind == "Gateway" and inv.gateway_class in classes:
            parent_gateways.setdefault(inv.meta.key, invalid_gateway_state(inv))
    parents = Parents(parent_gateways, listener_sets)

    tls_policies = BackendTLSPolicies(snapshot.backend_tls_policies, index)
    resolver = BackendResolver(index, tls_policies)
    results: list[RouteResult] = []
    routes: list[Route] = [*snapshot.http_routes, *snapshot.grpc_routes, *snapshot.l4_routes]
    for route in routes:
        result = _evaluate_route(route, parents, index, resolver)
        if result.verdicts:
            results.append(result)
            statuses.append(
                _object_status(route.kind, route.meta, _route_status(result, controller_name))
            )

    for inv in snapshot.invalid:
        status = _invalid_status(inv, classes, parents, controller_name)
        if status is not None:
            statuses.append(status)

    for state in gateways.values():
        statuses.append(_object_status("Gateway", state.gateway.meta, state.status()))
    for ls_state in listener_sets.values():
        statuses.append(
            _object_status("ListenerSet", ls_state.listener_set.meta, ls_state.status())
        )
    _policy_ancestors(results, tls_policies)
    for verdict in tls_policies.verdicts.values():
        if verdict.ancestors:
            statuses.append(
                _object_status(
                    "BackendTLSPolicy", verdict.policy.meta, verdict.status(controller_name)
                )
            )

    desired = _desired_state(gateways, results, _announce_settings(snapshot, configs))
    statuses.sort(key=lambda s: s.sort_key)
    return Translation(desired=desired, status=StatusReport(tuple(statuses)))


def _object_status(kind: str, meta: ObjectMeta, status: Status) -> ObjectStatus:
    api_version = meta.api_version or "gateway.networking.k8s.io/v1"
    return ObjectStatus(
        api_version=api_version,
        kind=kind,
        namespace=meta.namespace,
        name=meta.name,
        generation=meta.generation,
        status=status,
    )


# -- routes ------------------------------------------------------------------------


def _evaluate_route(
    route: Route,
    parents: Parents,
    index: SnapshotIndex,
    resolver: BackendResolver,
) -> RouteResult:
    verdicts: list[ParentVerdict] = []
    for ref in route.parent_refs:
        target = parents.find(ref, route.meta.namespace)
        if target is None:
            continue
        verdicts.append(
            evaluate_parent(
                kind=route.kind,
                meta=route.meta,
                hostnames=route.hostnames,
                ref=ref,
                target=target,
                index=index,
            )
        )
    result = RouteResult(route, verdicts)
    if not verdicts:
        return result

    def resolve(
        ref_weight: int, ref: BackendObjectReference, filters: tuple[RouteFilter, ...] = ()
    ) -> WeightedResolution:
        res = resolver.resolve(ref, route_kind=route.kind, route_namespace=route.meta.namespace)
        if isinstance(res, RefError):
            result.ref_errors.append(res)
        return WeightedResolution(ref_weight, res, filters)

    if isinstance(route, HTTPRoute | GRPCRoute):
        rules: tuple[HTTPRouteRule | GRPCRouteRule, ...] = route.rules
        for i, rule in enumerate(rules):
            unsupported = _unsupported(route, i)
            resolved = [resolve(b.weight, b.ref, b.filters) for b in rule.backend_refs]
            for flt in (*rule.filters, *(f for b in rule.backend_refs for f in b.filters)):
                if flt.request_mirror is not None:
                    mirror = resolve(0, flt.request_mirror.backend)
                    if isinstance(mirror.resolution, RefError):
                        unsupported = unsupported or f"mirror backend: {mirror.resolution.message}"
            if unsupported:
                result.dropped.append(f"rule {rule.name or i}: {unsupported}")
                continue
            result.rules[i] = resolved
    else:
        refs = [resolve(b.weight, b.ref) for rule in route.rules for b in rule.backend_refs]
        result.rules[0] = refs

    if result.servable:
        # A route counts once per listener, however many parentRefs select it.
        seen: set[int] = set()
        for verdict in verdicts:
            for att in verdict.attachments:
                if id(att.listener) not in seen:
                    seen.add(id(att.listener))
                    att.listener.attached_routes += 1
    return result


def _policy_ancestors(results: list[RouteResult], policies: BackendTLSPolicies) -> None:
    """The Gateways under which each BackendTLSPolicy reports: those whose
    HTTP and gRPC routes reach a Service it targets."""
    for result in results:
        if not isinstance(result.route, HTTPRoute | GRPCRoute):
            continue
        gateways = {v.gateway for v in result.verdicts if v.rejection is None}
        services = {
            w.resolution.service
            for refs in result.rules.values()
            for w in refs
            if isinstance(w.resolution, ResolvedService)
        }
        for service in services:
            for gateway in gateways:
                policies.used_by(service, gateway)


def _unsupported(route: HTTPRoute | GRPCRoute, i: int) -> str | None:
    rule = route.rules[i]
    filters = list(rule.filters) + [f for b in rule.backend_refs for f in b.filters]
    for flt in filters:
        if flt.type in UNSUPPORTED_FILTERS:
            return f"the {flt.type} filter is not supported"
    if isinstance(route, HTTPRoute) and (retry := route.rules[i].retry) is not None:
        if retry.backoff is not None and duration_seconds(retry.backoff):
            return "retry.backoff is not supported: HAProxy retries a response at once"
        other = sorted(set(retry.codes) - RETRY_CODES)
        if other:
            return (
                f"retry.codes {', '.join(map(str, other))} not supported "
                f"(supported: {', '.join(map(str, sorted(RETRY_CODES)))})"
            )
    if rule.has_session_persistence:
        return "sessionPersistence is not supported"
    return None


def _route_status(result: RouteResult, controller_name: str) -> RouteStatus:
    gen = result.route.meta.generation
    if result.ref_errors:
        first = result.ref_errors[0]
        messages = list(dict.fromkeys(e.message for e in result.ref_errors))
        resolved = Condition(RESOLVED_REFS, False, first.reason, "; ".join(messages)[:1024], gen)
    else:
        resolved = Condition(RESOLVED_REFS, True, R_RESOLVED_REFS, "All references resolved", gen)
    parents = []
    for verdict in result.verdicts:
        conds: list[Condition] = []
        if verdict.rejection is not None:
            conds.append(Condition(ACCEPTED, False, *verdict.rejection, gen))
        elif not result.servable:
            conds.append(
                Condition(
                    ACCEPTED, False, R_UNSUPPORTED_VALUE, "; ".join(result.dropped)[:1024], gen
                )
            )
        else:
            conds.append(Condition(ACCEPTED, True, R_ACCEPTED, "Route is accepted", gen))
            if result.dropped:
                conds.append(
                    Condition(
                        PARTIALLY_INVALID,
                        True,
                        R_UNSUPPORTED_VALUE,
                        "Dropped Rule(s): " + "; ".join(result.dropped)[:1000],
                        gen,
                    )
                )
        conds.append(resolved)
        parents.append(RouteParentStatus(verdict.parent, controller_name, tuple(conds)))
    return RouteStatus(tuple(parents))


def _invalid_status(
    inv: InvalidObject,
    classes: dict[str, bool],
    parents: Parents,
    controller_name: str,
) -> ObjectStatus | None:
    """A malformed object of ours still gets a status that names the bad field."""
    gen = inv.meta.generation
    if inv.kind == "ListenerSet":
        if not inv.parent_refs or parents.find(inv.parent_refs[0], inv.meta.namespace) is None:
            return None
        msg = f"invalid ListenerSet: {inv.error}"
        conds = (
            Condition(ACCEPTED, False, R_INVALID, msg, gen),
            Condition(PROGRAMMED, False, R_INVALID, msg, gen),
        )
        return _object_status("ListenerSet", inv.meta, ListenerSetStatus(conds, ()))
    if inv.kind == "Gateway":
        if inv.gateway_class not in classes:
            return None
        msg = f"invalid Gateway: {inv.error}"
        return _object_status(
            "Gateway",
            inv.meta,
            GatewayStatus(
                addresses=(),
                conditions=(
                    Condition(ACCEPTED, False, R_INVALID, msg, gen),
                    Condition(PROGRAMMED, False, R_INVALID, msg, gen),
                ),
                listeners=(),
            ),
        )
    if inv.kind not in ROUTE_KINDS:
        return None
    entries = []
    for ref in inv.parent_refs:
        target = parents.find(ref, inv.meta.namespace)
        if target is None:
            continue
        cond = Condition(
            ACCEPTED, False, R_UNSUPPORTED_VALUE, f"invalid {inv.kind}: {inv.error}", gen
        )
        entries.append(
            RouteParentStatus(
                parent_ref_status(ref, target.key.namespace), controller_name, (cond,)
            )
        )
    if not entries:
        return None
    return _object_status(inv.kind, inv.meta, RouteStatus(tuple(entries)))


# -- desired state -------------------------------------------------------------------


def _announce_settings(
    snapshot: Snapshot, configs: Mapping[str, GatewayLBConfig]
) -> AnnounceSettings:
    """One node has one set of announcement settings: the oldest GatewayClass's
    config decides the timers and the BGP ASN; interfaces, and the peers of
    configs with the same ASN, are merged."""
    ordered = [
        configs[gc.meta.name]
        for gc in sorted(snapshot.gateway_classes, key=lambda c: age_order(c.meta))
        if gc.meta.name in configs
    ]
    l2s = [c.l2 for c in ordered if c.l2 is not None]
    bgps = [c.bgp for c in ordered if c.bgp is not None]
    l2 = None
    if l2s:
        interfaces = tuple(dict.fromkeys(i for s in l2s for i in s.interfaces))
        l2 = dataclasses.replace(l2s[0], interfaces=interfaces)
    bgp = None
    if bgps:
        peers: dict[str, BGPPeer] = {}
        for settings in bgps:
            if settings.local_asn == bgps[0].local_asn:
                for peer in settings.peers:
                    peers.setdefault(peer.address, peer)
        bgp = dataclasses.replace(bgps[0], peers=tuple(peers.values()))
    return AnnounceSettings(l2=l2, bgp=bgp)


def _announcements(
    users: Mapping[str, list[str]], l4: list[L4Frontend], l7: list[L7Listener]
) -> tuple[Announcement, ...]:
    """`users`: VIP -> the programmed Gateways on it."""
    ready: set[str] = {f.vip for f in l4 if f.accepts_new_flows}
    for listener in l7:
        if _l7_has_endpoints(listener):
            ready.update(listener.vips)
    return tuple(
        Announcement(vip, vip in ready, tuple(users[vip]))
        for vip in sorted(users, key=_ip_sort_key)
    )


def _l7_has_endpoints(listener: L7Listener) -> bool:
    sets = [e.backends for vh in listener.virtual_hosts for e in vh.routes]
    sets += [t.backends for t in listener.tls_routes]
    if listener.tcp_backends is not None:
        sets.append(listener.tcp_backends)
    return any(svc.endpoints for bs in sets for svc in bs.services)


def _desired_state(
    gateways: dict[Key, GatewayState], results: list[RouteResult], announce: AnnounceSettings
) -> DesiredState:
    # listener -> the servable routes attached to it, with their hostnames there.
    attached: dict[int, list[tuple[RouteResult, tuple[str, ...]]]] = {}
    for result in results:
        if not result.servable:
            continue
        for verdict in result.verdicts:
            for att in verdict.attachments:
                bucket = attached.setdefault(id(att.listener), [])
                if all(r is not result for r, _ in bucket):
                    bucket.append((result, att.hostnames))

    users: dict[str, list[str]] = {}  # VIP -> the programmed Gateways using it
    l4: list[L4Frontend] = []
    l7: list[L7Listener] = []
    for key in sorted(gateways):
        state = gateways[key]
        if not state.programmed:
            continue
        for vip in state.vips:
            users.setdefault(vip, []).append(str(key))
        for ls in (*state.listeners, *state.set_listeners):
            if not ls.programmable:
                continue
            routes = sorted(attached.get(id(ls), []), key=lambda r: age_order(r[0].route.meta))
            if ls.listener.protocol in L4_PROTOCOLS:
                l4.extend(_l4_frontends(state, ls, routes[0][0] if routes else None))
            else:
                l7.append(_l7_listener(state, ls, routes))
    return DesiredState(
        vips=tuple(sorted(users, key=_ip_sort_key)),
        l4=tuple(sorted(l4, key=lambda f: (_ip_sort_key(f.vip), f.protocol, f.port))),
        l7=tuple(l7),
        announcements=_announcements(users, l4, l7),
        announce=announce,
    )


@functools.lru_cache(maxsize=4096)
def _ip_sort_key(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return (addr.version, int(addr))


def _l4_frontends(
    state: GatewayState, ls: ListenerState, winner: RouteResult | None
) -> list[L4Frontend]:
    """One frontend per VIP.  Only the oldest attached route carries traffic; a
    listener with no route still gets a frontend, which refuses connections."""
    protocol = TCP if ls.listener.protocol == "TCP" else UDP
    source = FrontendSource(
        namespace=state.key.namespace,
        gateway=state.key.name,
        listener=ls.metrics_name,
        route=str(winner.route.meta.key) if winner else "",
    )
    out = []
    for vip in state.vips:
        family = 6 if ":" in vip else 4
        refs = winner.rules.get(0, []) if winner else []
        backends, reject = l4_backends(refs, family)
        out.append(L4Frontend(vip, protocol, ls.listener.port, backends, reject, source))
    return out


def _with_client_certificate(backends: BackendSet, cert: TLSCertificate | None) -> BackendSet:
    """The Gateway's backend client certificate on the Services reached over TLS."""
    if cert is None or not any(svc.tls is not None for svc in backends.services):
        return backends
    services = tuple(
        dataclasses.replace(svc, tls=dataclasses.replace(svc.tls, client_certificate=cert))
        if svc.tls is not None
        else svc
        for svc in backends.services
    )
    return dataclasses.replace(backends, services=services)


def _l7_listener(
    state: GatewayState,
    ls: ListenerState,
    routes: list[tuple[RouteResult, tuple[str, ...]]],
) -> L7Listener:
    by_hostname: dict[str, list[PendingEntry]] = {}
    tls_routes: list[TLSRouteEntry] = []
    tcp_backends: BackendSet | None = None
    claimed: set[str] = set()
    for result, hostnames in routes:
        route = result.route
        if isinstance(route, HTTPRoute | GRPCRoute):
            backend_sets = {
                i: _with_client_certificate(l7_backends(refs), state.client_certificate)
                for i, refs in result.rules.items()
            }
            entries = route_entries(route, backend_sets)
            for hostname in hostnames:
                by_hostname.setdefault(hostname, []).extend(entries)
        elif isinstance(route, L4Route) and route.kind == TLS_ROUTE:
            # An SNI name belongs to the oldest route that claims it.
            mine = tuple(h for h in hostnames if h not in claimed)
            claimed.update(mine)
            if mine:
                tls_routes.append(
                    TLSRouteEntry(
                        ObjectRef(route.kind, route.meta.namespace, route.meta.name),
                        mine,
                        l7_backends(result.rules[0]),
                    )
                )
        elif isinstance(route, L4Route) and route.kind == TCP_ROUTE and tcp_backends is None:
            tcp_backends = l7_backends(result.rules[0])
    return L7Listener(
        gateway=str(state.key),
        listener=ls.listener.name,
        listener_set=str(ls.listener_set) if ls.listener_set is not None else "",
        client_validation=ls.client_validation,
        vips=state.vips,
        port=ls.listener.port,
        protocol=ls.listener.protocol,
        tls_mode=ls.tls_mode,
        hostname=ls.listener.hostname,
        certificates=tuple(ls.certificates),
        virtual_hosts=virtual_hosts(by_hostname),
        tls_routes=tuple(tls_routes),
        tcp_backends=tcp_backends,
    )
