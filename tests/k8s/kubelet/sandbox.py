"""Pod sandboxes: a network namespace per pod, its address from the node's
pod CIDR, and a veth whose node end is a port of the node's pod bridge.

hostNetwork pods share the node's namespace and report the node's address.
Addresses are handed out round-robin (as the host-local IPAM plugin does), so
a new pod seldom gets the address of one just gone, and the node forgets the
MAC address of a removed pod at once: a stale neighbour entry would send the
next holder's packets to a veth that no longer exists.
Every namespace carries the lab run's prefix, so the lab's leftover cleanup
finds them after a killed run.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass

from agent.lab import netns


@dataclass(frozen=True, slots=True)
class Sandbox:
    ns: str
    ip: str
    own: bool  # False for hostNetwork: the node's namespace, never removed


class AddressPool:
    """Round-robin over a list of addresses: the search for a free one starts
    after the last one given out.  Thread-safe."""

    def __init__(self, addresses: list[str]) -> None:
        self._all = addresses
        self._used: set[str] = set()
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            n = len(self._all)
            for i in range(n):
                ip = self._all[(self._next + i) % n]
                if ip not in self._used:
                    self._used.add(ip)
                    self._next = (self._next + i + 1) % n
                    return ip
        raise RuntimeError("pod CIDR exhausted")

    def release(self, ip: str) -> None:
        with self._lock:
            self._used.discard(ip)


class PodNetwork:
    def __init__(self, prefix: str, node_ns: str, node_ip: str, cidr: str, bridge: str) -> None:
        self.prefix, self.node_ns, self.node_ip, self.bridge = prefix, node_ns, node_ip, bridge
        net = ipaddress.ip_network(cidr)
        hosts = list(net.hosts())
        self.gateway = str(hosts[0])  # the bridge's address
        self.prefixlen = net.prefixlen
        self.addresses = AddressPool([str(h) for h in hosts[9:]])  # .10 onwards
        self._serial = 0
        self._lock = threading.Lock()

    def host(self) -> Sandbox:
        return Sandbox(self.node_ns, self.node_ip, own=False)

    def create(self) -> Sandbox:
        with self._lock:
            ip = self.addresses.take()
            self._serial += 1
            serial = self._serial
        ns = f"{self.prefix}pod{serial}"
        veth = f"vp{serial}"
        try:
            self._forget_neighbour(ip)
            netns.create(ns)
            netns.ip("link", "add", "eth0", "type", "veth", "peer", "name", veth,
                     "netns", self.node_ns, ns=ns)  # fmt: skip
            netns.ip("link", "set", veth, "master", self.bridge, "up", ns=self.node_ns)
            netns.ip("link", "set", veth, "type", "bridge_slave", "hairpin", "on", ns=self.node_ns)
            netns.ip("addr", "add", f"{ip}/{self.prefixlen}", "dev", "eth0", ns=ns)
            netns.ip("link", "set", "eth0", "up", ns=ns)
            netns.ip("route", "add", "default", "via", self.gateway, ns=ns)
        except BaseException:
            netns.remove(ns)
            self.addresses.release(ip)
            raise
        return Sandbox(ns, ip, own=True)

    def remove(self, sandbox: Sandbox) -> None:
        if sandbox.own:
            netns.remove(sandbox.ns)  # kills what is left inside; the veth goes with it
            self._forget_neighbour(sandbox.ip)
            self.addresses.release(sandbox.ip)

    def _forget_neighbour(self, ip: str) -> None:
        # No entry: nothing to forget (ip exits 2, not an error here).
        netns.ip("neigh", "del", ip, "dev", self.bridge, ns=self.node_ns, check=False)
