"""Benchmark: parse + translate + JSON for N TCPRoutes (run by `make bench`).

Each route has its own Service and an EndpointSlice with 4 ready endpoints and
attaches to its own TCP listener; Gateways carry 64 TCP listeners each (one port
per listener) and have distinct VIPs.  Every size runs in a fresh subprocess so
that the memory numbers of one size do not leak into the next.

    .venv/bin/python bench/translate.py [N ...] [--profile N]

Target (from the issue): 10k routes translated in under 1 s and under 300 MB,
growing linearly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1_000, 10_000, 50_000)
LISTENERS_PER_GATEWAY = 64
ENDPOINTS_PER_SERVICE = 4
NAMESPACE = "bench"
TARGET_ROUTES, TARGET_SECONDS, TARGET_MB = 10_000, 1.0, 300.0


def make_docs(n: int) -> list[tuple[object, str]]:
    gw = "gateway.networking.k8s.io"
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": f"{gw}/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "gatewaylb"},
            "spec": {"controllerName": "gatewaylb.io/agent"},
        },
    ]
    gateways = (n + LISTENERS_PER_GATEWAY - 1) // LISTENERS_PER_GATEWAY
    for g in range(gateways):
        docs.append(
            {
                "apiVersion": f"{gw}/v1",
                "kind": "Gateway",
                "metadata": {"name": f"gw-{g}", "namespace": NAMESPACE},
                "spec": {
                    "gatewayClassName": "gatewaylb",
                    "addresses": [
                        {"type": "IPAddress", "value": f"198.18.{g // 250}.{g % 250 + 1}"}
                    ],
                    "listeners": [
                        {"name": f"tcp-{p}", "port": 10_000 + p, "protocol": "TCP"}
                        for p in range(LISTENERS_PER_GATEWAY)
                    ],
                },
            }
        )
    for i in range(n):
        svc = f"svc-{i}"
        docs.append(
            {
                "apiVersion": f"{gw}/v1alpha2",
                "kind": "TCPRoute",
                "metadata": {"name": f"route-{i}", "namespace": NAMESPACE},
                "spec": {
                    "parentRefs": [
                        {
                            "name": f"gw-{i // LISTENERS_PER_GATEWAY}",
                            "sectionName": f"tcp-{i % LISTENERS_PER_GATEWAY}",
                        }
                    ],
                    "rules": [{"backendRefs": [{"name": svc, "port": 80}]}],
                },
            }
        )
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": svc, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]},
            }
        )
        base = i * ENDPOINTS_PER_SERVICE
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{svc}-abcde",
                    "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": svc},
                },
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [
                            f"10.{(base + e) >> 16}.{((base + e) >> 8) & 255}.{(base + e) & 255}"
                        ],
                        "conditions": {"ready": True},
                    }
                    for e in range(ENDPOINTS_PER_SERVICE)
                ],
                "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
            }
        )
    return [(d, f"bench:{i}") for i, d in enumerate(docs)]


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _pipeline(docs: list[tuple[object, str]]) -> tuple[Any, Any, float, float, float]:
    from agent.model.snapshot import build_snapshot
    from agent.translate.core import translate

    t0 = time.perf_counter()
    snapshot = build_snapshot(docs)
    t1 = time.perf_counter()
    result = translate(snapshot)
    t2 = time.perf_counter()
    json.dumps(result.desired.to_dict())
    json.dumps(result.status.to_list())
    t3 = time.perf_counter()
    return snapshot, result, t1 - t0, t2 - t1, t3 - t2


def measure_one(n: int) -> dict[str, float]:
    """Runs in its own process: times (best of a few runs) and memory for size n."""
    import gc
    import tracemalloc

    sys.path.insert(0, str(ROOT))
    docs = make_docs(n)
    gc.collect()
    rss_before = _maxrss_mb()
    snapshot, result, parse_s, translate_s, json_s = _pipeline(docs)
    rss_growth = _maxrss_mb() - rss_before

    # Sanity: every route is served by its own frontend with 4 backends.
    # (A listener without a route still gets a refusing frontend.)
    l4 = [f for f in result.desired.l4 if f.source.route]
    assert len(l4) == n, f"{len(l4)} routed frontends for {n} routes"
    assert all(len(f.backends) == ENDPOINTS_PER_SERVICE for f in l4)
    assert not snapshot.problems and not snapshot.invalid
    del snapshot, result

    for _ in range(2 if n <= 10_000 else 0):
        gc.collect()
        _, _, p, t, j = _pipeline(docs)
        parse_s, translate_s, json_s = min(parse_s, p), min(translate_s, t), min(json_s, j)

    gc.collect()
    tracemalloc.start()
    _pipeline(docs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "routes": n,
        "parse": parse_s,
        "translate": translate_s,
        "json": json_s,
        "peak_mb": peak / 2**20,
        "rss_mb": rss_growth,
    }


def profile_one(n: int, top: int = 25) -> None:
    import cProfile
    import pstats

    sys.path.insert(0, str(ROOT))
    docs = make_docs(n)
    profiler = cProfile.Profile()
    profiler.enable()
    _pipeline(docs)
    profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        print(json.dumps(measure_one(int(argv[1]))))
        return 0
    if argv[:1] == ["--profile"]:
        profile_one(int(argv[1]) if len(argv) > 1 else TARGET_ROUTES)
        return 0
    sizes = [int(a) for a in argv] or list(SIZES)
    rows = []
    for n in sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    header = (
        f"{'routes':>8} {'parse s':>8} {'translate s':>11} {'json s':>7} {'total s':>8} "
        f"{'peak MB':>8} {'rss MB':>7} {'per-route µs':>13} {'linearity':>10}"
    )
    print(header)
    print("-" * len(header))
    base = None
    for r in rows:
        total = r["parse"] + r["translate"] + r["json"]
        per_route = total / r["routes"] * 1e6
        base = base or per_route
        print(
            f"{r['routes']:>8} {r['parse']:>8.3f} {r['translate']:>11.3f} {r['json']:>7.3f} "
            f"{total:>8.3f} {r['peak_mb']:>8.1f} {r['rss_mb']:>7.1f} {per_route:>13.1f} "
            f"{per_route / base:>9.2f}x"
        )
    print(
        "\npeak MB: tracemalloc peak of parse+translate+json; rss MB: growth of the "
        "process's max RSS over the same work;\nlinearity: per-route time relative to "
        "the first size (1.00x = linear)."
    )
    target = next((r for r in rows if r["routes"] == TARGET_ROUTES), None)
    if target is not None:
        seconds = target["parse"] + target["translate"]
        memory = max(target["peak_mb"], target["rss_mb"])
        ok = seconds < TARGET_SECONDS and memory < TARGET_MB
        print(
            f"target {TARGET_ROUTES} routes: parse+translate {seconds:.2f} s "
            f"(< {TARGET_SECONDS:.0f} s), memory {memory:.0f} MB (< {TARGET_MB:.0f} MB): "
            f"{'MET' if ok else 'NOT MET'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
