"""The contract every kernel dataplane keeps (nftables, ebpf).

A dataplane is a reconciler (agent/reconcile.py) that owns one piece of kernel
state and converges it to the L4 part of a DesiredState.  `reconcile` is
idempotent (a second call with the same state changes nothing and issues no
kernel write) and atomic per change (no packet sees a half-programmed
frontend).  A failure to program one frontend is reported for that frontend
(a Failure told on its Gateway) and never blocks the others.  Constructing a
dataplane adopts whatever it finds in the kernel from a previous run instead
of flushing it, so an agent restart does not disturb established flows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agent.reconcile import Outcome
from agent.state import DesiredState


@dataclass(frozen=True, slots=True)
class FrontendCounters:
    vip: str
    protocol: str
    port: int
    packets: int
    bytes: int
    # (backend ip, backend port) -> new flows sent there
    backend_connections: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProgrammedFrontend:
    """What the kernel holds for one frontend, read back from the kernel."""

    vip: str
    protocol: str
    port: int
    # (ip, port, weight)
    backends: tuple[tuple[str, int, int], ...]
    reject_weight: int


class Dataplane(Protocol):
    name: str

    def reconcile(self, desired: DesiredState) -> Outcome: ...

    def read_counters(self) -> list[FrontendCounters]: ...

    def programmed(self) -> list[ProgrammedFrontend]: ...

    def cleanup(self) -> None: ...
