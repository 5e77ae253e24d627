"""Hostile input against a running agent, with good routes probed throughout.

One agent (nftables dataplane, a watched manifest directory) serves a good
Gateway: a TCP listener and an HTTP listener through HAProxy.  A prober in the
client namespace asks both every 50 ms for the whole module.  Each test plants
one hostile input, waits until the agent has said something about it (the
file, the object and the field named), takes the input away again, and then
checks: the agent is alive and healthy, its memory stayed under a bound, and
not one good probe failed meanwhile.  Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.lab import Lab, vip4
from agent.lab.echo import ask_tcp
from tests.e2e.test_agent import (
    METRICS,
    AgentProcess,
    Plane,
    http_get,
    service_yaml,
    wait_for,
    write,
)

pytestmark = pytest.mark.root

VIP = vip4(20)
PORT = 8080  # the echo backends (TCP)
HTTP_BACKEND = 9080
RSS_BOUND_MB = 600  # an idle agent with one Gateway: ~120 MB
TAKEN_PORT = 8090  # held by another process of the node


GOOD = textwrap.dedent(
    f"""\
    apiVersion: gateway.networking.k8s.io/v1
    kind: GatewayClass
    metadata: {{name: gatewaylb}}
    spec: {{controllerName: gatewaylb.io/agent}}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {{name: good, namespace: default}}
    spec:
      gatewayClassName: gatewaylb
      addresses: [{{value: "{VIP}"}}]
      listeners:
      - {{name: tcp, protocol: TCP, port: 80}}
      - {{name: http, protocol: HTTP, port: 8000}}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: TCPRoute
    metadata: {{name: tcp, namespace: default}}
    spec:
      parentRefs: [{{name: good, sectionName: tcp}}]
      rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: web, namespace: default}}
    spec:
      parentRefs: [{{name: good, sectionName: http}}]
      rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
    """
)


@dataclass
class Env:
    lab: Lab
    agent: AgentProcess
    manifests: Path
    probes: Path

    def log(self) -> str:
        return self.agent.log.read_text(errors="replace")

    def said(self, *parts: str) -> Callable[[], bool]:
        """A predicate: some log line holds every part."""
        return lambda: any(all(p in line for p in parts) for line in self.log().splitlines())

    def rss_mb(self) -> float:
        assert self.agent.proc is not None
        for line in Path(f"/proc/{self.agent.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def failed_probes(self, since: float) -> list[dict[str, object]]:
        out = []
        for line in self.probes.read_text().splitlines():
            try:
                probe = json.loads(line)
            except ValueError:
                continue  # the line being written
            if probe["t"] >= since and not probe["ok"]:
                out.append(probe)
        return out

    def probe_count(self, since: float) -> int:
        return sum(
            1
            for line in self.probes.read_text().splitlines()
            if line.endswith("}") and json.loads(line)["t"] >= since
        )

    def healthy(self) -> None:
        assert self.agent.alive(), self.log()[-3000:]
        code, body = self.lab.call(self.lab.node, http_get, f"http://{METRICS}/healthz")
        assert code == 200, body

    def haproxy_config(self) -> str:
        return (self.agent.status_file.parent / "run" / "proxy" / "haproxy.cfg").read_text()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("hostile")
    manifests = tmp / "manifests"
    manifests.mkdir()
    with Lab(backends=2) as lab:
        for be in lab.backends:
            lab.start_echo(be, tcp=PORT, udp=PORT)
            lab.popen(
                be,
                [
                    sys.executable,
                    "-m",
                    "agent.lab.httpecho",
                    "--name",
                    be.role,
                    "--port",
                    str(HTTP_BACKEND),
                ],
            )
        write(manifests / "good.yaml", GOOD)
        write(manifests / "echo.yaml", service_yaml("echo", {lab.backends[0].ip4: "ready"}))
        web = service_yaml("web", {lab.backends[1].ip4: "ready"})
        web = web.replace(f"port: {PORT}", f"port: {HTTP_BACKEND}")
        write(
            manifests / "web.yaml",
            web.replace(f"targetPort: {PORT}", f"targetPort: {HTTP_BACKEND}"),
        )
        agent = AgentProcess(
            lab, Plane("nftables", None), manifests, tmp / "status.json", tmp / "agent.log"
        )
        agent.start()
        probes = tmp / "probes.jsonl"
        with probes.open("wb") as out:
            prober = lab.popen(
                lab.client,
                [
                    sys.executable,
                    "-m",
                    "agent.lab.prober",
                    "--tcp",
                    f"{VIP}:80",
                    "--http",
                    f"http://{VIP}:8000/",
                    "--every",
                    "0.05",
                ],
                stdout=out,
            )
        e = Env(lab, agent, manifests, probes)
        wait_for(lambda: e.probe_count(0) >= 4 and not e.failed_probes(time.time() - 0.2), 10)
        try:
            yield e
        finally:
            prober.kill()
            if agent.alive():
                agent.stop()
            subprocess.run(
                [sys.executable, "-m", "agent", "cleanup", "--run-dir", str(tmp / "run")],
                capture_output=True,
                check=False,
            )


def case(env: Env, plant: Callable[[], None], *said: str, timeout: float = 20) -> float:
    """Plant hostile input, wait until the agent names it; the seconds that took."""
    t0 = time.time()
    plant()
    wait_for(env.said(*said), timeout)
    return time.time() - t0


def settle(env: Env, since: float, what: str) -> None:
    time.sleep(0.5)  # the removal's own sync
    env.healthy()
    rss = env.rss_mb()
    failed = env.failed_probes(since)
    probes = env.probe_count(since)
    print(f"\n{what}: {probes} good probes, {len(failed)} failed, agent RSS {rss:.0f} MB")
    assert failed == [], failed[:5]
    assert rss < RSS_BOUND_MB


def test_a_json_bomb_is_one_message_not_a_crash(env: Env) -> None:
    since = time.time()
    bomb = env.manifests / "bomb.json"
    case(env, lambda: bomb.write_text("[" * 1000 + "]" * 1000), "bomb.json", "nested too deeply")
    bomb.unlink()
    settle(env, since, "JSON nested 1000 deep")


def test_devices_fifos_and_dangling_links_are_named_and_never_read(env: Env) -> None:
    since = time.time()
    zero, fifo, dangling = (env.manifests / n for n in ("zero.yaml", "fifo.yaml", "gone.yaml"))
    case(env, lambda: zero.symlink_to("/dev/zero"), "zero.yaml", "character device")
    case(env, lambda: os.mkfifo(fifo), "fifo.yaml", "FIFO")
    case(env, lambda: dangling.symlink_to(env.manifests / "nowhere.yaml"), "gone.yaml")
    for path in (zero, fifo, dangling):
        path.unlink()
    settle(env, since, "/dev/zero, a FIFO, a dangling link")


def test_a_file_name_cannot_forge_a_log_line(env: Env) -> None:
    since = time.time()
    name = "x\nts=2026-01-01T00:00:00Z level=info logger=gatewaylb.agent event=FORGED.yaml"
    forged = env.manifests / name
    case(env, lambda: forged.write_text("[unclosed"), "event=FORGED")
    lines = env.log().splitlines()
    assert not [ln for ln in lines if ln.startswith("ts=2026-01-01")]
    assert all(ln.startswith("ts=") for ln in lines if "FORGED" in ln)
    forged.unlink()
    settle(env, since, "a file name with a newline")


def test_a_flood_of_junk_documents_is_said_once_in_bounded_lines(env: Env) -> None:
    since = time.time()
    junk = env.manifests / "junk.yaml"
    case(env, lambda: junk.write_text("---\n{}\n" * 100_000), "event=log_truncated")
    said = [ln for ln in env.log().splitlines() if "junk.yaml" in ln]
    print(f"\n100k junk documents: {len(said)} log lines name the file")
    assert len(said) <= 101
    junk.unlink()
    settle(env, since, "100k junk documents")


def test_billion_laughs_and_over_limit_files_are_refused(env: Env) -> None:
    since = time.time()
    laughs = env.manifests / "laughs.yaml"
    lol = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i, prev in zip("bcdefghi", "abcdefgh", strict=True):
        lol.append(f"{i}: &{i} [{', '.join(['*' + prev] * 9)}]")
    took = case(env, lambda: laughs.write_text("\n".join(lol) + "\n"), "laughs.yaml")
    big = env.manifests / "big.yaml"
    case(env, lambda: big.write_bytes(b"# padding\n" * (4 << 20)), "big.yaml", "larger than")
    print(f"\nbillion laughs said in {took:.2f} s")
    laughs.unlink()
    big.unlink()
    settle(env, since, "billion laughs, a 40 MB file")


def test_injection_through_a_header_is_refused_with_the_field(env: Env) -> None:
    since = time.time()
    route = env.manifests / "inject.yaml"
    text = textwrap.dedent(
        """\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: inject, namespace: default}
        spec:
          parentRefs: [{name: good, sectionName: http}]
          rules:
          - matches: [{headers: [{name: x, value: "a\\r\\n    http-request deny"}]}]
            backendRefs: [{name: web, port: 80}]
        """
    )
    case(env, lambda: write(route, text), "object='default/inject'", "headers[0].value")
    assert "http-request deny" not in env.haproxy_config()
    route.unlink()
    settle(env, since, "a header value with CR LF")


def test_malformed_endpoints_and_secrets_are_said_not_hidden(env: Env) -> None:
    since = time.time()
    slice_ = service_yaml("broken", {"10.20.0.11": "ready"}).replace(
        "addresses: [10.20.0.11]", 'addresses: ["10.20.0.11:9000 backup"]'
    )
    secret = textwrap.dedent(
        """\
        apiVersion: v1
        kind: Secret
        metadata: {name: cert, namespace: default}
        type: kubernetes.io/tls
        data: {tls.crt: "not base64!", tls.key: "eA=="}
        """
    )
    case(
        env,
        lambda: write(env.manifests / "broken.yaml", slice_),
        "kind=EndpointSlice",
        "invalid IP address",
    )
    case(env, lambda: write(env.manifests / "cert.yaml", secret), "kind=Secret", "base64")
    (env.manifests / "broken.yaml").unlink()
    (env.manifests / "cert.yaml").unlink()
    settle(env, since, "a bad endpoint address, a non-base64 Secret")


def test_a_vip_on_a_hosts_address_is_refused(env: Env) -> None:
    since = time.time()
    hijack = GOOD.split("---\n")[1].replace("name: good", "name: hijack")
    hijack = hijack.replace(VIP, env.lab.backends[0].ip4)
    case(
        env,
        lambda: write(env.manifests / "hijack.yaml", hijack),
        "object='default/hijack'",
        "AddressNotUsable",
    )
    (env.manifests / "hijack.yaml").unlink()
    settle(env, since, "a VIP on an endpoint's address")


def test_a_listener_whose_port_is_taken_is_left_out_alone(env: Env) -> None:
    since = time.time()
    holder = env.lab.popen(
        env.lab.node,
        [sys.executable, "-c", "import socket,time\ns=socket.socket()\n"
         f"s.bind(('0.0.0.0',{TAKEN_PORT})); s.listen(); time.sleep(600)"],
    )  # fmt: skip
    try:
        time.sleep(0.3)
        taken = GOOD.split("---\n")[1].replace("name: good", "name: taken")
        taken = taken.replace("port: 8000", f"port: {TAKEN_PORT}")
        taken = taken.replace(VIP, vip4(21))
        case(
            env,
            lambda: write(env.manifests / "taken.yaml", taken),
            "object='default/taken'",
            "PortUnavailable",
        )
        (env.manifests / "taken.yaml").unlink()
    finally:
        holder.kill()
        holder.wait()
    settle(env, since, f"an HTTP listener on a port another process holds ({TAKEN_PORT})")


def test_an_amplification_bomb_never_holds_an_unrelated_change_back(env: Env) -> None:
    since = time.time()
    headers = ", ".join(f"{{name: h{i}, value: v{i}}}" for i in range(16))
    matches = ", ".join(f"{{path: {{value: /p{i}}}, headers: [{headers}]}}" for i in range(8))
    rule = f"{{matches: [{matches}], backendRefs: [{{name: web, port: 80}}]}}"
    spec = (
        f"&S {{parentRefs: [{{name: good, sectionName: http}}], rules: [{', '.join([rule] * 16)}]}}"
    )
    items = [
        f"- {{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, "
        f"metadata: {{name: bomb{i}, namespace: default}}, spec: {spec if i == 0 else '*S'}}}"
        for i in range(64)
    ]
    bomb = "apiVersion: v1\nkind: List\nitems:\n" + "\n".join(items) + "\n"
    write(env.manifests / "bomb.yaml", bomb)
    time.sleep(1.0)
    # An unrelated TCP Gateway and route, added while the bomb is being dealt with.
    other = GOOD.split("---\n")[1].replace("name: good", "name: other").replace(VIP, vip4(22))
    route = GOOD.split("---\n")[2].replace("name: good", "name: other")
    other += "---\n" + route.replace("{name: tcp, namespace", "{name: other-tcp, namespace")
    t0 = time.time()
    write(env.manifests / "other.yaml", other)
    wait_for(lambda: env.lab.call(env.lab.client, ask_tcp, vip4(22), 80, 0.5) == "be1", 30)
    took = time.time() - t0
    print(f"\nan unrelated TCP route was served {took:.2f} s after it was written, bomb present")
    assert took < 10
    wait_for(env.said("object='default/bomb"), 30)
    size = len(env.haproxy_config())
    print(f"rendered HAProxy config with the bomb: {size / 1e6:.1f} MB")
    (env.manifests / "bomb.yaml").unlink()
    (env.manifests / "other.yaml").unlink()
    settle(env, since, "64 HTTPRoutes of 16x8x16 matches through one YAML anchor")


def test_a_half_saved_file_at_restart_keeps_the_good_routes(env: Env) -> None:
    since = time.time()
    env.agent.stop()
    good = env.manifests / "good.yaml"
    good.write_text(GOOD[: len(GOOD) // 2] + "  - {name: broken")  # an editor died mid-save
    env.agent.start()
    wait_for(env.said("event=manifest_from_cache", "good.yaml"), 10)
    status = env.agent.status()
    names = {o["metadata"]["name"] for o in status["objects"] if o["kind"] == "Gateway"}
    assert "good" in names, names
    write(good, GOOD)
    settle(env, since, "a restart with the Gateway's file half saved")
