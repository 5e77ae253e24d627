"""The whole agent announcing VIPs on a bare-metal lab (agent/lab/fabric.py):
addresses from a GatewayLBConfig pool, `gatewaylb run --announce l2|bgp` on
two nodes, a client that reaches the VIP only through what the nodes announce,
and a node that dies.  Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.lab.fabric import BACKEND4, BACKEND6, BACKEND_PORT, Fabric, Member

pytestmark = pytest.mark.root

POOL4 = "10.77.0.100-10.77.0.103"
POOL6 = "fd00:77::100-fd00:77::103"
PORT = 80


def wait_for(pred: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


def tcp_ask(addr: str, port: int = PORT, timeout: float = 0.3) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((addr, port))
            s.sendall(b"hi\n")
            return s.recv(100).decode().split()[0]
    except OSError as exc:
        return f"error:{type(exc).__name__}"


def manifests(directory: Path, announce: dict[str, Any]) -> None:
    gw = "gateway.networking.k8s.io/v1"
    docs: list[dict[str, Any]] = [
        {"apiVersion": "gatewaylb.io/v1alpha1", "kind": "GatewayLBConfig",
         "metadata": {"name": "fabric"},
         "spec": {"addressPools": [{"name": "lan", "addresses": [POOL4, POOL6]}],
                  "announce": announce}},
        {"apiVersion": gw, "kind": "GatewayClass", "metadata": {"name": "metal"},
         "spec": {"controllerName": "gatewaylb.io/agent",
                  "parametersRef": {"group": "gatewaylb.io", "kind": "GatewayLBConfig",
                                    "name": "fabric"}}},
        {"apiVersion": gw, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
         "spec": {"gatewayClassName": "metal",
                  "addresses": [{"type": "IPAddress"}, {"type": "IPAddress"}],
                  "listeners": [{"name": "tcp", "protocol": "TCP", "port": PORT}]}},
        {"apiVersion": gw, "kind": "TCPRoute", "metadata": {"name": "app", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge"}],
                  "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "default"},
         "spec": {"ports": [{"port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP"}]}},
    ]  # fmt: skip
    for family, address in (("IPv4", BACKEND4), ("IPv6", BACKEND6)):
        docs.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"app-{family.lower()}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": family,
            "ports": [{"port": BACKEND_PORT, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        })  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "all.yaml").write_text(yaml.safe_dump_all(docs))


class Agent:
    def __init__(self, fabric: Fabric, node: Member, tmp: Path, manifests_dir: Path) -> None:
        self.fabric, self.node = fabric, node
        self.dir = tmp / node.role
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "agent.log"
        self.manifests = manifests_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, announce: str) -> None:
        argv = [sys.executable, "-m", "agent", "run", "--manifests", str(self.manifests),
                "--dataplane", "nftables", "--announce", announce,
                "--node-name", self.node.role, "--metrics-address", "127.0.0.1:9469",
                "--run-dir", str(self.dir / "run"),
                "--status-file", str(self.dir / "status.json")]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = self.fabric.popen(self.node, argv, stdout=log, stderr=log)
        wait_for(self.ready, 30, step=0.1)

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent on {self.node.role} exited:\n{self.log.read_text()}")
        return self.fabric.call(self.node, http_get, "/readyz")[0] == 200

    def metrics(self) -> str:
        return str(self.fabric.call(self.node, http_get, "/metrics")[1])

    def vips(self) -> list[str]:
        doc = json.loads((self.dir / "status.json").read_text())
        gw = next(o for o in doc["objects"] if o["kind"] == "Gateway")
        return [a["value"] for a in gw["status"]["addresses"]]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def http_get(path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:9469{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except OSError:
        return 0, ""


def metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#")]  # fmt: skip
    return sum(values)


def neighbour_mac(fabric: Fabric, vip: str) -> str:
    family = "-6" if ":" in vip else "-4"
    out = netns_ip(fabric.client, family, "neigh", "show", vip)
    parts = out.split()
    return parts[parts.index("lladdr") + 1] if "lladdr" in parts else ""


def netns_ip(member: Member, *args: str) -> str:
    from agent.lab import netns

    return netns.ip(*args, ns=member.ns)


def node_mac(role: str) -> str:
    return f"02:77:00:00:00:{10 + int(role.rsplit('-', 1)[1]):02x}"


# -- L2 ---------------------------------------------------------------------------------


@pytest.fixture()
def l2_fabric(tmp_path: Path) -> Iterator[tuple[Fabric, list[Agent]]]:
    with Fabric(nodes=2) as fabric:
        fabric.start_backends()
        manifests(tmp_path / "manifests", {"l2": {"interfaces": ["lan0"]}})
        agents = [Agent(fabric, n, tmp_path, tmp_path / "manifests") for n in fabric.nodes]
        try:
            for a in agents:
                a.start("l2")
            yield fabric, agents
        finally:
            for a in agents:
                a.kill()


@pytest.mark.parametrize("family", [4, 6])
def test_l2_one_node_answers_for_a_pool_vip_and_another_takes_over_when_it_dies(
    l2_fabric: tuple[Fabric, list[Agent]], family: int
) -> None:
    fabric, agents = l2_fabric
    vips = agents[0].vips()
    assert vips == agents[1].vips(), "both agents must derive the same addresses"
    vip = next(v for v in vips if (":" in v) == (family == 6))
    answer = wait_for(lambda: (a := fabric.call(fabric.client, tcp_ask, vip)).startswith("be-")
                      and a, 10)  # fmt: skip
    owner_role = answer.removeprefix("be-")
    assert neighbour_mac(fabric, vip) == node_mac(owner_role)
    # Every VIP has exactly one owner: the nodes' counts add up to the VIPs.
    announced = [metric(a.metrics(), "gatewaylb_announced_vips") for a in agents]
    assert sum(announced) == len(vips), announced

    owner = next(a for a in agents if a.node.role == owner_role)
    survivor = next(a for a in agents if a is not owner)
    t0 = time.monotonic()
    owner.kill()
    fabric.cut(owner.node)
    wait_for(lambda: fabric.call(fabric.client, tcp_ask, vip) == f"be-{survivor.node.role}", 10)
    took = time.monotonic() - t0
    print(f"\nL2 failover IPv{family} through the agent: {took:.2f} s")
    assert took < 3.0
    assert neighbour_mac(fabric, vip) == node_mac(survivor.node.role)
    assert metric(survivor.metrics(), "gatewaylb_l2_ownership_changes") >= 1
