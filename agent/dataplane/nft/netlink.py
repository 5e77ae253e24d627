"""Reading nf_tables over NETLINK_NETFILTER: `NetlinkReader`, and the decoding
of what it dumps into `objects` (`read_listing`, `read_counts`).

Owns the socket, the nf_tables message and attribute layouts this agent reads
(tables, chains, rule comments, set elements with their counters, verdicts,
named counters, the ruleset generation) and the retry that makes a read of
several dumps one consistent snapshot.  Read only: it never writes to the
kernel, and it never interprets what it read (`parse` does).  Other owners of
nftables tables (agent/dataplane/vips.py, inventory.py) read through it too.

Why not libnftables: at 10k frontends, `list set` of the 40k-element backend
counter set spends ~0.9 s printing JSON, and listing the shard tables ~2.5 s.
Dumping the same objects straight from nf_tables and parsing only the
attributes used (set element keys, data and counters; rule comments; chain
names) takes a fraction of that.  A read spans several dumps; it is retried
when the ruleset generation changed during it, so it is one consistent snapshot.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from agent.dataplane.frontends import Key, canonical_ip
from agent.dataplane.nft import layout as L
from agent.dataplane.nft.objects import Counts, Listing, TableDump

T = TypeVar("T")
NFPROTO_INET = 1

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


def read_sets(nl: NetlinkReader, names: Iterable[str], out: Counts) -> None:
    """The shared table's counter and masquerade sets, into `out`."""
    for name in names:
        elems = nl.set_elems(L.TABLE, name)
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


def read_listing(nl: NetlinkReader, tables: set[str]) -> Listing:
    """What `list table` of each of `tables` shows (one snapshot: run it in
    `NetlinkReader.consistent`)."""
    out = Listing()
    per = {t: TableDump(t) for t in tables}
    for table, chain in nl.chains():
        if table in per:
            per[table].chains.append(chain)
    for table in sorted(tables):
        objs = per[table]
        objs.rules = nl.rules(table)
        if table == L.TABLE:
            read_sets(nl, L.SHARED_SETS, out.sets)
            continue
        for map_name in L.VERDICT_MAPS:
            for raw, _c, target in nl.set_elems(table, map_name):
                decoded = _decode_key(raw)
                key = decoded[0] if decoded and decoded[1] is None else None
                objs.verdicts.append((map_name, key, target))
    out.tables = [per[t] for t in sorted(tables)]
    return out


def read_counts(nl: NetlinkReader) -> Counts:
    """The shared table's four counter sets (one snapshot: run it in
    `NetlinkReader.consistent`)."""
    out = Counts()
    read_sets(nl, L.COUNTER_SETS, out)
    return out
