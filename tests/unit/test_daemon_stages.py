"""The agent loop's one contract with its stages, against fakes (no root):
lanes run in order, one failing stage never stops the others, a stage that
did not converge is retried with back-off, a restart adopts what is
programmed, and what a stage could not do reaches Events and status in one
place."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from agent.daemon import Agent, SyncSettings
from agent.dataplane.base import FrontendCounters
from agent.metrics import AgentMetrics
from agent.model.snapshot import Snapshot
from agent.reconcile import (
    FRONTEND_NOT_PROGRAMMED,
    NOT_SERVED_BY_PROXY,
    Failure,
    Outcome,
    frontend_outcome,
)
from agent.refs import ObjectRef
from agent.state import DesiredState, FrontendKey
from agent.statuswriter import StatusView
from tests.unit.helpers import (
    CONTROLLER,
    FakeSource,
    backend,
    backend_service,
    gateway,
    gateway_class,
    http,
    httproute,
    rule,
    snapshot,
    tcp,
    tcproute,
)

ROUTE = ObjectRef("HTTPRoute", "default", "web")


class Journal:
    """The order in which the stages ran, across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[float, str]] = []

    def add(self, name: str) -> None:
        with self.lock:
            self.entries.append((time.monotonic(), name))

    def names(self) -> list[str]:
        with self.lock:
            return [n for _, n in self.entries]

    def times(self, name: str) -> list[float]:
        with self.lock:
            return [t for t, n in self.entries if n == name]


@dataclass
class FakeStage:
    """A reconciler that records its runs and answers what it is told to."""

    name: str
    journal: Journal
    answer: Callable[[Any], Outcome] = lambda desired: Outcome()
    raises: int = 0  # raise on this many runs first
    calls: int = 0

    def reconcile(self, desired: Any) -> Outcome:
        self.calls += 1
        self.journal.add(self.name)
        if self.raises:
            self.raises -= 1
            raise RuntimeError(f"{self.name} broke")
        return self.answer(desired)


@dataclass
class FakeDataplane(FakeStage):
    """Holds frontends in memory; like a kernel dataplane, it adopts what it
    holds and writes only what differs."""

    held: dict[FrontendKey, Any] = field(default_factory=dict)
    refuse: frozenset[FrontendKey] = frozenset()
    writes: int = 0

    def __post_init__(self) -> None:
        self.answer = self._converge

    def _converge(self, desired: DesiredState) -> Outcome:
        want = {f.key: f for f in desired.l4 if f.key not in self.refuse}
        changed = sum(1 for k, f in want.items() if self.held.get(k) != f)
        changed += sum(1 for k in self.held if k not in want)
        if changed:
            self.writes += 1
        self.held = want
        errors = {f.key: "refused by the fake kernel" for f in desired.l4 if f.key in self.refuse}
        return frontend_outcome(desired, changed, errors)

    def read_counters(self) -> list[FrontendCounters]:
        return []


@dataclass
class FakeVIPs:
    journal: Journal
    name: str = "vips"

    def __post_init__(self) -> None:
        self.adding = FakeStage("vips-add", self.journal)
        self.removing = FakeStage("vips-remove", self.journal)
        self.guarding = FakeStage("vips-guard", self.journal)
        self.guard = self

    def unserved_packets(self) -> int:
        return 0


@dataclass
class FakeProxy(FakeStage):
    def ensure_running(self) -> bool:
        return True


@dataclass
class FakeAnnouncer(FakeStage):
    def refresh(self) -> None:
        pass

    def close(self, withdraw: bool = False) -> None:
        pass

    def status(self) -> Any:
        from agent.announce.reconciler import AnnounceStatus

        return AnnounceStatus("none")


@dataclass
class FakeEvents:
    told: list[tuple[ObjectRef, str, str]] = field(default_factory=list)

    def warning(self, ref: ObjectRef, reason: str, note: str) -> None:
        self.told.append((ref, reason, note))


def objects(*extra: dict[str, Any]) -> Snapshot:
    return snapshot(
        gateway_class(),
        gateway("gw", tcp("t1", 5001), http("web", 80)),
        backend_service("svc", "10.0.0.1"),
        tcproute("one", backend("svc"), parents=[{"name": "gw", "sectionName": "t1"}]),
        httproute("web", rule(backend("svc")), parents=[{"name": "gw", "sectionName": "web"}]),
        *extra,
    )


@dataclass
class Rig:
    journal: Journal
    dataplane: FakeDataplane
    vips: FakeVIPs
    proxy: FakeProxy
    announcer: FakeAnnouncer
    status: FakeStage
    events: FakeEvents
    source: FakeSource
    agent: Agent


def rig(snap: Snapshot | None = None, **settings: Any) -> Rig:
    journal = Journal()
    dataplane = FakeDataplane("dataplane", journal)
    vips = FakeVIPs(journal)
    proxy = FakeProxy("proxy", journal)
    announcer = FakeAnnouncer("announce", journal)
    status = FakeStage("status", journal)
    events = FakeEvents()
    source = FakeSource(snap or objects())
    agent = Agent(
        source=source,
        dataplane=dataplane,  # type: ignore[arg-type]
        metrics=AgentMetrics(version="t", dataplane="fake", node="n"),
        settings=SyncSettings(controller_name=CONTROLLER, debounce=0.01, **settings),
        status_writers=[status],
        proxy=proxy,  # type: ignore[arg-type]
        events=events,  # type: ignore[arg-type]
        announcer=announcer,  # type: ignore[arg-type]
        node_vips=vips,  # type: ignore[arg-type]
    )
    return Rig(journal, dataplane, vips, proxy, announcer, status, events, source, agent)


def running(r: Rig, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        task = asyncio.create_task(r.agent.run())
        try:
            await asyncio.wait_for(until(lambda: r.agent.ready), 5)
            await scenario()
        finally:
            r.agent.stop()
            await task

    asyncio.run(main())


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_first_sync_runs_every_lane_in_its_order() -> None:
    r = rig()

    async def scenario() -> None:
        await until(lambda: "status" in r.journal.names())

    running(r, scenario)
    order = r.journal.names()
    first = {name: order.index(name) for name in set(order)}
    # L4: the dataplane, then the guard of unserved ports.
    assert first["dataplane"] < first["vips-guard"]
    # L7: VIPs made local, then the proxy binds them, then stale ones go.
    assert first["vips-add"] < first["proxy"] < first["vips-remove"]
    # The first sync waits for L7 to be tried, announces only what is
    # served, and writes the status of what is programmed before /readyz.
    assert first["vips-guard"] < first["announce"]
    assert first["proxy"] < first["announce"] < first["status"]


def test_a_frontend_the_kernel_refuses_is_told_on_its_gateway_and_the_rest_runs() -> None:
    refused = ("192.0.2.10", "tcp", 5001)
    r = rig()
    r.dataplane.refuse = frozenset({refused})

    async def scenario() -> None:
        # Not converged: retried with back-off, without any change.
        await until(lambda: r.dataplane.calls >= 2, timeout=3)

    running(r, scenario)
    names = r.journal.names()
    for stage in ("vips-guard", "proxy", "announce", "status"):
        assert stage in names, stage
    gateway_events = [e for e in r.events.told if e[1] == FRONTEND_NOT_PROGRAMMED]
    assert gateway_events, r.events.told
    ref, _, note = gateway_events[0]
    assert ref == ObjectRef("Gateway", "default", "gw")
    assert note == "listener t1: tcp 192.0.2.10:5001 not programmed: refused by the fake kernel"


def test_a_stage_that_raises_stops_no_other_and_is_retried_with_growing_back_off() -> None:
    r = rig(max_backoff=1.0)
    r.vips.guarding.raises = 3

    async def scenario() -> None:
        await until(lambda: r.vips.guarding.calls >= 4, timeout=6)
        await asyncio.sleep(1.5)

    running(r, scenario)
    assert r.vips.guarding.calls == 4
    # The announcer and the status writer ran although the guard raised.
    assert r.announcer.calls >= 1 and r.status.calls >= 1
    runs = r.journal.times("vips-guard")
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    # Back-off: 0.5 s, then doubled, then capped at max_backoff; once the
    # guard converges, nothing runs again until something changes.
    assert 0.4 < gaps[0] < 0.9, gaps
    assert 0.9 < gaps[1] < 1.5 and 0.9 < gaps[2] < 1.5, gaps
    print(f"\nback-off between retries: {[round(g, 2) for g in gaps]} s")


def test_a_proxy_that_raises_never_holds_l4_back_and_is_retried() -> None:
    r = rig(max_backoff=0.5)
    r.proxy.raises = 2

    async def scenario() -> None:
        await until(lambda: r.proxy.calls >= 3, timeout=5)

    running(r, scenario)
    names = r.journal.names()
    assert names.count("dataplane") == 1  # L4 was programmed once, at once
    # The stale L7 VIPs are removed only after a proxy run that converged.
    first_ok = [i for i, n in enumerate(names) if n == "proxy"][2]
    assert "vips-remove" not in names[:first_ok]
    assert "vips-remove" in names[first_ok:]


def test_a_restarted_agent_adopts_what_the_kernel_holds() -> None:
    first = rig()

    async def settle() -> None:
        await until(lambda: first.dataplane.writes == 1)

    running(first, settle)
    # A new agent, the same kernel: its dataplane finds the frontends a
    # previous run left and the first sync writes nothing.
    second = rig()
    second.dataplane.held = dict(first.dataplane.held)

    async def nothing() -> None:
        await until(lambda: "status" in second.journal.names())

    running(second, nothing)
    assert second.dataplane.writes == 0
    assert second.agent.ready


def test_what_the_proxy_cannot_serve_reaches_the_status_and_an_event() -> None:
    r = rig()
    failure = Failure(ROUTE, NOT_SERVED_BY_PROXY, "a value HAProxy cannot hold", rule=0,
                      in_status=True)  # fmt: skip
    r.proxy.answer = lambda desired: Outcome(failures=(failure,))
    views: list[StatusView] = []

    def keep(view: StatusView) -> Outcome:
        views.append(view)
        return Outcome()

    r.status.answer = keep

    async def scenario() -> None:
        await until(lambda: any(_route_refused(v) for v in views))

    running(r, scenario)
    assert (ROUTE, NOT_SERVED_BY_PROXY, "rule 0: a value HAProxy cannot hold") in r.events.told


def _route_refused(view: StatusView) -> bool:
    for obj in view.result.status.objects:
        if (obj.kind, obj.name) == ("HTTPRoute", "web"):
            doc = obj.status.to_dict()
            conds = doc["parents"][0]["conditions"]
            return any(
                c["type"] == "PartiallyInvalid" and "a value HAProxy cannot hold" in c["message"]
                for c in conds
            )
    return False
