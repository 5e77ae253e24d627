"""A malformed object of ours still gets a status, naming the bad field."""

from __future__ import annotations

from helpers import (
    backend,
    backend_service,
    cond,
    cond_is,
    frontend,
    gateway,
    gateway_class,
    gw_status,
    has_status,
    listener_status,
    parent,
    parents,
    run,
    tcp,
    tcproute,
)


def _bad_gateway(name: str = "gw", class_name: str = "gatewaylb") -> dict[str, object]:
    doc = gateway(name, tcp(), class_name=class_name, generation=5)
    doc["spec"]["listeners"][0]["port"] = 123456  # type: ignore[index]
    return doc


def test_invalid_gateway_is_not_accepted_invalid_naming_the_field() -> None:
    tr = run(_bad_gateway())
    st = gw_status(tr)
    cond_is(st["conditions"], "Accepted", False, "Invalid")
    cond_is(st["conditions"], "Programmed", False, "Invalid")
    assert "spec.listeners[0].port" in cond(st["conditions"], "Accepted")["message"]
    assert {c["observedGeneration"] for c in st["conditions"]} == {5}
    assert st["listeners"] == [] and st["addresses"] == []
    assert tr.desired.l4 == ()


def test_invalid_gateway_of_another_controllers_class_gets_no_status() -> None:
    tr = run(gateway_class("theirs", "example.com/x"), _bad_gateway(class_name="theirs"))
    assert not has_status(tr, "Gateway", "gw")


def test_invalid_route_is_not_accepted_unsupported_value_naming_the_field() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("svc", None), parents=[parent("gw", section="tcp")], generation=3),
    )
    (p,) = parents(tr, "TCPRoute", "r")
    c = cond(p["conditions"], "Accepted")
    assert (c["status"], c["reason"]) == ("False", "UnsupportedValue")
    assert "spec.rules[0].backendRefs[0].port" in c["message"]
    assert c["observedGeneration"] == 3
    assert p["parentRef"] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": "default",
        "name": "gw",
        "sectionName": "tcp",
    }
    assert p["controllerName"] == "gatewaylb.io/agent"
    assert listener_status(tr, "tcp")["attachedRoutes"] == 0


def test_invalid_route_to_a_foreign_gateway_gets_no_status() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", backend("svc", None), parents=[parent("other")]))
    assert not has_status(tr, "TCPRoute", "r")


def test_invalid_route_keeps_its_readable_parent_refs_only() -> None:
    doc = tcproute("r", backend("svc", None), parents=[parent("gw"), parent("gw2")])
    doc["spec"]["parentRefs"].append({"name": 7})
    tr = run(gateway("gw", tcp()), gateway("gw2", tcp(), addresses=["192.0.2.99"]), doc)
    assert [p["parentRef"]["name"] for p in parents(tr, "TCPRoute", "r")] == ["gw", "gw2"]


def test_invalid_route_does_not_disturb_valid_routes() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("bad", backend("svc", None), created="2020-01-01T00:00:00Z"),
        tcproute("good", created="2024-01-01T00:00:00Z"),
        *backend_service("svc", "10.0.0.1"),
    )
    assert frontend(tr, 5000)["source"]["route"] == "default/good"
    assert listener_status(tr, "tcp")["attachedRoutes"] == 1
