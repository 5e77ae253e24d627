"""The bind pre-check (agent.proxy.ports) with a fake probe, and the status
feedback of listener problems.  The worker's use of it is tested in
test_proxy_worker.py, with real processes in tests/e2e/test_proxy_hostile_e2e.py."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Collection

from agent.feedback import fold_failures
from agent.proxy import ports
from agent.proxy.ports import Address, SocketProbe
from agent.proxy.reconciler import problem_failures
from agent.proxy.render import Problem
from agent.refs import ListenerRef, ObjectRef
from agent.state import (
    Backend,
    BackendSet,
    HTTPMatch,
    HTTPRouteEntry,
    L7Listener,
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


def _listener(name: str) -> ListenerRef:
    return ListenerRef(ObjectRef("Gateway", "default", "gw"), name)


class FakeProbe:
    """Ports in use by others (`taken`), and those our HAProxy listens on."""

    def __init__(
        self, taken: dict[Address, int] | None = None, ours: frozenset[Address] = frozenset()
    ) -> None:
        self.taken = dict(taken or {})
        self.ours = ours
        self.probed: list[list[Address]] = []
        self.asked_pids: list[list[int]] = []

    def unbindable(self, addresses: Collection[Address]) -> dict[Address, int]:
        self.probed.append(sorted(addresses))
        failed = {a: err for a, err in self.taken.items() if a in addresses}
        failed.update({a: errno.EADDRINUSE for a in self.ours if a in addresses})
        return failed

    def listening(self, pids: Collection[int]) -> frozenset[Address]:
        self.asked_pids.append(sorted(pids))
        return self.ours


def listener(name: str, port: int, *vips: str) -> L7Listener:
    svc = ServiceBackend("default/be:80", 1, (Backend("10.0.0.1", 80, 1),))
    route = ObjectRef("HTTPRoute", "default", name)
    entry = HTTPRouteEntry(route, 0, HTTPMatch("PathPrefix", "/"), (), BackendSet((svc,)))
    return L7Listener(
        "default/gw", name, vips or ("192.0.2.1",), port, "HTTP", None, None,
        virtual_hosts=(VirtualHost("*", (entry,)),),
    )  # fmt: skip


# -- the pre-check -----------------------------------------------------------------------------


def test_only_addresses_the_worker_does_not_hold_are_probed() -> None:
    probe = FakeProbe()
    wanted = ports.addresses([listener("a", 80), listener("b", 8090), listener("c", 80)])
    assert sorted(wanted) == [("192.0.2.1", 80), ("192.0.2.1", 8090)]
    assert ports.unusable(wanted, {("192.0.2.1", 80)}, probe, [1]) == {}
    assert probe.probed == [[("192.0.2.1", 8090)]]
    assert probe.asked_pids == []  # nothing in use: the kernel is not asked


def test_an_address_in_use_by_our_own_worker_is_not_a_problem() -> None:
    # An adopted master: the agent does not know what it binds, the kernel does.
    probe = FakeProbe({("192.0.2.1", 8090): errno.EADDRINUSE}, ours=frozenset({("192.0.2.1", 80)}))
    wanted = ports.addresses([listener("a", 80), listener("b", 8090)])
    failed = ports.unusable(wanted, frozenset(), probe, [100, 101])
    assert failed == {("192.0.2.1", 8090): errno.EADDRINUSE}
    assert probe.asked_pids == [[100, 101]]
    # Without a running HAProxy, an address in use is someone else's.
    assert ports.unusable(wanted, frozenset(), probe, []) == {
        ("192.0.2.1", 80): errno.EADDRINUSE,
        ("192.0.2.1", 8090): errno.EADDRINUSE,
    }


def test_a_listener_with_one_unusable_address_is_left_out_whole() -> None:
    good = listener("good", 80, "192.0.2.1")
    bad = listener("bad", 8090, "192.0.2.1", "2001:db8::1")
    denied = listener("denied", 81, "192.0.2.2")
    failed = {
        ("2001:db8::1", 8090): errno.EADDRINUSE,
        ("192.0.2.2", 81): errno.EACCES,
    }
    served, problems = ports.port_problems([good, bad, denied], failed, "node-a")
    assert served == [good]
    assert problems == (
        Problem(
            _listener("bad"),
            None,
            "[2001:db8::1]:8090 is in use by another process on node node-a",
            "PortUnavailable",
        ),
        Problem(
            _listener("denied"),
            None,
            "192.0.2.2:81 cannot be bound on node node-a: permission denied",
            "PortUnavailable",
        ),
    )


def test_socket_probe_finds_a_port_in_use_and_whose_it_is() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        probe = SocketProbe()
        failed = probe.unbindable([("127.0.0.1", port), ("127.0.0.1", 0)])
        assert failed == {("127.0.0.1", port): errno.EADDRINUSE}
        assert ("127.0.0.1", port) in probe.listening([os.getpid()])
    # Released: the probe never keeps what it binds.
    assert probe.unbindable([("127.0.0.1", port)]) == {}
    assert probe.unbindable([("192.0.2.99", port)]) == {("192.0.2.99", port): errno.EADDRNOTAVAIL}


# -- status ---------------------------------------------------------------------------------


def _gateway(*names: str) -> StatusReport:
    programmed = Condition(PROGRAMMED, True, "Programmed", "Listener is programmed", 3)
    listeners = tuple(ListenerStatus(n, (), 0, (programmed,)) for n in names)
    status = GatewayStatus(("192.0.2.1",), (), listeners)
    gateway = ObjectStatus("gateway.networking.k8s.io/v1", "Gateway", "default", "gw", 3, status)
    return StatusReport((gateway,))


def test_a_port_problem_makes_its_listener_not_programmed_with_its_reason() -> None:
    problem = Problem(
        _listener("bad"),
        None,
        "192.0.2.1:8090 is in use by another process on node node-a",
        "PortUnavailable",
    )
    report = fold_failures(_gateway("good", "bad"), problem_failures((problem,)))
    status = report.objects[0].status
    assert isinstance(status, GatewayStatus)
    by_name = {ls.name: ls.conditions[-1] for ls in status.listeners}
    assert by_name["good"].status is True
    assert by_name["bad"] == Condition(PROGRAMMED, False, "PortUnavailable", problem.reason, 3)
    # A listener problem without a status reason reads Invalid, as before.
    plain = Problem(_listener("bad"), None, "no usable certificate")
    status = fold_failures(_gateway("bad"), problem_failures((plain,))).objects[0].status
    assert isinstance(status, GatewayStatus)
    assert status.listeners[0].conditions[-1].reason == "Invalid"
