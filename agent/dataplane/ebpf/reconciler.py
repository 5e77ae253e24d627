"""The eBPF dataplane's maps converged to the L4 part of a desired state.

Owns what the agent knows of the frontends, backends and Maglev maps (each
frontend's id, pool extent and backend ids), the id and extent allocators,
the quarantine of what a write freed, and the order of the writes.  It reaches
the kernel only through the `Map` interface (agent/dataplane/bpf/maps.py), so
every rule here runs in unit tests against in-memory maps.  It never compiles,
loads, attaches or pins anything (agent/dataplane/ebpf/dataplane.py does), and
touches the flow tables only in `flush_flows`.

Map design (memory): the Maglev tables of all frontends live in ONE array map,
a slot pool (`maglev`, `pool_slots` u32 slots, default 16 Mi = 64 MiB).  Each
frontend owns an extent of it, sized from its backend count on a ladder of
primes (251, 1021, 4093, 16381, ...; at least 100 slots per backend, never above
`maglev_size`), so 10k frontends of 3-10 backends take ~10 M slots (40 MB)
instead of 10k x 16381 (655 MB).  Every change writes the new table into a FREE extent
and then flips the frontend's hash-map entry (offset, size) in one element
update, which readers see atomically (RCU); the old extent and removed backend
ids are quarantined until the next write batch, so a packet that read the old
entry never sees its slots reused.  Maglev slots are written through an mmap
of the pool (BPF_F_MMAPABLE; a pool pinned by an older version without it is
written with a batch syscall instead); other writes go through
BPF_MAP_*_BATCH: one syscall per map per batch.

Adoption: constructing one over maps a previous agent filled rebuilds ids,
extents and backend sets from them and writes nothing (but the removal of
backends whose frontend is gone, which a crash between writes can leave), so
established flows keep their backends across a restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.dataplane import maglev
from agent.dataplane.base import FrontendCounters, ProgrammedFrontend
from agent.dataplane.bpf import EbpfError
from agent.dataplane.bpf.alloc import ExtentPool, IdPool
from agent.dataplane.bpf.layouts import (
    FE_REJECT_ALL,
    REJECT_ID,
    BackendC,
    FrontendC,
    Key,
    backend_of,
    backend_value,
    frontend_key,
    key_of,
)
from agent.dataplane.bpf.maps import Maps
from agent.dataplane.ebpf.view import read_counters, read_programmed
from agent.dataplane.frontends import FrontendError, FrontendSpec, canonical_ip, normalise
from agent.reconcile import Outcome, frontend_outcome
from agent.state import DesiredState, L4Frontend

log = logging.getLogger(__name__)

# The identity of the reject share in a Maglev table: a name no backend has.
REJECT_IDENTITY = "reject"


@dataclass(slots=True)
class _Fe:
    """One frontend as the maps hold it."""

    key: Key
    id: int
    flags: int
    table_off: int
    table_size: int
    reject_weight: int
    generation: int
    # (ip, port) -> (backend id, weight)
    backends: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def spec(self) -> tuple[tuple[tuple[str, int, int], ...], int]:
        return (
            tuple(sorted((ip, port, w) for (ip, port), (_, w) in self.backends.items())),
            self.reject_weight,
        )

    def value(self) -> FrontendC:
        return FrontendC(
            self.id,
            self.flags,
            self.table_off,
            self.table_size,
            self.reject_weight,
            self.generation,
        )


def _triples(spec: FrontendSpec) -> tuple[tuple[str, int, int], ...]:
    return tuple((b.ip, b.port, b.weight) for b in spec.backends)


def norm_key(key: Key) -> Key:
    """(vip, protocol, port) with the VIP in canonical text form (IPv6!)."""
    try:
        return (canonical_ip(key[0]), key[1], key[2])
    except ValueError:
        return key


def _u32s(ids: Sequence[int]) -> list[ctypes.c_uint32]:
    return [ctypes.c_uint32(i) for i in ids]


@dataclass(slots=True)
class _Plan:
    """The writes of one frontend, computed before any of them is issued."""

    fe: _Fe
    new_frontend: bool
    table: array[int]
    new_backend_ids: list[int]
    backend_values: list[tuple[int, BackendC]]
    removed_backend_ids: list[int]
    old_extent: tuple[int, int] | None
    source: L4Frontend


class MapReconciler:
    """The frontends, backends and Maglev maps, converged to a DesiredState.

    Verbs: `reconcile` (the frontends that differ from the desired state are
    written, in one batch, and the ones gone deleted), `read_counters` and
    `programmed`; the rest reads back for tests."""

    def __init__(self, maps: Maps, maglev_size: int = maglev.DEFAULT_SIZE) -> None:
        if not maglev.is_prime(maglev_size):
            raise EbpfError(f"maglev_size {maglev_size} is not prime")
        self.maps = maps
        self.maglev_size = maglev_size
        self._generation = int(time.time())
        self.writes = 0  # kernel write batches issued, for tests ("a no-op issues none")
        self._quarantine_extents: list[tuple[int, int]] = []
        self._quarantine_ids: list[int] = []
        self._maglev_mem = maps["maglev"].mmap_u32()
        self._adopt()

    def _adopt(self) -> None:
        """Rebuild ids, extents and backend sets from the maps."""
        self._fes: dict[Key, _Fe] = {}
        # The last L4Frontend written per key: an equal one needs no diff.
        self._written: dict[Key, L4Frontend] = {}
        by_id: dict[int, _Fe] = {}
        for k, v in self.maps["frontends"].items():
            fe = _Fe(
                key=key_of(k),
                id=v.id,
                flags=v.flags,
                table_off=v.table_off,
                table_size=v.table_size,
                reject_weight=v.reject_weight,
                generation=v.generation,
            )
            self._fes[fe.key] = fe
            by_id[fe.id] = fe
        self._fe_ids = IdPool(0, self.maps["fe_stats"].max_entries)
        self._be_ids = IdPool(1, self.maps["be_stats"].max_entries)  # 0 is REJECT_ID
        orphans: list[int] = []
        for bk, bv in self.maps["backends"].items():
            owner = by_id.get(bv.frontend_id)
            if owner is None:
                orphans.append(int(bk.value))
                continue
            owner.backends[backend_of(bv)] = (int(bk.value), bv.weight)
            self._be_ids.take(int(bk.value))
        for fe in self._fes.values():
            self._fe_ids.take(fe.id)
        self._pool = ExtentPool(
            self.maps["maglev"].max_entries,
            [(fe.table_off, fe.table_size) for fe in self._fes.values() if fe.table_size],
        )
        if orphans:  # a crash between writes: backends whose frontend is gone
            self.maps["backends"].delete_batch(_u32s(orphans))
        if self._fes:
            log.info("event=ebpf_adopted frontends=%d", len(self._fes))

    # -- verbs ------------------------------------------------------------------------

    def reconcile(self, desired: DesiredState) -> Outcome:
        want = {norm_key(f.key): f for f in desired.l4}
        upserts = [f for k, f in sorted(want.items()) if self._differs(k, f)]
        deletes = sorted(k for k in self._fes if k not in want)
        if not upserts and not deletes:
            return Outcome()
        errors = self._apply(upserts, deletes)
        return frontend_outcome(desired, len(upserts) + len(deletes) - len(errors), errors)

    def _differs(self, key: Key, f: L4Frontend) -> bool:
        fe = self._fes.get(key)
        if fe is None:
            return True
        if self._written.get(key) == f:
            return False
        try:
            spec = normalise(f)
        except FrontendError:
            return True  # let _plan report it for this frontend
        return fe.spec() != (_triples(spec), spec.reject_weight)

    def read_counters(self) -> list[FrontendCounters]:
        # Ids from this object's memory: no walk of the frontends and backends maps.
        frontends = [
            (key, fe.id, [(ipp, bid) for ipp, (bid, _) in fe.backends.items()])
            for key, fe in self._fes.items()
        ]
        return read_counters(self.maps, frontends)

    def programmed(self) -> list[ProgrammedFrontend]:
        """Read back from the maps (not from this object's memory)."""
        return read_programmed(self.maps)

    # -- the write path -----------------------------------------------------------------

    def _release_quarantine(self) -> None:
        for off, size in self._quarantine_extents:
            self._pool.free(off, size)
        for bid in self._quarantine_ids:
            self._be_ids.free(bid)
        self._quarantine_extents.clear()
        self._quarantine_ids.clear()

    def _plan(self, f: L4Frontend) -> _Plan:
        spec = normalise(f)  # FrontendError (a ValueError) before any write
        backends, reject_weight, key = _triples(spec), spec.reject_weight, spec.key
        old = self._fes.get(key)
        new_frontend = old is None
        fe_id = old.id if old else self._fe_ids.alloc()
        fe = _Fe(key, fe_id, 0, 0, 0, reject_weight, self._next_generation())
        new_ids: list[int] = []
        try:
            values: list[tuple[int, BackendC]] = []
            for ip, port, weight in backends:
                prev = old.backends.get((ip, port)) if old else None
                if prev is not None:
                    bid = prev[0]
                else:
                    bid = self._be_ids.alloc()
                    new_ids.append(bid)
                fe.backends[(ip, port)] = (bid, weight)
                values.append((bid, backend_value(ip, port, weight, fe_id)))
            entries = [(f"{ip}:{port}", w) for ip, port, w in backends]
            ids = [fe.backends[(ip, port)][0] for ip, port, _ in backends]
            if reject_weight:
                entries.append((REJECT_IDENTITY, reject_weight))
                ids.append(REJECT_ID)
            positive = sum(1 for _, w in entries if w > 0)
            table: array[int] = array("I")
            if not any(w > 0 for _, _, w in backends):
                fe.flags |= FE_REJECT_ALL
            else:
                size = maglev.table_size_for(positive, self.maglev_size)
                table = maglev.build_into(entries, size, ids)
                fe.table_size = size
                fe.table_off = self._pool.alloc(size)
        except BaseException:
            for bid in new_ids:
                self._be_ids.free(bid)
            if new_frontend:
                self._fe_ids.free(fe_id)
            raise
        removed = [
            bid for ipp, (bid, _) in (old.backends.items() if old else []) if ipp not in fe.backends
        ]
        old_extent = (old.table_off, old.table_size) if old and old.table_size else None
        return _Plan(fe, new_frontend, table, new_ids, values, removed, old_extent, f)

    def _next_generation(self) -> int:
        self._generation = (self._generation + 1) & 0xFFFFFFFF
        return self._generation

    def _apply(self, upserts: Sequence[L4Frontend], deletes: Sequence[Key]) -> dict[Key, str]:
        """Order: stats of new ids zeroed -> backends -> Maglev slots into free
        extents -> frontend entries flipped (atomic per frontend) -> removals.
        No packet sees a frontend whose table or backends are half-written."""
        self._release_quarantine()
        # Keyed as the desired state spells the frontend (its Failure is found
        # by that key), not by the canonical key of the maps.
        errors: dict[Key, str] = {}
        plans: list[_Plan] = []
        for f in upserts:
            try:
                plans.append(self._plan(f))
            except (EbpfError, ValueError, OSError) as exc:
                errors[f.key] = str(exc)
                log.warning("event=ebpf_frontend_failed frontend=%s error=%s", f.key, exc)
        try:
            self._write(plans)
        except OSError:
            # One batch failed: redo frontend by frontend to find the culprit.
            for p in plans:
                try:
                    self._write([p])
                except OSError as exc:
                    errors[p.source.key] = str(exc)
                    self._undo_plan(p)
                    log.warning("event=ebpf_frontend_failed frontend=%s error=%s", p.fe.key, exc)
        for p in plans:
            if p.source.key in errors:
                continue
            self._fes[p.fe.key] = p.fe
            self._written[p.fe.key] = p.source
            if p.old_extent:
                self._quarantine_extents.append(p.old_extent)
            self._quarantine_ids.extend(p.removed_backend_ids)
            if p.removed_backend_ids:
                self.maps["backends"].delete_batch(_u32s(p.removed_backend_ids))
        if deletes:
            self._delete(deletes)
        return errors

    def _undo_plan(self, p: _Plan) -> None:
        if p.fe.table_size:
            self._pool.free(p.fe.table_off, p.fe.table_size)
        for bid in p.new_backend_ids:
            # The batch that failed may have written this backend already: left
            # in the map, it would be read back (and adopted after a restart)
            # as a backend of whichever frontend gets its id next.  One key at
            # a time, since a batch delete stops at the first key it misses.
            with contextlib.suppress(OSError):
                self.maps["backends"].delete_batch(_u32s([bid]))
            self._be_ids.free(bid)
        if p.new_frontend:
            self._fe_ids.free(p.fe.id)

    def _write(self, plans: Sequence[_Plan]) -> None:
        if not plans:
            return
        self.writes += 1
        fe_stats, be_stats = self.maps["fe_stats"], self.maps["be_stats"]
        fe_stats.zero_percpu([p.fe.id for p in plans if p.new_frontend])
        be_stats.zero_percpu([bid for p in plans for bid in p.new_backend_ids])
        bkeys = [ctypes.c_uint32(bid) for p in plans for bid, _ in p.backend_values]
        bvals = [bv for p in plans for _, bv in p.backend_values]
        self.maps["backends"].put_batch(bkeys, bvals)
        slot_keys = array("I")
        slot_vals = array("I")
        for p in plans:
            if not p.fe.table_size:
                continue
            if self._maglev_mem is not None:
                # Free extents only: no reader looks at these slots yet.
                off, end = 2 * p.fe.table_off, 2 * (p.fe.table_off + p.fe.table_size)
                self._maglev_mem[off:end:2] = p.table
            else:
                slot_keys.extend(range(p.fe.table_off, p.fe.table_off + p.fe.table_size))
                slot_vals.extend(p.table)
        self.maps["maglev"].put_batch_u32(slot_keys, slot_vals)
        fkeys = [frontend_key(p.fe.key) for p in plans]
        self.maps["frontends"].put_batch(fkeys, [p.fe.value() for p in plans])

    def _delete(self, keys: Sequence[Key]) -> None:
        present = [k for k in keys if k in self._fes]
        if not present:
            return
        self.writes += 1
        self.maps["frontends"].delete_batch([frontend_key(k) for k in present])
        gone: list[int] = []
        for k in present:
            fe = self._fes.pop(k)
            self._written.pop(k, None)
            if fe.table_size:
                self._quarantine_extents.append((fe.table_off, fe.table_size))
            gone.extend(bid for bid, _ in fe.backends.values())
            self._fe_ids.free(fe.id)
        self.maps["backends"].delete_batch(_u32s(gone))
        self._quarantine_ids.extend(gone)

    # -- reading back, for tests ----------------------------------------------------------

    def backend_counters(self, key: Key) -> dict[tuple[str, int], tuple[int, int, int]]:
        """(ip, port) -> (packets, bytes, new flows) of one frontend's backends."""
        fe = self._fes[norm_key(key)]
        out: dict[tuple[str, int], tuple[int, int, int]] = {}
        for ipp, (bid, _) in fe.backends.items():
            cs = self.maps["be_stats"].get_percpu(ctypes.c_uint32(bid))
            out[ipp] = (
                sum(c.packets for c in cs),
                sum(c.bytes for c in cs),
                sum(c.flows for c in cs),
            )
        return out

    def maglev_table(self, key: Key) -> list[tuple[str, int] | None]:
        """The frontend's Maglev table as the maps hold it (None = reject slot)."""
        fe = self._fes[norm_key(key)]
        by_id = {bid: ipp for ipp, (bid, _) in fe.backends.items()}
        out: list[tuple[str, int] | None] = []
        slot = self.maps["maglev"]
        for i in range(fe.table_off, fe.table_off + fe.table_size):
            v = slot.get(ctypes.c_uint32(i))
            out.append(by_id.get(int(v.value)) if v is not None else None)
        return out

    def flush_flows(self) -> None:
        """Forget every tracked flow (tests: prove Maglev alone is sticky)."""
        for name in ("flows", "rev", "sock_rev", "sock_rev6"):
            self.maps[name].clear()
