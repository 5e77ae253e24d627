"""Network namespace primitives for the lab: create, delete, run code inside.

Owns only namespaces whose names carry this run's prefix (`glb-<6 hex>-`) and the
processes it started in them.  It never touches the host's namespace: every
link is created inside a lab namespace (`ip -n NS ...`), every command is an
argument list (no shell), and nothing here reads or writes the host ruleset.

Why a thread per namespace: setns(2) switches only the calling thread, and
libnftables and netlink sockets work in the namespace of the thread that opens
them, so code that must run "in the node" runs in a worker thread parked there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from agent.osutil import alive

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
# One file per live run: `<run id>.pid` holds the creator's pid, so that
# cleanup_leftovers removes only namespaces whose creator is gone (labs of
# concurrent runs are left alone).
RUN_DIR = Path("/run/gatewaylb-lab")
CLONE_NEWNET = 0x40000000
IP = "/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else "ip"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class LabError(RuntimeError):
    pass


def new_prefix() -> str:
    """`glb-<6 hex>-`: unique per run, short enough to leave room for a role."""
    return f"glb-{secrets.token_hex(3)}-"


def run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: rc={proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = [IP] + (["-n", ns] if ns else []) + list(args)
    return run(argv, check=check)


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The argument list that runs `argv` inside namespace `ns`.

    nsenter rather than `ip netns exec`: the latter also remounts /sys in a new
    mount namespace, which hides the bpf filesystem and cgroup2 mounts that an
    agent with the eBPF dataplane must see.
    """
    return ["nsenter", f"--net={NETNS_DIR / ns}", "--", *argv]


def create(name: str) -> None:
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", ns=name)
    # No duplicate address detection: link-local addresses would stay
    # tentative for ~2 s and IPv6 neighbour discovery with them.
    for scope in ("all", "default"):
        sysctl(name, f"net.ipv6.conf.{scope}.accept_dad", "0")


def remove(name: str) -> None:
    """Kill what still runs inside, then delete; a netns kept alive by a process
    would otherwise survive its name."""
    for pid in pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ip("netns", "delete", name, check=False)


def pids(name: str) -> list[int]:
    out = ip("netns", "pids", name, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def sysctl(ns: str, key: str, value: str) -> None:
    run(exec_argv(ns, ["sysctl", "-q", "-w", f"{key}={value}"]))


def register_run(prefix: str) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / f"{prefix.strip('-')}.pid").write_text(str(os.getpid()))


def unregister_run(prefix: str) -> None:
    (RUN_DIR / f"{prefix.strip('-')}.pid").unlink(missing_ok=True)


def cleanup_leftovers(prefix: str = "glb-") -> list[str]:
    """Delete namespaces named `prefix...` whose creating run is no longer alive
    (a killed test or demo).  Returns the names removed."""
    removed: list[str] = []
    if not NETNS_DIR.exists():
        return removed
    for entry in sorted(NETNS_DIR.iterdir()):
        name = entry.name
        if not name.startswith(prefix):
            continue
        parts = name.split("-")
        run_id = "-".join(parts[:2]) if len(parts) >= 3 else ""
        pidfile = RUN_DIR / f"{run_id}.pid"
        try:
            owner = int(pidfile.read_text())
        except (OSError, ValueError):
            owner = 0
        if owner == os.getpid() or (owner and alive(owner)):
            continue
        remove(name)
        pidfile.unlink(missing_ok=True)
        removed.append(name)
    return removed


# -- running code inside a namespace ------------------------------------------------


def setns_current_thread(name: str) -> None:
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsWorker:
    """One thread parked in a namespace; `call` runs a callable there.

    Objects that hold netlink sockets (an NftablesDataplane) should be made
    and used through the same worker.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"netns-{name}",
            initializer=setns_current_thread,
            initargs=(name,),
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def run_in(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` once in namespace `name` (a fresh thread; the caller stays put)."""
    worker = NetnsWorker(name)
    try:
        return worker.call(fn, *args, **kwargs)
    finally:
        worker.close()


# -- a run's set of namespaces ------------------------------------------------------------


class InNamespace(Protocol):
    """A lab host or member: anything that names its namespace."""

    @property
    def ns(self) -> str: ...


Where = str | InNamespace


class NamespaceSet:
    """Context manager: the namespaces of one run, the processes started in
    them and the worker threads parked there, all removed on any exit
    (BaseException included: KeyboardInterrupt must not leak namespaces).
    A topology subclasses it and builds itself in `_build`."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or new_prefix()
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._workers: dict[str, NetnsWorker] = {}

    def __enter__(self) -> Self:
        register_run(self.prefix)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for worker in self._workers.values():
            worker.close()
        self._workers.clear()
        # Removing a namespace also kills what still runs in it (daemons the
        # processes above started, e.g. gobgpd).
        for name in reversed(self._namespaces):
            remove(name)
        self._namespaces.clear()
        unregister_run(self.prefix)

    def add_namespace(self, name: str) -> None:
        create(name)
        self._namespaces.append(name)

    def worker(self, where: Where) -> NetnsWorker:
        """A thread parked in that namespace, kept until the set closes."""
        ns = where if isinstance(where, str) else where.ns
        if ns not in self._workers:
            self._workers[ns] = NetnsWorker(ns)
        return self._workers[ns]

    def call(self, where: Where, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.worker(where).call(fn, *args, **kwargs)

    def popen(self, where: Where, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        ns = where if isinstance(where, str) else where.ns
        proc = subprocess.Popen(exec_argv(ns, argv), **kwargs)
        self._procs.append(proc)
        return proc
