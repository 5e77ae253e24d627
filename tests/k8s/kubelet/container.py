"""One run of one container: its process, the cgroup that tracks everything
it forks, and its log file.

The process is `launch.py` (which becomes the container and execs the entry
point), so its pid is the container's main pid.  stdout and stderr are pipes
that two threads copy into a log file in the CRI format a kubelet reads back
(`<RFC 3339 time> <stream> F <line>`).  Stopping is what a runtime does:
SIGTERM to the main process, and once it has exited or the grace period is
over, SIGKILL to every process left in the cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .nodefs import cgroup2_root

LAUNCH = Path(__file__).resolve().parent / "launch.py"


def rfc3339(t: float, nanos: bool = False) -> str:
    stamp = datetime.fromtimestamp(t, UTC)
    if nanos:
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _tracking_hierarchy() -> Path:
    """Where process-tracking cgroups go: cgroup v2 if the machine runs it
    alone, else v1's pids controller."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return root
    return root / "pids"


class Tracker:
    """A cgroup per container run, under one per node agent, and the node's
    cgroup v2 subtree (`scope`) that every run joins as well: on a pure v2
    machine they are the same groups; on a hybrid one tracking is v1's pids
    and the scope is in the `unified` hierarchy."""

    procs_file = "cgroup.procs"

    def __init__(self, name: str) -> None:
        self.base = _tracking_hierarchy() / name
        self.scope = cgroup2_root() / name
        for d in (self.base, self.scope):
            d.mkdir(parents=True, exist_ok=True)

    def new(self, name: str) -> list[Path]:
        """The run's groups: the tracking one first."""
        groups = [self.base / name]
        if self.scope != self.base:
            groups.append(self.scope / name)
        for g in groups:
            g.mkdir(exist_ok=True)
        return groups

    def pids(self, group: Path) -> list[int]:
        try:
            return [int(p) for p in (group / self.procs_file).read_text().split()]
        except OSError:
            return []

    def kill(self, groups: list[Path]) -> None:
        """SIGKILL until nothing is left in the tracking group (a fork racing
        the first pass is caught by the next), then remove the groups."""
        for _ in range(50):
            pids = self.pids(groups[0])
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for g in groups:
            with contextlib.suppress(OSError):
                g.rmdir()

    def close(self) -> None:
        """Kill what is left and remove every group; removing the scope also
        drops the programs attached to it."""
        for group in list(self.base.glob("*")):
            if group.is_dir():
                self.kill([group, self.scope / group.name])
        for d in (self.scope, self.base):
            for leftover in list(d.glob("*")):
                if leftover.is_dir():
                    with contextlib.suppress(OSError):
                        leftover.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()


class Run:
    """A started container process."""

    def __init__(
        self,
        tracker: Tracker,
        group_name: str,
        launch_spec: dict[str, Any],
        log_path: Path,
        work: Path,
    ) -> None:
        self.tracker = tracker
        self.groups = tracker.new(group_name)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed by the pumps
        self._log_lock = threading.Lock()
        self.error_file = work / f"{group_name}.error"
        self.error_file.unlink(missing_ok=True)
        spec_file = work / f"{group_name}.json"
        spec_file.write_text(
            json.dumps(
                {
                    **launch_spec,
                    "cgroups": [str(g / tracker.procs_file) for g in self.groups],
                    "errorFile": str(self.error_file),
                }
            )
        )
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-S", str(LAUNCH), str(spec_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        self.pid = self.proc.pid
        self.finished_at: float | None = None
        self.exit_code: int | None = None
        self._pumps = [
            threading.Thread(target=self._pump, args=(stream, name), daemon=True)
            for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))
        ]
        for t in self._pumps:
            t.start()

    def _pump(self, stream: IO[bytes] | None, name: str) -> None:
        assert stream is not None
        for line in iter(stream.readline, b""):
            text = line.rstrip(b"\n")
            record = f"{rfc3339(time.time(), nanos=True)} {name} F ".encode() + text + b"\n"
            with self._log_lock:
                self._log.write(record)
        stream.close()

    def poll(self) -> int | None:
        """The exit code once the main process has exited (128+N for a signal)."""
        if self.exit_code is None:
            rc = self.proc.poll()
            if rc is not None:
                self.exit_code = 128 - rc if rc < 0 else rc
                self.finished_at = time.time()
                self.tracker.kill(self.groups)  # the container ends with its main process
                for t in self._pumps:
                    t.join(timeout=2)
                self._log.close()
        return self.exit_code

    def start_error(self) -> str | None:
        try:
            return self.error_file.read_text() or None  # created empty by every start
        except OSError:
            return None

    def stop(self, grace: float) -> None:
        """SIGTERM, up to `grace` seconds, then SIGKILL to the whole group."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        self.tracker.kill(self.groups)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.poll()
