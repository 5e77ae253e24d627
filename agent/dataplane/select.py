"""Choosing and opening a kernel dataplane (`--dataplane auto|ebpf|nftables`)."""

from __future__ import annotations

import logging

from agent.dataplane.base import Dataplane

log = logging.getLogger(__name__)

MODES = ("auto", "ebpf", "nftables")


class DataplaneUnavailable(RuntimeError):
    pass


def available_modes() -> dict[str, str]:
    """mode -> "available" or why not, probed on this kernel."""
    out: dict[str, str] = {}
    try:
        import nftables  # noqa: F401

        out["nftables"] = "available"
    except ImportError as exc:
        out["nftables"] = f"unavailable: libnftables binding missing ({exc})"
    out["ebpf"] = "unavailable: the eBPF dataplane is not built yet"
    return out


def resolve_mode(mode: str) -> str:
    modes = available_modes()
    if mode == "auto":
        chosen = "ebpf" if modes.get("ebpf") == "available" else "nftables"
        log.info("event=dataplane_selected mode=%s requested=auto", chosen)
        mode = chosen
    if modes.get(mode) != "available":
        raise DataplaneUnavailable(f"dataplane {mode}: {modes.get(mode, 'unknown mode')}")
    return mode


def open_dataplane(mode: str, interfaces: tuple[str, ...] = ()) -> Dataplane:
    """Open (and adopt the kernel state of) the dataplane of `mode`."""
    mode = resolve_mode(mode)
    if mode == "nftables":
        from agent.dataplane.nftables import NftablesDataplane

        return NftablesDataplane(interfaces=interfaces)
    raise DataplaneUnavailable(f"dataplane {mode} is not available")
