"""What the agent needs from a source of objects: the current Snapshot and a
way to wait until it may have changed.

A Protocol only, implemented by sources/files.py (FileSource) and
kube/source.py (KubeSource); nothing here reads anything."""

from __future__ import annotations

from typing import Protocol

from agent.model.snapshot import Snapshot


class Source(Protocol):
    name: str

    def synced(self) -> bool:
        """Has every kind of object been read once?  Until then nothing is
        programmed: a partial view would delete frontends not yet seen."""
        ...

    def snapshot(self) -> Snapshot:
        """The current objects; never raises for bad input (it is reported)."""
        ...

    async def wait_for_change(self, timeout: float) -> bool:
        """Return True when something may have changed, False on timeout."""
        ...

    def errors(self) -> list[str]:
        """Problems of the last snapshot that kept objects out of it."""
        ...

    def close(self) -> None: ...
