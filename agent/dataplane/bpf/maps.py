"""The maps as the dataplane sees them: the `Map` interface, and opening the set.

Owns the interface through which the eBPF dataplane reads and writes every map
(agent/dataplane/ebpf/), so that in-memory maps can stand in for the kernel's
in unit tests, and the ways to open the dataplane's maps: by their pins, or
through the program that uses them (the pins may be out of sight).  Checks
that what it opens has the layout of agent/dataplane/bpf/layouts.py.  Never
writes a map and never decides what a map holds.
"""

from __future__ import annotations

import ctypes
import os
from array import array
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from agent.dataplane.bpf import EbpfError
from agent.dataplane.bpf.layouts import MAPS, is_percpu
from agent.dataplane.bpf.syscall import Bpf, BpfMap, possible_cpus


class Map(Protocol):
    """One map: keys and values are the ctypes of `layouts.MAPS`.

    The batch writes are what the dataplane writes with (one syscall per map
    per batch); a batch stops at the first element that fails and raises
    OSError, leaving the earlier elements written, as the kernel does."""

    @property
    def name(self) -> str: ...

    @property
    def max_entries(self) -> int: ...

    def get(self, key: Any) -> Any | None:
        """The value, or None when the key is not there."""
        ...

    def get_percpu(self, key: Any) -> list[Any]:
        """A per-CPU map's values for one key, one a CPU ([] when not there)."""
        ...

    def items(self) -> Iterator[tuple[Any, Any]]: ...

    def put_batch(self, keys: Sequence[Any], values: Sequence[Any]) -> None: ...

    def put_batch_u32(self, keys: array[int], values: array[int]) -> None:
        """`put_batch` of a u32 -> u32 map from arrays (no ctypes object per slot)."""
        ...

    def zero_percpu(self, ids: Sequence[int]) -> None:
        """Reset every CPU's value of array slots `ids` (one batch)."""
        ...

    def delete_batch(self, keys: Sequence[Any]) -> None:
        """Delete keys; one not there ends the batch quietly (ENOENT)."""
        ...

    def clear(self) -> None: ...

    def mmap_u32(self) -> memoryview | None:
        """A u32 array map's memory, element i at item 2*i, or None when the
        map cannot be mapped (then `put_batch_u32` is the way)."""
        ...

    def close(self) -> None: ...


Maps = Mapping[str, Map]  # by pin name: "frontends", "backends", "maglev", ...


def check_compiled(sizes: Mapping[str, tuple[int, int]], ncpu: int) -> None:
    """Raise unless the (key, value) sizes the compiler gave each map are
    those of the ctypes mirrors (a per-CPU value is one per possible CPU)."""
    for cname, (_pin, key_t, value_t) in MAPS.items():
        percpu = ncpu if is_percpu(cname) else 0
        want = (ctypes.sizeof(key_t), ctypes.sizeof(value_t) * max(percpu, 1))
        if sizes[cname] != want:
            ksize, vsize = sizes[cname]
            raise EbpfError(f"map {cname}: C layout {ksize}/{vsize} != ctypes mirror {want}")


def open_pinned(pin_dir: str | Path) -> dict[str, BpfMap]:
    """Every map of the dataplane, by its pin under `pin_dir`."""
    fds: dict[str, int] = {}
    try:
        for pin, *_ in MAPS.values():
            fds[pin] = Bpf.obj_get(str(Path(pin_dir) / pin))
    except OSError as exc:
        _close(fds)
        raise EbpfError(f"pins in {pin_dir}: {exc}") from exc
    return typed_maps(fds)


def open_of_program(prog_id: int) -> dict[str, BpfMap]:
    """The maps program `prog_id` (a tc program of ours) uses.  The socket
    maps and the Maglev pool may be missing: a tc program need not use them."""
    pin_of = {cname[:15]: pin for cname, (pin, *_) in MAPS.items()}
    fds: dict[str, int] = {}
    try:
        prog = Bpf.prog_fd_by_id(prog_id)
        try:
            _id, _name, map_ids = Bpf.prog_info(prog)
        finally:
            os.close(prog)
        for map_id in map_ids:
            fd = Bpf.map_fd_by_id(map_id)
            pin = pin_of.get(Bpf.map_name(fd)[1])
            if pin is None or pin in fds:
                os.close(fd)
            else:
                fds[pin] = fd
        missing = sorted(set(pin_of.values()) - set(fds) - {"maglev", "sock_rev", "sock_rev6"})
        if missing:
            raise EbpfError(f"program {prog_id} uses no map {', '.join(missing)}")
    except (OSError, EbpfError) as exc:
        _close(fds)
        raise EbpfError(f"maps of program {prog_id}: {exc}") from exc
    return typed_maps(fds)


def typed_maps(fds: Mapping[str, int]) -> dict[str, BpfMap]:
    """Map fds (by pin name) with their ctypes; checks the kernel's sizes."""
    ncpu = possible_cpus()
    by_pin = {pin: (cname, key_t, value_t) for cname, (pin, key_t, value_t) in MAPS.items()}
    out: dict[str, BpfMap] = {}
    for pin, fd in fds.items():
        cname, key_t, value_t = by_pin[pin]
        out[pin] = BpfMap(pin, fd, key_t, value_t, ncpu if is_percpu(cname) else 0)
    return out


def _close(fds: Mapping[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
