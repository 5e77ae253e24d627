"""`gatewaylb run` end to end: manifests in a watched directory, the agent as a
real process in the lab's node namespace, real TCP/UDP clients and backends.

Each test starts its own agent on its own manifest directory and removes the
agent's kernel state afterwards (`gatewaylb cleanup`).  Bounds are generous;
measured figures are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nftables
import pytest

from agent.lab import Lab, vip4
from agent.lab.netns import exec_argv

pytestmark = pytest.mark.root

PORT = 8080
VIP = vip4(10)
METRICS = "127.0.0.1:19469"


# -- manifests ------------------------------------------------------------------------


def gateway_yaml(listeners: str, vip: str = VIP, name: str = "demo") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: GatewayClass
        metadata: {{name: gatewaylb}}
        spec: {{controllerName: gatewaylb.io/agent}}
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {{name: {name}, namespace: default}}
        spec:
          gatewayClassName: gatewaylb
          addresses: [{{value: "{vip}"}}]
          listeners:
        """
    ) + textwrap.indent(textwrap.dedent(listeners), "  ")


def service_yaml(name: str, endpoints: dict[str, str]) -> str:
    """endpoints: ip -> "ready" | "terminating" | "unready"."""
    conds = {
        "ready": "{ready: true}",
        "terminating": "{ready: false, serving: true, terminating: true}",
        "unready": "{ready: false}",
    }
    eps = "\n".join(
        f"  - {{addresses: [{ip}], conditions: {conds[state]}}}" for ip, state in endpoints.items()
    )
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}, namespace: default}}
        spec:
          ports:
          - {{name: tcp, protocol: TCP, port: 80, targetPort: {PORT}}}
          - {{name: udp, protocol: UDP, port: 80, targetPort: {PORT}}}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: {name}-1
          namespace: default
          labels: {{kubernetes.io/service-name: {name}}}
        addressType: IPv4
        ports:
        - {{name: tcp, protocol: TCP, port: {PORT}}}
        - {{name: udp, protocol: UDP, port: {PORT}}}
        endpoints:
        """
    ) + (eps + "\n" if eps else "  []\n")


def route_yaml(kind: str, name: str, section: str, backends: dict[str, int]) -> str:
    refs = "\n".join(f"    - {{name: {svc}, port: 80, weight: {w}}}" for svc, w in backends.items())
    return (
        textwrap.dedent(
            f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: {kind}
        metadata: {{name: {name}, namespace: default}}
        spec:
          parentRefs: [{{name: demo, sectionName: {section}}}]
          rules:
          - backendRefs:
        """
        )
        + refs
        + "\n"
    )


L4_LISTENERS = """\
- {name: tcp, protocol: TCP, port: 80}
- {name: udp, protocol: UDP, port: 80}
"""


def write(path: Path, text: str) -> None:
    """Write as an editor that saves by rename would: no half file is ever seen."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def basic_manifests(directory: Path, lab: Lab) -> None:
    write(directory / "gateway.yaml", gateway_yaml(L4_LISTENERS))
    write(directory / "blue.yaml", service_yaml("blue", {lab.backends[0].ip4: "ready"}))
    write(directory / "green.yaml", service_yaml("green", {lab.backends[1].ip4: "ready"}))
    write(directory / "tcp.yaml", route_yaml("TCPRoute", "tcp", "tcp", {"blue": 1, "green": 1}))
    write(directory / "udp.yaml", route_yaml("UDPRoute", "udp", "udp", {"blue": 1}))


# -- traffic ----------------------------------------------------------------------------


def tcp_ask(addr: str, port: int, timeout: float = 1.0) -> str:
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.sendall(b"hi\n")
            return s.recv(200).decode().split()[0]
    except ConnectionRefusedError:
        return "refused"
    except (TimeoutError, OSError) as exc:
        return f"error:{type(exc).__name__}"


def tcp_many(addr: str, port: int, n: int) -> Counter[str]:
    return Counter(tcp_ask(addr, port) for _ in range(n))


def udp_ask(addr: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        try:
            s.connect((addr, port))
            s.send(b"hi")
            return s.recv(200).decode().split()[0]
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Seconds until pred() held; fails the test on timeout."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - t0


def nft_rule_count(lab: Lab) -> int:
    def count() -> int:
        nft = nftables.Nftables()
        nft.set_json_output(True)
        rc, out, _ = nft.json_cmd({"nftables": [{"list": {"ruleset": None}}]})
        assert rc == 0
        return sum(1 for item in out["nftables"] if "rule" in item)

    return lab.call(lab.node, count)


# -- the agent process ---------------------------------------------------------------------


class Plane:
    """A dataplane mode with the options that keep its kernel state private to
    this run (eBPF: a bpf filesystem of our own, no cgroup-wide socket hooks)."""

    def __init__(self, mode: str, bpffs: Path | None) -> None:
        self.mode = mode
        self.bpffs = bpffs

    def args(self) -> list[str]:
        if self.mode != "ebpf":
            return ["--dataplane", self.mode]
        assert self.bpffs is not None
        pin = str(self.bpffs / "gatewaylb")
        return ["--dataplane", "ebpf", "--bpf-pin-dir", pin, "--cgroup-path", "none"]

    def cleanup_args(self) -> list[str]:
        return self.args()[2:]


class AgentProcess:
    def __init__(
        self, lab: Lab, plane: Plane, manifests: Path, status_file: Path, log: Path
    ) -> None:
        self.lab, self.plane, self.manifests = lab, plane, manifests
        self.status_file, self.log = status_file, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--manifests",
            str(self.manifests),
            *self.plane.args(),
            "--metrics-address",
            METRICS,
            "--status-file",
            str(self.status_file),
            "--run-dir",
            str(self.status_file.parent / "run"),
        ]
        logf = self.log.open("ab")
        self.proc = self.lab.popen(self.lab.node, argv, stdout=logf, stderr=logf)
        logf.close()
        wait_for(lambda: self.readyz() == 200, 20)

    def readyz(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"agent exited with {self.proc.returncode}:\n{self.log.read_text()}"
            )
        return self.lab.call(self.lab.node, http_get, f"http://{METRICS}/readyz")[0]

    def metrics(self) -> str:
        code, body = self.lab.call(self.lab.node, http_get, f"http://{METRICS}/metrics")
        assert code == 200
        return body

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_file.read_text())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)


def gatewaylb(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = exec_argv(lab.node.ns, [sys.executable, "-m", "agent", *args])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(backends=3) as lab:
        for b in lab.backends:
            lab.start_echo(b, tcp=PORT, udp=PORT)
        yield lab


@pytest.fixture(scope="module", params=["nftables", "ebpf"])
def plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Plane]:
    mode = str(request.param)
    if mode == "nftables":
        yield Plane(mode, None)
        return
    bpffs = tmp_path_factory.mktemp("bpffs")
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    try:
        yield Plane(mode, bpffs)
    finally:
        subprocess.run(["umount", str(bpffs)], check=False)


@pytest.fixture()
def agent(lab: Lab, plane: Plane, tmp_path: Path) -> Iterator[AgentProcess]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    log = tmp_path / "agent.log"
    proc = AgentProcess(lab, plane, manifests, tmp_path / "status.json", log)
    yield proc
    if proc.alive():
        proc.stop()
    result = gatewaylb(lab, "cleanup", *plane.cleanup_args(), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr


def plane_pin_args(plane: Plane) -> list[str]:
    return ["--bpf-pin-dir", str(plane.bpffs / "gatewaylb")] if plane.bpffs else []


def frontend_status(agent: AgentProcess, kind: str, name: str) -> dict[str, Any]:
    for obj in agent.status()["objects"]:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return dict(obj["status"])
    raise AssertionError(f"{kind} {name} has no status")


def condition(conds: list[dict[str, Any]], type_: str) -> tuple[str, str]:
    c = next(c for c in conds if c["type"] == type_)
    return c["status"], c["reason"]


# -- tests --------------------------------------------------------------------------------------


def test_tcp_and_udp_flow_and_status_metrics_readyz(lab: Lab, agent: AgentProcess) -> None:
    basic_manifests(agent.manifests, lab)
    agent.start()
    got = lab.call(lab.client, tcp_many, VIP, 80, 200)
    print(f"\n200 TCP connections at weights 1:1: {dict(got)}")
    assert set(got) == {"be1", "be2"} and 60 <= got["be1"] <= 140
    assert lab.call(lab.client, udp_ask, VIP, 80) == "be1"

    gw = frontend_status(agent, "Gateway", "demo")
    assert condition(gw["conditions"], "Programmed") == ("True", "Programmed")
    assert gw["addresses"] == [{"type": "IPAddress", "value": VIP}]
    metrics = agent.metrics()
    assert f'gatewaylb_info{{dataplane="{agent.plane.mode}"' in metrics
    line = next(
        ln
        for ln in metrics.splitlines()
        if ln.startswith("gatewaylb_backend_connections_total{")
        and 'listener="tcp"' in ln
        and f'backend_ip="{lab.backends[0].ip4}"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) == got["be1"]
    assert "gatewaylb_frontends_programmed 2.0" in metrics

    pin = plane_pin_args(agent.plane)
    result = gatewaylb(lab, "status", "-o", "json", *pin)
    assert result.returncode == 0, result.stderr
    frontends = json.loads(result.stdout)["frontends"]
    assert {(f["vip"], f["protocol"], f["port"]) for f in frontends} == {
        (VIP, "tcp", 80),
        (VIP, "udp", 80),
    }


def test_route_edit_converges_quickly(lab: Lab, agent: AgentProcess) -> None:
    basic_manifests(agent.manifests, lab)
    agent.start()
    assert lab.call(lab.client, tcp_ask, VIP, 80) in {"be1", "be2"}
    t0 = time.monotonic()
    write(agent.manifests / "tcp.yaml", route_yaml("TCPRoute", "tcp", "tcp", {"green": 1}))
    took = wait_for(
        lambda: lab.call(lab.client, tcp_many, VIP, 80, 10) == Counter(be2=10), timeout=5
    )
    print(f"\nroute edit converged in {time.monotonic() - t0:.3f}s (poll step included)")
    assert took < 1.0
    # Weight 0 takes no new flow.
    write(
        agent.manifests / "tcp.yaml", route_yaml("TCPRoute", "tcp", "tcp", {"green": 0, "blue": 1})
    )
    wait_for(lambda: lab.call(lab.client, tcp_many, VIP, 80, 20) == Counter(be1=20), timeout=5)


def test_established_connection_survives_backend_terminating(lab: Lab, agent: AgentProcess) -> None:
    basic_manifests(agent.manifests, lab)
    write(agent.manifests / "tcp.yaml", route_yaml("TCPRoute", "tcp", "tcp", {"blue": 1}))
    agent.start()

    def open_conn() -> socket.socket:
        s = socket.create_connection((VIP, 80), timeout=2)
        s.sendall(b"hi\n")
        assert s.recv(100).split()[0] == b"be1"
        return s

    conn = lab.call(lab.client, open_conn)
    try:
        # be1 terminates (serving), be3 takes new flows.
        write(
            agent.manifests / "blue.yaml",
            service_yaml(
                "blue", {lab.backends[0].ip4: "terminating", lab.backends[2].ip4: "ready"}
            ),
        )
        wait_for(lambda: lab.call(lab.client, tcp_many, VIP, 80, 10) == Counter(be3=10), timeout=5)

        def still_works(s: socket.socket) -> bytes:
            s.sendall(b"again\n")
            return s.recv(100).split()[0]

        assert lab.call(lab.client, still_works, conn) == b"be1"
    finally:
        conn.close()


def test_kill_and_restart_keeps_connections_rules_and_counters(
    lab: Lab, agent: AgentProcess
) -> None:
    basic_manifests(agent.manifests, lab)
    agent.start()
    lab.call(lab.client, tcp_many, VIP, 80, 50)
    rules_before = nft_rule_count(lab)

    def connections_total() -> float:
        return sum(
            float(ln.rsplit(" ", 1)[1])
            for ln in agent.metrics().splitlines()
            if ln.startswith("gatewaylb_backend_connections_total{")
        )

    before = connections_total()
    conn = lab.call(lab.client, socket.create_connection, (VIP, 80), 2)
    try:
        agent.stop(signal.SIGKILL)
        # Traffic flows with no agent at all.
        assert set(lab.call(lab.client, tcp_many, VIP, 80, 10)) <= {"be1", "be2"}
        agent.start()
        assert nft_rule_count(lab) == rules_before, "restart must adopt, not duplicate"

        def talk(s: socket.socket) -> bytes:
            s.sendall(b"after restart\n")
            return s.recv(100)

        assert lab.call(lab.client, talk, conn).split()[0] in {b"be1", b"be2"}
    finally:
        conn.close()
    # 50 before the kill + 10 while it was down + 1 kept connection.
    after = connections_total()
    print(f"\nbackend connections before kill {before}, after restart {after}")
    assert after >= before + 10


def test_bad_input_is_reported_and_valid_vips_keep_working(lab: Lab, agent: AgentProcess) -> None:
    basic_manifests(agent.manifests, lab)
    agent.start()
    assert lab.call(lab.client, tcp_ask, VIP, 80) in {"be1", "be2"}
    syncs_text = agent.status_file.read_text()
    # A half-written file (a broken YAML document) must not remove anything.
    (agent.manifests / "tcp.yaml").write_text("apiVersion: gateway.networking.k8s.io/v1\nkind: [\n")
    write(
        agent.manifests / "bad-gateways.yaml",
        gateway_yaml("- {name: tcp, protocol: TCP, port: 81}\n", vip="not-an-ip", name="bad-vip")
        + "---\n"
        + gateway_yaml("- {name: tcp, protocol: TCP, port: 70000}\n", vip=vip4(11), name="bad-port")
        + "---\n"
        + route_yaml("TCPRoute", "bad-route", "tcp", {"blue": 1}).replace("port: 80", "port: 0"),
    )
    wait_for(lambda: agent.status_file.read_text() != syncs_text, timeout=5)
    assert agent.alive()
    assert set(lab.call(lab.client, tcp_many, VIP, 80, 20)) <= {"be1", "be2"}
    bad_vip = frontend_status(agent, "Gateway", "bad-vip")
    assert condition(bad_vip["conditions"], "Accepted") == ("False", "UnsupportedAddress")
    bad_port = frontend_status(agent, "Gateway", "bad-port")
    status, reason = condition(bad_port["conditions"], "Accepted")
    assert (status, reason) == ("False", "Invalid")
    assert "spec.listeners[0].port" in next(
        c["message"] for c in bad_port["conditions"] if c["type"] == "Accepted"
    )
    bad_route = frontend_status(agent, "TCPRoute", "bad-route")
    accepted = bad_route["parents"][0]["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue")
    assert "backendRefs[0].port" in accepted["message"]
    log = agent.log.read_text()
    assert "tcp.yaml:3" in log, "the broken file is named with its line"
    # Fixing the file converges again.
    write(agent.manifests / "tcp.yaml", route_yaml("TCPRoute", "tcp", "tcp", {"green": 1}))
    wait_for(lambda: lab.call(lab.client, tcp_many, VIP, 80, 10) == Counter(be2=10), timeout=5)


def test_ten_thousand_routes(lab: Lab, agent: AgentProcess) -> None:
    n = 10_000
    listeners = "".join(f"- {{name: l{i}, protocol: TCP, port: {10000 + i}}}\n" for i in range(64))
    docs = []
    per_gateway = 64
    for g in range(n // per_gateway + 1):
        docs.append(
            gateway_yaml(listeners, vip=f"10.99.{1 + g // 250}.{1 + g % 250}", name=f"gw{g}").split(
                "---\n", 1
            )[1]
        )
    routes = []
    for i in range(n):
        g, li = divmod(i, per_gateway)
        routes.append(
            textwrap.dedent(
                f"""\
                apiVersion: gateway.networking.k8s.io/v1
                kind: TCPRoute
                metadata: {{name: r{i}, namespace: default}}
                spec:
                  parentRefs: [{{name: gw{g}, sectionName: l{li}}}]
                  rules: [{{backendRefs: [{{name: blue, port: 80}}]}}]
                """
            )
        )
    write(agent.manifests / "class.yaml", gateway_yaml(L4_LISTENERS).split("---\n", 1)[0])
    write(agent.manifests / "gateways.yaml", "---\n".join(docs))
    write(agent.manifests / "routes.yaml", "---\n".join(routes))
    write(agent.manifests / "blue.yaml", service_yaml("blue", {lab.backends[0].ip4: "ready"}))
    t0 = time.monotonic()
    agent.start()
    took = time.monotonic() - t0
    print(f"\n10k routes: agent start to ready (parse, translate, program) {took:.2f}s")
    metrics = agent.metrics()
    programmed = next(
        ln for ln in metrics.splitlines() if ln.startswith("gatewaylb_frontends_programmed ")
    )
    # 157 Gateways x 64 listeners: every listener is a frontend (routes or not).
    assert float(programmed.split()[1]) == (n // per_gateway + 1) * per_gateway
    assert lab.call(lab.client, tcp_ask, "10.99.1.1", 10000) == "be1"
    assert lab.call(lab.client, tcp_ask, "10.99.1.40", 10063) == "be1"


def test_cleanup_removes_every_table(lab: Lab, agent: AgentProcess) -> None:
    basic_manifests(agent.manifests, lab)
    agent.start()
    agent.stop()
    assert lab.call(lab.client, tcp_ask, VIP, 80) in {"be1", "be2"}, "SIGTERM keeps the dataplane"
    for _ in range(2):  # safe to run twice
        result = gatewaylb(lab, "cleanup", *agent.plane.cleanup_args())
        assert result.returncode == 0, result.stderr
    listing = subprocess.run(
        ["ip", "netns", "exec", lab.node.ns, "nft", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "gatewaylb" not in listing
    filters = subprocess.run(
        ["tc", "-n", lab.node.ns, "filter", "show", "dev", "vc0", "ingress"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert "gatewaylb" not in filters
    assert lab.call(lab.client, tcp_ask, VIP, 80).startswith(("error", "refused"))


HTTP_PORT = 9080


def http_route_yaml() -> str:
    return textwrap.dedent(
        """\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: web, namespace: default}
        spec:
          parentRefs: [{name: demo, sectionName: http}]
          hostnames: [shop.example.com]
          rules:
          - matches: [{path: {type: PathPrefix, value: /api}}]
            backendRefs: [{name: web-api, port: 80}]
          - backendRefs: [{name: web-front, port: 80}]
        """
    )


def http_service_yaml(name: str, ip: str) -> str:
    return (
        service_yaml(name, {ip: "ready"})
        .replace(f"port: {PORT}", f"port: {HTTP_PORT}")
        .replace(f"targetPort: {PORT}", f"targetPort: {HTTP_PORT}")
    )


def http_get_json(url: str, host: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_http_route_beside_l4_listeners_on_one_vip(lab: Lab, agent: AgentProcess) -> None:
    for be in lab.backends[:2]:
        lab.popen(
            be,
            [
                sys.executable,
                "-m",
                "agent.lab.httpecho",
                "--name",
                be.role,
                "--port",
                str(HTTP_PORT),
            ],
        )
    basic_manifests(agent.manifests, lab)
    listeners = L4_LISTENERS + "- {name: http, protocol: HTTP, port: 8000}\n"
    write(agent.manifests / "gateway.yaml", gateway_yaml(listeners))
    write(agent.manifests / "web-api.yaml", http_service_yaml("web-api", lab.backends[0].ip4))
    write(agent.manifests / "web-front.yaml", http_service_yaml("web-front", lab.backends[1].ip4))
    write(agent.manifests / "web.yaml", http_route_yaml())
    agent.start()

    def routed(path: str) -> tuple[int, str]:
        code, body = http_get_json(f"http://{VIP}:8000{path}", "shop.example.com")
        return code, str(body.get("name", ""))

    wait_for(lambda: lab.call(lab.client, routed, "/api/x") == (200, "be1"), timeout=10)
    assert lab.call(lab.client, routed, "/") == (200, "be2")
    assert lab.call(lab.client, http_get_json, f"http://{VIP}:8000/", "other.example.com")[0] == 404
    # The L4 listeners of the same Gateway and VIP keep working beside the proxy.
    assert set(lab.call(lab.client, tcp_many, VIP, 80, 20)) <= {"be1", "be2"}
    assert lab.call(lab.client, udp_ask, VIP, 80) == "be1"
    route = frontend_status(agent, "HTTPRoute", "web")
    assert condition(route["parents"][0]["conditions"], "Accepted") == ("True", "Accepted")
    # A route edit is applied by a hitless reload.
    write(agent.manifests / "web.yaml", http_route_yaml().replace("value: /api", "value: /v2"))
    wait_for(lambda: lab.call(lab.client, routed, "/v2/x") == (200, "be1"), timeout=10)
    assert lab.call(lab.client, routed, "/api/x") == (200, "be2")


def test_listener_set_l4_listeners_carry_traffic_on_the_gateway_vip(
    lab: Lab, agent: AgentProcess
) -> None:
    """A ListenerSet's TCP and UDP listeners are kernel frontends on its
    Gateway's VIP; removing the ListenerSet removes them."""
    gateway = gateway_yaml(L4_LISTENERS).replace(
        "  listeners:\n", "  allowedListeners: {namespaces: {from: Same}}\n  listeners:\n"
    )
    write(agent.manifests / "gateway.yaml", gateway)
    write(agent.manifests / "blue.yaml", service_yaml("blue", {lab.backends[0].ip4: "ready"}))
    write(agent.manifests / "green.yaml", service_yaml("green", {lab.backends[1].ip4: "ready"}))
    write(
        agent.manifests / "team.yaml",
        textwrap.dedent(
            """\
            apiVersion: gateway.networking.k8s.io/v1
            kind: ListenerSet
            metadata: {name: team, namespace: default}
            spec:
              parentRef: {name: demo}
              listeners:
              - {name: db, protocol: TCP, port: 5432}
              - {name: dns, protocol: UDP, port: 5353}
              - {name: clash, protocol: TCP, port: 80}
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: TCPRoute
            metadata: {name: db, namespace: default}
            spec:
              parentRefs: [{kind: ListenerSet, name: team, sectionName: db}]
              rules: [{backendRefs: [{name: green, port: 80}]}]
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: UDPRoute
            metadata: {name: dns, namespace: default}
            spec:
              parentRefs: [{kind: ListenerSet, name: team, sectionName: dns}]
              rules: [{backendRefs: [{name: green, port: 80}]}]
            """
        ),
    )
    write(agent.manifests / "tcp.yaml", route_yaml("TCPRoute", "tcp", "tcp", {"blue": 1}))
    agent.start()
    assert lab.call(lab.client, tcp_many, VIP, 5432, 20) == Counter({"be2": 20})
    assert lab.call(lab.client, udp_ask, VIP, 5353) == "be2"
    # The Gateway's own TCP listener on port 80 keeps its port.
    assert lab.call(lab.client, tcp_many, VIP, 80, 20) == Counter({"be1": 20})

    st = frontend_status(agent, "ListenerSet", "team")
    assert condition(st["conditions"], "Accepted") == ("True", "ListenersNotValid")
    clash = next(ls for ls in st["listeners"] if ls["name"] == "clash")
    assert condition(clash["conditions"], "Conflicted") == ("True", "ProtocolConflict")
    assert frontend_status(agent, "Gateway", "demo")["attachedListenerSets"] == 1
    assert 'listener="default/team/db"' in agent.metrics()

    (agent.manifests / "team.yaml").unlink()
    wait_for(lambda: lab.call(lab.client, tcp_ask, VIP, 5432) == "refused", 10)
    assert lab.call(lab.client, tcp_ask, VIP, 80) == "be1"
