"""nftables objects as plain data, both ways: what a transaction writes, and
what a read gives back.

Owns the vocabulary shared by the planner (`plan`), the one text renderer
(`render`), the transports (`transport.KernelNft`, `fake.FakeNft`), the netlink
decoder and the parser: a `Transaction` is an ordered list of verbs (add, flush,
delete) on `Table`, `Set`, `Chain`, `Rules` and `Elements`; a `Listing` is what
a read of some of our tables finds.  Only the small vocabulary the dataplane
uses exists here.  No I/O, no text, no knowledge of the gatewaylb layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from agent.dataplane.frontends import Key

# (statement, comment): one rule of a chain, both as nft text ("" = no comment).
# A plain tuple, not a dataclass: a big load writes ~50k of them and building
# a frozen dataclass costs ten times as much (measured: 10 ms against 1 ms).
RuleText = tuple[str, str]
# One element: its key's values in order (an address, a protocol name, a port...);
# in a verdict map the goto target comes last.
Elem = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Hook:
    """What makes a chain a base chain."""

    type: str  # filter | nat
    hook: str  # prerouting | output | postrouting
    priority: int


@dataclass(frozen=True, slots=True)
class Table:
    name: str


@dataclass(frozen=True, slots=True)
class Set:
    """A named set (counted or not) or, with `verdicts`, a verdict map."""

    table: str
    name: str
    type: str  # "ipv4_addr . inet_proto . inet_service"
    counter: bool = False
    verdicts: bool = False


@dataclass(frozen=True, slots=True)
class Chain:
    """`add` of a chain with `body` declares it with those rules (nft writes it
    as a `table { chain { ... } }` block, which also creates it); without a
    body, `add` only makes sure it exists (a base chain with its hook)."""

    table: str
    name: str
    hook: Hook | None = None
    body: tuple[RuleText, ...] | None = None


@dataclass(frozen=True, slots=True)
class Rules:
    """Rules appended to a chain that exists, one `add rule` each."""

    table: str
    chain: str
    rules: tuple[RuleText, ...]


@dataclass(frozen=True, slots=True)
class Elements:
    """Elements of one set, batched: libnftables evaluates each command
    separately, so 10k elements in one command are far cheaper than 10k commands."""

    table: str
    set: str
    elems: tuple[Elem, ...]
    goto: bool = False  # verdict map elements: the last value is the chain to goto


Obj = Table | Set | Chain | Rules | Elements
Verb = Literal["add", "flush", "delete"]
Op = tuple[Verb, Obj]


class Transaction:
    """Ops applied in order, all or nothing (knftables' Transaction)."""

    __slots__ = ("ops",)

    def __init__(self, ops: list[Op] | None = None) -> None:
        self.ops: list[Op] = ops if ops is not None else []

    def add(self, obj: Obj) -> None:
        self.ops.append(("add", obj))

    def flush(self, obj: Chain) -> None:
        self.ops.append(("flush", obj))

    def delete(self, obj: Table | Chain | Elements) -> None:
        self.ops.append(("delete", obj))

    def extend(self, other: Transaction) -> None:
        self.ops += other.ops

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __repr__(self) -> str:
        return f"Transaction({self.ops!r})"


# -- what a read gives back ----------------------------------------------------------


@dataclass(slots=True)
class TableDump:
    """Chains, rules and verdict-map elements of ONE of our tables, whoever read
    them (the netlink reader, a libnftables JSON listing, the fake)."""

    table: str
    chains: list[str] = field(default_factory=list)
    # (chain, comment or "") per rule, in chain order
    rules: list[tuple[str, str]] = field(default_factory=list)
    # (map name, key, goto target or None), fe4 / fe6 only; key None: undecodable
    verdicts: list[tuple[str, Key | None, str | None]] = field(default_factory=list)


@dataclass(slots=True)
class Counts:
    """The shared table's sets: masquerade addresses and counter elements."""

    masq: set[str] = field(default_factory=set)
    # key -> (packets, bytes) of the frontend, client -> VIP
    frontend_counts: dict[Key, tuple[int, int]] = field(default_factory=dict)
    # key -> (backend ip, port) -> (new flows, bytes of their first packets)
    backend_counts: dict[Key, dict[tuple[str, int], tuple[int, int]]] = field(default_factory=dict)


@dataclass(slots=True)
class Listing:
    """One consistent read of some of our tables (the shared sets only when the
    shared table was read)."""

    tables: list[TableDump] = field(default_factory=list)
    sets: Counts = field(default_factory=Counts)
