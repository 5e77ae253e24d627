"""Pure pieces of what a new user sees: rejected objects as lines, foreign
GatewayClasses, the VIP guard's script, the status writer's state, `status`
reading an agent's metrics, and `translate --strict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.dataplane.vips import guard_state, render_guard
from agent.kube.client import ApiError
from agent.kube.election import classify_lease_error
from agent.metrics import AgentMetrics
from agent.nodestatus import _agent_from_metrics
from agent.state import (
    Backend,
    BackendSet,
    DesiredState,
    FrontendSource,
    L4Frontend,
    L7Listener,
)
from agent.translate import translate
from agent.translate.rejections import foreign_classes, rejected_counts, rejections
from tests.unit.helpers import (
    CONTROLLER,
    backend,
    backend_service,
    endpointslice,
    gateway,
    gateway_class,
    http,
    https,
    listener_status,
    parent,
    secret,
    service,
    snapshot,
    svc_port,
    tcp,
    tcproute,
    udp,
)


def test_each_refusing_condition_is_one_line_naming_object_place_and_reason() -> None:
    snap = snapshot(
        gateway_class(),
        gateway("gw", tcp("t", 5000), tcp("a", 80), http("b", 80)),
        tcproute("ok", backend("svc"), parents=[parent(section="t")]),
        tcproute("lost", backend("nowhere"), parents=[parent(section="t")]),
        backend_service("svc", "10.0.0.1"),
    )
    found = rejections(snap, translate(snap, CONTROLLER).status)
    lines = [str(r) for r in found]
    print("\n".join(lines))
    lost = [r for r in found if r.name == "lost"]
    assert len(lost) == 1
    r = lost[0]
    assert (r.kind, r.namespace, r.where, r.condition, r.reason) == (
        "TCPRoute",
        "default",
        "parentRef default/gw/t",
        "ResolvedRefs=False",
        "BackendNotFound",
    )
    assert r.source.startswith("test#")
    assert "default/nowhere" in r.message
    assert str(r).startswith(f"TCPRoute default/lost ({r.source}) parentRef default/gw/t:")
    assert not [x for x in found if x.name == "ok"]
    # TCP and HTTP listeners on one port conflict: one line per listener.
    conflicted = [x for x in found if x.kind == "Gateway" and x.where.startswith("listener")]
    assert {x.where for x in conflicted} == {"listener a", "listener b"}
    assert all("Conflicted=True" in x.condition for x in conflicted)


def test_an_invalid_object_is_one_line_and_counted_once_per_reason() -> None:
    bad = gateway("bad", tcp("t", 70000))
    snap = snapshot(gateway_class(), bad)
    found = rejections(snap, translate(snap, CONTROLLER).status)
    assert len(found) == 1
    assert found[0].condition == "Accepted=False,Programmed=False"
    assert "spec.listeners[0].port" in found[0].message
    assert rejected_counts(found) == {("Gateway", "Invalid"): 1}


def test_a_clean_snapshot_has_no_rejection() -> None:
    snap = snapshot(
        gateway_class(),
        gateway("gw"),
        tcproute("r", backend("svc")),
        backend_service("svc", "10.0.0.1"),
    )
    assert rejections(snap, translate(snap, CONTROLLER).status) == ()


def test_a_gatewayclass_of_another_controller_is_named_with_a_hint_for_typos() -> None:
    snap = snapshot(
        gateway_class("typo", "gatewaylb.io/agnet"),
        gateway_class("other", "example.com/other-controller"),
        gateway_class(),
    )
    lines = foreign_classes(snap, CONTROLLER)
    assert len(lines) == 2
    typo = next(line for line in lines if line.startswith("GatewayClass typo"))
    assert "did you mean 'gatewaylb.io/agent'?" in typo
    other = next(line for line in lines if line.startswith("GatewayClass other"))
    assert "did you mean" not in other


def _desired() -> DesiredState:
    src = FrontendSource("default", "gw", "tcp")
    return DesiredState(
        vips=("192.0.2.1", "2001:db8::1", "192.0.2.2"),
        l4=(
            L4Frontend("192.0.2.1", "tcp", 80, (Backend("10.0.0.1", 8080, 1),), 0, src),
            L4Frontend("2001:db8::1", "udp", 53, (), 1, src),
        ),
        l7=(
            L7Listener(
                gateway="default/web",
                listener="http",
                vips=("192.0.2.2",),
                port=8080,
                protocol="HTTP",
                tls_mode=None,
                hostname=None,
                tcp_backends=BackendSet(()),
            ),
        ),
    )


def test_the_guard_serves_l4_frontends_and_l7_listeners_and_refuses_the_rest() -> None:
    state = guard_state(_desired())
    assert state.vips == {"192.0.2.1", "192.0.2.2", "2001:db8::1"}
    assert state.served == {
        ("192.0.2.1", "tcp", 80),
        ("2001:db8::1", "udp", 53),
        ("192.0.2.2", "tcp", 8080),
    }
    script = render_guard(state)
    print(script)
    assert "add element inet gatewaylb_vips vips4 { 192.0.2.1, 192.0.2.2 }" in script
    assert (
        "add element inet gatewaylb_vips served4 { 192.0.2.1 . tcp . 80, 192.0.2.2 . tcp . 8080 }"
        in script
    )
    assert "add element inet gatewaylb_vips served6 { 2001:db8::1 . udp . 53 }" in script
    # Sets and rules are rewritten whole, so one transaction says everything.
    assert script.index("flush chain") < script.index("add rule")
    assert script.count("reject with tcp reset") == 2
    assert "priority -150" in script


def test_the_guard_of_no_vip_is_an_empty_table() -> None:
    script = render_guard(guard_state(DesiredState()))
    assert "add element" not in script
    assert "flush set inet gatewaylb_vips served4" in script


@pytest.mark.parametrize(
    ("exc", "reason", "hint"),
    [
        (
            ApiError(
                404,
                "Not Found",
                {
                    "message": 'namespaces "gatewaylb-system" not found',
                    "details": {"name": "gatewaylb-system", "kind": "namespaces"},
                },
            ),
            "LeaseNamespaceMissing",
            "--lease-namespace",
        ),
        (ApiError(403, "Forbidden", {"message": "forbidden"}), "Forbidden", "rbac.yaml"),
        (ConnectionRefusedError(111, "refused"), "LeaseUnavailable", "refused"),
    ],
)
def test_a_lease_failure_says_why_and_what_to_do(exc: Exception, reason: str, hint: str) -> None:
    state = classify_lease_error(exc, "gatewaylb-system", "gatewaylb-status")
    assert (state.state, state.reason) == ("blocked", reason)
    assert hint in state.detail


def test_status_reads_the_agents_own_account_from_its_metrics() -> None:
    metrics = AgentMetrics(version="t", dataplane="ebpf", node="n")
    metrics.add_status_writer(lambda: ("blocked", "LeaseNamespaceMissing"))
    metrics.set_rejected({("Gateway", "Invalid"): 2, ("TCPRoute", "BackendNotFound"): 1})
    view = _agent_from_metrics("127.0.0.1:9469", metrics.render().decode(), ready=True)
    assert view.reachable and view.ready
    assert view.dataplane == "ebpf"
    assert (view.status_writer, view.status_writer_reason) == ("blocked", "LeaseNamespaceMissing")
    assert view.rejected == {("Gateway", "Invalid"): 2, ("TCPRoute", "BackendNotFound"): 1}
    metrics.set_rejected({})
    assert "gatewaylb_rejected_objects{" not in metrics.render().decode()


def _write(directory: Path, name: str, docs: list[dict[str, Any]]) -> None:
    (directory / name).write_text("\n---\n".join(json.dumps(d) for d in docs))


def test_translate_strict_exits_1_and_names_every_problem(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", [gateway_class(), gateway("gw"), gateway("bad", tcp("t", 70000))])
    route = tcproute("typo", backend("missing"))
    route["spec"]["parentRefs"] = [{"name": "gw", "sectionNmae": "tcp"}]
    _write(tmp_path, "b.yaml", [route])
    runner = CliRunner()
    lenient = runner.invoke(main, ["translate", "--manifests", str(tmp_path)])
    assert lenient.exit_code == 0
    strict = runner.invoke(main, ["translate", "--manifests", str(tmp_path), "--strict"])
    assert strict.exit_code == 1
    err = strict.stderr
    print(err)
    assert f"rejected: Gateway default/bad ({tmp_path / 'a.yaml'}:" in err
    assert f"rejected: TCPRoute default/typo ({tmp_path / 'b.yaml'}:1)" in err
    assert 'unknown field "sectionNmae" (did you mean "sectionName"?)' in err
    assert "translate: 2 object(s) rejected, 0 document(s) unusable, 1 warning(s)" in err
    clean = tmp_path / "clean"
    clean.mkdir()
    _write(clean, "a.yaml", [gateway_class(), gateway("gw")])
    ok = runner.invoke(main, ["translate", "--manifests", str(clean), "--strict"])
    assert ok.exit_code == 0, ok.stderr
    assert ok.stderr == ""


def test_translate_mentions_a_misspelled_controller_name(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", [gateway_class(controller="gatewaylb.io/agnet"), gateway("gw")])
    out = CliRunner().invoke(main, ["translate", "--manifests", str(tmp_path)])
    assert out.exit_code == 0
    assert json.loads(out.stdout)["objects"] == []
    assert "spec.controllerName 'gatewaylb.io/agnet'" in out.stderr
    assert "did you mean 'gatewaylb.io/agent'?" in out.stderr


def test_a_malformed_endpointslice_or_secret_is_said_not_hidden() -> None:
    bad_slice = endpointslice("svc", {"addresses": ["10.0.0.1:9000 backup"]})
    bad_secret = secret("cert")
    bad_secret["data"]["tls.crt"] = "not base64!"
    snap = snapshot(
        gateway_class(),
        gateway("gw", tcp("t", 5000), https("web", 443)),
        service("svc", svc_port(80, 8080)),
        bad_slice,
        bad_secret,
        tcproute("r", backend("svc"), parents=[parent(section="t")]),
    )
    tr = translate(snap, CONTROLLER)
    found = {(r.kind, r.name): r for r in rejections(snap, tr.status)}
    es = found[("EndpointSlice", "svc-ipv4")]
    assert es.reason == "Invalid" and "invalid IP address '10.0.0.1:9000 backup'" in es.message
    assert found[("Secret", "cert")].message == "data.tls.crt: is not valid base64"
    # The listener says why it cannot use the Secret, rather than "not found".
    web = listener_status(tr, "web")
    refs = next(c for c in web["conditions"] if c["type"] == "ResolvedRefs")
    assert "Secret default/cert is invalid: data.tls.crt: is not valid base64" in refs["message"]
    assert rejected_counts(tuple(found.values()))[("EndpointSlice", "Invalid")] == 1


def test_a_route_to_a_malformed_service_says_it_is_invalid() -> None:
    bad = service("svc", svc_port(80, 8080))
    bad["spec"]["ports"][0]["protocol"] = "ICMP"
    snap = snapshot(gateway_class(), gateway("gw"), bad, tcproute("r", backend("svc")))
    tr = translate(snap, CONTROLLER)
    messages = [r.message for r in rejections(snap, tr.status) if r.kind == "TCPRoute"]
    want = "Service default/svc is invalid: spec.ports[0].protocol"
    assert any(want in m for m in messages), messages


def test_every_bad_listener_and_rule_of_an_object_is_said_not_only_the_first() -> None:
    gw = gateway("gw", tcp("a", 70000), tcp("b", 80), udp("c", 0))
    route = tcproute("r", backend("svc"), api_version="gateway.networking.k8s.io/v1alpha2")
    route["spec"]["rules"] = [{"backendRefs": []}, {"backendRefs": [{"name": "x", "port": -1}]}]
    route["spec"]["parentRefs"] = [{"name": "gw", "port": 99999}]
    snap = snapshot(gateway_class(), gw, route)
    found = {r.kind: r for r in rejections(snap, translate(snap, CONTROLLER).status)}
    message = found["Gateway"].message
    assert "spec.listeners[0].port: must be at most 65535" in message
    assert "spec.listeners[2].port: must be at least 1" in message
    assert "spec.listeners[1]" not in message
    invalid = next(i for i in snap.invalid if i.kind == "TCPRoute")
    assert "spec.rules[0].backendRefs" in invalid.error
    assert "spec.rules[1].backendRefs[0].port" in invalid.error
