"""Lanes of reconcilers: how the agent loop runs its stages, and the one place
where what they could not do becomes Events and status.

A lane is an ordered list of `Stage`s, each a reconciler (agent/reconcile.py)
with a `Gate` saying whether it needs the stages before it.  `Stages.run`
runs a lane in worker threads (kernel calls block), times and counts each
stage (`gatewaylb_sync_duration_seconds`, `gatewaylb_sync_errors_total`,
label `reconciler`), turns an exception into a stage that failed as a whole,
and remembers the failures of each stage's last run: `tell` sends them as
Warning Events on the objects concerned, `fold_into` writes those that belong
in status.  Owns no loop and no timing of retries (daemon.py does); never
reads the source.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from agent.feedback import fold_failures
from agent.kube.events import EventRecorder
from agent.metrics import AgentMetrics
from agent.reconcile import Failure, Outcome, Reconciler
from agent.refs import ListenerRef
from agent.state import DesiredState
from agent.translate import Translation

log = logging.getLogger("gatewaylb.agent")

DesiredT = TypeVar("DesiredT")


class Gate(enum.Enum):
    """When a stage runs, given the stages before it in its lane."""

    ALWAYS = "always"
    # Only if none before it raised: the guard and the announcer follow what the
    # dataplane programmed (a VIP port is served, a VIP announced, once it is).
    APPLIED = "applied"
    # Only if all before it converged: the proxy binds VIPs the stage before it
    # made local; stale VIPs go only once the configuration in force no longer
    # binds them.
    CONVERGED = "converged"


@dataclass(frozen=True, slots=True)
class Stage(Generic[DesiredT]):
    reconciler: Reconciler[DesiredT]
    gate: Gate = Gate.ALWAYS
    # Writes the kernel: runs under the kernel lock, which /metrics reads share.
    kernel: bool = False
    # The dataplane: the desired state it was last given labels its counters.
    counted: bool = False


@dataclass(frozen=True, slots=True)
class Ran:
    """One stage's run: its outcome, or that it raised, or that its gate kept
    it from running."""

    name: str
    outcome: Outcome
    raised: bool = False
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class LaneRun:
    runs: tuple[Ran, ...]

    @property
    def applied(self) -> bool:
        return not any(r.raised or r.skipped for r in self.runs)

    @property
    def converged(self) -> bool:
        return all(r.outcome.converged and not r.skipped for r in self.runs)

    @property
    def failures(self) -> tuple[Failure, ...]:
        return tuple(f for r in self.runs for f in r.outcome.failures)

    @property
    def retry_after(self) -> float | None:
        waits = [r.outcome.retry_after for r in self.runs if r.outcome.retry_after is not None]
        return min(waits) if waits else None


class Stages:
    def __init__(
        self,
        metrics: AgentMetrics,
        events: EventRecorder | None,
        kernel_lock: threading.Lock,
        on_programmed: Callable[[DesiredState], None],
    ) -> None:
        self._metrics = metrics
        self._events = events
        self._kernel_lock = kernel_lock
        # Called under the kernel lock with what the dataplane was just given.
        self._on_programmed = on_programmed
        # What each stage could not do at its last run, by id of its Stage (a
        # stage that raised keeps what it said before: the world still holds
        # what it last did).
        self._failures: dict[int, tuple[Failure, ...]] = {}

    def failures(self) -> tuple[Failure, ...]:
        return tuple(f for fs in self._failures.values() for f in fs)

    def _run_stage(self, stage: Stage[DesiredT], desired: DesiredT) -> Ran:
        """In a worker thread: one reconcile, timed and counted.  An exception
        is the stage failing as a whole: logged with its traceback, counted,
        and the lane retried with back-off."""
        name = stage.reconciler.name
        # Exported (at 0) from the stage's first run, not from its first
        # failure: a series born at 1 shows no increase, so rate() and an alert
        # on it would miss that first failure.
        errors = self._metrics.sync_errors.labels(name)
        t0 = time.monotonic()
        try:
            if stage.kernel:
                with self._kernel_lock:
                    outcome = stage.reconciler.reconcile(desired)
                    if stage.counted:
                        assert isinstance(desired, DesiredState)
                        self._on_programmed(desired)
            else:
                outcome = stage.reconciler.reconcile(desired)
        except Exception:
            errors.inc()
            log.exception("event=reconcile_failed reconciler=%s", name)
            return Ran(name, Outcome(converged=False), raised=True)
        finally:
            self._metrics.sync_duration.labels(name).observe(time.monotonic() - t0)
        if not outcome.converged:
            errors.inc()
        return Ran(name, outcome)

    async def run(self, lane: Sequence[Stage[DesiredT]], desired: DesiredT) -> LaneRun:
        """Run the stages of one lane in order, each in a worker thread."""
        runs: list[Ran] = []
        for stage in lane:
            done = LaneRun(tuple(runs))
            if (stage.gate is Gate.APPLIED and not done.applied) or (
                stage.gate is Gate.CONVERGED and not done.converged
            ):
                runs.append(Ran(stage.reconciler.name, Outcome(converged=False), skipped=True))
                continue
            ran = await asyncio.to_thread(self._run_stage, stage, desired)
            if not ran.raised:
                self._failures[id(stage)] = ran.outcome.failures
            runs.append(ran)
        return LaneRun(tuple(runs))

    async def tell(self, failures: Sequence[Failure]) -> None:
        """What this node could not do, as Warning Events on the objects concerned."""
        if self._events is None or not failures:
            return
        await asyncio.to_thread(self._record_events, failures)

    def _record_events(self, failures: Sequence[Failure]) -> None:
        assert self._events is not None
        for f in failures:
            note = f"rule {f.rule}: {f.message}" if f.rule is not None else f.message
            target = f.subject
            if isinstance(target, ListenerRef):
                note = f"listener {target.listener}: {note}"
                target = target.owner
            self._events.warning(target, f.event_reason, note)

    def fold_into(self, result: Translation) -> Translation:
        """The translation with what the stages could not do in its status."""
        failures = self.failures()
        if not any(f.in_status for f in failures):
            return result
        return dataclasses.replace(result, status=fold_failures(result.status, failures))
