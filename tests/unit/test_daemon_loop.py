"""The agent loop with fakes at its seams: an L4 change never waits behind a
slow L7 reconcile, the storm pace is capped, and /healthz sees a stuck loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from agent import daemon, said
from agent.daemon import Agent, SyncSettings
from agent.dataplane.base import FrontendCounters
from agent.metrics import AgentMetrics
from agent.model.snapshot import Snapshot
from agent.reconcile import Outcome
from agent.state import DesiredState
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


class FakeDataplane:
    name = "fake"

    def __init__(self) -> None:
        self.programmed: list[tuple[float, frozenset[tuple[str, str, int]]]] = []

    def reconcile(self, desired: DesiredState) -> Outcome:
        self.programmed.append((time.monotonic(), frozenset(f.key for f in desired.l4)))
        return Outcome(changed=len(desired.l4))

    def read_counters(self) -> list[FrontendCounters]:
        return []


class SlowProxy:
    """An L7 reconcile that blocks until released (a huge `haproxy -c`)."""

    name = "proxy"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def reconcile(self, desired: DesiredState) -> Outcome:
        self.calls += 1
        if self.calls > 1:  # the first one (readiness) is quick
            self.release.wait(10)
        return Outcome(changed=1)

    def ensure_running(self) -> bool:
        return True


def objects(*routes: dict[str, Any]) -> Snapshot:
    return snapshot(
        gateway_class(),
        gateway("gw", tcp("t1", 5001), tcp("t2", 5002), http("web", 80)),
        backend_service("svc", "10.0.0.1"),
        *routes,
    )


def test_an_l4_change_is_programmed_while_l7_is_stuck() -> None:
    web = httproute("web", rule(backend("svc")), parents=[{"name": "gw", "sectionName": "web"}])
    one = tcproute("one", backend("svc"), parents=[{"name": "gw", "sectionName": "t1"}])
    two = tcproute("two", backend("svc"), parents=[{"name": "gw", "sectionName": "t2"}])
    source = FakeSource(objects(web, one))
    plane = FakeDataplane()
    proxy = SlowProxy()
    agent = Agent(
        source=source,
        dataplane=plane,
        metrics=AgentMetrics(version="t", dataplane="fake", node="n"),
        settings=SyncSettings(controller_name=CONTROLLER, debounce=0.01),
        proxy=proxy,  # type: ignore[arg-type]
    )

    async def scenario() -> float:
        task = asyncio.create_task(agent.run())
        while not agent.ready:
            await asyncio.sleep(0.01)
        # An L7 change the proxy chews on for seconds ...
        web2 = httproute(
            "web",
            rule(backend("svc")),
            parents=[{"name": "gw", "sectionName": "web"}],
            hostnames=["x.example"],
        )
        source.set(objects(web2, one))
        while proxy.calls < 2:
            await asyncio.sleep(0.01)
        # ... then an L4 change: programmed without waiting for it.
        t0 = time.monotonic()
        source.set(objects(web2, one, two))
        while not any(("192.0.2.10", "tcp", 5002) in keys for _, keys in plane.programmed):
            await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 3, "the L4 change waited behind L7"
        took = time.monotonic() - t0
        assert not proxy.release.is_set() and proxy.calls == 2
        proxy.release.set()
        agent.stop()
        await task
        return took

    took = asyncio.run(scenario())
    print(f"\nL4 change programmed {took * 1000:.0f} ms after it was made, L7 still busy")


def test_the_storm_pace_never_waits_longer_than_its_cap() -> None:
    agent = Agent(
        source=FakeSource(objects()),
        dataplane=FakeDataplane(),
        metrics=AgentMetrics(version="t", dataplane="fake", node="n"),
        settings=SyncSettings(controller_name=CONTROLLER),
    )

    async def scenario() -> float:
        agent._storm = True
        agent._last_sync_cost = 60.0  # a sync that once took a minute
        agent._last_sync_end = time.monotonic()
        daemon.MAX_PACE = 0.2
        t0 = time.monotonic()
        await agent._pace()
        return time.monotonic() - t0

    saved = daemon.MAX_PACE
    try:
        waited = asyncio.run(scenario())
    finally:
        daemon.MAX_PACE = saved
    assert waited < 1.0


def test_healthz_fails_when_the_sync_loop_stops_making_progress() -> None:
    agent = Agent(
        source=FakeSource(objects()),
        dataplane=FakeDataplane(),
        metrics=AgentMetrics(version="t", dataplane="fake", node="n"),
        settings=SyncSettings(controller_name=CONTROLLER),
    )
    assert agent.healthy() == (True, "ok")
    agent._sync_progress = time.monotonic() - daemon.STALL_AFTER - 1
    ok, why = agent.healthy()
    assert not ok and "no progress" in why
    agent._sync_progress = time.monotonic()
    agent._proxy_busy_since = time.monotonic() - daemon.STALL_AFTER - 1
    ok, why = agent.healthy()
    assert not ok and "L7 reconcile" in why


def test_a_flood_of_bad_documents_is_said_once_and_capped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    docs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}"}, "spec": 7}
        for i in range(5000)
    ]
    source = FakeSource(objects(*docs))
    agent = Agent(
        source=source,
        dataplane=FakeDataplane(),
        metrics=AgentMetrics(version="t", dataplane="fake", node="n"),
        settings=SyncSettings(controller_name=CONTROLLER),
    )

    async def twice() -> None:
        await agent.sync_once()
        source.current = objects(*docs, tcproute("r", backend("svc")))  # an unrelated change
        await agent.sync_once()

    with caplog.at_level(logging.INFO, logger="gatewaylb.agent"):
        asyncio.run(twice())
    rejected = [r for r in caplog.records if "event=object_rejected" in r.getMessage()]
    truncated = [r for r in caplog.records if "event=log_truncated" in r.getMessage()]
    assert len(rejected) == said.LOG_LIMIT
    assert len(truncated) == 1 and "more=4900" in truncated[0].getMessage()
