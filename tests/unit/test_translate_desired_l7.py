"""DesiredState for HTTP, HTTPS and TLS listeners: virtual hosts, routing
precedence, gRPC, TLS passthrough, certificates."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from helpers import (
    CERT_PEM,
    KEY_PEM,
    backend,
    backend_service,
    gateway,
    grpcroute,
    http,
    httproute,
    https,
    l7,
    run,
    secret,
    tcproute,
    tls_passthrough,
    tls_terminate,
    tlsroute,
)

from agent.feedback import fold_failures
from agent.proxy.reconciler import problem_failures
from agent.proxy.render import Problem

SVC = backend_service("svc", "10.0.0.1")


def entries(listener: dict[str, Any], hostname: str) -> list[dict[str, Any]]:
    for vh in listener.get("virtual_hosts", []):
        if vh["hostname"] == hostname:
            out: list[dict[str, Any]] = vh["routes"]
            return out
    raise AssertionError(f"no virtual host {hostname}")


def order(listener: dict[str, Any], hostname: str = "*") -> list[tuple[str, int]]:
    """(route name, rule index) of each entry, in routing order."""
    return [(e["route"].split("/")[-1], e["rule"]) for e in entries(listener, hostname)]


def m(
    path: str = "/",
    type_: str = "PathPrefix",
    *,
    method: str | None = None,
    headers: int = 0,
    query: int = 0,
) -> dict[str, Any]:
    out: dict[str, Any] = {"path": {"type": type_, "value": path}}
    if method:
        out["method"] = method
    if headers:
        out["headers"] = [{"name": f"h{i}", "value": "v"} for i in range(headers)]
    if query:
        out["queryParams"] = [{"name": f"q{i}", "value": "v"} for i in range(query)]
    return out


def rules(*matches: dict[str, Any]) -> list[dict[str, Any]]:
    """One rule per match."""
    return [{"matches": [mm], "backendRefs": [backend()]} for mm in matches]


def test_http_listener_is_an_l7_listener_on_the_gateways_vips() -> None:
    tr = run(gateway("gw", http()), httproute("r"), *SVC)
    ls = l7(tr, "http")
    assert (ls["gateway"], ls["port"], ls["protocol"], ls["vips"]) == (
        "default/gw",
        80,
        "HTTP",
        ["192.0.2.10"],
    )
    (entry,) = entries(ls, "*")
    assert entry["backends"]["services"][0]["name"] == "default/svc:80"
    assert entry["backends"]["services"][0]["endpoints"] == [
        {"ip": "10.0.0.1", "port": 8080, "weight": 1}
    ]


def test_virtual_hosts_are_ordered_by_hostname_specificity() -> None:
    tr = run(
        gateway("gw", http()),
        httproute("a", hostnames=["*.example.com"]),
        httproute("b", hostnames=["a.example.com"]),
        httproute("c"),
        httproute("d", hostnames=["*.a.example.com", "long.a.example.com"]),
        *SVC,
    )
    assert [vh["hostname"] for vh in l7(tr, "http")["virtual_hosts"]] == [
        "long.a.example.com",
        "a.example.com",
        "*.a.example.com",
        "*.example.com",
        "*",
    ]


def test_route_hostnames_are_narrowed_to_the_listener_hostname() -> None:
    tr = run(
        gateway("gw", http(hostname="*.example.com")),
        httproute("r", hostnames=["*.com", "a.example.com"]),
        *SVC,
    )
    assert [vh["hostname"] for vh in l7(tr, "http")["virtual_hosts"]] == [
        "a.example.com",
        "*.example.com",
    ]


def test_exact_path_beats_regex_beats_longest_prefix() -> None:
    tr = run(
        gateway("gw", http()),
        httproute("r", *rules(
            m("/"),
            m("/foo"),
            m("/foo/bar", "Exact"),
            m("/f.*", "RegularExpression"),
            m("/foo/ba"),
        )),
        *SVC,
    )  # fmt: skip
    assert order(l7(tr, "http")) == [("r", 2), ("r", 3), ("r", 4), ("r", 1), ("r", 0)]


def test_then_method_then_header_count_then_query_count() -> None:
    tr = run(
        gateway("gw", http()),
        httproute("r", *rules(
            m("/p"),
            m("/p", query=2),
            m("/p", headers=1, query=5),
            m("/p", headers=2),
            m("/p", method="GET"),
        )),
        *SVC,
    )  # fmt: skip
    assert order(l7(tr, "http")) == [("r", 4), ("r", 3), ("r", 2), ("r", 1), ("r", 0)]


def test_longer_prefix_beats_method_match() -> None:
    tr = run(
        gateway("gw", http()),
        httproute("r", *rules(m("/", method="POST"), m("/longer"))),
        *SVC,
    )
    assert order(l7(tr, "http")) == [("r", 1), ("r", 0)]


def test_equal_matches_go_to_the_oldest_route_then_namespace_name_then_rule_order() -> None:
    tr = run(
        gateway("gw", http()),
        httproute("young", *rules(m("/"), m("/")), created="2024-03-01T00:00:00Z"),
        httproute("old", *rules(m("/")), created="2024-01-01T00:00:00Z"),
        httproute("b-unstamped", *rules(m("/"))),
        httproute("a-unstamped", *rules(m("/"))),
        *SVC,
    )
    assert order(l7(tr, "http")) == [
        ("old", 0),
        ("young", 0),
        ("young", 1),
        ("a-unstamped", 0),
        ("b-unstamped", 0),
    ]


def test_entries_of_one_rule_keep_match_order() -> None:
    tr = run(
        gateway("gw", http()),
        httproute(
            "r", {"matches": [m("/b", "Exact"), m("/a", "Exact")], "backendRefs": [backend()]}
        ),
        *SVC,
    )
    assert [e["match"]["path"] for e in entries(l7(tr, "http"), "*")] == ["/b", "/a"]


def test_invalid_backend_share_is_kept_apart_for_http_500() -> None:
    tr = run(
        gateway("gw", http()),
        httproute("r", {"backendRefs": [backend("svc", weight=3), backend("missing", weight=1)]}),
        *SVC,
    )
    (entry,) = entries(l7(tr, "http"), "*")
    assert entry["backends"]["invalid_weight"] == 1
    assert [s["weight"] for s in entry["backends"]["services"]] == [3]


def test_rule_with_unsupported_filter_is_dropped_and_route_partially_invalid() -> None:
    from helpers import cond_is, parent_conditions

    tr = run(
        gateway("gw", http()),
        httproute(
            "r",
            {"matches": [m("/ok")], "backendRefs": [backend()]},
            {
                "matches": [m("/ext")],
                "filters": [{"type": "ExtensionRef",
                             "extensionRef": {"group": "x.io", "kind": "F", "name": "f"}}],
                "backendRefs": [backend()],
            },
        ),
        *SVC,
    )  # fmt: skip
    assert [e["match"]["path"] for e in entries(l7(tr, "http"), "*")] == ["/ok"]
    conds = parent_conditions(tr, "HTTPRoute", "r")
    cond_is(conds, "Accepted", True, "Accepted")
    cond_is(conds, "PartiallyInvalid", True, "UnsupportedValue")


def test_a_retry_policy_reaches_the_rules_entries_and_what_haproxy_cannot_do_is_refused() -> None:
    from helpers import cond, cond_is, parent_conditions

    tr = run(
        gateway("gw", http()),
        httproute(
            "r",
            {"matches": [m("/ok")], "backendRefs": [backend()],
             "retry": {"codes": [500, 503], "attempts": 2}},
            {"matches": [m("/backoff")], "backendRefs": [backend()],
             "retry": {"codes": [500], "backoff": "100ms"}},
            {"matches": [m("/code")], "backendRefs": [backend()], "retry": {"codes": [505]}},
        ),
        *SVC,
    )  # fmt: skip
    (ok,) = entries(l7(tr, "http"), "*")
    assert ok["match"]["path"] == "/ok"
    assert ok["retry"] == {"codes": [500, 503], "attempts": 2}
    conds = parent_conditions(tr, "HTTPRoute", "r")
    cond_is(conds, "Accepted", True, "Accepted")
    cond_is(conds, "PartiallyInvalid", True, "UnsupportedValue")
    message = cond(conds, "PartiallyInvalid")["message"]
    assert "retry.backoff is not supported" in message, message
    assert "retry.codes 505 not supported" in message, message


def test_grpc_method_matches_are_mapped_to_paths() -> None:
    tr = run(
        gateway("gw", http()),
        grpcroute(
            "g",
            {"matches": [{"method": {"service": "pkg.Svc", "method": "Get"}}],
             "backendRefs": [backend()]},
            {"matches": [{"method": {"service": "pkg.Svc"}}], "backendRefs": [backend()]},
            {"matches": [{"method": {"method": "Ping"}}], "backendRefs": [backend()]},
            {"matches": [{"method": {"type": "RegularExpression", "service": "pkg\\..*",
                                     "method": "Li.*"}}], "backendRefs": [backend()]},
            {"backendRefs": [backend()]},
        ),
        *SVC,
    )  # fmt: skip
    got = {e["rule"]: (e["match"]["path_type"], e["match"]["path"], e["grpc"])
           for e in entries(l7(tr, "http"), "*")}  # fmt: skip
    assert got == {
        0: ("Exact", "/pkg.Svc/Get", True),
        1: ("PathPrefix", "/pkg.Svc/", True),
        2: ("RegularExpression", "/[^/]+/Ping", True),
        3: ("RegularExpression", "/pkg\\..*/Li.*", True),
        4: ("PathPrefix", "/", True),
    }


def test_tls_passthrough_routes_by_sni_and_the_oldest_route_owns_a_hostname() -> None:
    tr = run(
        gateway("gw", tls_passthrough()),
        tlsroute("new", backend("b"), hostnames=["a.example.com", "b.example.com"],
                 created="2024-02-01T00:00:00Z"),
        tlsroute("old", backend("a"), hostnames=["a.example.com"], created="2024-01-01T00:00:00Z"),
        *backend_service("a", "10.0.0.1"),
        *backend_service("b", "10.0.0.2"),
    )  # fmt: skip
    ls = l7(tr, "tls")
    assert ls["tls_mode"] == "Passthrough"
    got = [(r["route"], r["hostnames"], r["backends"]["services"][0]["name"])
           for r in ls["tls_routes"]]  # fmt: skip
    assert got == [
        ("TLSRoute default/old", ["a.example.com"], "default/a:80"),
        ("TLSRoute default/new", ["b.example.com"], "default/b:80"),
    ]


def test_what_the_proxy_cannot_serve_of_a_tlsroute_reaches_that_tlsroute_status() -> None:
    tr = run(
        gateway("gw", tls_passthrough()),
        tlsroute("t", backend("a"), hostnames=["a.example.com"]),
        *backend_service("a", "10.0.0.1"),
    )
    entry = tr.desired.l7[0].tls_routes[0]
    report = fold_failures(tr.status, problem_failures((Problem(entry.route, None, "refused"),)))
    refused = next(o for o in report.objects if (o.kind, o.name) == ("TLSRoute", "t"))
    conditions = refused.status.to_dict()["parents"][0]["conditions"]
    accepted = next(c for c in conditions if c["type"] == "Accepted")
    assert (accepted["status"], accepted["message"]) == ("False", "refused")


def test_tls_terminate_listener_carries_tcproute_as_decrypted_stream() -> None:
    tr = run(gateway("gw", tls_terminate()), secret("cert"), tcproute("r"), *SVC)
    ls = l7(tr, "tls")
    assert ls["tcp_backends"]["services"][0]["name"] == "default/svc:80"


def test_certificates_are_present_but_printed_only_as_fingerprints() -> None:
    tr = run(gateway("gw", https()), secret("cert"), httproute("r"), *SVC)
    (listener,) = tr.desired.l7
    (certificate,) = listener.certificates
    assert certificate.cert_pem == CERT_PEM and certificate.key_pem == KEY_PEM
    printed = tr.desired.to_dict()
    (cert,) = l7(tr, "https")["certificates"]
    assert cert == {
        "secret": "default/cert",
        "cert_pem": "sha256:" + hashlib.sha256(CERT_PEM).hexdigest()[:16],
        "key_pem": "sha256:" + hashlib.sha256(KEY_PEM).hexdigest()[:16],
    }
    text = json.dumps(printed)
    assert "PRIVATE KEY" not in text and "MAMCAQI" not in text
    assert "PRIVATE KEY" not in repr(listener)


def test_https_listener_with_unresolved_certificate_is_not_served() -> None:
    tr = run(gateway("gw", https(certs=["missing"]), http()), httproute("r"), *SVC)
    assert [ls.listener for ls in tr.desired.l7] == ["http"]
