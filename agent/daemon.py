"""The agent's main loop: source -> translate -> reconcilers -> status, metrics.

Every stage that converges the world is a reconciler (agent/reconcile.py);
the loop runs them in ordered lanes (agent/lanes.py, which also turns what they
could not do into Events and status conditions) and owns when each lane runs:
- the L4 lane, in the sync: the kernel dataplane, then the guard of unserved
  VIP ports;
- the L7 lane, beside it: the L7 VIPs made local, the proxy, the stale VIPs
  removed.  It takes the newest desired state, so a slow render or `haproxy
  -c` never holds an L4 change back;
- the announcer, after the L4 lane (a VIP is announced once it is served);
- the status writers, beside the sync, latest result first.
Stages in a lane are independent unless gated (`Gate`): one failing never
stops the others.  A watcher task marks the state dirty when the source may
have changed; the sync debounces bursts, reads the source and translates.  A
lane that did not converge is retried with exponential back-off, cut short by
any new change; it never stops the loop, and /healthz fails when a loop makes
no progress.  What was refused is logged once, when it changes (said.py).
Owns no kernel, proxy or API object itself: only the order and timing of the
stages that do.  Exiting (SIGTERM/SIGINT) leaves the kernel as it is, so traffic keeps flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.announce.reconciler import AnnounceReconciler
from agent.dataplane.base import Dataplane
from agent.dataplane.vips import NodeVIPs
from agent.kube.events import EventRecorder
from agent.lanes import Gate, LaneRun, Stage, Stages
from agent.metrics import AgentMetrics, LabelledCounters
from agent.model.meta import Key
from agent.model.snapshot import Snapshot
from agent.proxy.reconciler import ProxyReconciler
from agent.said import SaidOnce
from agent.sources.base import Source
from agent.state import DesiredState
from agent.statuswriter import StatusView, StatusWriter
from agent.translate import HostAddresses, Translation, translate
from agent.translate.status import GatewayStatus

log = logging.getLogger("gatewaylb.agent")

# After a sync that took T seconds, the next one waits until FACTOR * T have
# passed: under a storm of changes the agent syncs at most 1 / (1 + FACTOR) of
# the time and leaves the rest of the CPU to the API server sending the storm.
SYNC_IDLE_FACTOR = 3.0
SUPERVISE_PERIOD = 2.0  # seconds between checks of the proxy worker and the announcer
# The storm pace never holds a change back longer than this, whatever a sync cost.
MAX_PACE = 5.0
# /healthz fails when a loop made no progress for this long.  An idle agent
# still syncs every rescan interval (10 s); the slowest legitimate sync seen
# (10k frontends, cold) takes a few seconds.
STALL_AFTER = 120.0


@dataclass(frozen=True, slots=True)
class SyncSettings:
    controller_name: str
    allow_host_addresses: bool = False  # VIPs may be this node's or endpoints' addresses
    debounce: float = 0.05
    max_debounce: float = 0.5
    rescan_interval: float = 10.0
    max_backoff: float = 30.0


class Agent:
    def __init__(
        self,
        *,
        source: Source,
        dataplane: Dataplane,
        metrics: AgentMetrics,
        settings: SyncSettings,
        status_writers: Sequence[StatusWriter] = (),
        proxy: ProxyReconciler | None = None,
        events: EventRecorder | None = None,
        announcer: AnnounceReconciler | None = None,
        node_vips: NodeVIPs | None = None,
        node_addresses: Callable[[], frozenset[str]] | None = None,
        prior_addresses: Mapping[Key, tuple[str, ...]] | None = None,
    ) -> None:
        self._source = source
        self._dataplane = dataplane
        self._metrics = metrics
        self._settings = settings
        self._proxy = proxy
        self._events = events
        self._announcer = announcer
        self._node_vips = node_vips
        self._node_addresses = node_addresses
        # The lanes, in the order their stages run.
        self._l4_lane: tuple[Stage[DesiredState], ...] = (
            Stage(dataplane, kernel=True, counted=True),
            *([Stage(node_vips.guarding, Gate.APPLIED, kernel=True)] if node_vips else []),
        )
        self._l7_lane: tuple[Stage[DesiredState], ...] = ()
        if proxy is not None:
            self._l7_lane = (
                *([Stage(node_vips.adding, kernel=True)] if node_vips else []),
                Stage(proxy, Gate.CONVERGED),
                *([Stage(node_vips.removing, Gate.CONVERGED, kernel=True)] if node_vips else []),
            )
        self._announce_lane: tuple[Stage[DesiredState], ...] = (
            (Stage(announcer, Gate.APPLIED),) if announcer is not None else ()
        )
        self._status_lane: tuple[Stage[StatusView], ...] = tuple(Stage(w) for w in status_writers)
        self._said = SaidOnce(metrics, settings.controller_name)
        # Addresses Gateways held (from the pools): kept across syncs and, via
        # the status file, across restarts, so assignments never move.
        self._addresses: dict[Key, tuple[str, ...]] = dict(prior_addresses or {})
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._kernel_lock = threading.Lock()
        # The desired state the dataplane was last given: labels its counters.
        self._programmed = DesiredState()
        self._synced_snapshot: Snapshot | None = None
        self._stages = Stages(metrics, events, self._kernel_lock, self._set_programmed)
        self._l7_desired: DesiredState | None = None
        self._l7_dirty = asyncio.Event()
        self._l7_attempted = asyncio.Event()
        self._proxy_busy_since: float | None = None
        # The last translation, before the stages' failures were folded into it.
        self._translated: tuple[Snapshot, Translation] | None = None
        self._sync_progress = time.monotonic()
        self._status_pending: StatusView | None = None
        self._inline_status_cost = 0.0  # seconds the first sync spent writing status
        self._status_ready = asyncio.Event()
        self._last_status: StatusView | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_sync_cost = 0.0
        self._last_sync_end = 0.0
        self._storm = False
        self.ready = False
        self.syncs = 0
        metrics.add_kernel_counters(self._labelled_counters)
        if announcer is not None:
            metrics.add_announcements(announcer.status)
        if node_vips is not None:
            metrics.add_unserved_packets(self._unserved_packets)

    def _set_programmed(self, desired: DesiredState) -> None:
        self._programmed = desired

    def _unserved_packets(self) -> int:
        assert self._node_vips is not None
        with self._kernel_lock:
            return self._node_vips.guard.unserved_packets()

    # -- kernel counters for /metrics --------------------------------------------

    def _labelled_counters(self) -> Iterable[LabelledCounters]:
        with self._kernel_lock:
            counters = self._dataplane.read_counters()
            desired = self._programmed
        sources = {f.key: f.source for f in desired.l4}
        out = []
        for c in counters:
            src = sources.get((c.vip, c.protocol, c.port))
            labels = (
                src.namespace if src else "",
                src.gateway if src else "",
                src.listener if src else "",
                c.vip,
                c.protocol,
                str(c.port),
            )
            out.append(LabelledCounters(labels, c))
        return out

    # -- running stages -------------------------------------------------------------

    # -- loop ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._l7_dirty.set()
        self._l7_attempted.set()

    def rewrite_status(self) -> None:
        """Write the latest status again (thread-safe): a status writer that
        just became leader writes what its predecessor may not have."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._requeue_status)

    def _requeue_status(self) -> None:
        if self._status_pending is None and self._last_status is not None:
            self._status_pending = self._last_status
            self._status_ready.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Fails outside the main thread (tests); stop() still works there.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self._dirty.set()
        async with asyncio.TaskGroup() as tg:
            helpers = [tg.create_task(self._watch()), tg.create_task(self._status_loop())]
            if self._l7_lane:
                helpers.append(tg.create_task(self._l7_loop()))
            if self._proxy is not None:
                helpers.append(
                    tg.create_task(
                        self._supervise(self._proxy.ensure_running, "proxy_supervise_failed")
                    )
                )
            if self._announcer is not None:
                helpers.append(
                    tg.create_task(
                        self._supervise(
                            self._announcer.refresh,
                            "announce_refresh_failed",
                            self._announcer.name,
                            after_ready=True,
                        )
                    )
                )
            await self._sync_loop()
            for task in helpers:
                task.cancel()
        if self._announcer is not None:
            await asyncio.to_thread(self._announcer.close, False)
        log.info("event=stopped kernel_state=kept")

    async def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                changed = await self._source.wait_for_change(self._settings.rescan_interval)
            except Exception:
                log.exception("event=watch_failed source=%s", self._source.name)
                await asyncio.sleep(1.0)
                changed = True
            # A timeout (changed is False) is the periodic rescan: the safety
            # net under inotify.  An unchanged state costs a translate and no
            # kernel write.
            if changed or not self._stop.is_set():
                self._dirty.set()

    async def _debounce(self) -> None:
        """Let a burst of writes settle: wait until quiet, but not forever."""
        deadline = time.monotonic() + self._settings.max_debounce
        while time.monotonic() < deadline:
            self._dirty.clear()
            try:
                await asyncio.wait_for(self._dirty.wait(), self._settings.debounce)
            except TimeoutError:
                return
            if self._stop.is_set():
                return

    async def _pace(self) -> None:
        """Under a storm of changes (thousands of objects being created, so
        new changes arrive while a sync runs), sync at most a quarter of the
        time: a full sync at that scale takes a good fraction of a second of
        CPU, and back-to-back syncs would starve the API server that is still
        sending the storm (kube-proxy's minSyncPeriod has the same aim).  An
        edit that finds the agent idle is synced at once."""
        if not self._storm:
            return
        wait = SYNC_IDLE_FACTOR * self._last_sync_cost - (time.monotonic() - self._last_sync_end)
        wait = min(wait, MAX_PACE)
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def _sync_loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._sync_progress = time.monotonic()
            if backoff:
                # Retry after the back-off, or at once when something changed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), backoff)
                if self._stop.is_set():
                    return
            else:
                await self._dirty.wait()
                if self._stop.is_set():
                    return
                await self._debounce()
                if self._stop.is_set():
                    return
                await self._pace()
                if self._stop.is_set():
                    return
            t0 = time.monotonic()
            self._inline_status_cost = 0.0
            self._sync_progress = time.monotonic()
            ok = await self.sync_once()
            # The pace follows what a sync costs this agent, not how long the
            # API server took to answer the first status writes.
            self._last_sync_end = time.monotonic()
            self._last_sync_cost = self._last_sync_end - t0 - self._inline_status_cost
            # Changes that arrived while this sync ran: a storm, pace the next one.
            self._storm = self._dirty.is_set()
            backoff = 0.0 if ok else min(self._settings.max_backoff, max(0.5, backoff * 2))

    async def sync_once(self) -> bool:
        """One sync; False when the L4 lane did not converge (retried with back-off)."""
        started = time.monotonic()
        if not self._source.synced():
            return True  # never program a partial view of the cluster
        # In a thread: reading a large manifest directory takes seconds of CPU,
        # and the loop must keep serving /healthz, status writes and the L7 lane.
        snapshot = await asyncio.to_thread(self._source.snapshot)
        if snapshot is self._synced_snapshot:
            return True  # nothing changed since the last good sync (a periodic rescan)
        errors = self._source.errors()
        warnings = [str(w) for w in snapshot.warnings]
        self._said.source_problems(errors, warnings)
        self._metrics.manifest_errors.set(len(errors))
        self._metrics.manifest_warnings.set(len(warnings))
        hosts = HostAddresses(
            await self._read_node_addresses(), self._settings.allow_host_addresses
        )
        result = translate(snapshot, self._settings.controller_name, self._addresses, hosts)
        self._addresses.update(held_addresses(result))
        desired = result.desired
        l4 = await self._stages.run(self._l4_lane, desired)
        dataplane = l4.runs[0]
        if dataplane.raised:
            # The dataplane failed as a whole: nothing of this state is said to
            # be programmed, announced or written as status until it is (the
            # L7 lane keeps the state it was last handed).
            return False
        first = not self.ready
        await self._hand_to_l7(desired, wait=first)
        announced = await self._stages.run(self._announce_lane, desired)
        await self._stages.tell(l4.failures + announced.failures)
        self._translated = (snapshot, result)
        result = self._stages.fold_into(result)
        self._said.rejections(snapshot, result.status)
        self._metrics.frontends_programmed.set(len(desired.l4) - len(dataplane.outcome.failures))
        self._metrics.backends_programmed.set(sum(len(f.backends) for f in desired.l4))
        # Status is written beside the sync loop, latest result first, so a slow
        # API server (thousands of status patches) never delays programming the
        # next change.  The first sync writes inline: once /readyz says ready,
        # the status of what is programmed is there too.
        view = StatusView(snapshot, result)
        if first:
            s0 = time.monotonic()
            await self._write_status(view)
            self._inline_status_cost = time.monotonic() - s0
        else:
            self._queue_status(view)
        clean = l4.converged
        self._synced_snapshot = snapshot if clean else None
        self._metrics.last_sync.set(time.time())
        self.syncs += 1
        if first:
            log.info("event=ready frontends=%d", len(desired.l4))
        self.ready = True
        log.info(
            "event=synced frontends=%d changed=%d errors=%d rejected=%d took_ms=%.1f",
            len(desired.l4),
            dataplane.outcome.changed,
            len(dataplane.outcome.failures),
            self._said.rejected_objects(),
            (time.monotonic() - started) * 1000,
        )
        return clean

    # -- L7 beside L4 ---------------------------------------------------------------

    async def _hand_to_l7(self, desired: DesiredState, *, wait: bool) -> None:
        """Give the L7 lane the newest desired state.  The sync does not wait
        for it (a slow render or `haproxy -c` never holds an L4 change back),
        except on the first sync: /readyz means the L7 listeners were tried too."""
        if not self._l7_lane:
            return
        self._l7_desired = desired
        self._l7_attempted.clear()
        self._l7_dirty.set()
        if wait:
            await self._l7_attempted.wait()

    async def _l7_loop(self) -> None:
        """The L7 lane, run on the newest desired state; a lane that did not
        converge is retried with back-off, and a newer desired state never
        waits for the back-off."""
        backoff = 0.0
        while not self._stop.is_set():
            if backoff:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._l7_dirty.wait(), backoff)
            else:
                await self._l7_dirty.wait()
            if self._stop.is_set():
                return
            self._l7_dirty.clear()
            desired = self._l7_desired
            if desired is None:
                continue
            self._proxy_busy_since = time.monotonic()
            before = self._stages.failures()
            try:
                lane = await self._stages.run(self._l7_lane, desired)
            finally:
                self._proxy_busy_since = None
            if self._stages.failures() != before:
                await self._l7_failures_changed(lane)
            if not self._l7_dirty.is_set():
                self._l7_attempted.set()
            if not lane.converged:
                backoff = min(self._settings.max_backoff, max(0.5, backoff * 2))
            else:
                # Something left out may clear by itself (a port another process
                # holds): the same desired state is tried again after a while.
                backoff = lane.retry_after or 0.0

    async def _l7_failures_changed(self, lane: LaneRun) -> None:
        """What the L7 lane could not do changed: written into the status
        again, and told."""
        if self._translated is not None:
            snapshot, result = self._translated
            result = self._stages.fold_into(result)
            self._said.rejections(snapshot, result.status)
            if self.ready:
                self._queue_status(StatusView(snapshot, result))
        await self._stages.tell(lane.failures)

    def healthy(self) -> tuple[bool, str]:
        """False when a loop has made no progress for STALL_AFTER seconds (a
        hung open(), a stuck kernel call): the liveness probe restarts it."""
        now = time.monotonic()
        if now - self._sync_progress > STALL_AFTER:
            return False, f"the sync loop made no progress for {now - self._sync_progress:.0f} s"
        busy = self._proxy_busy_since
        if busy is not None and now - busy > STALL_AFTER:
            return False, f"the L7 reconcile has been running for {now - busy:.0f} s"
        return True, "ok"

    async def _read_node_addresses(self) -> frozenset[str]:
        """This node's own addresses, which no VIP may take (read every sync:
        DHCP and operators change them)."""
        if self._node_addresses is None or self._settings.allow_host_addresses:
            return frozenset()
        try:
            return await asyncio.to_thread(self._node_addresses)
        except Exception:
            log.exception("event=node_addresses_failed")
            return frozenset()

    # -- status -------------------------------------------------------------------

    def _queue_status(self, view: StatusView) -> None:
        self._status_pending = view
        self._status_ready.set()

    async def _write_status(self, view: StatusView) -> None:
        self._last_status = view
        await self._stages.run(self._status_lane, view)

    async def _status_loop(self) -> None:
        while not self._stop.is_set():
            await self._status_ready.wait()
            self._status_ready.clear()
            pending, self._status_pending = self._status_pending, None
            if pending is not None:
                await self._write_status(pending)

    async def _supervise(
        self,
        fn: Callable[[], object],
        failure: str,
        reconciler: str | None = None,
        *,
        after_ready: bool = False,
    ) -> None:
        """Call `fn` in a thread every SUPERVISE_PERIOD until stopped: restarts
        a proxy worker or BGP speaker that died, uses an announce interface
        that appeared.  A failure is logged (event=`failure`) and counted
        against `reconciler` if given; the next period tries again."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), SUPERVISE_PERIOD)
                return
            except TimeoutError:
                pass
            if after_ready and not self.ready:
                continue
            try:
                await asyncio.to_thread(fn)
            except Exception:
                if reconciler is not None:
                    self._metrics.sync_errors.labels(reconciler).inc()
                log.exception("event=%s", failure)


def held_addresses(result: Translation) -> dict[Key, tuple[str, ...]]:
    out: dict[Key, tuple[str, ...]] = {}
    for obj in result.status.objects:
        if obj.kind == "Gateway" and isinstance(obj.status, GatewayStatus) and obj.status.addresses:
            out[Key(obj.namespace, obj.name)] = obj.status.addresses
    return out
