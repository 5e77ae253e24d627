"""A bare-metal lab for VIP announcement: several nodes on one LAN, each with
its own backends, and either the client on that LAN (L2 mode) or a router in
front of it (BGP mode).

    L2:   client (10.77.0.2, fd00:77::2) ─┐
                                          sw (bridge) ── node-1 lan0 10.77.0.11 ── be1..beN
                                          │         └── node-2 lan0 10.77.0.12 ── be1..beN
    BGP:  client 10.88.0.2 ── router 10.88.0.1 / lan0 10.77.0.1 ─┘

Every node has the same backends (10.20.0.11.. behind a bridge), the way a
Service's pods are reachable from every node, and each answers `be<j>@<node>`:
a reply tells which backend slot was chosen (Maglev) and which node carried
the flow.  Nodes route only their own backends, so a reply always returns
through the node that translated the request.  The client has only on-link
routes in L2 mode (the VIP must be found by ARP/NDP); in BGP mode its default
route is the router, and the router knows VIPs only from BGP.

Owns only namespaces with its run prefix and the processes it starts there.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TypeVar

from agent.lab import netns
from agent.lab.topology import Host

T = TypeVar("T")

LAN4, LAN6 = "10.77.0", "fd00:77:"
BACKEND_PORT = 8080


def backend4(j: int) -> str:
    return f"10.20.0.{10 + j}"


def backend6(j: int) -> str:
    return f"fd00:20::{10 + j:x}"


class Fabric(netns.NamespaceSet):
    def __init__(self, nodes: int = 2, *, router: bool = False, backends: int = 1) -> None:
        super().__init__()
        self.with_router = router
        self.switch = self.prefix + "sw"
        self.nodes = [
            Host(f"node-{i}", f"{self.prefix}node-{i}", f"{LAN4}.{10 + i}", f"{LAN6}:{10 + i:x}")
            for i in range(1, nodes + 1)
        ]
        # node role -> its backends (be1..beN, the same addresses on every node)
        self.backends = {
            n.role: [
                Host(f"be{j}@{n.role}", f"{self.prefix}be{j}-{i}", backend4(j), backend6(j))
                for j in range(1, backends + 1)
            ]
            for i, n in enumerate(self.nodes, start=1)
        }
        self.router = Host("router", self.prefix + "router", f"{LAN4}.1", f"{LAN6}:1")
        if router:
            self.client = Host("client", self.prefix + "client", "10.88.0.2", "fd00:88::2")
        else:
            self.client = Host("client", self.prefix + "client", f"{LAN4}.2", f"{LAN6}:2")

    # -- building -------------------------------------------------------------------------

    def _port(self, member: Host, dev: str, mac: str) -> None:
        """A veth from the switch's bridge to `member`'s `dev`."""
        ip = netns.ip
        port = f"p-{member.role}"[:15]
        ip("link", "add", port, "type", "veth", "peer", "name", dev, "netns", member.ns,
           ns=self.switch)  # fmt: skip
        ip("link", "set", port, "master", "br0", "up", ns=self.switch)
        ip("link", "set", dev, "address", mac, ns=member.ns)
        self._addr(member.ns, dev, member.ip4, member.ip6)

    @staticmethod
    def _addr(ns: str, dev: str, ip4: str, ip6: str, plen4: int = 24, plen6: int = 64) -> None:
        netns.ip("addr", "add", f"{ip4}/{plen4}", "dev", dev, ns=ns)
        netns.ip("-6", "addr", "add", f"{ip6}/{plen6}", "dev", dev, "nodad", ns=ns)
        netns.ip("link", "set", dev, "up", ns=ns)

    def _build(self) -> None:
        ip = netns.ip
        for m in (self.switch, self.client.ns, *(n.ns for n in self.nodes)):
            self.add_namespace(m)
        for group in self.backends.values():
            for b in group:
                self.add_namespace(b.ns)
        ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0", ns=self.switch)
        ip("link", "set", "br0", "up", ns=self.switch)
        for i, node in enumerate(self.nodes, start=1):
            self._port(node, "lan0", f"02:77:00:00:00:{10 + i:02x}")
            netns.sysctl(node.ns, "net.ipv4.ip_forward", "1")
            netns.sysctl(node.ns, "net.ipv6.conf.all.forwarding", "1")
        if self.with_router:
            self.add_namespace(self.router.ns)
            self._port(self.router, "lan0", "02:77:00:00:00:01")
            netns.sysctl(self.router.ns, "net.ipv4.ip_forward", "1")
            netns.sysctl(self.router.ns, "net.ipv6.conf.all.forwarding", "1")
            # ECMP hashes on ports too, so many flows from one client spread.
            netns.sysctl(self.router.ns, "net.ipv4.fib_multipath_hash_policy", "1")
            netns.sysctl(self.router.ns, "net.ipv6.fib_multipath_hash_policy", "1")
            ip("link", "add", "down0", "type", "veth", "peer", "name", "eth0",
               "netns", self.client.ns, ns=self.router.ns)  # fmt: skip
            self._addr(self.router.ns, "down0", "10.88.0.1", "fd00:88::1")
            self._addr(self.client.ns, "eth0", self.client.ip4, self.client.ip6)
            ip("route", "add", "default", "via", "10.88.0.1", ns=self.client.ns)
            ip("-6", "route", "add", "default", "via", "fd00:88::1", ns=self.client.ns)
            for node in self.nodes:
                ip("route", "add", "default", "via", self.router.ip4, ns=node.ns)
                ip("-6", "route", "add", "default", "via", self.router.ip6, ns=node.ns)
        else:
            self._port(self.client, "lan0", "02:77:00:00:00:02")
            # A neighbour entry may be created by gratuitous ARP, not only updated.
            netns.sysctl(self.client.ns, "net.ipv4.conf.lan0.arp_accept", "1")
        for node in self.nodes:
            ip("link", "add", "brb", "type", "bridge", "mcast_snooping", "0", ns=node.ns)
            self._addr(node.ns, "brb", "10.20.0.1", "fd00:20::1")
            netns.sysctl(node.ns, "net.ipv4.icmp_ratelimit", "0")
            for j, be in enumerate(self.backends[node.role], start=1):
                ip("link", "add", f"vb{j}", "type", "veth", "peer", "name", "eth0",
                   "netns", be.ns, ns=node.ns)  # fmt: skip
                ip("link", "set", f"vb{j}", "master", "brb", "up", ns=node.ns)
                # A DNATed frame for a backend behind the port it came in on
                # (hairpin) is bridged back out that port only in hairpin mode.
                ip("link", "set", f"vb{j}", "type", "bridge_slave", "hairpin", "on", ns=node.ns)
                self._addr(be.ns, "eth0", be.ip4, be.ip6)
                ip("route", "add", "default", "via", "10.20.0.1", ns=be.ns)
                ip("-6", "route", "add", "default", "via", "fd00:20::1", ns=be.ns)

    # -- using ----------------------------------------------------------------------------

    def start_backends(self) -> None:
        """An echo server in every backend, answering `be<j>@<node>`."""
        for be in (b for group in self.backends.values() for b in group):
            argv = [sys.executable, "-m", "agent.lab.echo", "--tcp", str(BACKEND_PORT),
                    "--udp", str(BACKEND_PORT), "--name", be.role]  # fmt: skip
            proc = self.popen(be, argv, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            if b"ready" not in proc.stdout.readline():
                raise netns.LabError(f"echo server in {be.ns} did not start")

    def cut(self, member: Host) -> None:
        """The member's LAN link goes away, as when its machine dies."""
        netns.ip("link", "del", f"p-{member.role}"[:15], ns=self.switch, check=False)
