"""The whole agent announcing VIPs on a bare-metal lab (agent/lab/fabric.py):
addresses from a GatewayLBConfig pool, `gatewaylb run --announce l2|bgp` on
two nodes, a client that reaches the VIP only through what the nodes announce,
and a node that dies.  Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import signal
import socket
import struct
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
from bird import NODE_ASN, ROUTER_ASN, bird_config

from agent.lab import Host
from agent.lab import wait_for as lab_wait_for
from agent.lab.echo import ask_tcp
from agent.lab.fabric import BACKEND_PORT, Fabric, backend4, backend6

pytestmark = pytest.mark.root

POOL4 = "10.77.0.100-10.77.0.103"
POOL6 = "fd00:77::100-fd00:77::103"
PORT = 80


def wait_for(pred: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    """The lab's wait_for, polling faster: announcements move in tens of ms."""
    return lab_wait_for(pred, timeout, step=step)


# Short timeout: the tests poll until an announcement moved.
tcp_ask = functools.partial(ask_tcp, port=PORT, timeout=0.3)
UNSERVED = "error:ConnectionRefusedError"


def manifests(
    directory: Path,
    announce: dict[str, Any],
    pools: tuple[str, ...] = (POOL4, POOL6),
    backends: int = 1,
) -> None:
    gw = "gateway.networking.k8s.io/v1"
    docs: list[dict[str, Any]] = [
        {"apiVersion": "gatewaylb.io/v1alpha1", "kind": "GatewayLBConfig",
         "metadata": {"name": "fabric"},
         "spec": {"addressPools": [{"name": "lan", "addresses": list(pools)}],
                  "announce": announce}},
        {"apiVersion": gw, "kind": "GatewayClass", "metadata": {"name": "metal"},
         "spec": {"controllerName": "gatewaylb.io/agent",
                  "parametersRef": {"group": "gatewaylb.io", "kind": "GatewayLBConfig",
                                    "name": "fabric"}}},
        {"apiVersion": gw, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
         "spec": {"gatewayClassName": "metal",
                  "addresses": [{"type": "IPAddress"}] * len(pools),
                  "listeners": [{"name": "tcp", "protocol": "TCP", "port": PORT}]}},
        {"apiVersion": gw, "kind": "TCPRoute", "metadata": {"name": "app", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge"}],
                  "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "default"},
         "spec": {"ports": [{"port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP"}]}},
    ]  # fmt: skip
    all4 = [backend4(j) for j in range(1, backends + 1)]
    all6 = [backend6(j) for j in range(1, backends + 1)]
    for family, addresses in (("IPv4", all4), ("IPv6", all6)):
        docs.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"app-{family.lower()}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": family,
            "ports": [{"port": BACKEND_PORT, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}
                          for address in addresses],
        })  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "all.yaml").write_text(yaml.safe_dump_all(docs))


class Agent:
    def __init__(self, fabric: Fabric, node: Host, tmp: Path, manifests_dir: Path) -> None:
        self.fabric, self.node = fabric, node
        self.dir = tmp / node.role
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "agent.log"
        self.manifests = manifests_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.pin_dir = ""

    def start(self, announce: str, dataplane: str = "nftables", *extra: str) -> None:
        argv = [sys.executable, "-m", "agent", "run", "--manifests", str(self.manifests),
                "--dataplane", dataplane, "--announce", announce,
                "--node-name", self.node.role, "--metrics-address", "127.0.0.1:9469",
                "--run-dir", str(self.dir / "run"),
                "--status-file", str(self.dir / "status.json"), *extra]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = self.fabric.popen(self.node, argv, stdout=log, stderr=log)
        wait_for(self.ready, 60, step=0.1)

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

    def cleanup(self) -> None:
        argv = [sys.executable, "-m", "agent", "cleanup", "--run-dir", str(self.dir / "run"),
                "--cgroup-path", "none"]  # fmt: skip
        if self.pin_dir:
            argv += ["--bpf-pin-dir", self.pin_dir]
        proc = self.fabric.popen(self.node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()


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


def netns_ip(member: Host, *args: str) -> str:
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
    answer = wait_for(
        lambda: (a := fabric.call(fabric.client, tcp_ask, vip)).startswith("be") and a, 10
    )
    owner_role = answer.split("@")[1]
    assert neighbour_mac(fabric, vip) == node_mac(owner_role)
    # A port without a listener is refused by the owner, not sent back onto the LAN.
    assert fabric.call(fabric.client, ask_tcp, vip, PORT + 1, 1.0) == UNSERVED
    # Every VIP has exactly one owner: the nodes' counts add up to the VIPs.
    announced = [metric(a.metrics(), "gatewaylb_announced_vips") for a in agents]
    assert sum(announced) == len(vips), announced

    owner = next(a for a in agents if a.node.role == owner_role)
    survivor = next(a for a in agents if a is not owner)
    t0 = time.monotonic()
    owner.kill()
    fabric.cut(owner.node)
    wait_for(lambda: fabric.call(fabric.client, tcp_ask, vip) == f"be1@{survivor.node.role}", 10)
    took = time.monotonic() - t0
    print(f"\nL2 failover IPv{family} through the agent: {took:.2f} s")
    assert took < 3.0
    assert neighbour_mac(fabric, vip) == node_mac(survivor.node.role)
    assert metric(survivor.metrics(), "gatewaylb_l2_ownership_changes") >= 1


# -- BGP --------------------------------------------------------------------------------

POOL_BGP = "10.66.0.0/29"  # on no link: the router learns it from the nodes only
HOLD = 3
UNKNOWN_PEER = "10.77.0.250"


def router_next_hops(fabric: Fabric, vip: str) -> set[str]:
    out = netns_ip(fabric.router, "route", "show", f"{vip}/32")
    return set(re.findall(r"via (\S+)", out))


def tcp_from(vip: str, sport: int, port: int = PORT) -> str:
    """Ask over a fixed 5-tuple; close with RST so the tuple is free again."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.settimeout(1)
            s.bind(("", sport))
            s.connect((vip, port))
            s.sendall(b"hi\n")
            return s.recv(100).decode().split()[0]
    except OSError as exc:
        return f"error:{type(exc).__name__}"


@pytest.fixture()
def bgp_fabric(tmp_path: Path) -> Iterator[tuple[Fabric, list[Agent]]]:
    if shutil.which("gobgpd") is None or shutil.which("bird") is None:
        pytest.skip("needs gobgpd and bird (Debian gobgpd, bird2; make setup installs them)")
    bpffs = tmp_path / "bpffs"
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    try:
        with Fabric(nodes=2, router=True, backends=3) as fabric:
            fabric.start_backends()
            conf = tmp_path / "bird.conf"
            conf.write_text(bird_config(fabric, hold=HOLD))
            fabric.popen(
                fabric.router,
                ["bird", "-f", "-c", str(conf), "-s", str(tmp_path / "bird.ctl")],
                stderr=(tmp_path / "bird.log").open("ab"),
            )
            bgp = {
                "localASN": NODE_ASN,
                "peers": [{"address": fabric.router.ip4, "asn": ROUTER_ASN,
                           "holdTimeSeconds": HOLD, "keepaliveTimeSeconds": 1},
                          # Nobody answers there: that session stays down, the
                          # other one and the VIP are unaffected.
                          {"address": UNKNOWN_PEER, "asn": ROUTER_ASN}],
            }  # fmt: skip
            manifests(tmp_path / "manifests", {"bgp": bgp}, pools=(POOL_BGP,), backends=3)
            agents = [Agent(fabric, n, tmp_path, tmp_path / "manifests") for n in fabric.nodes]
            try:
                for a in agents:
                    a.pin_dir = str(bpffs / a.node.role)
                    a.start("bgp", "ebpf", "--bpf-pin-dir", a.pin_dir, "--cgroup-path", "none")
                yield fabric, agents
            finally:
                for a in agents:
                    a.kill()
    finally:
        subprocess.run(["umount", str(bpffs)], check=False)


def test_bgp_ecmp_over_two_nodes_with_maglev_and_withdrawal_when_a_node_dies(
    bgp_fabric: tuple[Fabric, list[Agent]],
) -> None:
    fabric, agents = bgp_fabric
    (vip,) = agents[0].vips()
    assert agents[1].vips() == [vip]
    nodes = {n.ip4 for n in fabric.nodes}
    t0 = time.monotonic()
    wait_for(lambda: router_next_hops(fabric, vip) == nodes, 60, step=0.2)
    print(f"\nBGP: router has the VIP over both nodes {time.monotonic() - t0:.1f} s after start")
    for a in agents:
        text = a.metrics()
        assert metric(text, f'gatewaylb_bgp_session_up{{peer="{fabric.router.ip4}"') == 1
        assert metric(text, f'gatewaylb_bgp_session_up{{peer="{UNKNOWN_PEER}"') == 0
        assert f'peer="{UNKNOWN_PEER}"' in text
        assert metric(text, 'gatewaylb_announced_vips{mode="bgp"}') == 1

    sports = range(31000, 31064)
    first = {p: fabric.call(fabric.client, tcp_from, vip, p) for p in sports}
    assert all(a.startswith("be") for a in first.values()), first
    carried = {a.split("@")[1] for a in first.values()}
    assert carried == {"node-1", "node-2"}, "ECMP spreads flows over both nodes"
    assert len({a.split("@")[0] for a in first.values()}) == 3
    # A port without a listener is refused by the node that gets it, never
    # routed back to the router (a loop until the TTL runs out).
    refused = [fabric.call(fabric.client, tcp_from, vip, p, PORT + 1) for p in sports[:8]]
    assert refused == [UNSERVED] * 8, refused

    # An agent restart changes nothing at the router: the new agent adopts the
    # running gobgpd, whose sessions never dropped.
    dead, survivor = agents
    samples: list[set[str]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(router_next_hops(fabric, vip))
            time.sleep(0.02)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        survivor.kill()
        survivor.start("bgp", "ebpf", "--bpf-pin-dir", survivor.pin_dir, "--cgroup-path", "none")
        time.sleep(1)
    finally:
        stop.set()
        watcher.join()
    assert samples and all(hops == nodes for hops in samples), samples
    print(f"BGP: agent restart, router's next hops unchanged over {len(samples)} samples")

    # node-1 dies silently: its agent is gone, its LAN link goes dark, and the
    # router notices only when the hold timer expires.
    dead.kill()
    netns_ip(dead.node, "link", "set", "lan0", "down")
    t0 = time.monotonic()
    wait_for(lambda: router_next_hops(fabric, vip) == {survivor.node.ip4}, HOLD + 3, step=0.05)
    took = time.monotonic() - t0
    print(f"BGP: dead node's route withdrawn after {took:.2f} s (hold time {HOLD} s)")
    assert took <= HOLD + 1.5

    # Every flow now crosses node-2, and Maglev gives each 5-tuple the same
    # backend slot node-1 had chosen: failover moves no flow to another backend.
    second = {p: fabric.call(fabric.client, tcp_from, vip, p) for p in sports}
    assert {a.split("@")[1] for a in second.values()} == {"node-2"}, second
    moved = [p for p in sports if first[p].split("@")[0] != second[p].split("@")[0]]
    assert moved == [], f"flows that changed backend: {moved}"

    # An announced shutdown (`gatewaylb cleanup`) withdraws at once (a Cease,
    # not the hold timer, and no graceful-restart grace).
    survivor.kill()
    t0 = time.monotonic()
    survivor.cleanup()
    wait_for(lambda: router_next_hops(fabric, vip) == set(), 2, step=0.02)
    print(f"BGP: cleanup withdrew the route after {time.monotonic() - t0:.2f} s")
