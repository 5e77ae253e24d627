"""The one diff of the nftables dataplane: what is programmed (`NftState`) and
what is desired -> the transaction that converges the first to the second.

Owns the frontend diff (`plan`), the order of the ops in a transaction, the
element batches, the masquerade set's arithmetic, the repair of what adoption
found broken, and the split of a refused transaction into the steps of the
retry (`setup`, `single`, `shrink`).  Each step is a `Change`: its transaction
and what the state becomes once the kernel took it.  Pure: never touches the
kernel and never changes the state (the dataplane does, after a write).

The order inside one transaction (every op valid where it stands):
layout (foreign tables deleted, skeletons) -> masquerade additions -> repairs ->
counter elements added -> rewritten chains flushed -> chains written -> verdict
elements added (their chains exist by now) and deleted (before the chains they
reach) -> chains deleted -> counter elements deleted -> masquerade deletions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.dataplane.frontends import FrontendSpec, Key, is_ipv6
from agent.dataplane.nft import layout as L
from agent.dataplane.nft import render
from agent.dataplane.nft.layout import fam
from agent.dataplane.nft.objects import Chain, Elem, Elements, Table, Transaction
from agent.dataplane.nft.state import NO_COUNTERS, CounterState, NftState


@dataclass(frozen=True, slots=True)
class Plan:
    """Frontends to write or remove, each sorted by key."""

    added: tuple[FrontendSpec, ...] = ()
    updated: tuple[tuple[FrontendSpec, FrontendSpec], ...] = ()  # (old, new)
    removed: tuple[FrontendSpec, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.updated or self.removed)

    @property
    def changed(self) -> int:
        return len(self.added) + len(self.updated) + len(self.removed)

    def singles(self) -> list[tuple[Key, Plan]]:
        """One plan per frontend, for the retry."""
        return (
            [(s.key, Plan(added=(s,))) for s in self.added]
            + [(n.key, Plan(updated=((o, n),))) for o, n in self.updated]
            + [(s.key, Plan(removed=(s,))) for s in self.removed]
        )


def plan(programmed: Mapping[Key, FrontendSpec], desired: Mapping[Key, FrontendSpec]) -> Plan:
    """In time proportional to the change plus one pass of identity checks: the
    dataplane reuses the programmed spec of an unchanged frontend."""
    added: list[FrontendSpec] = []
    updated: list[tuple[FrontendSpec, FrontendSpec]] = []
    for key, spec in desired.items():
        old = programmed.get(key)
        if old is spec:
            continue
        if old is None:
            added.append(spec)
        elif old.fingerprint != spec.fingerprint:
            updated.append((old, spec))
    # Every programmed key is desired when the counts say so: no set difference.
    removed = (
        [programmed[k] for k in programmed.keys() - desired.keys()]
        if len(desired) - len(added) != len(programmed)
        else []
    )
    return Plan(
        tuple(sorted(added, key=lambda s: s.key)),
        tuple(sorted(updated, key=lambda p: p[1].key)),
        tuple(sorted(removed, key=lambda s: s.key)),
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One transaction, and what the state becomes once the kernel took it."""

    tx: Transaction
    plan: Plan = Plan()
    # the layout is written and the debris cleared (`NftState.settle`)
    settles: bool = False
    repaired: Mapping[Key, FrontendSpec] = field(default_factory=dict)
    forgotten: frozenset[Key] = frozenset()  # counter elements deleted
    masq_add: frozenset[str] = frozenset()
    masq_del: frozenset[str] = frozenset()
    ipref_delta: Counter[str] = field(default_factory=Counter)


# -- elements ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Elements:
    """Element ops of one transaction, batched per set.  Additions go before the
    rules (none needs them), verdict deletions before the chains they point to."""

    add_vmap: dict[tuple[str, str], list[Elem]] = field(default_factory=dict)
    del_vmap: dict[tuple[str, str], list[Elem]] = field(default_factory=dict)
    add_set: dict[str, list[Elem]] = field(default_factory=dict)
    del_set: dict[str, list[Elem]] = field(default_factory=dict)

    def vmap_add(self, key: Key, chain: Chain) -> None:
        where = (chain.table, L.verdict_map(key))
        self.add_vmap.setdefault(where, []).append((*key, chain.name))

    def vmap_delete(self, key: Key) -> None:
        where = (L.table_of(key), L.verdict_map(key))
        self.del_vmap.setdefault(where, []).append(key)

    def counters(self, key: Key, have: CounterState, want: CounterState) -> None:
        """The counter elements of one frontend go from `have` to `want`."""
        f = fam(is_ipv6(key[0]))
        if want[0] and not have[0]:
            self.add_set.setdefault(f"fcnt{f}", []).append(key)
        elif have[0] and not want[0]:
            self.del_set.setdefault(f"fcnt{f}", []).append(key)
        for b in sorted(want[1] - have[1]):
            self.add_set.setdefault(f"bcnt{f}", []).append((*key, *b))
        for b in sorted(have[1] - want[1]):
            self.del_set.setdefault(f"bcnt{f}", []).append((*key, *b))

    def head(self, tx: Transaction) -> None:
        for name, elems in sorted(self.add_set.items()):
            tx.add(Elements(L.TABLE, name, tuple(elems)))

    def after_chains(self, tx: Transaction) -> None:
        for (table, name), elems in sorted(self.add_vmap.items()):
            tx.add(Elements(table, name, tuple(elems), goto=True))
        for (table, name), elems in sorted(self.del_vmap.items()):
            tx.delete(Elements(table, name, tuple(elems)))

    def tail(self, tx: Transaction) -> None:
        for name, elems in sorted(self.del_set.items()):
            tx.delete(Elements(L.TABLE, name, tuple(elems)))

    def all(self, tx: Transaction) -> None:
        self.head(tx)
        self.after_chains(tx)
        self.tail(tx)


def _masq(tx: Transaction, ips: set[str] | frozenset[str], add: bool) -> None:
    for v6 in (False, True):
        elems = sorted(ip for ip in ips if is_ipv6(ip) == v6)
        if elems:
            batch = Elements(L.TABLE, f"masq{fam(v6)}", tuple((ip,) for ip in elems))
            if add:
                tx.add(batch)
            else:
                tx.delete(batch)


def masq_diff(state: NftState, p: Plan) -> tuple[set[str], set[str], Counter[str]]:
    """(ips to add, ips to delete, refcount delta) for a plan, from the changed
    frontends only (all of them while the state is unverified)."""
    # One update each way over flat lists: a big load adds 10k frontends.
    delta: Counter[str] = Counter(
        [b.ip for spec in p.added for b in spec.backends]
        + [b.ip for _old, new in p.updated for b in new.backends]
    )
    delta.subtract([b.ip for old, _new in p.updated for b in old.backends])
    delta.subtract([b.ip for spec in p.removed for b in spec.backends])
    if state.unverified:
        touched = set(state.ipref) | set(delta) | state.masq
    else:
        touched = {ip for ip, d in delta.items() if d}
    after = {ip for ip in touched if state.ipref.get(ip, 0) + delta.get(ip, 0) > 0}
    add = {ip for ip in after if ip not in state.masq}
    delete = {ip for ip in touched - after if ip in state.masq}
    return add, delete, delta


# -- the parts of a transaction -------------------------------------------------------------


def _layout(state: NftState, tx: Transaction) -> None:
    """Foreign tables out, and every skeleton that is not the current one."""
    for name in sorted(state.foreign):
        tx.delete(Table(name))
    if L.TABLE not in state.current:
        render.shared_skeleton(tx)
    for shard in range(L.SHARDS):
        if L.shard_table(shard) not in state.current:
            render.shard_skeleton(tx, shard)


def _repairs(
    state: NftState, want: Mapping[Key, FrontendSpec], tx: Transaction
) -> dict[Key, FrontendSpec]:
    """Replace whatever adoption found broken: rewrite a frontend that is desired,
    else remove its element and chain.  Ops are chosen so that none fails on a
    half-present frontend (a failing op would roll back the whole transaction)."""
    debris = state.debris
    for table, map_name, stray in sorted(debris.stray):
        tx.delete(Elements(table, map_name, (stray,)))
    repaired: dict[Key, FrontendSpec] = {}
    for name, key in sorted(debris.broken.items(), key=lambda kv: kv[0]):
        table = debris.chain_tables.get(name, "")
        chain = Chain(table, name)
        if key is None or table != L.table_of(key) or key in repaired:
            tx.flush(chain)
            tx.delete(chain)
            continue
        spec = want.get(key)
        tx.add(chain)
        tx.flush(chain)
        if spec is not None:
            tx.add(render.frontend_rules(spec))
            tx.add(Elements(table, L.verdict_map(key), ((*key, name),), goto=True))
            repaired[key] = spec
            continue
        if key in debris.elements:
            tx.delete(Elements(table, L.verdict_map(key), (key,)))
        tx.delete(chain)
    return repaired


def frontends(
    p: Plan, present: Mapping[Key, CounterState] | None = None, tx: Transaction | None = None
) -> Transaction:
    """The ops of a plan's frontends (appended to `tx`).  `present` is what the
    counter sets hold per frontend (default: exactly what the plan's old specs
    imply)."""
    tx = tx if tx is not None else Transaction()
    present = present or {}
    el = _Elements()
    chains: dict[str, list[Chain]] = {}  # per table: one block each
    flushes: list[Chain] = []
    for spec in p.added:
        key = spec.key
        chain = render.frontend_chain(spec)
        chains.setdefault(chain.table, []).append(chain)
        el.vmap_add(key, chain)
        el.counters(key, present.get(key, NO_COUNTERS), (True, L.backend_keys(spec)))
    for old, new in p.updated:
        chain = render.frontend_chain(new)
        flushes.append(Chain(chain.table, chain.name))
        chains.setdefault(chain.table, []).append(chain)
        have = present.get(new.key, (True, L.backend_keys(old)))
        el.counters(new.key, have, (True, L.backend_keys(new)))
    deletes: list[Chain] = []
    for spec in p.removed:
        el.vmap_delete(spec.key)
        deletes.append(Chain(L.table_of(spec.key), L.chain_name(spec.key)))
        have = present.get(spec.key, (True, L.backend_keys(spec)))
        el.counters(spec.key, have, NO_COUNTERS)
    el.head(tx)
    for chain in flushes:
        tx.flush(chain)
    for table in sorted(chains):
        for chain in chains[table]:
            tx.add(chain)
    el.after_chains(tx)
    for chain in deletes:
        # After the verdict elements that reach it (same transaction: the
        # kernel drops the references in order; verified on 6.18).
        tx.flush(chain)
        tx.delete(chain)
    el.tail(tx)
    return tx


@dataclass(slots=True)
class _Setup:
    layout: Transaction  # foreign tables out, skeletons in
    repairs: Transaction  # what adoption found broken
    repaired: dict[Key, FrontendSpec]  # frontends the repairs rewrote
    counters: _Elements  # counter elements of repaired and stale frontends
    stale: frozenset[Key]  # frontends neither desired nor programmed


def _setup(state: NftState, want: Mapping[Key, FrontendSpec]) -> _Setup:
    """What every frontend needs first, whether written together or one by one."""
    layout = Transaction()
    _layout(state, layout)
    repairs = Transaction()
    repaired = _repairs(state, want, repairs)
    el = _Elements()
    for key, spec in repaired.items():
        el.counters(key, state.counters.get(key, NO_COUNTERS), (True, L.backend_keys(spec)))
    # Adopted counter elements of frontends that are gone: deleted here, so that
    # the retry's first step forgets only what it deleted (memory and kernel
    # agree however the transaction is split).
    stale: set[Key] = set()
    if state.unverified:
        for key, have in state.counters.items():
            if key not in want and key not in state.specs and key not in repaired:
                el.counters(key, have, NO_COUNTERS)
                stale.add(key)
    return _Setup(layout, repairs, repaired, el, frozenset(stale))


# -- changes ---------------------------------------------------------------------------------


def change(state: NftState, want: Mapping[Key, FrontendSpec]) -> Change:
    """Everything in ONE transaction (an empty one: nothing to write)."""
    s = _setup(state, want)
    programmed = dict(state.specs)
    programmed.update(s.repaired)
    p = plan(programmed, want)
    masq_add, masq_del, delta = masq_diff(state, p)
    for spec in s.repaired.values():
        masq_add |= L.backend_ips(spec) - state.masq
        masq_del -= L.backend_ips(spec)
    tx = s.layout
    _masq(tx, masq_add, add=True)
    tx.extend(s.repairs)
    s.counters.all(tx)
    frontends(p, state.counters, tx)
    _masq(tx, masq_del, add=False)
    return Change(
        tx,
        p,
        settles=True,
        repaired=s.repaired,
        forgotten=s.stale,
        masq_add=frozenset(masq_add),
        masq_del=frozenset(masq_del),
        ipref_delta=delta,
    )


def setup(state: NftState, want: Mapping[Key, FrontendSpec]) -> Change:
    """The retry's first step: layout and repairs only (every frontend needs them)."""
    s = _setup(state, want)
    ips: set[str] = set()
    for spec in s.repaired.values():
        ips |= L.backend_ips(spec)
    tx = s.layout
    _masq(tx, ips - state.masq, add=True)
    tx.extend(s.repairs)
    s.counters.all(tx)
    return Change(tx, settles=True, repaired=s.repaired, forgotten=s.stale, masq_add=frozenset(ips))


def single(state: NftState, p: Plan) -> Change:
    """The retry, one frontend at a time.  Masquerade additions go with the
    frontend; removals wait for `shrink` (the union of old and new addresses
    keeps every rule valid)."""
    add, _delete, delta = masq_diff(state, p)
    tx = Transaction()
    _masq(tx, add, add=True)
    frontends(p, state.counters, tx)
    return Change(tx, p, masq_add=frozenset(add), ipref_delta=delta)


def shrink(state: NftState) -> Change:
    """The retry's last step: masquerade addresses no programmed backend has."""
    stale = {ip for ip in state.masq if state.ipref.get(ip, 0) <= 0}
    tx = Transaction()
    _masq(tx, stale, add=False)
    return Change(tx, masq_del=frozenset(stale))
