"""Choosing, opening and removing a kernel dataplane (`--dataplane auto|ebpf|nftables`).

`auto` takes ebpf when bcc can compile programs here (bcc importable, kernel
headers present, a bpf filesystem for the pins), else nftables, and says which
in the log.  Owns the node-level preparation the eBPF dataplane needs in
standalone mode (mounting the bpf filesystem where systemd would have).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from agent.dataplane.base import Dataplane
from agent.dataplane.bpf.mounts import mount_fstype, on_bpffs

log = logging.getLogger(__name__)

MODES = ("auto", "ebpf", "nftables")
DEFAULT_BPF_PIN_DIR = "/sys/fs/bpf/gatewaylb"
BPF_FS = Path("/sys/fs/bpf")


class DataplaneUnavailable(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class DataplaneOptions:
    interfaces: tuple[str, ...] = ()
    bpf_pin_dir: str = DEFAULT_BPF_PIN_DIR
    cgroup_path: str | None = None


def ensure_bpffs(pin_dir: str) -> None:
    """Mount the bpf filesystem at /sys/fs/bpf when the pins go there and
    nothing mounted it (systemd normally does; this machine's init does not)."""
    pin = Path(pin_dir)
    if on_bpffs(pin) or BPF_FS not in pin.parents:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.mount(b"bpf", bytes(BPF_FS), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise DataplaneUnavailable(
            f"cannot mount the bpf filesystem on {BPF_FS}: {os.strerror(err)}"
        )
    log.info("event=bpffs_mounted path=%s", BPF_FS)
    if private_mount_namespace():
        log.warning(
            "event=bpffs_private path=%s pin_dir=%s problem=%r fix=%r",
            BPF_FS,
            pin_dir,
            "this bpf filesystem lives in this agent's own mount namespace (ip netns exec, "
            "unshare): its pins vanish when the agent exits, so a restarted agent cannot adopt "
            "the maps and established flows lose their state; `gatewaylb status` and `cleanup` "
            "still find the programs through their tc filters",
            "mount a bpf filesystem every run shares before entering the namespace, e.g. "
            "`mkdir -p /run/gatewaylb/bpf && mount -t bpf bpf /run/gatewaylb/bpf`, and pass "
            "--bpf-pin-dir /run/gatewaylb/bpf/gatewaylb",
        )


def private_mount_namespace() -> bool:
    """True when this process is in another mount namespace than one of its
    ancestors (`ip netns exec` and `unshare -m` make one for the command they
    run), so a file system it mounts is not seen by the shell that started it
    nor by a later `gatewaylb status`.  Ancestors whose namespace cannot be
    read (another user namespace) are skipped."""
    try:
        own = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return False
    pid = os.getppid()
    while pid > 1:
        try:
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino != own:
                return True
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        ppid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")), "0")
        pid = int(ppid)
    return False


def cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (pure v2, or hybrid's "unified")."""
    for candidate in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if mount_fstype(candidate) == "cgroup2":
            return str(candidate)
    return None


def _ebpf_problem() -> str | None:
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        return f"bcc (Debian python3-bpfcc) is not importable: {exc}"
    build = Path("/lib/modules") / platform.release() / "build"
    if not build.exists():
        return f"no kernel headers at {build} (make setup links Debian's linux-headers)"
    return None


def available_modes() -> dict[str, str]:
    """mode -> "available" or why not, probed on this kernel."""
    out: dict[str, str] = {}
    try:
        import nftables  # noqa: F401

        out["nftables"] = "available"
    except ImportError as exc:
        out["nftables"] = f"unavailable: libnftables binding missing ({exc})"
    problem = _ebpf_problem()
    out["ebpf"] = "available" if problem is None else f"unavailable: {problem}"
    return out


def resolve_mode(mode: str) -> str:
    modes = available_modes()
    if mode == "auto":
        chosen = "ebpf" if modes.get("ebpf") == "available" else "nftables"
        log.info("event=dataplane_selected mode=%s requested=auto ebpf=%r", chosen, modes["ebpf"])
        mode = chosen
    if modes.get(mode) != "available":
        raise DataplaneUnavailable(f"dataplane {mode}: {modes.get(mode, 'unknown mode')}")
    return mode


def default_interfaces() -> tuple[str, ...]:
    """Every interface of this network namespace but lo and bridge devices:
    programs go on bridge ports, where they run before netfilter's bridge hooks."""
    from pyroute2 import IPRoute

    names: list[str] = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if name and name != "lo" and kind != "bridge":
                names.append(str(name))
    return tuple(sorted(names))


def open_dataplane(mode: str, options: DataplaneOptions = DataplaneOptions()) -> Dataplane:
    """Open (and adopt the kernel state of) the dataplane of `mode`."""
    mode = resolve_mode(mode)
    if mode == "nftables":
        from agent.dataplane.nft.dataplane import NftablesDataplane

        return NftablesDataplane(interfaces=options.interfaces)
    from agent.dataplane.bpf import EbpfError
    from agent.dataplane.ebpf.dataplane import EbpfDataplane

    ensure_bpffs(options.bpf_pin_dir)
    interfaces = options.interfaces or default_interfaces()
    log.info("event=ebpf_attach interfaces=%s cgroup=%s", ",".join(interfaces), options.cgroup_path)
    try:
        return EbpfDataplane(
            interfaces=interfaces,
            pin_dir=options.bpf_pin_dir,
            cgroup_path=options.cgroup_path,
        )
    except EbpfError as exc:
        raise DataplaneUnavailable(f"dataplane ebpf: {exc}") from exc


def cleanup_all(options: DataplaneOptions = DataplaneOptions()) -> list[str]:
    """Remove what any earlier run left in this network namespace's kernel,
    whichever dataplane, interfaces and pin directory it used (found by name
    in the kernel: see `inventory`); one line per thing removed.  Safe to run
    twice.  A cgroup named in `options.cgroup_path` is taken as ours whole:
    every glb_* program attached to it is detached."""
    from agent.dataplane import inventory

    found = inventory.scan(pin_dirs=[options.bpf_pin_dir])
    if options.cgroup_path:
        claimed = [c for c in found.foreign_cgroup if c.cgroup == options.cgroup_path]
        found = dataclasses.replace(
            found,
            cgroup=found.cgroup + tuple(claimed),
            foreign_cgroup=tuple(c for c in found.foreign_cgroup if c not in claimed),
        )
    removed = inventory.remove(found)
    for c in found.foreign_cgroup:
        log.warning(
            "event=cgroup_program_kept cgroup=%s program=%s id=%d reason=%r",
            c.cgroup,
            c.name,
            c.prog_id,
            "uses no map of a run seen in this network namespace (another namespace's "
            "agent?); pass --cgroup-path to remove it",
        )
    return removed
