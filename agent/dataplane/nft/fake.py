"""`FakeNft`: a `Transport` that keeps the nftables objects in memory, as
knftables' Fake does, so the dataplane's reconcile logic is tested without a
kernel or root.

Owns an in-memory ruleset (tables, chains with their rules, sets and verdict
maps with their elements and counters).  A transaction is applied to a copy,
op by op, with the kernel's checks that matter to the dataplane (checked
against kernel 6.18 and nft 1.0.6): a missing table, chain, set or element; a
chain deleted while a rule or verdict element still reaches it (its own rules
go with it); a goto to a chain that does not exist; an element of the wrong
shape; an element that exists with another verdict.  The copy replaces the
ruleset only when every op passed: all or nothing.  It can be told to refuse
transactions (the next n, all, or any touching given chains).  Reads answer
from memory in the same `objects` the real transport returns.  It never
touches the kernel; it renders no text (tests of the text live with `render`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from agent.dataplane.frontends import Key
from agent.dataplane.nft import layout as L
from agent.dataplane.nft.objects import (
    Chain,
    Counts,
    Elem,
    Elements,
    Hook,
    Listing,
    Obj,
    Rules,
    RuleText,
    Set,
    Table,
    TableDump,
    Transaction,
    Verb,
)
from agent.dataplane.nft.transport import NftablesError

_GOTO = re.compile(r"\b(?:goto|jump) ([A-Za-z0-9_-]+)")


@dataclass(slots=True)
class FakeElement:
    target: str | None = None  # verdict maps: the chain to goto
    packets: int = 0
    bytes: int = 0


@dataclass(slots=True)
class FakeSet:
    spec: Set
    elems: dict[Elem, FakeElement] = field(default_factory=dict)


@dataclass(slots=True)
class FakeChain:
    hook: Hook | None = None
    rules: list[RuleText] = field(default_factory=list)


@dataclass(slots=True)
class FakeTable:
    chains: dict[str, FakeChain] = field(default_factory=dict)
    sets: dict[str, FakeSet] = field(default_factory=dict)


class FakeNft:
    """An in-memory inet ruleset behind the `Transport` interface."""

    def __init__(self) -> None:
        self.ruleset: dict[str, FakeTable] = {}
        self.applied: list[Transaction] = []  # every transaction taken, in order
        self.refused = 0  # transactions refused (told to, or invalid)
        # Told to fail: the next `fail_next` transactions, every one, or any
        # that writes one of `fail_chains` (its chain, rules or verdict element).
        self.fail_next = 0
        self.fail_all = False
        self.fail_chains: set[str] = set()

    # -- Transport ---------------------------------------------------------------------

    def apply(self, tx: Transaction) -> None:
        if self.fail_all or self.fail_next > 0 or self._touches(tx, self.fail_chains):
            self.fail_next = max(0, self.fail_next - 1)
            self.refused += 1
            raise NftablesError("Operation not permitted (FakeNft told to refuse)")
        work = copy.deepcopy(self.ruleset)
        try:
            for verb, obj in tx:
                _apply(work, verb, obj)
        except NftablesError:
            self.refused += 1
            raise
        self.ruleset = work
        self.applied.append(tx)

    def tables(self) -> set[str]:
        return set(self.ruleset)

    def read(self, tables: set[str]) -> Listing:
        out = Listing()
        for name in sorted(tables & set(self.ruleset)):
            t = self.ruleset[name]
            dump = TableDump(name, chains=list(t.chains))
            dump.rules = [(c, comment) for c, ch in t.chains.items() for _s, comment in ch.rules]
            for map_name in L.VERDICT_MAPS:
                fs = t.sets.get(map_name)
                for elem, fe in fs.elems.items() if fs else ():
                    dump.verdicts.append((map_name, _key(elem), fe.target))
            out.tables.append(dump)
            if name == L.TABLE:
                out.sets = self._counts(masq=True)
        return out

    def read_counters(self) -> Counts:
        return self._counts(masq=False)

    # -- for tests -----------------------------------------------------------------------

    def count(self, set_name: str, elem: Elem, packets: int, nbytes: int) -> None:
        """Traffic: add to the counter of one element of a shared set."""
        fe = self.ruleset[L.TABLE].sets[set_name].elems[elem]
        fe.packets += packets
        fe.bytes += nbytes

    def snapshot(self) -> dict[str, FakeTable]:
        """A copy of the ruleset, to compare with a later one."""
        return copy.deepcopy(self.ruleset)

    def chain_rules(self, table: str, chain: str) -> list[RuleText]:
        return self.ruleset[table].chains[chain].rules

    # -- inside -------------------------------------------------------------------------

    def _counts(self, masq: bool) -> Counts:
        out = Counts()
        shared = self.ruleset.get(L.TABLE)
        for name, fs in shared.sets.items() if shared else ():
            for elem, fe in fs.elems.items():
                if name.startswith("masq") and masq:
                    out.masq.add(str(elem[0]))
                elif name.startswith("fcnt"):
                    out.frontend_counts[_key(elem)] = (fe.packets, fe.bytes)
                elif name.startswith("bcnt"):
                    backend = (str(elem[3]), int(elem[4]))
                    out.backend_counts.setdefault(_key(elem), {})[backend] = (
                        fe.packets,
                        fe.bytes,
                    )
        return out

    @staticmethod
    def _touches(tx: Transaction, chains: set[str]) -> bool:
        if not chains:
            return False
        for _verb, obj in tx:
            if isinstance(obj, Chain) and obj.name in chains:
                return True
            if isinstance(obj, Rules) and obj.chain in chains:
                return True
            if isinstance(obj, Elements) and obj.goto and any(e[-1] in chains for e in obj.elems):
                return True
        return False


def _key(elem: Elem) -> Key:
    return (str(elem[0]), str(elem[1]), int(elem[2]))


def _fail(what: str, verb: Verb, obj: Obj) -> NftablesError:
    return NftablesError(f"Error: Could not process rule: {what}\n{verb} {obj!r}")


def _table(rs: dict[str, FakeTable], name: str, verb: Verb, obj: Obj) -> FakeTable:
    t = rs.get(name)
    if t is None:
        raise _fail("No such file or directory (table)", verb, obj)
    return t


def _check_gotos(t: FakeTable, rules: tuple[RuleText, ...], verb: Verb, obj: Obj) -> None:
    for statement, _comment in rules:
        for target in _GOTO.findall(statement):
            if target not in t.chains:
                raise _fail("No such file or directory (goto target)", verb, obj)


def _apply(rs: dict[str, FakeTable], verb: Verb, obj: Obj) -> None:
    """One op, with the kernel's checks."""
    if isinstance(obj, Table):
        if verb == "add":
            rs.setdefault(obj.name, FakeTable())
        elif verb == "delete":
            _table(rs, obj.name, verb, obj)
            del rs[obj.name]
        else:
            raise _fail("Invalid argument", verb, obj)
        return
    t = _table(rs, obj.table, verb, obj)
    if isinstance(obj, Set) and verb == "add":
        have = t.sets.get(obj.name)
        if have is not None and have.spec != obj:
            raise _fail("File exists (a different set of that name)", verb, obj)
        t.sets.setdefault(obj.name, FakeSet(obj))
    elif isinstance(obj, Chain):
        _chain(t, verb, obj)
    elif isinstance(obj, Rules) and verb == "add":
        chain = t.chains.get(obj.chain)
        if chain is None:
            raise _fail("No such file or directory (chain)", verb, obj)
        _check_gotos(t, obj.rules, verb, obj)
        chain.rules += obj.rules
    elif isinstance(obj, Elements) and verb in ("add", "delete"):
        _elements(t, verb, obj)
    else:
        raise _fail("Invalid argument", verb, obj)


def _chain(t: FakeTable, verb: Verb, obj: Chain) -> None:
    chain = t.chains.get(obj.name)
    if verb == "add":
        if chain is None:
            chain = t.chains[obj.name] = FakeChain(obj.hook)
        elif obj.hook is not None and chain.hook != obj.hook:
            raise _fail("File exists (a chain with another hook)", verb, obj)
        if obj.body is not None:
            _check_gotos(t, obj.body, verb, obj)
            chain.rules += obj.body
        return
    if chain is None:
        raise _fail("No such file or directory (chain)", verb, obj)
    if verb == "flush":
        chain.rules.clear()
        return
    if verb != "delete":
        raise _fail("Invalid argument", verb, obj)
    # The kernel deletes a chain with its rules, but not while anything reaches it.
    for fs in t.sets.values():
        if any(fe.target == obj.name for fe in fs.elems.values()):
            raise _fail("Device or resource busy (a verdict element reaches it)", verb, obj)
    for other in t.chains.values():
        if any(obj.name in _GOTO.findall(s) for s, _c in other.rules):
            raise _fail("Device or resource busy (a rule reaches it)", verb, obj)
    del t.chains[obj.name]


def _elements(t: FakeTable, verb: Verb, obj: Elements) -> None:
    fs = t.sets.get(obj.set)
    if fs is None:
        raise _fail("No such file or directory (set)", verb, obj)
    width = len(fs.spec.type.split(" . "))
    for elem in obj.elems:
        key, target = (elem[:-1], str(elem[-1])) if obj.goto else (elem, None)
        if len(key) != width or obj.goto != (fs.spec.verdicts and verb == "add"):
            raise _fail("Invalid argument (element shape)", verb, obj)
        have = fs.elems.get(key)
        if verb == "delete":
            if have is None:
                raise _fail("No such file or directory (element)", verb, obj)
            del fs.elems[key]
            continue
        if target is not None and target not in t.chains:
            raise _fail("No such file or directory (goto target)", verb, obj)
        if have is None:
            fs.elems[key] = FakeElement(target)
        elif have.target != target:
            raise _fail("File exists (element with another verdict)", verb, obj)
