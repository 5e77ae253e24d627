"""Benchmark: HTTP/1.1 keep-alive through the L7 VIP vs the backend directly.

A lab (client -- node -- one backend).  The backend is HAProxy itself answering
`http-request return` (so the backend is not the bottleneck); the node runs the
gatewaylb proxy worker (HAProxy, one HTTPRoute with a path match and a request
header filter) on a VIP added to its `lo`.  `wrk` in the client namespace
measures requests/s and p99 latency for both paths; a ratio table is printed.
A third row is no product: a bare HAProxy on the node with one frontend and one
`server` line (no ACL, no filter), so the cost of any proxy hop alone, the
floor under every configuration the agent can render.

    .venv/bin/python bench/l7_http.py [--duration S] [--connections N] [--threads T]

Target (from the issue): through the VIP >= 70% of the direct throughput on a
2-core machine.  Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.filters import (
    HeaderModifier,
    RouteFilter,
)
from agent.lab import Lab, vip4
from agent.proxy.addresses import VIPAddresses
from agent.proxy.worker import ProxyWorker
from agent.refs import ObjectRef
from agent.state import (
    Backend,
    BackendSet,
    HTTPMatch,
    HTTPRouteEntry,
    L7Listener,
    ServiceBackend,
    VirtualHost,
)

VIP = vip4(50)
FLOOR_VIP = vip4(51)
BACKEND_PORT = 8080
TARGET_RATIO = 0.70

BACKEND_CFG = """global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend static
    bind :::{port} v4v6
    http-request return status 200 content-type text/plain string "hello from the backend"
"""


FLOOR_CFG = """global
    nbthread {threads}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend floor
    bind {vip}:80
    default_backend one
backend one
    server s1 {server}
"""


def wrk(lab: Lab, url: str, host: str, args: argparse.Namespace) -> tuple[float, float]:
    """(requests/s, p99 latency in ms)."""
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s"]
    argv += ["--latency", "-H", f"Host: {host}", url]
    proc = lab.popen(lab.client, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=args.duration + 30)
    text = out.decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
    if rps is None or p99 is None:
        raise RuntimeError(f"wrk output not understood:\n{text}\n{err.decode()}")
    if errors:
        print(f"  wrk reported: {errors.group(0)}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return float(rps.group(1)), float(p99.group(1)) * scale


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--proxy-threads", type=int, default=None)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/l7_http.py: needs root (network namespaces); skipped")
        return 0
    with Lab(backends=1) as lab, tempfile.TemporaryDirectory(prefix="glbp-bench-") as tmp:
        be = lab.backends[0]
        cfg = Path(tmp) / "backend.cfg"
        cfg.write_text(BACKEND_CFG.format(port=BACKEND_PORT))
        lab.popen(be, ["haproxy", "-db", "-f", str(cfg)])
        svc = ServiceBackend("bench/static:80", 1, (Backend(be.ip4, BACKEND_PORT, 1),))
        mod = HeaderModifier(set=(("x-via", "gatewaylb"),), add=(), remove=())
        entry = HTTPRouteEntry(
            ObjectRef("HTTPRoute", "bench", "static"),
            0,
            HTTPMatch("PathPrefix", "/"),
            (RouteFilter("RequestHeaderModifier", request_header_modifier=mod),),
            BackendSet((svc,)),
        )
        listener = L7Listener(
            "bench/gw",
            "http",
            (VIP,),
            80,
            "HTTP",
            None,
            None,
            virtual_hosts=(VirtualHost("bench.example.com", (entry,)),),
        )
        addresses = VIPAddresses(netns=lab.node.ns)
        worker = ProxyWorker(Path(tmp) / "run", netns=lab.node.ns, threads=args.proxy_threads)
        floor_cfg = Path(tmp) / "floor.cfg"
        floor_cfg.write_text(
            FLOOR_CFG.format(
                threads=args.proxy_threads or 1, vip=FLOOR_VIP, server=f"{be.ip4}:{BACKEND_PORT}"
            )
        )
        try:
            addresses.reconcile([VIP, FLOOR_VIP])
            floor_proc = lab.popen(lab.node, ["haproxy", "-db", "-f", str(floor_cfg)])
            result = worker.apply([listener])
            if not result.ok:
                raise RuntimeError(f"proxy apply failed: {result}")
            time.sleep(0.3)
            host = "bench.example.com"
            wrk(lab, f"http://{VIP}/", host, argparse.Namespace(**{**vars(args), "duration": 1}))
            direct = wrk(lab, f"http://{be.ip4}:{BACKEND_PORT}/", host, args)
            via = wrk(lab, f"http://{VIP}/", host, args)
            floor = wrk(lab, f"http://{FLOOR_VIP}/", host, args)
            floor_proc.terminate()
        finally:
            worker.stop(remove_files=True)
            addresses.cleanup()
    ratio = via[0] / direct[0]
    print(
        f"HTTP/1.1 keep-alive, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"{os.cpu_count()} CPUs (client, proxy and backend share them)"
    )
    print(f"{'path':<26}{'requests/s':>12}{'p99 ms':>10}{'ratio':>8}")
    print(f"{'direct to backend':<26}{direct[0]:>12.0f}{direct[1]:>10.2f}{1.0:>8.2f}")
    print(f"{'through VIP (HAProxy)':<26}{via[0]:>12.0f}{via[1]:>10.2f}{ratio:>8.2f}")
    print(
        f"{'bare HAProxy hop (floor)':<26}{floor[0]:>12.0f}{floor[1]:>10.2f}"
        f"{floor[0] / direct[0]:>8.2f}"
    )
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"throughput ratio {ratio:.2f} {verdict} the {TARGET_RATIO:.0%} target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
