"""GatewayClass and Gateway status: acceptance, addresses, programming."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import (
    VIP,
    backend_service,
    cond,
    cond_is,
    gateway,
    gateway_class,
    gw_status,
    has_status,
    http,
    https,
    run,
    status,
    tcp,
    tcproute,
)

from agent.translate.features import SUPPORTED_FEATURES

# -- GatewayClass --------------------------------------------------------------------------


def test_only_gateway_classes_of_our_controller_get_status() -> None:
    tr = run(gateway_class("ours"), gateway_class("theirs", "example.com/other"))
    assert has_status(tr, "GatewayClass", "ours")
    assert not has_status(tr, "GatewayClass", "theirs")


def test_gateway_class_of_our_controller_is_accepted() -> None:
    st = status(run(gateway_class("ours", generation=3)), "GatewayClass", "ours")
    cond_is(st["conditions"], "Accepted", True, "Accepted")
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])


def test_gateway_class_reports_supported_version() -> None:
    st = status(run(gateway_class()), "GatewayClass", "gatewaylb")
    cond_is(st["conditions"], "SupportedVersion", True, "SupportedVersion")


def test_gateway_class_supported_features_are_sorted_and_unique() -> None:
    st = status(run(gateway_class()), "GatewayClass", "gatewaylb")
    names = [f["name"] for f in st["supportedFeatures"]]
    assert names == sorted(set(names))
    assert names == list(SUPPORTED_FEATURES)
    assert {"Gateway", "TCPRoute", "UDPRoute", "ReferenceGrant"} <= set(names)
    assert not any(n.startswith("Mesh") for n in names)


def test_gateway_class_with_parameters_ref_is_invalid_parameters() -> None:
    gc = gateway_class(parameters_ref={"group": "example.com", "kind": "Config", "name": "x"})
    st = status(run(gc), "GatewayClass", "gatewaylb")
    cond_is(st["conditions"], "Accepted", False, "InvalidParameters")


def test_gateways_of_another_controllers_class_get_no_status() -> None:
    tr = run(gateway_class("theirs", "example.com/other"), gateway("gw", class_name="theirs"))
    assert not has_status(tr, "Gateway", "gw")
    assert tr.desired.vips == ()


def test_gateway_of_unknown_class_gets_no_status() -> None:
    assert not has_status(run(gateway("gw", class_name="missing")), "Gateway", "gw")


# -- Gateway conditions ----------------------------------------------------------------------


def test_gateway_with_static_address_is_accepted_and_programmed() -> None:
    st = gw_status(run(gateway("gw", tcp())))
    cond_is(st["conditions"], "Accepted", True, "Accepted")
    cond_is(st["conditions"], "Programmed", True, "Programmed")


def test_gateway_of_a_class_that_is_not_accepted_is_invalid() -> None:
    gc = gateway_class(parameters_ref={"group": "example.com", "kind": "Config", "name": "x"})
    tr = run(gc, gateway("gw", tcp()))
    st = gw_status(tr)
    cond_is(st["conditions"], "Accepted", False, "Invalid")
    cond_is(st["conditions"], "Programmed", False, "Invalid")
    assert tr.desired.l4 == () and tr.desired.vips == ()


def test_gateway_with_infrastructure_parameters_ref_is_invalid_parameters() -> None:
    infra = {"infrastructure": {"parametersRef": {"group": "invalid.io", "kind": "X", "name": "y"}}}
    st = gw_status(run(gateway("gw", tcp(), spec=infra)))
    cond_is(st["conditions"], "Accepted", False, "InvalidParameters")
    cond_is(st["conditions"], "Programmed", False, "Invalid")


@pytest.mark.parametrize(
    "address",
    [
        {"type": "Hostname", "value": "lb.example.com"},
        {"type": "NamedAddress", "value": "pool-a"},
        {"type": "test/fake-invalid-type"},
    ],
    ids=["Hostname", "NamedAddress", "domain-prefixed"],
)
def test_gateway_with_non_ip_address_type_is_unsupported_address(address: dict[str, Any]) -> None:
    st = gw_status(run(gateway("gw", tcp(), addresses=[address, VIP])))
    cond_is(st["conditions"], "Accepted", False, "UnsupportedAddress")
    assert st["addresses"] == []


def test_gateway_with_ip_address_type_but_non_ip_value_is_unsupported_address() -> None:
    st = gw_status(run(gateway("gw", tcp(), addresses=["not-an-ip"])))
    cond_is(st["conditions"], "Accepted", False, "UnsupportedAddress")
    assert "spec.addresses[0]" in cond(st["conditions"], "Accepted")["message"]


def test_gateway_without_addresses_is_accepted_but_address_not_assigned() -> None:
    tr = run(gateway("gw", tcp(), addresses=None))
    st = gw_status(tr)
    cond_is(st["conditions"], "Accepted", True, "Accepted")
    cond_is(st["conditions"], "Programmed", False, "AddressNotAssigned")
    assert st["addresses"] == []
    assert tr.desired.l4 == ()


def test_gateway_address_without_value_is_address_not_assigned() -> None:
    st = gw_status(run(gateway("gw", tcp(), addresses=[{"type": "IPAddress"}])))
    cond_is(st["conditions"], "Accepted", True, "Accepted")
    cond_is(st["conditions"], "Programmed", False, "AddressNotAssigned")


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "127.0.0.1", "::1", "255.255.255.255"]
)
def test_unusable_static_address_is_address_not_usable(address: str) -> None:
    tr = run(gateway("gw", tcp(), addresses=[VIP, address]))
    st = gw_status(tr)
    cond_is(st["conditions"], "Accepted", True, "Accepted")
    cond_is(st["conditions"], "Programmed", False, "AddressNotUsable")
    assert st["addresses"] == []
    assert tr.desired.vips == ()


def test_status_addresses_list_each_vip_with_type_ip_address() -> None:
    tr = run(gateway("gw", tcp(), addresses=[VIP, "2001:db8::10", VIP.replace("10", "11")]))
    st = gw_status(tr)
    assert st["addresses"] == [
        {"type": "IPAddress", "value": VIP},
        {"type": "IPAddress", "value": "2001:db8::10"},
        {"type": "IPAddress", "value": "192.0.2.11"},
    ]


def test_ipv6_address_is_normalised() -> None:
    st = gw_status(run(gateway("gw", tcp(), addresses=["2001:DB8:0:0::10"])))
    assert st["addresses"] == [{"type": "IPAddress", "value": "2001:db8::10"}]


def test_every_condition_carries_the_observed_generation() -> None:
    tr = run(
        gateway_class(generation=4),
        gateway("gw", tcp(), http("bad", 80, kinds=["TCPRoute"]), generation=7),
        tcproute("r", generation=9),
        *backend_service("svc", "10.0.0.1"),
    )
    gc = status(tr, "GatewayClass", "gatewaylb")
    assert {c["observedGeneration"] for c in gc["conditions"]} == {4}
    gw = gw_status(tr)
    assert {c["observedGeneration"] for c in gw["conditions"]} == {7}
    for ls in gw["listeners"]:
        assert {c["observedGeneration"] for c in ls["conditions"]} == {7}
    for p in status(tr, "TCPRoute", "r")["parents"]:
        assert {c["observedGeneration"] for c in p["conditions"]} == {9}


def test_gateway_with_some_invalid_listeners_is_accepted_listeners_not_valid() -> None:
    st = gw_status(run(gateway("gw", tcp(), listener_bad())))
    cond_is(st["conditions"], "Accepted", True, "ListenersNotValid")
    cond_is(st["conditions"], "Programmed", True, "Programmed")


def test_gateway_with_only_invalid_listeners_is_not_accepted_listeners_not_valid() -> None:
    tr = run(gateway("gw", listener_bad()))
    st = gw_status(tr)
    cond_is(st["conditions"], "Accepted", False, "ListenersNotValid")
    cond_is(st["conditions"], "Programmed", False, "Invalid")
    assert tr.desired.vips == ()


def test_gateway_with_unresolved_listener_refs_is_listeners_not_valid() -> None:
    st = gw_status(run(gateway("gw", tcp(), http("h", 80, kinds=["TCPRoute"]))))
    cond_is(st["conditions"], "Accepted", True, "ListenersNotValid")


def listener_bad() -> dict[str, Any]:
    return {"name": "bad", "protocol": "SCTP", "port": 9}


def test_gateway_status_has_one_entry_per_listener_in_spec_order() -> None:
    st = gw_status(run(gateway("gw", tcp("b", 2), tcp("a", 1), listener_bad())))
    assert [ls["name"] for ls in st["listeners"]] == ["b", "a", "bad"]


def test_gateway_whose_only_listener_lacks_its_certificate_is_still_programmed() -> None:
    # NamespacesMustBeReady needs e.g. gateway-secret-missing-reference-grant
    # Programmed=True; the listener itself reports that it cannot be served.
    tr = run(gateway("gw", https(certs=["missing"])))
    st = gw_status(tr)
    cond_is(st["conditions"], "Accepted", True, "ListenersNotValid")
    cond_is(st["conditions"], "Programmed", True, "Programmed")
    assert st["addresses"] == [{"type": "IPAddress", "value": VIP}]
    (ls,) = st["listeners"]
    cond_is(ls["conditions"], "Programmed", False, "Invalid")
    assert tr.desired.l7 == ()
