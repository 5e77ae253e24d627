"""The agent against a real kube-apiserver at scale (issue 6's benchmark).

For N routes (default 1k and 5k), each a TCPRoute with its own Service and
EndpointSlice of 4 endpoints, on Gateways of 64 TCP listeners:
- time from the first object created to every frontend programmed and every
  route's status written by the agent (and how long creating took by itself);
- the agent's resident memory then;
- a cold start: the same objects created first (no agent running, no status),
  then the agent started; time from its start to every frontend programmed
  and every route's status written (what the agent itself takes, without the
  API server being busy with the creation storm);
- event-to-programmed latency of single edits at that scale: an EndpointSlice
  switched between two live backends, timed from the API's answer to the first
  new connection that reaches the new backend (p50/p99 over many edits).
Root; needs the control-plane binaries (`make k8s-bin`).
`python bench/kube.py [N ...] [--edits E]`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "k8s"))

from controlplane import ControlPlane  # noqa: E402
from relay import LoopbackRelay  # noqa: E402

from agent.lab import Lab  # noqa: E402
from agent.lab.echo import ask_tcp  # noqa: E402

GW = "gateway.networking.k8s.io/v1"
NS = "bench"
PORT = 8080
PER_GATEWAY = 64


def vip(g: int) -> str:
    return f"10.99.{1 + g // 250}.{1 + g % 250}"


def objects(n: int, be_ips: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "apiVersion": GW,
            "kind": "GatewayClass",
            "metadata": {"name": "gatewaylb"},
            "spec": {"controllerName": "gatewaylb.io/agent"},
        }
    ]
    for g in range((n + PER_GATEWAY - 1) // PER_GATEWAY):
        out.append(
            {
                "apiVersion": GW,
                "kind": "Gateway",
                "metadata": {"name": f"gw{g}", "namespace": NS},
                "spec": {
                    "gatewayClassName": "gatewaylb",
                    "addresses": [{"value": vip(g)}],
                    "listeners": [
                        {"name": f"l{i}", "protocol": "TCP", "port": 10000 + i}
                        for i in range(PER_GATEWAY)
                    ],
                },
            }
        )
    for r in range(n):
        g, li = divmod(r, PER_GATEWAY)
        out.append(service(r))
        out.append(endpoint_slice(r, be_ips))
        out.append(
            {
                "apiVersion": GW,
                "kind": "TCPRoute",
                "metadata": {"name": f"r{r}", "namespace": NS},
                "spec": {
                    "parentRefs": [{"name": f"gw{g}", "sectionName": f"l{li}"}],
                    "rules": [{"backendRefs": [{"name": f"svc{r}", "port": 80}]}],
                },
            }
        )
    return out


def service(r: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc{r}", "namespace": NS},
        # Headless: the test API server's service range is a /24, and the agent
        # never uses cluster IPs anyway (it balances to endpoints).
        "spec": {
            "clusterIP": "None",
            "ports": [{"name": "tcp", "protocol": "TCP", "port": 80, "targetPort": PORT}],
        },
    }


def endpoint_slice(r: int, ips: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"svc{r}-1",
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": f"svc{r}"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "protocol": "TCP", "port": PORT}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }


def metric(lab: Lab, address: str, name: str) -> float:
    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    for line in lab.call(lab.node, scrape).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def statused_routes(cp: ControlPlane) -> int:
    status, body = cp.request("GET", f"/apis/{GW}/namespaces/{NS}/tcproutes", timeout=120)
    assert status == 200
    return sum(1 for item in body["items"] if (item.get("status") or {}).get("parents"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_one(n: int, edits: int, cold: bool = False) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="glb-bench-kube-") as tmp,
        ControlPlane() as cp,
        Lab(backends=2) as lab,
    ):
        for be in lab.backends:
            lab.start_echo(be, tcp=PORT, udp=PORT)
        cp.ensure_namespace(NS)
        relay = LoopbackRelay(lab, lambda: cp.port)
        config = json.loads(cp.kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
        kubeconfig = Path(tmp) / "kubeconfig"
        kubeconfig.write_text(json.dumps(config))
        metrics = "127.0.0.1:19480"
        argv = [
            sys.executable, "-m", "agent", "run", "--kubeconfig", str(kubeconfig),
            "--node-name", "bench", "--namespace", "default", "--dataplane", "nftables",
            "--metrics-address", metrics, "--run-dir", str(Path(tmp) / "run"),
            "--log-level", "warning",
        ]  # fmt: skip
        be_ips = [lab.backends[0].ip4] * 1 + [f"10.20.9.{i}" for i in range(1, 4)]
        objs = objects(n, be_ips)
        frontends = ((n + PER_GATEWAY - 1) // PER_GATEWAY) * PER_GATEWAY

        def create() -> float:
            c0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(cp.apply, objs[: 1 + (n + PER_GATEWAY - 1) // PER_GATEWAY]))
                list(pool.map(cp.apply, objs[1 + (n + PER_GATEWAY - 1) // PER_GATEWAY :]))
            return time.monotonic() - c0

        created = create() if cold else 0.0
        with (Path(tmp) / "agent.log").open("wb") as log:
            agent = lab.popen(lab.node, argv, stdout=log, stderr=log)
        try:
            t0 = time.monotonic()
            if not cold:
                created = create()
            while metric(lab, metrics, "gatewaylb_frontends_programmed") < frontends:
                if agent.poll() is not None:
                    raise RuntimeError((Path(tmp) / "agent.log").read_text()[-3000:])
                time.sleep(0.5)
            programmed = time.monotonic() - t0
            while statused_routes(cp) < n:
                time.sleep(1.0)
            statused = time.monotonic() - t0
            result = {
                "routes": n,
                "create_s": created,
                "programmed_s": programmed,
                "statused_s": statused,
                "rss_mb": rss_mb(agent.pid),
                "p50_ms": float("nan"),
                "p99_ms": float("nan"),
                "failed_probes": 0,
            }
            if not edits:
                return result

            # Single edits: route 0's Service flips between the two lab backends.
            # Untimed warm-up first: the route starts with three unreachable
            # endpoints beside the live one, and a probe sent to one of those
            # would wait out its connect timeout inside the first timed edit.
            addr, port = vip(0), 10000
            cp.apply(endpoint_slice(0, [lab.backends[0].ip4]))
            w0 = time.monotonic()
            while {lab.call(lab.client, ask_tcp, addr, port) for _ in range(8)} != {
                lab.backends[0].role
            }:
                if time.monotonic() - w0 > 60:
                    raise RuntimeError("warm-up edit not programmed within 60 s")
                time.sleep(0.05)
            latencies = []
            failed_probes = 0  # connection attempts that failed (1 s timeout) during edits
            for k in range(edits):
                target = lab.backends[(k + 1) % 2]
                cp.apply(endpoint_slice(0, [target.ip4]))
                e0 = time.monotonic()
                while (answer := lab.call(lab.client, ask_tcp, addr, port)) != target.role:
                    if time.monotonic() - e0 > 30:
                        raise RuntimeError("edit not programmed within 30 s")
                    if answer.startswith("error"):
                        failed_probes += 1
                    time.sleep(0.005)
                latencies.append(time.monotonic() - e0)
            latencies.sort()
            result["p50_ms"] = 1000 * statistics.median(latencies)
            result["p99_ms"] = 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            result["failed_probes"] = failed_probes
            return result
        finally:
            agent.terminate()
            agent.wait(20)
            relay.close()
            subprocess.run(
                ["nsenter", f"--net=/run/netns/{lab.node.ns}", "--", sys.executable, "-m",
                 "agent", "cleanup", "--cgroup-path", "none", "--run-dir", str(Path(tmp) / "run")],
                capture_output=True, check=False,
            )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[1000, 5000])
    ap.add_argument("--edits", type=int, default=40)
    ap.add_argument("--cold", type=int, default=5000, help="routes of the cold-start row (0: none)")
    args = ap.parse_args()
    rows = [("live", run_one(n, args.edits)) for n in args.sizes]
    if args.cold:
        rows.append(("cold start", run_one(args.cold, 0, cold=True)))
    print(
        f"{'run':<11} {'routes':>7} {'create s':>9} {'programmed s':>13} {'statused s':>11} "
        f"{'agent RSS MB':>13} {'edit p50 ms':>12} {'edit p99 ms':>12} {'failed probes':>14}"
    )
    for kind, r in rows:
        print(
            f"{kind:<11} {r['routes']:>7.0f} {r['create_s']:>9.1f} {r['programmed_s']:>13.1f} "
            f"{r['statused_s']:>11.1f} {r['rss_mb']:>13.0f} {r['p50_ms']:>12.0f} "
            f"{r['p99_ms']:>12.0f} {r['failed_probes']:>14.0f}"
        )
    print(
        "targets: 5k routes programmed and statused < 30 s, memory < 500 MB, edit p99 < 1 s\n"
        "live rows count from the first object created; the cold-start row from the"
        " agent's start, with the objects already there"
    )


if __name__ == "__main__":
    main()
