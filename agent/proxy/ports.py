"""Which L7 listeners HAProxy can bind, found before it is asked to.

HAProxy 2.6 reloads all or nothing: a new configuration with one address it
cannot bind is refused whole, and while the new process retries that bind
(about 2 s) the running worker's listeners are paused, so every VIP of the
node refuses connections (measured: 20 failed probes at 20 ms, 2.0 s).  `haproxy
-c` binds nothing, so it passes such a configuration.  Hence, before every
start or reload, each VIP:port the running worker does not already listen on
is bound once by the agent itself, in HAProxy's network namespace, and closed
again (never listened on): EADDRINUSE, EADDRNOTAVAIL or EACCES means HAProxy
would fail the same way, and that listener is left out and reported instead.

The probe sets SO_REUSEADDR as HAProxy does (a port whose old connections
linger in TIME_WAIT is free) but not SO_REUSEPORT: a foreign socket that
allows port sharing would otherwise silently take part of the traffic.

Owns nothing that outlives a call: a probe socket is closed before the call
returns; other processes' sockets are only read, from /proc.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from agent.proxy.render import Problem
from agent.state import L7Listener

Address = tuple[str, int]  # (IP address in its compressed form, TCP port)

PORT_UNAVAILABLE = "PortUnavailable"  # the Listener condition reason
# The errors that mean HAProxy's bind would fail too; others are not ours to judge.
UNUSABLE = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})
_CLONE_NEWNET = 0x40000000
_TCP_LISTEN = "0A"


class PortProbe(Protocol):
    def unbindable(self, addresses: Collection[Address]) -> dict[Address, int]:
        """The addresses that cannot be bound now, with the errno."""
        ...

    def listening(self, pids: Collection[int]) -> frozenset[Address]:
        """The TCP addresses the processes `pids` hold listening sockets on."""
        ...


def addresses(listeners: Iterable[L7Listener]) -> dict[Address, list[L7Listener]]:
    """Every VIP:port the listeners need, with the listeners that need it
    (addresses that are not IP addresses are the renderer's to report)."""
    out: dict[Address, list[L7Listener]] = {}
    for ls in listeners:
        for vip in ls.vips:
            try:
                ip = str(ipaddress.ip_address(vip))
            except ValueError:
                continue
            out.setdefault((ip, ls.port), []).append(ls)
    return out


def unusable(
    wanted: Collection[Address],
    held: Collection[Address],
    probe: PortProbe,
    ours: Sequence[int],
) -> dict[Address, int]:
    """The addresses of `wanted` HAProxy could not bind.  `held`: what the
    running worker is known to listen on (not probed: a bind there fails,
    and HAProxy takes the socket over instead); `ours`: the pids of our
    HAProxy processes, asked only when a probe finds an address in use (a
    worker this agent adopted, whose addresses it does not know yet)."""
    failed = probe.unbindable([a for a in sorted(wanted) if a not in held])
    in_use = [a for a, err in failed.items() if err == errno.EADDRINUSE]
    if in_use and ours:
        mine = probe.listening(ours)
        failed = {a: err for a, err in failed.items() if a not in mine}
    return failed


def port_problems(
    listeners: Sequence[L7Listener], failed: Mapping[Address, int], node: str
) -> tuple[list[L7Listener], tuple[Problem, ...]]:
    """(the listeners that can be served, a Problem for each one that cannot).
    A listener with one address that cannot be bound is left out whole: its
    status is one condition, and half a listener would contradict it."""
    served: list[L7Listener] = []
    problems: list[Problem] = []
    for ls in listeners:
        reasons = [
            _reason(addr, failed[addr], node) for addr in sorted(addresses([ls])) if addr in failed
        ]
        if not reasons:
            served.append(ls)
            continue
        problems.append(Problem(ls.owner, None, "; ".join(reasons), PORT_UNAVAILABLE))
    return served, tuple(problems)


def _reason(addr: Address, err: int, node: str) -> str:
    ip, port = addr
    shown = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    if err == errno.EADDRINUSE:
        return f"{shown} is in use by another process on node {node}"
    if err == errno.EADDRNOTAVAIL:
        return f"{shown} cannot be bound on node {node}: {ip} is not one of its addresses"
    if err == errno.EACCES:
        return f"{shown} cannot be bound on node {node}: permission denied"
    return f"{shown} cannot be bound on node {node}: {os.strerror(err)}"


class SocketProbe:
    """Binds probe sockets in the network namespace `netns` (a name under
    /run/netns; None: this process's own), and reads listening sockets from
    /proc."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def unbindable(self, addresses: Collection[Address]) -> dict[Address, int]:
        if not addresses:
            return {}
        if self.netns is None:
            return _bind_all(addresses)
        # setns(2) moves only the calling thread: a short-lived one, so the
        # agent's own threads never leave their namespace.
        with concurrent.futures.ThreadPoolExecutor(1, "port-probe") as pool:
            return pool.submit(_in_netns, self.netns, addresses).result()

    def listening(self, pids: Collection[int]) -> frozenset[Address]:
        out: set[Address] = set()
        for pid in pids:
            sockets = _listening_sockets(pid)
            if not sockets:
                continue
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    addr = sockets.get(int(target[8:-1]))
                    if addr is not None:
                        out.add(addr)
        return frozenset(out)


def _bind_all(addresses: Collection[Address]) -> dict[Address, int]:
    failed: dict[Address, int] = {}
    for ip, port in addresses:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except OSError as exc:
                if exc.errno in UNUSABLE:
                    failed[(ip, port)] = exc.errno
    return failed


def _in_netns(netns: str, addresses: Collection[Address]) -> dict[Address, int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)
    return _bind_all(addresses)


def _listening_sockets(pid: int) -> dict[int, Address]:
    """inode -> address of the TCP sockets in LISTEN state in `pid`'s namespace."""
    out: dict[int, Address] = {}
    for name, v6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            hex_ip, hex_port = fields[1].split(":")
            out[int(fields[9])] = (_proc_ip(hex_ip, v6), int(hex_port, 16))
    return out


def _proc_ip(hex_ip: str, v6: bool) -> str:
    """/proc/net/tcp{,6} print addresses as 32-bit words in host order."""
    raw = bytes.fromhex(hex_ip)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    words = raw
    return str(ipaddress.IPv6Address(words) if v6 else ipaddress.IPv4Address(words))
