"""The nftables dataplane's reconcile logic over FakeNft: no root, no kernel.

What the kernel makes of the same transactions is proven by
tests/e2e/test_nftables_dataplane.py (including that the kernel and FakeNft
read back the same objects after the same transactions).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.dataplane.frontends import FrontendSpec, normalise
from agent.dataplane.nft import dataplane as D
from agent.dataplane.nft import layout as L
from agent.dataplane.nft import render
from agent.dataplane.nft.dataplane import NftablesDataplane
from agent.dataplane.nft.fake import FakeNft
from agent.dataplane.nft.objects import Chain, Elements, Hook, Rules, Set, Table, Transaction
from agent.dataplane.nft.parse import ParsedTable, parse
from agent.dataplane.nft.transport import NftablesError
from agent.reconcile import FRONTEND_NOT_PROGRAMMED
from agent.refs import ObjectRef
from agent.state import Backend, DesiredState, FrontendKey, FrontendSource, L4Frontend

Flow = tuple[str, int, str, int]


def frontend(
    n: int,
    weights: tuple[int, ...] = (1, 1),
    reject: int = 0,
    proto: str = "tcp",
    v6: bool = False,
    gateway: str = "",
) -> L4Frontend:
    """Frontend n: VIP 10.99.0.n (fd00:99::n), backends 10.20.n.1.. (fd00:20:n::1..)."""
    vip = f"fd00:99::{n:x}" if v6 else f"10.99.0.{n}"
    backends = tuple(
        Backend(f"fd00:20:{n:x}::{i + 1}" if v6 else f"10.20.{n}.{i + 1}", 8080, w)
        for i, w in enumerate(weights)
    )
    src = FrontendSource("ns", gateway or f"gw{n}", "l4")
    return L4Frontend(vip, proto, 80, backends, reject, src)


def state(*fes: L4Frontend) -> DesiredState:
    return DesiredState(l4=fes)


MIXED = (
    frontend(1),
    frontend(2, (3, 0, 1), reject=2),
    frontend(3, (), proto="udp"),
    frontend(4, (1, 2), proto="udp", v6=True),
    frontend(5, (0,), v6=True),
)


@pytest.fixture()
def nft() -> FakeNft:
    return FakeNft()


@pytest.fixture()
def flows() -> list[Flow]:
    return []


def make(nft: FakeNft, flows: list[Flow]) -> NftablesDataplane:
    def forget(vip: str, vport: int, ip: str, port: int) -> int:
        flows.append((vip, vport, ip, port))
        return 0

    return NftablesDataplane(transport=nft, forget_udp_flows=forget)


@pytest.fixture()
def dp(nft: FakeNft, flows: list[Flow]) -> Iterator[NftablesDataplane]:
    yield make(nft, flows)


def read(nft: FakeNft) -> ParsedTable:
    return parse(nft.read(nft.tables()))


def specs(*fes: L4Frontend) -> dict[FrontendKey, FrontendSpec]:
    return {fe.key: normalise(fe) for fe in fes}


def test_reconcile_from_empty_writes_everything_in_one_transaction(
    nft: FakeNft, dp: NftablesDataplane
) -> None:
    out = dp.reconcile(state(*MIXED))
    assert (out.changed, out.failures, out.converged) == (len(MIXED), (), True)
    assert len(nft.applied) == 1 and dp.transactions == 1
    parsed = read(nft)
    assert parsed.skeleton_ok and parsed.broken == {} and parsed.stray_elements == set()
    assert parsed.specs == specs(*MIXED)
    assert nft.tables() == set(L.layout_tables())
    assert parsed.masq == {b.ip for fe in MIXED for b in fe.backends}
    # every frontend has its counter elements, every backend (weight 0 too) its own
    assert parsed.counter_state() == {k: (True, L.backend_keys(s)) for k, s in parsed.specs.items()}
    assert [(p.vip, p.port, p.backends) for p in dp.programmed()] == [
        (s.vip, s.port, tuple((b.ip, b.port, b.weight) for b in s.backends))
        for _k, s in sorted(specs(*MIXED).items())
    ]


def test_a_second_reconcile_issues_no_transaction(nft: FakeNft, dp: NftablesDataplane) -> None:
    dp.reconcile(state(*MIXED))
    before = nft.snapshot()
    out = dp.reconcile(state(*MIXED))
    # equal objects built again: still nothing to write
    again = dp.reconcile(state(*(frontend(1), *MIXED[1:])))
    assert out.changed == again.changed == 0 and out.converged and again.converged
    assert len(nft.applied) == 1 and dp.transactions == 1
    assert nft.snapshot() == before


def test_a_change_touches_only_the_changed_frontends_shard(
    nft: FakeNft, dp: NftablesDataplane
) -> None:
    many = [frontend(n) for n in range(1, 41)]
    dp.reconcile(state(*many))
    changed = frontend(17, (1, 5))
    many[16] = changed
    out = dp.reconcile(state(*many))
    assert out.changed == 1 and len(nft.applied) == 2
    shard, chain = L.table_of(changed.key), L.chain_name(changed.key)
    for _verb, obj in nft.applied[-1]:
        if isinstance(obj, Chain | Rules):
            assert (obj.table, obj.name if isinstance(obj, Chain) else obj.chain) == (shard, chain)
        else:
            # counter and masquerade elements live in the shared table
            assert isinstance(obj, Elements) and obj.table == L.TABLE, obj
    text = render.text(nft.applied[-1])
    assert "10.20.17.2" in text and "10.20.16." not in text
    assert read(nft).specs == specs(*many)


def test_adoption_of_a_previous_run_writes_nothing(nft: FakeNft, flows: list[Flow]) -> None:
    first = make(nft, flows)
    first.reconcile(state(*MIXED))
    before = nft.snapshot()
    # A restart: a new dataplane over the same (kernel) state.
    again = make(nft, flows)
    out = again.reconcile(state(*MIXED))
    assert (out.changed, out.failures, out.converged) == (0, (), True)
    assert again.transactions == 0 and len(nft.applied) == 1
    assert nft.snapshot() == before
    assert again.programmed() == first.programmed()
    # and it goes on from there: one change is one small transaction
    out = again.reconcile(state(frontend(1, (2, 1)), *MIXED[1:]))
    assert out.changed == 1 and again.transactions == 1


def test_adoption_repairs_drift(nft: FakeNft, flows: list[Flow]) -> None:
    make(nft, flows).reconcile(state(*MIXED))
    clean = nft.snapshot()
    # Drift, as another hand would leave it:
    key1, key2 = frontend(1).key, frontend(2).key
    rules = nft.chain_rules(L.table_of(key1), L.chain_name(key1))
    rules[0] = (rules[0][0], rules[0][1].replace(",1", ",7"))  # a hand-edited weight
    stray = frontend(9).key  # a chain in the wrong shard, reached from there
    wrong = L.shard_table((L.shard_of(stray) + 1) % L.SHARDS)
    orphan = Chain(L.table_of(key2), "fe_4_0a6300ff_t_80")  # nothing reaches it
    nft.apply(
        Transaction(
            [
                ("add", Chain(wrong, L.chain_name(stray), body=(("accept", "glb r=0 fp=0"),))),
                ("add", Elements(wrong, "fe4", ((*stray, L.chain_name(stray)),), goto=True)),
                ("add", orphan),
                ("delete", Elements(L.TABLE, "masq4", (("10.20.1.1",),))),  # a lost address
                ("add", Elements(L.TABLE, "masq4", (("10.20.99.9",),))),  # a stale one
                ("add", Elements(L.TABLE, "fcnt4", (stray,))),  # a stale counter
            ]
        )
    )
    assert ("10.20.1.1",) not in nft.ruleset[L.TABLE].sets["masq4"].elems
    assert read(nft).broken  # what the restart finds
    again = make(nft, flows)
    out = again.reconcile(state(*MIXED))
    assert out.failures == () and out.converged and again.transactions == 1
    assert nft.snapshot() == clean
    assert again.reconcile(state(*MIXED)).changed == 0 and again.transactions == 1


def test_a_foreign_layout_is_replaced_in_one_transaction(nft: FakeNft, flows: list[Flow]) -> None:
    """Tables of another layout (here the single-table skeleton v1, and a stray
    gatewaylb-99) are not adopted; the first reconcile replaces them atomically."""
    nft.apply(
        Transaction(
            [
                ("add", Table(L.TABLE)),
                ("add", Chain(L.TABLE, "nat_pre", Hook("nat", "prerouting", -100))),
                ("add", Rules(L.TABLE, "nat_pre", (("accept", "glb skeleton v1"),))),
                ("add", Table("gatewaylb-99")),
            ]
        )
    )
    dp = make(nft, flows)
    assert dp.programmed() == []
    out = dp.reconcile(state(frontend(1)))
    assert out.failures == () and dp.transactions == 1
    assert nft.tables() == set(L.layout_tables())
    assert read(nft).skeleton_ok and read(nft).specs == specs(frontend(1))
    assert make(nft, flows).reconcile(state(frontend(1))).changed == 0


def test_one_refused_frontend_is_reported_and_the_others_land(
    nft: FakeNft, dp: NftablesDataplane
) -> None:
    bad = frontend(2, gateway="bad-gw")
    nft.fail_chains = {L.chain_name(bad.key)}
    out = dp.reconcile(state(frontend(1), bad, frontend(3)))
    (failure,) = out.failures
    assert failure.subject == ObjectRef("Gateway", "ns", "bad-gw")
    assert failure.event_reason == FRONTEND_NOT_PROGRAMMED
    assert "tcp 10.99.0.2:80 not programmed" in failure.message
    assert out.changed == 2 and not out.converged
    assert read(nft).specs == specs(frontend(1), frontend(3))
    # The refusal goes away: the retry lands the frontend, and only it.
    nft.fail_chains = set()
    out = dp.reconcile(state(frontend(1), bad, frontend(3)))
    assert (out.changed, out.failures, out.converged) == (1, (), True)
    assert read(nft).specs == specs(frontend(1), bad, frontend(3))


def test_a_refused_transaction_changes_nothing(nft: FakeNft, dp: NftablesDataplane) -> None:
    dp.reconcile(state(frontend(1)))
    before = nft.snapshot()
    nft.fail_all = True
    out = dp.reconcile(state(frontend(1, (5, 1)), frontend(2)))
    assert {f.subject for f in out.failures} == {
        ObjectRef("Gateway", "ns", "gw1"),
        ObjectRef("Gateway", "ns", "gw2"),
    }
    assert out.changed == 0 and not out.converged
    assert nft.snapshot() == before
    # Memory did not move either: the same change is written whole next time.
    nft.fail_all = False
    out = dp.reconcile(state(frontend(1, (5, 1)), frontend(2)))
    assert (out.changed, out.converged) == (2, True) and len(nft.applied) == 2
    assert read(nft).specs == specs(frontend(1, (5, 1)), frontend(2))


def test_an_invalid_frontend_keeps_what_it_had(nft: FakeNft, dp: NftablesDataplane) -> None:
    dp.reconcile(state(frontend(1)))
    broken = L4Frontend("10.99.0.1", "tcp", 80, (Backend("fd00::1", 80, 1),), 0, frontend(1).source)
    out = dp.reconcile(state(broken))
    (failure,) = out.failures
    assert "not of the vip's address family" in failure.message and not out.converged
    assert read(nft).specs == specs(frontend(1)) and len(nft.applied) == 1


def test_removal_takes_chain_elements_counters_and_udp_flows(
    nft: FakeNft, dp: NftablesDataplane, flows: list[Flow]
) -> None:
    udp = frontend(4, (1, 2), proto="udp")
    dp.reconcile(state(frontend(1), udp, frontend(3)))
    dp.reconcile(state(frontend(1), frontend(4, (1,), proto="udp")))
    parsed = read(nft)
    assert parsed.specs == specs(frontend(1), frontend(4, (1,), proto="udp"))
    assert frontend(3).key not in parsed.counter_state()
    assert L.chain_name(frontend(3).key) not in nft.ruleset[L.table_of(frontend(3).key)].chains
    assert parsed.masq == {"10.20.1.1", "10.20.1.2", "10.20.4.1"}
    # UDP has no end of flow: the removed backend's conntrack entries go (TCP's stay).
    assert flows == [("10.99.0.4", 80, "10.20.4.2", 8080)]
    dp.reconcile(state())
    parsed = read(nft)
    assert parsed.specs == {} and parsed.masq == set() and parsed.counter_state() == {}
    assert parsed.skeleton_ok  # the layout stays for the next frontend
    assert flows[1:] == [("10.99.0.4", 80, "10.20.4.1", 8080)]
    dp.cleanup()
    assert nft.tables() == set() and dp.transactions == 4


def test_counters_are_read_from_the_shared_sets(
    nft: FakeNft, dp: NftablesDataplane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(D, "COUNTER_TTL", 3600.0)
    one, six = frontend(1, (1, 0)), frontend(4, (2,), v6=True)
    dp.reconcile(state(one, six))
    nft.count("fcnt4", one.key, 10, 600)
    nft.count("bcnt4", (*one.key, "10.20.1.1", 8080), 3, 180)
    nft.count("fcnt6", six.key, 4, 400)
    nft.count("bcnt6", (*six.key, "fd00:20:4::1", 8080), 1, 80)
    counters = {(c.vip, c.port): c for c in dp.read_counters()}
    c1, c6 = counters[("10.99.0.1", 80)], counters[("fd00:99::4", 80)]
    assert (c1.packets, c1.bytes, c1.protocol) == (10, 600, "tcp")
    assert c1.backend_connections == {("10.20.1.1", 8080): 3, ("10.20.1.2", 8080): 0}
    assert (c6.packets, c6.bytes, c6.backend_connections) == (4, 400, {("fd00:20:4::1", 8080): 1})
    # Scrapes within the TTL share one read; a write starts a new one.
    nft.count("fcnt4", one.key, 1, 60)
    assert dp.read_counters()[0].packets == 10
    dp.reconcile(state(frontend(1, (1, 1)), six))  # rewrites the chain, keeps the counters
    assert dp.read_counters()[0].packets == 11
    nft.fail_all = True
    assert dp.reconcile(state(one, six)).failures  # a refused write, the cache is gone
    assert [c.packets for c in dp.read_counters()] == [11, 4]


def test_the_fake_is_all_or_nothing() -> None:
    nft = FakeNft()
    nft.apply(render.skeleton())
    before = nft.snapshot()
    chain = Chain("gatewaylb-00", "fe_x")
    bad = [
        Transaction([("add", chain), ("delete", Chain("gatewaylb-00", "fe_missing"))]),
        Transaction([("add", chain), ("add", Rules("gatewaylb-00", "fe_x", (("goto fe_y", ""),)))]),
        Transaction(
            [
                ("add", chain),
                ("add", Elements("gatewaylb-00", "fe4", (("10.0.0.1", "tcp", 80, "fe_x"),), True)),
                ("delete", chain),  # a verdict element still reaches it
            ]
        ),
        # a verdict element that reaches a chain that does not exist
        Transaction(
            [("add", Elements("gatewaylb-00", "fe4", (("10.0.0.1", "tcp", 80, "fe_x"),), True))]
        ),
        Transaction([("delete", Elements(L.TABLE, "masq4", (("10.0.0.1",),)))]),
        Transaction([("add", Elements(L.TABLE, "fcnt4", (("10.0.0.1", "tcp"),)))]),
        Transaction([("add", Set(L.TABLE, "masq4", "ipv6_addr"))]),
        Transaction([("delete", Table("nope"))]),
    ]
    for tx in bad:
        with pytest.raises(NftablesError):
            nft.apply(tx)
        assert nft.snapshot() == before, tx
    assert nft.refused == len(bad) and len(nft.applied) == 1
    nft.fail_next = 1
    with pytest.raises(NftablesError):
        nft.apply(Transaction([("add", chain)]))
    nft.apply(Transaction([("add", chain)]))
    assert "fe_x" in nft.ruleset["gatewaylb-00"].chains
