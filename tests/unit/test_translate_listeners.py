"""Listener status: protocols, route kinds, conflicts, ports, certificates,
attachedRoutes."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import (
    CERT_PEM,
    GW_GROUP,
    KEY_PEM,
    VIP,
    backend,
    backend_service,
    cond,
    cond_is,
    frontends,
    gateway,
    gw_status,
    http,
    httproute,
    https,
    kinds,
    l7,
    listener,
    listener_status,
    parent,
    parent_conditions,
    reference_grant,
    run,
    secret,
    tcp,
    tcproute,
    tls_passthrough,
    tls_terminate,
    tlsroute,
    udp,
)


def test_listener_is_accepted_resolved_not_conflicted_and_programmed() -> None:
    ls = listener_status(run(gateway("gw", tcp())), "tcp")
    cond_is(ls["conditions"], "Accepted", True, "Accepted")
    cond_is(ls["conditions"], "ResolvedRefs", True, "ResolvedRefs")
    cond_is(ls["conditions"], "Conflicted", False, "NoConflicts")
    cond_is(ls["conditions"], "Programmed", True, "Programmed")


def test_listener_with_unsupported_protocol_is_not_accepted() -> None:
    tr = run(gateway("gw", tcp(), listener("sctp", "SCTP", 9), listener("x", "example.com/X", 10)))
    for name in ("sctp", "x"):
        ls = listener_status(tr, name)
        cond_is(ls["conditions"], "Accepted", False, "UnsupportedProtocol")
        cond_is(ls["conditions"], "Programmed", False, "Invalid")
        assert ls["supportedKinds"] == []
        assert ls["attachedRoutes"] == 0
    assert [f["port"] for f in frontends(tr)] == [5000]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: http(), ["HTTPRoute", "GRPCRoute"]),
        (lambda: https(), ["HTTPRoute", "GRPCRoute"]),
        (lambda: tls_passthrough(), ["TLSRoute"]),
        (lambda: tls_terminate(), ["TLSRoute", "TCPRoute"]),
        (lambda: tcp(), ["TCPRoute"]),
        (lambda: udp(), ["UDPRoute"]),
    ],
    ids=["HTTP", "HTTPS", "TLS-Passthrough", "TLS-Terminate", "TCP", "UDP"],
)
def test_listener_supported_kinds_default_to_the_protocols_route_kinds(
    make: Any, expected: list[str]
) -> None:
    ls = listener_status(run(gateway("gw", make()), secret("cert")), make()["name"])
    assert kinds(ls) == expected
    assert all(k["group"] == GW_GROUP for k in ls["supportedKinds"])


def test_listener_with_only_invalid_route_kinds_is_invalid_route_kinds_with_no_kinds() -> None:
    ls = listener_status(run(gateway("gw", http(kinds=["TCPRoute", "FooRoute"]))), "http")
    cond_is(ls["conditions"], "ResolvedRefs", False, "InvalidRouteKinds")
    assert ls["supportedKinds"] == []


def test_listener_with_some_invalid_route_kinds_lists_only_the_valid_ones() -> None:
    ls = listener_status(run(gateway("gw", tls_passthrough(kinds=["TCPRoute", "TLSRoute"]))), "tls")
    cond_is(ls["conditions"], "ResolvedRefs", False, "InvalidRouteKinds")
    assert kinds(ls) == ["TLSRoute"]


def test_route_kind_of_another_group_is_invalid() -> None:
    ls = listener_status(
        run(gateway("gw", tcp(kinds=[{"group": "example.com", "kind": "TCPRoute"}]))), "tcp"
    )
    cond_is(ls["conditions"], "ResolvedRefs", False, "InvalidRouteKinds")
    assert ls["supportedKinds"] == []


def test_listener_restricting_kinds_rejects_other_kinds_not_allowed_by_listeners() -> None:
    tr = run(
        gateway("gw", http(kinds=["HTTPRoute"])),
        {**httproute("h"), "kind": "GRPCRoute"},
        *backend_service("svc", "10.0.0.1"),
    )
    assert kinds(listener_status(tr, "http")) == ["HTTPRoute"]
    cond_is(parent_conditions(tr, "GRPCRoute", "h"), "Accepted", False, "NotAllowedByListeners")


# -- conflicts ------------------------------------------------------------------------------


def _assert_conflicted(tr: Any, names: list[str], reason: str) -> None:
    for name in names:
        ls = listener_status(tr, name)
        cond_is(ls["conditions"], "Accepted", False, reason)
        cond_is(ls["conditions"], "Conflicted", True, reason)
        cond_is(ls["conditions"], "Programmed", False, reason)
        assert ls["supportedKinds"] == []
        assert ls["attachedRoutes"] == 0


@pytest.mark.parametrize(
    "pair",
    [
        (tcp("a", 80), http("b", 80)),
        (http("a", 443), https("b", 443)),
        (tcp("a", 443), tls_passthrough("b", 443)),
        (tcp("a", 443), https("b", 443)),
    ],
    ids=["TCP+HTTP", "HTTP+HTTPS", "TCP+TLS", "TCP+HTTPS"],
)
def test_listeners_of_conflicting_protocols_on_one_port_are_all_protocol_conflict(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    tr = run(gateway("gw", *pair, udp("u", 53)), secret("cert"))
    _assert_conflicted(tr, ["a", "b"], "ProtocolConflict")
    cond_is(gw_status(tr)["conditions"], "Accepted", True, "ListenersNotValid")
    assert [(f["protocol"], f["port"]) for f in frontends(tr)] == [("udp", 53)]


def test_tls_terminate_and_passthrough_share_a_port_by_hostname() -> None:
    """TLSRouteModeMixed: the proxy tells them apart by SNI.  (The same
    hostname in both modes cannot be written: port, protocol and hostname are
    unique among a Gateway's listeners.)"""
    tr = run(
        gateway(
            "gw",
            tls_terminate("term", 8443, hostname="a.example.com"),
            tls_passthrough("pass", 8443, hostname="b.example.com"),
        ),
        secret("cert"),
    )
    for name in ("term", "pass"):
        cond_is(listener_status(tr, name)["conditions"], "Accepted", True, "Accepted")
        cond_is(listener_status(tr, name)["conditions"], "Conflicted", False, "NoConflicts")
    cond_is(gw_status(tr)["conditions"], "Accepted", True, "Accepted")
    assert sorted(ls.tls_mode or "" for ls in tr.desired.l7) == ["Passthrough", "Terminate"]


def test_only_conflicting_listeners_lose_others_stay_accepted() -> None:
    tr = run(gateway("gw", tcp("a", 80), http("b", 80), tcp("c", 81)))
    _assert_conflicted(tr, ["a", "b"], "ProtocolConflict")
    cond_is(listener_status(tr, "c")["conditions"], "Accepted", True, "Accepted")
    cond_is(gw_status(tr)["conditions"], "Accepted", True, "ListenersNotValid")


def test_tcp_and_udp_listeners_may_share_a_port() -> None:
    tr = run(gateway("gw", tcp("t", 53), udp("u", 53)))
    for name in ("t", "u"):
        cond_is(listener_status(tr, name)["conditions"], "Accepted", True, "Accepted")
        cond_is(listener_status(tr, name)["conditions"], "Conflicted", False, "NoConflicts")
    assert sorted((f["protocol"], f["port"]) for f in frontends(tr)) == [("tcp", 53), ("udp", 53)]


def test_https_and_tls_on_one_port_with_one_hostname_are_hostname_conflict() -> None:
    tr = run(
        gateway(
            "gw",
            https("h", 443, hostname="a.example.com"),
            tls_terminate("t", 443, hostname="a.example.com"),
            https("other", 443, hostname="b.example.com"),
        ),
        secret("cert"),
    )
    _assert_conflicted(tr, ["h", "t"], "HostnameConflict")
    cond_is(listener_status(tr, "other")["conditions"], "Accepted", True, "Accepted")


def test_http_listeners_on_one_port_with_distinct_hostnames_do_not_conflict() -> None:
    tr = run(gateway("gw", http("a", 80, hostname="a.example.com"), http("b", 80)))
    for name in ("a", "b"):
        cond_is(listener_status(tr, name)["conditions"], "Conflicted", False, "NoConflicts")


def test_second_gateway_on_the_same_vip_and_port_is_port_unavailable_older_wins() -> None:
    tr = run(
        gateway("new", tcp("t", 80), udp("u", 80), created="2024-02-01T00:00:00Z"),
        gateway("old", tcp("t", 80), created="2024-01-01T00:00:00Z"),
    )
    cond_is(listener_status(tr, "t", "old")["conditions"], "Accepted", True, "Accepted")
    new = listener_status(tr, "t", "new")
    cond_is(new["conditions"], "Accepted", False, "PortUnavailable")
    cond_is(new["conditions"], "Programmed", False, "Invalid")
    # UDP/80 is a different port: still free.
    cond_is(listener_status(tr, "u", "new")["conditions"], "Accepted", True, "Accepted")
    tcp80 = [f for f in frontends(tr) if f["protocol"] == "tcp"]
    assert [f["source"]["gateway"] for f in tcp80] == ["old"]


def test_gateway_without_timestamp_is_newest_for_port_claims() -> None:
    tr = run(gateway("a", tcp("t", 80)), gateway("b", tcp("t", 80), created="2024-01-01T00:00:00Z"))
    cond_is(listener_status(tr, "t", "a")["conditions"], "Accepted", False, "PortUnavailable")
    cond_is(listener_status(tr, "t", "b")["conditions"], "Accepted", True, "Accepted")


def test_gateways_on_different_vips_may_share_a_port() -> None:
    tr = run(gateway("a", tcp("t", 80)), gateway("b", tcp("t", 80), addresses=["192.0.2.99"]))
    for gw in ("a", "b"):
        cond_is(listener_status(tr, "t", gw)["conditions"], "Accepted", True, "Accepted")


# -- certificates ----------------------------------------------------------------------------


def test_https_listener_with_valid_secret_is_resolved_and_programmed() -> None:
    tr = run(gateway("gw", https()), secret("cert"))
    ls = listener_status(tr, "https")
    cond_is(ls["conditions"], "ResolvedRefs", True, "ResolvedRefs")
    cond_is(ls["conditions"], "Programmed", True, "Programmed")


def test_certificate_ref_to_a_missing_secret_is_invalid_certificate_ref() -> None:
    tr = run(gateway("gw", https(certs=["missing"])))
    ls = listener_status(tr, "https")
    cond_is(ls["conditions"], "ResolvedRefs", False, "InvalidCertificateRef")
    cond_is(ls["conditions"], "Accepted", True, "Accepted")
    cond_is(ls["conditions"], "Programmed", False, "Invalid")
    assert kinds(ls) == ["HTTPRoute", "GRPCRoute"]
    assert tr.desired.l7 == ()


@pytest.mark.parametrize(
    "ref",
    [
        {"group": "wrong.group", "kind": "Secret", "name": "cert"},
        {"group": "", "kind": "WrongKind", "name": "cert"},
        {"group": "", "kind": "ConfigMap", "name": "cert"},
    ],
    ids=["group", "kind", "configmap"],
)
def test_certificate_ref_of_unsupported_group_or_kind_is_invalid_certificate_ref(
    ref: dict[str, Any],
) -> None:
    ls = listener_status(run(gateway("gw", https(certs=[ref])), secret("cert")), "https")
    cond_is(ls["conditions"], "ResolvedRefs", False, "InvalidCertificateRef")


@pytest.mark.parametrize(
    ("cert", "key"),
    [
        (b"not a certificate", KEY_PEM),
        (CERT_PEM, b"not a key"),
        (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", KEY_PEM),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", KEY_PEM),
        (CERT_PEM, KEY_PEM + KEY_PEM),
        (b"", KEY_PEM),
    ],
    ids=["garbage-cert", "garbage-key", "bad-base64", "not-asn1", "two-keys", "empty-cert"],
)
def test_malformed_certificate_secret_is_invalid_certificate_ref(cert: bytes, key: bytes) -> None:
    tr = run(gateway("gw", https()), secret("cert", cert=cert, key=key))
    cond_is(
        listener_status(tr, "https")["conditions"], "ResolvedRefs", False, "InvalidCertificateRef"
    )


def test_secret_without_tls_keys_is_invalid_certificate_ref() -> None:
    doc = secret("cert")
    doc["data"] = {"other": "AAAA"}
    tr = run(gateway("gw", https()), doc)
    cond_is(
        listener_status(tr, "https")["conditions"], "ResolvedRefs", False, "InvalidCertificateRef"
    )


def test_cross_namespace_certificate_ref_without_grant_is_ref_not_permitted() -> None:
    tr = run(gateway("gw", https(certs=[{"name": "cert", "namespace": "certs"}])),
             secret("cert", namespace="certs"))  # fmt: skip
    ls = listener_status(tr, "https")
    cond_is(ls["conditions"], "ResolvedRefs", False, "RefNotPermitted")
    assert ls["attachedRoutes"] == 0


def test_cross_namespace_certificate_ref_to_missing_secret_without_grant_is_ref_not_permitted() -> (
    None
):
    tr = run(gateway("gw", https(certs=[{"name": "nope", "namespace": "certs"}])))
    cond_is(listener_status(tr, "https")["conditions"], "ResolvedRefs", False, "RefNotPermitted")


def _grant(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "namespace": "certs",
        "from_namespace": "default",
        "from_kind": "Gateway",
        "to_kind": "Secret",
    }
    args.update(kw)
    return reference_grant(**args)


def test_cross_namespace_certificate_ref_with_grant_is_permitted() -> None:
    tr = run(
        gateway("gw", https(certs=[{"name": "cert", "namespace": "certs"}])),
        secret("cert", namespace="certs"),
        _grant(),
    )
    ls = listener_status(tr, "https")
    cond_is(ls["conditions"], "ResolvedRefs", True, "ResolvedRefs")
    assert [c["secret"] for c in l7(tr, "https")["certificates"]] == ["certs/cert"]


def test_cross_namespace_certificate_ref_with_grant_naming_that_secret_is_permitted() -> None:
    tr = run(
        gateway("gw", https(certs=[{"name": "cert", "namespace": "certs"}])),
        secret("cert", namespace="certs"),
        _grant(to_name="cert"),
    )
    cond_is(listener_status(tr, "https")["conditions"], "ResolvedRefs", True, "ResolvedRefs")


@pytest.mark.parametrize(
    "grant",
    [
        {"namespace": "default"},  # grant in the wrong namespace
        {"from_namespace": "elsewhere"},
        {"from_kind": "HTTPRoute"},
        {"from_group": "example.com"},
        {"to_kind": "ConfigMap"},
        {"to_group": "example.com"},
        {"to_name": "other"},
    ],
    ids=["grant-ns", "from-ns", "from-kind", "from-group", "to-kind", "to-group", "to-name"],
)
def test_reference_grant_that_does_not_match_does_not_permit_the_certificate(
    grant: dict[str, Any],
) -> None:
    tr = run(
        gateway("gw", https(certs=[{"name": "cert", "namespace": "certs"}])),
        secret("cert", namespace="certs"),
        _grant(**grant),
    )
    cond_is(listener_status(tr, "https")["conditions"], "ResolvedRefs", False, "RefNotPermitted")


def test_one_bad_certificate_ref_makes_the_listener_unresolved() -> None:
    tr = run(gateway("gw", https(certs=["cert", "missing"])), secret("cert"))
    c = cond(listener_status(tr, "https")["conditions"], "ResolvedRefs")
    assert (c["status"], c["reason"]) == ("False", "InvalidCertificateRef")
    assert "tls.certificateRefs[1]" in c["message"]


def test_tls_passthrough_listener_needs_no_certificates() -> None:
    ls = listener_status(run(gateway("gw", tls_passthrough())), "tls")
    cond_is(ls["conditions"], "ResolvedRefs", True, "ResolvedRefs")
    cond_is(ls["conditions"], "Programmed", True, "Programmed")


# -- attachedRoutes ------------------------------------------------------------------------------


def test_attached_routes_counts_accepted_routes_on_each_listener() -> None:
    tr = run(
        gateway("gw", tcp("a", 1), tcp("b", 2)),
        tcproute("r1"),
        tcproute("r2", parents=[parent("gw", section="a")]),
        tcproute("r3", parents=[parent("gw", port=2)]),
        *backend_service("svc", "10.0.0.1"),
    )
    assert listener_status(tr, "a")["attachedRoutes"] == 2
    assert listener_status(tr, "b")["attachedRoutes"] == 2


def test_attached_routes_does_not_count_rejected_routes() -> None:
    tr = run(
        gateway("gw", http(hostname="foo.example.com")),
        httproute("ok", hostnames=["foo.example.com"]),
        httproute("no-host", hostnames=["bar.example.com"]),
        httproute("other-ns", namespace="elsewhere", parents=[parent("gw", namespace="default")]),
        tcproute("wrong-kind"),
    )
    assert listener_status(tr, "http")["attachedRoutes"] == 1


def test_attached_routes_is_hostname_intersection_aware() -> None:
    tr = run(
        gateway(
            "gw",
            http("specific", hostname="very.specific.com"),
            http("wild", 80, hostname="*.wildcard.io"),
        ),
        httproute("r1", hostnames=["very.specific.com"]),
        httproute("r2", hostnames=["*.specific.com"]),
        httproute("r3", hostnames=["foo.wildcard.io"]),
    )
    assert listener_status(tr, "specific")["attachedRoutes"] == 2
    assert listener_status(tr, "wild")["attachedRoutes"] == 1


def test_attached_routes_counts_a_route_once_per_listener_even_with_two_parent_refs() -> None:
    tr = run(
        gateway("gw", tcp("a", 1)),
        # Valid for the CRD: an explicit namespace counts as another parent there.
        tcproute("r", parents=[parent("gw"), parent("gw", namespace="default")]),
    )
    assert listener_status(tr, "a")["attachedRoutes"] == 1


def test_attached_routes_counted_on_listener_with_unresolved_certificate() -> None:
    tr = run(gateway("gw", https(certs=["missing"])), httproute("r", rule_bad_backend()))
    ls = listener_status(tr, "https")
    cond_is(ls["conditions"], "ResolvedRefs", False, "InvalidCertificateRef")
    cond_is(ls["conditions"], "Programmed", False, "Invalid")
    assert ls["attachedRoutes"] == 1


def rule_bad_backend() -> dict[str, Any]:
    return {"backendRefs": [backend("does-not-exist", 8080)]}


def test_attached_routes_counts_routes_with_unresolved_backends() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", backend("missing", 80)))
    assert listener_status(tr, "tcp")["attachedRoutes"] == 1


def test_attached_routes_is_zero_on_unused_listener() -> None:
    tr = run(gateway("gw", tcp("a", 1), tcp("b", 2)), tcproute("r", parents=[parent(section="a")]))
    assert listener_status(tr, "b")["attachedRoutes"] == 0


def test_tlsroute_attaches_to_tls_listener_and_counts() -> None:
    tr = run(
        gateway("gw", tls_passthrough(hostname="*.example.com")),
        tlsroute("r", hostnames=["app.example.com"]),
        *backend_service("svc", "10.0.0.1"),
    )
    assert listener_status(tr, "tls")["attachedRoutes"] == 1
    cond_is(parent_conditions(tr, "TLSRoute", "r"), "Accepted", True, "Accepted")
    assert VIP in tr.desired.vips
