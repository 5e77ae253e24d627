"""The eBPF dataplane's reconcile logic (`MapReconciler`) against in-memory maps.

No root, no kernel, no bcc: the maps are tests/unit/fake_maps.py's, byte for
byte what the kernel would hold.  What the programs do with them is proven in
the kernel by tests/e2e/test_ebpf_dataplane.py.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

import pytest
from fake_maps import FakeMaps

from agent.dataplane.base import ProgrammedFrontend
from agent.dataplane.bpf import nft_table
from agent.dataplane.bpf.layouts import (
    FE_REJECT_ALL,
    MARK_MASQ,
    MARK_NOTRACK,
    MARK_REJECT,
    REJECT_ID,
    CounterC,
    FrontendC,
    Key,
    backend_of,
    backend_value,
    frontend_key,
    key_of,
)
from agent.dataplane.ebpf.reconciler import MapReconciler
from agent.dataplane.ebpf.view import EbpfView
from agent.reconcile import FRONTEND_NOT_PROGRAMMED
from agent.refs import ObjectRef
from agent.state import Backend, DesiredState, FrontendSource, L4Frontend

VIP = "192.0.2.1"
VIP6 = "2001:db8::1"


def be(n: int, weight: int = 1, port: int = 8080) -> Backend:
    return Backend(f"10.20.0.{n}", port, weight)


def be6(n: int, weight: int = 1) -> Backend:
    return Backend(f"fd00:20::{n:x}", 8080, weight)


def fe(
    port: int,
    backends: Iterable[Backend],
    *,
    vip: str = VIP,
    proto: str = "tcp",
    reject: int = 0,
    gateway: str = "gw",
) -> L4Frontend:
    return L4Frontend(vip, proto, port, tuple(backends), reject, FrontendSource("ns", gateway, "l"))


def state(*frontends: L4Frontend) -> DesiredState:
    return DesiredState(l4=frontends)


def entries(maps: FakeMaps) -> dict[Key, FrontendC]:
    return {key_of(k): v for k, v in maps["frontends"].items()}


def backend_ids(maps: FakeMaps, frontend_id: int) -> dict[tuple[str, int], int]:
    return {
        backend_of(v): int(k.value)
        for k, v in maps["backends"].items()
        if v.frontend_id == frontend_id
    }


def end(entry: FrontendC) -> int:
    return int(entry.table_off + entry.table_size)


def slots(maps: FakeMaps, entry: FrontendC) -> list[int]:
    pool = maps["maglev"]
    values = (pool.get(ctypes.c_uint32(i)) for i in range(entry.table_off, end(entry)))
    return [int(v.value) for v in values if v is not None]


def extents_overlap(a: FrontendC, b: FrontendC) -> bool:
    return bool(a.table_off < end(b) and b.table_off < end(a))


A = fe(80, [be(1), be(2), be(3)])
B = fe(53, [be(1, 2), be(2)], proto="udp", reject=1, gateway="gw-b")
C = fe(443, [be6(1), be6(2), be6(3)], vip=VIP6, gateway="gw-c")
REFUSE_ALL = fe(81, [be(1, 0)], gateway="gw-d")


@pytest.fixture
def maps() -> FakeMaps:
    return FakeMaps()


# -- from empty, and again -----------------------------------------------------------


def test_reconcile_from_empty_programs_every_frontend(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    out = rec.reconcile(state(A, B, C, REFUSE_ALL))
    assert (out.changed, out.failures, out.converged) == (4, (), True)
    assert rec.writes == 1
    assert rec.programmed() == [
        ProgrammedFrontend(VIP, "tcp", 80, tuple((f"10.20.0.{n}", 8080, 1) for n in (1, 2, 3)), 0),
        ProgrammedFrontend(VIP, "tcp", 81, (("10.20.0.1", 8080, 0),), 0),
        ProgrammedFrontend(VIP, "udp", 53, (("10.20.0.1", 8080, 2), ("10.20.0.2", 8080, 1)), 1),
        ProgrammedFrontend(
            VIP6, "tcp", 443, tuple((f"fd00:20::{n}", 8080, 1) for n in (1, 2, 3)), 0
        ),
    ]
    got = entries(maps)
    assert len({v.id for v in got.values()}) == 4
    refuse = got[REFUSE_ALL.key]
    assert refuse.flags & FE_REJECT_ALL and refuse.table_size == 0
    tables = [got[k] for k in (A.key, B.key, C.key)]
    assert [t.table_size for t in tables] == [1021, 1021, 1021]  # 3 weighted entries each
    assert not any(extents_overlap(x, y) for x in tables for y in tables if x is not y)
    # Each Maglev table holds its own backends only; B's reject share is slot value 0.
    for f, entry in ((A, got[A.key]), (B, got[B.key])):
        ids = set(backend_ids(maps, entry.id).values())
        assert set(slots(maps, entry)) == ids | ({REJECT_ID} if f.reject_weight else set())


def test_a_second_reconcile_writes_nothing(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    rec.reconcile(state(A, B, C))
    writes, batches, before = rec.writes, maps.batches, maps.dump()
    assert rec.reconcile(state(A, B, C)).changed == 0
    # The same frontends spelled otherwise: a long IPv6 form, backends in
    # another order, one backend listed twice (weights add up).
    respelled = (
        fe(80, [be(3), be(1), be(2)]),
        fe(53, [be(2), be(1), be(1)], proto="udp", reject=1, gateway="gw-b"),
        fe(443, [be6(3), be6(2), be6(1)], vip="2001:0db8:0:0::0001", gateway="gw-c"),
    )
    out = rec.reconcile(state(*respelled))
    assert (out.changed, out.failures, out.converged) == (0, (), True)
    assert (rec.writes, maps.batches) == (writes, batches)
    assert maps.dump() == before


# -- changes ---------------------------------------------------------------------------


def test_a_changed_backend_set_rewrites_only_that_frontend(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    rec.reconcile(state(A, B, C))
    old, old_backends = entries(maps), dict(maps["backends"].data)
    old_a = old[A.key]
    kept = {ipp: bid for ipp, bid in backend_ids(maps, old_a.id).items() if ipp[0] != "10.20.0.3"}
    gone = backend_ids(maps, old_a.id)[("10.20.0.3", 8080)]
    others = {k: slots(maps, old[k]) for k in (B.key, C.key)}

    out = rec.reconcile(state(fe(80, [be(1), be(2), be(4)]), B, C))
    assert (out.changed, out.failures, rec.writes) == (1, (), 2)
    new = entries(maps)
    assert {k: bytes(v) for k, v in new.items() if k != A.key} == {
        k: bytes(v) for k, v in old.items() if k != A.key
    }
    new_a = new[A.key]
    assert new_a.id == old_a.id and new_a.generation != old_a.generation
    # The new table went into a free extent; the old one is quarantined, not reused.
    assert not extents_overlap(new_a, old_a)
    now = backend_ids(maps, new_a.id)
    assert {ipp: now[ipp] for ipp in kept} == kept  # surviving backends keep their ids
    assert gone not in now.values() and gone not in set(slots(maps, new_a))
    assert set(slots(maps, new_a)) == set(now.values())
    assert {k: slots(maps, new[k]) for k in others} == others
    for bid in backend_ids(maps, new[B.key].id).values():
        key = bytes(ctypes.c_uint32(bid))
        assert maps["backends"].data[key] == old_backends[key]


def test_a_weight_change_keeps_ids_and_moves_the_table(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    rec.reconcile(state(A))
    before = entries(maps)[A.key]
    ids = backend_ids(maps, before.id)
    out = rec.reconcile(state(fe(80, [be(1, 5), be(2), be(3)])))
    assert out.changed == 1
    after = entries(maps)[A.key]
    assert backend_ids(maps, after.id) == ids and not extents_overlap(before, after)
    assert rec.programmed()[0].backends[0] == ("10.20.0.1", 8080, 5)


# -- adoption ----------------------------------------------------------------------------


def test_adoption_of_maps_a_previous_run_left_writes_nothing(maps: FakeMaps) -> None:
    first = MapReconciler(maps)
    first.reconcile(state(A, B, C, REFUSE_ALL))
    ids = {k: v.id for k, v in entries(maps).items()}
    maps["fe_stats"].set_percpu(ids[A.key], [CounterC(7, 700, 1), CounterC(3, 300, 1)])
    before, batches = maps.dump(), maps.batches

    second = MapReconciler(maps)  # the agent restarted
    out = second.reconcile(state(A, B, C, REFUSE_ALL))
    assert (out.changed, out.failures, second.writes) == (0, (), 0)
    assert maps.batches == batches and maps.dump() == before  # flows and counters kept
    assert second.programmed() == first.programmed()
    assert second.read_counters() == first.read_counters()
    assert second.maglev_table(A.key) == first.maglev_table(A.key)

    # What it adopted is taken: a new frontend gets a fresh id and a free extent.
    extra = fe(8080, [be(5), be(6)])
    assert second.reconcile(state(A, B, C, REFUSE_ALL, extra)).changed == 1
    got = entries(maps)
    assert got[extra.key].id not in ids.values()
    assert not any(extents_overlap(got[extra.key], got[k]) for k in (A.key, B.key, C.key))
    assert not set(backend_ids(maps, got[extra.key].id).values()) & {
        bid for k in ids for bid in backend_ids(maps, ids[k]).values()
    }


def test_adoption_drops_backends_whose_frontend_is_gone(maps: FakeMaps) -> None:
    MapReconciler(maps).reconcile(state(A))
    # A crash between writes: a backend of a frontend the maps no longer hold.
    maps["backends"].put_batch([ctypes.c_uint32(200)], [backend_value("10.9.9.9", 80, 1, 42)])
    MapReconciler(maps)
    assert bytes(ctypes.c_uint32(200)) not in maps["backends"].data
    assert len(maps["backends"].data) == 3


def test_a_pool_that_cannot_be_mapped_is_written_with_batches() -> None:
    """An older pin of the pool without BPF_F_MMAPABLE: same tables, by syscall."""
    mapped, unmapped = FakeMaps(), FakeMaps(mmapable=False)
    for maps in (mapped, unmapped):
        MapReconciler(maps).reconcile(state(A, B))
    assert MapReconciler(unmapped).maglev_table(A.key) == MapReconciler(mapped).maglev_table(A.key)
    assert len(unmapped["maglev"].data) == 2 * 1021


# -- failures ------------------------------------------------------------------------


def gateway_of(f: L4Frontend) -> ObjectRef:
    return ObjectRef("Gateway", f.source.namespace, f.source.gateway)


def test_one_failed_write_is_reported_for_that_frontend_only() -> None:
    # Room for exactly A, B and C: an id or extent the failure leaked would
    # make the retry below fail.
    maps = FakeMaps(max_frontends=3, max_backends=10, pool_slots=3 * 1021)  # backend ids 1..9
    rec = MapReconciler(maps)
    b = fe(53, [be(1), be(2), be(4)], proto="udp", gateway="gw-b")
    maps["frontends"].fail_key(frontend_key(b.key))

    out = rec.reconcile(state(A, b, C))
    assert out.changed == 2 and not out.converged
    (failure,) = out.failures
    assert failure.subject == gateway_of(b) and failure.event_reason == FRONTEND_NOT_PROGRAMMED
    assert f"udp {VIP}:53 not programmed" in failure.message
    assert {(p.vip, p.protocol, p.port) for p in rec.programmed()} == {A.key, C.key}
    assert rec.writes == 1 + 3  # the batch, then frontend by frontend
    # b's backends reached the map before its frontend write failed: its undo
    # takes them out again, so no later frontend (or restart) inherits them.
    assert len(maps["backends"].data) == sum(len(p.backends) for p in rec.programmed())

    maps["frontends"].heal()
    out = rec.reconcile(state(A, b, C))
    assert (out.changed, out.failures, out.converged) == (1, (), True)
    assert {(p.vip, p.protocol, p.port) for p in rec.programmed()} == {A.key, b.key, C.key}


def test_a_refused_batch_is_retried_frontend_by_frontend(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    maps["backends"].fail_next_batch()
    out = rec.reconcile(state(A, B, C))
    assert (out.changed, out.failures, out.converged) == (3, (), True)
    assert rec.writes == 1 + 3
    assert len(rec.programmed()) == 3


def test_a_write_failure_is_told_on_the_gateway_however_the_vip_is_spelled() -> None:
    maps = FakeMaps()
    rec = MapReconciler(maps)
    long_form = fe(443, [be6(1)], vip="2001:0db8::0001", gateway="gw-c")
    maps["frontends"].fail_key(frontend_key(C.key))
    out = rec.reconcile(state(A, long_form))
    assert [f.subject for f in out.failures] == [gateway_of(long_form)]


def test_bad_frontends_are_reported_per_frontend(maps: FakeMaps) -> None:
    bad = {
        "bad vip": fe(80, [be(1)], vip="192.0.2.300", gateway="g1"),
        "not of the vip's address family": fe(81, [be6(1)], gateway="g2"),
        "unsupported protocol": fe(82, [be(1)], proto="sctp", gateway="g3"),
        "port 0 out of range": fe(0, [be(1)], gateway="g4"),
        "does not fit 32 bits": fe(83, [be(1, 2**31), be(2, 2**31)], gateway="g5"),
    }
    rec = MapReconciler(maps)
    out = rec.reconcile(state(A, *bad.values()))
    assert out.changed == 1 and not out.converged
    by_gateway = {f.subject: f.message for f in out.failures}
    assert set(by_gateway) == {gateway_of(f) for f in bad.values()}
    for reason, f in bad.items():
        assert reason in by_gateway[gateway_of(f)]
    assert [(p.vip, p.port) for p in rec.programmed()] == [(VIP, 80)]
    # Told again each time (the daemon keeps them in status), with no write.
    writes, batches = rec.writes, maps.batches
    again = rec.reconcile(state(A, *bad.values()))
    assert len(again.failures) == len(bad) and again.changed == 0
    assert (rec.writes, maps.batches) == (writes, batches)


def test_a_full_pool_refuses_the_frontend_that_does_not_fit() -> None:
    maps = FakeMaps(pool_slots=1021 + 251)
    rec = MapReconciler(maps)
    small = fe(90, [be(1)], gateway="gw-small")
    out = rec.reconcile(state(A, B, small))
    assert [(f.subject, "pool full" in f.message) for f in out.failures] == [(gateway_of(B), True)]
    assert {p.port for p in rec.programmed()} == {80, 90}


# -- removal -------------------------------------------------------------------------


def test_removal_frees_ids_and_extents_after_a_quarantine(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    rec.reconcile(state(A, C))
    old_a = entries(maps)[A.key]
    a_ids = set(backend_ids(maps, old_a.id).values())
    d = fe(8443, [be(7), be(8), be(9)], gateway="gw-d")
    e = fe(9443, [be(4), be(5), be(6)], gateway="gw-e")

    # A goes while D comes: D may not take what a packet may still be reading.
    out = rec.reconcile(state(C, d))
    assert out.changed == 2
    got = entries(maps)
    assert A.key not in got and not backend_ids(maps, old_a.id)
    assert not extents_overlap(got[d.key], old_a)
    assert not set(backend_ids(maps, got[d.key].id).values()) & a_ids

    # One batch later the quarantine is over: E reuses A's extent and ids.
    rec.reconcile(state(C, d, e))
    new_e = entries(maps)[e.key]
    assert (new_e.table_off, new_e.table_size) == (old_a.table_off, old_a.table_size)
    assert set(backend_ids(maps, new_e.id).values()) == a_ids
    assert new_e.id == old_a.id


def test_removing_everything_empties_the_maps(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    rec.reconcile(state(A, B, C))
    out = rec.reconcile(state())
    assert (out.changed, out.failures) == (3, ())
    assert not maps["frontends"].data and not maps["backends"].data
    assert rec.programmed() == [] and rec.read_counters() == []


# -- reading back ------------------------------------------------------------------------


def test_counters_are_read_back(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    rec.reconcile(state(A, B))
    a_id = entries(maps)[A.key].id
    ids = backend_ids(maps, a_id)
    maps["fe_stats"].set_percpu(a_id, [CounterC(10, 1000, 0), CounterC(5, 500, 0)])
    maps["be_stats"].set_percpu(ids[("10.20.0.1", 8080)], [CounterC(4, 40, 2), CounterC(1, 10, 1)])

    counters = {(c.vip, c.protocol, c.port): c for c in rec.read_counters()}
    a = counters[A.key]
    assert (a.packets, a.bytes) == (15, 1500)
    assert a.backend_connections == {
        ("10.20.0.1", 8080): 3,
        ("10.20.0.2", 8080): 0,
        ("10.20.0.3", 8080): 0,
    }
    assert counters[B.key].packets == 0
    assert rec.backend_counters(A.key)[("10.20.0.1", 8080)] == (5, 50, 3)
    # `gatewaylb status` reads the same out of the maps alone.
    view = EbpfView(maps, "fake")
    assert view.read_counters() == rec.read_counters()
    assert view.programmed() == rec.programmed()


def test_a_new_frontend_starts_its_counters_at_zero(maps: FakeMaps) -> None:
    # What a frontend removed long ago counted, at the ids the next one gets.
    maps["fe_stats"].set_percpu(0, [CounterC(99, 9900, 9)] * 2)
    maps["be_stats"].set_percpu(1, [CounterC(99, 9900, 9)] * 2)
    rec = MapReconciler(maps)
    rec.reconcile(state(A))
    (counters,) = rec.read_counters()
    assert (counters.packets, counters.bytes) == (0, 0)
    assert set(counters.backend_connections.values()) == {0}


def test_the_maglev_table_reads_back_as_backends(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    rec.reconcile(state(B))
    table = rec.maglev_table(B.key)
    assert len(table) == 1021
    assert set(table) == {("10.20.0.1", 8080), ("10.20.0.2", 8080), None}  # None: reject


def test_flush_flows_empties_the_flow_tables_only(maps: FakeMaps) -> None:
    rec = MapReconciler(maps)
    rec.reconcile(state(A))
    for name in ("flows", "rev", "sock_rev", "sock_rev6"):
        m = maps[name]
        m.data[bytes(ctypes.sizeof(m.key_t))] = bytes(ctypes.sizeof(m.value_t))
    before = entries(maps)
    rec.flush_flows()
    assert not any(maps[n].data for n in ("flows", "rev", "sock_rev", "sock_rev6"))
    assert {k: bytes(v) for k, v in entries(maps).items()} == {
        k: bytes(v) for k, v in before.items()
    }


# -- the nftables table the programs' marks need --------------------------------------------


def test_the_private_table_acts_on_each_mark_and_is_rewritten_whole() -> None:
    cmds = nft_table.render()
    flushed = [c["flush"]["chain"]["name"] for c in cmds if "flush" in c]
    assert flushed == ["reject", "masquerade"]  # re-applying leaves one copy of each rule
    marks = [
        (r["add"]["rule"]["chain"], r["add"]["rule"]["expr"][0]["match"]["right"])
        for r in cmds
        if "rule" in r.get("add", {})
    ]
    assert marks == [
        ("reject", MARK_REJECT),
        ("reject", MARK_REJECT),
        ("masquerade", MARK_MASQ),
        ("reject", MARK_NOTRACK),
    ]
