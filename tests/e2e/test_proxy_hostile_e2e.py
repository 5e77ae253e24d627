"""One bad L7 listener or route never takes the other L7 listeners down.

A lab (client -- node -- 2 backends) with a real HAProxy in the node namespace.
Another process of the node holds 0.0.0.0:8090, as any service of the node
might.  A good HTTP listener on VIP:80 is probed every 20 ms (a new connection
each time) from the client while a listener on 8090 is added and removed, and
while routes too large for the configuration's budget arrive.  Figures are
printed (`pytest -s`).
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.feedback import fold_failures
from agent.lab import Lab, vip4
from agent.lab.netns import setns_current_thread
from agent.proxy.addresses import VIPAddresses
from agent.proxy.budget import DEFAULT_BUDGET
from agent.proxy.ports import Address, SocketProbe
from agent.proxy.reconciler import problem_failures
from agent.proxy.worker import REFUSED_BACKOFF, ProxyWorker
from agent.refs import ObjectRef
from agent.state import (
    Backend,
    BackendSet,
    HTTPMatch,
    HTTPRouteEntry,
    L7Listener,
    MatchRule,
    ServiceBackend,
    VirtualHost,
)
from agent.translate.status import (
    PROGRAMMED,
    Condition,
    GatewayStatus,
    ListenerStatus,
    ObjectStatus,
    StatusReport,
)

pytestmark = pytest.mark.root

VIP = vip4(7)
BE = {1: "10.20.0.11", 2: "10.20.0.12"}
TAKEN = 8090
NODE = "lab-node"


def route(
    name: str, path: str, backend: int, headers: tuple[MatchRule, ...] = ()
) -> HTTPRouteEntry:
    svc = ServiceBackend(f"default/be{backend}:8080", 1, (Backend(BE[backend], 8080, 1),))
    return HTTPRouteEntry(
        ObjectRef("HTTPRoute", "default", name),
        0,
        HTTPMatch("PathPrefix", path, headers),
        (),
        BackendSet((svc,)),
    )


def listener(name: str, port: int, *entries: HTTPRouteEntry) -> L7Listener:
    return L7Listener(
        "default/gw", name, (VIP,), port, "HTTP", None, None,
        virtual_hosts=(VirtualHost("*", entries),),
    )  # fmt: skip


def get(path: str, port: int = 80) -> str:
    """The name of the backend that answered, or the status."""
    conn = http.client.HTTPConnection(VIP, port, timeout=2)
    try:
        conn.request("GET", path, headers={"Host": "example.com"})
        resp = conn.getresponse()
        body = resp.read()
        return (
            body.split(b'"name": "')[1].split(b'"')[0].decode()
            if resp.status == 200
            else str(resp.status)
        )
    finally:
        conn.close()


@dataclass
class Prober:
    """GET / on the good listener every 20 ms, a new connection each time."""

    lab: Lab
    results: list[tuple[float, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        setns_current_thread(self.lab.client.ns)
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                ok = get("/") == "be1"
            except (OSError, http.client.HTTPException):
                ok = False
            self.results.append((t, ok))
            time.sleep(0.02)

    def failed(self, since: float = 0.0) -> int:
        return sum(1 for t, ok in self.results if t >= since and not ok)

    def outage(self) -> float:
        """From the first failed probe to the first good one after it."""
        bad = [t for t, ok in self.results if not ok]
        if not bad:
            return 0.0
        back = next((t for t, ok in self.results if ok and t > bad[0]), bad[-1])
        return back - bad[0]


@dataclass
class Env:
    lab: Lab
    worker: ProxyWorker

    def get(self, path: str, port: int = 80) -> str:
        return self.lab.call(self.lab.client, get, path, port)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with Lab(backends=2) as lab, tempfile.TemporaryDirectory(prefix="glbh-") as tmp:
        for be in lab.backends:
            argv = [sys.executable, "-m", "agent.lab.httpecho", "--name", be.role, "--port", "8080"]
            proc = lab.popen(be, argv, stdout=subprocess.PIPE)
            assert proc.stdout is not None and b"ready" in proc.stdout.readline()
        hold = f"import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',{TAKEN}))\ns.listen()\n"
        hold += "print('ready',flush=True)\ntime.sleep(3600)\n"
        holder = lab.popen(lab.node, [sys.executable, "-c", hold], stdout=subprocess.PIPE)
        assert holder.stdout is not None and b"ready" in holder.stdout.readline()
        addresses = VIPAddresses(netns=lab.node.ns)
        addresses.reconcile([VIP])
        worker = ProxyWorker(Path(tmp) / "run", netns=lab.node.ns, node_name=NODE)
        try:
            yield Env(lab, worker)
        finally:
            worker.stop(remove_files=True)
            addresses.cleanup()


def _gateway_status(*names: str) -> StatusReport:
    ok = Condition(PROGRAMMED, True, "Programmed", "Listener is programmed", 1)
    status = GatewayStatus((VIP,), (), tuple(ListenerStatus(n, (), 1, (ok,)) for n in names))
    gateway = ObjectStatus("gateway.networking.k8s.io/v1", "Gateway", "default", "gw", 1, status)
    return StatusReport((gateway,))


def test_a_listener_whose_port_is_taken_never_takes_the_others_down(env: Env) -> None:
    base = route("base", "/", 1)
    result = env.worker.apply([listener("good", 80, base)])
    assert result.ok and result.problems == (), result
    assert env.get("/") == "be1"
    timings = []
    with Prober(env.lab) as prober:
        for cycle in (1, 2):
            added = route(f"new{cycle}", f"/new{cycle}", 2)
            t0 = time.monotonic()
            result = env.worker.apply(
                [listener("good", 80, added, base), listener("bad", TAKEN, route("bad", "/", 2))]
            )
            timings.append(time.monotonic() - t0)
            assert result.ok and result.changed, result  # the new route: a reload
            assert [(str(p.subject), p.status_reason) for p in result.problems] == [
                ("Gateway default/gw listener bad", "PortUnavailable")
            ]
            reason = result.problems[0].reason
            assert reason == f"{VIP}:{TAKEN} is in use by another process on node {NODE}"
            assert result.retry_after is not None
            # The route added meanwhile is served; the bad listener is not bound.
            assert env.get(f"/new{cycle}") == "be2"
            assert f":{TAKEN}" not in env.worker.config_path.read_text()
            # ... and its status says why.
            report = fold_failures(
                _gateway_status("good", "bad"), problem_failures(result.problems)
            )
            status = report.objects[0].status
            assert isinstance(status, GatewayStatus)
            bad = {ls.name: ls.conditions[-1] for ls in status.listeners}["bad"]
            assert (bad.status, bad.reason, bad.message) == (False, "PortUnavailable", reason)
            time.sleep(0.4)
            t0 = time.monotonic()
            removed = env.worker.apply([listener("good", 80, added, base)])
            timings.append(time.monotonic() - t0)
            assert removed.ok and removed.problems == () and removed.retry_after is None
            time.sleep(0.4)
    print(
        f"\nbad listener added and removed twice: {len(prober.results)} probes, "
        f"{prober.failed()} failed; apply took {', '.join(f'{t:.2f}' for t in timings)} s"
    )
    assert prober.failed() == 0
    assert len(prober.results) > 50


class LyingProbe:
    """A pre-check that misses the taken port, as if it were taken between
    the probe and the reload."""

    def unbindable(self, addresses: Collection[Address]) -> dict[Address, int]:
        return {}

    def listening(self, pids: Collection[int]) -> frozenset[Address]:
        return frozenset()


def test_a_refused_reload_is_rolled_back_at_once_and_not_retried(env: Env) -> None:
    good = listener("good", 80, route("base", "/", 1))
    bad = listener("bad", TAKEN, route("bad", "/", 2))
    assert env.worker.apply([good]).ok
    in_force = env.worker.config_path.read_text()
    env.worker.probe = LyingProbe()
    try:
        with Prober(env.lab) as prober:
            t0 = time.monotonic()
            first = env.worker.apply([good, bad])
            took = time.monotonic() - t0
            assert not first.ok and first.changed, first
            assert "reload failed" in (first.error or "")
            assert first.retry_after == REFUSED_BACKOFF
            # Rolled back: the previous configuration on disk and in a fresh worker.
            assert env.worker.config_path.read_text() == in_force
            workers = [p for p in env.worker.processes() if p.kind == "worker"]
            assert any(p.reloads == 0 for p in workers), workers
            after = time.monotonic()
            for _ in range(3):
                again = env.worker.apply([good, bad])
                assert not again.ok and not again.changed, again
                assert "not tried again" in (again.error or "")
            time.sleep(0.5)
        outage = prober.outage()
        print(
            f"\nrefused reload (pre-check bypassed): apply {took:.2f} s, good VIP refused for "
            f"{outage:.2f} s ({prober.failed()} failed probes), then 0 failed over 3 more "
            f"syncs of the same input"
        )
        assert prober.failed(since=after) == 0
        assert outage < 3.0
    finally:
        env.worker.probe = SocketProbe(env.lab.node.ns)
    # With the pre-check back, the same input is the good listener alone: the
    # configuration in force, nothing to reload.
    result = env.worker.apply([good, bad])
    assert result.ok and not result.changed, result
    assert [p.status_reason for p in result.problems] == ["PortUnavailable"]


def test_routes_over_the_budget_leave_the_others_served(env: Env) -> None:
    """The amplification attack (64 routes x 16 rules x 8 matches x 16 headers)
    arriving beside a good route."""
    attack = []
    for r in range(64):
        for rule in range(16):
            for m in range(8):
                hs = tuple(MatchRule("Exact", f"x-h{h}", f"v{h}-{m}") for h in range(16))
                e = route(f"attack{r:02d}", f"/a{rule}/{m}", 2, hs)
                attack.append(HTTPRouteEntry(e.route, rule, e.match, e.filters, e.backends))
    good = route("good", "/", 1)
    with Prober(env.lab) as prober:
        t0 = time.monotonic()
        result = env.worker.apply([listener("good", 80, *attack, good)])
        took = time.monotonic() - t0
    assert result.ok, result
    left_out = {str(p.subject) for p in result.problems}
    assert 0 < len(left_out) < 64 and "HTTPRoute default/good" not in left_out
    assert all(f"budget of {DEFAULT_BUDGET.acls} ACLs" in p.reason for p in result.problems)
    size = env.worker.config_path.stat().st_size
    print(
        f"\namplification: {len(left_out)} of 64 routes left out, {size / 2**20:.1f} MiB "
        f"configuration, apply (render, check, reload) {took:.2f} s, "
        f"{prober.failed()} failed probes"
    )
    assert prober.failed() == 0
    assert env.get("/") == "be1"
    kept = sorted({f"attack{r:02d}" for r in range(64)} - {p.split("/")[1] for p in left_out})
    assert kept
    env.lab.call(env.lab.client, _assert_attack_route_served)


def _assert_attack_route_served() -> None:
    conn = http.client.HTTPConnection(VIP, 80, timeout=2)
    headers = {"Host": "example.com", **{f"x-h{h}": f"v{h}-3" for h in range(16)}}
    conn.request("GET", "/a5/3/x", headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200  # an entry of a route kept in: all 17 conditions hold


def test_an_adopted_worker_is_not_mistaken_for_the_other_process(env: Env) -> None:
    """A restarted agent does not know what the running HAProxy binds: the
    probe finds VIP:80 in use, and the kernel says by whom."""
    good = listener("good", 80, route("base", "/", 1))
    assert env.worker.apply([good]).ok
    adopted = ProxyWorker(env.worker.run_dir, netns=env.lab.node.ns, node_name=NODE)
    result = adopted.apply([good, listener("bad", TAKEN, route("bad", "/", 2))])
    assert result.ok and not result.changed, result
    assert [str(p.subject) for p in result.problems] == ["Gateway default/gw listener bad"]
