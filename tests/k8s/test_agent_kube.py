"""The agent against a real kube-apiserver: the DaemonSet's service account,
objects created through the API, traffic in a lab, status read back from the
API server, Lease-elected status writing.

The API server listens on the host's loopback; each agent runs in a lab node
namespace and reaches it through a loopback relay (relay.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane
from relay import LoopbackRelay

from agent.lab import Lab, vip4
from agent.lab.echo import ask_tcp

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "daemonset"
NS = "gatewaylb-system"
APP = "shop"
PORT = 8080
VIP = vip4(30)
GW = "gateway.networking.k8s.io/v1"


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - t0


def deploy_objects() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for name in (
        "namespace.yaml",
        "rbac.yaml",
        "gatewayclass.yaml",
        "metrics-service.yaml",
        "daemonset.yaml",
    ):
        objs.extend(d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d)
    return objs


def udp_ask(addr: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        try:
            s.sendto(b"hi", (addr, port))
            return s.recv(100).decode().split()[0]
        except OSError as exc:
            return f"error:{type(exc).__name__}"


def service(name: str, namespace: str = APP) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ports": [
                {"name": "tcp", "protocol": "TCP", "port": 80, "targetPort": PORT},
                {"name": "udp", "protocol": "UDP", "port": 80, "targetPort": PORT},
            ]
        },
    }


def slice_(name: str, ips: list[str], namespace: str = APP) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "tcp", "protocol": "TCP", "port": PORT},
            {"name": "udp", "protocol": "UDP", "port": PORT},
        ],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


def gateway() -> dict[str, Any]:
    return {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": APP},
        "spec": {
            "gatewayClassName": "gatewaylb",
            "addresses": [{"value": VIP}],
            "listeners": [
                {"name": "tcp", "protocol": "TCP", "port": 80},
                {"name": "udp", "protocol": "UDP", "port": 80},
                {"name": "cross", "protocol": "TCP", "port": 81},
            ],
        },
    }


def l4_route(
    kind: str, name: str, section: str, backend: str, namespace: str | None = None
) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": backend, "port": 80}
    if namespace:
        ref["namespace"] = namespace
    return {
        "apiVersion": GW,
        "kind": kind,
        "metadata": {"name": name, "namespace": APP},
        "spec": {
            "parentRefs": [{"name": "edge", "sectionName": section}],
            "rules": [{"backendRefs": [ref]}],
        },
    }


class KubeAgent:
    """`gatewaylb run --kubeconfig` as the DaemonSet's ServiceAccount, in a lab node."""

    def __init__(
        self,
        cp: ControlPlane,
        lab: Lab,
        tmp: Path,
        node: str,
        metrics_port: int,
        *,
        admin: bool = False,
        lease_namespace: str = NS,
    ) -> None:
        self.cp, self.lab, self.node = cp, lab, node
        self.metrics = f"127.0.0.1:{metrics_port}"
        self.lease_namespace = lease_namespace
        self.relay = LoopbackRelay(lab, lambda: cp.port)
        if admin:
            config = json.loads(cp.kubeconfig.read_text())
        else:
            token = cp.token_for(NS, "gatewaylb")
            path = cp.kubeconfig_for_token(token, tmp / f"{node}.kubeconfig")
            config = json.loads(path.read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{self.relay.port}"
        self.kubeconfig = tmp / f"{node}.kubeconfig"
        self.kubeconfig.write_text(json.dumps(config))
        self.log = tmp / f"{node}.log"
        self.run_dir = tmp / f"{node}-run"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            sys.executable, "-m", "agent", "run",
            "--kubeconfig", str(self.kubeconfig),
            "--node-name", self.node,
            "--lease-namespace", self.lease_namespace,
            "--dataplane", "nftables",
            "--metrics-address", self.metrics,
            "--run-dir", str(self.run_dir),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = self.lab.popen(self.lab.node, argv, stdout=log, stderr=log)
        wait_for(self.ready, 60)

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent {self.node} exited:\n{self.log.read_text()}")

        def get() -> int:
            try:
                with urllib.request.urlopen(f"http://{self.metrics}/readyz", timeout=2) as r:
                    return int(r.status)
            except OSError:
                return 0

        return self.lab.call(self.lab.node, get) == 200

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.lab.node.ns}", "--", sys.executable, "-m",
             "agent", "cleanup", "--run-dir", str(self.run_dir), "--cgroup-path", "none"],
            capture_output=True, check=False,
        )  # fmt: skip
        self.relay.close()


@pytest.fixture(scope="module")
def setup(controlplane: ControlPlane) -> Iterator[ControlPlane]:
    for obj in deploy_objects():
        if obj["kind"] != "DaemonSet":
            controlplane.apply(obj)
    controlplane.ensure_namespace(APP)
    controlplane.ensure_namespace("backends")
    yield controlplane


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(backends=3) as lab:
        for b in lab.backends:
            lab.start_echo(b, tcp=PORT, udp=PORT)
        yield lab


@pytest.fixture()
def agent(setup: ControlPlane, lab: Lab, tmp_path: Path) -> Iterator[KubeAgent]:
    a = KubeAgent(setup, lab, tmp_path, "node-a", 19471)
    yield a
    a.close()


def get(cp: ControlPlane, kind_path: str) -> dict[str, Any]:
    status, body = cp.request("GET", kind_path)
    assert status == 200, body
    return dict(body)


def condition(conds: list[dict[str, Any]], type_: str) -> tuple[str, str]:
    c = next(c for c in conds if c["type"] == type_)
    return c["status"], c["reason"]


# -- tests ----------------------------------------------------------------------------


def test_deploy_manifests_pass_a_server_side_dry_run(setup: ControlPlane) -> None:
    for obj in deploy_objects():
        path = setup.object_path(obj)
        status, body = setup.request(
            "PATCH",
            path,
            obj,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": "dry-run-test", "force": "true", "dryRun": "All"},
        )
        assert status in (200, 201), (
            obj["kind"],
            body.get("message") if isinstance(body, dict) else body,
        )


def test_agent_programs_objects_from_the_api_and_writes_their_status(
    setup: ControlPlane, lab: Lab, agent: KubeAgent
) -> None:
    cp = setup
    be1, be2, be3 = (b.ip4 for b in lab.backends)
    for obj in (
        service("blue"),
        slice_("blue", [be1]),
        gateway(),
        l4_route("TCPRoute", "tcp", "tcp", "blue"),
        l4_route("UDPRoute", "udp", "udp", "blue"),
    ):
        cp.apply(obj)
    agent.start()
    wait_for(lambda: lab.call(lab.client, ask_tcp, VIP, 80) == "be1", 20)
    assert lab.call(lab.client, udp_ask, VIP, 80) == "be1"

    gw_path = f"/apis/{GW}/namespaces/{APP}/gateways/edge"
    wait_for(
        lambda: (
            "conditions" in (get(cp, gw_path).get("status") or {})
            and condition(get(cp, gw_path)["status"]["conditions"], "Programmed")
            == ("True", "Programmed")
        ),
        20,
    )
    gw = get(cp, gw_path)["status"]
    assert gw["addresses"] == [{"type": "IPAddress", "value": VIP}]
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in gw["conditions"])
    route = get(cp, f"/apis/{GW}/namespaces/{APP}/tcproutes/tcp")["status"]["parents"][0]
    assert route["controllerName"] == "gatewaylb.io/agent"
    assert condition(route["conditions"], "Accepted") == ("True", "Accepted")
    gc = get(cp, f"/apis/{GW}/gatewayclasses/gatewaylb")["status"]
    assert condition(gc["conditions"], "Accepted") == ("True", "Accepted")

    # Scaling the EndpointSlice converges.
    cp.apply(slice_("blue", [be1, be2]))
    wait_for(
        lambda: {lab.call(lab.client, ask_tcp, VIP, 80) for _ in range(20)} == {"be1", "be2"}, 20
    )
    # Objects whose status did not change keep it through later syncs (the
    # writer skips them; it must not mistake them for routes that left us).
    udp_parents = get(cp, f"/apis/{GW}/namespaces/{APP}/udproutes/udp")["status"]["parents"]
    assert [p["controllerName"] for p in udp_parents] == ["gatewaylb.io/agent"]
    # Editing the route converges.
    cp.apply(service("green"))
    cp.apply(slice_("green", [be3]))
    cp.apply(l4_route("TCPRoute", "tcp", "tcp", "green"))
    wait_for(lambda: lab.call(lab.client, ask_tcp, VIP, 80) == "be3", 20)
    # Deleting the Service: its share is refused and the route says why.
    status, _ = cp.request("DELETE", f"/api/v1/namespaces/{APP}/services/green")
    assert status == 200
    wait_for(lambda: lab.call(lab.client, ask_tcp, VIP, 80).startswith("error"), 20)

    def backend_not_found() -> bool:
        parents = get(cp, f"/apis/{GW}/namespaces/{APP}/tcproutes/tcp")["status"]["parents"]
        return condition(parents[0]["conditions"], "ResolvedRefs") == ("False", "BackendNotFound")

    wait_for(backend_not_found, 20)


def test_reference_grant_switches_a_cross_namespace_backend_on_and_off(
    setup: ControlPlane, lab: Lab, agent: KubeAgent
) -> None:
    cp = setup
    be3 = lab.backends[2].ip4
    cp.apply(gateway())
    cp.apply(service("vault", namespace="backends"))
    cp.apply(slice_("vault", [be3], namespace="backends"))
    cp.apply(l4_route("TCPRoute", "cross", "cross", "vault", namespace="backends"))
    agent.start()
    route_path = f"/apis/{GW}/namespaces/{APP}/tcproutes/cross"

    def resolved() -> tuple[str, str]:
        parents = (get(cp, route_path).get("status") or {}).get("parents") or [
            {"conditions": [{"type": "ResolvedRefs", "status": "?", "reason": "?"}]}
        ]
        return condition(parents[0]["conditions"], "ResolvedRefs")

    wait_for(lambda: resolved() == ("False", "RefNotPermitted"), 20)
    assert lab.call(lab.client, ask_tcp, VIP, 81).startswith("error")
    grant = {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "shop-to-vault", "namespace": "backends"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute", "namespace": APP}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    cp.apply(grant)
    took = wait_for(lambda: lab.call(lab.client, ask_tcp, VIP, 81) == "be3", 20)
    print(f"\nReferenceGrant created: traffic after {took:.2f}s")
    wait_for(lambda: resolved() == ("True", "ResolvedRefs"), 20)
    status, _ = cp.request(
        "DELETE",
        "/apis/gateway.networking.k8s.io/v1beta1/namespaces/backends/referencegrants/shop-to-vault",
    )
    assert status == 200
    wait_for(lambda: lab.call(lab.client, ask_tcp, VIP, 81).startswith("error"), 20)
    wait_for(lambda: resolved() == ("False", "RefNotPermitted"), 20)


def test_only_the_lease_holder_writes_status_and_a_survivor_takes_over(
    setup: ControlPlane, lab: Lab, tmp_path: Path
) -> None:
    cp = setup
    cp.apply(gateway())
    cp.apply(service("blue"))
    cp.apply(l4_route("TCPRoute", "tcp", "tcp", "blue"))
    with Lab(backends=1) as lab_b:
        a = KubeAgent(cp, lab, tmp_path, "node-a", 19472)
        b = KubeAgent(cp, lab_b, tmp_path, "node-b", 19473)
        try:
            a.start()
            b.start()
            lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/gatewaylb-status"
            wait_for(lambda: cp.request("GET", lease_path)[0] == 200, 20)
            holder = get(cp, lease_path)["spec"]["holderIdentity"]
            assert holder in ("node-a", "node-b")
            leader, follower = (a, b) if holder == "node-a" else (b, a)
            # Both program their nodes.
            assert (
                lab.call(lab.client, ask_tcp, VIP, 80) != "" and follower.ready() and leader.ready()
            )
            assert "event=lease_acquired" in leader.log.read_text()
            assert "event=lease_acquired" not in follower.log.read_text()
            leader.kill()
            t0 = time.monotonic()
            wait_for(lambda: get(cp, lease_path)["spec"]["holderIdentity"] == follower.node, 30)
            took = time.monotonic() - t0
            print(f"\nstatus writer failover after {took:.1f}s (lease duration 15s)")
            assert took < 25
            # The new writer really writes: a fresh route gets its status.
            cp.apply(l4_route("TCPRoute", "tcp-after-failover", "tcp", "blue"))
            path = f"/apis/{GW}/namespaces/{APP}/tcproutes/tcp-after-failover"
            wait_for(lambda: bool((get(cp, path).get("status") or {}).get("parents")), 20)
        finally:
            a.close()
            b.close()


def test_api_server_restart_keeps_traffic_flowing_and_later_changes_converge(
    setup: ControlPlane, lab: Lab, agent: KubeAgent
) -> None:
    cp = setup
    be1, be2 = lab.backends[0].ip4, lab.backends[1].ip4
    for obj in (
        service("blue"),
        slice_("blue", [be1]),
        gateway(),
        l4_route("TCPRoute", "tcp", "tcp", "blue"),
    ):
        cp.apply(obj)
    agent.start()
    wait_for(lambda: lab.call(lab.client, ask_tcp, VIP, 80) == "be1", 20)

    answers: list[str] = []
    stop = threading.Event()

    def steady() -> None:
        while not stop.is_set():
            answers.append(ask_tcp(VIP, 80))
            time.sleep(0.02)

    client = threading.Thread(target=lab.call, args=(lab.client, steady), daemon=True)
    client.start()
    try:
        t0 = time.monotonic()
        cp.restart_apiserver()  # down for its whole restart; the agent runs on its last state
        down = time.monotonic() - t0
        cp.apply(slice_("blue", [be2]))
        took = wait_for(lambda: "be2" in answers[-5:], 90)
    finally:
        stop.set()
        client.join(10)
    failed = [a for a in answers if a not in ("be1", "be2")]
    print(
        f"\nAPI server down {down:.1f}s: {len(answers)} connections, {len(failed)} failed; "
        f"a change after the restart converged in {took:.1f}s"
    )
    assert not failed, failed[:5]


def test_bad_input_through_the_api_is_reported_and_the_agent_keeps_serving(
    setup: ControlPlane, lab: Lab, agent: KubeAgent
) -> None:
    """Objects the API server accepts but that make no sense, a big object, and
    1k routes on one listener: each gets its status; valid VIPs keep working."""
    cp = setup
    be1 = lab.backends[0].ip4
    for obj in (
        service("blue"),
        slice_("blue", [be1]),
        gateway(),
        l4_route("TCPRoute", "tcp", "tcp", "blue"),
    ):
        cp.apply(obj)
    odd = gateway()
    odd["metadata"]["name"] = "odd"
    odd["spec"]["addresses"] = [{"value": vip4(31)}]
    odd["spec"]["listeners"] = [
        {"name": "sctp", "protocol": "SCTP", "port": 80},  # valid syntax, unsupported
        {"name": "tcp-a", "protocol": "TCP", "port": 90},
        {"name": "http-a", "protocol": "HTTP", "port": 90},  # conflicts with tcp-a
    ] + [
        {"name": f"pad{i}", "protocol": "UDP", "port": 1000 + i} for i in range(61)
    ]  # 64 listeners
    cp.apply(odd)
    # Earlier tests' route on "cross" would be older than ghost: start without it.
    cp.request("DELETE", f"/apis/{GW}/namespaces/{APP}/tcproutes/cross")
    # On listener "cross", created before the crowd below: the oldest, so it is
    # the one that carries (here: refuses) the listener's traffic.
    ghost = l4_route("TCPRoute", "ghost", "cross", "no-such-service")
    cp.apply(ghost)
    # creationTimestamp has one-second resolution and ties go by name
    # ("crowd..." < "ghost"): the crowd must be created in a later second.
    time.sleep(1.1)
    agent.start()
    crowd = [l4_route("TCPRoute", f"crowd{i}", "cross", "blue") for i in range(1000)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(cp.apply, crowd))
    gw_path = f"/apis/{GW}/namespaces/{APP}/gateways"

    def listener(gateway_name: str, name: str) -> dict[str, Any]:
        status = get(cp, f"{gw_path}/{gateway_name}").get("status") or {}
        return next((ls for ls in status.get("listeners") or [] if ls["name"] == name), {})

    wait_for(lambda: listener("edge", "cross").get("attachedRoutes") == 1001, 60)
    assert condition(listener("odd", "sctp")["conditions"], "Accepted") == (
        "False",
        "UnsupportedProtocol",
    )
    assert condition(listener("odd", "tcp-a")["conditions"], "Conflicted") == (
        "True",
        "ProtocolConflict",
    )
    odd_status = get(cp, f"{gw_path}/odd")["status"]
    assert condition(odd_status["conditions"], "Accepted") == ("True", "ListenersNotValid")
    ghost_status = get(cp, f"/apis/{GW}/namespaces/{APP}/tcproutes/ghost")["status"]["parents"][0]
    assert condition(ghost_status["conditions"], "ResolvedRefs") == ("False", "BackendNotFound")
    # Only the oldest route of "cross" (ghost) carries traffic: refused, never
    # handed to the crowd's backends; the other listener is untouched.
    assert lab.call(lab.client, ask_tcp, VIP, 81).startswith("error")
    assert lab.call(lab.client, ask_tcp, VIP, 80) == "be1"
    assert agent.proc is not None and agent.proc.poll() is None


def test_what_this_node_cannot_serve_is_an_event_and_a_status(
    setup: ControlPlane, lab: Lab, agent: KubeAgent
) -> None:
    """A regex the API server and Python accept but HAProxy's PCRE use refuses
    (a verbose-mode flag): the rule is left out, the route says PartiallyInvalid,
    and the node tells which rule in a Warning Event on the route."""
    cp = setup
    web = gateway()
    web["metadata"]["name"] = "web"
    web["spec"]["addresses"] = [{"value": vip4(32)}]
    web["spec"]["listeners"] = [{"name": "http", "protocol": "HTTP", "port": 8000}]
    cp.apply(web)
    cp.apply(service("blue"))
    route = {
        "apiVersion": GW,
        "kind": "HTTPRoute",
        "metadata": {"name": "weird", "namespace": APP},
        "spec": {
            "parentRefs": [{"name": "web"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "RegularExpression", "value": "(?x) /api"}}],
                    "backendRefs": [{"name": "blue", "port": 80}],
                },
                {"backendRefs": [{"name": "blue", "port": 80}]},
            ],
        },
    }
    cp.apply(route)
    agent.start()
    path = f"/apis/{GW}/namespaces/{APP}/httproutes/weird"

    def partially_invalid() -> bool:
        parents = (get(cp, path).get("status") or {}).get("parents") or []
        conds = parents[0]["conditions"] if parents else []
        return any(c["type"] == "PartiallyInvalid" and c["status"] == "True" for c in conds)

    wait_for(partially_invalid, 30)

    def event() -> dict[str, Any] | None:
        items = get(cp, f"/apis/events.k8s.io/v1/namespaces/{APP}/events")["items"]
        return next(
            (
                e
                for e in items
                if e["regarding"]["name"] == "weird" and e["reason"] == "NotServedByProxy"
            ),
            None,
        )

    wait_for(lambda: event() is not None, 30)
    found = event()
    assert found is not None
    assert found["type"] == "Warning" and found["reportingInstance"] == "node-a"
    assert "rule 0" in found["note"] and "node node-a" in found["note"]


def test_gateway_without_address_gets_one_from_the_pool_and_keeps_it_across_restarts(
    setup: ControlPlane, lab: Lab, agent: KubeAgent
) -> None:
    cp = setup
    pool = [vip4(40), vip4(41), vip4(42)]
    cp.apply({
        "apiVersion": "gatewaylb.io/v1alpha1",
        "kind": "GatewayLBConfig",
        "metadata": {"name": "lab-pools"},
        "spec": {"addressPools": [{"name": "lab", "addresses": [f"{pool[0]}-{pool[-1]}"]}]},
    })  # fmt: skip
    cp.apply({
        "apiVersion": GW,
        "kind": "GatewayClass",
        "metadata": {"name": "pooled"},
        "spec": {
            "controllerName": "gatewaylb.io/agent",
            "parametersRef": {"group": "gatewaylb.io", "kind": "GatewayLBConfig",
                              "name": "lab-pools"},
        },
    })  # fmt: skip
    cp.apply(service("blue"))
    cp.apply(slice_("blue", [lab.backends[0].ip4]))

    def pooled_gateway(name: str) -> dict[str, Any]:
        return {
            "apiVersion": GW,
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": APP},
            "spec": {
                "gatewayClassName": "pooled",
                "listeners": [{"name": "tcp", "protocol": "TCP", "port": 7000}],
            },
        }

    def route(gateway: str) -> dict[str, Any]:
        r = l4_route("TCPRoute", f"{gateway}-tcp", "tcp", "blue")
        r["spec"]["parentRefs"] = [{"name": gateway, "sectionName": "tcp"}]
        return r

    for name in ("pool-a", "pool-b"):
        cp.apply(pooled_gateway(name))
        cp.apply(route(name))
    agent.start()

    def addresses(name: str) -> list[str]:
        st = get(cp, f"/apis/{GW}/namespaces/{APP}/gateways/{name}").get("status") or {}
        return [a["value"] for a in st.get("addresses") or []]

    wait_for(lambda: bool(addresses("pool-a")) and bool(addresses("pool-b")), 20)
    a, b = addresses("pool-a"), addresses("pool-b")
    assert len(a) == len(b) == 1 and a != b and {a[0], b[0]} <= set(pool), (a, b)
    # The assigned address carries traffic.
    wait_for(lambda: lab.call(lab.client, ask_tcp, a[0], 7000) == "be1", 20)

    # Three addresses: a third Gateway fits, a fourth does not.
    for name in ("pool-c", "pool-d"):
        cp.apply(pooled_gateway(name))

    def programmed(name: str) -> tuple[str, str]:
        # The API server defaults a new Gateway's status to Unknown/Pending.
        st = get(cp, f"/apis/{GW}/namespaces/{APP}/gateways/{name}").get("status") or {}
        return condition(st["conditions"], "Programmed") if st.get("conditions") else ("", "")

    wait_for(lambda: all(programmed(n)[0] in ("True", "False") for n in ("pool-c", "pool-d")), 20)
    verdicts = sorted([programmed("pool-c"), programmed("pool-d")])
    assert verdicts == [("False", "AddressNotAssigned"), ("True", "Programmed")], verdicts

    # A restarted agent (and any other agent) reads the same assignment.
    agent.kill()
    agent.start()
    time.sleep(1)
    assert (addresses("pool-a"), addresses("pool-b")) == (a, b)
    wait_for(lambda: lab.call(lab.client, ask_tcp, a[0], 7000) == "be1", 20)
    for name in ("pool-a", "pool-b", "pool-c", "pool-d"):
        cp.request("DELETE", f"/apis/{GW}/namespaces/{APP}/gateways/{name}")


def test_without_its_lease_namespace_the_agent_serves_and_says_once_why_nobody_writes_status(
    setup: ControlPlane, lab: Lab, tmp_path: Path
) -> None:
    cp = setup
    lease_ns = "glb-lease-later"
    vip = vip4(40)
    gw = gateway()
    gw["metadata"]["name"] = "lease-probe"
    gw["spec"]["addresses"] = [{"value": vip}]
    gw["spec"]["listeners"] = [{"name": "tcp", "protocol": "TCP", "port": 80}]
    route = l4_route("TCPRoute", "lease-probe", "tcp", "blue")
    route["spec"]["parentRefs"] = [{"name": "lease-probe", "sectionName": "tcp"}]
    for obj in (service("blue"), slice_("blue", [lab.backends[0].ip4]), gw, route):
        cp.apply(obj)
    gw_path = f"/apis/{GW}/namespaces/{APP}/gateways/lease-probe"
    agent = KubeAgent(cp, lab, tmp_path, "node-l", 19473, admin=True, lease_namespace=lease_ns)
    try:
        agent.start()
        wait_for(lambda: lab.call(lab.client, ask_tcp, vip, 80) == "be1", 20)

        def metrics() -> str:
            def fetch() -> str:
                with urllib.request.urlopen(f"http://{agent.metrics}/metrics", timeout=2) as r:
                    return str(r.read().decode())

            return str(lab.call(lab.node, fetch))

        blocked = 'gatewaylb_status_writer{reason="LeaseNamespaceMissing",state="blocked"} 1.0'
        wait_for(lambda: blocked in metrics(), 20)
        time.sleep(11)  # two more renew periods: still said once
        said = [ln for ln in agent.log.read_text().splitlines() if "status_writer_blocked" in ln]
        print("\n" + "\n".join(said))
        assert len(said) == 1 and "level=error" in said[0], said
        assert f"kubectl create namespace {lease_ns}" in said[0]
        assert "--lease-namespace" in said[0]
        assert "conditions" not in (get(cp, gw_path).get("status") or {}) or all(
            c["reason"] == "Pending" for c in get(cp, gw_path)["status"]["conditions"]
        )
        shown = subprocess.run(
            ["nsenter", f"--net=/run/netns/{lab.node.ns}", "--", sys.executable, "-m", "agent",
             "status", "--metrics-address", agent.metrics],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "status writer: blocked (LeaseNamespaceMissing)" in shown.stdout, shown.stdout

        cp.ensure_namespace(lease_ns)
        wait_for(
            lambda: (
                condition(
                    (get(cp, gw_path).get("status") or {}).get("conditions")
                    or [{"type": "Programmed", "status": "", "reason": ""}],
                    "Programmed",
                )
                == ("True", "Programmed")
            ),
            30,
        )
        assert "event=status_writer_unblocked" in agent.log.read_text()
        assert 'gatewaylb_status_writer{reason="",state="leader"} 1.0' in metrics()
    finally:
        agent.close()
        for path in (gw_path, f"/apis/{GW}/namespaces/{APP}/tcproutes/lease-probe"):
            cp.request("DELETE", path)
