"""Allocators of the ids and pool extents the maps are indexed by.

Owns two pieces of arithmetic: `IdPool` hands out the frontend ids (indexes of
fe_stats) and backend ids (keys of backends, indexes of be_stats, the values in
Maglev slots), and `ExtentPool` hands out [offset, offset + size) ranges of the
one Maglev slot pool.  Both are rebuilt from what the maps hold when an agent
starts (`take`, `ExtentPool(used=...)`).  When a freed id or extent may be
reused (after a quarantine) is the dataplane's decision, not theirs.  Pure
memory: never touches the kernel.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.dataplane.bpf import EbpfError


class IdPool:
    """Ids in [first, end); a freed id is handed out again before a new one."""

    def __init__(self, first: int, end: int) -> None:
        self._next = first
        self._end = end
        self._free: list[int] = []
        self._used: set[int] = set()

    def take(self, ident: int) -> None:
        """Mark an id found in the maps as used."""
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
        # Neighbours merge, so a large table fits again where small ones were.
        merged: list[tuple[int, int]] = []
        for o, s in self._free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self._free = merged
