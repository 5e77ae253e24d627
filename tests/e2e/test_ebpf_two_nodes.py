"""Two nodes, one answer: with the same routes, two agents' eBPF dataplanes pick
the same backend for the same flow (Maglev), which is what makes ECMP in front
of several nodes safe.

Two labs stand in for two nodes: each has its own node namespace and its own
backends, with the same addresses and names (be1..be4) in both, so a reply's
backend name tells which slot the node's Maglev table chose.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from agent.dataplane.ebpf.dataplane import EbpfDataplane
from agent.lab import Lab, vip4
from agent.state import Backend, DesiredState, FrontendSource, L4Frontend

pytestmark = pytest.mark.root

PORT = 8080
VIP = vip4(77)
IFACES = ("vc0", "vb1", "vb2", "vb3", "vb4")


def desired(lab: Lab) -> DesiredState:
    backends = tuple(Backend(b.ip4, PORT, 1) for b in lab.backends)
    src = FrontendSource("ns", "gw", "tcp")
    return DesiredState(
        l4=(
            L4Frontend(VIP, "tcp", 80, backends, 0, src),
            L4Frontend(VIP, "udp", 80, backends, 0, src),
        )
    )


def tcp_from(sport: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(2)
        s.bind(("", sport))
        s.connect((VIP, 80))
        s.sendall(b"hi\n")
        return s.recv(100).decode().split()[0]


def udp_from(sport: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.bind(("", sport))
        s.sendto(b"hi", (VIP, 80))
        return s.recv(100).decode().split()[0]


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[tuple[Lab, EbpfDataplane]]]:
    with ExitStack() as stack:
        out = []
        for _ in range(2):
            bpffs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glb-bpffs-")))
            subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
            stack.callback(subprocess.run, ["umount", "-l", str(bpffs)], check=False)
            lab = stack.enter_context(Lab(backends=4))
            for b in lab.backends:
                lab.start_echo(b, tcp=PORT, udp=PORT)
            dp = lab.call(
                lab.node,
                EbpfDataplane,
                interfaces=IFACES,
                pin_dir=str(bpffs / "gatewaylb"),
                pool_slots=1 << 16,
            )
            stack.callback(lab.call, lab.node, dp.cleanup)
            result = lab.call(lab.node, dp.reconcile, desired(lab))
            assert not result.failures
            out.append((lab, dp))
        yield out


def test_two_nodes_pick_the_same_backend_for_the_same_flow(
    nodes: list[tuple[Lab, EbpfDataplane]],
) -> None:
    (lab_a, _), (lab_b, _) = nodes
    ports = range(40000, 40060)
    tcp_a = [lab_a.call(lab_a.client, tcp_from, p) for p in ports]
    tcp_b = [lab_b.call(lab_b.client, tcp_from, p) for p in ports]
    assert tcp_a == tcp_b
    # The flows really spread: the agreement is not all of them on one backend.
    assert len(set(tcp_a)) >= 3, tcp_a
    udp_a = [lab_a.call(lab_a.client, udp_from, p) for p in ports]
    udp_b = [lab_b.call(lab_b.client, udp_from, p) for p in ports]
    assert udp_a == udp_b
    print(f"\n{len(ports)} flows, same backend on both nodes; spread {sorted(set(tcp_a))}")


def test_agreement_survives_a_flow_table_flush_on_one_node(
    nodes: list[tuple[Lab, EbpfDataplane]],
) -> None:
    (lab_a, dp_a), (lab_b, _) = nodes
    ports = range(41000, 41030)
    before = [lab_a.call(lab_a.client, udp_from, p) for p in ports]
    lab_a.call(lab_a.node, dp_a.flush_flows)
    after = [lab_a.call(lab_a.client, udp_from, p) for p in ports]
    other = [lab_b.call(lab_b.client, udp_from, p) for p in ports]
    assert before == after == other
