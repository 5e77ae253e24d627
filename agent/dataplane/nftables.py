"""The nftables dataplane: converges the gatewaylb tables to the L4 frontends.

Owns `table inet gatewaylb` (shared: counters, masquerade, refusal) and the shard
tables `inet gatewaylb-NN` holding the frontend chains (see `nft_rules`), and the
UDP conntrack entries of endpoints it removes.  It never touches another table,
the ruleset as a whole, interfaces or routes.  It works in the network namespace
of the thread that constructs it (libnftables opens its netlink socket there):
the agent runs in the node's namespace, tests construct it in a thread switched
into a lab namespace.

The rendering is pure and lives in `nft_rules`; this module keeps what is
programmed, works out what changed (in time proportional to the change, not to
the number of frontends) and applies it as ONE libnftables transaction, written
as nft text (at 10k frontends libnftables evaluates text in ~60% of the time it
takes for the same JSON).  An unchanged state issues no transaction.  Reads
(adoption, `programmed`, `read_counters`) dump the kernel's objects over netlink
directly (`NetlinkReader`), with libnftables JSON listings as the fallback.

Costs that shaped it (libnftables 1.0.6, kernel 6.18, 10k frontends; see
bench/nft_scale.py): every write command makes libnftables dump all chains and
sets of the namespace first (not filtered by table in 1.0.6), and the kernel
re-validates, at commit, every chain of each table a goto/dnat was added to.
Sharding bounds the second; having no per-frontend count chains halves the
first.  `list tables` fills the FULL cache in 1.0.6 (every rule of every table),
and printing JSON listings dominates reading them: reads use netlink instead.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nftables

from agent.dataplane import nft_rules as R
from agent.dataplane.base import (
    FrontendCounters,
    ProgrammedFrontend,
)
from agent.dataplane.frontends import FrontendError, FrontendSpec, canonical_ip, is_ipv6, normalise
from agent.gcpause import gc_paused
from agent.reconcile import Outcome, frontend_outcome
from agent.state import UDP, DesiredState, FrontendKey, L4Frontend

log = logging.getLogger(__name__)

Key = FrontendKey
CounterState = tuple[bool, R.BackendKeys]
_NO_COUNTERS: CounterState = (False, frozenset())
NFPROTO_INET = 1
# read_counters() is called by every scrape; scrapes closer than this share a read.
COUNTER_TTL = 1.0
T = TypeVar("T")


class NftablesError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class _Written:
    changed: int  # frontends written or removed
    errors: dict[FrontendKey, str] = field(default_factory=dict)  # frontends that failed


# -- reading the kernel over netlink -------------------------------------------------
#
# Reads bypass libnftables: at 10k frontends, `list set` of the 40k-element backend
# counter set spends ~0.9 s printing JSON, and listing the shard tables ~2.5 s.
# Dumping the same objects straight from nf_tables over NETLINK_NETFILTER and
# parsing only the attributes used (set element keys, data and counters; rule
# comments; chain names) takes a fraction of that.  A read spans several dumps;
# it is retried when the ruleset generation changed during it, so it is one
# consistent snapshot.

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE = 1, 4, 7
NFT_MSG_GETSETELEM, NFT_MSG_GETGEN, NFT_MSG_GETOBJ = 13, 16, 19
NFT_OBJECT_COUNTER = 1
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x4, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF
NFT_GOTO = -4
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct(">i")
_BE64 = struct.Struct(">Q")
_PROTOS = {6: "tcp", 17: "udp"}


class NetlinkError(OSError):
    pass


def _attrs(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """type -> (payload start, payload end) of the attributes in buf[start:end]."""
    out: dict[int, tuple[int, int]] = {}
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, typ = unpack(buf, start)
        if length < 4:
            break
        out[typ & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


def _nested(buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(payload start, end) of every attribute in a list nest (NFTA_LIST_ELEM...)."""
    out = []
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, _typ = unpack(buf, start)
        if length < 4:
            break
        out.append((start + 4, start + length))
        start += (length + 3) & ~3
    return out


def _string(buf: bytes, span: tuple[int, int] | None) -> str:
    if span is None:
        return ""
    return buf[span[0] : span[1]].split(b"\0", 1)[0].decode(errors="replace")


_IP_TEXT: dict[bytes, str] = {}  # packed address -> canonical text (bounded below)


def _ip(raw: bytes) -> str:
    text = _IP_TEXT.get(raw)
    if text is None:
        if len(raw) == 4:
            text = socket.inet_ntop(socket.AF_INET, raw)
        else:
            text = canonical_ip(socket.inet_ntop(socket.AF_INET6, raw))
        if len(_IP_TEXT) > 1 << 17:
            _IP_TEXT.clear()
        _IP_TEXT[raw] = text
    return text


# Set keys as registers lay them out (every field padded to 4 bytes):
# address . proto . port [. backend address . backend port]
_KEYS = {
    12: struct.Struct(">4sB3xH2x"),
    24: struct.Struct(">16sB3xH2x"),
    20: struct.Struct(">4sB3xH2x4sH2x"),
    44: struct.Struct(">16sB3xH2x16sH2x"),
}


def _decode_key(raw: bytes) -> tuple[Key, tuple[str, int] | None] | None:
    layout = _KEYS.get(len(raw))
    if layout is None:
        return None
    fields = layout.unpack(raw)
    proto = fields[1]
    key = (_ip(fields[0]), _PROTOS.get(proto) or str(proto), fields[2])
    if len(fields) == 3:
        return key, None
    return key, (_ip(fields[3]), fields[4])


def _counter(buf: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(packets, bytes) of a `counter` expression nest."""
    # The layout the kernel writes (name, then data: bytes, packets), checked
    # byte for byte; anything else goes through the generic parser.
    if buf[start : start + 20] in _COUNTER_HEAD and buf[start + 28 : start + 32] == _PACKETS_HDR:
        return _BE64.unpack_from(buf, start + 32)[0], _BE64.unpack_from(buf, start + 20)[0]
    a = _attrs(buf, start, end)
    if _string(buf, a.get(1)) != "counter" or 2 not in a:
        return None
    d = _attrs(buf, *a[2])
    nbytes = _BE64.unpack_from(buf, d[1][0])[0] if 1 in d else 0
    packets = _BE64.unpack_from(buf, d[2][0])[0] if 2 in d else 0
    return packets, nbytes


_NAME = _NLA.pack(12, 1) + b"counter\0"
_COUNTER_HEAD = frozenset(
    _NAME + _NLA.pack(28, data) + _NLA.pack(12, 1) for data in (2, 2 | 0x8000)
)
_PACKETS_HDR = _NLA.pack(12, 2)


SetElem = tuple[bytes, tuple[int, int], str | None]  # key, (packets, bytes), goto target


def _set_elems(buf: bytes, start: int, end: int, out: list[SetElem]) -> None:
    top = _attrs(buf, start, end)
    if 3 not in top:  # NFTA_SET_ELEM_LIST_ELEMENTS
        return
    unpack = _NLA.unpack_from
    for es, ee in _nested(buf, *top[3]):
        key = None
        counts: tuple[int, int] | None = None
        target = None
        p = es
        while p + 4 <= ee:
            length, typ = unpack(buf, p)
            if length < 4:
                break
            typ &= NLA_TYPE_MASK
            if typ == 1:  # NFTA_SET_ELEM_KEY > NFTA_DATA_VALUE
                vlen, vtyp = unpack(buf, p + 4)
                if vtyp & NLA_TYPE_MASK == 1:
                    key = buf[p + 8 : p + 4 + vlen]
            elif typ == 7:  # NFTA_SET_ELEM_EXPR
                counts = _counter(buf, p + 4, p + length)
            elif typ == 10:  # NFTA_SET_ELEM_EXPRESSIONS
                for span in _nested(buf, p + 4, p + length):
                    counts = counts or _counter(buf, *span)
            elif typ == 2:  # NFTA_SET_ELEM_DATA > NFTA_DATA_VERDICT > code, chain
                d = _attrs(buf, p + 4, p + length)
                if 2 in d:
                    v = _attrs(buf, *d[2])
                    if 1 in v and _BE32.unpack_from(buf, v[1][0])[0] == NFT_GOTO:
                        target = _string(buf, v.get(2))
            p += (length + 3) & ~3
        if key is not None:
            out.append((key, counts or (0, 0), target))


def _rule_comment(buf: bytes, span: tuple[int, int] | None) -> str:
    """The comment in a rule's user data (libnftnl TLVs: type, length, value)."""
    if span is None:
        return ""
    i, end = span
    while i + 2 <= end:
        typ, length = buf[i], buf[i + 1]
        if typ == 0:  # NFTNL_UDATA_RULE_COMMENT, NUL-terminated
            return buf[i + 2 : i + 2 + length].split(b"\0", 1)[0].decode(errors="replace")
        i += 2 + length
    return ""


def _attr_str(typ: int, text: str) -> bytes:
    raw = text.encode() + b"\0"
    pad = (-len(raw)) % 4
    return _NLA.pack(4 + len(raw), typ) + raw + b"\0" * pad


class NetlinkReader:
    """Dumps nf_tables objects of the inet family over one NETLINK_NETFILTER
    socket, opened in the network namespace of the constructing thread."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self._sock.bind((0, 0))
        self._seq = 0
        # One request at a time on the socket (scrapes may come from another thread).
        self._lock = threading.RLock()

    def close(self) -> None:
        self._sock.close()

    def _request(self, msg: int, flags: int, attrs: bytes = b"") -> list[tuple[bytes, int, int]]:
        """Send one request; (buffer, payload start, end) of every reply message
        (payload: after the nfgenmsg header).  ENOENT is an empty answer."""
        with self._lock:
            return self._request_locked(msg, flags, attrs)

    def _request_locked(
        self, msg: int, flags: int, attrs: bytes = b""
    ) -> list[tuple[bytes, int, int]]:
        self._seq += 1
        seq = self._seq
        body = struct.pack("=BBH", NFPROTO_INET, 0, 0) + attrs
        mtype = (NFNL_SUBSYS_NFTABLES << 8) | msg
        self._sock.send(_NLMSG.pack(16 + len(body), mtype, flags, seq, 0) + body)
        out: list[tuple[bytes, int, int]] = []
        while True:
            buf = self._sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(buf):
                length, typ, mflags, mseq, _pid = _NLMSG.unpack_from(buf, off)
                if length < 16:
                    raise NetlinkError("bad netlink message")
                end = off + length
                if mseq != seq:
                    off = (end + 3) & ~3
                    continue
                if mflags & NLM_F_DUMP_INTR:
                    raise _Interrupted()
                if typ == NLMSG_DONE:
                    err = -struct.unpack_from("=i", buf, off + 16)[0] if length >= 20 else 0
                    if err > 0:  # a dump that failed half-way
                        raise NetlinkError(err, os.strerror(err))
                    return out
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", buf, off + 16)[0]
                    if err == 0:  # the ACK of a non-dump request
                        return out
                    if err == errno.ENOENT:
                        return []
                    raise NetlinkError(err, os.strerror(err))
                out.append((buf, off + 20, end))
                if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                    return out
                off = (end + 3) & ~3

    def _dump(self, msg: int, attrs: bytes = b"") -> list[tuple[bytes, int, int]]:
        return self._request(msg, NLM_F_REQUEST | NLM_F_DUMP, attrs)

    def genid(self) -> int:
        for buf, start, end in self._request(NFT_MSG_GETGEN, NLM_F_REQUEST):
            a = _attrs(buf, start, end)
            if 1 in a:
                return int(_BE32.unpack_from(buf, a[1][0])[0])
        raise NetlinkError("no generation id")

    def consistent(self, read: Callable[[], T]) -> T:
        """Run `read` (several dumps) until no commit happened during it."""
        with self._lock:
            for _attempt in range(5):
                before = self.genid()
                try:
                    result = read()
                except _Interrupted:
                    continue
                if self.genid() == before:
                    return result
            raise NetlinkError("the ruleset kept changing during the read")

    def tables(self) -> list[str]:
        return [_string(b, _attrs(b, s, e).get(1)) for b, s, e in self._dump(NFT_MSG_GETTABLE)]

    def set_elems(self, table: str, name: str) -> list[SetElem]:
        out: list[SetElem] = []
        for buf, start, end in self._dump(
            NFT_MSG_GETSETELEM, _attr_str(1, table) + _attr_str(2, name)
        ):
            _set_elems(buf, start, end, out)
        return out

    def counter(self, table: str, name: str) -> tuple[int, int] | None:
        """(packets, bytes) of a named counter; None when it does not exist."""
        attrs = (
            _attr_str(1, table)  # NFTA_OBJ_TABLE
            + _attr_str(2, name)  # NFTA_OBJ_NAME
            + _NLA.pack(8, 3)  # NFTA_OBJ_TYPE
            + struct.pack(">I", NFT_OBJECT_COUNTER)
        )
        for buf, start, end in self._request(NFT_MSG_GETOBJ, NLM_F_REQUEST | NLM_F_ACK, attrs):
            a = _attrs(buf, start, end)
            if 4 not in a:  # NFTA_OBJ_DATA
                continue
            d = _attrs(buf, *a[4])
            nbytes = _BE64.unpack_from(buf, d[1][0])[0] if 1 in d else 0
            packets = _BE64.unpack_from(buf, d[2][0])[0] if 2 in d else 0
            return packets, nbytes
        return None

    def chains(self) -> list[tuple[str, str]]:
        """(table, chain) of every inet chain (the kernel has no table filter here)."""
        out = []
        for buf, start, end in self._dump(NFT_MSG_GETCHAIN):
            a = _attrs(buf, start, end)
            out.append((_string(buf, a.get(1)), _string(buf, a.get(3))))
        return out

    def rules(self, table: str) -> list[tuple[str, str]]:
        """(chain, comment) of every rule of a table, in order."""
        out = []
        unpack = _NLA.unpack_from
        for buf, start, end in self._dump(NFT_MSG_GETRULE, _attr_str(1, table)):
            chain = comment = ""
            p = start
            while p + 4 <= end:  # only the chain and the user data are wanted
                length, typ = unpack(buf, p)
                if length < 4:
                    break
                typ &= NLA_TYPE_MASK
                if typ == 2:
                    chain = _string(buf, (p + 4, p + length))
                elif typ == 7:
                    comment = _rule_comment(buf, (p + 4, p + length))
                p += (length + 3) & ~3
            out.append((chain, comment))
        return out


class _Interrupted(NetlinkError):
    """A dump crossed a commit (NLM_F_DUMP_INTR): start the read again."""


def read_sets(nl: NetlinkReader, names: Iterable[str], out: R.ParsedTable) -> None:
    """The shared table's counter and masquerade sets, into `out`."""
    for name in names:
        elems = nl.set_elems(R.TABLE, name)
        if name.startswith("masq"):
            out.masq.update(_ip(k) for k, _c, _t in elems if len(k) in (4, 16))
            continue
        for raw, counts, _t in elems:
            decoded = _decode_key(raw)
            if decoded is None:
                continue
            key, backend = decoded
            if name.startswith("fcnt") and backend is None:
                out.frontend_counts[key] = counts
            elif name.startswith("bcnt") and backend is not None:
                out.backend_counts.setdefault(key, {})[backend] = counts


def read_tables(nl: NetlinkReader, tables: set[str], out: R.ParsedTable) -> None:
    """What `list table` of each of `tables` would give `parse_table`."""
    per = {t: R.Objects(t) for t in tables}
    for table, chain in nl.chains():
        if table in per:
            per[table].chains.append(chain)
    for table in sorted(tables):
        objs = per[table]
        objs.rules = nl.rules(table)
        if table == R.TABLE:
            read_sets(nl, R.SHARED_SETS, out)
            continue
        for map_name in ("fe4", "fe6"):
            for raw, _c, target in nl.set_elems(table, map_name):
                decoded = _decode_key(raw)
                key = decoded[0] if decoded and decoded[1] is None else None
                objs.verdicts.append((map_name, key, target))
    for table in sorted(tables):
        R.parse_objects(per[table], out)


def _backend_ips(spec: FrontendSpec | None) -> set[str]:
    return {b.ip for b in spec.backends} if spec else set()


class NftablesDataplane:
    """Dataplane over libnftables; adopts existing tables at construction."""

    name = "nftables"

    def __init__(self, interfaces: tuple[str, ...] = ()) -> None:
        # Accepted for the common dataplane signature; the tables' base chains
        # hook every interface of the namespace, so there is nothing to attach.
        self.interfaces = interfaces
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        # Transactions written, for tests and logs ("a no-op issues none").
        self.transactions = 0
        self._reset_memory()
        # Normalising is pure but not free (~25 us a frontend): reuse the spec
        # of a frontend equal to the one seen last time.
        self._normalised: dict[Key, tuple[L4Frontend, FrontendSpec]] = {}
        self._counter_cache: tuple[float, list[FrontendCounters]] | None = None
        self._nl: NetlinkReader | None = None
        try:
            self._nl = NetlinkReader()
        except OSError as exc:  # reads fall back to libnftables listings
            log.warning("event=netlink_unavailable error=%r", exc)
        self._adopt()

    def _reset_memory(self) -> None:
        """What the kernel holds, as far as this object knows."""
        self._specs: dict[Key, FrontendSpec] = {}
        # backend ip -> number of programmed backends with it (masquerade set)
        self._ipref: Counter[str] = Counter()
        self._masq: set[str] = set()  # the kernel's masquerade set
        self._masq_dirty = False  # _masq may differ from _ipref's keys
        self._counters: dict[Key, CounterState] = {}  # counter elements present
        self._counters_dirty = False  # elements of unprogrammed keys may remain
        self._shared_ok = False
        self._shards_ok: set[int] = set()
        self._broken: dict[str, Key | None] = {}
        self._chain_tables: dict[str, str] = {}
        self._elements: set[Key] = set()  # only needed for repairs
        self._stray: set[tuple[str, str, Key]] = set()
        # Our tables that do not belong to the layout (other shard count, older
        # single-table layout): deleted by the next reconcile, atomically with
        # writing the new layout.
        self._foreign: set[str] = set()

    # -- kernel I/O ---------------------------------------------------------------

    def _run(self, cmds: list[dict[str, Any]]) -> Any:
        rc, output, error = self._nft.json_cmd({"nftables": cmds})
        if rc != 0:
            raise NftablesError(str(error).strip() or f"libnftables rc={rc}")
        return output

    def _write(self, lines: list[str]) -> None:
        """ONE transaction: libnftables parses and evaluates the whole script
        before sending one batch, and the kernel commits all of it or nothing."""
        self.transactions += 1
        self._counter_cache = None
        rc, _output, error = self._nft.cmd("".join(line + "\n" for line in lines))
        if rc != 0:
            raise NftablesError(str(error).strip() or f"libnftables rc={rc}")

    def _our_tables(self) -> set[str]:
        """Names of our inet tables, from one netlink table dump (~1 ms)."""
        if self._nl is not None:
            try:
                return {n for n in self._nl.tables() if R.is_our_table(n)}
            except OSError as exc:
                log.warning("event=netlink_read_failed what=tables error=%r", exc)
        try:
            from pyroute2.nftables.main import NFTables

            nf = NFTables(nfgen_family=NFPROTO_INET)
            try:
                names = {str(t.get_attr("NFTA_TABLE_NAME")) for t in nf.get_tables()}
            finally:
                nf.close()
        except Exception as exc:  # any failure: fall back to libnftables
            log.debug("event=table_dump_fallback error=%r", exc)
            out = self._run([{"list": {"tables": {"family": R.FAMILY}}}])
            names = {
                t["table"]["name"]
                for t in out.get("nftables", [])
                if t.get("table", {}).get("family") == R.FAMILY
            }
        return {n for n in names if R.is_our_table(n)}

    def _read(self, tables: set[str], use_netlink: bool = True) -> R.ParsedTable:
        """Our tables as one consistent snapshot, parsed."""
        # One command each: libnftables limits its cache fill to a listed table.
        cmds = [{"list": {"table": {"family": R.FAMILY, "name": n}}} for n in sorted(tables)]
        return self._read_parsed(
            "tables",
            use_netlink,
            lambda nl, parsed: read_tables(nl, tables, parsed),
            [(cmd, R.parse_table) for cmd in cmds],
        )

    def _read_parsed(
        self,
        what: str,
        use_netlink: bool,
        from_netlink: Callable[[Any, R.ParsedTable], None],
        from_nft: list[tuple[dict[str, Any], Callable[[Any, R.ParsedTable], object]]],
    ) -> R.ParsedTable:
        """A netlink dump repeated until consistent, or libnftables listings
        when netlink fails (same result, 5-10x slower)."""
        nl = self._nl
        if nl is not None and use_netlink:

            def read() -> R.ParsedTable:
                parsed = R.ParsedTable()
                from_netlink(nl, parsed)
                return parsed

            try:
                return nl.consistent(read)
            except OSError as exc:
                log.warning("event=netlink_read_failed what=%s error=%r", what, exc)
        parsed = R.ParsedTable()
        for cmd, parse in from_nft:
            parse(self._run([cmd]), parsed)
        return parsed

    def _adopt(self) -> None:
        with gc_paused():
            self._adopt_tables()

    def _adopt_tables(self) -> None:
        tables = self._our_tables()
        if not tables:
            return
        layout = {R.TABLE, *R.SHARD_TABLES}
        parsed = self._read(tables & layout)
        # The shared table says which layout wrote the others.
        if parsed.tags.get(R.TABLE) != R.SKELETON_TAG:
            # An older or differently sharded layout (or a half-deleted one):
            # nothing is adopted, the next reconcile replaces it atomically.
            self._foreign = tables
            log.info("event=adopt layout=foreign tables=%d", len(tables))
            return
        self._foreign = tables - layout
        self._specs = dict(parsed.specs)
        self._ipref = Counter(b.ip for s in self._specs.values() for b in s.backends)
        self._masq = set(parsed.masq)
        self._masq_dirty = True
        self._counters = parsed.counter_state()
        self._counters_dirty = True
        self._shared_ok = parsed.tags.get(R.TABLE) == R.SKELETON_TAG
        self._shards_ok = parsed.shards_ok()
        self._broken = dict(parsed.broken)
        self._chain_tables = dict(parsed.chain_tables)
        self._elements = set(parsed.elements)
        self._stray = set(parsed.stray_elements)
        log.info(
            "event=adopt tables=%d frontends=%d broken=%d skeleton_ok=%s",
            len(tables),
            len(self._specs),
            len(self._broken),
            parsed.skeleton_ok,
        )

    # -- Dataplane ------------------------------------------------------------------

    def _desired(self, desired: DesiredState) -> tuple[dict[Key, FrontendSpec], dict[Key, str]]:
        errors: dict[Key, str] = {}
        want: dict[Key, FrontendSpec] = {}
        normalised: dict[Key, tuple[L4Frontend, FrontendSpec]] = {}
        cache = self._normalised
        for fe in desired.l4:
            key = fe.key
            if key in want or key in errors:
                errors[key] = "duplicate frontend"
                want.pop(key, None)
                continue
            cached = cache.get(key)
            if cached is not None and (cached[0] is fe or cached[0] == fe):
                want[key] = cached[1]
                normalised[key] = cached
                continue
            try:
                spec = normalise(fe)
            except FrontendError as exc:
                errors[key] = str(exc)
                continue
            # Reuse the programmed object when equal: the diff compares identity first.
            old = self._specs.get(key)
            if old is not None and old.fingerprint == spec.fingerprint:
                spec = old
            want[key] = spec
            normalised[key] = (fe, spec)
        self._normalised = normalised
        # A frontend that cannot be rendered keeps what it had: refusing to
        # touch it is safer than tearing down a working chain on a bad input.
        for key in errors:
            if key in self._specs:
                want[key] = self._specs[key]
        return want, errors

    def _diff(self, want: dict[Key, FrontendSpec], programmed: dict[Key, FrontendSpec]) -> R.Plan:
        """Like `R.plan`, in time proportional to the change plus one pass of
        identity checks (specs of unchanged frontends are the programmed objects)."""
        added: list[FrontendSpec] = []
        updated: list[tuple[FrontendSpec, FrontendSpec]] = []
        for key, spec in want.items():
            old = programmed.get(key)
            if old is spec:
                continue
            if old is None:
                added.append(spec)
            elif old.fingerprint != spec.fingerprint:
                updated.append((old, spec))
        removed = (
            [programmed[k] for k in programmed.keys() - want.keys()]
            if (len(want) - len(added) != len(programmed))
            else []
        )
        return R.Plan(
            tuple(sorted(added, key=lambda s: s.key)),
            tuple(sorted(updated, key=lambda p: p[1].key)),
            tuple(sorted(removed, key=lambda s: s.key)),
        )

    def _masq_diff(self, plan: R.Plan) -> tuple[set[str], set[str], Counter[str]]:
        """(ips to add, ips to delete, refcount delta) for a plan, from the changed
        frontends only."""
        delta: Counter[str] = Counter()
        for spec in plan.added:
            delta.update(b.ip for b in spec.backends)
        for old, new in plan.updated:
            delta.update(b.ip for b in new.backends)
            delta.subtract(b.ip for b in old.backends)
        for spec in plan.removed:
            delta.subtract(b.ip for b in spec.backends)
        if self._masq_dirty:
            touched = set(self._ipref) | set(delta) | self._masq
        else:
            touched = {ip for ip, d in delta.items() if d}
        after = {ip for ip in touched if self._ipref.get(ip, 0) + delta.get(ip, 0) > 0}
        add = {ip for ip in after if ip not in self._masq}
        delete = {ip for ip in touched - after if ip in self._masq}
        return add, delete, delta

    def reconcile(self, desired: DesiredState) -> Outcome:
        # Rendering 10k frontends makes millions of short-lived, acyclic objects.
        with gc_paused():
            written = self._reconcile(desired)
        return frontend_outcome(desired, written.changed, written.errors)

    def _reconcile(self, desired: DesiredState) -> _Written:
        want, errors = self._desired(desired)
        rebuild = bool(self._foreign) and not self._shared_ok and not self._specs
        if rebuild:
            # Replace a foreign layout in one transaction: no packet sees neither.
            self._reset_memory()
            self._foreign = self._our_tables()
        programmed = dict(self._specs)
        head: list[dict[str, Any]] = []
        if self._foreign:
            head += R.render_delete_tables(self._foreign)
        if not self._shared_ok:
            head += R.render_shared_skeleton()
        for shard in range(R.SHARDS):
            if shard not in self._shards_ok:
                head += R.render_shard_skeleton(shard)
        repairs, repaired = self._repair_cmds(want)
        programmed.update(repaired)
        plan = self._diff(want, programmed)
        el = R.Elements()
        for key, spec in repaired.items():
            el.counters(key, self._counters.get(key, _NO_COUNTERS), (True, R.backend_keys(spec)))
        if self._counters_dirty:
            for key, have in self._counters.items():
                if key not in want and key not in programmed:
                    el.counters(key, have, _NO_COUNTERS)
        masq_add, masq_del, delta = self._masq_diff(plan)
        for spec in repaired.values():
            masq_add |= _backend_ips(spec) - self._masq
            masq_del -= _backend_ips(spec)
        extra = el.head() + el.after_chains() + el.tail()
        if plan.empty and not head and not repairs and not extra and not masq_add and not masq_del:
            self._masq_dirty = self._counters_dirty = False
            return _Written(changed=0, errors=errors)

        lines = (
            R.text_lines(head + R.render_masq_diff(set(), masq_add) + repairs + extra)
            + R.render_plan_lines(plan, self._counters)
            + R.text_lines(R.render_masq_diff(masq_del, set()))
        )
        try:
            self._write(lines)
        except NftablesError as exc:
            if rebuild:
                for key in want:
                    errors[key] = f"layout replacement failed: {exc}"
                return _Written(changed=0, errors=errors)
            log.warning("event=transaction_failed error=%r; retrying frontend by frontend", exc)
            return self._reconcile_one_by_one(plan, want, repaired, head, errors)

        self._after_skeleton()
        self._after_repairs(repaired)
        self._commit(plan, delta)
        self._masq = (self._masq | masq_add) - masq_del
        self._masq_dirty = self._counters_dirty = False
        self._flush_udp_conntrack(plan)
        return _Written(changed=plan.changed + len(repaired), errors=errors)

    def _repair_cmds(
        self, want: dict[Key, FrontendSpec]
    ) -> tuple[list[dict[str, Any]], dict[Key, FrontendSpec]]:
        cmds: list[dict[str, Any]] = []
        for table, map_name, stray in sorted(self._stray):
            cmds += R.render_stray(table, map_name, stray)
        repaired: dict[Key, FrontendSpec] = {}
        for name, key in sorted(self._broken.items(), key=lambda kv: kv[0]):
            table = self._chain_tables.get(name, "")
            if key is None or table != R.table_of(key) or key in repaired:
                cmds += R.render_orphan(name, table)
                continue
            spec = want.get(key)
            cmds += R.render_repair(key, spec, self._elements, table)
            if spec is not None:
                repaired[key] = spec
        return cmds, repaired

    def _after_skeleton(self) -> None:
        self._foreign.clear()
        self._shared_ok = True
        self._shards_ok = set(range(R.SHARDS))

    def _after_repairs(self, repaired: dict[Key, FrontendSpec]) -> None:
        for key, spec in repaired.items():
            self._specs[key] = spec
            self._ipref.update(b.ip for b in spec.backends)
            self._counters[key] = (True, R.backend_keys(spec))
        if self._counters_dirty:
            for key in [k for k in self._counters if k not in self._specs]:
                del self._counters[key]
        self._broken.clear()
        self._chain_tables.clear()
        self._elements.clear()
        self._stray.clear()

    def _commit(self, plan: R.Plan, delta: Counter[str]) -> None:
        """Memory follows the kernel only after a successful transaction."""
        for spec in plan.added:
            self._specs[spec.key] = spec
            self._counters[spec.key] = (True, R.backend_keys(spec))
        for _old, new in plan.updated:
            self._specs[new.key] = new
            self._counters[new.key] = (True, R.backend_keys(new))
        for spec in plan.removed:
            self._specs.pop(spec.key, None)
            self._counters.pop(spec.key, None)
        self._ipref.update(delta)
        for ip in [ip for ip, d in delta.items() if d and self._ipref[ip] <= 0]:
            del self._ipref[ip]

    def _reconcile_one_by_one(
        self,
        plan: R.Plan,
        want: dict[Key, FrontendSpec],
        repaired: dict[Key, FrontendSpec],
        head: list[dict[str, Any]],
        errors: dict[Key, str],
    ) -> _Written:
        """Cilium's rule: one broken frontend is reported, the others still land."""
        changed = 0
        try:
            repairs, repaired = self._repair_cmds(want)
            el = R.Elements()
            for key, spec in repaired.items():
                have = self._counters.get(key, _NO_COUNTERS)
                el.counters(key, have, (True, R.backend_keys(spec)))
            ips: set[str] = set()
            for spec in repaired.values():
                ips |= _backend_ips(spec)
            base = head + R.render_masq_diff(set(), ips - self._masq) + repairs
            base += el.head() + el.after_chains() + el.tail()
            if base:
                self._write(R.text_lines(base))
            self._after_skeleton()
            self._after_repairs(repaired)
            self._masq |= ips
        except NftablesError as exc:
            for key in want:
                errors[key] = f"table setup failed: {exc}"
            return _Written(changed=0, errors=errors)
        singles: list[tuple[Key, R.Plan]] = (
            [(s.key, R.Plan((s,), (), ())) for s in plan.added]
            + [(n.key, R.Plan((), ((o, n),), ())) for o, n in plan.updated]
            + [(s.key, R.Plan((), (), (s,))) for s in plan.removed]
        )
        for key, single in singles:
            # Masquerade additions go with the frontend; removals wait for the end
            # (the union of old and new addresses keeps every rule valid).
            add, _delete, delta = self._masq_diff(single)
            try:
                self._write(
                    R.text_lines(R.render_masq_diff(set(), add))
                    + R.render_plan_lines(single, self._counters)
                )
            except NftablesError as exc:
                errors[key] = str(exc)
                continue
            self._masq |= add
            self._commit(single, delta)
            self._flush_udp_conntrack(single)
            changed += 1
        try:
            stale = {ip for ip in self._masq if self._ipref.get(ip, 0) <= 0}
            if stale:
                self._write(R.text_lines(R.render_masq_diff(stale, set())))
                self._masq -= stale
        except NftablesError as exc:
            log.warning("event=masq_shrink_failed error=%r", exc)
        return _Written(changed=changed + len(repaired), errors=errors)

    def read_counters(self) -> list[FrontendCounters]:
        """Counters of every frontend found in the kernel: a netlink dump of the
        shared table's four counter sets (no rule listing; ~0.3 s at 10k frontends
        x 4 backends).  Reads closer together than COUNTER_TTL share one kernel
        read (a write invalidates it)."""
        now = time.monotonic()
        if self._counter_cache is not None and now - self._counter_cache[0] < COUNTER_TTL:
            return list(self._counter_cache[1])
        try:
            with gc_paused():
                parsed = self._read_counter_sets()
        except NftablesError:
            return []
        out = []
        for key in sorted(parsed.frontend_counts.keys() | parsed.backend_counts.keys()):
            packets, nbytes = parsed.frontend_counts.get(key, (0, 0))
            backends = parsed.backend_counts.get(key, {})
            out.append(
                FrontendCounters(
                    vip=key[0],
                    protocol=key[1],
                    port=key[2],
                    packets=packets,
                    bytes=nbytes,
                    backend_connections={b: pb[0] for b, pb in sorted(backends.items())},
                )
            )
        self._counter_cache = (time.monotonic(), out)
        return list(out)

    def _read_counter_sets(self, use_netlink: bool = True) -> R.ParsedTable:
        names = ("bcnt4", "fcnt4", "bcnt6", "fcnt6")
        return self._read_parsed(
            "counters",
            use_netlink,
            lambda nl, parsed: read_sets(nl, names, parsed),
            [
                ({"list": {"set": {"family": R.FAMILY, "table": R.TABLE, "name": n}}}, R.parse_sets)
                for n in names
            ],
        )

    def programmed(self) -> list[ProgrammedFrontend]:
        """Read back from the kernel: every shard's frontend chains."""
        tables = self._our_tables() & set(R.SHARD_TABLES)
        with gc_paused():
            parsed = self._read(tables)
        return [
            ProgrammedFrontend(
                vip=s.vip,
                protocol=s.protocol,
                port=s.port,
                backends=tuple((b.ip, b.port, b.weight) for b in s.backends),
                reject_weight=s.reject_weight,
            )
            for _k, s in sorted(parsed.specs.items())
        ]

    def cleanup(self) -> None:
        """Remove every table this dataplane owns (`inet gatewaylb`, `inet gatewaylb-*`),
        in one transaction."""
        tables = self._our_tables()
        if tables:
            self._write(R.text_lines(R.render_delete_tables(tables)))
        self._reset_memory()
        self._normalised.clear()
        self._counter_cache = None

    # -- UDP conntrack ------------------------------------------------------------------

    def _flush_udp_conntrack(self, plan: R.Plan) -> None:
        """UDP has no end of flow: without this, a client keeps sending to a
        removed endpoint until its conntrack entry times out.  Weight 0 keeps
        its entries (a draining endpoint still serves its flows)."""
        gone: list[tuple[FrontendSpec, tuple[str, int]]] = []
        for old, new in plan.updated:
            gone += [(old, b) for b in sorted(R.removed_backends(old, new))]
        for old in plan.removed:
            gone += [(old, b) for b in sorted(R.removed_backends(old, None))]
        for spec, (ip, port) in gone:
            if spec.protocol == UDP:
                delete_udp_conntrack(spec.vip, spec.port, ip, port)


def delete_udp_conntrack(vip: str, vport: int, backend_ip: str, backend_port: int) -> int:
    """Delete the UDP conntrack entries VIP:vport -> backend; returns how many.

    Uses Debian's `conntrack` tool with an argument list (it runs in the calling
    thread's network namespace, since a child inherits it).
    """
    tool = shutil.which("conntrack") or "/usr/sbin/conntrack"
    family = "ipv6" if is_ipv6(vip) else "ipv4"
    argv = [
        tool,
        "-D",
        "-f",
        family,
        "-p",
        "udp",
        "--orig-dst",
        vip,
        "--orig-port-dst",
        str(vport),
        "--reply-src",
        backend_ip,
        "--reply-port-src",
        str(backend_port),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning(
            "event=conntrack_delete_failed backend=%s:%d error=%r", backend_ip, backend_port, exc
        )
        return 0
    # "N flow entries have been deleted." on stderr; rc 1 when none matched.
    for word in proc.stderr.split():
        if word.isdigit():
            return int(word)
    return 0
