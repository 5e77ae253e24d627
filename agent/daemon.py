"""The agent's main loop: source -> translate -> reconcilers -> status, metrics.

One asyncio loop.  A watcher task marks the state dirty when the source may
have changed; the sync task debounces bursts, reads the source and
translates, and hands the desired state to the L4 dataplane and the guard of
unserved VIP ports in a worker thread (their kernel calls block); the L7
lane takes the newest desired state beside it, so a slow render or
`haproxy -c` never holds an L4 change back; a status task writes the latest
result.  A failed sync is retried with exponential back-off, cut short by
any new change; it never stops the loop, and /healthz fails when a loop
makes no progress.  What was refused is logged once, when it changes.
Exiting (SIGTERM/SIGINT) leaves the kernel as it is, so traffic keeps flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.announce.reconciler import AnnounceReconciler
from agent.dataplane.base import Dataplane, ReconcileResult
from agent.dataplane.vips import NodeVIPs
from agent.events import EventRecorder, ObjectRef
from agent.metrics import AgentMetrics, LabelledCounters
from agent.model.config import CONFIG_GROUP, CONFIG_KIND
from agent.model.meta import Key
from agent.model.snapshot import Snapshot
from agent.proxy.feedback import apply_problems
from agent.proxy.reconciler import Problem, ProxyReconciler
from agent.sources.base import Source
from agent.state import DesiredState
from agent.statuswriter import StatusWriter
from agent.translate import HostAddresses, Translation, translate
from agent.translate.rejections import Rejection, foreign_classes, rejected_counts, rejections
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
# New problems said per sync: thousands of junk documents must not flood the log.
LOG_LIMIT = 100


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
        self._status_writers = list(status_writers)
        self._proxy = proxy
        self._events = events
        self._announcer = announcer
        self._node_vips = node_vips
        self._node_addresses = node_addresses
        # What was last said about refused objects: only changes are logged.
        self._rejections: frozenset[Rejection] = frozenset()
        self._foreign_classes: frozenset[str] = frozenset()
        self._source_problems: frozenset[str] = frozenset()
        # Addresses Gateways held (from the pools): kept across syncs and, via
        # the status file, across restarts, so assignments never move.
        self._addresses: dict[Key, tuple[str, ...]] = dict(prior_addresses or {})
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._kernel_lock = threading.Lock()
        self._desired = DesiredState()
        self._synced_snapshot: Snapshot | None = None
        self._proxy_problems: tuple[Problem, ...] = ()
        self._proxy_desired: DesiredState | None = None
        self._proxy_dirty = asyncio.Event()
        self._proxy_attempted = asyncio.Event()
        self._proxy_busy_since: float | None = None
        # The last translation, before the proxy's problems were applied to it.
        self._translated: tuple[Snapshot, Translation] | None = None
        self._sync_progress = time.monotonic()
        self._status_pending: tuple[Snapshot, Translation] | None = None
        self._inline_status_cost = 0.0  # seconds the first sync spent writing status
        self._status_ready = asyncio.Event()
        self._last_status: tuple[Snapshot, Translation] | None = None
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

    def _unserved_packets(self) -> int:
        assert self._node_vips is not None
        with self._kernel_lock:
            return self._node_vips.guard.unserved_packets()

    # -- kernel counters for /metrics --------------------------------------------

    def _labelled_counters(self) -> Iterable[LabelledCounters]:
        with self._kernel_lock:
            counters = self._dataplane.read_counters()
            desired = self._desired
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

    # -- loop ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._proxy_dirty.set()
        self._proxy_attempted.set()

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
            if self._proxy is not None:
                helpers.append(tg.create_task(self._proxy_loop()))
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
                            "announce",
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
        self._report_source_problems(errors, warnings)
        self._metrics.manifest_errors.set(len(errors))
        self._metrics.manifest_warnings.set(len(warnings))
        hosts = HostAddresses(
            await self._read_node_addresses(), self._settings.allow_host_addresses
        )
        result = translate(snapshot, self._settings.controller_name, self._addresses, hosts)
        self._addresses.update(held_addresses(result))
        desired = result.desired
        name = self._dataplane.name
        t0 = time.monotonic()
        try:
            outcome = await asyncio.to_thread(self._reconcile, desired)
        except Exception:
            self._metrics.sync_errors.labels(name).inc()
            log.exception("event=reconcile_failed reconciler=%s", name)
            return False
        finally:
            self._metrics.sync_duration.labels(name).observe(time.monotonic() - t0)
        for (vip, proto, port), message in sorted(outcome.errors.items()):
            log.error(
                "event=frontend_failed vip=%s protocol=%s port=%s error=%r",
                vip,
                proto,
                port,
                message,
            )
        if outcome.errors:
            self._metrics.sync_errors.labels(name).inc()
        guard_ok = await self._refuse_unserved(desired)
        first = not self.ready
        await self._hand_to_proxy(desired, wait=first)
        await self._announce(desired)
        self._translated = (snapshot, result)
        result = self._with_proxy_problems(result)
        self._report_rejections(snapshot, result)
        if self._events is not None and outcome.errors:
            await asyncio.to_thread(self._record_frontend_events, desired, outcome)
        self._metrics.frontends_programmed.set(len(desired.l4) - len(outcome.errors))
        self._metrics.backends_programmed.set(sum(len(f.backends) for f in desired.l4))
        # Status is written beside the sync loop, latest result first, so a slow
        # API server (thousands of status patches) never delays programming the
        # next change.  The first sync writes inline: once /readyz says ready,
        # the status of what is programmed is there too.
        if first:
            s0 = time.monotonic()
            await self._write_status(snapshot, result)
            self._inline_status_cost = time.monotonic() - s0
        else:
            self._queue_status(snapshot, result)
        clean = not outcome.errors and guard_ok
        self._synced_snapshot = snapshot if clean else None
        self._metrics.last_sync.set(time.time())
        self.syncs += 1
        if first:
            log.info("event=ready frontends=%d", len(desired.l4))
        self.ready = True
        log.info(
            "event=synced frontends=%d changed=%d errors=%d rejected=%d took_ms=%.1f",
            len(desired.l4),
            outcome.changed,
            len(outcome.errors),
            len({(r.kind, r.namespace, r.name) for r in self._rejections}),
            (time.monotonic() - started) * 1000,
        )
        return clean

    # -- L7 beside L4 ---------------------------------------------------------------

    async def _hand_to_proxy(self, desired: DesiredState, *, wait: bool) -> None:
        """Give the L7 lane the newest desired state.  The sync does not wait
        for it (a slow render or `haproxy -c` never holds an L4 change back),
        except on the first sync: /readyz means the L7 listeners were tried too."""
        if self._proxy is None:
            return
        self._proxy_desired = desired
        self._proxy_attempted.clear()
        self._proxy_dirty.set()
        if wait:
            await self._proxy_attempted.wait()

    async def _proxy_loop(self) -> None:
        """The L7 lane: the L7 VIPs made local, HAProxy reconciled, stale VIPs
        removed once nothing binds them; a failed attempt is retried with
        back-off, and a newer desired state never waits for the back-off."""
        backoff = 0.0
        while not self._stop.is_set():
            if backoff:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._proxy_dirty.wait(), backoff)
            else:
                await self._proxy_dirty.wait()
            if self._stop.is_set():
                return
            self._proxy_dirty.clear()
            desired = self._proxy_desired
            if desired is None:
                continue
            self._proxy_busy_since = time.monotonic()
            try:
                ok, retry_after = await self._apply_l7(desired)
            finally:
                self._proxy_busy_since = None
            if not self._proxy_dirty.is_set():
                self._proxy_attempted.set()
            if not ok:
                backoff = min(self._settings.max_backoff, max(0.5, backoff * 2))
            else:
                # Something left out may clear by itself (a port another process
                # holds): the same desired state is tried again after a while.
                backoff = retry_after or 0.0

    async def _apply_l7(self, desired: DesiredState) -> tuple[bool, float | None]:
        """(applied, retry after so many seconds even if nothing changes)."""
        before = self._proxy_problems
        if not await self._node_vips_step("grow", desired):
            return False, None
        ok, retry_after = await self._reconcile_proxy(desired)
        if ok and not await self._node_vips_step("shrink", desired):
            ok = False
        if self._proxy_problems != before:
            # The status says what the proxy could not serve: write it again.
            if self._translated is not None:
                snapshot, result = self._translated
                result = self._with_proxy_problems(result)
                self._report_rejections(snapshot, result)
                if self.ready:
                    self._queue_status(snapshot, result)
            if self._events is not None and self._proxy_problems:
                await asyncio.to_thread(self._record_proxy_events, self._proxy_problems)
        return ok, retry_after

    def _with_proxy_problems(self, result: Translation) -> Translation:
        if not self._proxy_problems:
            return result
        return dataclasses.replace(
            result, status=apply_problems(result.status, self._proxy_problems)
        )

    def _queue_status(self, snapshot: Snapshot, result: Translation) -> None:
        self._status_pending = (snapshot, result)
        self._status_ready.set()

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

    async def _refuse_unserved(self, desired: DesiredState) -> bool:
        """The guard of unserved VIP ports, brought up to date after L4."""
        return await self._node_vips_step("refuse_unserved", desired)

    async def _node_vips_step(self, step: str, desired: DesiredState) -> bool:
        """`grow` (L7 VIPs local before the proxy binds them), `shrink` (stale
        ones removed once nothing binds them) or `refuse_unserved` (the guard)."""
        if self._node_vips is None:
            return True
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self._locked, getattr(self._node_vips, step), desired)
        except Exception:
            name = self._node_vips.name
            self._metrics.sync_errors.labels(name).inc()
            log.exception("event=reconcile_failed reconciler=%s step=%s", name, step)
            return False
        finally:
            self._metrics.sync_duration.labels(self._node_vips.name).observe(time.monotonic() - t0)
        return True

    def _locked(self, fn: Callable[[DesiredState], object], desired: DesiredState) -> None:
        with self._kernel_lock:
            fn(desired)

    def _report_source_problems(self, errors: Sequence[str], warnings: Sequence[str]) -> None:
        """Files or documents that cannot be used, and unknown kinds and
        fields: each said once while it lasts."""
        current = frozenset(errors) | frozenset(warnings)
        new = [("source_problem", m) for m in sorted(frozenset(errors) - self._source_problems)]
        new += [
            ("manifest_warning", m) for m in sorted(frozenset(warnings) - self._source_problems)
        ]
        for event, message in new[:LOG_LIMIT]:
            log.warning("event=%s message=%r", event, message)
        _said_more(len(new), "source problems and manifest warnings")
        self._source_problems = current

    def _report_rejections(self, snapshot: Snapshot, result: Translation) -> None:
        """One warning line per refused object, logged when it appears or
        changes; one info line when it is accepted again; the counts by kind
        and reason in `gatewaylb_rejected_objects`."""
        current = frozenset(rejections(snapshot, result.status))
        new = sorted(current - self._rejections, key=_rejection_order)
        _said_more(len(new), "rejected objects")
        for r in new[:LOG_LIMIT]:
            log.warning(
                "event=object_rejected kind=%s object=%r source=%r where=%r condition=%s "
                "reason=%s message=%r",
                r.kind,
                r.object,
                r.source or "-",
                r.where,
                r.condition,
                r.reason,
                r.message,
            )
        still = {(r.kind, r.namespace, r.name) for r in current}
        cleared = {(r.kind, r.namespace, r.name) for r in self._rejections} - still
        for kind, namespace, name in sorted(cleared)[:LOG_LIMIT]:
            log.info(
                "event=object_accepted kind=%s object=%r",
                kind,
                f"{namespace}/{name}" if namespace else name,
            )
        self._rejections = current
        self._metrics.set_rejected(rejected_counts(tuple(current)))
        foreign = frozenset(foreign_classes(snapshot, self._settings.controller_name))
        for line in sorted(foreign - self._foreign_classes):
            log.info("event=gatewayclass_not_ours message=%r", line)
        self._foreign_classes = foreign

    def _record_frontend_events(self, desired: DesiredState, outcome: ReconcileResult) -> None:
        """Frontends this node's kernel refused, as Warning Events on their Gateways."""
        assert self._events is not None
        sources = {f.key: f.source for f in desired.l4}
        for (vip, proto, port), message in sorted(outcome.errors.items()):
            src = sources.get((vip, proto, port))
            if src is not None:
                ref = ObjectRef("Gateway", src.namespace, src.gateway)
                note = f"listener {src.listener}: {proto} {vip}:{port} not programmed: {message}"
                self._events.warning(ref, "FrontendNotProgrammed", note)

    def _record_proxy_events(self, problems: tuple[Problem, ...]) -> None:
        """What this node's proxy could not serve, as Warning Events on the routes."""
        assert self._events is not None
        for problem in problems:
            kind, _, rest = problem.route.partition(" ")
            namespace, _, name = rest.split(" ", 1)[0].partition("/")
            if kind and namespace and name:
                where = f"rule {problem.rule}: " if problem.rule is not None else ""
                self._events.warning(
                    ObjectRef(kind, namespace, name), "NotServedByProxy", where + problem.reason
                )

    async def _write_status(self, snapshot: Snapshot, result: Translation) -> None:
        self._last_status = (snapshot, result)
        for writer in self._status_writers:
            try:
                await asyncio.to_thread(writer.write, snapshot, result)
            except Exception:
                log.exception("event=status_write_failed writer=%s", type(writer).__name__)

    async def _status_loop(self) -> None:
        while not self._stop.is_set():
            await self._status_ready.wait()
            self._status_ready.clear()
            pending, self._status_pending = self._status_pending, None
            if pending is not None:
                await self._write_status(*pending)

    async def _reconcile_proxy(self, desired: DesiredState) -> tuple[bool, float | None]:
        if self._proxy is None:
            return True, None
        t0 = time.monotonic()
        try:
            applied = await asyncio.to_thread(self._proxy.reconcile, desired)
        except Exception:
            self._metrics.sync_errors.labels("proxy").inc()
            log.exception("event=reconcile_failed reconciler=proxy")
            return False, None
        finally:
            self._metrics.sync_duration.labels("proxy").observe(time.monotonic() - t0)
        self._proxy_problems = applied.problems
        if not applied.ok:
            self._metrics.sync_errors.labels("proxy").inc()
        return applied.ok, applied.retry_after

    async def _announce(self, desired: DesiredState) -> None:
        """After the dataplane: a VIP is announced only once it is served."""
        if self._announcer is None:
            return
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self._announcer.apply, desired)
        except Exception:
            # Announcement trouble never blocks programming: traffic that
            # reaches this node is still served.
            self._metrics.sync_errors.labels("announce").inc()
            log.exception("event=reconcile_failed reconciler=announce")
        finally:
            self._metrics.sync_duration.labels("announce").observe(time.monotonic() - t0)
        # Only the problems: the full status asks gobgpd about its peers.
        problems = self._announcer.problems()
        if problems and self._events is not None:
            await asyncio.to_thread(self._announce_events, desired, problems)

    def _announce_events(self, desired: DesiredState, problems: tuple[str, ...]) -> None:
        """What this node cannot announce, as Warning Events on the
        GatewayLBConfig objects its BGP settings come from."""
        assert self._events is not None
        bgp = desired.announce.bgp
        sources = sorted({p.source for p in bgp.peers if p.source}) if bgp else []
        for name in sources:
            ref = ObjectRef(CONFIG_KIND, "", name, f"{CONFIG_GROUP}/v1alpha1")
            for problem in problems:
                self._events.warning(ref, "AnnouncementProblem", problem)

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

    def _reconcile(self, desired: DesiredState) -> ReconcileResult:
        with self._kernel_lock:
            outcome = self._dataplane.reconcile(desired)
            self._desired = desired
        return outcome


def _said_more(count: int, what: str) -> None:
    if count > LOG_LIMIT:
        log.warning(
            "event=log_truncated what=%r shown=%d more=%d hint=%r",
            what,
            LOG_LIMIT,
            count - LOG_LIMIT,
            "see the status (file or API) or `gatewaylb translate --manifests DIR`",
        )


def _rejection_order(r: Rejection) -> tuple[str, str, str, str]:
    return (r.kind, r.namespace, r.name, r.where)


def held_addresses(result: Translation) -> dict[Key, tuple[str, ...]]:
    out: dict[Key, tuple[str, ...]] = {}
    for obj in result.status.objects:
        if obj.kind == "Gateway" and isinstance(obj.status, GatewayStatus) and obj.status.addresses:
            out[Key(obj.namespace, obj.name)] = obj.status.addresses
    return out
