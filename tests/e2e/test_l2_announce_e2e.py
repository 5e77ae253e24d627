"""L2 announcement in the real kernel: one node answers ARP/NDP for a VIP, and
when it dies the other takes over within a couple of seconds.

    client ns: br0 10.77.0.2/24 fd00:77::2/64 (arp_accept=1, only on-link routes)
      ├─ v1 ── node-a ns: lan0 10.77.0.11/24 fd00:77::11/64; VIPs on lo
      └─ v2 ── node-b ns: lan0 10.77.0.12/24 fd00:77::12/64; VIPs on lo

Each node runs an L2Announcer and a TCP server on VIP:PORT answering its name
in its own process (`python -c NODE_SCRIPT` through nsenter), so the owner can
be SIGKILLed like a crashed agent.  The nodes' interface is `lan0`, a name the
host does not have, so nothing here could touch a host interface's sysctls.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from agent.announce.l2.announcer import L2Announcer
from agent.announce.l2.membership import owned_by, owner_of
from agent.lab import netns
from agent.state import Announcement, L2Settings

pytestmark = pytest.mark.root

T = TypeVar("T")
CLIENT4, CLIENT6 = "10.77.0.2", "fd00:77::2"
VIP4, VIP6 = "10.77.0.100", "fd00:77::100"
PORT = 7070
IFACE = "lan0"
NAMES = ("node-a", "node-b")
FAILOVER_LIMIT_S = 3.0

NODE_SCRIPT = """
import logging, socket, sys, threading
from agent.announce.l2.announcer import L2Announcer
from agent.state import Announcement, L2Settings

logging.basicConfig(level=logging.INFO, format="%(name)s " + sys.argv[1] + " %(message)s")
name, iface, port, *vips = sys.argv[1:]

def serve(sock):
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(name.encode() + b"\\n")

for vip in vips:
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((vip, int(port)))
    sock.listen(64)
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
announcer = L2Announcer(name)
announcer.apply([Announcement(v, True, ("default/gw",)) for v in vips], L2Settings((iface,)))
print("ready", flush=True)
sys.stdin.read()  # until the test closes stdin (or kills us)
announcer.close()
"""


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    ns: str
    ip4: str
    ip6: str
    mac: str


class Segment(netns.NamespaceSet):
    """The topology above; removes its namespaces and processes on any exit."""

    def __init__(self) -> None:
        super().__init__()
        self.client_ns = self.prefix + "client"
        self.nodes = [
            Node(name, self.prefix + name, f"10.77.0.{11 + i}", f"fd00:77::{11 + i}", "")
            for i, name in enumerate(NAMES)
        ]
        self._announcers: dict[str, subprocess.Popen[bytes]] = {}

    def _build(self) -> None:
        ip = netns.ip
        for name in (self.client_ns, *(n.ns for n in self.nodes)):
            self.add_namespace(name)
        client = self.client_ns
        ip("link", "add", "br0", "type", "bridge", ns=client)
        ip("addr", "add", f"{CLIENT4}/24", "dev", "br0", ns=client)
        ip("-6", "addr", "add", f"{CLIENT6}/64", "dev", "br0", "nodad", ns=client)
        ip("link", "set", "br0", "up", ns=client)
        # New neighbour entries from gratuitous ARP (an existing one is updated anyway).
        netns.sysctl(client, "net.ipv4.conf.br0.arp_accept", "1")
        for i, node in enumerate(self.nodes, start=1):
            ip(
                "link",
                "add",
                f"v{i}",
                "type",
                "veth",
                "peer",
                "name",
                IFACE,
                "netns",
                node.ns,
                ns=client,
            )
            ip("link", "set", f"v{i}", "master", "br0", "up", ns=client)
            ip("addr", "add", f"{node.ip4}/24", "dev", IFACE, ns=node.ns)
            ip("-6", "addr", "add", f"{node.ip6}/64", "dev", IFACE, "nodad", ns=node.ns)
            ip("link", "set", IFACE, "up", ns=node.ns)
            for vip in VIPS4:
                ip("addr", "add", f"{vip}/32", "dev", "lo", ns=node.ns)
            for vip in VIPS6:
                ip("-6", "addr", "add", f"{vip}/128", "dev", "lo", "nodad", ns=node.ns)
        self.nodes = [Node(n.name, n.ns, n.ip4, n.ip6, _mac(n.ns, IFACE)) for n in self.nodes]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def on_client(self, fn: Callable[..., T], *args: Any) -> T:
        return self.call(self.client_ns, fn, *args)

    def start(self, node: Node, vips: tuple[str, ...]) -> None:
        argv = [sys.executable, "-c", NODE_SCRIPT, node.name, IFACE, str(PORT), *vips]
        proc = self.popen(node.ns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._announcers[node.name] = proc
        assert proc.stdout is not None
        if b"ready" not in proc.stdout.readline():
            raise netns.LabError(f"announcer in {node.ns} did not start")

    def kill(self, node: Node) -> None:
        """Like a dead node: the agent gone without a word, its link gone too."""
        self._announcers[node.name].kill()
        netns.ip("link", "del", IFACE, ns=node.ns)

    def neighbour(self, vip: str) -> str:
        out = netns.ip("-j", "neigh", "show", "to", vip, "dev", "br0", ns=self.client_ns)
        entries = json.loads(out or "[]")
        return str(entries[0].get("lladdr", "")) if entries else ""

    def probe(self, vip: str) -> list[str]:
        if ipaddress.ip_address(vip).version == 4:
            return self.on_client(arp_probe, vip)
        return self.on_client(ns_probe, vip)


VIPS4 = (VIP4, *(f"10.77.0.{i}" for i in range(101, 113)))
VIPS6 = (VIP6, *(f"fd00:77::{i:x}" for i in range(0x101, 0x10D)))


def _mac(ns: str, dev: str) -> str:
    return str(json.loads(netns.ip("-j", "link", "show", dev, ns=ns))[0]["address"])


@pytest.fixture
def segment() -> Iterator[Segment]:
    with Segment() as seg:
        yield seg


# -- run in the client namespace (probes written from the RFCs, apart from announce/l2) ----


def _raw(proto: int) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    sock.bind(("br0", proto))
    sock.settimeout(0.05)
    return sock


def _collect(sock: socket.socket, wait: float, pick: Callable[[bytes], str | None]) -> list[str]:
    found: list[str] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            continue
        mac = pick(frame)
        if mac is not None:
            found.append(mac)
    return found


def arp_probe(vip: str, wait: float = 0.3) -> list[str]:
    """Broadcast an ARP request for `vip`; the MACs of every reply, one per reply."""
    with _raw(0x0806) as sock:
        mac = sock.getsockname()[4]
        me, target = socket.inet_aton(CLIENT4), socket.inet_aton(vip)
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + me + bytes(6) + target
        sock.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)

        def pick(f: bytes) -> str | None:
            is_reply = f[20:22] == b"\x00\x02" and f[28:32] == target and f[38:42] == me
            return f[22:28].hex(":") if is_reply else None

        return _collect(sock, wait, pick)


def _checksum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ns_probe(vip: str, wait: float = 0.3, dst_mac: bytes | None = None) -> list[str]:
    """Send a neighbour solicitation for `vip` (to its solicited-node group, or
    unicast to `dst_mac`); the MACs of every solicited advertisement."""
    with _raw(0x86DD) as sock:
        mac = sock.getsockname()[4]
        src = socket.inet_pton(socket.AF_INET6, CLIENT6)
        target = socket.inet_pton(socket.AF_INET6, vip)
        group = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
        dst = target if dst_mac else group
        msg = bytearray(b"\x87\x00\x00\x00" + bytes(4) + target + b"\x01\x01" + mac)
        pseudo = src + dst + struct.pack("!I3xB", len(msg), 58)
        msg[2:4] = _checksum(pseudo + msg).to_bytes(2, "big")
        ip6 = struct.pack("!IHBB", 6 << 28, len(msg), 58, 255) + src + dst
        eth_dst = dst_mac or b"\x33\x33" + group[-4:]
        sock.send(eth_dst + mac + b"\x86\xdd" + ip6 + bytes(msg))

        def pick(f: bytes) -> str | None:
            is_na = f[20] == 58 and f[54] == 136 and f[62:78] == target and f[38:54] == src
            return f[6:12].hex(":") if is_na else None

        return _collect(sock, wait, pick)


def tcp_name(vip: str, timeout: float = 1.0) -> str:
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((vip, PORT))
        return s.recv(100).decode().strip()


def wait_for_server(vip: str, name: str, since: float, limit: float) -> float:
    """Connect every 50 ms until `name` answers; seconds from `since`."""
    while time.monotonic() - since < limit:
        attempt = time.monotonic()
        try:
            if tcp_name(vip, timeout=0.05) == name:
                return time.monotonic() - since
        except OSError:
            pass
        time.sleep(max(0.0, attempt + 0.05 - time.monotonic()))
    raise AssertionError(f"{name} did not answer on {vip} within {limit} s")


def wait_until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.05)


# -- tests ------------------------------------------------------------------------------


def test_kernel_alone_answers_arp_on_every_node_and_ndp_on_none(segment: Segment) -> None:
    """Why strict ARP is needed and IPv6 needs nothing: before any announcer
    runs, both kernels answer ARP for the lo-bound VIP, neither answers NDP,
    not even a solicitation sent straight to its MAC."""
    macs = sorted(n.mac for n in segment.nodes)
    assert sorted(segment.probe(VIP4)) == macs
    assert segment.probe(VIP6) == []
    for node in segment.nodes:
        assert (
            segment.on_client(ns_probe, VIP6, 0.2, bytes.fromhex(node.mac.replace(":", ""))) == []
        )


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_owner_answers_and_survivor_takes_over_after_sigkill(segment: Segment, vip: str) -> None:
    for node in segment.nodes:
        segment.start(node, (VIP4, VIP6))
    owner = segment.node(owner_of(vip, NAMES) or "")
    survivor = next(n for n in segment.nodes if n is not owner)
    # The announcers listen for one dead interval before they claim anything.
    wait_until(lambda: bool(segment.probe(vip)), 5.0, f"an answer for {vip}")
    assert segment.probe(vip) == [owner.mac], "exactly one node, the owner, answers"
    assert segment.on_client(tcp_name, vip) == owner.name
    assert segment.neighbour(vip) == owner.mac

    killed = time.monotonic()
    segment.kill(owner)
    elapsed = segment.on_client(wait_for_server, vip, survivor.name, killed, 10.0)
    family = "IPv4" if ":" not in vip else "IPv6"
    print(f"\n{family} failover: {elapsed:.2f} s from SIGKILL to a connection to {survivor.name}")
    assert elapsed < FAILOVER_LIMIT_S
    assert segment.neighbour(vip) == survivor.mac
    assert segment.probe(vip) == [survivor.mac]


def test_two_live_nodes_share_the_vips(segment: Segment) -> None:
    """In-process announcers (threads parked in the node namespaces), the
    interfaces found from the on-link route; a graceful close hands over at once."""
    vips = (*VIPS4, *VIPS6)
    anns = [Announcement(v, v != VIP4, ("default/gw",)) for v in vips]
    workers = [netns.NetnsWorker(n.ns) for n in segment.nodes]
    announcers = [w.call(L2Announcer, n.name) for w, n in zip(workers, segment.nodes, strict=True)]
    try:
        for w, a in zip(workers, announcers, strict=True):
            w.call(a.apply, anns, L2Settings(interfaces=()))
        expected = {n: owned_by(n, vips, NAMES) for n in NAMES}

        def settled() -> bool:
            return all(a.owned() == expected[a.node_name] for a in announcers)

        wait_until(settled, 5.0, "both nodes own their share")
        assert all(a.live_nodes() == NAMES for a in announcers)
        assert all(expected[n] for n in NAMES), expected  # both own some
        for vip in (*VIPS4[:4], *VIPS6[:3]):
            owner = segment.node(owner_of(vip, NAMES) or "")
            assert segment.probe(vip) == [owner.mac], vip
        # Unicast solicitations (NUD probes) reach the owner's filter too; the
        # other node stays silent even when asked directly.
        for node in segment.nodes:
            vip = next(v for v in VIPS6 if owner_of(v, NAMES) == node.name)
            for asked in segment.nodes:
                mac = bytes.fromhex(asked.mac.replace(":", ""))
                answers = segment.on_client(ns_probe, vip, 0.2, mac)
                assert answers == ([node.mac] if asked is node else []), (vip, asked.name)

        a, b = announcers
        changes_before = a.ownership_changes
        # A missing interface is logged, never raised, and the others keep working.
        workers[0].call(a.apply, anns, L2Settings(interfaces=("nope0", IFACE)))
        closed = time.monotonic()
        workers[1].call(b.close)
        wait_until(lambda: a.owned() == frozenset(vips), 1.0, "node-a takes all")
        print(f"\nhandover after a graceful close: {time.monotonic() - closed:.2f} s")
        assert a.live_nodes() == ("node-a",)
        assert a.ownership_changes - changes_before == len(expected["node-b"])
        for vip in sorted(expected["node-b"])[:3]:
            assert segment.probe(vip) == [segment.node("node-a").mac]
    finally:
        for w, ann in zip(workers, announcers, strict=True):
            w.call(ann.close)
            w.close()
