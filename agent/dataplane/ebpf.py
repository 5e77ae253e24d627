"""The eBPF dataplane: tc and cgroup programs from bpf/, maps driven from here.

Owns: the programs of bpf/lb.c (compiled and loaded with bcc), their tc filters
on the given interfaces (clsact ingress and egress, one well-known priority),
their attachments to the given cgroup v2 directory, the maps pinned under
`pin_dir`, and one nftables table (`table inet gatewaylb_ebpf`) that rejects
and masquerades packets the programs mark.  It never touches other tc filters,
other tables, routes or addresses.  It works in the network namespace of the
thread that constructs it (netlink and libnftables sockets are opened there).

This is the one module that knows the map layouts (the ctypes mirrors below
follow bpf/gatewaylb.h).  Verbs: `reconcile` (the frontends that differ from
the desired state are written, in one batch, and the ones gone deleted) and
`read_counters`.

Map design (memory): the Maglev tables of all frontends live in ONE array map,
a slot pool (`maglev`, `pool_slots` u32 slots, default 16 Mi = 64 MiB).  Each
frontend owns an extent of it, sized from its backend count on a ladder of
primes (251, 1021, 4093, 16381, ...; at least 100 slots per backend, never above
`maglev_size`), so 10k frontends of 3-10 backends take ~10 M slots (40 MB)
instead of 10k x 16381 (655 MB).  Every change writes the new table into a FREE extent
and then flips the frontend's hash-map entry (offset, size) in one element
update, which readers see atomically (RCU); the old extent and removed backend
ids are quarantined until the next write batch, so a packet that read the old
entry never sees its slots reused.  Maglev slots are written through an mmap
of the pool (BPF_F_MMAPABLE; a pool pinned by an older version without it is
written with a batch syscall instead); other writes go through
BPF_MAP_*_BATCH: one syscall per map per batch.

Adoption: bcc's pinned tables reuse the maps found under `pin_dir`; a new
instance rebuilds its view (ids, extents) from them, loads fresh programs and
swaps them in with `tc filter replace` on the same handle (atomic) and, for
cgroups, attaches the new program before detaching the old one.  Nothing is
flushed, so established flows (the LRU flow table) survive a restart.

Hooks (bpf/lb.c): `glb_ingress` on tc ingress of every interface where VIP
traffic first arrives (the client-facing link; on a bridge, its PORTS, not the
bridge device: with br_netfilter conntrack sees a bridged packet at the port,
before the bridge device's tc ingress) does the DNAT of client packets and the
reverse NAT of backends' replies, and forwards both itself when the FIB has a
next hop (bpf_fib_lookup + bpf_redirect: they skip the IP stack, netfilter and
the bridge); `glb_egress` on tc egress of the same interfaces reverse-NATs only
replies that came through netfilter unmarked (hairpin flows after conntrack
undid the masquerade).  Conntrack never sees the other translated flows, so
the asymmetric-tuple trap of NOTES.md does not arise.  Refused new
flows (reject share, no positive weight) and hairpin flows (the client is the
chosen backend) are only marked in skb->mark; the nft table rejects the first
(tcp reset / icmpx port-unreachable, prerouting at raw priority, before
conntrack) and masquerades the second (postrouting).  All other translated
packets that still take the stack path (local destination, MTU), and replies
to them, are marked for `notrack` in that same raw-priority chain: the LRU flow
table is their connection state.  Local processes: the
cgroup v2 sock_addr hooks connect4/6 / sendmsg4/6 translate at connect()/sendto()
time (Maglev by socket cookie; a refused flow fails with EPERM), recvmsg4/6 and
getpeername4/6 show the VIP again; an IPv6 socket reaching an IPv4 VIP as
::ffff:a.b.c.d is translated as IPv4.

Not handled (pass through untranslated): IP fragments, IPv6 extension headers,
ICMP errors about a translated flow (the inner header is not rewritten).
`pin_dir` must be on a bpf filesystem; the agent does not mount one.

bcc is untyped and isolated in `_Loader`; map I/O uses the bpf(2) syscall
directly through `_Bpf`, so everything else here is typed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import ipaddress
import logging
import mmap
import os
import socket
import struct
import tempfile
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.dataplane import maglev
from agent.dataplane.base import FrontendCounters, ProgrammedFrontend
from agent.dataplane.frontends import FrontendError, FrontendSpec, canonical_ip, normalise
from agent.reconcile import Outcome, frontend_outcome
from agent.state import (
    TCP,
    UDP,
    DesiredState,
    FrontendKey,
    L4Frontend,
)

log = logging.getLogger(__name__)

Key = FrontendKey

# The C sources, compiled at load: the repository's bpf/ in a checkout, or where
# an installed image put them (the Dockerfile sets GATEWAYLB_BPF_DIR).
BPF_DIR: Final = Path(
    os.environ.get("GATEWAYLB_BPF_DIR") or Path(__file__).resolve().parents[2] / "bpf"
)
NFT_TABLE: Final = "gatewaylb_ebpf"
MARK_REJECT: Final = 0x10000000
MARK_MASQ: Final = 0x20000000
MARK_NOTRACK: Final = 0x40000000
TC_PRIO: Final = 0xC1A0  # one well-known priority/handle per hook: replace is atomic
TC_HANDLE: Final = 0x1
TC_INGRESS: Final = "ffff:fff2"
TC_EGRESS: Final = "ffff:fff3"

PROTO_NUM: Final = {TCP: socket.IPPROTO_TCP, UDP: socket.IPPROTO_UDP}
PROTO_NAME: Final = {v: k for k, v in PROTO_NUM.items()}
FE_REJECT_ALL: Final = 1
REJECT_ID: Final = 0
REJECT_IDENTITY: Final = "reject"

# bpf(2) commands and attach types used here
_NR_BPF: Final = 321  # x86_64
_MAP_LOOKUP_ELEM: Final = 1
_MAP_UPDATE_ELEM: Final = 2
_MAP_DELETE_ELEM: Final = 3
_MAP_GET_NEXT_KEY: Final = 4
_OBJ_PIN: Final = 6
_OBJ_GET: Final = 7
_PROG_ATTACH: Final = 8
_PROG_DETACH: Final = 9
_PROG_GET_FD_BY_ID: Final = 13
_MAP_GET_FD_BY_ID: Final = 14
_OBJ_GET_INFO_BY_FD: Final = 15
_PROG_QUERY: Final = 16
_MAP_UPDATE_BATCH: Final = 26
_MAP_DELETE_BATCH: Final = 27
_F_ALLOW_MULTI: Final = 2
PROGRAM_PREFIX: Final = "glb_"  # every program in bpf/ is named so

# (program, attach type) for the cgroup sock_addr hooks
CGROUP_HOOKS: Final = (
    ("glb_connect4", 10),  # BPF_CGROUP_INET4_CONNECT
    ("glb_sendmsg4", 14),  # BPF_CGROUP_UDP4_SENDMSG
    ("glb_recvmsg4", 19),  # BPF_CGROUP_UDP4_RECVMSG
    ("glb_getpeername4", 29),  # BPF_CGROUP_INET4_GETPEERNAME
    ("glb_connect6", 11),  # BPF_CGROUP_INET6_CONNECT
    ("glb_sendmsg6", 15),  # BPF_CGROUP_UDP6_SENDMSG
    ("glb_recvmsg6", 20),  # BPF_CGROUP_UDP6_RECVMSG
    ("glb_getpeername6", 30),  # BPF_CGROUP_INET6_GETPEERNAME
)


class EbpfError(RuntimeError):
    pass


# -- map layouts: ctypes mirrors of bpf/gatewaylb.h -------------------------------------


class FrontendKeyC(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_ubyte * 16),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
    ]


class FrontendC(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("table_off", ctypes.c_uint32),
        ("table_size", ctypes.c_uint32),
        ("reject_weight", ctypes.c_uint32),
        ("generation", ctypes.c_uint32),
    ]


class BackendC(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_ubyte * 16),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("weight", ctypes.c_uint32),
        ("frontend_id", ctypes.c_uint32),
    ]


class FlowKeyC(ctypes.Structure):
    _fields_ = [
        ("src", ctypes.c_ubyte * 16),
        ("dst", ctypes.c_ubyte * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class FlowC(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_ubyte * 16),
        ("port", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("backend_id", ctypes.c_uint32),
        ("frontend_id", ctypes.c_uint32),
    ]


class RevC(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_ubyte * 16), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class SockKeyC(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("addr", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class SockKey6C(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("addr", ctypes.c_uint32 * 4),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]


class CounterC(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("flows", ctypes.c_uint64),
    ]


# map name in C -> (pin file, key type, value type)
MAPS: Final[dict[str, tuple[str, type[ctypes.Structure] | type[ctypes.c_uint32], Any]]] = {
    "glb_frontends": ("frontends", FrontendKeyC, FrontendC),
    "glb_backends": ("backends", ctypes.c_uint32, BackendC),
    "glb_maglev": ("maglev", ctypes.c_uint32, ctypes.c_uint32),
    "glb_flows": ("flows", FlowKeyC, FlowC),
    "glb_rev": ("rev", FlowKeyC, RevC),
    "glb_sock_rev": ("sock_rev", SockKeyC, RevC),
    "glb_sock_rev6": ("sock_rev6", SockKey6C, RevC),
    "glb_fe_stats": ("fe_stats", ctypes.c_uint32, CounterC),
    "glb_be_stats": ("be_stats", ctypes.c_uint32, CounterC),
}


# -- bpf(2) --------------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _addr(obj: Any) -> int:
    return ctypes.addressof(obj) if obj is not None else 0


class _Bpf:
    """Typed bpf(2) calls: map element and batch I/O, pins, cgroup attach."""

    @staticmethod
    def call(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
        rc = int(_libc.syscall(_NR_BPF, cmd, attr, ctypes.sizeof(attr)))
        if rc < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"bpf cmd {cmd}: {os.strerror(err)}")
        return rc

    @staticmethod
    def _attr(fmt: str, *values: int) -> ctypes.Array[ctypes.c_char]:
        attr = ctypes.create_string_buffer(128)
        struct.pack_into(fmt, attr, 0, *values)
        return attr

    @classmethod
    def lookup(cls, fd: int, key: Any, value: Any) -> bool:
        attr = cls._attr("=IIQQQ", fd, 0, _addr(key), _addr(value), 0)
        try:
            cls.call(_MAP_LOOKUP_ELEM, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    @classmethod
    def update(cls, fd: int, key: Any, value: Any) -> None:
        cls.call(_MAP_UPDATE_ELEM, cls._attr("=IIQQQ", fd, 0, _addr(key), _addr(value), 0))

    @classmethod
    def delete(cls, fd: int, key: Any) -> bool:
        try:
            cls.call(_MAP_DELETE_ELEM, cls._attr("=IIQQQ", fd, 0, _addr(key), 0, 0))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    @classmethod
    def next_key(cls, fd: int, key: Any, out: Any) -> bool:
        try:
            cls.call(_MAP_GET_NEXT_KEY, cls._attr("=IIQQQ", fd, 0, _addr(key), _addr(out), 0))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    @classmethod
    def update_batch(cls, fd: int, keys: Any, values: Any, count: int) -> None:
        if count == 0:
            return
        attr = cls._attr("=QQQQIIQQ", 0, 0, _addr(keys), _addr(values), count, fd, 0, 0)
        cls.call(_MAP_UPDATE_BATCH, attr)
        done = struct.unpack_from("=I", attr, 32)[0]
        if done != count:
            raise OSError(errno.EIO, f"batch update wrote {done} of {count}")

    @classmethod
    def delete_batch(cls, fd: int, keys: Any, count: int) -> None:
        if count == 0:
            return
        attr = cls._attr("=QQQQIIQQ", 0, 0, _addr(keys), 0, count, fd, 0, 0)
        try:
            cls.call(_MAP_DELETE_BATCH, attr)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    @classmethod
    def obj_get(cls, path: str) -> int:
        p = ctypes.create_string_buffer(path.encode())
        return cls.call(_OBJ_GET, cls._attr("=QII", ctypes.addressof(p), 0, 0))

    @classmethod
    def obj_pin(cls, fd: int, path: str) -> None:
        p = ctypes.create_string_buffer(path.encode())
        cls.call(_OBJ_PIN, cls._attr("=QII", ctypes.addressof(p), fd, 0))

    @classmethod
    def map_info(cls, fd: int) -> tuple[int, int, int, int]:
        """(type, key size, value size, max entries)"""
        info = ctypes.create_string_buffer(80)
        attr = cls._attr("=IIQ", fd, ctypes.sizeof(info), ctypes.addressof(info))
        cls.call(_OBJ_GET_INFO_BY_FD, attr)
        mtype, _id, ksize, vsize, max_entries = struct.unpack_from("=IIIII", info, 0)
        return mtype, ksize, vsize, max_entries

    @classmethod
    def map_name(cls, fd: int) -> tuple[int, str]:
        """(id, name) of a map; the kernel keeps 15 characters of the name."""
        info = ctypes.create_string_buffer(80)
        attr = cls._attr("=IIQ", fd, ctypes.sizeof(info), ctypes.addressof(info))
        cls.call(_OBJ_GET_INFO_BY_FD, attr)
        map_id = struct.unpack_from("=I", info, 4)[0]
        return map_id, info.raw[24:40].split(b"\0", 1)[0].decode(errors="replace")

    @classmethod
    def prog_info(cls, fd: int) -> tuple[int, str, tuple[int, ...]]:
        """(id, name, ids of the maps it uses) of a program."""
        map_ids = (ctypes.c_uint32 * 64)()
        info = ctypes.create_string_buffer(256)
        # bpf_prog_info: nr_map_ids at 52, map_ids (a pointer) at 56, name at 64.
        struct.pack_into("=IQ", info, 52, 64, ctypes.addressof(map_ids))
        attr = cls._attr("=IIQ", fd, ctypes.sizeof(info), ctypes.addressof(info))
        cls.call(_OBJ_GET_INFO_BY_FD, attr)
        prog_id = struct.unpack_from("=I", info, 4)[0]
        count = min(struct.unpack_from("=I", info, 52)[0], 64)
        name = info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
        return prog_id, name, tuple(map_ids[:count])

    @classmethod
    def prog_fd_by_id(cls, prog_id: int) -> int:
        return cls.call(_PROG_GET_FD_BY_ID, cls._attr("=I", prog_id))

    @classmethod
    def map_fd_by_id(cls, map_id: int) -> int:
        return cls.call(_MAP_GET_FD_BY_ID, cls._attr("=I", map_id))

    @classmethod
    def prog_query(cls, target_fd: int, attach_type: int) -> tuple[int, ...]:
        """Ids of the programs attached to a cgroup with `attach_type`."""
        ids = (ctypes.c_uint32 * 64)()
        attr = cls._attr("=IIIIQI", target_fd, attach_type, 0, 0, ctypes.addressof(ids), 64)
        cls.call(_PROG_QUERY, attr)
        count = min(struct.unpack_from("=I", attr, 24)[0], 64)
        return tuple(ids[:count])

    @classmethod
    def prog_attach(cls, target_fd: int, prog_fd: int, attach_type: int, flags: int) -> None:
        cls.call(_PROG_ATTACH, cls._attr("=IIIII", target_fd, prog_fd, attach_type, flags, 0))

    @classmethod
    def prog_detach(cls, target_fd: int, prog_fd: int, attach_type: int) -> None:
        cls.call(_PROG_DETACH, cls._attr("=IIIII", target_fd, prog_fd, attach_type, 0, 0))


def possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process can reach."""
    return visible_mounts(Path("/proc/self/mountinfo").read_text().splitlines())


def visible_mounts(mountinfo: Iterable[str]) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of the mounts in mountinfo lines that
    are not hidden: a mount stacked on the same point, or on a directory
    above it, hides the earlier ones (a container's bind mount of a cgroup2
    subtree over the host's /sys/fs/cgroup hides /sys/fs/cgroup/unified)."""
    out: list[tuple[str, str]] = []
    for line in mountinfo:
        fields = line.split()
        point = fields[4]
        below = point.rstrip("/") + "/"
        out = [(m, k) for m, k in out if m != point and not m.startswith(below)]
        out.append((point, fields[fields.index("-") + 1]))
    return out


def mount_fstype(path: Path) -> str:
    """The type of the filesystem `path` is (or would be) on: the mount with
    the longest prefix of it in /proc/self/mountinfo ("bpf", "cgroup2", ...)."""
    best, fstype = "", ""
    target = str(path)
    for mnt, kind in _mounts():
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, fstype = mnt, kind
    return fstype


def mounts_of(fstype: str) -> list[str]:
    """Mount points of every filesystem of type `fstype` ("bpf", "cgroup2")."""
    try:
        return sorted({mnt for mnt, kind in _mounts() if kind == fstype})
    except OSError:
        return []


def on_bpffs(path: Path) -> bool:
    return mount_fstype(path) == "bpf"


class BpfMap:
    """One pinned map, by fd, with its key and value ctypes."""

    def __init__(self, name: str, fd: int, key_t: Any, value_t: Any, percpu: int = 0) -> None:
        self.name = name
        self.fd = fd
        self.key_t = key_t
        self.value_t = value_t
        self.percpu = percpu  # number of possible CPUs for per-CPU maps, else 0
        self._mapped: tuple[mmap.mmap, memoryview, memoryview] | None = None
        _mtype, ksize, vsize, self.max_entries = _Bpf.map_info(fd)
        if ksize != ctypes.sizeof(key_t) or vsize != ctypes.sizeof(value_t):
            raise EbpfError(
                f"map {name}: kernel key/value size {ksize}/{vsize} != "
                f"{ctypes.sizeof(key_t)}/{ctypes.sizeof(value_t)}: layout out of sync"
            )

    def get(self, key: Any) -> Any | None:
        value = self.value_t()
        return value if _Bpf.lookup(self.fd, key, value) else None

    def get_percpu(self, key: Any) -> list[Any]:
        values = (self.value_t * self.percpu)()
        if not _Bpf.lookup(self.fd, key, values):
            return []
        return list(values)

    def put(self, key: Any, value: Any) -> None:
        _Bpf.update(self.fd, key, value)

    def zero_percpu(self, ids: Sequence[int]) -> None:
        """Reset the per-CPU values of array slots `ids` (one batch)."""
        n = len(ids)
        if n:
            keys = (ctypes.c_uint32 * n)(*ids)
            _Bpf.update_batch(self.fd, keys, (self.value_t * (self.percpu * n))(), n)

    def delete(self, key: Any) -> bool:
        return _Bpf.delete(self.fd, key)

    def keys(self) -> Iterator[Any]:
        key = self.key_t()
        if not _Bpf.next_key(self.fd, None, key):
            return
        while True:
            yield key
            nxt = self.key_t()
            if not _Bpf.next_key(self.fd, key, nxt):
                return
            key = nxt

    def items(self) -> Iterator[tuple[Any, Any]]:
        for key in list(self.keys()):
            value = self.get(key)
            if value is not None:
                yield key, value

    def put_batch(self, keys: Sequence[Any], values: Sequence[Any]) -> None:
        n = len(keys)
        if n:
            ka = (self.key_t * n)(*keys)
            va = (self.value_t * n)(*values)
            _Bpf.update_batch(self.fd, ka, va, n)

    def mmap_u32(self) -> memoryview | None:
        """The memory of an mmap-able array map of u32s as u32s, writable in
        place: element i is item 2*i (the kernel stores array elements 8-byte
        aligned).  None when the map was created without BPF_F_MMAPABLE (an
        older pin): then the syscalls are the way."""
        if self._mapped is None:
            try:
                mm = mmap.mmap(self.fd, self.max_entries * 8, mmap.MAP_SHARED)
            except (OSError, ValueError):
                return None
            raw = memoryview(mm)
            self._mapped = (mm, raw, raw.cast("I"))
        return self._mapped[2]

    def put_batch_u32(self, keys: array[int], values: array[int]) -> None:
        n = len(keys)
        if n:
            ka = (ctypes.c_uint32 * n).from_buffer(keys)
            va = (ctypes.c_uint32 * n).from_buffer(values)
            _Bpf.update_batch(self.fd, ka, va, n)

    def delete_batch(self, keys: Sequence[Any]) -> None:
        n = len(keys)
        if n:
            _Bpf.delete_batch(self.fd, (self.key_t * n)(*keys), n)

    def clear(self) -> None:
        for key in list(self.keys()):
            self.delete(key)

    def close(self) -> None:
        if self._mapped is not None:
            mm, raw, view = self._mapped
            view.release()
            raw.release()
            mm.close()  # the mapping holds a reference to the map too
            self._mapped = None
        with contextlib.suppress(OSError):
            os.close(self.fd)


# -- bcc, behind one small typed class ---------------------------------------------------


@contextlib.contextmanager
def _capture_stderr() -> Iterator[list[str]]:
    """libbcc prints compiler errors and the verifier log on fd 2; keep them."""
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


class _Loader:
    """Compiles bpf/lb.c with bcc and loads its programs; owns the bcc object."""

    def __init__(self, cflags: list[str]) -> None:
        import bcc  # untyped, imported here so a machine without bcc can import this module

        self._bcc: Any = bcc
        with _capture_stderr() as log_text:
            try:
                self._b: Any = bcc.BPF(src_file=str(BPF_DIR / "lb.c").encode(), cflags=cflags)
            except Exception as exc:
                raise EbpfError(f"bpf/lb.c does not compile: {exc}\n{''.join(log_text)}") from exc
        self.key_sizes: dict[str, tuple[int, int]] = {}
        for name in MAPS:
            table = self._b[name.encode()]
            self.key_sizes[name] = (ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf))

    def load_tc(self, name: str) -> int:
        return self._load(name, self._bcc.BPF.SCHED_CLS, -1)

    def load_sock_addr(self, name: str, attach_type: int) -> int:
        return self._load(name, self._bcc.BPF.CGROUP_SOCK_ADDR, attach_type)

    def _load(self, name: str, prog_type: int, attach_type: int) -> int:
        log_text: list[str] = []
        try:
            with _capture_stderr() as log_text:
                fn = self._b.load_func(name.encode(), prog_type, attach_type=attach_type)
        except Exception as exc:
            raise EbpfError(f"verifier rejected {name}: {exc}\n{''.join(log_text)}") from exc
        return int(fn.fd)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._b.cleanup()


# -- allocation of ids and pool extents ---------------------------------------------------


class IdPool:
    def __init__(self, first: int, end: int) -> None:
        self._next = first
        self._end = end
        self._free: list[int] = []
        self._used: set[int] = set()

    def take(self, ident: int) -> None:
        self._used.add(ident)
        self._next = max(self._next, ident + 1)

    def alloc(self) -> int:
        while self._free:
            ident = self._free.pop()
            if ident not in self._used:
                self._used.add(ident)
                return ident
        if self._next >= self._end:
            raise EbpfError(f"id space exhausted ({self._end})")
        ident = self._next
        self._next += 1
        self._used.add(ident)
        return ident

    def free(self, ident: int) -> None:
        if ident in self._used:
            self._used.discard(ident)
            self._free.append(ident)

    @property
    def used(self) -> int:
        return len(self._used)


class ExtentPool:
    """First-fit allocator of [offset, offset + size) ranges of the slot pool."""

    def __init__(self, slots: int, used: Iterable[tuple[int, int]] = ()) -> None:
        self.slots = slots
        self._free: list[tuple[int, int]] = []
        pos = 0
        for off, size in sorted(used):
            if off > pos:
                self._free.append((pos, off - pos))
            pos = max(pos, off + size)
        if pos < slots:
            self._free.append((pos, slots - pos))

    def alloc(self, size: int) -> int:
        for i, (off, length) in enumerate(self._free):
            if length >= size:
                if length == size:
                    del self._free[i]
                else:
                    self._free[i] = (off + size, length - size)
                return off
        raise EbpfError(f"Maglev slot pool full: no {size} free slots of {self.slots}")

    def free(self, off: int, size: int) -> None:
        self._free.append((off, size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self._free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self._free = merged


# -- what is programmed, as the agent sees it ------------------------------------------


@dataclass(slots=True)
class _Fe:
    key: Key
    id: int
    flags: int
    table_off: int
    table_size: int
    reject_weight: int
    generation: int
    # (ip, port) -> (backend id, weight)
    backends: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)

    def spec(self) -> tuple[tuple[tuple[str, int, int], ...], int]:
        return (
            tuple(sorted((ip, port, w) for (ip, port), (_, w) in self.backends.items())),
            self.reject_weight,
        )


def _triples(spec: FrontendSpec) -> tuple[tuple[str, int, int], ...]:
    return tuple((b.ip, b.port, b.weight) for b in spec.backends)


@functools.lru_cache(maxsize=65536)
def _pack_addr(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return 4, addr.packed + bytes(12)
    return 6, addr.packed


def _unpack_addr(family: int, raw: Any) -> str:
    data = bytes(raw)
    if family == 4:
        return str(ipaddress.IPv4Address(data[:4]))
    return str(ipaddress.IPv6Address(data))


def norm_key(key: Key) -> Key:
    """(vip, protocol, port) with the VIP in canonical text form (IPv6!)."""
    try:
        return (canonical_ip(key[0]), key[1], key[2])
    except ValueError:
        return key


def frontend_key(key: Key) -> FrontendKeyC:
    vip, proto, port = key
    family, packed = _pack_addr(vip)
    k = FrontendKeyC()
    ctypes.memmove(k.addr, packed, 16)
    k.port = socket.htons(port)
    k.proto = PROTO_NUM[proto]
    k.family = family
    return k


def _key_of(k: FrontendKeyC) -> Key:
    return (
        _unpack_addr(k.family, k.addr),
        PROTO_NAME.get(k.proto, str(k.proto)),
        socket.ntohs(k.port),
    )


@dataclass(slots=True)
class _Plan:
    """The writes of one frontend, computed before any of them is issued."""

    fe: _Fe
    new_frontend: bool
    table: array[int]
    new_backend_ids: list[int]
    backend_values: list[tuple[int, BackendC]]
    removed_backend_ids: list[int]
    old_extent: tuple[int, int] | None
    source: L4Frontend


# -- the dataplane ----------------------------------------------------------------------


class EbpfDataplane:
    """Dataplane over tc/cgroup eBPF programs; adopts pinned maps at construction."""

    name = "ebpf"

    def __init__(
        self,
        interfaces: tuple[str, ...] = (),
        pin_dir: str = "/sys/fs/bpf/gatewaylb",
        maglev_size: int = maglev.DEFAULT_SIZE,
        cgroup_path: str | None = None,
        *,
        max_frontends: int = 16384,
        max_backends: int = 65536,
        pool_slots: int = 1 << 24,
        max_flows: int = 131072,
        nft: bool = True,
    ) -> None:
        if not maglev.is_prime(maglev_size):
            raise EbpfError(f"maglev_size {maglev_size} is not prime")
        self.interfaces = interfaces
        self.pin_dir = Path(pin_dir)
        self.maglev_size = maglev_size
        self.cgroup_path = cgroup_path
        self._use_nft = nft
        self._ncpu = possible_cpus()
        self._generation = int(time.time())
        self.writes = 0  # kernel write batches issued, for tests ("a no-op issues none")
        self._quarantine_extents: list[tuple[int, int]] = []
        self._quarantine_ids: list[int] = []

        if not on_bpffs(self.pin_dir):
            raise EbpfError(
                f"{self.pin_dir} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)"
            )
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        cflags = [
            f"-I{BPF_DIR}",
            f'-DGLB_PIN_DIR="{self.pin_dir}"',
            f"-DGLB_MAX_FRONTENDS={max_frontends}",
            f"-DGLB_MAX_BACKENDS={max_backends}",
            f"-DGLB_POOL_SLOTS={pool_slots}",
            f"-DGLB_MAX_FLOWS={max_flows}",
            f"-DGLB_MARK_REJECT={MARK_REJECT:#x}",
            f"-DGLB_MARK_MASQ={MARK_MASQ:#x}",
            f"-DGLB_MARK_NOTRACK={MARK_NOTRACK:#x}",
        ]
        self._loader = _Loader(cflags)
        self.maps = self._open_maps()
        self._maglev_mem = self.maps["maglev"].mmap_u32()
        self._tc_fds = {
            "glb_ingress": self._loader.load_tc("glb_ingress"),
            "glb_egress": self._loader.load_tc("glb_egress"),
        }
        self._adopt()
        if self._use_nft:
            self._ensure_nft()
        self._attach_tc()
        if cgroup_path:
            self._attach_cgroup(cgroup_path)

    # -- setup --------------------------------------------------------------------------

    def _open_maps(self) -> dict[str, BpfMap]:
        maps: dict[str, BpfMap] = {}
        for cname, (pin, key_t, value_t) in MAPS.items():
            percpu = self._ncpu if cname.endswith("_stats") else 0
            ksize, vsize = self._loader.key_sizes[cname]
            want = (ctypes.sizeof(key_t), ctypes.sizeof(value_t) * max(percpu, 1))
            if (ksize, vsize) != want:
                raise EbpfError(f"map {cname}: C layout {ksize}/{vsize} != ctypes mirror {want}")
            fd = _Bpf.obj_get(str(self.pin_dir / pin))
            maps[pin] = BpfMap(pin, fd, key_t, value_t, percpu)
        return maps

    def _adopt(self) -> None:
        """Rebuild ids, extents and backend sets from the pinned maps."""
        self._fes: dict[Key, _Fe] = {}
        # The last L4Frontend written per key: an equal one needs no diff.
        self._written: dict[Key, L4Frontend] = {}
        by_id: dict[int, _Fe] = {}
        for k, v in self.maps["frontends"].items():
            fe = _Fe(
                key=_key_of(k),
                id=v.id,
                flags=v.flags,
                table_off=v.table_off,
                table_size=v.table_size,
                reject_weight=v.reject_weight,
                generation=v.generation,
            )
            self._fes[fe.key] = fe
            by_id[fe.id] = fe
        self._fe_ids = IdPool(0, self.maps["fe_stats"].max_entries)
        self._be_ids = IdPool(1, self.maps["be_stats"].max_entries)
        orphans: list[int] = []
        for bk, bv in self.maps["backends"].items():
            owner = by_id.get(bv.frontend_id)
            if owner is None:
                orphans.append(int(bk.value))
                continue
            ip = _unpack_addr(bv.family, bv.addr)
            owner.backends[(ip, socket.ntohs(bv.port))] = (int(bk.value), bv.weight)
            self._be_ids.take(int(bk.value))
        for fe in self._fes.values():
            self._fe_ids.take(fe.id)
        self._pool = ExtentPool(
            self.maps["maglev"].max_entries,
            [(fe.table_off, fe.table_size) for fe in self._fes.values() if fe.table_size],
        )
        if orphans:  # a crash between writes: backends whose frontend is gone
            self.maps["backends"].delete_batch([ctypes.c_uint32(i) for i in orphans])
        if self._fes:
            log.info("event=ebpf_adopted frontends=%d pin_dir=%s", len(self._fes), self.pin_dir)

    def _attach_tc(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for ifname in self.interfaces:
                links = ipr.link_lookup(ifname=ifname)
                if not links:
                    raise EbpfError(f"interface {ifname} not found")
                idx = links[0]
                try:
                    ipr.tc("add", "clsact", idx)
                except Exception as exc:  # pyroute2 NetlinkError: EEXIST when present
                    if getattr(exc, "code", None) != errno.EEXIST:
                        raise
                for prog, parent in (("glb_ingress", TC_INGRESS), ("glb_egress", TC_EGRESS)):
                    # replace on a fixed prio/handle swaps the program atomically.
                    ipr.tc(
                        "replace-filter",
                        "bpf",
                        idx,
                        TC_HANDLE,
                        fd=self._tc_fds[prog],
                        name=f"{prog}:gatewaylb",
                        parent=parent,
                        prio=TC_PRIO,
                        classid=1,
                        direct_action=True,
                    )

    def _detach_tc(self) -> None:
        """Our filters on this instance's interfaces, and their clsact qdisc
        when nobody else uses it (the same removal `gatewaylb cleanup` does)."""
        from agent.dataplane import inventory  # it imports this module

        ours = [t for t in inventory.find_tc_programs() if t.ifname in self.interfaces]
        inventory.remove_tc(ours)

    def _attach_cgroup(self, path: str) -> None:
        """Attach new programs first, then detach those of a previous instance
        (pinned as prog_<name>): both run for a moment, the second one sees an
        already translated address and does nothing, so no connect() is missed.
        Programs of ours left attached without a pin (a bpf filesystem
        remounted under a running node, pins removed by hand) are detached
        too: the first of several hooks that translates wins, so a stale one
        would keep serving its old backends to every local process."""
        try:
            cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise EbpfError(f"cgroup {path} for the socket hooks: {exc.strerror}") from None
        try:
            mine: set[int] = set()
            for prog, attach_type in CGROUP_HOOKS:
                fd = self._loader.load_sock_addr(prog, attach_type)
                _Bpf.prog_attach(cg, fd, attach_type, _F_ALLOW_MULTI)
                mine.add(_Bpf.prog_info(fd)[0])
                pin = self.pin_dir / f"prog_{prog}"
                if pin.exists():
                    old = _Bpf.obj_get(str(pin))
                    try:
                        with contextlib.suppress(OSError):
                            _Bpf.prog_detach(cg, old, attach_type)
                    finally:
                        os.close(old)
                    pin.unlink()
                _Bpf.obj_pin(fd, str(pin))
            self._detach_orphans(cg, path, mine)
        finally:
            os.close(cg)

    @staticmethod
    def _detach_orphans(cg: int, path: str, mine: set[int]) -> None:
        for attach_type in sorted({t for _, t in CGROUP_HOOKS}):
            for prog_id in _Bpf.prog_query(cg, attach_type):
                if prog_id in mine:
                    continue
                try:
                    fd = _Bpf.prog_fd_by_id(prog_id)
                except OSError:
                    continue  # detached meanwhile
                try:
                    name = _Bpf.prog_info(fd)[1]
                    if name.startswith(PROGRAM_PREFIX):
                        _Bpf.prog_detach(cg, fd, attach_type)
                        log.warning(
                            "event=ebpf_orphan_hook_detached cgroup=%s program=%s id=%d",
                            path,
                            name,
                            prog_id,
                        )
                except OSError as exc:
                    log.warning("event=ebpf_orphan_hook_kept id=%d error=%s", prog_id, exc)
                finally:
                    os.close(fd)

    def _detach_cgroup(self) -> None:
        for prog, attach_type in CGROUP_HOOKS:
            pin = self.pin_dir / f"prog_{prog}"
            if not pin.exists():
                continue
            if self.cgroup_path and os.path.isdir(self.cgroup_path):
                cg = os.open(self.cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
                old = _Bpf.obj_get(str(pin))
                try:
                    with contextlib.suppress(OSError):
                        _Bpf.prog_detach(cg, old, attach_type)
                finally:
                    os.close(old)
                    os.close(cg)
            pin.unlink()

    # -- nftables: reject and masquerade what the programs mark ------------------------

    def _nft_cmd(self, cmds: list[dict[str, Any]]) -> Any:
        import nftables  # untyped binding

        nft: Any = nftables.Nftables()
        rc, output, error = nft.json_cmd({"nftables": cmds})
        if rc != 0:
            raise EbpfError(f"nftables: {str(error).strip()}")
        return output

    def _ensure_nft(self) -> None:
        table = {"family": "inet", "name": NFT_TABLE}

        def mark(bit: int) -> dict[str, Any]:
            return {
                "match": {
                    "op": "==",
                    "left": {"&": [{"meta": {"key": "mark"}}, bit]},
                    "right": bit,
                }
            }

        def rule(chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
            return {
                "add": {
                    "rule": {
                        "family": "inet",
                        "table": NFT_TABLE,
                        "chain": chain,
                        "expr": list(expr),
                    }
                }
            }

        tcp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
        # Reject before conntrack (raw priority): a refused flow leaves no entry.
        chains = [
            {"name": "reject", "type": "filter", "hook": "prerouting", "prio": -300},
            {"name": "masquerade", "type": "nat", "hook": "postrouting", "prio": 100},
        ]
        cmds: list[dict[str, Any]] = [{"add": {"table": table}}]
        for c in chains:
            cmds.append(
                {"add": {"chain": {"family": "inet", "table": NFT_TABLE, **c, "policy": "accept"}}}
            )
            cmds.append(
                {"flush": {"chain": {"family": "inet", "table": NFT_TABLE, "name": c["name"]}}}
            )
        cmds += [
            rule("reject", mark(MARK_REJECT), tcp, {"reject": {"type": "tcp reset"}}),
            rule(
                "reject",
                mark(MARK_REJECT),
                {"reject": {"type": "icmpx", "expr": "port-unreachable"}},
            ),
            rule("masquerade", mark(MARK_MASQ), {"masquerade": None}),
            # Flows the programs translate need no conntrack entry (the flow
            # table is their state): skipping it is most of the per-packet
            # cost left in netfilter.  A host firewall that drops untracked
            # packets in forward must accept `ct state untracked` for VIPs.
            rule("reject", mark(MARK_NOTRACK), {"notrack": None}),
        ]
        self._nft_cmd(cmds)

    def _delete_nft(self) -> None:
        with contextlib.suppress(EbpfError):
            self._nft_cmd([{"delete": {"table": {"family": "inet", "name": NFT_TABLE}}}])

    # -- verbs ------------------------------------------------------------------------

    def reconcile(self, desired: DesiredState) -> Outcome:
        want = {norm_key(f.key): f for f in desired.l4}
        upserts = [f for k, f in sorted(want.items()) if self._differs(k, f)]
        deletes = sorted(k for k in self._fes if k not in want)
        if not upserts and not deletes:
            return Outcome()
        errors = self._apply(upserts, deletes)
        return frontend_outcome(desired, len(upserts) + len(deletes) - len(errors), errors)

    def _differs(self, key: Key, f: L4Frontend) -> bool:
        fe = self._fes.get(key)
        if fe is None:
            return True
        if self._written.get(key) == f:
            return False
        try:
            spec = normalise(f)
        except FrontendError:
            return True  # let _plan report it for this frontend
        return fe.spec() != (_triples(spec), spec.reject_weight)

    # -- the write path -----------------------------------------------------------------

    def _release_quarantine(self) -> None:
        for off, size in self._quarantine_extents:
            self._pool.free(off, size)
        for bid in self._quarantine_ids:
            self._be_ids.free(bid)
        self._quarantine_extents.clear()
        self._quarantine_ids.clear()

    def _plan(self, f: L4Frontend) -> _Plan:
        spec = normalise(f)  # FrontendError (a ValueError) before any write
        backends, reject_weight, key = _triples(spec), spec.reject_weight, spec.key
        old = self._fes.get(key)
        new_frontend = old is None
        fe_id = old.id if old else self._fe_ids.alloc()
        fe = _Fe(key, fe_id, 0, 0, 0, reject_weight, self._next_generation())
        new_ids: list[int] = []
        try:
            values: list[tuple[int, BackendC]] = []
            for ip, port, weight in backends:
                prev = old.backends.get((ip, port)) if old else None
                if prev is not None:
                    bid = prev[0]
                else:
                    bid = self._be_ids.alloc()
                    new_ids.append(bid)
                fe.backends[(ip, port)] = (bid, weight)
                family, packed = _pack_addr(ip)
                bv = BackendC()
                ctypes.memmove(bv.addr, packed, 16)
                bv.port = socket.htons(port)
                bv.family = family
                bv.weight = weight
                bv.frontend_id = fe_id
                values.append((bid, bv))
            entries = [(f"{ip}:{port}", w) for ip, port, w in backends]
            ids = [fe.backends[(ip, port)][0] for ip, port, _ in backends]
            if reject_weight:
                entries.append((REJECT_IDENTITY, reject_weight))
                ids.append(REJECT_ID)
            positive = sum(1 for _, w in entries if w > 0)
            table: array[int] = array("I")
            if not any(w > 0 for _, _, w in backends):
                fe.flags |= FE_REJECT_ALL
            else:
                size = maglev.table_size_for(positive, self.maglev_size)
                table = maglev.build_into(entries, size, ids)
                fe.table_size = size
                fe.table_off = self._pool.alloc(size)
        except BaseException:
            for bid in new_ids:
                self._be_ids.free(bid)
            if new_frontend:
                self._fe_ids.free(fe_id)
            raise
        removed = [
            bid for ipp, (bid, _) in (old.backends.items() if old else []) if ipp not in fe.backends
        ]
        old_extent = (old.table_off, old.table_size) if old and old.table_size else None
        return _Plan(fe, new_frontend, table, new_ids, values, removed, old_extent, f)

    def _next_generation(self) -> int:
        self._generation = (self._generation + 1) & 0xFFFFFFFF
        return self._generation

    def _apply(self, upserts: Sequence[L4Frontend], deletes: Sequence[Key]) -> dict[Key, str]:
        """Order: stats of new ids zeroed -> backends -> Maglev slots into free
        extents -> frontend entries flipped (atomic per frontend) -> removals.
        No packet sees a frontend whose table or backends are half-written."""
        self._release_quarantine()
        errors: dict[Key, str] = {}
        plans: list[_Plan] = []
        for f in upserts:
            try:
                plans.append(self._plan(f))
            except (EbpfError, ValueError, OSError) as exc:
                errors[f.key] = str(exc)
                log.warning("event=ebpf_frontend_failed frontend=%s error=%s", f.key, exc)
        try:
            self._write(plans)
        except OSError:
            # One batch failed: redo frontend by frontend to find the culprit.
            for p in plans:
                try:
                    self._write([p])
                except OSError as exc:
                    errors[p.fe.key] = str(exc)
                    self._undo_plan(p)
                    log.warning("event=ebpf_frontend_failed frontend=%s error=%s", p.fe.key, exc)
        for p in plans:
            if p.fe.key in errors:
                continue
            self._fes[p.fe.key] = p.fe
            self._written[p.fe.key] = p.source
            if p.old_extent:
                self._quarantine_extents.append(p.old_extent)
            self._quarantine_ids.extend(p.removed_backend_ids)
            if p.removed_backend_ids:
                self.maps["backends"].delete_batch(
                    [ctypes.c_uint32(i) for i in p.removed_backend_ids]
                )
        if deletes:
            self._delete(deletes)
        return errors

    def _undo_plan(self, p: _Plan) -> None:
        if p.fe.table_size:
            self._pool.free(p.fe.table_off, p.fe.table_size)
        for bid in p.new_backend_ids:
            self._be_ids.free(bid)
        if p.new_frontend:
            self._fe_ids.free(p.fe.id)

    def _write(self, plans: Sequence[_Plan]) -> None:
        if not plans:
            return
        self.writes += 1
        fe_stats, be_stats = self.maps["fe_stats"], self.maps["be_stats"]
        fe_stats.zero_percpu([p.fe.id for p in plans if p.new_frontend])
        be_stats.zero_percpu([bid for p in plans for bid in p.new_backend_ids])
        bkeys = [ctypes.c_uint32(bid) for p in plans for bid, _ in p.backend_values]
        bvals = [bv for p in plans for _, bv in p.backend_values]
        self.maps["backends"].put_batch(bkeys, bvals)
        slot_keys = array("I")
        slot_vals = array("I")
        for p in plans:
            if not p.fe.table_size:
                continue
            if self._maglev_mem is not None:
                # Free extents only: no reader looks at these slots yet.
                off, end = 2 * p.fe.table_off, 2 * (p.fe.table_off + p.fe.table_size)
                self._maglev_mem[off:end:2] = p.table
            else:
                slot_keys.extend(range(p.fe.table_off, p.fe.table_off + p.fe.table_size))
                slot_vals.extend(p.table)
        self.maps["maglev"].put_batch_u32(slot_keys, slot_vals)
        fkeys = [frontend_key(p.fe.key) for p in plans]
        fvals = []
        for p in plans:
            v = FrontendC()
            v.id = p.fe.id
            v.flags = p.fe.flags
            v.table_off = p.fe.table_off
            v.table_size = p.fe.table_size
            v.reject_weight = p.fe.reject_weight
            v.generation = p.fe.generation
            fvals.append(v)
        self.maps["frontends"].put_batch(fkeys, fvals)

    def _delete(self, keys: Sequence[Key]) -> None:
        present = [k for k in keys if k in self._fes]
        if not present:
            return
        self.writes += 1
        self.maps["frontends"].delete_batch([frontend_key(k) for k in present])
        gone: list[int] = []
        for k in present:
            fe = self._fes.pop(k)
            self._written.pop(k, None)
            if fe.table_size:
                self._quarantine_extents.append((fe.table_off, fe.table_size))
            gone.extend(bid for bid, _ in fe.backends.values())
            self._fe_ids.free(fe.id)
        self.maps["backends"].delete_batch([ctypes.c_uint32(i) for i in gone])
        self._quarantine_ids.extend(gone)

    # -- reading back -------------------------------------------------------------------

    def read_counters(self) -> list[FrontendCounters]:
        # Ids from this object's memory: no walk of the frontends and backends maps.
        frontends = [
            (key, fe.id, [(ipp, bid) for ipp, (bid, _) in fe.backends.items()])
            for key, fe in self._fes.items()
        ]
        return read_counters(self.maps, frontends)

    def backend_counters(self, key: Key) -> dict[tuple[str, int], tuple[int, int, int]]:
        """(ip, port) -> (packets, bytes, new flows) of one frontend's backends."""
        fe = self._fes[norm_key(key)]
        out: dict[tuple[str, int], tuple[int, int, int]] = {}
        for ipp, (bid, _) in fe.backends.items():
            cs = self.maps["be_stats"].get_percpu(ctypes.c_uint32(bid))
            out[ipp] = (
                sum(c.packets for c in cs),
                sum(c.bytes for c in cs),
                sum(c.flows for c in cs),
            )
        return out

    def programmed(self) -> list[ProgrammedFrontend]:
        """Read back from the kernel maps (not from this object's memory)."""
        return read_programmed(self.maps)

    def flush_flows(self) -> None:
        """Forget every tracked flow (tests: prove Maglev alone is sticky)."""
        for name in ("flows", "rev", "sock_rev", "sock_rev6"):
            self.maps[name].clear()

    def maglev_table(self, key: Key) -> list[tuple[str, int] | None]:
        """The frontend's Maglev table as the kernel holds it (None = reject slot)."""
        fe = self._fes[norm_key(key)]
        by_id = {bid: ipp for ipp, (bid, _) in fe.backends.items()}
        out: list[tuple[str, int] | None] = []
        slot = self.maps["maglev"]
        for i in range(fe.table_off, fe.table_off + fe.table_size):
            v = slot.get(ctypes.c_uint32(i))
            out.append(by_id.get(int(v.value)) if v is not None else None)
        return out

    # -- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Let go of this process's handles; programs, filters and maps stay."""
        for m in self.maps.values():
            m.close()
        self._loader.close()

    def cleanup(self) -> None:
        """Remove everything this dataplane owns: filters, cgroup programs, the
        nft table, pins (maps are freed with their last reference)."""
        self._detach_tc()
        self._detach_cgroup()
        if self._use_nft:
            self._delete_nft()
        self.close()
        for pin, *_ in MAPS.values():
            with contextlib.suppress(FileNotFoundError):
                (self.pin_dir / pin).unlink()
        with contextlib.suppress(OSError):
            self.pin_dir.rmdir()


# -- reading without loading: `gatewaylb status` ----------------------------------------


def read_programmed(maps: Mapping[str, BpfMap]) -> list[ProgrammedFrontend]:
    """The frontends and backends the maps hold."""
    fes: dict[int, tuple[Key, int]] = {}
    for k, v in maps["frontends"].items():
        fes[v.id] = (_key_of(k), v.reject_weight)
    backends: dict[int, list[tuple[str, int, int]]] = {i: [] for i in fes}
    for _bk, bv in maps["backends"].items():
        if bv.frontend_id in backends:
            backends[bv.frontend_id].append(
                (_unpack_addr(bv.family, bv.addr), socket.ntohs(bv.port), bv.weight)
            )
    out = [
        ProgrammedFrontend(
            vip=key[0],
            protocol=key[1],
            port=key[2],
            backends=tuple(sorted(backends[fid])),
            reject_weight=rw,
        )
        for fid, (key, rw) in fes.items()
    ]
    return sorted(out, key=lambda p: (p.vip, p.protocol, p.port))


def read_counters(
    maps: Mapping[str, BpfMap],
    frontends: Iterable[tuple[Key, int, Iterable[tuple[tuple[str, int], int]]]],
) -> list[FrontendCounters]:
    """Counters of the frontends given as (key, frontend id, [((ip, port), backend id)])."""
    fe_stats, be_stats = maps["fe_stats"], maps["be_stats"]
    out: list[FrontendCounters] = []
    for key, fid, backends in sorted(frontends, key=lambda f: f[0]):
        per_cpu = fe_stats.get_percpu(ctypes.c_uint32(fid))
        conns = {
            ipp: sum(c.flows for c in be_stats.get_percpu(ctypes.c_uint32(bid)))
            for ipp, bid in sorted(backends)
        }
        out.append(
            FrontendCounters(
                vip=key[0],
                protocol=key[1],
                port=key[2],
                packets=sum(c.packets for c in per_cpu),
                bytes=sum(c.bytes for c in per_cpu),
                backend_connections=conns,
            )
        )
    return out


class EbpfView:
    """The maps of an eBPF dataplane, opened for reading only: nothing is
    compiled, attached or written.  Found through the pins, or through the
    maps a tc program of ours uses when the pins are out of sight (a bpf
    filesystem private to the mount namespace of the agent that made them)."""

    name = "ebpf"

    def __init__(self, maps: dict[str, BpfMap], where: str) -> None:
        self.maps = maps
        self.where = where  # how the maps were found, for people

    @classmethod
    def from_pins(cls, pin_dir: str) -> EbpfView:
        fds: dict[str, int] = {}
        try:
            for pin, *_ in MAPS.values():
                fds[pin] = _Bpf.obj_get(str(Path(pin_dir) / pin))
        except OSError as exc:
            for fd in fds.values():
                os.close(fd)
            raise EbpfError(f"pins in {pin_dir}: {exc}") from exc
        return cls(_typed_maps(fds), f"pins in {pin_dir}")

    @classmethod
    def from_program(cls, prog_id: int) -> EbpfView:
        """The maps program `prog_id` (our tc ingress program) uses."""
        pin_of = {cname[:15]: pin for cname, (pin, *_) in MAPS.items()}
        fds: dict[str, int] = {}
        try:
            prog = _Bpf.prog_fd_by_id(prog_id)
            try:
                _id, _name, map_ids = _Bpf.prog_info(prog)
            finally:
                os.close(prog)
            for map_id in map_ids:
                fd = _Bpf.map_fd_by_id(map_id)
                pin = pin_of.get(_Bpf.map_name(fd)[1])
                if pin is None or pin in fds:
                    os.close(fd)
                else:
                    fds[pin] = fd
            missing = sorted(set(pin_of.values()) - set(fds) - {"maglev", "sock_rev", "sock_rev6"})
            if missing:
                raise EbpfError(f"program {prog_id} uses no map {', '.join(missing)}")
        except (OSError, EbpfError) as exc:
            for fd in fds.values():
                os.close(fd)
            raise EbpfError(f"maps of program {prog_id}: {exc}") from exc
        return cls(_typed_maps(fds), f"maps of tc program {prog_id}")

    def programmed(self) -> list[ProgrammedFrontend]:
        return read_programmed(self.maps)

    def read_counters(self) -> list[FrontendCounters]:
        backends: dict[int, list[tuple[tuple[str, int], int]]] = {}
        for bk, bv in self.maps["backends"].items():
            ipp = (_unpack_addr(bv.family, bv.addr), socket.ntohs(bv.port))
            backends.setdefault(bv.frontend_id, []).append((ipp, int(bk.value)))
        return read_counters(
            self.maps,
            ((_key_of(k), v.id, backends.get(v.id, [])) for k, v in self.maps["frontends"].items()),
        )

    def close(self) -> None:
        for m in self.maps.values():
            m.close()


def _typed_maps(fds: Mapping[str, int]) -> dict[str, BpfMap]:
    ncpu = possible_cpus()
    by_pin = {pin: (cname, key_t, value_t) for cname, (pin, key_t, value_t) in MAPS.items()}
    out: dict[str, BpfMap] = {}
    for pin, fd in fds.items():
        cname, key_t, value_t = by_pin[pin]
        out[pin] = BpfMap(pin, fd, key_t, value_t, ncpu if cname.endswith("_stats") else 0)
    return out
