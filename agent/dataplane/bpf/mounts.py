"""Where the bpf and cgroup v2 file systems are mounted, read from mountinfo.

Owns the reading of /proc/self/mountinfo (which mounts are visible, which
filesystem a path is on), for the pin directory, the cgroup hooks and the
cleanup.  Reads only: mounting is agent/dataplane/select.py's business.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process can reach."""
    return visible_mounts(Path("/proc/self/mountinfo").read_text().splitlines())


def visible_mounts(mountinfo: Iterable[str]) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of the mounts in mountinfo lines that
    are not hidden: a mount stacked on the same point, or on a directory
    above it, hides the earlier ones (a container's bind mount of a cgroup2
    subtree over the host's /sys/fs/cgroup hides /sys/fs/cgroup/unified)."""
    out: list[tuple[str, str]] = []
    for line in mountinfo:
        fields = line.split()
        point = fields[4]
        below = point.rstrip("/") + "/"
        out = [(m, k) for m, k in out if m != point and not m.startswith(below)]
        out.append((point, fields[fields.index("-") + 1]))
    return out


def mount_fstype(path: Path) -> str:
    """The type of the filesystem `path` is (or would be) on: the mount with
    the longest prefix of it in /proc/self/mountinfo ("bpf", "cgroup2", ...)."""
    best, fstype = "", ""
    target = str(path)
    for mnt, kind in _mounts():
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best, fstype = mnt, kind
    return fstype


def mounts_of(fstype: str) -> list[str]:
    """Mount points of every filesystem of type `fstype` ("bpf", "cgroup2")."""
    try:
        return sorted({mnt for mnt, kind in _mounts() if kind == fstype})
    except OSError:
        return []


def on_bpffs(path: Path) -> bool:
    return mount_fstype(path) == "bpf"
