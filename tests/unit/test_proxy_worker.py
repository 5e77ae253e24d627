"""The proxy worker's pure-ish parts: configuration check, isolation of a route
HAProxy refuses, certificate validation, master CLI parsing, the listeners the
port pre-check leaves out, and the memory of a configuration the master
refused.  No process is started (the e2e tests start real ones): where the
worker would start HAProxy, the start is recorded and may be made to fail."""

from __future__ import annotations

import dataclasses
import errno
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path

import pytest

from agent.proxy.certificates import certificate_id
from agent.proxy.master import parse_show_proc
from agent.proxy.worker import (
    PORT_RETRY,
    REFUSED_BACKOFF,
    ProxyError,
    ProxyWorker,
)
from agent.refs import ObjectRef
from agent.state import (
    Backend,
    BackendSet,
    HTTPMatch,
    HTTPRouteEntry,
    L7Listener,
    MatchRule,
    ServiceBackend,
    TLSCertificate,
    VirtualHost,
)

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="haproxy is not installed")


def route(name: str, header_value: str) -> HTTPRouteEntry:
    svc = ServiceBackend(f"default/{name}:80", 1, (Backend("10.0.0.1", 80, 1),))
    match = HTTPMatch("PathPrefix", f"/{name}", (MatchRule("Exact", "x", header_value),))
    return HTTPRouteEntry(ObjectRef("HTTPRoute", "default", name), 0, match, (), BackendSet((svc,)))


def listener(*entries: HTTPRouteEntry) -> L7Listener:
    return L7Listener(
        "default/gw", "http", ("192.0.2.1",), 80, "HTTP", None, None,
        virtual_hosts=(VirtualHost("*", entries),),
    )  # fmt: skip


def test_isolation_leaves_out_only_the_routes_haproxy_refuses(tmp_path: Path) -> None:
    # A stand-in haproxy whose check refuses any configuration mentioning "poison".
    fake = tmp_path / "haproxy"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in *.new) grep -q poison "$a" && '
        '{ echo "[ALERT] poisoned" >&2; exit 1; };; esac; done\n'
        f'exec {HAPROXY} "$@"\n'
    )
    fake.chmod(0o755)
    worker = ProxyWorker(tmp_path / "run", haproxy=str(fake))
    worker._prepare_dirs()
    routes = [route(f"r{i}", "poison" if i in (3, 6) else "fine") for i in range(8)]
    listeners = [listener(*routes)]
    rendered, error = worker._isolate(listeners, {}, "poisoned")
    assert error is None
    assert sorted(str(p.subject) for p in rendered.problems) == [
        "HTTPRoute default/r3",
        "HTTPRoute default/r6",
    ]
    assert "poison" not in rendered.text and "default/r7" in rendered.text
    assert worker._check(rendered.text) is None


def test_check_reports_haproxy_alerts(tmp_path: Path) -> None:
    worker = ProxyWorker(tmp_path / "run", haproxy=HAPROXY)
    worker._prepare_dirs()
    error = worker._check("frontend x\n    bind 127.0.0.1:1\n    no-such-keyword\n")
    assert error is not None and "no-such-keyword" in error


def _cert(directory: Path, cn: str) -> tuple[bytes, bytes]:
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", f"/CN={cn}"),
            *("-keyout", str(directory / f"{cn}.key"), "-out", str(directory / f"{cn}.crt")),
        ],
        check=True,
        capture_output=True,
    )
    return (directory / f"{cn}.crt").read_bytes(), (directory / f"{cn}.key").read_bytes()


def test_mismatched_certificate_and_key_are_rejected(tmp_path: Path) -> None:
    a_crt, a_key = _cert(tmp_path, "a")
    _b_crt, b_key = _cert(tmp_path, "b")
    good = TLSCertificate("default/good", a_crt, a_key)
    bad = TLSCertificate("default/bad", a_crt, b_key)
    https = L7Listener(
        "default/gw", "https", ("192.0.2.1",), 443, "HTTPS", "Terminate", None,
        certificates=(good, bad),
    )  # fmt: skip
    worker = ProxyWorker(tmp_path / "run")
    worker._prepare_dirs()
    rejected = worker._check_certificates([https])
    assert list(rejected) == [certificate_id(bad)]
    assert not list((tmp_path / "run" / "certs").iterdir())  # probes are removed


def test_show_proc_parsing() -> None:
    out = (
        "#<PID>          <type>          <reloads>       <uptime>        <version>\n"
        "21055           master          3 [failed: 1]   0d00h00m04s     2.6.12\n"
        "# workers\n"
        "21237           worker          0               0d00h00m00s     2.6.12\n"
        "# old workers\n"
        "21100           worker          1               0d00h00m02s     2.6.12\n"
        "# programs\n"
    )
    procs = parse_show_proc(out)
    assert [(p.pid, p.kind, p.reloads, p.failed) for p in procs] == [
        (21055, "master", 3, 1),
        (21237, "worker", 0, 0),
        (21100, "worker", 1, 0),
    ]


# -- ports taken, configurations refused ----------------------------------------------------


class TakenPorts:
    """A fake port probe: the addresses in `taken` are held by another process."""

    def __init__(self, taken: dict[tuple[str, int], int] | None = None) -> None:
        self.taken = dict(taken or {})

    def unbindable(self, addresses: Collection[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {a: err for a, err in self.taken.items() if a in addresses}

    def listening(self, pids: Collection[int]) -> frozenset[tuple[str, int]]:
        return frozenset()


def on_port(name: str, port: int) -> L7Listener:
    svc = ServiceBackend("default/be:80", 1, (Backend("10.0.0.1", 80, 1),))
    entry = HTTPRouteEntry(
        ObjectRef("HTTPRoute", "default", name),
        0,
        HTTPMatch("PathPrefix", "/"),
        (),
        BackendSet((svc,)),
    )
    return L7Listener(
        "default/gw", name, ("192.0.2.1",), port, "HTTP", None, None,
        virtual_hosts=(VirtualHost("*", (entry,)),),
    )  # fmt: skip


class Calls:
    def __init__(self) -> None:
        self.starts: list[str] = []
        self.fail = False


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ProxyWorker, Calls]:
    """A worker whose HAProxy `start` is recorded (and may be made to fail);
    `haproxy -c` is the real one."""
    w = ProxyWorker(tmp_path / "run", haproxy=HAPROXY, node_name="node-a", probe=TakenPorts())
    calls = Calls()

    def start() -> None:
        calls.starts.append(w.config_path.read_text())
        if calls.fail:
            raise ProxyError("haproxy did not start (rc=1): cannot bind socket")

    monkeypatch.setattr(w, "_start", start)
    monkeypatch.setattr(w, "running", lambda: False)
    return w, calls


def test_worker_leaves_out_a_listener_whose_port_is_taken(
    worker: tuple[ProxyWorker, Calls],
) -> None:
    w, calls = worker
    w.probe = TakenPorts({("192.0.2.1", 8090): errno.EADDRINUSE})
    result = w.apply([on_port("good", 80), on_port("bad", 8090)])
    assert result.ok and result.changed, result
    assert [(str(p.subject), p.status_reason) for p in result.problems] == [
        ("Gateway default/gw listener bad", "PortUnavailable")
    ]
    assert "192.0.2.1:8090 is in use by another process on node node-a" in result.problems[0].reason
    assert result.retry_after == PORT_RETRY  # the other process may go away
    assert len(calls.starts) == 1
    assert ":8090" not in calls.starts[0] and "bind 192.0.2.1:80" in calls.starts[0]


def test_a_refused_configuration_is_not_tried_again_until_the_input_changes(
    worker: tuple[ProxyWorker, Calls],
) -> None:
    w, calls = worker
    calls.fail = True
    first = w.apply([on_port("a", 80)])
    assert not first.ok and "cannot bind socket" in (first.error or "")
    assert first.retry_after == REFUSED_BACKOFF
    assert not w.config_path.exists()  # rolled back: nothing was in force before
    again = w.apply([on_port("a", 80)])
    assert not again.ok and "not tried again" in (again.error or "")
    assert 0 < (again.retry_after or 0) <= REFUSED_BACKOFF
    assert len(calls.starts) == 1  # the same configuration was not tried again
    calls.fail = False
    changed = w.apply([on_port("a", 80), on_port("b", 81)])
    assert changed.ok and len(calls.starts) == 2  # new input: tried at once
    assert w.refused is None


def test_a_refused_configuration_is_tried_again_after_its_back_off(
    worker: tuple[ProxyWorker, Calls],
) -> None:
    w, calls = worker
    calls.fail = True
    w.apply([on_port("a", 80)])
    assert w.refused is not None
    w.refused = dataclasses.replace(w.refused, retry_at=0.0)  # the back-off has passed
    second = w.apply([on_port("a", 80)])
    assert len(calls.starts) == 2 and not second.ok
    assert second.retry_after == 2 * REFUSED_BACKOFF  # the back-off doubles


def test_the_previous_configuration_is_restored_after_a_refused_start(
    worker: tuple[ProxyWorker, Calls],
) -> None:
    w, calls = worker
    assert w.apply([on_port("a", 80)]).ok
    good = w.config_path.read_text()
    calls.fail = True
    assert not w.apply([on_port("a", 80), on_port("b", 81)]).ok
    assert w.config_path.read_text() == good


def test_a_reload_refused_for_a_port_taken_since_the_probe_goes_on_without_it(
    worker: tuple[ProxyWorker, Calls], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = worker
    probe = TakenPorts()
    w.probe = probe
    assert w.apply([on_port("a", 80)]).ok
    previous = w.config_path.read_text()
    monkeypatch.setattr(w, "running", lambda: True)
    reloads: list[str] = []

    def reload() -> None:
        reloads.append(w.config_path.read_text())
        if ":8090" in reloads[-1]:
            raise ProxyError("haproxy reload failed; the previous configuration stays")

    def racing(addresses: Collection[tuple[str, int]]) -> dict[tuple[str, int], int]:
        failed = {a: err for a, err in probe.taken.items() if a in addresses}
        probe.taken[("192.0.2.1", 8090)] = errno.EADDRINUSE  # taken right after the probe
        return failed

    monkeypatch.setattr(w, "_reload", reload)
    monkeypatch.setattr(probe, "unbindable", racing)
    result = w.apply([on_port("a2", 80), on_port("b", 8090)])
    assert result.ok and result.changed, result
    assert [p.status_reason for p in result.problems] == ["PortUnavailable"]
    # Refused, rolled back at once (the previous configuration reloaded), then
    # loaded without the listener whose port is taken.
    assert [":8090" in text for text in reloads] == [True, False, False]
    assert reloads[1] == previous and "default/a2" in reloads[2]
