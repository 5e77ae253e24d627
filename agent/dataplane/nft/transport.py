"""How the nftables dataplane reaches the kernel: the `Transport` seam and the
real transport, `KernelNft` (libnftables writes, netlink reads).

Owns the three things a transport does: apply ONE transaction atomically, read
our tables (or the inet table names) as one consistent snapshot, read the
counter sets.  `KernelNft` also owns the fallbacks when the netlink reader is
unavailable or fails: libnftables JSON listings (same result, 5-10x slower),
decoded here into the same `objects`.  It works in the network namespace of
the thread that constructs it (libnftables and the netlink socket open there).
It never decides what to write, never interprets what it read (`plan`,
`parse`), and touches nothing but what a transaction names.  `fake.FakeNft`
is the in-memory twin the unit tests use.

Costs that shaped it (libnftables 1.0.6, kernel 6.18, 10k frontends; see
bench/nft_scale.py): every write command makes libnftables dump all chains and
sets of the namespace first (not filtered by table in 1.0.6), and the kernel
re-validates, at commit, every chain of each table a goto/dnat was added to.
Sharding bounds the second; having no per-frontend count chains halves the
first.  `list tables` fills the FULL cache in 1.0.6 (every rule of every table),
and printing JSON listings dominates reading them: reads use netlink instead.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import nftables

from agent.dataplane.frontends import Key
from agent.dataplane.nft import layout as L
from agent.dataplane.nft import render
from agent.dataplane.nft.netlink import NFPROTO_INET, NetlinkReader, read_counts, read_listing
from agent.dataplane.nft.objects import Counts, Listing, TableDump, Transaction

# The name the log lines had before the package split: one logger for the dataplane.
log = logging.getLogger("agent.dataplane.nftables")
T = TypeVar("T")


class NftablesError(RuntimeError):
    """The kernel (or libnftables) refused a transaction or a read."""


class Transport(Protocol):
    def apply(self, tx: Transaction) -> None:
        """Run `tx` as ONE transaction: all of it or, raising NftablesError, none."""
        ...

    def tables(self) -> set[str]:
        """The names of every inet table (ours or not)."""
        ...

    def read(self, tables: set[str]) -> Listing:
        """`tables` (ours; the shared sets when the shared table is one of them),
        as one consistent snapshot."""
        ...

    def read_counters(self) -> Counts:
        """The shared table's counter sets (masq left empty)."""
        ...


class KernelNft:
    """libnftables for writes (nft text), NETLINK_NETFILTER for reads."""

    def __init__(self, netlink: bool = True) -> None:
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        self._nl: NetlinkReader | None = None
        if netlink:
            try:
                self._nl = NetlinkReader()
            except OSError as exc:  # reads fall back to libnftables listings
                log.warning("event=netlink_unavailable error=%r", exc)

    def apply(self, tx: Transaction) -> None:
        """libnftables parses and evaluates the whole script before sending one
        batch, and the kernel commits all of it or nothing."""
        rc, _output, error = self._nft.cmd(render.text(tx))
        if rc != 0:
            raise NftablesError(str(error).strip() or f"libnftables rc={rc}")

    def _list(self, cmd: dict[str, Any]) -> Any:
        rc, output, error = self._nft.json_cmd({"nftables": [cmd]})
        if rc != 0:
            raise NftablesError(str(error).strip() or f"libnftables rc={rc}")
        return output

    def tables(self) -> set[str]:
        """One netlink table dump (~1 ms); pyroute2, then libnftables, if it fails."""
        if self._nl is not None:
            try:
                return set(self._nl.tables())
            except OSError as exc:
                log.warning("event=netlink_read_failed what=tables error=%r", exc)
        try:
            from pyroute2.nftables.main import NFTables

            nf = NFTables(nfgen_family=NFPROTO_INET)
            try:
                return {str(t.get_attr("NFTA_TABLE_NAME")) for t in nf.get_tables()}
            finally:
                nf.close()
        except Exception as exc:  # any failure: fall back to libnftables
            log.debug("event=table_dump_fallback error=%r", exc)
        out = self._list({"list": {"tables": {"family": L.FAMILY}}})
        return {
            t["table"]["name"]
            for t in out.get("nftables", [])
            if t.get("table", {}).get("family") == L.FAMILY
        }

    def read(self, tables: set[str]) -> Listing:
        def from_json() -> Listing:
            # One command each: libnftables limits its cache fill to a listed table.
            out = Listing()
            for name in sorted(tables):
                listing = self._list({"list": {"table": {"family": L.FAMILY, "name": name}}})
                sets_from_json(listing, out.sets)
                out.tables += dumps_from_json(listing)
            return out

        return self._read("tables", lambda nl: read_listing(nl, tables), from_json)

    def read_counters(self) -> Counts:
        def from_json() -> Counts:
            out = Counts()
            for name in L.COUNTER_SETS:
                ref = {"family": L.FAMILY, "table": L.TABLE, "name": name}
                sets_from_json(self._list({"list": {"set": ref}}), out)
            return out

        return self._read("counters", read_counts, from_json)

    def _read(
        self, what: str, from_netlink: Callable[[NetlinkReader], T], from_json: Callable[[], T]
    ) -> T:
        """A netlink read repeated until consistent, or libnftables listings when
        netlink fails (same result, 5-10x slower)."""
        nl = self._nl
        if nl is not None:
            try:
                return nl.consistent(lambda: from_netlink(nl))
            except OSError as exc:
                log.warning("event=netlink_read_failed what=%s error=%r", what, exc)
        return from_json()


# -- libnftables JSON listings ------------------------------------------------------------


def _elem_val(elem: Any) -> tuple[Any, tuple[int, int]]:
    """An element as listed: plain, or wrapped with its counter."""
    if isinstance(elem, dict) and "elem" in elem:
        inner = elem["elem"]
        c = inner.get("counter") or {}
        return inner.get("val"), (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return elem, (0, 0)


def _key_from_elem(elem: Any) -> Key | None:
    try:
        vip, proto, port = elem["concat"]
        return (str(ipaddress.ip_address(vip)), str(proto), int(port))
    except (KeyError, TypeError, ValueError):
        return None


def _bkey_from_elem(elem: Any) -> tuple[Key, tuple[str, int]] | None:
    try:
        vip, proto, port, bip, bport = elem["concat"]
        key = (str(ipaddress.ip_address(vip)), str(proto), int(port))
        return key, (str(ipaddress.ip_address(bip)), int(bport))
    except (KeyError, TypeError, ValueError):
        return None


def sets_from_json(listing: Mapping[str, Any], out: Counts) -> None:
    """The counters and masquerade set from a listing of the shared table (or of
    its sets)."""
    for item in listing.get("nftables", []):
        s = item.get("set")
        if not s or s.get("table") != L.TABLE:
            continue
        name = s["name"]
        for raw in s.get("elem", []):
            val, counts = _elem_val(raw)
            if name in ("masq4", "masq6") and isinstance(val, str):
                out.masq.add(val)
            elif name in ("fcnt4", "fcnt6"):
                key = _key_from_elem(val)
                if key:
                    out.frontend_counts[key] = counts
            elif name in ("bcnt4", "bcnt6"):
                kb = _bkey_from_elem(val)
                if kb:
                    out.backend_counts.setdefault(kb[0], {})[kb[1]] = counts


def dumps_from_json(listing: Mapping[str, Any]) -> list[TableDump]:
    """Split a JSON listing (of any of our tables) into one `TableDump` per table."""
    per: dict[str, TableDump] = {}

    def of(table: str) -> TableDump:
        return per.setdefault(table, TableDump(table))

    for item in listing.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            of(c["table"]).chains.append(c["name"])
        elif "rule" in item:
            r = item["rule"]
            of(r["table"]).rules.append((r["chain"], str(r.get("comment", ""))))
        elif "map" in item and item["map"]["name"] in L.VERDICT_MAPS:
            m = item["map"]
            dump = of(m["table"])
            for elem in m.get("elem", []):
                key = _key_from_elem(_elem_val(elem[0])[0])
                target = (
                    elem[1].get("goto", {}).get("target") if isinstance(elem[1], dict) else None
                )
                dump.verdicts.append((m["name"], key, target))
    return list(per.values())
