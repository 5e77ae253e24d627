"""A VIP never takes a real host's address: this node's own, or an endpoint's."""

from __future__ import annotations

from agent.translate import HostAddresses, translate
from tests.unit.helpers import (
    CONTROLLER,
    backend_service,
    cond_is,
    gateway,
    gateway_class,
    gw_status,
    snapshot,
    tcp,
)
from tests.unit.test_ipam import REF, auto_gateway, config, pool

NODE = "192.0.2.1"
ENDPOINT = "10.0.0.7"


def programmed(hosts: HostAddresses, address: str) -> dict[str, object]:
    snap = snapshot(
        gateway_class(),
        gateway("gw", tcp(), addresses=[address]),
        backend_service("svc", ENDPOINT),
    )
    return gw_status(translate(snap, CONTROLLER, hosts=hosts))


def test_an_address_of_this_node_is_refused_with_the_reason() -> None:
    st = programmed(HostAddresses(node=frozenset({NODE})), NODE)
    cond_is(st["conditions"], "Programmed", False, "AddressNotUsable")
    message = next(c["message"] for c in st["conditions"] if c["type"] == "Programmed")
    assert f"spec.addresses[0]: {NODE} is an address of this node" in message
    assert "--allow-host-addresses" in message
    assert st["addresses"] == []


def test_an_endpoint_address_is_refused_naming_its_slice() -> None:
    st = programmed(HostAddresses(), ENDPOINT)
    cond_is(st["conditions"], "Programmed", False, "AddressNotUsable")
    message = next(c["message"] for c in st["conditions"] if c["type"] == "Programmed")
    assert f"{ENDPOINT} is an endpoint address (EndpointSlice default/svc" in message


def test_the_flag_allows_them_and_other_addresses_are_untouched() -> None:
    allowed = HostAddresses(node=frozenset({NODE}), allowed=True)
    cond_is(programmed(allowed, NODE)["conditions"], "Programmed", True, "Programmed")
    cond_is(programmed(allowed, ENDPOINT)["conditions"], "Programmed", True, "Programmed")
    plain = HostAddresses(node=frozenset({NODE}))
    cond_is(programmed(plain, "192.0.2.99")["conditions"], "Programmed", True, "Programmed")


def test_pools_never_hand_out_a_host_address() -> None:
    # A pool of two addresses, one of them this node's: the Gateway gets the other.
    snap = snapshot(
        gateway_class(parameters_ref=REF),
        config([pool("main", "198.51.100.1-198.51.100.2")]),
        auto_gateway("gw", created="2026-01-01T00:00:00Z"),
    )
    hosts = HostAddresses(node=frozenset({"198.51.100.1"}))
    st = gw_status(translate(snap, CONTROLLER, hosts=hosts))
    assert st["addresses"] == [{"type": "IPAddress", "value": "198.51.100.2"}]
    full = HostAddresses(node=frozenset({"198.51.100.1", "198.51.100.2"}))
    st = gw_status(translate(snap, CONTROLLER, hosts=full))
    cond_is(st["conditions"], "Programmed", False, "AddressNotAssigned")
