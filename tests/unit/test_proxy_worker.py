"""The proxy worker's pure-ish parts: configuration check, isolation of a route
HAProxy refuses, certificate validation, master CLI parsing.  No process is
started (the e2e tests start real ones)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.proxy.render import certificate_id
from agent.proxy.worker import ProxyWorker, _parse_show_proc
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
    return HTTPRouteEntry(f"HTTPRoute default/{name}", 0, match, (), BackendSet((svc,)))


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
    assert sorted(p.route for p in rendered.problems) == [
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
    procs = _parse_show_proc(out)
    assert [(p.pid, p.kind, p.reloads, p.failed) for p in procs] == [
        (21055, "master", 3, 1),
        (21237, "worker", 0, 0),
        (21100, "worker", 1, 0),
    ]
