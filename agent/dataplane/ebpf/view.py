"""Reading the eBPF dataplane's maps back: what is programmed, and the counters.

Owns the reading of the frontends, backends and stats maps into the
dataplane-neutral `ProgrammedFrontend` and `FrontendCounters`, for the running
dataplane and for `EbpfView`, which opens the maps of a dataplane some agent
left (`gatewaylb status`) without compiling, attaching or writing anything.
Never writes a map.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Mapping

from agent.dataplane.base import FrontendCounters, ProgrammedFrontend
from agent.dataplane.bpf.layouts import Key, backend_of, key_of
from agent.dataplane.bpf.maps import Map, Maps, open_of_program, open_pinned


def read_programmed(maps: Maps) -> list[ProgrammedFrontend]:
    """The frontends and backends the maps hold."""
    fes: dict[int, tuple[Key, int]] = {}
    for k, v in maps["frontends"].items():
        fes[v.id] = (key_of(k), v.reject_weight)
    backends: dict[int, list[tuple[str, int, int]]] = {i: [] for i in fes}
    for _bk, bv in maps["backends"].items():
        if bv.frontend_id in backends:
            backends[bv.frontend_id].append((*backend_of(bv), bv.weight))
    out = [
        ProgrammedFrontend(
            vip=key[0],
            protocol=key[1],
            port=key[2],
            backends=tuple(sorted(backends[fid])),
            reject_weight=rw,
        )
        for fid, (key, rw) in fes.items()
    ]
    return sorted(out, key=lambda p: (p.vip, p.protocol, p.port))


def read_counters(
    maps: Maps,
    frontends: Iterable[tuple[Key, int, Iterable[tuple[tuple[str, int], int]]]],
) -> list[FrontendCounters]:
    """Counters of the frontends given as (key, frontend id, [((ip, port), backend id)])."""
    fe_stats, be_stats = maps["fe_stats"], maps["be_stats"]
    out: list[FrontendCounters] = []
    for key, fid, backends in sorted(frontends, key=lambda f: f[0]):
        per_cpu = fe_stats.get_percpu(ctypes.c_uint32(fid))
        conns = {
            ipp: sum(c.flows for c in be_stats.get_percpu(ctypes.c_uint32(bid)))
            for ipp, bid in sorted(backends)
        }
        out.append(
            FrontendCounters(
                vip=key[0],
                protocol=key[1],
                port=key[2],
                packets=sum(c.packets for c in per_cpu),
                bytes=sum(c.bytes for c in per_cpu),
                backend_connections=conns,
            )
        )
    return out


class EbpfView:
    """The maps of an eBPF dataplane, opened for reading only: nothing is
    compiled, attached or written.  Found through the pins, or through the
    maps a tc program of ours uses when the pins are out of sight (a bpf
    filesystem private to the mount namespace of the agent that made them)."""

    name = "ebpf"

    def __init__(self, maps: Mapping[str, Map], where: str) -> None:
        self.maps = maps
        self.where = where  # how the maps were found, for people

    @classmethod
    def from_pins(cls, pin_dir: str) -> EbpfView:
        return cls(open_pinned(pin_dir), f"pins in {pin_dir}")

    @classmethod
    def from_program(cls, prog_id: int) -> EbpfView:
        """The maps program `prog_id` (our tc ingress program) uses."""
        return cls(open_of_program(prog_id), f"maps of tc program {prog_id}")

    def programmed(self) -> list[ProgrammedFrontend]:
        return read_programmed(self.maps)

    def read_counters(self) -> list[FrontendCounters]:
        # No agent's memory to ask: the backend ids come from the backends map.
        backends: dict[int, list[tuple[tuple[str, int], int]]] = {}
        for bk, bv in self.maps["backends"].items():
            backends.setdefault(bv.frontend_id, []).append((backend_of(bv), int(bk.value)))
        return read_counters(
            self.maps,
            ((key_of(k), v.id, backends.get(v.id, [])) for k, v in self.maps["frontends"].items()),
        )

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
