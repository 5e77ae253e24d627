"""In-memory stand-ins for the eBPF dataplane's maps (the `Map` interface of
agent/dataplane/bpf/maps.py), for unit tests of the reconciler without a kernel.

Keys and values are kept as the bytes of their ctypes, as the kernel keeps
them, so what the dataplane encodes is what a test reads back.  Batches behave
as the kernel's: elements are written in order until one fails, and the earlier
ones stay written.  A test can make the next batch writes of a map fail, or
every write of one key; `batches` counts the batch syscalls a real map would
have issued.  Only tests use this, so it lives with them.
"""

from __future__ import annotations

import ctypes
import errno
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

from agent.dataplane.bpf.layouts import MAPS, is_percpu

ARRAYS = frozenset({"maglev", "fe_stats", "be_stats"})


class FakeMap:
    def __init__(
        self,
        name: str,
        key_t: Any,
        value_t: Any,
        max_entries: int,
        *,
        array_map: bool = False,
        percpu: int = 0,
        mmapable: bool = False,
    ) -> None:
        self.name = name
        self.key_t = key_t
        self.value_t = value_t
        self.max_entries = max_entries
        self.array_map = array_map
        self.percpu = percpu
        self.data: dict[bytes, bytes] = {}
        self.batches = 0
        self.closed = False
        self._fail_batches: list[int] = []  # errnos of the next batches to refuse
        self._fail_keys: dict[bytes, int] = {}
        # An mmap-able u32 array: the memory the kernel would map, element i at 2*i.
        self._mem = memoryview(bytearray(max_entries * 8)).cast("I") if mmapable else None

    # -- faults --------------------------------------------------------------------------

    def fail_next_batch(self, count: int = 1, err: int = errno.ENOMEM) -> None:
        """Refuse the next `count` batch writes whole (nothing written)."""
        self._fail_batches.extend([err] * count)

    def fail_key(self, key: Any, err: int = errno.E2BIG) -> None:
        """Refuse every write of `key`: a batch holding it stops there."""
        self._fail_keys[bytes(key)] = err

    def heal(self) -> None:
        self._fail_batches.clear()
        self._fail_keys.clear()

    # -- the Map interface -----------------------------------------------------------------

    def _value_size(self) -> int:
        return ctypes.sizeof(self.value_t) * max(self.percpu, 1)

    def _index(self, kb: bytes) -> int:
        return int(ctypes.c_uint32.from_buffer_copy(kb).value)

    def _raw(self, kb: bytes) -> bytes | None:
        if not self.array_map:
            return self.data.get(kb)
        i = self._index(kb)
        if i >= self.max_entries:
            return None
        if self._mem is not None:
            return bytes(ctypes.c_uint32(self._mem[2 * i]))
        return self.data.get(kb, bytes(self._value_size()))  # arrays hold every index

    def get(self, key: Any) -> Any | None:
        raw = self._raw(bytes(key))
        return None if raw is None else self.value_t.from_buffer_copy(raw)

    def get_percpu(self, key: Any) -> list[Any]:
        raw = self._raw(bytes(key))
        return [] if raw is None else list((self.value_t * self.percpu).from_buffer_copy(raw))

    def items(self) -> Iterator[tuple[Any, Any]]:
        for kb, vb in list(self.data.items()):
            yield self.key_t.from_buffer_copy(kb), self.value_t.from_buffer_copy(vb)

    def _batch(self) -> None:
        self.batches += 1
        if self._fail_batches:
            err = self._fail_batches.pop(0)
            raise OSError(err, f"fake {self.name}: batch refused")

    def _put(self, kb: bytes, vb: bytes) -> None:
        if kb in self._fail_keys:
            raise OSError(self._fail_keys[kb], f"fake {self.name}: key refused")
        if len(kb) != ctypes.sizeof(self.key_t) or len(vb) != self._value_size():
            raise OSError(errno.EINVAL, f"fake {self.name}: wrong key or value size")
        if self.array_map:
            i = self._index(kb)
            if i >= self.max_entries:
                raise OSError(errno.E2BIG, f"fake {self.name}: index {i} out of range")
            if self._mem is not None:
                self._mem[2 * i] = int(ctypes.c_uint32.from_buffer_copy(vb).value)
                return
        elif kb not in self.data and len(self.data) >= self.max_entries:
            raise OSError(errno.E2BIG, f"fake {self.name}: full")
        self.data[kb] = vb

    def put_batch(self, keys: Sequence[Any], values: Sequence[Any]) -> None:
        if keys:
            self._batch()
            for k, v in zip(keys, values, strict=True):
                self._put(bytes(k), bytes(v))

    def put_batch_u32(self, keys: array[int], values: array[int]) -> None:
        if keys:
            self._batch()
            for k, v in zip(keys, values, strict=True):
                self._put(bytes(ctypes.c_uint32(k)), bytes(ctypes.c_uint32(v)))

    def zero_percpu(self, ids: Sequence[int]) -> None:
        if ids:
            self._batch()
            for i in ids:
                self._put(bytes(ctypes.c_uint32(i)), bytes(self._value_size()))

    def delete_batch(self, keys: Sequence[Any]) -> None:
        if keys:
            self._batch()
            for k in keys:
                if bytes(k) in self._fail_keys:
                    raise OSError(self._fail_keys[bytes(k)], f"fake {self.name}: key refused")
                if self.data.pop(bytes(k), None) is None:
                    return  # ENOENT ends the kernel's batch; BpfMap takes it quietly

    def clear(self) -> None:
        self.data.clear()

    def mmap_u32(self) -> memoryview | None:
        return self._mem

    def close(self) -> None:
        self.closed = True

    # -- for tests -------------------------------------------------------------------------

    def set_percpu(self, index: int, values: Sequence[Any]) -> None:
        """What the programs would have counted on each CPU at `index`."""
        self.data[bytes(ctypes.c_uint32(index))] = bytes((self.value_t * self.percpu)(*values))


class FakeMaps(dict[str, FakeMap]):
    """Every map of the dataplane (by pin name), in memory."""

    def __init__(
        self,
        *,
        max_frontends: int = 64,
        max_backends: int = 256,
        pool_slots: int = 1 << 15,
        max_flows: int = 64,
        ncpu: int = 2,
        mmapable: bool = True,
    ) -> None:
        super().__init__()
        sizes = {
            "frontends": max_frontends,
            "backends": max_backends,
            "maglev": pool_slots,
            "fe_stats": max_frontends,
            "be_stats": max_backends,
        }
        for cname, (pin, key_t, value_t) in MAPS.items():
            self[pin] = FakeMap(
                pin,
                key_t,
                value_t,
                sizes.get(pin, max_flows),
                array_map=pin in ARRAYS,
                percpu=ncpu if is_percpu(cname) else 0,
                mmapable=mmapable and pin == "maglev",
            )

    @property
    def batches(self) -> int:
        return sum(m.batches for m in self.values())

    def dump(self) -> dict[str, dict[bytes, bytes]]:
        """A copy of every map's contents (the Maglev pool's memory included)."""
        out = {name: dict(m.data) for name, m in self.items()}
        mem = self["maglev"].mmap_u32()
        if mem is not None:
            out["maglev"] = {b"mem": mem.tobytes()}
        return out
