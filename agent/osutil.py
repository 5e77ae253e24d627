"""Process and file helpers shared by the modules that manage daemons (the
HAProxy worker, the gobgpd speaker) and write state files (status, configs).

Owns only the mechanisms: whether a pid runs, stopping it, replacing a file
atomically.  Which process to stop and which file to write is always the
caller's; nothing here starts a process."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (an unreaped child of ours) does not."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL if `pid` still runs after `timeout` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Readers see the old file or the new one, never half of one; the data
    is on disk before the rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
