"""nftables dataplane at scale: full load, one incremental change, no-op, adoption.

Runs in a throwaway lab namespace (root).  `python bench/nft_scale.py [N]`.
"""

from __future__ import annotations

import sys
import time

from agent.dataplane.nftables import NftablesDataplane
from agent.lab import Lab
from agent.state import Backend, DesiredState, FrontendSource, L4Frontend

SRC = FrontendSource("bench", "gw", "l")


def frontend(i: int, w: int = 1) -> L4Frontend:
    vip = f"10.{99 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    backends = tuple(
        Backend(f"10.20.{j}.{i % 250 + 1}", 8080, w if j == 0 else 1) for j in range(4)
    )
    return L4Frontend(vip, "tcp", 80, backends, 0, SRC)


def timed(label: str, fn: object, *args: object) -> object:
    t0 = time.perf_counter()
    out = fn(*args)  # type: ignore[operator]
    print(f"{label:42s} {1000 * (time.perf_counter() - t0):9.1f} ms")
    return out


def bench(n: int) -> None:
    fes = [frontend(i) for i in range(n)]
    dp = NftablesDataplane()
    timed(f"full load {n} frontends x 4 backends", dp.reconcile, DesiredState(l4=tuple(fes)))
    for k in range(3):
        fes[n // 2] = frontend(n // 2, w=2 + k)
        timed("one frontend's weights changed", dp.reconcile, DesiredState(l4=tuple(fes)))
    fes.append(frontend(n))
    timed("one frontend added", dp.reconcile, DesiredState(l4=tuple(fes)))
    fes.pop(0)
    timed("one frontend removed", dp.reconcile, DesiredState(l4=tuple(fes)))
    timed("no-op reconcile", dp.reconcile, DesiredState(l4=tuple(fes)))
    again = timed("adoption (new dataplane object)", NftablesDataplane)
    assert isinstance(again, NftablesDataplane)
    timed("no-op reconcile after adoption", again.reconcile, DesiredState(l4=tuple(fes)))
    assert again.transactions == 0
    timed("read_counters", dp.read_counters)
    timed("cleanup", dp.cleanup)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with Lab(backends=0) as lab:
        lab.call(lab.node, bench, n)


if __name__ == "__main__":
    main()
