"""GatewayLBConfig parsing, GatewayClass parameters, and address assignment
from pools (translate/ipam.py) through the same translate() as real input."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from agent.model.meta import Key
from agent.statuswriter import FileStatusWriter, StatusView, addresses_from_status_file
from agent.translate import translate
from tests.unit.helpers import (
    CONTROLLER,
    Doc,
    backend,
    backend_service,
    cond_is,
    gateway,
    gateway_class,
    gw_status,
    snapshot,
    status,
    tcp,
    tcproute,
)

REF = {"group": "gatewaylb.io", "kind": "GatewayLBConfig", "name": "lb"}


def config(pools: list[Doc] | None = None, announce: Doc | None = None, name: str = "lb") -> Doc:
    spec: Doc = {"addressPools": pools if pools is not None else [pool()]}
    if announce is not None:
        spec["announce"] = announce
    return {
        "apiVersion": "gatewaylb.io/v1alpha1",
        "kind": "GatewayLBConfig",
        "metadata": {"name": name},
        "spec": spec,
    }


def pool(name: str = "main", *addresses: str, auto_assign: bool | None = None) -> Doc:
    out: Doc = {"name": name, "addresses": list(addresses) or ["198.51.100.0/29"]}
    if auto_assign is not None:
        out["autoAssign"] = auto_assign
    return out


def auto_gateway(name: str, *, created: str, empty: int = 0, **kw: Any) -> Doc:
    """A Gateway that asks for no address (or for `empty` unvalued ones)."""
    addresses: list[str | Doc] | None = [{"type": "IPAddress"}] * empty if empty else None
    return gateway(name, tcp(), addresses=addresses, created=created, **kw)


def run(*docs: Doc, prior: dict[Key, tuple[str, ...]] | None = None) -> Any:
    all_docs = [gateway_class(parameters_ref=REF), *docs]
    return translate(snapshot(*all_docs), controller_name=CONTROLLER, prior_addresses=prior)


def addresses(tr: Any, name: str) -> list[str]:
    return [a["value"] for a in gw_status(tr, name).get("addresses", [])]


def invalid_class_message(*docs: Doc) -> str:
    tr = run(*docs)
    st = status(tr, "GatewayClass", "gatewaylb")
    cond_is(st["conditions"], "Accepted", False, "InvalidParameters")
    return str(next(c for c in st["conditions"] if c["type"] == "Accepted")["message"])


# -- the config object and the class ------------------------------------------------


def test_class_with_a_valid_config_is_accepted() -> None:
    tr = run(config())
    cond_is(status(tr, "GatewayClass", "gatewaylb")["conditions"], "Accepted", True, "Accepted")


def test_missing_config_is_invalid_parameters() -> None:
    assert "not found" in invalid_class_message()


def test_parameters_of_another_kind_are_refused() -> None:
    tr = translate(
        snapshot(gateway_class(parameters_ref={"group": "", "kind": "ConfigMap", "name": "x"})),
        controller_name=CONTROLLER,
    )
    st = status(tr, "GatewayClass", "gatewaylb")
    cond_is(st["conditions"], "Accepted", False, "InvalidParameters")


@pytest.mark.parametrize(
    ("spec_pools", "announce", "field", "words"),
    [
        ([pool("a", "10.0.0.0/24"), pool("b", "10.0.0.200-10.0.0.210")], None,
         "spec.addressPools[1].addresses[0]", "overlaps"),
        ([pool("a", "10.0.0.9-10.0.0.1")], None, "spec.addressPools[0].addresses[0]", "backwards"),
        ([pool("a", "10.0.0.1-fd00::1")], None, "spec.addressPools[0].addresses[0]", "family"),
        ([pool("a", "10.0.0.300/24")], None, "spec.addressPools[0].addresses[0]", "not a CIDR"),
        ([pool("a", "10.0.0.1/24")], None, "spec.addressPools[0].addresses[0]", "not a CIDR"),
        ([pool("a"), pool("a", "10.9.0.0/30")], None, "spec.addressPools[1].name", "twice"),
        ([], {"bgp": {"localASN": 64513, "peers": [{"address": "router", "asn": 64512}]}},
         "spec.announce.bgp.peers[0].address", "not an IP address"),
        ([], {"bgp": {"localASN": 0, "peers": [{"address": "10.0.0.1", "asn": 64512}]}},
         "spec.announce.bgp.localASN", "at least 1"),
        ([], {"bgp": {"localASN": 1, "peers": [{"address": "10.0.0.1", "asn": 4294967296}]}},
         "spec.announce.bgp.peers[0].asn", "at most"),
        ([], {"bgp": {"localASN": 1, "peers": [
            {"address": "10.0.0.1", "asn": 2, "holdTimeSeconds": 9, "keepaliveTimeSeconds": 4}]}},
         "spec.announce.bgp.peers[0].keepaliveTimeSeconds", "third"),
        ([], {"l2": {"heartbeatIntervalMilliseconds": 500, "deadAfterMilliseconds": 1000}},
         "spec.announce.l2.deadAfterMilliseconds", "3 heartbeat"),
        ([], {"l2": {"interfaces": ["eth0 ; reboot"]}}, "spec.announce.l2.interfaces[0]", ""),
    ],
)  # fmt: skip
def test_malformed_config_names_the_field(
    spec_pools: list[Doc], announce: Doc | None, field: str, words: str
) -> None:
    message = invalid_class_message(config(spec_pools, announce))
    assert field in message and words in message, message


def test_gateways_of_a_class_with_a_bad_config_are_not_accepted_and_others_keep_working() -> None:
    good_class = gateway_class("static")
    tr = run(
        config([pool("a", "10.0.0.9-10.0.0.1")]),
        good_class,
        auto_gateway("pooled", created="2026-01-01T00:00:00Z"),
        gateway("static", tcp(), class_name="static"),
    )
    cond_is(gw_status(tr, "pooled")["conditions"], "Accepted", False, "Invalid")
    cond_is(gw_status(tr, "static")["conditions"], "Programmed", True, "Programmed")
    assert "192.0.2.10" in tr.desired.vips


# -- assignment -----------------------------------------------------------------------


def test_gateway_without_addresses_gets_one_from_the_pool() -> None:
    tr = run(config(), auto_gateway("a", created="2026-01-01T00:00:00Z"))
    cond_is(gw_status(tr, "a")["conditions"], "Programmed", True, "Programmed")
    (vip,) = addresses(tr, "a")
    # 198.51.100.0/29 without its network and broadcast addresses.
    assert ipaddress.ip_address(vip) in ipaddress.ip_network("198.51.100.0/29")
    assert vip not in ("198.51.100.0", "198.51.100.7")
    assert tr.desired.vips == (vip,)


def test_assignment_is_the_same_on_every_run_and_distinct_per_gateway() -> None:
    docs = [auto_gateway(f"g{i}", created=f"2026-01-01T00:00:0{i}Z") for i in range(6)]
    first = run(config(), *docs)
    again = run(config(), *reversed(docs))
    got = {f"g{i}": addresses(first, f"g{i}") for i in range(6)}
    assert got == {f"g{i}": addresses(again, f"g{i}") for i in range(6)}
    assert len({v[0] for v in got.values()}) == 6


def test_exhausted_pool_gives_address_not_assigned_to_the_youngest() -> None:
    docs = [auto_gateway(f"g{i}", created=f"2026-01-01T00:00:0{i}Z") for i in range(7)]
    tr = run(config([pool("tiny", "198.51.100.1-198.51.100.6")]), *docs)
    for i in range(6):
        cond_is(gw_status(tr, f"g{i}")["conditions"], "Programmed", True, "Programmed")
    conds = gw_status(tr, "g6")["conditions"]
    cond_is(conds, "Programmed", False, "AddressNotAssigned")
    assert "tiny" in next(c for c in conds if c["type"] == "Programmed")["message"]


def test_removing_an_older_gateway_moves_no_other_address() -> None:
    docs = [auto_gateway(f"g{i}", created=f"2026-01-01T00:00:0{i}Z") for i in range(5)]
    before = run(config(), *docs)
    after = run(config(), *docs[1:])
    for i in range(1, 5):
        assert addresses(after, f"g{i}") == addresses(before, f"g{i}")


def test_status_addresses_keep_an_assignment_that_probing_would_change() -> None:
    recorded = "198.51.100.3"
    gw = auto_gateway("a", created="2026-01-01T00:00:00Z")
    gw["status"] = {"addresses": [{"type": "IPAddress", "value": recorded}]}
    tr = run(config(), gw)
    assert addresses(tr, "a") == [recorded]


def test_prior_addresses_from_a_status_file_are_kept() -> None:
    gw = auto_gateway("a", created="2026-01-01T00:00:00Z")
    tr = run(config(), gw, prior={Key("default", "a"): ("198.51.100.5",)})
    assert addresses(tr, "a") == ["198.51.100.5"]


def test_a_recorded_address_outside_the_pools_is_replaced() -> None:
    gw = auto_gateway("a", created="2026-01-01T00:00:00Z")
    gw["status"] = {"addresses": [{"type": "IPAddress", "value": "203.0.113.77"}]}
    tr = run(config(), gw)
    (vip,) = addresses(tr, "a")
    assert vip.startswith("198.51.100.")


def test_a_spec_address_wins_over_a_recorded_one() -> None:
    pooled = auto_gateway("pooled", created="2026-01-01T00:00:01Z")
    pooled["status"] = {"addresses": [{"type": "IPAddress", "value": "198.51.100.2"}]}
    static = gateway("static", tcp(), addresses=["198.51.100.2"], created="2026-01-01T00:00:05Z")
    tr = run(config(), pooled, static)
    assert addresses(tr, "static") == ["198.51.100.2"]
    assert addresses(tr, "pooled") != ["198.51.100.2"]


def test_requested_address_outside_every_pool_is_not_usable() -> None:
    gw = gateway("a", tcp(), addresses=["203.0.113.9"])
    tr = run(config(), gw)
    conds = gw_status(tr, "a")["conditions"]
    cond_is(conds, "Programmed", False, "AddressNotUsable")
    message = next(c for c in conds if c["type"] == "Programmed")["message"]
    assert "spec.addresses[0]" in message and "main" in message


def test_requested_address_in_a_manual_pool_is_used_but_never_auto_assigned() -> None:
    pools = [pool("manual", "198.51.100.1", auto_assign=False), pool("auto", "198.51.100.2")]
    tr = run(
        config(pools),
        gateway("explicit", tcp(), addresses=["198.51.100.1"]),
        auto_gateway("a", created="2026-01-01T00:00:00Z"),
        auto_gateway("b", created="2026-01-01T00:00:01Z"),
    )
    assert addresses(tr, "explicit") == ["198.51.100.1"]
    assert addresses(tr, "a") == ["198.51.100.2"]
    cond_is(gw_status(tr, "b")["conditions"], "Programmed", False, "AddressNotAssigned")


def test_ipv6_pool_and_dual_stack() -> None:
    pools = [pool("v4", "198.51.100.8/30"), pool("v6", "2001:db8:1::/64")]
    tr = run(
        config(pools),
        auto_gateway("dual", created="2026-01-01T00:00:00Z", empty=2),
        auto_gateway("one", created="2026-01-01T00:00:01Z"),
    )
    dual = addresses(tr, "dual")
    assert sorted(ipaddress.ip_address(a).version for a in dual) == [4, 6]
    assert ipaddress.ip_address(dual[1]) in ipaddress.ip_network("2001:db8:1::/64")
    (one,) = addresses(tr, "one")
    assert ipaddress.ip_address(one).version == 4


def test_class_without_config_keeps_address_not_assigned() -> None:
    tr = translate(
        snapshot(gateway_class(), auto_gateway("a", created="2026-01-01T00:00:00Z")),
        controller_name=CONTROLLER,
    )
    cond_is(gw_status(tr, "a")["conditions"], "Programmed", False, "AddressNotAssigned")


# -- announcements ----------------------------------------------------------------------


def test_announcements_say_which_vips_have_a_ready_backend() -> None:
    tr = run(
        config(),
        gateway("ready", tcp(), addresses=["198.51.100.1"]),
        gateway("empty", tcp(), addresses=["198.51.100.2"]),
        tcproute("r", backend("svc"), parents=[{"name": "ready"}]),
        tcproute("dead", backend("nothing"), parents=[{"name": "empty"}]),
        backend_service("svc", "10.1.0.1"),
    )
    by_vip = {a.vip: (a.ready, a.gateways) for a in tr.desired.announcements}
    assert by_vip == {
        "198.51.100.1": (True, ("default/ready",)),
        "198.51.100.2": (False, ("default/empty",)),
    }


def test_announce_settings_come_from_the_config() -> None:
    bgp = {"localASN": 64513, "peers": [{"address": "10.0.0.1", "asn": 64512, "password": "s"}]}
    l2 = {"interfaces": ["eth1"]}
    tr = run(config(announce={"bgp": bgp, "l2": l2}))
    assert tr.desired.announce.l2 is not None
    assert tr.desired.announce.l2.interfaces == ("eth1",)
    assert tr.desired.announce.bgp is not None
    (peer,) = tr.desired.announce.bgp.peers
    assert (peer.address, peer.asn, peer.password) == ("10.0.0.1", 64512, "s")
    # The printable form never shows the password itself.
    printed = str(tr.desired.to_dict())
    assert "'password': 's'" not in printed and "sha256:" in printed


def test_a_standalone_agent_reads_its_assignments_back_from_its_status_file(
    tmp_path: Path,
) -> None:
    docs = [gateway_class(parameters_ref=REF), config()]
    docs += [auto_gateway(f"g{i}", created=f"2026-01-01T00:00:0{i}Z") for i in range(3)]
    snap = snapshot(*docs)
    first = translate(snap, controller_name=CONTROLLER)
    path = tmp_path / "status.json"
    FileStatusWriter(path).reconcile(StatusView(snap, first))
    prior = addresses_from_status_file(path)
    assert prior == {Key("default", f"g{i}"): tuple(addresses(first, f"g{i}")) for i in range(3)}
    assert addresses_from_status_file(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert addresses_from_status_file(tmp_path / "bad.json") == {}
