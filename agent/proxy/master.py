"""HAProxy's master CLI socket: one command sent, its answer read back, and the
`show proc` table parsed (which processes run, how many reloads, how many
failed).  Owns only the wire protocol of that socket; never starts, signals or
configures HAProxy (worker.py does).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path


class MasterSocketError(RuntimeError):
    """The master socket cannot be reached or answered nothing usable."""


@dataclass(frozen=True, slots=True)
class ProcEntry:
    pid: int
    kind: str  # master | worker
    reloads: int
    failed: int = 0  # the master's failed reloads


def master_command(path: Path, cmd: str, timeout: float) -> str:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(cmd.encode() + b"\n")
            # The master CLI answers only once the client half-closes.
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError as exc:
        raise MasterSocketError(f"master socket {path}: {exc}") from None
    return b"".join(chunks).decode(errors="replace")


# `<pid> <type> <reloads> [failed: N] <uptime> <version>` (failed: master only).
_SHOW_PROC = re.compile(r"^(\d+)\s+(\w+)\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?")


def parse_show_proc(out: str) -> list[ProcEntry]:
    procs = []
    for line in out.splitlines():
        m = _SHOW_PROC.match(line)
        if m is not None:
            failed = int(m.group(4)) if m.group(4) else 0
            procs.append(ProcEntry(int(m.group(1)), m.group(2), int(m.group(3)), failed))
    return procs


def master_reloads(procs: list[ProcEntry]) -> tuple[int, int] | None:
    for p in procs:
        if p.kind == "master":
            return (p.reloads, p.failed)
    return None
