"""BGP announcement, the pure parts: validation, TOML rendering, gobgp JSON.

The JSON samples are real `gobgp -j` output captured from gobgpd 3.10 against
BIRD 2.0.12 (tests/e2e/test_bgp_announce_e2e.py runs the same daemons).  Every
rendered configuration is also read back by Python's TOML parser, and by
`gobgpd --dry-run` where gobgpd is installed (no root needed, binds nothing).
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.announce.bgp.announcer import BGPAnnouncer
from agent.announce.bgp.gobgp import parse_global, parse_neighbors, parse_rib
from agent.announce.bgp.plan import (
    DaemonConfig,
    GlobalConfig,
    PeerConfig,
    desired_vips,
    fallback_router_id,
    plan,
    settings_problems,
    validate_peers,
)
from agent.announce.bgp.render import CONNECT_RETRY, DEFERRAL_TIME, render_config, toml_string
from agent.state import Announcement, BGPPeer, BGPSettings

NASTY = 'q"uo\\te\nnew\tline\r\x00\x1f\x7f ünï 🐝 ]# = """'

# -- captured gobgp output -----------------------------------------------------------------------

RIB_V4 = (
    '{"10.99.0.1/32":[{"nlri":{"prefix":"10.99.0.1/32"},"age":1795837148,"best":true,'
    '"attrs":[{"type":1,"value":2},{"type":3,"nexthop":"0.0.0.0"}],"stale":false}]}'
)
RIB_V6 = (
    '{"fd00:99::1/128":[{"nlri":{"prefix":"fd00:99::1/128"},"age":1795837148,"best":true,'
    '"attrs":[{"type":1,"value":2},{"type":14,"nexthop":"::","afi":2,"safi":1,'
    '"value":[{"prefix":"fd00:99::1/128"}]}],"stale":false}]}'
)
# With the import policy removed: a route learned from the router shows
# "source-id" and "neighbor-ip"; ours do not.
RIB_WITH_LEARNED = (
    '{"10.99.0.1/32":[{"nlri":{"prefix":"10.99.0.1/32"},"age":1795837237,"best":true,'
    '"attrs":[{"type":1,"value":2},{"type":3,"nexthop":"0.0.0.0"}],"stale":false}],'
    '"192.0.2.0/24":[{"nlri":{"prefix":"192.0.2.0/24"},"age":1795837307,"best":true,'
    '"attrs":[{"type":1,"value":0},{"type":2,"as_paths":[{"segment_type":2,"num":1,'
    '"asns":[64512]}]},{"type":3,"nexthop":"10.0.1.1"}],"stale":false,'
    '"source-id":"10.0.3.1","neighbor-ip":"10.0.1.1"}]}'
)
# Two peers (capabilities and per-family details cut): established, active.
NEIGHBORS = (
    '[{"apply_policy":{"export_policy":{"direction":2},"import_policy":{"direction":1}},'
    '"conf":{"auth_password":"pa\\\\ss \'w#rd $x","local_asn":64513,'
    '"neighbor_address":"10.0.1.1","peer_asn":64512,"type":1},"ebgp_multihop":{},'
    '"route_reflector":{},"state":{"messages":{"received":{"update":3,"open":1,'
    '"keepalive":79,"total":83},"sent":{"update":3,"open":1,"keepalive":70,"total":74}},'
    '"neighbor_address":"10.0.1.1","peer_asn":64512,"type":1,"queues":{},'
    '"session_state":6,"router_id":"10.0.3.1"},"timers":{"config":{"connect_retry":1,'
    '"hold_time":3,"keepalive_interval":1,"idle_hold_time_after_reset":30},'
    '"state":{"keepalive_interval":1,"negotiated_hold_time":3,'
    '"uptime":{"seconds":1795837307},"downtime":{"seconds":1795837307}}},'
    '"transport":{"local_address":"10.0.1.2"},"route_server":{},'
    '"graceful_restart":{"enabled":true,"restart_time":120,"deferral_time":1},'
    '"ttl_security":{}},'
    '{"apply_policy":{"export_policy":{"direction":2},"import_policy":{"direction":1}},'
    '"conf":{"local_asn":64513,"neighbor_address":"10.0.1.77","peer_asn":64999,"type":1},'
    '"ebgp_multihop":{},"route_reflector":{},"state":{"messages":{"received":{},"sent":{}},'
    '"neighbor_address":"10.0.1.77","peer_asn":64999,"type":1,"queues":{},'
    '"session_state":3},"timers":{"config":{"connect_retry":120,"hold_time":90,'
    '"keepalive_interval":30,"idle_hold_time_after_reset":30},'
    '"state":{"downtime":{"seconds":1795837370}}},"transport":{"local_address":"0.0.0.0"},'
    '"route_server":{},"graceful_restart":{},"ttl_security":{}}]'
)
GLOBAL = '{"asn":64513,"router_id":"10.0.1.2","listen_port":-1,"listen_addresses":["0.0.0.0","::"]}'


# -- helpers ---------------------------------------------------------------------------------------


def pc(address: str = "10.0.1.1", **kw: Any) -> PeerConfig:
    base: dict[str, Any] = {
        "asn": 64512,
        "port": 179,
        "hold_time": 90,
        "keepalive_time": 0,
        "ebgp_multihop": 0,
    }
    return PeerConfig(address=address, **{**base, **kw})


def cfg(*peers: PeerConfig, gr: bool = True, asn: int = 64513) -> DaemonConfig:
    return DaemonConfig(GlobalConfig(asn, "10.0.1.2"), peers, gr, 120)


def toml(config: DaemonConfig) -> dict[str, Any]:
    return tomllib.loads(render_config(config))


def no_route(_addr: str) -> str | None:
    return None


# -- TOML strings ----------------------------------------------------------------------------------


def test_toml_string_escapes_what_toml_requires_and_nothing_else() -> None:
    assert toml_string('a"b\\c') == '"a\\"b\\\\c"'
    assert toml_string("\n\t\r\b\f") == '"\\n\\t\\r\\b\\f"'
    assert toml_string("\x00\x1f\x7f") == '"\\u0000\\u001F\\u007F"'
    # Beyond the BMP: written raw (UTF-8), never as a JSON-style surrogate pair.
    assert toml_string("🐝") == '"🐝"'


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_toml_string_round_trips_any_text(value: str) -> None:
    assert tomllib.loads(f"k = {toml_string(value)}")["k"] == value


# -- rendering -----------------------------------------------------------------------------------


def test_global_section_and_import_policy() -> None:
    doc = toml(cfg(pc()))
    assert doc["global"]["config"] == {"as": 64513, "router-id": "10.0.1.2", "port": -1}
    policy = doc["global"]["apply-policy"]["config"]
    assert policy["default-import-policy"] == "accept-route"
    (definition,) = doc["policy-definitions"]
    assert definition["name"] in policy["import-policy-list"]
    (statement,) = definition["statements"]
    assert statement["actions"]["route-disposition"] == "reject-route"
    (nset,) = doc["defined-sets"]["neighbor-sets"]
    assert nset["neighbor-info-list"] == ["0.0.0.0/0", "::/0"]
    assert (
        statement["conditions"]["match-neighbor-set"]["neighbor-set"] == nset["neighbor-set-name"]
    )


def test_neighbour_with_everything_set() -> None:
    peer = pc(
        "10.0.1.1",
        asn=4200000000,
        port=1179,
        hold_time=9,
        keepalive_time=3,
        ebgp_multihop=4,
        password=NASTY,
    )
    (n,) = toml(cfg(peer))["neighbors"]
    assert n["config"] == {
        "neighbor-address": "10.0.1.1",
        "peer-as": 4200000000,
        "auth-password": NASTY,
    }
    assert n["transport"]["config"] == {"remote-port": 1179}
    assert n["timers"]["config"] == {
        "connect-retry": CONNECT_RETRY,
        "hold-time": 9,
        "keepalive-interval": 3,
    }
    assert n["ebgp-multihop"]["config"] == {"enabled": True, "multihop-ttl": 4}
    assert n["graceful-restart"]["config"] == {
        "enabled": True,
        "restart-time": 120,
        "deferral-time": DEFERRAL_TIME,
    }
    (af,) = n["afi-safis"]
    assert af == {
        "config": {"afi-safi-name": "ipv4-unicast"},
        "mp-graceful-restart": {"config": {"enabled": True}},
    }


def test_minimal_neighbour_leaves_defaults_to_gobgpd() -> None:
    (n,) = toml(cfg(pc(), gr=False))["neighbors"]
    assert "auth-password" not in n["config"]
    assert "keepalive-interval" not in n["timers"]["config"]  # a third of the hold time
    assert "ebgp-multihop" not in n
    assert "graceful-restart" not in n
    assert n["afi-safis"] == [{"config": {"afi-safi-name": "ipv4-unicast"}}]


def test_each_session_carries_only_its_own_family() -> None:
    doc = toml(cfg(pc("10.0.1.1"), pc("fd00:1::1")))
    families = [n["afi-safis"][0]["config"]["afi-safi-name"] for n in doc["neighbors"]]
    assert families == ["ipv4-unicast", "ipv6-unicast"]


def test_multihop_is_rendered_for_ebgp_only() -> None:
    ibgp = pc("10.0.1.1", asn=64513, ebgp_multihop=3)
    (n,) = toml(cfg(ibgp, asn=64513))["neighbors"]
    assert "ebgp-multihop" not in n


def test_rendering_is_deterministic_and_keeps_peer_order() -> None:
    config = cfg(pc("10.0.1.9"), pc("10.0.1.1"), pc("fd00::1"))
    assert render_config(config) == render_config(config)
    addresses = [n["config"]["neighbor-address"] for n in toml(config)["neighbors"]]
    assert addresses == ["10.0.1.9", "10.0.1.1", "fd00::1"]


def test_no_peers_renders_a_daemon_that_announces_nowhere() -> None:
    doc = toml(cfg())
    assert "neighbors" not in doc
    assert doc["global"]["config"]["as"] == 64513


@pytest.mark.skipif(shutil.which("gobgpd") is None, reason="gobgpd not installed")
def test_gobgpd_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    config = cfg(
        pc("10.0.1.1", password=NASTY, keepalive_time=1, hold_time=3),
        pc("fd00:1::1", asn=4200000000, ebgp_multihop=2),
        pc("10.0.9.9", asn=64513),
    )
    path = tmp_path / "gobgpd.toml"
    path.write_text(render_config(config))
    out = subprocess.run(
        ["gobgpd", "--dry-run", "-t", "toml", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "message"),
    [
        (BGPPeer("10.0.1.300", 64512), "address is not an IP address"),
        (BGPPeer("router.example", 64512), "address is not an IP address"),
        (BGPPeer("0.0.0.0", 64512), "cannot be a BGP neighbour"),
        (BGPPeer("ff02::5", 64512), "cannot be a BGP neighbour"),
        (BGPPeer("fe80::1", 64512), "link-local"),
        (BGPPeer("10.0.1.1", 0), "ASN 0 is out of range 1..4294967295"),
        (BGPPeer("10.0.1.1", 4294967296), "ASN 4294967296 is out of range"),
        (BGPPeer("10.0.1.1", 64512, port=0), "port 0 is out of range 1..65535"),
        (BGPPeer("10.0.1.1", 64512, port=70000), "port 70000 is out of range"),
        (BGPPeer("10.0.1.1", 64512, hold_time=0), "hold time 0 is out of range 3..65535"),
        (BGPPeer("10.0.1.1", 64512, hold_time=9, keepalive_time=9), "below the hold time"),
        (BGPPeer("10.0.1.1", 64512, ebgp_multihop=256), "TTL 256 is out of range"),
        (BGPPeer("10.0.1.1", 64512, password="x" * 81), "longer than 80 bytes"),
        (BGPPeer("10.0.1.1", 64512, password="\udc80"), "not valid Unicode"),
    ],
)
def test_a_bad_peer_is_skipped_with_a_message_naming_it(peer: BGPPeer, message: str) -> None:
    good, problems = validate_peers([peer, BGPPeer("10.0.2.1", 64512)])
    assert [p.address for p in good] == ["10.0.2.1"]
    (problem,) = problems
    assert problem.startswith(f"BGP peer {peer.address!r}: ")
    assert message in problem
    assert problem.endswith("peer skipped")


def test_problem_names_the_configuration_the_peer_came_from() -> None:
    _, (problem,) = validate_peers([BGPPeer("nope", 1, source="rack-7")])
    assert problem.startswith("BGP peer 'nope' (from rack-7): address is not an IP address")


def test_valid_peers_are_normalised_and_duplicates_dropped() -> None:
    good, problems = validate_peers(
        [
            BGPPeer("FD00:0001::0001", 64512, password="p"),
            BGPPeer("10.0.1.1", 64512),
            BGPPeer("fd00:1::1", 64999, source="again"),
        ]
    )
    assert [(p.address, p.asn, p.password) for p in good] == [
        ("fd00:1::1", 64512, "p"),
        ("10.0.1.1", 64512, ""),
    ]
    assert problems == (
        "BGP peer 'fd00:1::1' (from again): configured more than once; duplicate skipped",
    )


def test_password_is_not_in_the_repr() -> None:
    (peer,), _ = validate_peers([BGPPeer("10.0.1.1", 1, password="sekrit")])
    assert "sekrit" not in repr(peer)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (BGPSettings(0, ()), "local ASN 0 is out of range"),
        (BGPSettings(4294967296, ()), "local ASN 4294967296"),
        (BGPSettings(64513, (), router_id="fd00::1"), "router id 'fd00::1' is not an IPv4"),
        (BGPSettings(64513, (), router_id="0.0.0.0"), "router id '0.0.0.0'"),
        (BGPSettings(64513, (), restart_time=0), "graceful-restart time 0"),
        (BGPSettings(64513, (), restart_time=4096), "graceful-restart time 4096"),
    ],
)
def test_bad_node_settings(settings: BGPSettings, message: str) -> None:
    (problem,) = settings_problems(settings)
    assert message in problem
    assert problem.endswith("BGP configuration not applied")


def test_restart_time_is_not_checked_without_graceful_restart() -> None:
    assert settings_problems(BGPSettings(64513, (), graceful_restart=False, restart_time=0)) == ()


# -- planning ----------------------------------------------------------------------------------


def test_router_id_from_settings_wins_and_is_normalised() -> None:
    p = plan(BGPSettings(64513, (BGPPeer("10.0.1.1", 1),), router_id="192.0.2.1"), "n", no_route)
    assert p.config is not None and p.config.global_ == GlobalConfig(64513, "192.0.2.1", -1)


def test_router_id_from_the_route_towards_the_first_valid_peer() -> None:
    asked: list[str] = []

    def source(addr: str) -> str | None:
        asked.append(addr)
        return "10.0.1.2"

    peers = (BGPPeer("bad", 1), BGPPeer("10.0.1.1", 1), BGPPeer("10.0.2.1", 1))
    p = plan(BGPSettings(64513, peers), "n", source)
    assert asked == ["10.0.1.1"]
    assert p.config is not None and p.config.global_.router_id == "10.0.1.2"
    assert [q.address for q in p.config.peers] == ["10.0.1.1", "10.0.2.1"]
    assert len(p.problems) == 1


def test_router_id_falls_back_to_the_node_name_without_an_ipv4_source() -> None:
    v6 = plan(BGPSettings(64513, (BGPPeer("fd00::1", 1),)), "node-a", lambda _a: "fd00::2")
    none = plan(BGPSettings(64513, ()), "node-a", no_route)
    assert v6.config is not None and none.config is not None
    assert (
        v6.config.global_.router_id == none.config.global_.router_id == fallback_router_id("node-a")
    )
    assert fallback_router_id("node-a") != fallback_router_id("node-b")


def test_bad_node_settings_give_no_config_but_still_report_peers() -> None:
    p = plan(BGPSettings(0, (BGPPeer("bad", 1),)), "n", no_route)
    assert p.config is None
    assert len(p.problems) == 2


def test_desired_vips_are_the_ready_ones_normalised() -> None:
    vips, problems = desired_vips(
        [
            Announcement("10.99.0.1", True, ("ns/a",)),
            Announcement("10.99.0.2", False, ("ns/b",)),
            Announcement("FD00:99::0001", True, ()),
            Announcement("not-an-ip", True, ("ns/c", "ns/d")),
        ]
    )
    assert vips == {"10.99.0.1", "fd00:99::1"}
    assert problems == ("VIP 'not-an-ip' (gateways ns/c, ns/d): not an IP",)


# -- parsing gobgp's JSON ----------------------------------------------------------------------


def test_parse_rib_reads_our_host_routes() -> None:
    assert parse_rib(RIB_V4) == {"10.99.0.1"}
    assert parse_rib(RIB_V6) == {"fd00:99::1"}
    assert parse_rib("{}") == frozenset()
    assert parse_rib("") == frozenset()


def test_parse_rib_ignores_learned_routes_and_other_prefixes() -> None:
    assert parse_rib(RIB_WITH_LEARNED) == {"10.99.0.1"}
    learned_host = RIB_WITH_LEARNED.replace("192.0.2.0/24", "192.0.2.7/32")
    assert parse_rib(learned_host) == {"10.99.0.1"}
    ours_but_not_host = RIB_V4.replace("10.99.0.1/32", "10.99.0.0/24")
    assert parse_rib(ours_but_not_host) == frozenset()


def test_parse_neighbors_maps_session_states() -> None:
    assert parse_neighbors(NEIGHBORS) == {"10.0.1.1": "established", "10.0.1.77": "active"}
    assert parse_neighbors("[]") == {}
    # gobgp leaves out zero values: no session_state at all is "unknown".
    assert parse_neighbors('[{"conf":{"neighbor_address":"10.0.0.1"},"state":{}}]') == {
        "10.0.0.1": "unknown"
    }
    assert parse_neighbors('[{"state":{"neighbor_address":"10.0.0.2","session_state":1}}]') == {
        "10.0.0.2": "idle"
    }


def test_parse_global() -> None:
    assert parse_global(GLOBAL) == GlobalConfig(64513, "10.0.1.2", -1)
    # Before gobgpd has read its configuration it reports AS 0.
    assert parse_global('{"asn":0}') is None
    assert parse_global('{"asn":65000,"router_id":"1.2.3.4"}') == GlobalConfig(65000, "1.2.3.4", 0)


# -- the announcer never raises --------------------------------------------------------------------


def test_apply_reports_instead_of_raising(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-gobgpd")
    ann = BGPAnnouncer("n", tmp_path, gobgpd=missing, gobgp=missing)
    ann.apply(
        [Announcement("10.99.0.1", True, ("ns/gw",))],
        BGPSettings(64513, (BGPPeer("10.0.1.1", 64512), BGPPeer("bad", 1)), router_id="10.0.0.1"),
    )
    problems = ann.problems()
    assert problems[0].startswith("BGP peer 'bad'")
    assert problems[1].startswith("gobgpd: ") and "no-such-gobgpd" in problems[1]
    assert ann.peer_states() == {}
    assert ann.advertised() == frozenset()
    assert ann.daemon_pid() is None
    ann.close(withdraw=True)


def test_apply_with_unusable_settings_starts_nothing(tmp_path: Path) -> None:
    ann = BGPAnnouncer("n", tmp_path, gobgpd="/bin/false", gobgp="/bin/false")
    ann.apply([], BGPSettings(0, ()))
    (problem,) = ann.problems()
    assert "local ASN 0" in problem
    assert not (tmp_path / "bgp" / "gobgpd.toml").exists()
