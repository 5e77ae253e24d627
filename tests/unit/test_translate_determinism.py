"""translate is pure: same input, same output, whatever the input order."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from helpers import (
    backend,
    backend_service,
    endpoint,
    endpointslice,
    gateway,
    gateway_class,
    grpcroute,
    http,
    httproute,
    https,
    namespace,
    parent,
    reference_grant,
    secret,
    service,
    snapshot,
    tcp,
    tcproute,
    tls_passthrough,
    tlsroute,
    udp,
    udproute,
)

from agent.translate import translate


def _world() -> list[dict[str, Any]]:
    return [
        gateway_class(),
        gateway_class("theirs", "example.com/x"),
        gateway("gw", tcp(), udp("u", 53), http(), https(), tls_passthrough("tls", 8443),
                addresses=["192.0.2.10", "2001:db8::10"], created="2024-01-01T00:00:00Z"),
        gateway("gw2", tcp(), http("h", 80, from_="All"), created="2024-02-01T00:00:00Z"),
        gateway("bad", {"name": "x", "protocol": "SCTP", "port": 1}, addresses=None),
        tcproute("t1", backend("a", weight=2), backend("b"), created="2024-01-01T00:00:00Z"),
        tcproute("t2", backend("b"), created="2024-01-01T00:00:00Z"),
        tcproute("t3", backend("x", namespace="other")),
        udproute("u1", backend("dns", 53)),
        httproute("h1", hostnames=["*.example.com", "a.example.com"]),
        httproute("h2", {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
                         "backendRefs": [backend("a"), backend("missing")]},
                  parents=[parent("gw"), parent("gw2")]),
        httproute("h3", namespace="other", parents=[parent("gw2", namespace="default")]),
        grpcroute("g1", hostnames=["grpc.example.com"]),
        tlsroute("s1", hostnames=["a.example.com"]),
        tlsroute("s2", hostnames=["a.example.com", "b.example.com"]),
        tcproute("invalid", backend("svc", None)),
        *backend_service("a", "10.0.0.1", "10.0.0.2"),
        *backend_service("b", "10.0.0.3"),
        *backend_service("svc", "10.0.0.4"),
        *backend_service("x", "10.0.9.1", namespace="other"),
        service("dns", {"port": 53, "protocol": "UDP", "targetPort": 5353}),
        endpointslice("dns", endpoint("10.0.0.5"), endpoint("10.0.0.6", ready=False),
                      ports=[{"port": 5353, "protocol": "UDP"}]),
        endpointslice("a", endpoint("fd00::1"), address_type="IPv6"),
        reference_grant(namespace="other", from_namespace="default"),
        namespace("other", {"team": "x"}),
        secret("cert"),
    ]  # fmt: skip


def _render(docs: list[dict[str, Any]]) -> str:
    tr = translate(snapshot(*docs))
    return json.dumps({"desired": tr.desired.to_dict(), "status": tr.status.to_list()})


def test_translate_twice_gives_identical_output() -> None:
    snap = snapshot(*_world())
    first = translate(snap)
    second = translate(snap)
    assert first.desired.to_dict() == second.desired.to_dict()
    assert first.status.to_list() == second.status.to_list()
    assert first == second


@pytest.mark.parametrize("seed", range(8))
def test_shuffled_input_gives_identical_output(seed: int) -> None:
    docs = _world()
    expected = _render(docs)
    shuffled = list(docs)
    random.Random(seed).shuffle(shuffled)
    assert _render(shuffled) == expected


def test_output_is_json_serialisable_and_nonempty() -> None:
    rendered = json.loads(_render(_world()))
    assert rendered["desired"]["l4"] and rendered["desired"]["l7"]
    assert len(rendered["status"]) > 10


def test_status_objects_are_sorted_gatewayclasses_then_gateways_then_routes() -> None:
    tr = translate(snapshot(*_world()))
    kinds = [o.kind for o in tr.status.objects]
    assert kinds[0] == "GatewayClass"
    first_route = next(i for i, k in enumerate(kinds) if k not in ("GatewayClass", "Gateway"))
    assert set(kinds[:first_route]) == {"GatewayClass", "Gateway"}
    assert "Gateway" not in kinds[first_route:]
    keys = [o.sort_key for o in tr.status.objects]
    assert keys == sorted(keys)
