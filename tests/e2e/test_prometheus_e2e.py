"""The shipped dashboard and alert rules on a real Prometheus scraping two real
agents that carry real traffic.

    client 10.88.0.2 ── router: BIRD (AS 64512), Prometheus on 127.0.0.1:9090
                          │ lan0 10.77.0.1
                 ┌────────┴────────┐
    node-1 10.77.0.11        node-2 10.77.0.12      `gatewaylb run --announce bgp`,
    metrics :9469            metrics :9469           nftables, one manifest directory
       be1, be2                 be1, be2             echo (TCP/UDP 8080), HTTP (8081)

The BGP lab of agent/lab/fabric.py: the router learns the Gateway's VIP from
both nodes and spreads the client's flows over them (ECMP), so both agents
count traffic through a TCP, a UDP and an HTTP listener (the last one runs the
proxy).  Prometheus (Debian's 2.42, started by the test in the router's
namespace) scrapes both agents every second and evaluates the shipped
deploy/observability/alerts.yaml, loaded through one templating step: every
`for:` becomes 1s so that alerts fire within the test; expressions, rate
windows and thresholds are the shipped ones, and the shipped file keeps its
production windows.

The tests share the lab and run in file order: the documented metrics, every
dashboard query and a quiet alert list first, then faults that later tests do
not undo (a Service's endpoints removed, a flood to an unserved port, the BGP
router stopped, an agent killed), each until its alert is firing.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from bird import NODE_ASN, ROUTER_ASN, bird_config
from metrics_contract import ALERTS, concrete, dashboard, documented, queries

from agent.lab import netns
from agent.lab.echo import ask_tcp, ask_udp
from agent.lab.fabric import BACKEND_PORT, Fabric, backend4
from agent.lab.topology import Host
from agent.lab.waiting import wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("prometheus", "gobgpd", "bird")),
        reason="needs prometheus, gobgpd and bird (scripts/setup.sh test installs them)",
    ),
]

POOL = "10.66.0.0/29"  # on no link: the router learns it from the nodes only
HTTP_BACKEND_PORT = 8081
TCP_PORT = UDP_PORT = 80
HTTP_PORT = 8000
UNSERVED_PORT = 9
METRICS_PORT = 9469
PROMETHEUS = "http://127.0.0.1:9090"
SHORT_FOR = "1s"
# Substituted for Grafana's $__rate_interval: long enough to hold the syncs of
# the agents' start (sync duration has no new samples while nothing changes).
RATE_INTERVAL = "2m"

# Documented metrics that this lab cannot show, and why; each is checked to be
# absent, so the list stays true.
NOT_IN_THIS_LAB = {
    "gatewaylb_l2_ownership_changes_total": "--announce l2 only; this lab announces with "
    "BGP (tests/e2e/test_announce_agent.py reads it in an L2 lab)",
}
# Documented labels that Prometheus does not store here because their value is
# empty (an empty label is no label), and why.
EMPTY_HERE = {
    "gatewaylb_status_writer": {"reason": "empty unless the state is blocked"},
}
# Dashboard panels without data in this lab before the faults, and why; their
# queries must still parse, and return nothing.
WITHOUT_BACKEND_PANEL = "Refused: traffic to listeners without a backend"
NO_DATA_HERE = {
    WITHOUT_BACKEND_PANEL: "every listener has a backend until "
    "test_removed_endpoints_... removes one (and checks this panel then)",
    "L2 ownership changes": NOT_IN_THIS_LAB["gatewaylb_l2_ownership_changes_total"],
}


# -- manifests ---------------------------------------------------------------------------


def manifests(app_endpoints: bool, orphan: bool) -> list[dict[str, Any]]:
    gw = "gateway.networking.k8s.io/v1"

    def slice_(name: str, port: int, protocols: tuple[str, ...], ready: bool) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": p.lower(), "port": port, "protocol": p} for p in protocols],
            "endpoints": [{"addresses": [backend4(j)], "conditions": {"ready": True}}
                          for j in (1, 2)] if ready else [],
        }  # fmt: skip

    bgp = {"localASN": NODE_ASN,
           "peers": [{"address": "10.77.0.1", "asn": ROUTER_ASN,
                      "holdTimeSeconds": 3, "keepaliveTimeSeconds": 1}]}  # fmt: skip
    docs = [
        {"apiVersion": "gatewaylb.io/v1alpha1", "kind": "GatewayLBConfig",
         "metadata": {"name": "fabric"},
         "spec": {"addressPools": [{"name": "lan", "addresses": [POOL]}],
                  "announce": {"bgp": bgp}}},
        {"apiVersion": gw, "kind": "GatewayClass", "metadata": {"name": "metal"},
         "spec": {"controllerName": "gatewaylb.io/agent",
                  "parametersRef": {"group": "gatewaylb.io", "kind": "GatewayLBConfig",
                                    "name": "fabric"}}},
        {"apiVersion": gw, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
         "spec": {"gatewayClassName": "metal", "addresses": [{"type": "IPAddress"}],
                  "listeners": [{"name": "tcp", "protocol": "TCP", "port": TCP_PORT},
                                {"name": "udp", "protocol": "UDP", "port": UDP_PORT},
                                {"name": "http", "protocol": "HTTP", "port": HTTP_PORT}]}},
        {"apiVersion": gw, "kind": "TCPRoute", "metadata": {"name": "tcp", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge", "sectionName": "tcp"}],
                  "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}},
        {"apiVersion": gw, "kind": "UDPRoute", "metadata": {"name": "udp", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge", "sectionName": "udp"}],
                  "rules": [{"backendRefs": [{"name": "app", "port": 80}]}]}},
        {"apiVersion": gw, "kind": "HTTPRoute", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge", "sectionName": "http"}],
                  "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": "default"},
         "spec": {"ports": [
             {"name": "tcp", "port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP"},
             {"name": "udp", "port": 80, "targetPort": BACKEND_PORT, "protocol": "UDP"}]}},
        slice_("app", BACKEND_PORT, ("TCP", "UDP"), app_endpoints),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"ports": [{"name": "tcp", "port": 80, "targetPort": HTTP_BACKEND_PORT,
                             "protocol": "TCP"}]}},
        slice_("web", HTTP_BACKEND_PORT, ("TCP",), True),
    ]  # fmt: skip
    if orphan:
        # Rejected (NoMatchingParent): gatewaylb_rejected_objects has a series.
        docs.append(
            {"apiVersion": gw, "kind": "HTTPRoute",
             "metadata": {"name": "orphan", "namespace": "default"},
             "spec": {"parentRefs": [{"name": "edge", "sectionName": "nope"}],
                      "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}
        )  # fmt: skip
    return docs


def write_manifests(directory: Path, app_endpoints: bool = True, orphan: bool = True) -> None:
    tmp = directory / ".all.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(manifests(app_endpoints, orphan)))
    os.replace(tmp, directory / "all.yaml")  # the agent never sees half a file


def shortened_rules(path: Path) -> None:
    """The templating step: the shipped rules with every `for:` at SHORT_FOR."""
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# -- HTTP from inside a namespace ---------------------------------------------------------


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def flood_unserved(addr: str, port: int, count: int, sources: int = 32) -> None:
    """UDP datagrams to a VIP port nobody serves, from `sources` source ports
    (ECMP spreads them over both nodes); each is refused and counted."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
    try:
        for i in range(count):
            socks[i % sources].sendto(b"x", (addr, port))
            if i % 500 == 499:
                time.sleep(0.01)  # leave the node's softirq some air
    finally:
        for s in socks:
            s.close()


class Traffic:
    """Clients in the client namespace asking the TCP, UDP and HTTP listeners
    in a loop, each TCP and UDP ask a new flow, until stopped."""

    def __init__(self, ns: str, vip: str) -> None:
        self.ns, self.vip = ns, vip
        self.answers: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        netns.setns_current_thread(self.ns)
        while not self._stop.is_set():
            tcp = ask_tcp(self.vip, TCP_PORT, 0.5)
            self.answers[("tcp", tcp.split("@")[0])] += 1
            self.answers[("udp", ask_udp(self.vip, UDP_PORT, 0.5).split("@")[0])] += 1
            code, _ = http_get(f"http://{self.vip}:{HTTP_PORT}/", timeout=2)
            self.answers[("http", str(code))] += 1
            self._stop.wait(0.05)

    def served(self, kind: str) -> int:
        return sum(n for (k, a), n in self.answers.items() if k == kind and a.startswith("be"))


# -- the lab -------------------------------------------------------------------------------


@dataclass
class Agent:
    node: Host
    directory: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{self.node.ip4}:{METRICS_PORT}"


@dataclass
class World:
    fabric: Fabric
    tmp: Path
    manifests: Path
    agents: list[Agent]
    bird: subprocess.Popen[bytes]
    prometheus: subprocess.Popen[bytes]
    vip: str
    traffic: Traffic
    t0: float = field(default_factory=time.monotonic)

    def log(self, what: str) -> None:
        print(f"  {time.monotonic() - self.t0:6.1f} s  {what}", flush=True)

    # Prometheus' HTTP API, from the router's namespace.
    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{PROMETHEUS}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        code, body = self.fabric.call(self.fabric.router, http_get, url)
        assert body, f"{url}: no answer ({code})"
        doc: dict[str, Any] = json.loads(body)
        assert doc.get("status") == "success", f"{url}: {code} {doc}"
        return doc

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=promql)["data"]["result"])

    def alerts(self, state: str | None = None) -> list[dict[str, Any]]:
        found = self.api("alerts")["data"]["alerts"]
        return [a for a in found if state is None or a["state"] == state]

    def firing(self, name: str) -> list[dict[str, str]]:
        return [a["labels"] for a in self.alerts("firing") if a["labels"]["alertname"] == name]


def start_http_backends(fabric: Fabric) -> None:
    procs = []
    for be in (b for group in fabric.backends.values() for b in group):
        argv = [sys.executable, "-m", "agent.lab.httpecho", "--name", be.role,
                "--port", str(HTTP_BACKEND_PORT)]  # fmt: skip
        procs.append((be, fabric.popen(be, argv, stdout=subprocess.PIPE)))
    for be, proc in procs:
        assert proc.stdout is not None
        if b"ready" not in proc.stdout.readline():
            raise netns.LabError(f"HTTP backend in {be.ns} did not start")


def start_prometheus(fabric: Fabric, tmp: Path, targets: list[str]) -> subprocess.Popen[bytes]:
    shortened_rules(tmp / "rules.yaml")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yaml")],
        # honor_labels, as the shipped PodMonitor: the metrics' own `namespace` stays.
        "scrape_configs": [{"job_name": "gatewaylb", "honor_labels": True,
                            "static_configs": [{"targets": targets}]}],
    }  # fmt: skip
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}", "--web.listen-address=127.0.0.1:9090",
            "--log.level=warn"]  # fmt: skip
    with (tmp / "prometheus.log").open("ab") as log:
        return fabric.popen(fabric.router, argv, stdout=log, stderr=log)


def start_agent(fabric: Fabric, agent: Agent, manifests_dir: Path) -> None:
    agent.directory.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "agent", "run", "--manifests", str(manifests_dir),
            "--dataplane", "nftables", "--announce", "bgp", "--node-name", agent.node.role,
            "--metrics-address", agent.target, "--run-dir", str(agent.directory / "run"),
            "--status-file", str(agent.directory / "status.json")]  # fmt: skip
    with (agent.directory / "agent.log").open("ab") as log:
        agent.proc = fabric.popen(agent.node, argv, stdout=log, stderr=log)


def agent_ready(fabric: Fabric, agent: Agent) -> bool:
    assert agent.proc is not None
    if agent.proc.poll() is not None:
        log = (agent.directory / "agent.log").read_text()
        raise AssertionError(f"agent on {agent.node.role} exited:\n{log}")
    url = f"http://{agent.target}/readyz"
    return fabric.call(fabric.router, http_get, url)[0] == 200


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("prometheus-e2e")
    t0 = time.monotonic()
    with Fabric(nodes=2, router=True, backends=2) as fabric:
        fabric.start_backends()
        start_http_backends(fabric)
        (tmp / "bird.conf").write_text(bird_config(fabric, graceful_restart=False))
        with (tmp / "bird.log").open("ab") as log:
            bird = fabric.popen(
                fabric.router,
                ["bird", "-f", "-c", str(tmp / "bird.conf"), "-s", str(tmp / "bird.ctl")],
                stdout=log,
                stderr=log,
            )
        agents = [Agent(n, tmp / n.role) for n in fabric.nodes]
        prometheus = start_prometheus(fabric, tmp, [a.target for a in agents])
        manifests_dir = tmp / "manifests"
        manifests_dir.mkdir()
        write_manifests(manifests_dir, orphan=False)
        for a in agents:
            start_agent(fabric, a, manifests_dir)
        try:
            for a in agents:
                wait_for(functools.partial(agent_ready, fabric, a), 60, f"{a.node.role} ready")
            status = json.loads((agents[0].directory / "status.json").read_text())
            gateway = next(o for o in status["objects"] if o["kind"] == "Gateway")
            (vip,) = (a["value"] for a in gateway["status"]["addresses"])
            world = World(
                fabric, tmp, manifests_dir, agents, bird, prometheus, vip,
                Traffic(fabric.client.ns, vip), t0,
            )  # fmt: skip
            world.log(f"lab, agents ready; VIP {vip}")

            def routed_over_both() -> bool:
                out = netns.ip("route", "show", f"{vip}/32", ns=fabric.router.ns)
                return out.count("via") == len(agents)

            wait_for(routed_over_both, 60, "the router's ECMP route to the VIP over both nodes")
            world.log("BGP: the router routes the VIP over both nodes")
            wait_for(
                lambda: fabric.call(fabric.router, http_get, f"{PROMETHEUS}/-/ready")[0] == 200,
                30,
                "Prometheus ready",
            )
            world.traffic.start()
            try:
                # One more sync on both agents once Prometheus scrapes them, so that
                # sync durations have samples in its window (an idle agent adds none).
                wait_for(
                    lambda: len(world.query("up == 1")) == len(agents), 30, "both agents scraped"
                )
                write_manifests(manifests_dir)
                world.log("a route that names no listener added (rejected)")
                yield world
            finally:
                world.traffic.stop()
                print(f"\n  traffic answers: {dict(world.traffic.answers)}")
        finally:
            for a in agents:
                if a.proc is not None and a.proc.poll() is None:
                    a.proc.send_signal(signal.SIGTERM)
            for a in agents:
                if a.proc is not None:
                    try:
                        a.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        a.proc.kill()


def wait_for_alert(world: World, name: str, want: Callable[[list[dict[str, str]]], bool],
                   timeout: float = 30) -> list[dict[str, str]]:  # fmt: skip
    t = time.monotonic()
    firing = wait_for(lambda: (f := world.firing(name)) and want(f) and f, timeout, name)
    world.log(f"{name} firing after {time.monotonic() - t:.1f} s: {firing}")
    return list(firing)


# -- (a) the documented metrics ----------------------------------------------------------------


def test_every_documented_metric_reaches_prometheus_with_its_labels(world: World) -> None:
    targets = {a.target for a in world.agents}

    def scraped_from_both(promql: str) -> bool:
        return {s["metric"]["instance"] for s in world.query(promql)} == targets

    # Traffic counted on both nodes, and the rejected route seen by both.
    wait_for(
        lambda: (
            scraped_from_both("gatewaylb_backend_connections_total > 0")
            and scraped_from_both("gatewaylb_rejected_objects")
        ),
        30,
        "new connections and the rejected route on both agents",
    )
    for metric in documented().values():
        for series_name in metric.series_names():
            found = world.api("series", **{"match[]": series_name})["data"]
            if metric.name in NOT_IN_THIS_LAB:
                assert not found, f"{series_name} is here: drop it from NOT_IN_THIS_LAB"
                continue
            assert {s["instance"] for s in found} == targets, f"{series_name}: {found}"
            empty = set(EMPTY_HERE.get(metric.name, {}))
            for s in found:
                labels = set(s) - {"__name__", "job", "instance", "le"}
                assert labels == metric.labels - empty, f"{series_name}: {s}"
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert {s["metric"]["instance"] for s in world.query(name)} == targets, name
    world.log(f"{len(documented())} documented metrics in Prometheus, from both agents")


# -- (b) the dashboard ----------------------------------------------------------------------


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(s["value"][1]) for s in result]


def test_every_dashboard_query_returns_data_through_prometheus(world: World) -> None:
    board = dashboard()
    titles = {q.panel for q in queries(board)}
    assert set(NO_DATA_HERE) <= titles, "NO_DATA_HERE names a panel the dashboard lacks"
    for q in queries(board):
        result = world.query(concrete(q.expr, RATE_INTERVAL))  # Prometheus parses it, or 400
        finite = [v for v in _values(result) if math.isfinite(v)]
        if q.panel in NO_DATA_HERE:
            assert not result, f"{q.panel!r} has data now: drop it from NO_DATA_HERE"
        else:
            assert finite, f"panel {q.panel!r} query {q.ref}: no data: {q.expr}"
    world.log(f"{len(queries(board))} dashboard queries answered ({len(NO_DATA_HERE)} empty)")


def test_no_alert_is_pending_or_firing_while_all_is_well(world: World) -> None:
    rules = world.api("rules")["data"]["groups"]
    loaded = [r["name"] for g in rules for r in g["rules"]]
    shipped = [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert loaded == shipped
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
    assert world.traffic.served("tcp") and world.traffic.served("udp")
    assert world.traffic.answers[("http", "200")]
    time.sleep(2)  # two more evaluations (for: 1s)
    assert world.alerts() == []


# -- (c) faults and their alerts ----------------------------------------------------------------


def test_removed_endpoints_and_an_unserved_flood_fire_their_alerts(world: World) -> None:
    served = world.traffic.served("tcp")
    write_manifests(world.manifests, app_endpoints=False)
    world.log("the app Service's endpoints removed (traffic keeps coming)")
    wait_for(
        lambda: world.traffic.answers[("tcp", "error:ConnectionRefusedError")] > 5,
        10,
        "TCP connections refused",
    )
    world.fabric.call(world.fabric.client, flood_unserved, world.vip, UNSERVED_PORT, 8000)
    world.log(f"8000 datagrams sent to {world.vip}:{UNSERVED_PORT} (no listener)")

    listeners = wait_for_alert(
        world,
        "GatewayLBListenerWithoutBackends",
        lambda f: {a["listener"] for a in f} == {"tcp", "udp"},
    )
    assert {(a["namespace"], a["gateway"], a["vip"]) for a in listeners} == {
        ("default", "edge", world.vip)
    }
    nodes = {a.node.role for a in world.agents}
    unserved = wait_for_alert(
        world, "GatewayLBUnservedPacketsHigh", lambda f: {a["node"] for a in f} == nodes
    )
    assert {a["instance"] for a in unserved} == {a.target for a in world.agents}
    counted = world.query("gatewaylb_vip_unserved_packets_total")
    world.log(
        f"unserved packets counted: {[(s['metric']['instance'], s['value'][1]) for s in counted]}"
    )
    # The dashboard's panel for it has data now.
    (query,) = (q for q in queries(dashboard()) if q.panel == WITHOUT_BACKEND_PANEL)
    shown = world.query(concrete(query.expr, RATE_INTERVAL))
    assert {s["metric"]["listener"] for s in shown} == {"tcp", "udp"}
    assert world.traffic.served("tcp") - served < 5, "TCP still served after the endpoints went"


def test_a_stopped_bgp_router_fires_bgp_session_down(world: World) -> None:
    world.bird.send_signal(signal.SIGTERM)
    world.bird.wait(10)
    world.log("BIRD stopped")
    down = wait_for_alert(
        world,
        "GatewayLBBGPSessionDown",
        lambda f: {a["node"] for a in f} == {a.node.role for a in world.agents},
    )
    assert {a["peer"] for a in down} == {world.fabric.router.ip4}


def test_a_killed_agent_fires_agent_down(world: World) -> None:
    dead, alive = world.agents
    assert dead.proc is not None
    dead.proc.send_signal(signal.SIGKILL)
    dead.proc.wait(10)
    world.log(f"agent on {dead.node.role} killed")
    (down,) = wait_for_alert(world, "GatewayLBAgentDown", lambda f: len(f) == 1)
    assert (down["node"], down["instance"]) == (dead.node.role, dead.target)
    assert alive.node.role not in {a["node"] for a in world.firing("GatewayLBAgentDown")}

    # Every firing alert's annotations rendered with real labels.
    for alert in world.alerts("firing"):
        for key in ("summary", "description", "runbook"):
            text = alert["annotations"][key]
            assert text and "<no value>" not in text, (alert["labels"], key, text)
    names = sorted({a["labels"]["alertname"] for a in world.alerts("firing")})
    world.log(f"firing at the end: {names}")
