"""nftables dataplane at scale: full load, incremental changes, no-op, adoption, reads.

Runs in a throwaway lab namespace (root) and prints one table with the targets
beside the figures.  `python bench/nft_scale.py [N] [--shards S]` (N defaults to
10000; --shards overrides the shard count for this run only, to compare counts).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

from agent.dataplane import nft_rules as R
from agent.dataplane.nftables import NftablesDataplane
from agent.lab import Lab
from agent.state import Backend, DesiredState, FrontendSource, L4Frontend

SRC = FrontendSource("bench", "gw", "l")
BACKENDS = 4


def frontend(i: int, w: int = 1) -> L4Frontend:
    vip = f"10.{99 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    backends = tuple(
        Backend(f"10.20.{j}.{i % 250 + 1}", 8080, w if j == 0 else 1) for j in range(BACKENDS)
    )
    return L4Frontend(vip, "tcp", 80, backends, 0, SRC)


def ms(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return 1000 * (time.perf_counter() - t0), out


Row = tuple[str, float, str, float | None]  # label, ms, target text, target ms


def bench(n: int) -> list[Row]:
    rows: list[Row] = []
    small = min(1000, n)
    dp = NftablesDataplane()
    t, _ = ms(dp.reconcile, DesiredState(l4=tuple(frontend(i) for i in range(small))))
    rows.append((f"full load {small} frontends", t, "", None))
    dp.cleanup()

    fes = [frontend(i) for i in range(n)]
    dp = NftablesDataplane()
    t, _ = ms(dp.reconcile, DesiredState(l4=tuple(fes)))
    rows.append((f"full load {n} frontends x {BACKENDS} backends", t, "< 2 s", 2000))
    times = []
    for k in range(5):
        fes[n // 2 + k] = frontend(n // 2 + k, w=2 + k)
        t, r = ms(dp.reconcile, DesiredState(l4=tuple(fes)))
        assert r.changed == 1 and not r.errors
        times.append(t)
    rows.append(
        (
            f"one frontend's weights changed (median of {len(times)})",
            statistics.median(times),
            "< 50 ms",
            50,
        )
    )
    fes.append(frontend(n))
    t, _ = ms(dp.reconcile, DesiredState(l4=tuple(fes)))
    rows.append(("one frontend added", t, "< 50 ms", 50))
    fes.pop(0)
    t, _ = ms(dp.reconcile, DesiredState(l4=tuple(fes)))
    rows.append(("one frontend removed", t, "< 50 ms", 50))
    before = dp.transactions
    t, _ = ms(dp.reconcile, DesiredState(l4=tuple(fes)))
    assert dp.transactions == before
    rows.append(("no-op reconcile (same objects, new tuple)", t, "no write", None))

    t, again = ms(NftablesDataplane)
    rows.append(("adoption (new dataplane object)", t, "a few s", 3000))
    t, _ = ms(again.reconcile, DesiredState(l4=tuple(fes)))
    assert again.transactions == 0, "adoption must leave nothing to write"
    rows.append(("no-op reconcile after adoption", t, "no write", None))
    t, counters = ms(dp.read_counters)
    assert len(counters) == n, (len(counters), n)
    rows.append(("read_counters (kernel read)", t, "< 1 s", 1000))
    t, _ = ms(dp.read_counters)
    rows.append(("read_counters again within 1 s (cached)", t, "", None))
    t, progs = ms(dp.programmed)
    assert len(progs) == n, (len(progs), n)
    rows.append(("programmed() (status)", t, "", None))
    t, _ = ms(dp.cleanup)
    rows.append(("cleanup", t, "", None))
    return rows


def _set_shards(count: int) -> None:
    """This run only: what a different R.SHARDS would give."""
    R.SHARDS = count
    R.SKELETON_TAG = f"glb skeleton v{R.SKELETON_VERSION} shards={count} hash=crc32"
    R.SHARD_TABLES = tuple(R.shard_table(i) for i in range(count))
    R.shard_of.cache_clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=10_000)
    ap.add_argument("--shards", type=int, default=None)
    args = ap.parse_args()
    if args.shards:
        _set_shards(args.shards)
    with Lab(backends=0) as lab:
        rows = lab.call(lab.node, functools.partial(bench, args.n))
    print(f"nftables dataplane, {args.n} frontends, {R.SHARDS} shard tables")
    print(f"{'':50s} {'measured':>10s}  {'target':<9s}")
    for label, value, target, limit in rows:
        verdict = "" if limit is None else ("ok" if value < limit else "MISSED")
        print(f"{label:50s} {value:8.1f} ms  {target:<9s} {verdict}")


if __name__ == "__main__":
    main()
