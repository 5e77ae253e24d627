"""The standard lab topology and the `Lab` context manager that tears it down.

Owns the namespaces of one run (all named with its prefix), their links,
addresses and routes, and the processes it starts in them.  Never touches the
host namespace or any namespace without its prefix.

    client ns                node ns                        backend ns (one each)
    eth0 10.10.0.2/24 ── vc0 10.10.0.1/24
         fd00:10::2/64       fd00:10::1/64
                             br0 10.20.0.1/24 ─┬─ vb1 ── eth0 10.20.0.11/24 fd00:20::11/64
                                 fd00:20::1/64 └─ vb2 ── eth0 10.20.0.12/24 fd00:20::12/64
                             10.99.0.0/24, fd00:99::/64 routed to br0

VIPs (10.99.0.0/24, fd00:99::/64) are not assigned to any interface: the
dataplane DNATs them in prerouting (remote clients) and output (node-local
clients) before any routing decision could need them.  The client routes
everything via the node.  In the node the VIP prefixes are routed on-link to
br0 only so that a local socket's connect() finds a route (the output hook runs
after that lookup); the packet is DNATed and re-routed to the backend.  (A dummy
device would be tidier, but this kernel has no dummy driver.)  What is not
DNATed dies unanswered in neighbour resolution on br0.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import TypeVar

from agent.lab import netns

T = TypeVar("T")

VIP4_NET = "10.99.0.0/24"
VIP6_NET = "fd00:99::/64"


def vip4(i: int) -> str:
    return f"10.99.0.{i}"


def vip6(i: int) -> str:
    return f"fd00:99::{i:x}"


@dataclass(frozen=True, slots=True)
class Host:
    role: str
    ns: str
    ip4: str
    ip6: str


class Lab(netns.NamespaceSet):
    """Context manager: builds the standard topology, removes it on any exit.

    `with Lab(backends=3) as lab:` then `lab.client`, `lab.node`, `lab.backends`.
    """

    def __init__(self, backends: int = 2, prefix: str | None = None) -> None:
        super().__init__(prefix)
        self.n_backends = backends
        self.client = Host("client", self.prefix + "client", "10.10.0.2", "fd00:10::2")
        self.node = Host("node", self.prefix + "node", "10.10.0.1", "fd00:10::1")
        self.node_backend_side = Host("node", self.node.ns, "10.20.0.1", "fd00:20::1")
        self.backends = [
            Host(f"be{i}", f"{self.prefix}be{i}", f"10.20.0.{10 + i}", f"fd00:20::{10 + i}")
            for i in range(1, backends + 1)
        ]

    # -- building -----------------------------------------------------------------------

    def _build(self) -> None:
        node, client = self.node.ns, self.client.ns
        for name in (node, client, *(b.ns for b in self.backends)):
            self.add_namespace(name)
        ip = netns.ip
        # client <-> node; created inside the client ns, peer moved to the node.
        ip("link", "add", "eth0", "type", "veth", "peer", "name", "vc0", "netns", node, ns=client)
        self._addr(client, "eth0", self.client)
        self._addr(node, "vc0", self.node)
        ip("route", "add", "default", "via", self.node.ip4, ns=client)
        ip("-6", "route", "add", "default", "via", self.node.ip6, ns=client)
        # node bridge towards the backends
        # No multicast snooping: until the backends' MLD reports are seen, the
        # bridge would not flood neighbour solicitations to them and the first
        # IPv6 packets to a backend would be lost.
        ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0", ns=node)
        self._addr(node, "br0", self.node_backend_side)
        for i, be in enumerate(self.backends, start=1):
            ip(
                "link",
                "add",
                f"vb{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                be.ns,
                ns=node,
            )
            ip("link", "set", f"vb{i}", "master", "br0", "up", ns=node)
            # With br_netfilter (on by default here) a DNATed frame whose new
            # destination sits behind the port it came from is bridged back out
            # that port; the bridge allows that only in hairpin mode, which is
            # what kubelet's hairpin-veth sets too.
            ip("link", "set", f"vb{i}", "type", "bridge_slave", "hairpin", "on", ns=node)
            self._addr(be.ns, "eth0", be)
            ip("route", "add", "default", "via", self.node_backend_side.ip4, ns=be.ns)
            ip("-6", "route", "add", "default", "via", self.node_backend_side.ip6, ns=be.ns)
        ip("route", "add", VIP4_NET, "dev", "br0", ns=node)
        ip("-6", "route", "add", VIP6_NET, "dev", "br0", ns=node)
        netns.sysctl(node, "net.ipv4.ip_forward", "1")
        netns.sysctl(node, "net.ipv6.conf.all.forwarding", "1")
        # Refused UDP flows are answered with ICMP errors, which the kernel rate
        # limits per peer (1/s by default); tests send them back to back.
        netns.sysctl(node, "net.ipv4.icmp_ratelimit", "0")
        netns.sysctl(node, "net.ipv6.icmp.ratelimit", "0")

    @staticmethod
    def _addr(ns: str, dev: str, host: Host) -> None:
        netns.ip("addr", "add", f"{host.ip4}/24", "dev", dev, ns=ns)
        # nodad: no 1-2 s of tentative address before IPv6 works.
        netns.ip("-6", "addr", "add", f"{host.ip6}/64", "dev", dev, "nodad", ns=ns)
        netns.ip("link", "set", dev, "up", ns=ns)

    # -- using ------------------------------------------------------------------------------

    def start_echo(self, host: Host, tcp: int = 8080, udp: int = 8080) -> subprocess.Popen[bytes]:
        """An echo backend answering with its role name; waits until it listens."""
        argv = [sys.executable, "-m", "agent.lab.echo", "--tcp", str(tcp), "--udp", str(udp)]
        proc = self.popen(host, [*argv, "--name", host.role], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ready" once both sockets are bound
        if b"ready" not in line:
            raise netns.LabError(f"echo server in {host.ns} did not start")
        return proc
