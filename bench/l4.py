"""L4 throughput through a VIP: direct vs nftables vs ebpf, in one run, one lab.

Measured from the lab's client namespace to one backend namespace behind the
node (both paths cross the node; "direct" talks to the backend's own address,
the others to a VIP that the dataplane translates):
- new TCP connections per second: ApacheBench (`ab`, no keep-alive: every request
  is a new connection) against HAProxy answering 200 itself in the backend;
- UDP request/response rate: `sockperf ping-pong` (one flow, 64 B);
- UDP flood: `sockperf throughput` at 64 B, delivered packets per second
  counted on the backend's interface.
Prints a ratio table against the direct path (the physical limit here).

Mode `dnat-floor` is no product: one hand-written nftables DNAT rule per
protocol, so the cost of netfilter conntrack plus NAT alone, the floor under any
nftables rule layout.

Each mode talks to a backend namespace of its own: ab reuses client ports
quickly, and a backend's TIME_WAIT sockets from an earlier run with other TCP
timestamp offsets (the client's offset depends on the destination, VIP or
backend address) would refuse the reused ports (PAWS) and skew later runs.
Each figure is the median of --rounds rounds; in each round the modes run one
after the other with their dataplane freshly programmed.  The client is pinned
to CPU 0 and the servers to CPU 1, so the two cores of this machine do not
trade places between runs (the largest source of noise here).
Root; run with `make bench` or `python bench/l4.py [--seconds S] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.dataplane.select import default_interfaces
from agent.dataplane.vips import VIPGuard, guard_state
from agent.lab import Lab, vip4
from agent.lab.netns import exec_argv
from agent.state import Backend, DesiredState, FrontendSource, L4Frontend

HTTP_PORT = 8080
UDP_PORT = 5001
VIP = vip4(50)
SRC = FrontendSource("bench", "gw", "l")

HAPROXY_CFG = """
global
    maxconn 8000
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend bench
    bind :8080
    http-request return status 200 content-type text/plain string ok
"""


def desired(backend_ip: str) -> DesiredState:
    be = (Backend(backend_ip, HTTP_PORT, 1),)
    ube = (Backend(backend_ip, UDP_PORT, 1),)
    return DesiredState(
        vips=(VIP,),
        l4=(
            L4Frontend(VIP, "tcp", 80, be, 0, SRC),
            L4Frontend(VIP, "udp", UDP_PORT, ube, 0, SRC),
        ),
    )


CLIENT_CPU = "0"
SERVER_CPU = "1"


def run(lab: Lab, ns: str, argv: list[str], timeout: float = 120) -> str:
    pinned = ["taskset", "-c", CLIENT_CPU, *argv]
    out = subprocess.run(
        exec_argv(ns, pinned), capture_output=True, text=True, timeout=timeout, check=False
    )
    return out.stdout + out.stderr


def new_tcp_per_second(lab: Lab, addr: str, port: int, seconds: float) -> float:
    text = run(
        lab,
        lab.client.ns,
        ["ab", "-q", "-t", str(seconds), "-n", "10000000", "-c", "8", f"http://{addr}:{port}/"],
    )
    m = re.search(r"Requests per second:\s+([\d.]+)", text)
    failed = re.search(r"Failed requests:\s+(\d+)", text)
    if not m or (failed and int(failed.group(1)) > 0):
        raise RuntimeError(f"ab failed against {addr}:{port}:\n{text}")
    return float(m.group(1))


def udp_rr_per_second(lab: Lab, addr: str, seconds: float) -> float:
    text = run(
        lab,
        lab.client.ns,
        [
            "sockperf",
            "ping-pong",
            "-i",
            addr,
            "-p",
            str(UDP_PORT),
            "-m",
            "64",
            "-t",
            str(int(seconds)),
        ],
    )
    m = re.search(r"Summary: Latency is ([\d.]+) usec", text)
    if not m:
        raise RuntimeError(f"sockperf ping-pong failed against {addr}:\n{text}")
    return 1e6 / float(m.group(1))  # one request in flight: rate = 1 / round trip


def rx_packets(lab: Lab, ns: str) -> int:
    # nsenter keeps the host's sysfs; read the namespace's counter over netlink.
    out = run(lab, ns, ["ip", "-s", "-j", "link", "show", "eth0"])
    m = re.search(r'"rx":\{"bytes":\d+,"packets":(\d+)', out)
    if not m:
        raise RuntimeError(f"no rx counter for eth0 in {ns}: {out}")
    return int(m.group(1))


def udp_flood_pps(lab: Lab, backend: str, addr: str, seconds: float) -> float:
    before = rx_packets(lab, backend)
    t0 = time.monotonic()
    run(
        lab,
        lab.client.ns,
        [
            "sockperf",
            "throughput",
            "-i",
            addr,
            "-p",
            str(UDP_PORT),
            "-m",
            "64",
            "-t",
            str(int(seconds)),
        ],
    )
    elapsed = time.monotonic() - t0
    return (rx_packets(lab, backend) - before) / elapsed


class _FloorRules:
    """`dnat-floor`: the least nftables can do for this VIP (reconcile only)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def reconcile(self, desired: DesiredState) -> None:
        rules = [
            f"ip daddr {f.vip} {f.protocol} dport {f.port} "
            f"dnat ip to {f.backends[0].ip}:{f.backends[0].port}"
            for f in desired.l4
        ]
        text = (
            "table ip glb_floor {\n chain pre {\n"
            " type nat hook prerouting priority -100\n " + "\n ".join(rules) + "\n }\n}\n"
        )
        subprocess.run(exec_argv(self.ns, ["nft", "-f", "-"]), input=text, text=True, check=True)

    def cleanup(self) -> None:
        subprocess.run(
            exec_argv(self.ns, ["nft", "delete", "table", "ip", "glb_floor"]), check=False
        )


@contextlib.contextmanager
def dataplane(lab: Lab, mode: str, tmp: Path) -> Iterator[Any]:
    if mode == "direct":
        yield None
        return
    if mode == "dnat-floor":
        floor = _FloorRules(lab.node.ns)
        try:
            yield floor
        finally:
            floor.cleanup()
        return
    if mode == "nftables":
        from agent.dataplane.nft.dataplane import NftablesDataplane

        nft = lab.call(lab.node, NftablesDataplane)
        try:
            yield nft
        finally:
            lab.call(lab.node, nft.cleanup)
        return
    from agent.dataplane.ebpf.dataplane import EbpfDataplane

    bpffs = tmp / "bpffs"
    bpffs.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    try:
        interfaces = lab.call(lab.node, default_interfaces)
        ebpf = lab.call(
            lab.node,
            lambda: EbpfDataplane(interfaces=interfaces, pin_dir=str(bpffs / "gatewaylb")),
        )
        try:
            yield ebpf
        finally:
            lab.call(lab.node, ebpf.cleanup)
    finally:
        subprocess.run(["umount", "-l", str(bpffs)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--modes",
        default="direct,dnat-floor,nftables,ebpf",
        help="comma-separated; direct is always first",
    )
    args = parser.parse_args()
    modes = ["direct", *(m for m in args.modes.split(",") if m and m != "direct")]
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    with Lab(backends=len(modes)) as lab, tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG)
        for backend in lab.backends:
            server = ["taskset", "-c", SERVER_CPU]
            lab.popen(backend, [*server, "haproxy", "-db", "-f", str(cfg)])
            lab.popen(
                backend, [*server, "sockperf", "server", "-i", "0.0.0.0", "-p", str(UDP_PORT)]
            )
        time.sleep(1.0)
        guard = lab.call(lab.node, VIPGuard)
        for _round, (mode, backend) in itertools.product(
            range(args.rounds), zip(modes, lab.backends, strict=True)
        ):
            with dataplane(lab, mode, Path(tmp)) as plane:
                addr, port = (backend.ip4, HTTP_PORT) if plane is None else (VIP, 80)
                udp_addr = backend.ip4 if plane is None else VIP
                if isinstance(plane, _FloorRules):
                    plane.reconcile(desired(backend.ip4))
                elif plane is not None:
                    state = desired(backend.ip4)
                    result = lab.call(lab.node, plane.reconcile, state)
                    assert not result.failures, result.failures
                    # As the agent runs them: the guard of unserved VIP ports beside.
                    lab.call(lab.node, guard.apply, guard_state(state))
                got = {
                    "new TCP connections/s": new_tcp_per_second(lab, addr, port, args.seconds),
                    "UDP request/response/s": udp_rr_per_second(lab, udp_addr, args.seconds),
                    "UDP 64 B flood, delivered pps": udp_flood_pps(
                        lab, backend.ns, udp_addr, args.seconds
                    ),
                }
                for name, value in got.items():
                    samples[mode].setdefault(name, []).append(value)
                print(
                    f"  round {_round + 1} {mode}: "
                    + ", ".join(f"{k}={v:,.0f}" for k, v in got.items())
                )
        lab.call(lab.node, guard.cleanup)
    results = {m: {k: statistics.median(v) for k, v in samples[m].items()} for m in modes}
    print()
    print(
        f"{'metric':<32}"
        + "".join(f"{m:>16}" for m in modes)
        + "".join(f"{m + '/direct':>18}" for m in modes[1:])
    )
    for metric in results["direct"]:
        row = f"{metric:<32}" + "".join(f"{results[m][metric]:>16,.0f}" for m in modes)
        row += "".join(
            f"{results[m][metric] / results['direct'][metric]:>17.1%} " for m in modes[1:]
        )
        print(row)
    print(
        "\ntargets: nftables new-connection rate >= 85% of direct; "
        "ebpf >= nftables on every row and >= 90% of direct"
    )


if __name__ == "__main__":
    main()
