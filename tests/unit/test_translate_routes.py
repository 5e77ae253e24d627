"""Route status: parentRef matching, allowedRoutes, hostnames, backend refs."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import (
    CONTROLLER,
    GW_GROUP,
    backend,
    backend_service,
    cond,
    frontend,
    gateway,
    gateway_class,
    grpcroute,
    has_status,
    http,
    httproute,
    listener_status,
    namespace,
    parent,
    parent_conditions,
    parents,
    reference_grant,
    rule,
    run,
    secret,
    service,
    tcp,
    tcproute,
    tls_passthrough,
    tlsroute,
    udp,
    udproute,
    weights,
)

from agent.translate.hostnames import effective_hostnames, intersect


def accepted(tr: Any, kind: str, name: str, ns: str = "default") -> tuple[str, str]:
    c = cond(parent_conditions(tr, kind, name, ns), "Accepted")
    return c["status"], c["reason"]


def resolved(tr: Any, kind: str, name: str, ns: str = "default") -> tuple[str, str]:
    c = cond(parent_conditions(tr, kind, name, ns), "ResolvedRefs")
    return c["status"], c["reason"]


SVC = backend_service("svc", "10.0.0.1")


def test_route_attached_to_a_listener_is_accepted_and_resolved() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r"), *SVC)
    assert accepted(tr, "TCPRoute", "r") == ("True", "Accepted")
    assert resolved(tr, "TCPRoute", "r") == ("True", "ResolvedRefs")


# -- parentRef matching ------------------------------------------------------------------------


def test_parent_ref_with_unknown_section_name_is_no_matching_parent() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", parents=[parent(section="nope")]), *SVC)
    assert accepted(tr, "TCPRoute", "r") == ("False", "NoMatchingParent")
    assert resolved(tr, "TCPRoute", "r") == ("True", "ResolvedRefs")
    assert listener_status(tr, "tcp")["attachedRoutes"] == 0


def test_parent_ref_with_unknown_port_is_no_matching_parent() -> None:
    tr = run(gateway("gw", tcp(port=5000)), tcproute("r", parents=[parent(port=5001)]), *SVC)
    assert accepted(tr, "TCPRoute", "r") == ("False", "NoMatchingParent")
    assert resolved(tr, "TCPRoute", "r") == ("True", "ResolvedRefs")


def test_parent_ref_whose_section_name_and_port_disagree_is_no_matching_parent() -> None:
    tr = run(
        gateway("gw", tcp("a", 1), tcp("b", 2)),
        tcproute("r", parents=[parent(section="a", port=2)]),
        *SVC,
    )
    assert accepted(tr, "TCPRoute", "r") == ("False", "NoMatchingParent")
    assert listener_status(tr, "a")["attachedRoutes"] == 0
    assert listener_status(tr, "b")["attachedRoutes"] == 0


def test_parent_ref_with_matching_section_name_and_port_attaches() -> None:
    tr = run(
        gateway("gw", tcp("a", 1), tcp("b", 2)),
        tcproute("r", parents=[parent(section="b", port=2)]),
        *SVC,
    )
    assert accepted(tr, "TCPRoute", "r") == ("True", "Accepted")
    assert listener_status(tr, "b")["attachedRoutes"] == 1


def test_parent_ref_by_port_attaches_to_every_listener_on_that_port() -> None:
    tr = run(gateway("gw", tcp("t", 53), udp("u", 53)), udproute("r", parents=[parent(port=53)]))
    assert accepted(tr, "UDPRoute", "r") == ("True", "Accepted")
    assert listener_status(tr, "u")["attachedRoutes"] == 1
    assert listener_status(tr, "t")["attachedRoutes"] == 0


def test_parent_ref_without_section_attaches_to_all_listeners_of_its_kind() -> None:
    tr = run(gateway("gw", tcp("a", 1), tcp("b", 2), udp("c", 3)), tcproute("r"), *SVC)
    assert [listener_status(tr, n)["attachedRoutes"] for n in "abc"] == [1, 1, 0]


def test_route_kind_not_allowed_by_any_listener_is_not_allowed_by_listeners() -> None:
    tr = run(gateway("gw", http()), tcproute("r", parents=[parent(section="http")]), *SVC)
    assert accepted(tr, "TCPRoute", "r") == ("False", "NotAllowedByListeners")
    assert listener_status(tr, "http")["attachedRoutes"] == 0


def test_tlsroute_on_https_listener_is_not_allowed_by_listeners() -> None:
    tr = run(gateway("gw", {"name": "https", "protocol": "HTTPS", "port": 443,
                            "tls": {"certificateRefs": [{"name": "cert"}]}}),
             secret("cert"), tlsroute("r"))  # fmt: skip
    assert accepted(tr, "TLSRoute", "r") == ("False", "NotAllowedByListeners")


def test_route_to_a_conflicted_listener_is_not_allowed_by_listeners() -> None:
    tr = run(gateway("gw", tcp("a", 80), http("b", 80), udp("c", 80)),
             tcproute("r", parents=[parent(section="a")]))  # fmt: skip
    assert accepted(tr, "TCPRoute", "r") == ("False", "NotAllowedByListeners")


# -- allowedRoutes.namespaces ---------------------------------------------------------------------


def test_route_from_another_namespace_on_same_listener_is_not_allowed_by_listeners() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", namespace="web", parents=[parent(namespace="default")]),
        *backend_service("svc", "10.0.0.1", namespace="web"),
    )
    assert accepted(tr, "TCPRoute", "r", "web") == ("False", "NotAllowedByListeners")
    assert resolved(tr, "TCPRoute", "r", "web") == ("True", "ResolvedRefs")
    assert listener_status(tr, "tcp")["attachedRoutes"] == 0


def test_route_from_another_namespace_on_from_all_listener_is_accepted() -> None:
    tr = run(
        gateway("gw", tcp(from_="All")),
        tcproute("r", namespace="web", parents=[parent(namespace="default")]),
        *backend_service("svc", "10.0.0.1", namespace="web"),
    )
    assert accepted(tr, "TCPRoute", "r", "web") == ("True", "Accepted")


def _selector_gateway(selector: dict[str, Any]) -> dict[str, Any]:
    return gateway("gw", tcp(from_="Selector", selector=selector))


@pytest.mark.parametrize(
    ("selector", "labels", "allowed"),
    [
        ({"matchLabels": {"team": "a"}}, {"team": "a"}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
        ({"matchLabels": {"team": "a"}}, None, False),
        ({"matchLabels": {"kubernetes.io/metadata.name": "web"}}, None, True),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
         {"team": "b"}, True),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
         {"team": "b"}, False),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]},
         {"team": "b"}, True),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]},
         {"team": "a"}, False),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"team": "x"}, True),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {"team": "x"}, False),
        ({"matchLabels": {"env": "prod"},
          "matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
         {"env": "prod", "team": "b"}, False),
        ({}, {"x": "y"}, True),  # the empty selector selects every namespace
    ],
    ids=[
        "labels-match", "labels-differ", "no-namespace-object", "metadata-name-label",
        "in-match", "in-miss", "notin-match", "notin-miss", "exists", "exists-miss",
        "doesnotexist", "doesnotexist-miss", "labels-and-expressions", "empty-selector",
    ],
)  # fmt: skip
def test_route_namespace_is_judged_by_the_listener_selector(
    selector: dict[str, Any], labels: dict[str, str] | None, allowed: bool
) -> None:
    docs: list[Any] = [
        _selector_gateway(selector),
        tcproute("r", namespace="web", parents=[parent(namespace="default")]),
    ]
    if labels is not None:
        docs.append(namespace("web", labels))
    tr = run(*docs)
    expected = ("True", "Accepted") if allowed else ("False", "NotAllowedByListeners")
    assert accepted(tr, "TCPRoute", "r", "web") == expected


def test_selector_listener_applies_to_the_gateways_own_namespace_too() -> None:
    tr = run(
        _selector_gateway({"matchLabels": {"team": "a"}}),
        namespace("default", {"team": "b"}),
        tcproute("r"),
    )
    assert accepted(tr, "TCPRoute", "r") == ("False", "NotAllowedByListeners")


# -- hostnames -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listener", "route", "expected"),
    [
        (None, "a.example.com", "a.example.com"),
        ("a.example.com", "a.example.com", "a.example.com"),
        ("a.example.com", "b.example.com", None),
        ("*.example.com", "a.example.com", "a.example.com"),
        ("*.example.com", "a.b.example.com", "a.b.example.com"),
        ("*.example.com", "example.com", None),
        ("a.example.com", "*.example.com", "a.example.com"),
        ("example.com", "*.example.com", None),
        ("*.example.com", "*.example.com", "*.example.com"),
        ("*.example.com", "*.a.example.com", "*.a.example.com"),
        ("*.a.example.com", "*.example.com", "*.a.example.com"),
        ("*.example.com", "*.example.org", None),
        ("*.example.com", "*.badexample.com", None),
        ("*.example.com", "badexample.com", None),
    ],
)
def test_hostname_intersection(listener: str | None, route: str, expected: str | None) -> None:
    assert intersect(listener, route) == expected


def test_route_without_hostnames_takes_the_listeners() -> None:
    assert effective_hostnames("*.example.com", ()) == ("*.example.com",)
    assert effective_hostnames(None, ()) == ("*",)


def test_route_whose_hostnames_intersect_no_listener_is_no_matching_listener_hostname() -> None:
    tr = run(
        gateway("gw", http(hostname="foo.example.com")),
        httproute("r", hostnames=["not-accepted.test.com"]),
        *SVC,
    )
    assert accepted(tr, "HTTPRoute", "r") == ("False", "NoMatchingListenerHostname")
    assert resolved(tr, "HTTPRoute", "r") == ("True", "ResolvedRefs")
    assert listener_status(tr, "http")["attachedRoutes"] == 0


def test_route_with_one_intersecting_hostname_is_accepted() -> None:
    tr = run(
        gateway("gw", http(hostname="*.example.com")),
        httproute("r", hostnames=["nope.test.com", "a.example.com"]),
        *SVC,
    )
    assert accepted(tr, "HTTPRoute", "r") == ("True", "Accepted")


def test_tlsroute_whose_hostnames_intersect_no_listener_is_no_matching_listener_hostname() -> None:
    tr = run(gateway("gw", tls_passthrough(hostname="*.example.com")),
             tlsroute("r", hostnames=["example.org"]))  # fmt: skip
    assert accepted(tr, "TLSRoute", "r") == ("False", "NoMatchingListenerHostname")


def test_tcproute_ignores_listener_hostnames() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r"))
    assert accepted(tr, "TCPRoute", "r") == ("True", "Accepted")


# -- parent status shape -------------------------------------------------------------------------


def test_parent_status_names_group_kind_namespace_and_controller() -> None:
    tr = run(
        gateway("gw", tcp(from_="All"), namespace="infra"),
        tcproute("r", namespace="web", parents=[parent("gw", namespace="infra", section="tcp")]),
    )
    (p,) = parents(tr, "TCPRoute", "r", "web")
    assert p["controllerName"] == CONTROLLER
    assert p["parentRef"] == {
        "group": GW_GROUP,
        "kind": "Gateway",
        "namespace": "infra",
        "name": "gw",
        "sectionName": "tcp",
    }


def test_parent_status_of_a_same_namespace_ref_spells_out_the_namespace() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", parents=[parent("gw", port=5000)]))
    (p,) = parents(tr, "TCPRoute", "r")
    assert p["parentRef"] == {
        "group": GW_GROUP,
        "kind": "Gateway",
        "namespace": "default",
        "name": "gw",
        "port": 5000,
    }


def test_one_parent_status_per_parent_ref_of_ours() -> None:
    tr = run(
        gateway("gw", tcp("a", 1), tcp("b", 2)),
        tcproute("r", parents=[parent(section="a"), parent(section="b"), parent(section="zz")]),
    )
    ps = parents(tr, "TCPRoute", "r")
    assert [p["parentRef"]["sectionName"] for p in ps] == ["a", "b", "zz"]
    assert [cond(p["conditions"], "Accepted")["reason"] for p in ps] == [
        "Accepted",
        "Accepted",
        "NoMatchingParent",
    ]


def test_route_to_a_gateway_of_another_controller_gets_no_parent_entry() -> None:
    tr = run(
        gateway_class(),
        gateway_class("theirs", "example.com/other"),
        gateway("gw", tcp()),
        gateway("foreign", tcp(), class_name="theirs", addresses=["192.0.2.99"]),
        tcproute("mixed", parents=[parent("gw"), parent("foreign")]),
        tcproute("only-foreign", parents=[parent("foreign")]),
    )
    assert [p["parentRef"]["name"] for p in parents(tr, "TCPRoute", "mixed")] == ["gw"]
    assert not has_status(tr, "TCPRoute", "only-foreign")


def test_route_to_a_missing_gateway_gets_no_status() -> None:
    assert not has_status(run(tcproute("r", parents=[parent("nope")])), "TCPRoute", "r")


def test_parent_ref_to_a_non_gateway_kind_gets_no_parent_entry() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", parents=[parent("gw", kind="Service", group="")]))
    assert not has_status(tr, "TCPRoute", "r")


def test_route_to_a_gateway_that_is_not_accepted_is_not_accepted() -> None:
    infra = {"infrastructure": {"parametersRef": {"group": "x.io", "kind": "X", "name": "y"}}}
    tr = run(gateway("gw", tcp(), spec=infra), tcproute("r"))
    assert accepted(tr, "TCPRoute", "r")[0] == "False"


# -- backend refs (ResolvedRefs) ------------------------------------------------------------------


def test_backend_ref_to_a_missing_service_is_backend_not_found_but_route_accepted() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", backend("missing")))
    assert accepted(tr, "TCPRoute", "r") == ("True", "Accepted")
    assert resolved(tr, "TCPRoute", "r") == ("False", "BackendNotFound")


def test_backend_ref_to_a_missing_service_port_is_backend_not_found() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", backend("svc", 81)), *SVC)
    assert resolved(tr, "TCPRoute", "r") == ("False", "BackendNotFound")


def test_udp_backend_ref_to_a_tcp_only_service_port_is_backend_not_found() -> None:
    tr = run(gateway("gw", udp()), udproute("r", backend("svc", 80)), *SVC)
    assert resolved(tr, "UDPRoute", "r") == ("False", "BackendNotFound")


def test_backend_ref_to_external_name_service_is_backend_not_found() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r"), service("svc", type_="ExternalName"))
    assert resolved(tr, "TCPRoute", "r") == ("False", "BackendNotFound")


@pytest.mark.parametrize(
    "ref",
    [
        backend("svc", 80, kind="Pod"),
        backend("svc", 80, group="example.com", kind="Service"),
        backend("svc", None, group="multicluster.x-k8s.io", kind="ServiceImport"),
    ],
    ids=["Pod", "other-group-Service", "ServiceImport"],
)
def test_backend_ref_of_unknown_kind_is_invalid_kind(ref: dict[str, Any]) -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", ref), *SVC)
    assert accepted(tr, "TCPRoute", "r") == ("True", "Accepted")
    assert resolved(tr, "TCPRoute", "r") == ("False", "InvalidKind")


def test_cross_namespace_backend_without_referencegrant_is_ref_not_permitted() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("svc", namespace="backends")),
        *backend_service("svc", "10.0.0.1", namespace="backends"),
    )
    assert accepted(tr, "TCPRoute", "r") == ("True", "Accepted")
    assert resolved(tr, "TCPRoute", "r") == ("False", "RefNotPermitted")


def test_cross_namespace_backend_without_referencegrant_is_ref_not_permitted_even_when_missing() -> None:  # noqa: E501  # fmt: skip
    tr = run(gateway("gw", tcp()), tcproute("r", backend("nope", namespace="backends")))
    assert resolved(tr, "TCPRoute", "r") == ("False", "RefNotPermitted")


def _grant(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"namespace": "backends", "from_namespace": "default"}
    args.update(kw)
    return reference_grant(**args)


def test_cross_namespace_backend_with_referencegrant_resolves() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("svc", namespace="backends")),
        *backend_service("svc", "10.0.0.1", namespace="backends"),
        _grant(),
    )
    assert resolved(tr, "TCPRoute", "r") == ("True", "ResolvedRefs")
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 1}


def test_cross_namespace_backend_with_referencegrant_to_missing_service_is_backend_not_found() -> (
    None
):
    tr = run(gateway("gw", tcp()), tcproute("r", backend("nope", namespace="backends")), _grant())
    assert resolved(tr, "TCPRoute", "r") == ("False", "BackendNotFound")


@pytest.mark.parametrize(
    "grant",
    [
        {"from_kind": "UDPRoute"},
        {"from_kind": "HTTPRoute"},
        {"from_namespace": "other"},
        {"namespace": "default"},
        {"to_name": "other"},
        {"to_kind": "Secret"},
    ],
    ids=[
        "from-udproute",
        "from-httproute",
        "from-namespace",
        "grant-namespace",
        "to-name",
        "to-kind",
    ],
)
def test_referencegrant_for_something_else_does_not_permit_the_backend(
    grant: dict[str, Any],
) -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("svc", namespace="backends")),
        *backend_service("svc", "10.0.0.1", namespace="backends"),
        _grant(**grant),
    )
    assert resolved(tr, "TCPRoute", "r") == ("False", "RefNotPermitted")


def test_deleting_the_referencegrant_revokes_the_backend() -> None:
    docs = [
        gateway("gw", tcp()),
        tcproute("r", backend("svc", namespace="backends")),
        *backend_service("svc", "10.0.0.1", namespace="backends"),
    ]
    before = run(*docs, _grant())
    after = run(*docs)
    assert resolved(before, "TCPRoute", "r") == ("True", "ResolvedRefs")
    assert resolved(after, "TCPRoute", "r") == ("False", "RefNotPermitted")
    assert weights(frontend(after, 5000)) == {}
    assert frontend(after, 5000)["reject_weight"] > 0


def test_first_failing_backend_ref_names_the_reason() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("svc"), backend("missing"), backend("x", kind="Pod")),
        *SVC,
    )
    c = cond(parent_conditions(tr, "TCPRoute", "r"), "ResolvedRefs")
    assert c["reason"] == "BackendNotFound"
    assert "missing" in c["message"] and "Pod" in c["message"]


def test_httproute_cross_namespace_backend_needs_a_grant_from_httproute() -> None:
    tr = run(
        gateway("gw", http()),
        httproute("r", rule(backend("svc", namespace="backends"))),
        *backend_service("svc", "10.0.0.1", namespace="backends"),
        _grant(from_kind="HTTPRoute"),
    )
    assert resolved(tr, "HTTPRoute", "r") == ("True", "ResolvedRefs")


def test_grpcroute_attaches_to_http_listener() -> None:
    tr = run(gateway("gw", http()), grpcroute("r"), *SVC)
    assert accepted(tr, "GRPCRoute", "r") == ("True", "Accepted")


# -- several routes on one L4 listener ---------------------------------------------------------


def test_several_tcproutes_on_one_listener_are_all_accepted_and_counted() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("newer", backend("b"), created="2024-01-02T00:00:00Z"),
        tcproute("older", backend("a"), created="2024-01-01T00:00:00Z"),
        *backend_service("a", "10.0.0.1"),
        *backend_service("b", "10.0.0.2"),
    )
    assert accepted(tr, "TCPRoute", "older") == ("True", "Accepted")
    assert accepted(tr, "TCPRoute", "newer") == ("True", "Accepted")
    assert listener_status(tr, "tcp")["attachedRoutes"] == 2


@pytest.mark.parametrize(
    ("a", "b", "winner"),
    [
        (("x", "2024-01-01T00:00:00Z"), ("y", "2024-01-02T00:00:00Z"), "x"),
        (("x", "2024-01-02T00:00:00Z"), ("y", "2024-01-01T00:00:00Z"), "y"),
        (("z", "2024-01-01T00:00:00Z"), ("y", "2024-01-01T00:00:00Z"), "y"),
        (("x", None), ("y", "2024-01-01T00:00:00Z"), "y"),
        (("y", None), ("x", None), "x"),
    ],
    ids=["older-first", "older-second", "tie-by-name", "no-timestamp-is-newest", "both-unknown"],
)
def test_only_the_oldest_tcproute_carries_traffic(
    a: tuple[str, str | None], b: tuple[str, str | None], winner: str
) -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute(a[0], backend(a[0]), created=a[1]),
        tcproute(b[0], backend(b[0]), created=b[1]),
        *backend_service(a[0], "10.0.0.1"),
        *backend_service(b[0], "10.0.0.2"),
    )
    fe = frontend(tr, 5000)
    assert fe["source"]["route"] == f"default/{winner}"
    assert weights(fe) == {"10.0.0.1:8080" if winner == a[0] else "10.0.0.2:8080": 1}


def test_oldest_tcproute_tie_break_uses_namespace_before_name() -> None:
    ts = "2024-01-01T00:00:00Z"
    tr = run(
        gateway("gw", tcp(from_="All")),
        tcproute("a", namespace="zz", parents=[parent(namespace="default")], created=ts),
        tcproute("z", namespace="aa", parents=[parent(namespace="default")], created=ts),
    )
    assert frontend(tr, 5000)["source"]["route"] == "aa/z"


def test_tcproute_v1alpha2_with_several_rules_merges_their_backends() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute(
            "r",
            rules=[
                {"backendRefs": [backend("a", weight=3)]},
                {"backendRefs": [backend("b", weight=1)]},
            ],
            api_version=f"{GW_GROUP}/v1alpha2",
        ),
        *backend_service("a", "10.0.0.1"),
        *backend_service("b", "10.0.0.2"),
    )
    assert accepted(tr, "TCPRoute", "r") == ("True", "Accepted")
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 3, "10.0.0.2:8080": 1}
