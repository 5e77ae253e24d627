"""`gatewaylb status`: what this node's kernel holds and what its agent says.

Two sources, each read without flags that must match the run being looked at:
- the kernel, found by name (`agent.dataplane.inventory`): the eBPF maps
  through their pins or through the tc program that uses them, the nftables
  dataplane's tables, the VIP guard's refused-packet counter;
- the running agent's /metrics, when it answers: whether it is ready, who
  writes status (or why nobody can), how many objects it rejects.

Reads only; never writes to the kernel or starts anything.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.dataplane import inventory
from agent.dataplane.base import FrontendCounters, ProgrammedFrontend

log = logging.getLogger(__name__)

DEFAULT_AGENT_ADDRESS = "127.0.0.1:9469"


@dataclass(frozen=True, slots=True)
class DataplaneView:
    name: str  # ebpf | nftables
    where: str  # how it was found, for people
    frontends: tuple[ProgrammedFrontend, ...]
    counters: tuple[FrontendCounters, ...]
    problem: str = ""  # set when the dataplane is there but cannot be read


@dataclass(frozen=True, slots=True)
class AgentView:
    address: str
    reachable: bool
    problem: str = ""
    ready: bool = False
    dataplane: str = ""
    status_writer: str = ""  # state
    status_writer_reason: str = ""
    # (kind, reason) -> objects
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    kernel: inventory.Inventory
    dataplanes: tuple[DataplaneView, ...]
    unserved_packets: int | None  # None when there is no VIP guard here
    agent: AgentView


def read_dataplanes(found: inventory.Inventory) -> list[DataplaneView]:
    views: list[DataplaneView] = []
    if found.tc or found.pin_dirs:
        views.append(_ebpf_view(found))
    if any(_is_nftables_dataplane_table(t) for t in found.nft_tables):
        from agent.dataplane.nft.dataplane import NftablesDataplane

        plane = NftablesDataplane()
        views.append(
            DataplaneView(
                "nftables",
                "tables inet gatewaylb, gatewaylb-NN",
                tuple(plane.programmed()),
                tuple(plane.read_counters()),
            )
        )
    return views


def _is_nftables_dataplane_table(name: str) -> bool:
    from agent.dataplane.nft.layout import is_our_table

    return is_our_table(name)


def _ebpf_view(found: inventory.Inventory) -> DataplaneView:
    places = ", ".join(sorted({t.ifname for t in found.tc})) or "no interface"
    try:
        view = inventory.open_ebpf_view(found)
    except Exception as exc:
        return DataplaneView("ebpf", f"tc programs on {places}", (), (), f"maps unreadable: {exc}")
    if view is None:
        return DataplaneView("ebpf", f"tc programs on {places}", (), (), "no maps found")
    try:
        where = f"{view.where}; tc programs on {places}"
        return DataplaneView("ebpf", where, tuple(view.programmed()), tuple(view.read_counters()))
    finally:
        view.close()


def read_unserved(found: inventory.Inventory) -> int | None:
    from agent.dataplane.vips import TABLE, VIPGuard

    if TABLE not in found.nft_tables:
        return None
    return VIPGuard().unserved_packets()


def read_agent(address: str, timeout: float = 1.0) -> AgentView:
    """The agent's own account, from its /metrics and /readyz."""
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    base = f"http://{host}:{port}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=timeout) as answer:
            text = answer.read().decode()
    except (OSError, ValueError) as exc:
        return AgentView(address, False, f"no agent answers at {base}/metrics ({exc})")
    ready = False
    with (
        contextlib.suppress(OSError, ValueError),  # 503 (not ready) raises HTTPError
        urllib.request.urlopen(f"{base}/readyz", timeout=timeout) as answer,
    ):
        ready = answer.status == 200
    return _agent_from_metrics(address, text, ready)


def _agent_from_metrics(address: str, text: str, ready: bool) -> AgentView:
    from prometheus_client.parser import text_string_to_metric_families

    dataplane = writer = writer_reason = ""
    rejected: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gatewaylb_info":
                dataplane = sample.labels.get("dataplane", "")
            elif sample.name == "gatewaylb_status_writer" and sample.value == 1:
                writer = sample.labels.get("state", "")
                writer_reason = sample.labels.get("reason", "")
            elif sample.name == "gatewaylb_rejected_objects" and sample.value:
                key = (sample.labels.get("kind", ""), sample.labels.get("reason", ""))
                rejected[key] = int(sample.value)
    return AgentView(
        address,
        True,
        ready=ready,
        dataplane=dataplane,
        status_writer=writer,
        status_writer_reason=writer_reason,
        rejected=rejected,
    )


def read_node(pin_dirs: Iterable[str], agent_address: str) -> NodeStatus:
    found = inventory.scan(pin_dirs=pin_dirs)
    return NodeStatus(
        kernel=found,
        dataplanes=tuple(read_dataplanes(found)),
        unserved_packets=read_unserved(found),
        agent=read_agent(agent_address),
    )


# -- for people and scripts -----------------------------------------------------------


def _rows(view: DataplaneView) -> list[dict[str, Any]]:
    counters = {(c.vip, c.protocol, c.port): c for c in view.counters}
    rows = []
    for fe in view.frontends:
        c = counters.get((fe.vip, fe.protocol, fe.port))
        conns = c.backend_connections if c else {}
        rows.append(
            {
                "vip": fe.vip,
                "protocol": fe.protocol,
                "port": fe.port,
                "backends": [
                    {"ip": ip, "port": port, "weight": w, "connections": conns.get((ip, port), 0)}
                    for ip, port, w in fe.backends
                ],
                "reject_weight": fe.reject_weight,
                "packets": c.packets if c else 0,
                "bytes": c.bytes if c else 0,
            }
        )
    return rows


def status_document(node: NodeStatus) -> dict[str, Any]:
    """`status -o json`: `dataplane` and `frontends` of the first dataplane
    found (what scripts read), then everything."""
    first = node.dataplanes[0] if node.dataplanes else None
    k = node.kernel
    return {
        "dataplane": first.name if first else "none",
        "frontends": _rows(first) if first else [],
        "dataplanes": [
            {"name": v.name, "where": v.where, "problem": v.problem, "frontends": _rows(v)}
            for v in node.dataplanes
        ],
        "unserved_packets": node.unserved_packets,
        "kernel": {
            "tc": [
                {"interface": t.ifname, "direction": t.direction, "program_id": t.prog_id}
                for t in k.tc
            ],
            "cgroup": [
                {"cgroup": c.cgroup, "program": c.name, "program_id": c.prog_id} for c in k.cgroup
            ],
            "nft_tables": list(k.nft_tables),
            "pin_dirs": list(k.pin_dirs),
        },
        "agent": {
            "address": node.agent.address,
            "reachable": node.agent.reachable,
            "problem": node.agent.problem,
            "ready": node.agent.ready,
            "dataplane": node.agent.dataplane,
            "status_writer": {
                "state": node.agent.status_writer,
                "reason": node.agent.status_writer_reason,
            },
            "rejected_objects": [
                {"kind": kind, "reason": reason, "count": n}
                for (kind, reason), n in sorted(node.agent.rejected.items())
            ],
        },
    }


def status_table(node: NodeStatus) -> str:
    lines: list[str] = [_agent_line(node.agent)]
    if not node.dataplanes:
        lines.append(
            "dataplane: none   frontends: 0   (no tc program, cgroup program or nftables "
            "table of gatewaylb in this network namespace)"
        )
    for view in node.dataplanes:
        lines.append(f"dataplane: {view.name}   frontends: {len(view.frontends)}   ({view.where})")
        if view.problem:
            lines.append(f"  cannot read it: {view.problem}")
            continue
        lines.append(
            f"{'VIP':<40} {'PROTO':<5} {'PORT':>5} {'PACKETS':>10} {'BYTES':>12}  BACKENDS"
        )
        for row in _rows(view):
            shown = ", ".join(
                f"{b['ip']}:{b['port']} w={b['weight']} conns={b['connections']}"
                for b in row["backends"]
            )
            shown = shown or "(none: refuses connections)"
            if row["reject_weight"]:
                shown += f", refused share w={row['reject_weight']}"
            lines.append(
                f"{row['vip']:<40} {row['protocol']:<5} {row['port']:>5} "
                f"{row['packets']:>10} {row['bytes']:>12}  {shown}"
            )
    if node.unserved_packets is not None:
        lines.append(
            f"refused at VIPs (no listener on that protocol and port): "
            f"{node.unserved_packets} packets"
        )
    return "\n".join(lines) + "\n"


def _agent_line(agent: AgentView) -> str:
    if not agent.reachable:
        return f"agent: not reachable ({agent.problem}); the kernel state below stays in force"
    writer = agent.status_writer or "unknown"
    if agent.status_writer_reason:
        writer += f" ({agent.status_writer_reason})"
    rejected = ", ".join(f"{k} {r}: {n}" for (k, r), n in sorted(agent.rejected.items()))
    return (
        f"agent: {'ready' if agent.ready else 'NOT READY'} at {agent.address}, "
        f"dataplane {agent.dataplane or '?'}; status writer: {writer}; "
        f"rejected objects: {rejected or 'none'}"
    )
