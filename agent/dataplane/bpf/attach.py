"""Where the programs run: tc filters on interfaces, sock_addr hooks on a cgroup.

Owns the attach points and their well-known names: one tc filter per hook at a
fixed priority and handle on the clsact qdisc of each given interface, and
the eight cgroup v2 sock_addr hooks, each program pinned as prog_<name> beside
the maps so the next agent can find and replace it.  Swaps are without a gap:
`tc filter replace` on the same handle is atomic, and a cgroup gets the new
program before the old one is detached.  Never touches another tc filter, a
cgroup program not named like ours, or a map.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

from agent.dataplane.bpf import EbpfError
from agent.dataplane.bpf.syscall import F_ALLOW_MULTI, Bpf

log = logging.getLogger(__name__)

TC_PRIO: Final = 0xC1A0  # one well-known priority/handle per hook: replace is atomic
TC_HANDLE: Final = 0x1
TC_INGRESS: Final = "ffff:fff2"
TC_EGRESS: Final = "ffff:fff3"
TC_HOOKS: Final = (("glb_ingress", TC_INGRESS), ("glb_egress", TC_EGRESS))
PROGRAM_PREFIX: Final = "glb_"  # every program in bpf/ is named so

# (program, attach type) for the cgroup sock_addr hooks
CGROUP_HOOKS: Final = (
    ("glb_connect4", 10),  # BPF_CGROUP_INET4_CONNECT
    ("glb_sendmsg4", 14),  # BPF_CGROUP_UDP4_SENDMSG
    ("glb_recvmsg4", 19),  # BPF_CGROUP_UDP4_RECVMSG
    ("glb_getpeername4", 29),  # BPF_CGROUP_INET4_GETPEERNAME
    ("glb_connect6", 11),  # BPF_CGROUP_INET6_CONNECT
    ("glb_sendmsg6", 15),  # BPF_CGROUP_UDP6_SENDMSG
    ("glb_recvmsg6", 20),  # BPF_CGROUP_UDP6_RECVMSG
    ("glb_getpeername6", 30),  # BPF_CGROUP_INET6_GETPEERNAME
)


def attach_tc(interfaces: Iterable[str], fds: Mapping[str, int]) -> None:
    """Put the tc programs (`fds` by program name) on every interface."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for ifname in interfaces:
            links = ipr.link_lookup(ifname=ifname)
            if not links:
                raise EbpfError(f"interface {ifname} not found")
            idx = links[0]
            try:
                ipr.tc("add", "clsact", idx)
            except Exception as exc:  # pyroute2 NetlinkError: EEXIST when present
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise
            for prog, parent in TC_HOOKS:
                # replace on a fixed prio/handle swaps the program atomically.
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    idx,
                    TC_HANDLE,
                    fd=fds[prog],
                    name=f"{prog}:gatewaylb",
                    parent=parent,
                    prio=TC_PRIO,
                    classid=1,
                    direct_action=True,
                )


def detach_tc(interfaces: Iterable[str]) -> None:
    """Our filters on these interfaces, and their clsact qdisc when nobody
    else uses it (the same removal `gatewaylb cleanup` does)."""
    # Imported here: inventory imports the constants of this module.
    from agent.dataplane import inventory

    names = set(interfaces)
    inventory.remove_tc([t for t in inventory.find_tc_programs() if t.ifname in names])


def attach_cgroup(path: str, pin_dir: Path, load: Callable[[str, int], int]) -> None:
    """Attach new programs (`load(name, attach type)` gives each one's fd)
    first, then detach those of a previous instance (pinned as prog_<name>):
    both run for a moment, the second one sees an already translated address
    and does nothing, so no connect() is missed.  Programs of ours left
    attached without a pin (a bpf filesystem remounted under a running node,
    pins removed by hand) are detached too: the first of several hooks that
    translates wins, so a stale one would keep serving its old backends to
    every local process."""
    try:
        cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise EbpfError(f"cgroup {path} for the socket hooks: {exc.strerror}") from None
    try:
        mine: set[int] = set()
        for prog, attach_type in CGROUP_HOOKS:
            fd = load(prog, attach_type)
            Bpf.prog_attach(cg, fd, attach_type, F_ALLOW_MULTI)
            mine.add(Bpf.prog_info(fd)[0])
            pin = pin_dir / f"prog_{prog}"
            if pin.exists():
                _detach_pinned(cg, pin, attach_type)
                pin.unlink()
            Bpf.obj_pin(fd, str(pin))
        _detach_orphans(cg, path, mine)
    finally:
        os.close(cg)


def _detach_orphans(cg: int, path: str, mine: set[int]) -> None:
    for attach_type in sorted({t for _, t in CGROUP_HOOKS}):
        for prog_id in Bpf.prog_query(cg, attach_type):
            if prog_id in mine:
                continue
            try:
                fd = Bpf.prog_fd_by_id(prog_id)
            except OSError:
                continue  # detached meanwhile
            try:
                name = Bpf.prog_info(fd)[1]
                if name.startswith(PROGRAM_PREFIX):
                    Bpf.prog_detach(cg, fd, attach_type)
                    log.warning(
                        "event=ebpf_orphan_hook_detached cgroup=%s program=%s id=%d",
                        path,
                        name,
                        prog_id,
                    )
            except OSError as exc:
                log.warning("event=ebpf_orphan_hook_kept id=%d error=%s", prog_id, exc)
            finally:
                os.close(fd)


def detach_cgroup(pin_dir: Path, cgroup_path: str | None) -> None:
    """Detach the pinned programs from `cgroup_path` and drop their pins."""
    for prog, attach_type in CGROUP_HOOKS:
        pin = pin_dir / f"prog_{prog}"
        if not pin.exists():
            continue
        if cgroup_path and os.path.isdir(cgroup_path):
            cg = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _detach_pinned(cg, pin, attach_type)
            finally:
                os.close(cg)
        pin.unlink()


def _detach_pinned(cg: int, pin: Path, attach_type: int) -> None:
    """Detach the program pinned at `pin` from cgroup `cg`; one already
    detached (by hand, or its cgroup's programs replaced) is no error."""
    old = Bpf.obj_get(str(pin))
    try:
        with contextlib.suppress(OSError):
            Bpf.prog_detach(cg, old, attach_type)
    finally:
        os.close(old)
