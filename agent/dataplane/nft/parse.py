"""Reading our tables back: a `Listing` (what a read found) -> the programmed
frontends as FrontendSpecs, the skeleton tags, and whatever is broken.

Owns the trust rules of adoption: a frontend chain is believed only when its
rules' comments rebuild a spec whose fingerprint matches the footer's, and it
sits in its key's shard under the verdict element that names it; a table's
skeleton counts only when all its base chains carry the current tag.  Anything
else is reported (`broken`, `stray_elements`) for the next write to replace,
never silently kept.  Pure: never touches the kernel, never decodes netlink or
JSON (the transports do).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.dataplane.frontends import FrontendSpec, Key, canonical_ip
from agent.dataplane.nft import layout as L
from agent.dataplane.nft.objects import Counts, Listing, TableDump
from agent.dataplane.nft.state import CounterState
from agent.state import Backend


@dataclass(slots=True)
class ParsedTable:
    """Our tables read back (any subset of them: shared and/or shards)."""

    specs: dict[Key, FrontendSpec] = field(default_factory=dict)
    sets: Counts = field(default_factory=Counts)
    # skeleton tag per table seen (shared table and shards)
    tags: dict[str, str] = field(default_factory=dict)
    # chains that do not parse -> the key a map element gives them (None: orphan)
    broken: dict[str, Key | None] = field(default_factory=dict)
    # chain name -> table, for every non-base chain seen
    chain_tables: dict[str, str] = field(default_factory=dict)
    # keys with a verdict element in their own shard's map
    elements: set[Key] = field(default_factory=set)
    # verdict elements in a table that is not their key's shard: (table, map, key)
    stray_elements: set[tuple[str, str, Key]] = field(default_factory=set)

    @property
    def frontend_counts(self) -> dict[Key, tuple[int, int]]:
        return self.sets.frontend_counts

    @property
    def backend_counts(self) -> dict[Key, dict[tuple[str, int], tuple[int, int]]]:
        return self.sets.backend_counts

    @property
    def masq(self) -> set[str]:
        return self.sets.masq

    @property
    def skeleton_ok(self) -> bool:
        return all(self.tags.get(t) == L.SKELETON_TAG for t in L.layout_tables())

    def shards_ok(self) -> set[int]:
        return {i for i, t in enumerate(L.SHARD_TABLES) if self.tags.get(t) == L.SKELETON_TAG}

    def current(self) -> set[str]:
        """The tables whose skeleton is the current layout's."""
        return {t for t in L.layout_tables() if self.tags.get(t) == L.SKELETON_TAG}

    def counter_state(self) -> dict[Key, CounterState]:
        fronts, backs = self.sets.frontend_counts, self.sets.backend_counts
        return {k: (k in fronts, frozenset(backs.get(k, ()))) for k in fronts.keys() | backs}


def parse(listing: Listing) -> ParsedTable:
    """Rebuild the programmed frontends from one read of our tables."""
    out = ParsedTable(sets=listing.sets)
    for dump in listing.tables:
        parse_table(dump, out)
    return out


def parse_table(dump: TableDump, out: ParsedTable) -> ParsedTable:
    """Rebuild the programmed frontends of one table into `out`."""
    table = dump.table
    # bound locally: the loops below run 10k-50k times at adoption
    base, table_of, chain_name = L.BASE_CHAIN_NAMES, L.table_of, L.chain_name
    chains: dict[str, list[str]] = {}  # chain -> comments of its rules
    keys: dict[str, Key] = {}  # chain -> key, from the verdict maps
    for name in dump.chains:
        if name not in base:
            chains.setdefault(name, [])
            out.chain_tables[name] = table
    tagged: set[str] = set()
    for chain, comment in dump.rules:
        if chain in base:
            if comment.startswith("glb skeleton"):
                # every base chain of a table must carry the tag
                seen = out.tags.setdefault(table, comment)
                if seen != comment:
                    out.tags[table] = "mixed"
                if comment == L.SKELETON_TAG:
                    tagged.add(chain)
            continue
        chains.setdefault(chain, []).append(comment)
        out.chain_tables.setdefault(chain, table)
    for map_name, key, target in dump.verdicts:
        if not key or not target:
            continue
        if table_of(key) != table or chain_name(key) != target:
            out.stray_elements.add((table, map_name, key))
            continue
        keys[target] = key
        out.elements.add(key)
    # A table's tag counts only when all its base chains exist and are tagged.
    need = L.SHARED_CHAIN_NAMES if table == L.TABLE else L.SHARD_CHAIN_NAMES
    if dump.rules and out.tags.get(table) == L.SKELETON_TAG and tagged != need:
        out.tags[table] = "incomplete"
    for name, comments in chains.items():
        key = keys.get(name)
        parsed = (
            parse_chain(key, comments)
            if key and out.chain_tables.get(name) == table_of(key)
            else None
        )
        if parsed is None:
            out.broken[name] = key
            continue
        out.specs[parsed.key] = parsed
    return out


_FOOTER = re.compile(r"glb r=(\d+) fp=(\S+)")


def parse_chain(key: Key, comments: Iterable[str]) -> FrontendSpec | None:
    """The spec a frontend chain's comments describe; None unless the footer's
    fingerprint vouches for it."""
    backends: dict[tuple[str, int], int] = {}
    footer = None
    for comment in comments:
        if comment.startswith("glb b="):
            # "glb b=IP,PORT,W", or the last cascade rule's "glb b=IP,PORT,W r=0 fp=F"
            backend, _sep, rest = comment[6:].partition(" ")
            if rest:
                footer = _FOOTER.fullmatch("glb " + rest)
                if footer is None:
                    return None
            parts = backend.split(",")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                return None
            try:  # only canonical addresses: they are written back as nft text
                if canonical_ip(parts[0]) != parts[0]:
                    return None
            except ValueError:
                return None
            backends[(parts[0], int(parts[1]))] = int(parts[2])
        elif comment.startswith("glb r="):
            footer = _FOOTER.fullmatch(comment)
            if footer is None:
                return None
    if footer is None:
        return None
    ordered = tuple(Backend(ip, port, w) for (ip, port), w in sorted(backends.items()))
    spec = FrontendSpec(key[0], key[1], key[2], ordered, int(footer[1]))
    return spec if spec.fingerprint == footer[2] else None
