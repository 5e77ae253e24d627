"""The HAProxy master-worker process the agent owns, and its reloads.

Everything lives under one run directory (default /run/gatewaylb/proxy):

    haproxy.cfg     the configuration in force (replaced atomically)
    haproxy.pid     the master's pid
    master.sock     the master CLI (`reload`, `show proc`, `@1 <cmd>`)
    stats.sock      the worker's runtime API; `expose-fd listeners` lets a new
                    worker take over the listening sockets on reload
    health.sock     a tiny HTTP frontend answering 200 (liveness)
    certs/          certificate+key PEM files and crt-lists, content-addressed

`apply(listeners)` first binds, from the agent, every VIP:port the running
worker does not already listen on (`ports`): a listener HAProxy could not bind
is left out and reported, because one failed bind fails the whole reload and
pauses every listener of the node for ~2 s.  It then renders (routes over the
budget are left out and reported), writes certificates, checks the candidate
with `haproxy -c` (bounded by `check_timeout`), and only then replaces
haproxy.cfg and reloads through the master socket, waiting until the new
worker runs.  A candidate that fails the check leaves the previous
configuration in force; the routes responsible are found by bisection, left
out and reported, so one bad route cannot block the others.

A reload the master refuses anyway (a port taken between the probe and the
reload, resources) is rolled back at once: the previous configuration is
written back and reloaded into a fresh worker.  Measured with HAProxy 2.6: a
refused reload keeps the running worker (after ~2 s with its listeners
paused) but counts as one of its reloads, and once that count passes
`mworker-max-reloads` the next good reload kills it at once instead of letting
its connections finish; and a restart would start the refused file.  The
refused configuration is remembered by digest and not tried again until the
input changes or a back-off (5 s doubling to 5 min) passes.

The master is started daemonised (`-W -D`): it is not the agent's child, so an
agent that exits or crashes leaves traffic flowing, and a restarted agent
adopts it (pidfile + live master socket) instead of starting a second one.
This never uses the system haproxy service or its files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.osutil import terminate, write_atomically
from agent.proxy import ports
from agent.proxy.certificates import CERT_DIR, certificate_id, certificate_pem
from agent.proxy.master import (
    MasterSocketError,
    ProcEntry,
    master_command,
    master_reloads,
    parse_show_proc,
)
from agent.proxy.ports import Address, PortProbe, SocketProbe
from agent.proxy.render import Problem, RenderedConfig, all_routes, render
from agent.proxy.sections import HEALTH_SOCKET
from agent.refs import ObjectRef
from agent.state import L7Listener, TLSCertificate

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = "/run/gatewaylb/proxy"
CONFIG = "haproxy.cfg"
PIDFILE = "haproxy.pid"
MASTER_SOCKET = "master.sock"
# `haproxy -c` of the largest configuration within budget.DEFAULT_BUDGET took
# 1.1-1.3 s on 2 vCPUs; a check that runs longer is stopped and failed.
CHECK_TIMEOUT = 10.0
# A listener left out because its port is taken: apply again after this long
# even when nothing else changed (the other process may have gone).
PORT_RETRY = 10.0
# A configuration the master refused: not tried again before this back-off,
# doubling up to the maximum, unless the input changes.
REFUSED_BACKOFF = 5.0
REFUSED_BACKOFF_MAX = 300.0


class ProxyError(RuntimeError):
    pass


class CheckTimeout(ProxyError):
    """`haproxy -c` ran past its timeout: no route's fault, nothing to isolate."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What `apply` did.

    ok: the configuration for the given listeners (less `problems`) is in force.
    changed: HAProxy was started or reloaded.
    problems: routes/rules/listeners left out, with the reason (for status).
    error: why the new configuration is not in force (the previous one is).
    retry_after: seconds after which `apply` should be called again even if
        the listeners did not change, because what made it fail or leave
        something out may clear by itself (a port held by another process, a
        refused reload in back-off); None: nothing to retry.
    """

    ok: bool
    changed: bool
    problems: tuple[Problem, ...] = ()
    error: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A configuration the master refused to load (by digest of its text)."""

    digest: str
    error: str
    retry_at: float  # time.monotonic()
    backoff: float


def default_threads() -> int:
    """Half the CPUs this process may run on, at least one.  The worker shares
    the node with the clients and backends it serves: on 2 CPUs, HAProxy with
    one thread served 49% of the direct rate and with two (its own default,
    one per CPU) 41% (bench/l7_http.py), because the second thread only
    competes with them for the same cores."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


class ProxyWorker:
    """Owns one HAProxy master-worker instance rooted at `run_dir`.

    Thread-safe.  `netns` (a name under /run/netns) runs HAProxy in that network
    namespace; by default it runs in the agent's own.
    """

    def __init__(
        self,
        run_dir: str | Path = DEFAULT_RUN_DIR,
        *,
        haproxy: str = "haproxy",
        netns: str | None = None,
        reload_timeout: float = 10.0,
        threads: int | None = None,
        node_name: str | None = None,
        probe: PortProbe | None = None,
        check_timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.haproxy = haproxy
        self.netns = netns
        self.reload_timeout = reload_timeout
        self.threads = threads if threads is not None else default_threads()
        self.node_name = node_name or socket.gethostname()
        self.probe: PortProbe = probe if probe is not None else SocketProbe(netns)
        self.check_timeout = check_timeout
        self._lock = threading.RLock()
        self._cert_verdicts: dict[str, str | None] = {}
        self._next_start = 0.0
        self._backoff = 0.5
        self._last_listeners: tuple[L7Listener, ...] = ()
        # What the running worker listens on, as far as this object knows
        # (empty for a master it adopted: the kernel is asked instead).
        self._bound: frozenset[Address] = frozenset()
        self.refused: Refused | None = None
        self.reloads = 0

    # -- paths ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG

    @property
    def master_socket(self) -> Path:
        return self.run_dir / MASTER_SOCKET

    @property
    def pidfile(self) -> Path:
        return self.run_dir / PIDFILE

    @property
    def health_socket(self) -> Path:
        return self.run_dir / HEALTH_SOCKET

    # -- public API --------------------------------------------------------------------------

    def apply(self, listeners: Sequence[L7Listener]) -> ApplyResult:
        """Make HAProxy serve `listeners`; start it if it does not run."""
        with self._lock:
            self._last_listeners = tuple(listeners)
            self._prepare_dirs()
            running = self.running()
            wanted = ports.addresses(listeners)
            failed = ports.unusable(wanted, self._bound, self.probe, self._pids(running))
            result = self._apply(listeners, failed, running)
            if result.error is not None and result.changed:
                # Refused and rolled back.  A port taken since the probe
                # explains it: once more without that listener.
                late = ports.unusable(wanted, self._bound, self.probe, self._pids(self.running()))
                if set(late) - set(failed):
                    log.warning("proxy: reload refused; ports now in use: %s", sorted(late))
                    again = self._apply(listeners, {**failed, **late}, self.running())
                    result = dataclasses.replace(again, changed=True)  # reloaded (rollback)
            return result

    def _apply(
        self, listeners: Sequence[L7Listener], failed: Mapping[Address, int], running: bool
    ) -> ApplyResult:
        served, problems = ports.port_problems(listeners, failed, self.node_name)
        retry = PORT_RETRY if problems else None
        rejected = self._check_certificates(served)
        rendered = self._render(served, rejected)
        self._write_files(rendered)
        current = self._read_config()
        if running and current == rendered.text:
            return ApplyResult(True, False, problems + rendered.problems, retry_after=retry)
        digest = _digest(rendered.text)
        refused = self.refused if self.refused and self.refused.digest == digest else None
        now = time.monotonic()
        if refused is not None and now < refused.retry_at:
            wait = refused.retry_at - now
            why = f"{refused.error} (the same configuration is not tried again for {wait:.0f} s)"
            return ApplyResult(False, False, problems + rendered.problems, why, wait)
        try:
            error = self._check(rendered.text)
            if error is not None:
                log.warning("proxy configuration check failed, isolating: %s", error)
                rendered, error = self._isolate(served, rejected, error)
        except CheckTimeout as exc:
            error = str(exc)
        if error is not None:
            return ApplyResult(False, False, problems + rendered.problems, error)
        # Isolation may have left routes out: the text can be another one.
        self._write_files(rendered)
        digest = _digest(rendered.text)
        if running and current == rendered.text:
            return ApplyResult(True, False, problems + rendered.problems, retry_after=retry)
        problems += rendered.problems
        self._install(rendered.text)
        try:
            if running:
                self._reload()
            else:
                self._start()
        except ProxyError as exc:
            backoff = REFUSED_BACKOFF
            if self.refused is not None and self.refused.digest == digest:
                backoff = min(self.refused.backoff * 2, REFUSED_BACKOFF_MAX)
            self.refused = Refused(digest, str(exc), time.monotonic() + backoff, backoff)
            log.error("proxy: %s; rolling back, not tried again for %.0f s", exc, backoff)
            self._roll_back(current, running)
            return ApplyResult(False, True, problems, str(exc), backoff)
        self.refused = None
        self._bound = rendered.binds
        self._collect_files(rendered)
        return ApplyResult(True, True, problems, retry_after=retry)

    def _roll_back(self, previous: str | None, running: bool) -> None:
        """After a refused start or reload: the previous configuration back on
        disk and, if a master runs, in a fresh worker."""
        if previous is None:
            self.config_path.unlink(missing_ok=True)
            return
        self._install(previous)
        try:
            if running and self.running():
                self._reload()
        except ProxyError as exc:
            log.error("proxy: rollback reload failed: %s", exc)
        else:
            log.warning("proxy: reload refused; the previous configuration is back in force")

    def _pids(self, running: bool) -> list[int]:
        """Our HAProxy processes (master and workers), when a master runs."""
        if not running:
            return []
        with contextlib.suppress(ProxyError):
            return [p.pid for p in self.processes()]
        return []

    def running(self) -> bool:
        """Is a master of ours alive and answering on its socket?"""
        pid = self.master_pid()
        if pid is None:
            return False
        try:
            out = self.command("show proc", timeout=2.0)
        except ProxyError:
            return False
        return any(p.kind == "worker" for p in parse_show_proc(out))

    def ensure_running(self) -> bool:
        """Restart HAProxy with the last configuration if it died (with back-off)."""
        with self._lock:
            if self.running():
                self._backoff = 0.5
                return True
            now = time.monotonic()
            if now < self._next_start:
                return False
            self._next_start = now + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            log.warning("proxy: HAProxy is not running; starting it")
            self._bound = frozenset()  # a new master binds anew
            try:
                if not self.config_path.exists():
                    self.apply(self._last_listeners)
                else:
                    self._kill_stale()
                    self._start()
            except ProxyError as exc:
                log.error("proxy: start failed: %s", exc)
                if not self._last_listeners:
                    return False
                # The last good configuration no longer starts (a port taken
                # while HAProxy was down): the listeners again, checked first.
                self.apply(self._last_listeners)
            return self.running()

    def master_pid(self) -> int | None:
        """The pid of our live master (pidfile, process alive, our config)."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if not cmdline or not cmdline[0].endswith(b"haproxy"):
            return None
        if str(self.config_path).encode() not in cmdline:
            return None
        return pid

    def processes(self) -> list[ProcEntry]:
        return parse_show_proc(self.command("show proc"))

    def command(self, cmd: str, timeout: float = 5.0) -> str:
        """One master CLI command; the answer (prefix `@1 ` for the worker)."""
        try:
            return master_command(self.master_socket, cmd, timeout)
        except MasterSocketError as exc:
            raise ProxyError(str(exc)) from None

    def stop(self, remove_files: bool = False) -> None:
        """Stop the master and its workers (ours only), then optionally remove
        the run directory's files."""
        with self._lock:
            pid = self.master_pid()
            workers: list[int] = []
            if pid is not None:
                with contextlib.suppress(ProxyError):
                    workers = [p.pid for p in self.processes() if p.kind == "worker"]
                terminate(pid, timeout=5.0)
            for wpid in workers:
                if _is_haproxy(wpid):
                    terminate(wpid, timeout=2.0)
            if remove_files:
                for name in (CONFIG, CONFIG + ".new", PIDFILE, MASTER_SOCKET, "stats.sock"):
                    (self.run_dir / name).unlink(missing_ok=True)
                self.health_socket.unlink(missing_ok=True)
                certs = self.run_dir / CERT_DIR
                if certs.is_dir():
                    for f in certs.iterdir():
                        f.unlink(missing_ok=True)
                    certs.rmdir()
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()

    # -- internals ------------------------------------------------------------------------

    def _argv(self, argv: list[str]) -> list[str]:
        if self.netns is None:
            return argv
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def _prepare_dirs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.run_dir / CERT_DIR).mkdir(exist_ok=True, mode=0o700)

    def _read_config(self) -> str | None:
        try:
            return self.config_path.read_text()
        except OSError:
            return None

    def _check_certificates(self, listeners: Sequence[L7Listener]) -> dict[str, str]:
        """Load each certificate+key as OpenSSL would; reasons for the bad ones."""
        rejected: dict[str, str] = {}
        for ls in listeners:
            for cert in ls.certificates:
                cid = certificate_id(cert)
                if cid not in self._cert_verdicts:
                    self._cert_verdicts[cid] = self._load_certificate(cert)
                verdict = self._cert_verdicts[cid]
                if verdict is not None:
                    rejected[cid] = verdict
        return rejected

    def _load_certificate(self, cert: TLSCertificate) -> str | None:
        fd, path = tempfile.mkstemp(dir=self.run_dir / CERT_DIR, suffix=".check")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(certificate_pem(cert))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(path)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return f"unusable certificate or key: {exc}"
        finally:
            os.unlink(path)
        return None

    def _write_files(self, rendered: RenderedConfig) -> None:
        for rel, data in rendered.files.items():
            path = self.run_dir / rel
            try:
                if path.read_bytes() == data:
                    continue
            except OSError:
                pass
            write_atomically(path, data, 0o600)

    def _collect_files(self, rendered: RenderedConfig) -> None:
        """Remove certificate files no configuration refers to any more (the
        old workers loaded theirs at start)."""
        keep = {self.run_dir / rel for rel in rendered.files}
        for f in (self.run_dir / CERT_DIR).iterdir():
            if f not in keep:
                f.unlink(missing_ok=True)

    def _check(self, text: str) -> str | None:
        candidate = self.run_dir / (CONFIG + ".new")
        write_atomically(candidate, text.encode(), 0o600)
        try:
            proc = subprocess.run(
                [self.haproxy, "-c", "-f", str(candidate)],
                capture_output=True,
                text=True,
                timeout=self.check_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CheckTimeout(f"haproxy -c did not finish in {self.check_timeout:.0f} s") from None
        if proc.returncode == 0:
            return None
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "ALERT" in ln]
        return "; ".join(lines)[:2000] or f"haproxy -c failed (rc={proc.returncode})"

    def _isolate(
        self, listeners: Sequence[L7Listener], rejected: dict[str, str], error: str
    ) -> tuple[RenderedConfig, str | None]:
        """Find the routes whose configuration HAProxy refuses (bisection over
        routes) and render without them."""
        routes = sorted(all_routes(listeners))

        def check(included: list[ObjectRef]) -> bool:
            excluded = frozenset((r, None) for r in routes if r not in included)
            rc = self._render(listeners, rejected, excluded)
            self._write_files(rc)
            return self._check(rc.text) is None

        if not check([]):
            rc = self._render(listeners, rejected)
            return rc, f"configuration refused without any route: {error}"
        bad: list[ObjectRef] = []

        def bisect(group: list[ObjectRef], base: list[ObjectRef]) -> None:
            if check(base + group):
                base.extend(group)
                return
            if len(group) == 1:
                bad.append(group[0])
                return
            half = len(group) // 2
            bisect(group[:half], base)
            bisect(group[half:], base)

        bisect(routes, [])
        rc = self._render(listeners, rejected, frozenset((r, None) for r in bad))
        problems = list(rc.problems) + [
            Problem(r, None, f"HAProxy refused the configuration of this route: {error}")
            for r in bad
        ]
        rc = RenderedConfig(rc.text, rc.files, tuple(problems))
        final = self._check(rc.text)
        return rc, final

    def _render(
        self,
        listeners: Sequence[L7Listener],
        rejected: dict[str, str],
        excluded: frozenset[tuple[ObjectRef, int | None]] = frozenset(),
    ) -> RenderedConfig:
        return render(
            listeners,
            str(self.run_dir),
            rejected_certificates=rejected,
            excluded_rules=excluded,
            threads=self.threads,
        )

    def _install(self, text: str) -> None:
        write_atomically(self.config_path, text.encode(), 0o600)

    def _start(self) -> None:
        self._kill_stale()
        self.master_socket.unlink(missing_ok=True)
        argv = self._argv(
            [
                self.haproxy,
                "-W",
                "-D",
                "-S",
                f"{self.master_socket},level,admin",
                "-f",
                str(self.config_path),
                "-p",
                str(self.pidfile),
            ]
        )
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=2 * self.check_timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise ProxyError("haproxy did not start in time") from None
        if proc.returncode != 0:
            raise ProxyError(f"haproxy did not start (rc={proc.returncode}): {proc.stderr[-2000:]}")
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            if self.running():
                log.info("proxy: HAProxy master %s started", self.master_pid())
                return
            time.sleep(0.02)
        raise ProxyError("haproxy started but its master socket does not answer")

    def _reload(self) -> None:
        before = master_reloads(self.processes())
        self.command("reload")
        deadline = time.monotonic() + self.reload_timeout
        last = ""
        while time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                out = self.command("show proc", timeout=2.0)
            except ProxyError as exc:
                last = str(exc)  # the master is re-executing itself
                continue
            procs = parse_show_proc(out)
            after = master_reloads(procs)
            if after is None or before is None or after[0] <= before[0]:
                continue
            if after[1] > before[1]:
                raise ProxyError("haproxy reload failed; the previous configuration stays")
            if any(p.kind == "worker" and p.reloads == 0 for p in procs):
                self.reloads += 1
                return
        raise ProxyError(f"haproxy reload did not complete in time {last}".strip())

    def _kill_stale(self) -> None:
        """A master of ours that no longer answers (hung): stop it before a new one."""
        pid = self.master_pid()
        if pid is not None:
            terminate(pid, timeout=2.0)


# -- helpers ---------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _is_haproxy(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"haproxy")
    except OSError:
        return False
