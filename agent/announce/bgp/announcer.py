"""BGPAnnouncer: one gobgpd per node, its files under `<run_dir>/bgp/`, and the
host routes of the ready VIPs in its global RIB.

Owns the daemon's life (start, reload with SIGHUP, restart when the global
section changes, adoption after an agent restart, stop) and keeps its RIB equal
to the ready VIPs.  What to configure comes from plan.py, the text from
render.py.  Never touches a system gobgpd or BIRD service or their files,
routes learned from peers, or RIB entries other than host routes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pyroute2 import IPRoute

from agent.announce.bgp.gobgp import (
    BGPError,
    parse_global,
    parse_neighbors,
    parse_rib,
    run_tool,
)
from agent.announce.bgp.plan import DaemonConfig, GlobalConfig, desired_vips, plan
from agent.announce.bgp.render import render_config
from agent.osutil import alive, terminate, write_atomically
from agent.state import Announcement, BGPSettings

# The name the logger had before the package was split: the JSON log's
# "logger" field and any per-logger level set by name stay the same.
log = logging.getLogger("agent.announce.bgp")

SUBDIR = "bgp"
CONFIG = "gobgpd.toml"
PIDFILE = "gobgpd.pid"
LOGFILE = "gobgpd.log"

START_TIMEOUT = 10.0
PATH_WORKERS = 8  # gobgp CLI processes at once when adding or withdrawing paths
RELOAD_TIMEOUT = 5.0


class BGPAnnouncer:
    """Announces ready VIPs through one gobgpd rooted at `run_dir / "bgp"`.

    Synchronous and thread-safe; every call runs gobgp/gobgpd processes in the
    caller's network namespace.  No method raises for bad settings or a
    failing daemon: `problems()` says what is wrong.
    """

    def __init__(
        self,
        node_name: str,
        run_dir: Path,
        api_port: int = 50052,
        *,
        gobgpd: str = "gobgpd",
        gobgp: str = "gobgp",
    ) -> None:
        self.node_name = node_name
        self.dir = Path(run_dir).absolute() / SUBDIR
        self.api_port = api_port
        self.gobgpd = gobgpd
        self.gobgp = gobgp
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reloaded_pid: int | None = None  # the daemon we last configured
        self._problems: tuple[str, ...] = ()

    # -- paths -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG

    @property
    def pidfile(self) -> Path:
        return self.dir / PIDFILE

    @property
    def logfile(self) -> Path:
        return self.dir / LOGFILE

    # -- public API --------------------------------------------------------------------------

    def apply(self, announcements: Sequence[Announcement], settings: BGPSettings) -> None:
        """Make gobgpd announce the ready VIPs to the valid peers; idempotent."""
        with self._lock:
            planned = plan(settings, self.node_name, route_source)
            vips, vip_problems = desired_vips(announcements)
            problems = [*planned.problems, *vip_problems]
            try:
                if planned.config is not None:
                    self._ensure_daemon(planned.config)
                if self.daemon_pid() is not None:
                    problems += self._sync_paths(vips)
            except BGPError as exc:
                problems.append(f"gobgpd: {exc}")
            self._set_problems(tuple(problems))

    def close(self, withdraw: bool) -> None:
        """withdraw=True: withdraw every VIP and stop gobgpd (cleanup, explicit
        shutdown).  withdraw=False: leave gobgpd and its sessions running for
        the next agent to adopt."""
        with self._lock:
            if not withdraw:
                log.info("event=bgp_detached gobgpd_pid=%s", self.daemon_pid())
                return
            pid = self.daemon_pid() or self._find_unrecorded()
            if pid is not None:
                with contextlib.suppress(BGPError):
                    self._sync_paths(frozenset())
                self._terminate(pid)
                log.info("event=bgp_stopped gobgpd_pid=%d", pid)
            self._proc = None
            self._reloaded_pid = None
            for path in (self.pidfile, self.config_path):
                path.unlink(missing_ok=True)

    def problems(self) -> tuple[str, ...]:
        with self._lock:
            return self._problems

    def peer_states(self) -> dict[str, str]:
        """Peer address -> BGP FSM state ("established", "active", "idle", ...)."""
        with self._lock:
            if self.daemon_pid() is None:
                return {}
            try:
                return parse_neighbors(self._cli("neighbor", "-j"))
            except (BGPError, ValueError) as exc:
                log.warning("event=bgp_query_failed what=neighbors error=%s", exc)
                return {}

    def advertised(self) -> frozenset[str]:
        """VIPs currently in gobgpd's global RIB."""
        with self._lock:
            if self.daemon_pid() is None:
                return frozenset()
            try:
                return self._rib()
            except BGPError as exc:
                log.warning("event=bgp_query_failed what=rib error=%s", exc)
                return frozenset()

    def daemon_pid(self) -> int | None:
        """The pid of our live gobgpd (pid file, live process, our config)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                self._proc = None  # reaped: our child died
            try:
                pid = int(self.pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
            if not alive(pid) or not self._is_ours(pid):
                return None
            return pid

    # -- the daemon ------------------------------------------------------------------------

    def _ensure_daemon(self, config: DaemonConfig) -> None:
        """Running, with `config` in force: start, restart or reload."""
        text = render_config(config)
        pid = self.daemon_pid() or self._find_unrecorded()
        running = self._running_global() if pid is not None else None
        if pid is None or running is None:
            if pid is not None:
                log.warning("event=bgp_daemon_hung gobgpd_pid=%d action=restart", pid)
                self._terminate(pid)
            self._install(text)
            self._start(config)
        elif running != config.global_:
            # SIGHUP ignores the global section.
            log.info(
                "event=bgp_restart reason=global_changed old=%s new=%s", running, config.global_
            )
            self._install(text)
            self._terminate(pid)
            self._start(config)
        elif pid != self._reloaded_pid or self._read_config() != text:
            # Also once for a daemon we adopt: the file on disk may be newer
            # than what it read if the previous agent died between the two.
            self._install(text)
            self._reload(pid, config)

    def _start(self, config: DaemonConfig) -> None:
        self._rotate_log()
        argv = [
            self.gobgpd,
            "-f",
            str(self.config_path),
            "-t",
            "toml",
            "--api-hosts",
            f"127.0.0.1:{self.api_port}",
            "--pprof-disable",  # it would listen on localhost:6060
            "-p",  # plain log lines
        ]
        if config.graceful_restart:
            argv.append("-r")
        with open(self.logfile, "ab") as logf:
            # Own session: a signal to the agent's process group (Ctrl-C, a
            # supervisor stopping the agent alone) must not reach gobgpd.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        write_atomically(self.pidfile, f"{proc.pid}\n".encode(), 0o644)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BGPError(f"gobgpd exited (rc={proc.returncode}): {self._log_tail()}")
            if self._running_global(attempts=1) == config.global_:
                self._reloaded_pid = proc.pid
                log.info(
                    "event=bgp_started gobgpd_pid=%d asn=%d router_id=%s peers=%d",
                    proc.pid,
                    config.global_.asn,
                    config.global_.router_id,
                    len(config.peers),
                )
                return
            time.sleep(0.05)
        raise BGPError(f"gobgpd started but its API does not answer: {self._log_tail()}")

    def _reload(self, pid: int, config: DaemonConfig) -> None:
        os.kill(pid, signal.SIGHUP)
        want = {p.address for p in config.peers}
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            try:
                have = set(parse_neighbors(self._cli("neighbor", "-j")))
            except (BGPError, ValueError):
                have = None
            if have == want:
                self._reloaded_pid = pid
                log.info("event=bgp_reloaded gobgpd_pid=%d peers=%d", pid, len(want))
                return
            time.sleep(0.05)
        log.warning("event=bgp_reload_not_applied gobgpd_pid=%d action=restart", pid)
        self._terminate(pid)
        self._start(config)

    def _find_unrecorded(self) -> int | None:
        """A live gobgpd of ours that the pid file does not name (an agent
        died between starting it and writing the file): adopt it rather than
        start a second one that could not bind the API port."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)) and alive(int(entry.name)):
                pid = int(entry.name)
                log.info("event=bgp_daemon_found gobgpd_pid=%d", pid)
                write_atomically(self.pidfile, f"{pid}\n".encode(), 0o644)
                return pid
        return None

    def _running_global(self, attempts: int = 3) -> GlobalConfig | None:
        """The live daemon's global settings; None when its API does not
        answer (a few tries: one slow answer must not restart it)."""
        for attempt in range(attempts):
            try:
                return parse_global(self._cli("global", "-j"))
            except (BGPError, ValueError):
                if attempt + 1 < attempts:
                    time.sleep(0.2)
        return None

    def _install(self, text: str) -> None:
        """Check with `gobgpd --dry-run`, then replace the config atomically."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._read_config() == text:
            return
        candidate = self.dir / (CONFIG + ".new")
        write_atomically(candidate, text.encode(), 0o600)
        proc = run_tool([self.gobgpd, "--dry-run", "-t", "toml", "-f", str(candidate)])
        if proc.returncode != 0:
            candidate.unlink(missing_ok=True)
            detail = (proc.stdout + proc.stderr).strip()[-500:]
            raise BGPError(f"configuration refused by gobgpd --dry-run: {detail}")
        os.replace(candidate, self.config_path)

    def _read_config(self) -> str | None:
        try:
            return self.config_path.read_text()
        except OSError:
            return None

    def _is_ours(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return (
            bool(argv)
            and os.path.basename(argv[0]) == os.path.basename(self.gobgpd).encode()
            and str(self.config_path).encode() in argv
        )

    def _terminate(self, pid: int) -> None:
        # SIGTERM: gobgpd sends a Cease to each peer, which drops our routes
        # at once (no graceful restart for an announced shutdown).
        terminate(pid, timeout=5.0)
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
            self._proc = None

    def _rotate_log(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.logfile, self.logfile.with_name(LOGFILE + ".1"))

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-500:].strip()
        except OSError:
            return "(no log)"

    # -- paths in the RIB ------------------------------------------------------------------------

    def _rib(self) -> frozenset[str]:
        try:
            v4 = parse_rib(self._cli("global", "rib", "-a", "ipv4", "-j"))
            v6 = parse_rib(self._cli("global", "rib", "-a", "ipv6", "-j"))
        except ValueError as exc:
            raise BGPError(f"unreadable RIB listing: {exc}") from None
        return v4 | v6

    def _sync_paths(self, vips: frozenset[str]) -> list[str]:
        """Add missing VIPs, delete the others; one failing VIP does not stop
        the rest.  Returns a message per failure."""
        current = self._rib()
        work = [("add", v) for v in sorted(vips - current)]
        work += [("del", v) for v in sorted(current - vips)]
        if not work:
            return []

        def one(item: tuple[str, str]) -> str | None:
            verb, vip = item
            try:
                # No next hop: gobgpd sends each peer this node's address on
                # that session (see the package docstring).
                self._cli("global", "rib", "-a", _family(vip), verb, _host_prefix(vip))
            except BGPError as exc:
                return f"VIP {vip}: gobgp {verb} failed: {exc}"
            log.info("event=bgp_path_%s vip=%s", "added" if verb == "add" else "withdrawn", vip)
            return None

        # One CLI process per path costs ~10 ms, mostly process start: a few
        # in parallel cut a first announcement of 1000 VIPs several-fold.
        with concurrent.futures.ThreadPoolExecutor(max_workers=PATH_WORKERS) as pool:
            return [p for p in pool.map(one, work) if p is not None]

    # -- helpers -------------------------------------------------------------------------------

    def _cli(self, *args: str) -> str:
        argv = [self.gobgp, "-u", "127.0.0.1", "-p", str(self.api_port), *args]
        proc = run_tool(argv)
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip())[-500:]
            raise BGPError(f"{' '.join(args)}: rc={proc.returncode}: {detail}")
        return proc.stdout

    def _set_problems(self, problems: tuple[str, ...]) -> None:
        for p in problems:
            if p not in self._problems:
                log.warning("event=bgp_problem message=%r", p)
        self._problems = problems


def route_source(address: str) -> str | None:
    """The kernel's preferred source address towards `address` (in the
    caller's network namespace), or None without a route."""
    try:
        with IPRoute() as ipr:
            routes = list(ipr.route("get", dst=address))
    except Exception as exc:  # NetlinkError (no route), OSError
        log.debug("event=bgp_route_get_failed dst=%s error=%s", address, exc)
        return None
    for route in routes:
        src = route.get_attr("RTA_PREFSRC")
        if src:
            return str(src)
    return None


def _family(vip: str) -> str:
    return "ipv6" if ":" in vip else "ipv4"


def _host_prefix(vip: str) -> str:
    return f"{vip}/128" if ":" in vip else f"{vip}/32"
