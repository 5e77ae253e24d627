"""ListenerSets through translate: admission by the Gateway's allowedListeners,
listener precedence and conflicts, the ListenerSet's own status and the
Gateway's attachedListenerSets, routes attached through a ListenerSet, and
their listeners in the desired state (L4 ones into the kernel dataplanes).

The first half replays the upstream conformance manifests (v1.6.1,
tests/listenerset-*.yaml) and checks what their Go tests assert without
traffic; the second half covers what the suite does not.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import (
    allow_listener_sets,
    backend,
    backend_service,
    cond,
    gateway,
    http,
    httproute,
    https,
    listener_set,
    namespace,
    parent,
    rule,
    run,
    secret,
    status,
    tcp,
    tcproute,
    udp,
)
from test_conformance_manifests import INFRA, TESTS, load

from agent.feedback import fold_failures
from agent.model.snapshot import build_snapshot
from agent.proxy.reconciler import problem_failures
from agent.proxy.render import Problem
from agent.translate.rejections import rejections

Doc = dict[str, Any]
LS = "ListenerSet"


def _conds(st: Doc) -> dict[str, tuple[bool, str]]:
    return {c["type"]: (c["status"] == "True", c["reason"]) for c in st["conditions"]}


def _listener(st: Doc, name: str) -> Doc:
    found = [ls for ls in st["listeners"] if ls["name"] == name]
    assert found, f"no listener {name} in {[ls['name'] for ls in st['listeners']]}"
    return found[0]


def _listener_ok(st: Doc, name: str) -> None:
    got = _conds(_listener(st, name))
    for type_ in ("Accepted", "ResolvedRefs", "Programmed"):
        assert got[type_][0], f"listener {name}: {type_} is {got[type_]}"


def _listener_conflicted(st: Doc, name: str, reason: str) -> None:
    got = _conds(_listener(st, name))
    assert got["Accepted"] == (False, reason)
    assert got["Programmed"] == (False, reason)
    assert got["Conflicted"] == (True, reason)


def _attached_sets(tr: Any, gw: str, ns: str = INFRA) -> int:
    count: int = status(tr, "Gateway", gw, ns)["attachedListenerSets"]
    return count


def _parent_conds(tr: Any, route: str, kind: str, parent_name: str, ns: str = INFRA) -> Doc:
    st = status(tr, "HTTPRoute", route, ns)
    found = [
        p
        for p in st["parents"]
        if p["parentRef"]["kind"] == kind and p["parentRef"]["name"] == parent_name
    ]
    assert len(found) == 1, st["parents"]
    return dict(_conds(found[0]))


needs_suite = pytest.mark.skipif(not TESTS.is_dir(), reason=f"{TESTS} is not present")


# -- the upstream conformance manifests -------------------------------------------------------


@needs_suite
@pytest.mark.parametrize(
    ("test_file", "gw", "not_allowed"),
    [
        ("listenerset-default-not-allowed", "gateway-default-does-not-allow-listenerset",
         (INFRA, "listenerset-default-not-allowed")),
        ("listenerset-allowed-namespace-none", "gateway-does-not-allow-listenerset",
         (INFRA, "listenerset-not-allowed")),
    ],
)  # fmt: skip
def test_a_gateway_admits_no_listener_set_by_default_or_with_none(
    test_file: str, gw: str, not_allowed: tuple[str, str]
) -> None:
    tr = load(test_file, addresses=True)
    assert _conds(status(tr, "Gateway", gw, INFRA))["Accepted"][0]
    assert _attached_sets(tr, gw) == 0
    got = _conds(status(tr, LS, not_allowed[1], not_allowed[0]))
    assert got["Accepted"] == (False, "NotAllowed")
    assert got["Programmed"] == (False, "NotAllowed")


@needs_suite
@pytest.mark.parametrize(
    ("test_file", "gw", "allowed", "not_allowed"),
    [
        ("listenerset-allowed-namespace-same", "gateway-allows-listenerset-in-same-namespace",
         (INFRA, "listenerset-in-same-namespace"),
         ("gateway-api-listenerset-not-allowed-ns", "listenerset-in-different-namespace")),
        ("listenerset-allowed-namespace-selector",
         "gateway-allows-listenerset-in-selected-namespace",
         ("gateway-api-listenerset-selector-allowed-ns", "listenerset-in-selected-namespace"),
         ("gateway-api-listenerset-selector-not-allowed-ns",
          "listenerset-not-in-selected-namespace")),
    ],
)  # fmt: skip
def test_allowed_listeners_same_and_selector(
    test_file: str, gw: str, allowed: tuple[str, str], not_allowed: tuple[str, str]
) -> None:
    tr = load(test_file, addresses=True)
    assert _attached_sets(tr, gw) == 1
    st = status(tr, LS, allowed[1], allowed[0])
    assert _conds(st)["Accepted"] == (True, "Accepted")
    assert _conds(st)["Programmed"] == (True, "Programmed")
    _listener_ok(st, f"{allowed[1]}-listener")
    got = _conds(status(tr, LS, not_allowed[1], not_allowed[0]))
    assert got["Accepted"] == (False, "NotAllowed")
    assert got["Programmed"] == (False, "NotAllowed")


@needs_suite
@pytest.mark.parametrize(("kind", "reason"), [("hostname", "HostnameConflict"),
                                              ("protocol", "ProtocolConflict")])  # fmt: skip
def test_precedence_gateway_first_then_older_listener_sets(kind: str, reason: str) -> None:
    tr = load(f"listenerset-{kind}-conflict", addresses=True)
    gw = f"gateway-with-listenerset-{kind}-conflict"
    gw_st = status(tr, "Gateway", gw, INFRA)
    _listener_ok(gw_st, "gateway-listener")
    _listener_ok(gw_st, f"{kind}-conflict-with-gateway-listener")
    assert _attached_sets(tr, gw) == 2

    first = status(tr, LS, f"listenerset-with-{kind}-conflict-with-gateway-1", INFRA)
    assert _conds(first)["Accepted"][0] is True
    assert _conds(first)["Programmed"] == (True, "Programmed")
    _listener_ok(first, "listener-set-1-listener")
    _listener_conflicted(first, f"{kind}-conflict-with-gateway-listener", reason)
    _listener_ok(first, f"{kind}-conflict-with-listener-set-listener")

    only_loser = status(tr, LS, f"listenerset-with-{kind}-conflict-with-gateway-2", INFRA)
    assert _conds(only_loser)["Accepted"] == (False, "ListenersNotValid")
    assert _conds(only_loser)["Programmed"] == (False, "ListenersNotValid")
    _listener_conflicted(only_loser, f"{kind}-conflict-with-gateway-listener", reason)

    later = status(tr, LS, f"listenerset-with-{kind}-conflict-with-listener-set-1", INFRA)
    assert _conds(later)["Programmed"] == (True, "Programmed")
    _listener_ok(later, "listener-set-2-listener")
    _listener_conflicted(later, f"{kind}-conflict-with-listener-set-listener", reason)


@needs_suite
def test_listener_set_certificates_need_a_grant_from_listener_set() -> None:
    tr = load("listenerset-reference-grant", addresses=True)
    granted = status(tr, LS, "listenerset-with-reference-grant", INFRA)
    assert _conds(granted)["Accepted"][0] and _conds(granted)["Programmed"][0]
    listener = _listener(granted, "listenerset-with-reference-grant-listener")
    assert _conds(listener)["ResolvedRefs"][0]
    # The grant for Gateways does not extend to ListenerSets of another namespace.
    ungranted = status(
        tr,
        LS,
        "listenerset-without-reference-grant",
        "gateway-api-listener-sets-test-reference-grant-ns",
    )
    assert _conds(ungranted)["Accepted"] == (False, "ListenersNotValid")
    assert _conds(ungranted)["Programmed"] == (False, "ListenersNotValid")
    listener = _listener(ungranted, "listenerset-without-reference-grant-listener")
    assert _conds(listener)["ResolvedRefs"] == (False, "RefNotPermitted")


@needs_suite
def test_listener_set_listener_with_an_unsupported_route_kind() -> None:
    tr = load("listenerset-allowed-routes-supported-kinds", addresses=True)
    st = status(tr, LS, "listenerset-test-allowed-routes-supported-kinds", INFRA)
    listener = _listener(st, "listener-set-listener-allowed-routes-tls-only")
    assert _conds(listener)["ResolvedRefs"] == (False, "InvalidRouteKinds")


@needs_suite
def test_allowed_routes_same_is_relative_to_the_listener_set() -> None:
    tr = load("listenerset-allowed-routes-namespaces", addresses=True)
    gw = "gateway-with-listener-sets-test-allowed-routes"
    assert _attached_sets(tr, gw) == 2
    st = status(tr, LS, "listenerset-test-allowed-routes-namespaces", INFRA)
    attached = {ls["name"]: ls["attachedRoutes"] for ls in st["listeners"]}
    assert attached == {
        "listener-set-listener-allowed-routes-all": 3,
        "listener-set-listener-allowed-routes-same": 1,
        "listener-set-listener-allowed-routes-selector": 1,
    }
    cross_ns = "gateway-api-ls-cross-ns"
    cross = status(tr, LS, "listenerset-test-allowed-routes-cross-ns", cross_ns)
    assert [ls["attachedRoutes"] for ls in cross["listeners"]] == [1]
    ok = _parent_conds(
        tr, "route-in-listenerset-namespace", LS, "listenerset-test-allowed-routes-cross-ns",
        cross_ns,
    )  # fmt: skip
    assert ok["Accepted"][0]
    refused = _parent_conds(
        tr, "route-in-gateway-namespace", LS, "listenerset-test-allowed-routes-cross-ns"
    )
    assert refused["Accepted"] == (False, "NotAllowedByListeners")
    # Traffic: each host answers only the routes its listener admits.
    hosts = {
        vh.hostname: {str(e.route) for e in vh.routes}
        for ls in tr.desired.l7
        for vh in ls.virtual_hosts
    }
    assert hosts["listener-set-listener-allowed-routes-same.com"] == {
        f"HTTPRoute {INFRA}/route-in-same-namespace"
    }
    assert hosts["listener-set-listener-allowed-routes-selector.com"] == {
        "HTTPRoute gateway-api-routes-allowed-ns/route-in-selected-namespace"
    }


@needs_suite
def test_gateway_and_listener_set_parent_refs_are_judged_apart() -> None:
    tr = load("listenerset-dual-parentref-independence", addresses=True)
    gw, ls = "gateway-dual-parentref", "ls-dual-parentref"
    both = "route-dual-parentref-both"
    assert _parent_conds(tr, both, "Gateway", gw)["Accepted"][0]
    assert _parent_conds(tr, both, LS, ls)["Accepted"][0]
    one = "route-dual-parentref-one"
    assert _parent_conds(tr, one, "Gateway", gw)["Accepted"] == (False, "NoMatchingParent")
    assert _parent_conds(tr, one, LS, ls)["Accepted"][0]
    st = status(tr, LS, ls, INFRA)
    assert [x["attachedRoutes"] for x in st["listeners"]] == [2]
    hosts = {
        vh.hostname: {str(e.route) for e in vh.routes}
        for x in tr.desired.l7
        for vh in x.virtual_hosts
    }
    assert hosts["gw-dual.com"] == {f"HTTPRoute {INFRA}/{both}"}
    assert hosts["ls-dual.com"] == {f"HTTPRoute {INFRA}/{both}", f"HTTPRoute {INFRA}/{one}"}


@needs_suite
def test_route_status_names_the_parent_it_was_given() -> None:
    tr = load("listenerset-route-status-scoped-to-parentref", addresses=True)
    gw_only = status(tr, "HTTPRoute", "route-parentref-gwonly", INFRA)["parents"]
    assert [p["parentRef"]["kind"] for p in gw_only] == ["Gateway"]
    ls_only = status(tr, "HTTPRoute", "route-parentref-lsonly", INFRA)["parents"]
    assert [(p["parentRef"]["kind"], p["parentRef"]["namespace"]) for p in ls_only] == [(LS, INFRA)]
    st = status(tr, LS, "listenerset-parentref", INFRA)
    listener = _listener(st, "listenerset-parentref-listener")
    assert listener["attachedRoutes"] == 1
    kinds = {k["kind"] for k in listener["supportedKinds"]}
    assert kinds == {"HTTPRoute", "GRPCRoute"}


@needs_suite
def test_http_routing_counts_routes_per_listener_set_listener() -> None:
    tr = load("listenerset-http-routing", addresses=True)
    assert _attached_sets(tr, "gateway-with-listener-sets-http-routing") == 2
    one = status(tr, LS, "listener-set-http-routing-1", INFRA)
    assert {x["name"]: x["attachedRoutes"] for x in one["listeners"]} == {
        "listener-set-http-routing-1-listener-1": 3,
        "listener-set-http-routing-1-listener-2": 2,
    }
    two = status(tr, LS, "listener-set-http-routing-2", INFRA)
    assert [x["attachedRoutes"] for x in two["listeners"]] == [2, 2]


@needs_suite
def test_a_gateway_section_name_does_not_reach_a_listener_set_listener() -> None:
    tr = load("listenerset-gateway-parent-section-name-not-found", addresses=True)
    via_gw = _parent_conds(tr, "route-via-gateway", "Gateway", "gateway-section-name")
    assert via_gw["Accepted"] == (False, "NoMatchingParent")
    via_ls = _parent_conds(tr, "route-via-listenerset", LS, "listenerset-section-name")
    assert via_ls["Accepted"][0]


# -- beyond the suite ----------------------------------------------------------------------


def _gw(*listeners: Doc, allow: str = "Same", **kw: Any) -> Doc:
    return gateway("gw", *listeners, created="2026-01-01T00:00:00Z",
                   spec=allow_listener_sets(allow), **kw)  # fmt: skip


def test_l4_listeners_of_a_listener_set_become_kernel_frontends_on_the_gateway_vip() -> None:
    tr = run(
        _gw(http("web", 80)),
        listener_set("team", tcp("db", 5432), udp("dns", 53)),
        tcproute("db", backend("svc", 80), parents=[parent("team", kind=LS, section="db")]),
        backend_service("svc", "10.1.0.5"),
    )
    frontends = {(f.vip, f.protocol, f.port): f for f in tr.desired.l4}
    db = frontends[("192.0.2.10", "tcp", 5432)]
    assert [b.ip for b in db.backends] == ["10.1.0.5"]
    assert db.source.listener == "default/team/db"
    assert db.source.route == "default/db"
    # A listener with no route still gets a frontend, which refuses.
    assert frontends[("192.0.2.10", "udp", 53)].backends == ()


def test_listener_sets_lose_to_listeners_of_another_gateway_on_the_same_vip() -> None:
    older = gateway("older", tcp("db", 5432), created="2025-01-01T00:00:00Z")
    tr = run(older, _gw(http("web", 80)), listener_set("team", tcp("db", 5432)))
    listener = _listener(status(tr, LS, "team"), "db")
    assert _conds(listener)["Accepted"] == (False, "PortUnavailable")
    assert (
        "Gateway default/older listener db" in cond(listener["conditions"], "Accepted")["message"]
    )
    assert _conds(status(tr, LS, "team"))["Accepted"] == (False, "ListenersNotValid")
    assert status(tr, "Gateway", "gw")["attachedListenerSets"] == 0


def test_a_listener_set_of_a_gateway_that_is_not_accepted() -> None:
    bad = gateway("gw", http("web", 80), spec={
        **allow_listener_sets("Same"),
        "infrastructure": {"parametersRef": {"group": "x.io", "kind": "Params", "name": "p"}},
    })  # fmt: skip
    tr = run(bad, listener_set("team", http("app", 80, hostname="app.example.com")))
    assert _conds(status(tr, LS, "team"))["Accepted"] == (False, "ParentNotAccepted")


def test_listener_sets_of_other_controllers_gateways_get_no_status() -> None:
    other = gateway("gw", http("web", 80), class_name="someone-else", spec=allow_listener_sets())
    tr = run(other, listener_set("team", http("app", 80)))
    assert tr.status.find(LS, "default", "team") is None


def test_a_malformed_listener_set_of_ours_is_told_which_field() -> None:
    broken = listener_set("team", {"name": "x", "protocol": "HTTP", "port": 0})
    tr = run(_gw(http("web", 80)), broken)
    got = status(tr, LS, "team")
    accepted = cond(got["conditions"], "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "spec.listeners[0].port" in accepted["message"]


def test_rejected_listener_sets_reach_the_log_lines() -> None:
    docs = [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
         "metadata": {"name": "gatewaylb"}, "spec": {"controllerName": "gatewaylb.io/agent"}},
        _gw(http("web", 80), allow="None"),
        listener_set("team", http("app", 80)),
    ]  # fmt: skip
    snap = build_snapshot((d, f"m.yaml:{i}") for i, d in enumerate(docs))
    tr = run(*docs)
    lines = [str(r) for r in rejections(snap, tr.status)]
    assert any(line.startswith("ListenerSet default/team") and "NotAllowed" in line
               for line in lines), lines  # fmt: skip


def test_a_port_the_node_cannot_bind_marks_the_listener_set_listener() -> None:
    tr = run(_gw(http("web", 80)), listener_set("team", http("app", 8080)))
    [ls_listener] = [x for x in tr.desired.l7 if x.listener_set]
    assert str(ls_listener.owner) == "ListenerSet default/team listener app"
    problem = Problem(ls_listener.owner, None, "port 8080 is in use", "PortUnavailable")
    report = fold_failures(tr.status, problem_failures((problem,)))
    obj = report.find(LS, "default", "team")
    assert obj is not None
    programmed = cond(obj.to_dict()["status"]["listeners"][0]["conditions"], "Programmed")
    assert (programmed["status"], programmed["reason"]) == ("False", "PortUnavailable")
    gw = report.find("Gateway", "default", "gw")
    assert gw is not None
    assert cond(gw.to_dict()["status"]["listeners"][0]["conditions"], "Programmed")["status"] == (
        "True"
    )


def test_https_listener_set_listener_uses_a_secret_of_its_own_namespace() -> None:
    tr = run(
        namespace("team"),
        _gw(http("web", 80), allow="All"),
        listener_set(
            "shop",
            https("tls", 443, hostname="shop.example.com", certs=["cert"]),
            namespace="team",
            gateway_namespace="default",
        ),
        secret("cert", namespace="team"),
    )
    st = status(tr, LS, "shop", "team")
    assert _conds(_listener(st, "tls"))["ResolvedRefs"][0]
    [served] = [x for x in tr.desired.l7 if x.listener_set == "team/shop"]
    assert [c.secret for c in served.certificates] == ["team/cert"]


def test_attached_listener_sets_is_written_as_zero_when_none_attach() -> None:
    tr = run(gateway("gw", http("web", 80)))
    assert status(tr, "Gateway", "gw")["attachedListenerSets"] == 0


def test_httproute_through_a_listener_set_listener() -> None:
    tr = run(
        _gw(http("web", 80)),
        listener_set("team", http("app", 80, hostname="app.example.com")),
        httproute("r", rule(backend("svc")), parents=[parent("team", kind=LS)]),
        backend_service("svc", "10.1.0.9"),
    )
    [served] = [x for x in tr.desired.l7 if x.listener_set == "default/team"]
    assert [vh.hostname for vh in served.virtual_hosts] == ["app.example.com"]
    [entry] = served.virtual_hosts[0].routes
    assert [ep.ip for svc in entry.backends.services for ep in svc.endpoints] == ["10.1.0.9"]
    assert served.vips == ("192.0.2.10",)
