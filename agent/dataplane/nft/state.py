"""What the kernel holds, as far as the nftables dataplane knows: one object.

Owns `NftState` (programmed frontends, counter elements, masquerade set, which
tables carry the current skeleton, what adoption found broken) and the rules
by which it follows the kernel: it changes only after a transaction the kernel
took (`settle`, `commit`), or by adoption (`adopted`).  It never talks to the
kernel and never decides what to write (`plan` does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.dataplane.frontends import FrontendSpec, Key
from agent.dataplane.nft import layout as L
from agent.dataplane.nft.layout import BackendKeys

# (frontend element present, backend elements present) in the counter sets
CounterState = tuple[bool, BackendKeys]
NO_COUNTERS: CounterState = (False, frozenset())


@dataclass(frozen=True, slots=True)
class Debris:
    """What adoption found that a correct run never leaves; the next write
    repairs it (and empties it)."""

    # chains that do not parse -> the key a map element gives them (None: orphan)
    broken: Mapping[str, Key | None] = field(default_factory=dict)
    # chain name -> table, for every non-base chain seen
    chain_tables: Mapping[str, str] = field(default_factory=dict)
    # keys with a verdict element in their own shard's map
    elements: frozenset[Key] = frozenset()
    # verdict elements in a table that is not their key's shard: (table, map, key)
    stray: frozenset[tuple[str, str, Key]] = frozenset()


@dataclass(slots=True)
class NftState:
    # frontend -> the spec its chain, verdict element and counters were written for
    specs: dict[Key, FrontendSpec] = field(default_factory=dict)
    # frontend -> its counter elements (adoption may find any subset)
    counters: dict[Key, CounterState] = field(default_factory=dict)
    masq: set[str] = field(default_factory=set)  # the kernel's masquerade set
    # backend ip -> number of programmed backends with it: what masq should be
    ipref: Counter[str] = field(default_factory=Counter)
    # tables whose skeleton (sets, maps, base chains) is the current layout's
    current: set[str] = field(default_factory=set)
    # our tables that do not belong to the layout (other shard count, older
    # single-table layout): deleted by the next write, atomically with
    # writing the new layout
    foreign: set[str] = field(default_factory=set)
    # adopted, not yet reconciled once: the masquerade and counter sets may hold
    # elements no programmed frontend explains, so the next write checks them all
    unverified: bool = False
    debris: Debris = field(default_factory=Debris)

    @classmethod
    def adopted(
        cls,
        specs: Mapping[Key, FrontendSpec],
        counters: dict[Key, CounterState],
        masq: set[str],
        current: set[str],
        foreign: set[str],
        debris: Debris,
    ) -> NftState:
        return cls(
            specs=dict(specs),
            counters=counters,
            masq=masq,
            ipref=Counter(b.ip for s in specs.values() for b in s.backends),
            current=current,
            foreign=foreign,
            unverified=True,
            debris=debris,
        )

    @property
    def rebuild(self) -> bool:
        """A foreign layout and nothing of ours: replace it in one transaction."""
        return bool(self.foreign) and L.TABLE not in self.current and not self.specs

    def settle(self, repaired: Mapping[Key, FrontendSpec], forgotten: frozenset[Key]) -> None:
        """The layout is written, foreign tables and debris gone, `repaired`
        rewritten and the counter elements of `forgotten` deleted."""
        self.foreign.clear()
        self.current = set(L.layout_tables())
        for key, spec in repaired.items():
            self.specs[key] = spec
            self.ipref.update(b.ip for b in spec.backends)
            self.counters[key] = (True, L.backend_keys(spec))
        for key in forgotten:
            self.counters.pop(key, None)
        self.debris = Debris()

    def commit(
        self,
        added: tuple[FrontendSpec, ...],
        updated: tuple[tuple[FrontendSpec, FrontendSpec], ...],
        removed: tuple[FrontendSpec, ...],
        ipref_delta: Counter[str],
    ) -> None:
        """Frontends written or removed: memory follows the kernel only after a
        successful transaction."""
        for spec in added:
            self.specs[spec.key] = spec
            self.counters[spec.key] = (True, L.backend_keys(spec))
        for _old, new in updated:
            self.specs[new.key] = new
            self.counters[new.key] = (True, L.backend_keys(new))
        for spec in removed:
            self.specs.pop(spec.key, None)
            self.counters.pop(spec.key, None)
        self.ipref.update(ipref_delta)
        for ip in [ip for ip, d in ipref_delta.items() if d and self.ipref[ip] <= 0]:
            del self.ipref[ip]
