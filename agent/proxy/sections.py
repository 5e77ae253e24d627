"""Sections of an HAProxy configuration, and the ones every configuration has.

Owns `Section` (a header and its indented lines), the text helpers every
section writer shares (addresses, comments, section names), and the fixed
sections: `global` (the master-worker plumbing: a stats socket that hands
listening sockets to the next worker on reload, hitless-reload options),
`defaults` (the default timeouts) and the health frontend on a UNIX socket.

Pure: never runs haproxy, never writes a file; it knows nothing of routes or
listeners.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

from agent.logs import one_line
from agent.proxy.escape import Unrepresentable, word

STATS_SOCKET = "stats.sock"
HEALTH_SOCKET = "health.sock"
HARD_STOP_AFTER = "30s"
DEFAULT_SERVER_TIMEOUT_MS = 60_000


@dataclass
class Section:
    header: str
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join([self.header, *("    " + line for line in self.lines)])


# -- names and text -----------------------------------------------------------------------


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", text.replace("/", "."))[:48]


def short_hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:10]


def addr(ip: str, port: int) -> str:
    address = ipaddress.ip_address(ip)
    if getattr(address, "scope_id", None):  # "fe80::1%eth0": a zone is no part of a bind
        raise Unrepresentable(f"address {ip!r} has a zone")
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def comment(text: str) -> str:
    """Text for a `#` line, ASCII and on one line: an object name with a line
    break must not add a configuration line (names are validated before; this
    holds regardless)."""
    return one_line(text).encode("ascii", "backslashreplace").decode("ascii")


# -- fixed sections -----------------------------------------------------------------------


def global_section(run_dir: str, threads: int | None) -> Section:
    s = Section("global")
    stats = word(run_dir + "/" + STATS_SOCKET)
    s.add(f"stats socket {stats} mode 600 level admin expose-fd listeners")
    if threads:
        s.add(f"nbthread {int(threads)}")
    s.add(f"hard-stop-after {HARD_STOP_AFTER}")
    s.add("mworker-max-reloads 50")
    s.add("tune.ssl.default-dh-param 2048")
    s.add("ssl-default-bind-options ssl-min-ver TLSv1.2")
    return s


def defaults_section() -> Section:
    s = Section("defaults")
    s.add("mode http")
    s.add("timeout connect 5s")
    s.add("timeout client 60s")
    s.add(f"timeout server {DEFAULT_SERVER_TIMEOUT_MS}")
    s.add("timeout http-request 10s")
    s.add("timeout http-keep-alive 60s")
    s.add("timeout tunnel 1h")
    s.add("timeout client-fin 5s")
    return s


def health_section(run_dir: str) -> Section:
    """A frontend on a unix socket: the worker's liveness probe, and a
    listener so that a configuration without L7 listeners still runs."""
    s = Section("frontend gatewaylb_health")
    s.add(f"bind {word('unix@' + run_dir + '/' + HEALTH_SOCKET)} mode 600")
    s.add("http-request return status 200 content-type text/plain string ok")
    return s
