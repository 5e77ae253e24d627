"""Turn this process into one container of a pod, then exec its entry point.

Run by the node agent as `python3 launch.py SPEC.json` with the container's
stdout and stderr already attached to the log pipes.  In order, as a container
runtime would:

1. join the tracking cgroups (so that every process the container forks is
   found and killed when the container stops, as a runtime kills its cgroup);
2. join the pod's network namespace (none for hostNetwork pods);
3. unshare a mount namespace (and a UTS one with the pod's hostname for pods
   with a network of their own), make every mount a slave of the host's
   (HostToContainer propagation), then bind the pod's volumes at their mount
   paths, read-only where asked;
4. drop every capability outside the container's securityContext from the
   bounding set, clear the inheritable set, and set no_new_privs when
   allowPrivilegeEscalation is false;
5. chdir to workingDir and execve.

Standard library only: it runs before anything of the project is importable
in the container's view.  A failure is written to SPEC["errorFile"] and the
process exits 128, which the node agent reports as StartError.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any, NoReturn

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)
spec: dict[str, Any] = {}


def fail(message: str) -> NoReturn:
    fd = spec.get("errorFd")
    if fd is not None:
        os.write(fd, message.encode())
    sys.stderr.write(f"container start failed: {message}\n")
    os._exit(128)


def checked(rc: int, what: str) -> None:
    if rc != 0:
        fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def mount(source: str | None, target: str, flags: int) -> None:
    checked(
        libc.mount(
            source.encode() if source else None, target.encode(), None, ctypes.c_ulong(flags), None
        ),
        f"mount {source} on {target}",
    )


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def limit_capabilities(keep: list[int]) -> None:
    """Root keeps, across execve, exactly its bounding set (plus the
    inheritable set, cleared here): the runtime's model of capabilities."""
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            checked(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    header = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)()
    checked(libc.capget(ctypes.byref(header), data), "capget")
    for d in data:
        d.inheritable = 0
    checked(libc.capset(ctypes.byref(header), data), "capset")


def main() -> NoReturn:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec.update(json.load(f))
    if spec.get("errorFile"):
        # Opened now: the mounts below may hide the node path it is on.
        spec["errorFd"] = os.open(
            spec["errorFile"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
        )
    for procs in spec.get("cgroups", []):
        with open(procs, "w", encoding="ascii") as f:
            f.write(str(os.getpid()))
    if spec.get("netns"):
        fd = os.open(spec["netns"], os.O_RDONLY)
        checked(libc.setns(fd, CLONE_NEWNET), f"join network namespace {spec['netns']}")
        os.close(fd)
    flags = CLONE_NEWNS | (CLONE_NEWUTS if spec.get("hostname") else 0)
    checked(libc.unshare(flags), "unshare")
    if spec.get("hostname"):
        name = spec["hostname"].encode()
        checked(libc.sethostname(name, len(name)), "sethostname")
    mount(None, "/", MS_REC | MS_SLAVE)
    # Every source is opened before the first mount: a mount (the container's
    # own /tmp) may hide the node path of a later source (a checkout in /tmp).
    sources = []
    for m in spec.get("mounts", []):
        try:
            sources.append(os.open(m["source"], os.O_PATH | os.O_CLOEXEC))
        except OSError as e:
            fail(f"mount source {m['source']}: {e.strerror}")
    for m, fd in zip(spec.get("mounts", []), sources, strict=True):
        mount(f"/proc/self/fd/{fd}", m["target"], MS_BIND | MS_REC)
        if m.get("readOnly"):
            mount(None, m["target"], MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    if spec.get("capabilities") is not None:
        limit_capabilities(spec["capabilities"])
    if spec.get("noNewPrivs"):
        checked(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if spec.get("workingDir"):
        try:
            os.chdir(spec["workingDir"])
        except OSError as e:
            fail(f"workingDir {spec['workingDir']}: {e.strerror}")
    argv: list[str] = spec["argv"]
    env: dict[str, str] = spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        fail(f'exec "{argv[0]}": {e.strerror}')


if __name__ == "__main__":
    main()
