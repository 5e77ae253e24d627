"""The bpf(2) system call, typed, and one map by its fd.

Owns the argument layouts of the bpf(2) commands the agent uses (map element
and batch I/O, pins, program and map info, cgroup attach) and `BpfMap`, the
element I/O of one map.  Goes straight to the syscall through ctypes rather
than through bcc: bcc is untyped, and a status command or the cleanup must read
maps without compiling anything.  Knows no map by name and no map layout
(agent/dataplane/bpf/layouts.py does); never decides what to write.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from agent.dataplane.bpf import EbpfError

# bpf(2) commands and flags used here
_NR_BPF: Final = 321  # x86_64
_MAP_LOOKUP_ELEM: Final = 1
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
F_ALLOW_MULTI: Final = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _addr(obj: Any) -> int:
    return ctypes.addressof(obj) if obj is not None else 0


class Bpf:
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
    def _found(cls, cmd: int, attr: ctypes.Array[ctypes.c_char]) -> bool:
        """`call`, with ENOENT (no such key) as False rather than an error."""
        try:
            cls.call(cmd, attr)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    @classmethod
    def lookup(cls, fd: int, key: Any, value: Any) -> bool:
        return cls._found(_MAP_LOOKUP_ELEM, cls._attr("=IIQQQ", fd, 0, _addr(key), _addr(value), 0))

    @classmethod
    def delete(cls, fd: int, key: Any) -> bool:
        return cls._found(_MAP_DELETE_ELEM, cls._attr("=IIQQQ", fd, 0, _addr(key), 0, 0))

    @classmethod
    def next_key(cls, fd: int, key: Any, out: Any) -> bool:
        attr = cls._attr("=IIQQQ", fd, 0, _addr(key), _addr(out), 0)
        return cls._found(_MAP_GET_NEXT_KEY, attr)

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
    """How many values a per-CPU map holds for one key (every possible CPU,
    not only the online ones: that is the kernel's layout)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += (int(hi) if hi else int(lo)) - int(lo) + 1
    return count


class BpfMap:
    """One map, by fd, with its key and value ctypes (agent/dataplane/bpf/maps.py
    `Map` is the interface the dataplane sees)."""

    def __init__(self, name: str, fd: int, key_t: Any, value_t: Any, percpu: int = 0) -> None:
        self.name = name
        self.fd = fd
        self.key_t = key_t
        self.value_t = value_t
        self.percpu = percpu  # number of possible CPUs for per-CPU maps, else 0
        # Made once: counters read one lookup per frontend and backend.
        self._percpu_t = value_t * percpu if percpu else None
        self._mapped: tuple[mmap.mmap, memoryview, memoryview] | None = None
        _mtype, ksize, vsize, self.max_entries = Bpf.map_info(fd)
        if ksize != ctypes.sizeof(key_t) or vsize != ctypes.sizeof(value_t):
            raise EbpfError(
                f"map {name}: kernel key/value size {ksize}/{vsize} != "
                f"{ctypes.sizeof(key_t)}/{ctypes.sizeof(value_t)}: layout out of sync"
            )

    def get(self, key: Any) -> Any | None:
        value = self.value_t()
        return value if Bpf.lookup(self.fd, key, value) else None

    def get_percpu(self, key: Any) -> list[Any]:
        if self._percpu_t is None:  # the kernel would write past a one-value buffer
            raise EbpfError(f"map {self.name} is not per-CPU")
        values = self._percpu_t()
        if not Bpf.lookup(self.fd, key, values):
            return []
        return list(values)

    def zero_percpu(self, ids: Sequence[int]) -> None:
        """Reset the per-CPU values of array slots `ids` (one batch)."""
        n = len(ids)
        if n:
            keys = (ctypes.c_uint32 * n)(*ids)
            Bpf.update_batch(self.fd, keys, (self.value_t * (self.percpu * n))(), n)

    def keys(self) -> Iterator[Any]:
        key = self.key_t()
        if not Bpf.next_key(self.fd, None, key):
            return
        while True:
            yield key
            nxt = self.key_t()
            if not Bpf.next_key(self.fd, key, nxt):
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
            Bpf.update_batch(self.fd, ka, va, n)

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
            Bpf.update_batch(self.fd, ka, va, n)

    def delete_batch(self, keys: Sequence[Any]) -> None:
        n = len(keys)
        if n:
            Bpf.delete_batch(self.fd, (self.key_t * n)(*keys), n)

    def clear(self) -> None:
        # One element at a time: an LRU entry may vanish meanwhile, and a
        # batch delete stops at the first key it does not find.
        for key in list(self.keys()):
            Bpf.delete(self.fd, key)

    def close(self) -> None:
        if self._mapped is not None:
            mm, raw, view = self._mapped
            view.release()
            raw.release()
            mm.close()  # the mapping holds a reference to the map too
            self._mapped = None
        with contextlib.suppress(OSError):
            os.close(self.fd)
