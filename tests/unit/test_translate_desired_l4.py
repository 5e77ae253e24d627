"""DesiredState for TCP and UDP listeners: frontends, endpoints and weights."""

from __future__ import annotations

from helpers import (
    VIP,
    backend,
    backend_service,
    endpoint,
    endpointslice,
    frontend,
    frontends,
    gateway,
    ips,
    parent,
    run,
    service,
    svc_port,
    tcp,
    tcproute,
    udp,
    udproute,
    weights,
)

from agent.state import L4Frontend


def test_tcp_listener_becomes_a_frontend_on_each_vip() -> None:
    tr = run(
        gateway("gw", tcp(port=5000), addresses=[VIP, "2001:db8::10"]),
        tcproute("r"),
        *backend_service("svc", "10.0.0.1"),
    )
    assert [(f["vip"], f["protocol"], f["port"]) for f in frontends(tr)] == [
        (VIP, "tcp", 5000),
        ("2001:db8::10", "tcp", 5000),
    ]
    assert tr.desired.vips == (VIP, "2001:db8::10")
    fe = frontend(tr, 5000)
    assert fe["source"] == {"namespace": "default", "gateway": "gw", "listener": "tcp",
                            "route": "default/r"}  # fmt: skip


def test_tcp_and_udp_on_the_same_port_are_two_frontends() -> None:
    tr = run(
        gateway("gw", tcp("t", 53), udp("u", 53)),
        tcproute("rt", backend("dns", 53)),
        udproute("ru", backend("dns", 53)),
        service("dns", svc_port(53, 5353, name="tcp"),
                svc_port(53, 5353, name="udp", protocol="UDP")),
        endpointslice("dns", *ips("10.0.0.1"), ports=[
            {"name": "tcp", "port": 5353, "protocol": "TCP"},
            {"name": "udp", "port": 5354, "protocol": "UDP"},
        ]),
    )  # fmt: skip
    assert weights(frontend(tr, 53, "tcp")) == {"10.0.0.1:5353": 1}
    assert weights(frontend(tr, 53, "udp")) == {"10.0.0.1:5354": 1}


def test_backend_port_resolves_through_the_service_target_port() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("svc", 80)),
        service("svc", svc_port(80, 9090)),
        endpointslice("svc", *ips("10.0.0.1"), ports=[]),
    )
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:9090": 1}


def test_service_port_without_target_port_targets_the_same_port() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("svc", 80)),
        service("svc", svc_port(80)),
        endpointslice("svc", *ips("10.0.0.1"), ports=[]),
    )
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:80": 1}


def test_named_target_port_resolves_through_endpointslice_port_names() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("svc", 80)),
        service("svc", svc_port(80, "web", name="http"), svc_port(81, "admin", name="admin")),
        endpointslice("svc", *ips("10.0.0.1"), name="s1", ports=[
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "admin", "port": 9000, "protocol": "TCP"},
        ]),
        # Another slice of the same Service whose pods use another container port.
        endpointslice("svc", *ips("10.0.0.2"), name="s2", ports=[
            {"name": "http", "port": 8081, "protocol": "TCP"},
        ]),
    )  # fmt: skip
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 1, "10.0.0.2:8081": 1}


def test_endpointslices_of_other_services_are_ignored() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r"),
        *backend_service("svc", "10.0.0.1"),
        *backend_service("other", "10.0.0.9"),
    )
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 1}


def test_only_ready_endpoints_get_weight_serving_terminating_ones_weight_zero() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r"),
        service("svc"),
        endpointslice(
            "svc",
            endpoint("10.0.0.1"),
            endpoint("10.0.0.2", ready=False, serving=True, terminating=True),
            endpoint("10.0.0.3", ready=False),
            endpoint("10.0.0.4", ready=False, serving=False, terminating=True),
            endpoint("10.0.0.5", ready=False, serving=True, terminating=False),
        ),
    )
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 1, "10.0.0.2:8080": 0}


def test_address_listed_ready_in_one_slice_and_terminating_in_another_counts_ready() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r"),
        service("svc"),
        endpointslice("svc", endpoint("10.0.0.1", ready=False, serving=True, terminating=True),
                      name="old"),
        endpointslice("svc", endpoint("10.0.0.1"), name="new"),
    )  # fmt: skip
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 1}


def test_weights_are_split_so_each_service_gets_its_share() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("a", weight=70), backend("b", weight=30)),
        *backend_service("a", "10.0.0.1", "10.0.0.2"),
        *backend_service("b", "10.0.1.1", "10.0.1.2", "10.0.1.3"),
    )
    w = weights(frontend(tr, 5000))
    a = sum(v for k, v in w.items() if k.startswith("10.0.0."))
    b = sum(v for k, v in w.items() if k.startswith("10.0.1."))
    assert a * 30 == b * 70
    assert len(set(v for k, v in w.items() if k.startswith("10.0.0."))) == 1
    assert len(set(v for k, v in w.items() if k.startswith("10.0.1."))) == 1
    assert frontend(tr, 5000)["reject_weight"] == 0


def test_weights_are_reduced_to_lowest_terms() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("a", weight=500), backend("b", weight=500)),
        *backend_service("a", "10.0.0.1"),
        *backend_service("b", "10.0.0.2"),
    )
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 1, "10.0.0.2:8080": 1}


def test_backend_of_weight_zero_gets_no_new_flows() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("a", weight=1), backend("b", weight=0)),
        *backend_service("a", "10.0.0.1"),
        *backend_service("b", "10.0.0.2"),
    )
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 1, "10.0.0.2:8080": 0}


def test_invalid_backend_ref_keeps_its_share_as_reject_weight() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("a", weight=70), backend("missing", weight=30)),
        *backend_service("a", "10.0.0.1"),
    )
    fe = frontend(tr, 5000)
    assert weights(fe) == {"10.0.0.1:8080": 7}
    assert fe["reject_weight"] == 3


def test_service_without_endpoints_has_its_share_rejected() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("a", weight=1), backend("empty", weight=1)),
        *backend_service("a", "10.0.0.1"),
        service("empty"),
    )
    fe = frontend(tr, 5000)
    assert weights(fe) == {"10.0.0.1:8080": 1}
    assert fe["reject_weight"] == 1


def test_service_with_only_unready_endpoints_has_its_share_rejected() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r"),
        service("svc"),
        endpointslice("svc", endpoint("10.0.0.1", ready=False, serving=True, terminating=True)),
    )
    fe = frontend(tr, 5000)
    assert weights(fe) == {"10.0.0.1:8080": 0}
    assert fe["reject_weight"] == 1
    assert not _frontend(tr).accepts_new_flows


def test_listener_without_a_route_is_a_frontend_refusing_every_flow() -> None:
    tr = run(gateway("gw", tcp()))
    fe = frontend(tr, 5000)
    assert fe.get("backends", []) == []
    assert not _frontend(tr).accepts_new_flows
    assert fe["source"]["route"] == ""


def test_route_whose_backends_are_all_invalid_gives_a_frontend_without_positive_weight() -> None:
    tr = run(gateway("gw", tcp()), tcproute("r", backend("missing")))
    assert not _frontend(tr).accepts_new_flows
    assert _frontend(tr).reject_weight > 0


def test_rejected_route_does_not_carry_traffic() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", namespace="web", parents=[parent(namespace="default")]),
        *backend_service("svc", "10.0.0.1", namespace="web"),
    )
    assert frontend(tr, 5000)["source"]["route"] == ""


def test_ipv6_vip_only_uses_ipv6_endpoints_and_ipv4_vip_only_ipv4() -> None:
    tr = run(
        gateway("gw", tcp(), addresses=[VIP, "2001:db8::10"]),
        tcproute("r"),
        service("svc"),
        endpointslice("svc", *ips("10.0.0.1")),
        endpointslice("svc", *ips("fd00::1", "fd00::2"), address_type="IPv6"),
    )
    assert weights(frontend(tr, 5000)) == {"10.0.0.1:8080": 1}
    assert weights(frontend(tr, 5000, vip="2001:db8::10")) == {
        "fd00::1:8080": 1,
        "fd00::2:8080": 1,
    }


def test_ipv6_vip_with_ipv4_only_service_rejects_its_share() -> None:
    tr = run(
        gateway("gw", tcp(), addresses=["2001:db8::10"]),
        tcproute("r"),
        *backend_service("svc", "10.0.0.1"),
    )
    fe = frontend(tr, 5000, vip="2001:db8::10")
    assert weights(fe) == {}
    assert fe["reject_weight"] == 1


def test_fqdn_endpointslices_are_ignored() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r"),
        service("svc"),
        endpointslice("svc", endpoint("db.example.com"), address_type="FQDN"),
    )
    assert weights(frontend(tr, 5000)) == {}


def test_gateway_that_is_not_programmed_has_no_frontends() -> None:
    tr = run(
        gateway("gw", tcp(), addresses=None), tcproute("r"), *backend_service("svc", "10.0.0.1")
    )
    assert frontends(tr) == []
    assert tr.desired.vips == ()


def test_port_unavailable_listener_has_no_frontend() -> None:
    tr = run(
        gateway("old", tcp(), created="2024-01-01T00:00:00Z"),
        gateway("new", tcp(), tcp("other", 6000), created="2024-02-01T00:00:00Z"),
    )
    assert [(f["port"], f["source"]["gateway"]) for f in frontends(tr)] == [
        (5000, "old"),
        (6000, "new"),
    ]


def test_large_weights_are_rounded_but_keep_every_live_endpoint() -> None:
    tr = run(
        gateway("gw", tcp()),
        tcproute("r", backend("a", weight=1_000_000), backend("b", weight=1)),
        *backend_service("a", "10.0.0.1", "10.0.0.2", "10.0.0.3"),
        *backend_service("b", "10.0.1.1", "10.0.1.2"),
    )
    w = weights(frontend(tr, 5000))
    assert all(v >= 1 for v in w.values())
    assert w["10.0.0.1:8080"] > 1000 * w["10.0.1.1:8080"]


def _frontend(tr: object) -> L4Frontend:
    from agent.translate import Translation

    assert isinstance(tr, Translation)
    (fe,) = [f for f in tr.desired.l4 if f.vip == VIP] or tr.desired.l4
    return fe
