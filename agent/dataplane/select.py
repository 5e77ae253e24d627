"""Choosing, opening and removing a kernel dataplane (`--dataplane auto|ebpf|nftables`).

`auto` takes ebpf when bcc can compile programs here (bcc importable, kernel
headers present, a bpf filesystem for the pins), else nftables, and says which
in the log.  Owns the node-level preparation the eBPF dataplane needs in
standalone mode (mounting the bpf filesystem where systemd would have).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from agent.dataplane.base import Dataplane
from agent.dataplane.ebpf import mount_fstype, on_bpffs

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
        from agent.dataplane.nftables import NftablesDataplane

        return NftablesDataplane(interfaces=options.interfaces)
    from agent.dataplane.ebpf import EbpfDataplane, EbpfError

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


def programmed_dataplane(options: DataplaneOptions = DataplaneOptions()) -> Dataplane:
    """The dataplane whose state is in the kernel now, opened for reading."""
    if Path(options.bpf_pin_dir).is_dir() and _ebpf_problem() is None:
        from agent.dataplane.ebpf import EbpfDataplane

        # No interfaces and no cgroup: adopt the maps, attach nothing new.
        return EbpfDataplane(interfaces=(), pin_dir=options.bpf_pin_dir, cgroup_path=None)
    from agent.dataplane.nftables import NftablesDataplane

    return NftablesDataplane()


def cleanup_all(options: DataplaneOptions = DataplaneOptions()) -> list[str]:
    """Remove what either dataplane left in the kernel; safe to run twice."""
    removed: list[str] = []
    from agent.dataplane.nftables import NftablesDataplane

    NftablesDataplane().cleanup()
    removed.append("nftables tables of gatewaylb")
    if Path(options.bpf_pin_dir).is_dir() and _ebpf_problem() is None:
        from agent.dataplane.ebpf import EbpfDataplane

        interfaces = options.interfaces or default_interfaces()
        EbpfDataplane(
            interfaces=interfaces, pin_dir=options.bpf_pin_dir, cgroup_path=options.cgroup_path
        ).cleanup()
        where = ", ".join(interfaces) or "no interface"
        removed.append(f"eBPF programs on {where} and pins in {options.bpf_pin_dir}")
    return removed
