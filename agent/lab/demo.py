"""`gatewaylb demo`: the agent on example manifests, in a throwaway lab.

Builds the standard lab (client, node, two backends running a TCP/UDP echo and
an HTTP echo), runs `gatewaylb run` in the node namespace on a copy of
examples/demo, sends new TCP connections, UDP requests and HTTP requests from
the client to the Gateway's VIP, prints which backend answered how often
against the route weights, and removes everything.  Exit status 0 means every
request was answered, by the backends the routes name, in the proportions the
weights set.  With `keep`, the lab and the agent stay up and the demo prints
how to use them and how to remove them (`gatewaylb cleanup --lab`).

The agent runs in a mount namespace of its own with a bpf filesystem mounted
there for its pins, so nothing of the lab is left on the host's mounts: when
its processes go (end of the demo, or `cleanup --lab` killing what runs in the
lab's namespaces), the pins go with them.  Owns only the lab's namespaces, the
processes it starts and its temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from agent.dataplane.select import resolve_mode
from agent.lab.netns import LabError, exec_argv
from agent.lab.topology import Host, Lab

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"
VIP = "10.99.0.10"
FRONTEND_PORT = 7000
BACKEND_PORT = 8000
METRICS = "127.0.0.1:19470"
HTTP_PORT = 8080
HTTP_BACKEND_PORT = 9000
# Which lab backend plays which Service of examples/demo, and its route weight.
SERVICES = {"be1": ("echo-blue", 3), "be2": ("echo-green", 1)}
REQUESTS = 1000
# 1000 draws at p=0.75: sd ~14; 5 sd either way is far past chance.
TOLERANCE = 0.07
# In the agent's own mount namespace (see the module docstring).
PIN_DIR = "bpffs/gatewaylb"


@dataclass(frozen=True)
class Tally:
    protocol: str
    answers: Counter[str]
    elapsed: float


def _tcp(n: int) -> Tally:
    answers: Counter[str] = Counter()
    t0 = time.monotonic()
    for _ in range(n):
        try:
            with socket.create_connection((VIP, FRONTEND_PORT), timeout=2) as s:
                s.sendall(b"hello\n")
                answers[s.recv(200).decode().split()[0]] += 1
        except OSError as exc:
            answers[f"failed ({type(exc).__name__})"] += 1
    return Tally("TCP", answers, time.monotonic() - t0)


def _udp(n: int) -> Tally:
    answers: Counter[str] = Counter()
    t0 = time.monotonic()
    for _ in range(n):
        # A new socket (new source port) per request: each is a new flow.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            try:
                s.sendto(b"hello", (VIP, FRONTEND_PORT))
                answers[s.recv(200).decode().split()[0]] += 1
            except OSError as exc:
                answers[f"failed ({type(exc).__name__})"] += 1
    return Tally("UDP", answers, time.monotonic() - t0)


def _ephemeral_ports() -> int:
    """How many source ports the kernel draws from (per network namespace)."""
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(high) - int(low) + 1


def _http_tally(n: int) -> Tally:
    answers: Counter[str] = Counter()
    t0 = time.monotonic()
    for _ in range(n):
        code, body = _http(f"http://{VIP}:{HTTP_PORT}/")
        answers[json.loads(body)["name"] if code == 200 else f"failed (HTTP {code})"] += 1
    return Tally("HTTP", answers, time.monotonic() - t0)


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:
        return 0, str(exc)


def _report(tally: Tally, via: str = "") -> bool:
    total_weight = sum(w for _, w in SERVICES.values())
    port = HTTP_PORT if tally.protocol == "HTTP" else FRONTEND_PORT
    what = {
        "TCP": "new connections",
        "UDP": "requests, each from a new socket,",
        "HTTP": "requests",
    }[tally.protocol]
    click.echo(
        f"\n{tally.protocol}: {sum(tally.answers.values())} {what} to {VIP}:{port} "
        f"in {tally.elapsed:.2f}s{' (' + via + ')' if via else ''}"
    )
    click.echo(f"  {'backend':<28} {'answers':>8} {'share':>7} {'weight share':>13}")
    ok = True
    for role, (service, weight) in SERVICES.items():
        got = tally.answers.get(role, 0)
        share = got / REQUESTS
        want = weight / total_weight
        within = abs(share - want) <= TOLERANCE
        ok &= within
        mark = "ok" if within else "OFF"
        click.echo(
            f"  {service + ' (' + role + ')':<28} {got:>8} {share:>7.1%} {want:>12.1%}  {mark}"
        )
    for other, count in sorted(tally.answers.items()):
        if other not in SERVICES:
            ok = False
            click.echo(f"  {other:<28} {count:>8}   <- not a backend of the route")
    return ok


def _gatewaylb() -> list[str]:
    """The `gatewaylb` command of this installation, by absolute path (the
    printed command lines must work from any directory)."""
    script = Path(sys.executable).with_name("gatewaylb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def _agent_argv(tmp: Path, mode: str) -> list[str]:
    """Every flag the demo's agent runs with."""
    return [
        *_gatewaylb(),
        "run",
        "--manifests",
        str(tmp / "manifests"),
        "--dataplane",
        mode,
        "--bpf-pin-dir",
        str(tmp / PIN_DIR),
        # Socket-level load balancing hooks a cgroup of the host, not of the
        # lab; the demo's client is in its own namespace, not a local process.
        "--cgroup-path",
        "none",
        "--metrics-address",
        METRICS,
        "--status-file",
        str(tmp / "status.json"),
        "--run-dir",
        str(tmp / "run"),
    ]


def _own_mounts(tmp: Path, argv: Sequence[str]) -> list[str]:
    """`argv` in a new mount namespace with a bpf filesystem for the pins.
    unshare and sh exec in place, so the process is the agent's own pid."""
    bpffs = str(tmp / Path(PIN_DIR).parent)
    script = 'mount -t bpf bpf "$0" && exec "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    return [*unshare, "sh", "-c", script, bpffs, *argv]


def run_demo(dataplane: str = "auto", keep: bool = False) -> int:
    mode = resolve_mode(dataplane)
    click.echo(
        f"gatewaylb demo: building a network-namespace lab (client, node, 2 backends); "
        f"dataplane {mode}"
    )
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="gatewaylb-demo-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        (tmp / Path(PIN_DIR).parent).mkdir()
        shutil.copytree(EXAMPLES, tmp / "manifests")
        lab = stack.enter_context(Lab(backends=2))
        rc, up = _run(lab, tmp, mode, stack, keep)
        if up:
            # Leave it all up: namespaces, processes and files.  The lab's run
            # file names this (soon gone) process, so `cleanup --lab` takes it.
            stack.pop_all()
            for host in (lab.client, lab.node):
                lab.worker(host).close()
        return rc


def _start_backends(lab: Lab, detach: bool) -> None:
    # A session of their own when they outlive the demo: a terminal's hangup
    # (sudo's pty closing at exit) must not reach them.
    quiet: dict[str, Any] = {"stdin": subprocess.DEVNULL, "start_new_session": detach}
    for backend in lab.backends:
        echo = [sys.executable, "-m", "agent.lab.echo", "--name", backend.role]
        proc = lab.popen(
            backend,
            [*echo, "--tcp", str(BACKEND_PORT), "--udp", str(BACKEND_PORT)],
            stdout=subprocess.PIPE,
            **quiet,
        )
        assert proc.stdout is not None
        if b"ready" not in proc.stdout.readline():
            raise LabError(f"echo server in {backend.ns} did not start")
        http = [sys.executable, "-m", "agent.lab.httpecho", "--name", backend.role]
        lab.popen(
            backend,
            [*http, "--port", str(HTTP_BACKEND_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **quiet,
        )


def _run(
    lab: Lab, tmp: Path, mode: str, stack: contextlib.ExitStack, keep: bool
) -> tuple[int, bool]:
    """The demo proper: (exit status, whether the lab is to stay up)."""
    _start_backends(lab, detach=keep)
    log_file = tmp / "agent.log"
    argv = _agent_argv(tmp, mode)
    click.echo(
        f"starting the agent in {lab.node.ns}: gatewaylb run --manifests {tmp / 'manifests'} "
        f"(a copy of {EXAMPLES})"
    )
    with log_file.open("wb") as log:
        agent = lab.popen(
            lab.node,
            _own_mounts(tmp, argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=keep,
        )
    stack.callback(_stop, agent)
    deadline = time.monotonic() + 30
    while lab.call(lab.node, _http, f"http://{METRICS}/readyz")[0] != 200:
        if agent.poll() is not None or time.monotonic() > deadline:
            click.echo("the agent did not become ready:\n" + log_file.read_text(), err=True)
            return 1, False
        time.sleep(0.05)
    click.echo("agent ready (/readyz = 200); the Gateway's VIP is programmed")

    ok = _report(lab.call(lab.client, _tcp, REQUESTS))
    ok &= _report(lab.call(lab.client, _udp, REQUESTS))
    ok &= _report(
        lab.call(lab.client, _http_tally, REQUESTS), via="HAProxy, HTTPRoute echo-http rule 1"
    )
    code, body = lab.call(lab.client, _http, f"http://{VIP}:{HTTP_PORT}/green/x")
    answer = json.loads(body)["name"] if code == 200 else f"HTTP {code}"
    green = answer == "be2"
    click.echo(
        f"  GET /green/x -> {answer} (HTTPRoute echo-http rule 0 sends /green to echo-green): "
        f"{'ok' if green else 'WRONG'}"
    )
    ok &= green

    click.echo("\nwhat the kernel holds (gatewaylb status):")
    status = subprocess.run(
        _status_argv(agent.pid, tmp), capture_output=True, text=True, check=False
    )
    click.echo(status.stdout.rstrip())
    ports = lab.call(lab.client, _ephemeral_ports)
    repeats = REQUESTS - ports * (1 - (1 - 1 / ports) ** REQUESTS)
    click.echo(
        "  w: the route's weight; conns: new flows the dataplane sent to that backend "
        "(TCP: connections)."
    )
    click.echo(
        f"  UDP conns count flows (client address and port), not answers: each request came "
        f"from a new socket whose source port the kernel drew at random from {ports} ports, so "
        f"~{repeats:.0f} of {REQUESTS} reused a port whose flow was still live and counted once."
    )
    _, metrics = lab.call(lab.node, _http, f"http://{METRICS}/metrics")
    click.echo("\nmetrics (excerpt of /metrics):")
    for line in metrics.splitlines():
        if line.startswith(("gatewaylb_backend_connections_total", "gatewaylb_info")):
            click.echo(f"  {line}")
    verdict = "demo passed: every flow went where the routes say" if ok else "demo FAILED"
    if keep:
        _explain_kept_lab(lab, tmp, agent.pid, argv)
        click.echo(verdict)
        return (0 if ok else 1), True
    agent.terminate()
    agent.wait(timeout=10)
    click.echo("\nremoving the lab")
    click.echo(verdict)
    return (0 if ok else 1), False


def _stop(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.terminate()
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def _status_argv(pid: int, tmp: Path) -> list[str]:
    """`gatewaylb status` in the agent's network and mount namespaces (where
    its pins are)."""
    return [
        "nsenter",
        f"--target={pid}",
        "--net",
        "--mount",
        "--",
        *_gatewaylb(),
        "status",
        "--bpf-pin-dir",
        str(tmp / PIN_DIR),
        "--metrics-address",
        METRICS,
    ]


def _explain_kept_lab(lab: Lab, tmp: Path, pid: int, argv: list[str]) -> None:
    def ns(host: Host, what: str) -> str:
        return f"    {host.ns:<18} {host.ip4:<11} {what}"

    client, node = lab.client.ns, lab.node.ns
    lines = [
        "",
        "the lab stays up (--keep).",
        "network namespaces:",
        ns(lab.client, "the client"),
        ns(lab.node, f"the node: the agent (pid {pid}) and its HAProxy; the VIP {VIP}"),
        *(ns(b, f"backend of {SERVICES[b.role][0]}") for b in lab.backends),
        f"the agent runs in {node} with these flags:",
        f"  {shlex.join(argv)}",
        "started as below: nsenter enters the node's network namespace, unshare gives the",
        "agent a mount namespace of its own with a bpf filesystem for its pins (they go",
        "when it goes):",
        f"  {shlex.join(exec_argv(node, _own_mounts(tmp, argv)))}",
        f"files in {tmp}: manifests/ (edit them: the agent applies every change),",
        "  agent.log, status.json (the status the agent computed), run/ (HAProxy)",
        "",
        "reach the VIP from the client:",
        f"  ip netns exec {client} curl -s http://{VIP}:{HTTP_PORT}/",
        f"  ip netns exec {client} curl -s http://{VIP}:{HTTP_PORT}/green/x",
        f"  echo hello | ip netns exec {client} socat - TCP:{VIP}:{FRONTEND_PORT}",
        f"  echo hello | ip netns exec {client} socat -t1 - UDP:{VIP}:{FRONTEND_PORT}",
        "look at the node:",
        f"  {shlex.join(_status_argv(pid, tmp))}",
        f"  ip netns exec {node} curl -s http://{METRICS}/metrics",
        f"  ip netns exec {node} nft list ruleset",
        f"  ip netns exec {node} tc filter show dev vc0 ingress",
        f"  less {tmp / 'agent.log'}",
        "remove it (the agent, the backends, the namespaces and with them every",
        "program, map and rule of the lab; then the files):",
        f"  {shlex.join(_gatewaylb())} cleanup --lab && rm -r {tmp}",
        "",
    ]
    click.echo("\n".join(lines))
