"""What gatewaylb holds in this node's kernel, found without being told where.

`gatewaylb status` and `gatewaylb cleanup` must see what any earlier run left,
whatever its flags were (dataplane, interfaces, pin directory, cgroup) and even
when its bpf filesystem was private to its own mount namespace (`ip netns exec`
mounts a fresh /sys, so pins made there vanish with the agent while its tc
programs stay attached).  So everything is found by name and well-known handle
in the kernel itself:

- tc filters at gatewaylb's priority whose name ends in ":gatewaylb", on every
  interface of this network namespace;
- cgroup v2 sock_addr programs named `glb_*` that use the maps of one of those
  tc programs (or that are pinned in a pin directory seen here), on any cgroup
  of the hierarchies mounted here;
- inet nftables tables named `gatewaylb`, `gatewaylb-*` or `gatewaylb_*`;
- directories on a bpf filesystem holding gatewaylb's map pins.

Never touches other filters, programs, tables or pins.  Works in the network
namespace of the calling thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.dataplane.bpf import EbpfError
from agent.dataplane.bpf.attach import (
    CGROUP_HOOKS,
    PROGRAM_PREFIX,
    TC_EGRESS,
    TC_HANDLE,
    TC_INGRESS,
    TC_PRIO,
)
from agent.dataplane.bpf.layouts import MAPS
from agent.dataplane.bpf.mounts import mounts_of
from agent.dataplane.bpf.syscall import Bpf as _Bpf
from agent.dataplane.ebpf.view import EbpfView

log = logging.getLogger(__name__)

TC_NAME_SUFFIX: Final = ":gatewaylb"
NFT_TABLE_NAME: Final = re.compile(r"^gatewaylb([-_].*)?$")
PIN_MARKERS: Final = ("frontends", "fe_stats")  # a directory with these holds our maps
MAX_CGROUPS: Final = 100_000  # a walk bound: cgroup trees of real nodes hold a few thousand

# program -> the tail of its config path under an agent's --run-dir
RUN_DIR_LAYOUT: Final = {"haproxy": ("proxy", "haproxy.cfg"), "gobgpd": ("bgp", "gobgpd.toml")}

_TCA_OPTIONS: Final = 2
_TCA_BPF_ID: Final = 11
_NLMSG_AND_TCMSG: Final = 16 + 20


@dataclass(frozen=True, slots=True)
class TcProgram:
    ifname: str
    ifindex: int
    direction: str  # ingress | egress
    prog_id: int
    name: str  # the filter's name: "glb_ingress:gatewaylb"


@dataclass(frozen=True, slots=True)
class CgroupProgram:
    cgroup: str
    attach_type: int
    prog_id: int
    name: str
    map_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Inventory:
    tc: tuple[TcProgram, ...] = ()
    cgroup: tuple[CgroupProgram, ...] = ()
    nft_tables: tuple[str, ...] = ()
    pin_dirs: tuple[str, ...] = ()
    # cgroup programs named like ours that belong to no run seen here (an agent
    # of another network namespace shares the cgroup tree): left alone.
    foreign_cgroup: tuple[CgroupProgram, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.tc or self.cgroup or self.nft_tables or self.pin_dirs)

    @property
    def ingress_program(self) -> int | None:
        """The id of one tc ingress program of ours (its maps are the dataplane's)."""
        return next((t.prog_id for t in self.tc if t.direction == "ingress"), None)


# -- finding --------------------------------------------------------------------------


def _filter_prog_id(msg: Any) -> int:
    """TCA_BPF_ID of a filter message; pyroute2 0.9 does not decode it."""
    raw: bytes = msg.data[msg.offset : msg.offset + msg.length]
    for typ, value in _nlattrs(raw, _NLMSG_AND_TCMSG, len(raw)):
        if typ == _TCA_OPTIONS:
            for inner, data in _nlattrs(value, 0, len(value)):
                if inner == _TCA_BPF_ID and len(data) >= 4:
                    return int(struct.unpack_from("=I", data)[0])
    return 0


def _nlattrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    pos = start
    while pos + 4 <= end:
        length, typ = struct.unpack_from("=HH", buf, pos)
        if length < 4:
            return
        yield typ & 0x3FFF, buf[pos + 4 : pos + length]
        pos += (length + 3) & ~3


def find_tc_programs() -> list[TcProgram]:
    from pyroute2 import IPRoute

    found: list[TcProgram] = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            ifname = str(link.get_attr("IFLA_IFNAME"))
            index = int(link["index"])
            for direction, parent in (("ingress", TC_INGRESS), ("egress", TC_EGRESS)):
                try:
                    filters = ipr.get_filters(index, parent=parent)
                except Exception:  # no clsact qdisc: EINVAL/ENOENT
                    continue
                for msg in filters:
                    options = msg.get_attr("TCA_OPTIONS")
                    name = options.get_attr("TCA_BPF_NAME") if options is not None else None
                    if (msg["info"] >> 16) != TC_PRIO or not str(name or "").endswith(
                        TC_NAME_SUFFIX
                    ):
                        continue
                    found.append(
                        TcProgram(ifname, index, direction, _filter_prog_id(msg), str(name))
                    )
    return sorted(found, key=lambda t: (t.ifname, t.direction))


def cgroup2_mounts() -> list[str]:
    """Mount points of the cgroup v2 hierarchy seen by this process."""
    return mounts_of("cgroup2")


def _cgroup_dirs(roots: Iterable[str]) -> Iterator[str]:
    seen = 0
    for root in roots:
        for directory, _dirs, _files in os.walk(root):
            yield directory
            seen += 1
            if seen >= MAX_CGROUPS:
                log.warning("event=cgroup_walk_truncated after=%d", seen)
                return


def find_cgroup_programs(roots: Iterable[str]) -> list[CgroupProgram]:
    found: list[CgroupProgram] = []
    for directory in _cgroup_dirs(roots):
        try:
            cg = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            for attach_type in sorted({t for _, t in CGROUP_HOOKS}):
                try:
                    ids = _Bpf.prog_query(cg, attach_type)
                except OSError:
                    continue
                for prog_id in ids:
                    info = _prog_info(prog_id)
                    if info is not None and info[0].startswith(PROGRAM_PREFIX):
                        found.append(
                            CgroupProgram(directory, attach_type, prog_id, info[0], info[1])
                        )
        finally:
            os.close(cg)
    return found


def _prog_info(prog_id: int) -> tuple[str, tuple[int, ...]] | None:
    try:
        fd = _Bpf.prog_fd_by_id(prog_id)
    except OSError:
        return None
    try:
        _id, name, map_ids = _Bpf.prog_info(fd)
        return name, map_ids
    finally:
        os.close(fd)


def find_nft_tables() -> list[str]:
    from agent.dataplane.nft.netlink import NetlinkReader

    reader = NetlinkReader()
    try:
        return sorted(n for n in reader.tables() if NFT_TABLE_NAME.match(n))
    finally:
        reader.close()


def find_pin_dirs(extra: Iterable[str] = ()) -> list[str]:
    """Directories holding our map pins: the given ones, and any directory
    one level under a mounted bpf filesystem."""
    candidates = {Path(p) for p in extra}
    for mount in mounts_of("bpf"):
        with contextlib.suppress(OSError):
            candidates.update(p for p in Path(mount).iterdir() if p.is_dir())
    return sorted(str(p) for p in candidates if all((p / m).exists() for m in PIN_MARKERS))


def _pinned_program_ids(pin_dirs: Iterable[str]) -> set[int]:
    ids: set[int] = set()
    for directory in pin_dirs:
        for prog, _ in CGROUP_HOOKS:
            pin = Path(directory) / f"prog_{prog}"
            try:
                fd = _Bpf.obj_get(str(pin))
            except OSError:
                continue
            try:
                ids.add(_Bpf.prog_info(fd)[0])
            finally:
                os.close(fd)
    return ids


def _pinned_map_id(directory: str) -> int | None:
    try:
        fd = _Bpf.obj_get(str(Path(directory) / "frontends"))
    except OSError:
        return None
    try:
        return _Bpf.map_name(fd)[0]
    finally:
        os.close(fd)


def scan(pin_dirs: Iterable[str] = (), cgroup_roots: Iterable[str] | None = None) -> Inventory:
    """Everything of ours this process can see.

    Pins and cgroups are shared by every network namespace on the node, so
    they count as ours only when they belong to a run seen here: a pin
    directory whose maps a tc program of this namespace uses, a cgroup
    program that uses those maps or is pinned there.  With no tc program
    here, the named `pin_dirs` are taken as ours (what a run left when its
    filters are already gone).  `cgroup_roots` defaults to every mounted
    cgroup v2 hierarchy."""
    tc = find_tc_programs()
    our_maps: set[int] = set()
    for t in tc:
        info = _prog_info(t.prog_id)
        if info is not None:
            our_maps.update(info[1])
    named = {str(Path(p)) for p in pin_dirs}
    pins = [
        d
        for d in find_pin_dirs(pin_dirs)
        if (_pinned_map_id(d) in our_maps) or (not tc and d in named)
    ]
    roots = cgroup2_mounts() if cgroup_roots is None else list(cgroup_roots)
    cgroup = find_cgroup_programs(roots)
    pinned = _pinned_program_ids(pins)
    ours = [c for c in cgroup if c.prog_id in pinned or our_maps.intersection(c.map_ids)]
    foreign = [c for c in cgroup if c not in ours]
    return Inventory(
        tc=tuple(tc),
        cgroup=tuple(ours),
        nft_tables=tuple(find_nft_tables()),
        pin_dirs=tuple(pins),
        foreign_cgroup=tuple(foreign),
    )


def open_ebpf_view(inventory: Inventory) -> EbpfView | None:
    """The maps of the eBPF dataplane this network namespace runs: those its
    tc program uses, else (no program attached) those pinned in a pin
    directory found here."""
    prog = inventory.ingress_program
    if prog:
        return EbpfView.from_program(prog)
    for directory in inventory.pin_dirs:
        try:
            return EbpfView.from_pins(directory)
        except EbpfError as exc:
            log.debug("event=pins_unreadable dir=%s error=%s", directory, exc)
    return None


def find_run_dirs() -> list[Path]:
    """Run directories of the proxy workers and BGP speakers that agents
    started in this network namespace, read from the processes themselves
    (`haproxy ... -f RUN/proxy/haproxy.cfg`, `gobgpd ... -f RUN/bgp/gobgpd.toml`)."""
    try:
        own = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return []
    found: set[Path] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if os.stat(entry / "ns" / "net").st_ino != own:
                continue
        except OSError:
            continue
        program = os.path.basename(argv[0].decode(errors="replace"))
        layout = RUN_DIR_LAYOUT.get(program)
        if layout is None or b"-f" not in argv[:-1]:
            continue
        config = Path(argv[argv.index(b"-f") + 1].decode(errors="replace"))
        if config.parts[-2:] == layout:
            found.add(config.parent.parent)
    return sorted(found)


# -- removing -------------------------------------------------------------------------


def remove(inventory: Inventory) -> list[str]:
    """Remove everything in `inventory`, tc filters first (traffic stops being
    translated before the nft table that completes the translation goes).
    Returns one line per thing removed.  Anything already gone is skipped."""
    done: list[str] = []
    if inventory.tc:
        remove_tc(inventory.tc)
        places = sorted({f"{t.ifname} {t.direction}" for t in inventory.tc})
        done.append(f"tc programs of gatewaylb on {', '.join(places)}")
    for c in inventory.cgroup:
        if _detach_cgroup(c):
            done.append(f"cgroup program {c.name} (id {c.prog_id}) on {c.cgroup}")
    if inventory.nft_tables:
        _delete_nft_tables(inventory.nft_tables)
        done.append(f"nftables tables {', '.join(f'inet {t}' for t in inventory.nft_tables)}")
    for directory in inventory.pin_dirs:
        _remove_pins(Path(directory))
        done.append(f"pinned maps in {directory}")
    return done


def remove_tc(programs: Iterable[TcProgram]) -> None:
    from pyroute2 import IPRoute

    parents = {"ingress": TC_INGRESS, "egress": TC_EGRESS}
    with IPRoute() as ipr:
        indexes = set()
        for t in programs:
            indexes.add(t.ifindex)
            with contextlib.suppress(Exception):  # gone meanwhile
                ipr.tc(
                    "del-filter",
                    "bpf",
                    t.ifindex,
                    TC_HANDLE,
                    parent=parents[t.direction],
                    prio=TC_PRIO,
                )
        for index in indexes:
            # The clsact qdisc goes only when nobody else has a filter on it.
            remaining = 0
            for parent in parents.values():
                with contextlib.suppress(Exception):
                    remaining += len(ipr.get_filters(index, parent=parent))
            if remaining == 0:
                with contextlib.suppress(Exception):
                    ipr.tc("del", "clsact", index)


def _detach_cgroup(c: CgroupProgram) -> bool:
    try:
        cg = os.open(c.cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        prog = _Bpf.prog_fd_by_id(c.prog_id)
    except OSError:
        os.close(cg)
        return False
    try:
        _Bpf.prog_detach(cg, prog, c.attach_type)
        return True
    except OSError:
        return False
    finally:
        os.close(prog)
        os.close(cg)


def _delete_nft_tables(tables: Iterable[str]) -> None:
    import nftables  # untyped binding

    nft: Any = nftables.Nftables()
    for table in tables:
        # One command each: a table deleted meanwhile fails alone.
        nft.json_cmd({"nftables": [{"delete": {"table": {"family": "inet", "name": table}}}]})


def _remove_pins(directory: Path) -> None:
    names = {pin for pin, *_ in MAPS.values()} | {f"prog_{p}" for p, _ in CGROUP_HOOKS}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()
