"""`gatewaylb demo`: the agent on example manifests, in a throwaway lab.

Builds the standard lab (client, node, two backends running a TCP/UDP echo and
an HTTP echo), runs `gatewaylb run` in the node namespace on examples/demo,
sends new TCP connections, UDP requests and HTTP requests from the client to
the Gateway's VIP, prints which backend answered how often against the route
weights, and removes everything.  Exit status 0 means every request was
answered, by the backends the routes name, in the proportions the weights set.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from agent.dataplane.select import resolve_mode
from agent.lab.netns import exec_argv
from agent.lab.topology import Lab

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
    what = "requests" if tally.protocol == "HTTP" else "new flows"
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


@contextlib.contextmanager
def _private_bpffs(tmp: str) -> Iterator[list[str]]:
    """The eBPF dataplane's pins on a bpf filesystem of the demo's own, so the
    demo leaves nothing on the host; no cgroup socket hooks (the demo's client
    is in its own namespace, not a local process of the node)."""
    mount = Path(tmp) / "bpffs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mount)], check=True)
    try:
        yield ["--bpf-pin-dir", str(mount / "gatewaylb"), "--cgroup-path", "none"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_demo(dataplane: str = "auto") -> int:
    mode = resolve_mode(dataplane)
    click.echo(
        f"gatewaylb demo: building a network-namespace lab (client, node, 2 backends); "
        f"dataplane {mode}"
    )
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="gatewaylb-demo-"))
        extra = stack.enter_context(_private_bpffs(tmp)) if mode == "ebpf" else []
        lab = stack.enter_context(Lab(backends=2))
        return _run(lab, Path(tmp), mode, extra)


def _run(lab: Lab, tmp: Path, mode: str, extra: list[str]) -> int:
    for backend in lab.backends:
        lab.start_echo(backend, tcp=BACKEND_PORT, udp=BACKEND_PORT)
        http = [sys.executable, "-m", "agent.lab.httpecho", "--name", backend.role]
        lab.popen(backend, [*http, "--port", str(HTTP_BACKEND_PORT)], stdout=subprocess.DEVNULL)
    status_file = Path(tmp) / "status.json"
    log_file = Path(tmp) / "agent.log"
    argv = [
        sys.executable,
        "-m",
        "agent",
        "run",
        "--manifests",
        str(EXAMPLES),
        "--dataplane",
        mode,
        *extra,
        "--metrics-address",
        METRICS,
        "--status-file",
        str(status_file),
        "--run-dir",
        str(tmp / "run"),
    ]
    click.echo(f"starting the agent in {lab.node.ns}: gatewaylb run --manifests {EXAMPLES}")
    with log_file.open("wb") as log:
        agent = lab.popen(lab.node, argv, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while lab.call(lab.node, _http, f"http://{METRICS}/readyz")[0] != 200:
        if agent.poll() is not None or time.monotonic() > deadline:
            click.echo("the agent did not become ready:\n" + log_file.read_text(), err=True)
            return 1
        time.sleep(0.05)
    click.echo("agent ready (/readyz = 200); the Gateway's VIP is programmed")

    ok = _report(lab.call(lab.client, _tcp, REQUESTS))
    ok &= _report(lab.call(lab.client, _udp, REQUESTS))
    ok &= _report(lab.call(lab.client, _http_tally, REQUESTS), via="HAProxy, HTTPRoute rule 2")
    code, body = lab.call(lab.client, _http, f"http://{VIP}:{HTTP_PORT}/green/x")
    answer = json.loads(body)["name"] if code == 200 else f"HTTP {code}"
    green = answer == "be2"
    click.echo(
        f"  GET /green/x -> {answer} (HTTPRoute rule 1 sends /green to echo-green): "
        f"{'ok' if green else 'WRONG'}"
    )
    ok &= green

    click.echo("\nwhat the kernel holds (gatewaylb status):")
    status_argv = [sys.executable, "-m", "agent", "status", *extra[:2]]
    status = subprocess.run(
        exec_argv(lab.node.ns, status_argv),
        capture_output=True,
        text=True,
        check=False,
    )
    click.echo(status.stdout.rstrip())
    _, metrics = lab.call(lab.node, _http, f"http://{METRICS}/metrics")
    click.echo("\nmetrics (excerpt of /metrics):")
    for line in metrics.splitlines():
        if line.startswith(("gatewaylb_backend_connections_total", "gatewaylb_info")):
            click.echo(f"  {line}")
    agent.terminate()
    agent.wait(timeout=10)
    click.echo("\nremoving the lab")
    click.echo("demo passed: every flow went where the routes say" if ok else "demo FAILED")
    return 0 if ok else 1
