"""eBPF dataplane at scale: full load, incremental changes, no-op, adoption, reads.

The same workload as bench/nft_scale.py (frontends with 4 backends each), run
against EbpfDataplane in a throwaway lab namespace on a private bpf filesystem.
Prints one table with the targets beside the figures (wall ms and this
thread's CPU ms: on a shared machine the CPU column is the one to trust).
Root; `python bench/ebpf_scale.py [N]`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nft_scale import BACKENDS, frontend

from agent.dataplane.ebpf.dataplane import EbpfDataplane
from agent.lab import Lab
from agent.state import DesiredState

Row = tuple[str, float, float, str, float | None]


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    c0, t0 = time.thread_time(), time.perf_counter()
    out = fn(*args)
    return 1000 * (time.perf_counter() - t0), 1000 * (time.thread_time() - c0), out


def bench(n: int, pin_root: str) -> list[Row]:
    rows: list[Row] = []

    def make(name: str) -> EbpfDataplane:
        # No interfaces: the programs load, the maps are written, nothing is
        # attached (attaching does not change what a sync costs).
        return EbpfDataplane(interfaces=(), pin_dir=f"{pin_root}/{name}")

    small = min(1000, n)
    dp = make("small")
    wall, cpu, _ = timed(dp.reconcile, DesiredState(l4=tuple(frontend(i) for i in range(small))))
    rows.append((f"full load {small} frontends", wall, cpu, "", None))
    dp.cleanup()

    fes = [frontend(i) for i in range(n)]
    dp = make("big")
    wall, cpu, _ = timed(dp.reconcile, DesiredState(l4=tuple(fes)))
    rows.append((f"full load {n} frontends x {BACKENDS} backends", wall, cpu, "< 2 s", 2000))
    walls, cpus = [], []
    for k in range(5):
        fes[n // 2 + k] = frontend(n // 2 + k, w=2 + k)
        wall, cpu, result = timed(dp.reconcile, DesiredState(l4=tuple(fes)))
        assert not result.failures
        walls.append(wall)
        cpus.append(cpu)
    rows.append(
        (
            "one frontend's weights changed (median of 5)",
            statistics.median(walls),
            statistics.median(cpus),
            "< 50 ms",
            50,
        )
    )
    fes.append(frontend(n))
    wall, cpu, _ = timed(dp.reconcile, DesiredState(l4=tuple(fes)))
    rows.append(("one frontend added", wall, cpu, "< 50 ms", 50))
    fes.pop(0)
    wall, cpu, _ = timed(dp.reconcile, DesiredState(l4=tuple(fes)))
    rows.append(("one frontend removed", wall, cpu, "< 50 ms", 50))
    writes = dp.writes
    wall, cpu, _ = timed(dp.reconcile, DesiredState(l4=tuple(fes)))
    assert dp.writes == writes, "a no-op must write nothing"
    rows.append(("no-op reconcile", wall, cpu, "no write", None))
    wall, cpu, again = timed(make, "big")
    rows.append(("adoption (new dataplane object)", wall, cpu, "a few s", 3000))
    wall, cpu, counters = timed(dp.read_counters)
    assert len(counters) == n
    rows.append(("read_counters (kernel read)", wall, cpu, "< 1 s", 1000))
    wall, cpu, _ = timed(dp.programmed)
    rows.append(("programmed() (status)", wall, cpu, "", None))
    again.close()
    dp.cleanup()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="glb-bench-bpffs-") as tmp:
        subprocess.run(["mount", "-t", "bpf", "bpf", tmp], check=True)
        try:
            with Lab(backends=0) as lab:
                rows = lab.call(lab.node, functools.partial(bench, args.n, tmp))
        finally:
            subprocess.run(["umount", "-l", tmp], check=False)
    print(f"{'eBPF dataplane':<48} {'wall ms':>9} {'cpu ms':>9}  target")
    for label, wall, cpu, target, limit in rows:
        verdict = "" if limit is None else ("  ok" if wall < limit else "  MISSED")
        print(f"{label:<48} {wall:>9.1f} {cpu:>9.1f}  {target}{verdict}")


if __name__ == "__main__":
    main()
