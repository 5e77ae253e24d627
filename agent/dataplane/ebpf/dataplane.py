"""The eBPF dataplane: tc and cgroup programs from bpf/, maps driven from here.

Owns: the programs of bpf/lb.c (compiled and loaded with bcc), their tc filters
on the given interfaces (clsact ingress and egress, one well-known priority),
their attachments to the given cgroup v2 directory, the maps pinned under
`pin_dir`, and one nftables table (`table inet gatewaylb_ebpf`) that rejects
and masquerades packets the programs mark.  It never touches other tc filters,
other tables, routes or addresses.  It works in the network namespace of the
thread that constructs it (netlink and libnftables sockets are opened there).

This module puts the pieces together and takes them apart; what the maps hold
and in which order they are written is `MapReconciler`'s (reconciler.py), the
mechanics are agent/dataplane/bpf/.  Verbs: `reconcile` and `read_counters`.

Adoption: bcc's pinned tables reuse the maps found under `pin_dir`; a new
instance rebuilds its view (ids, extents) from them, loads fresh programs and
swaps them in with `tc filter replace` on the same handle (atomic) and, for
cgroups, attaches the new program before detaching the old one.  Nothing is
flushed, so established flows (the LRU flow table) survive a restart.

Hooks (bpf/lb.c): `glb_ingress` on tc ingress of every interface where VIP
traffic first arrives (the client-facing link; on a bridge, its PORTS, not the
bridge device: with br_netfilter conntrack sees a bridged packet at the port,
before the bridge device's tc ingress) does the DNAT of client packets and the
reverse NAT of backends' replies, and forwards both itself when the FIB has a
next hop (bpf_fib_lookup + bpf_redirect: they skip the IP stack, netfilter and
the bridge); `glb_egress` on tc egress of the same interfaces reverse-NATs only
replies that came through netfilter unmarked (hairpin flows after conntrack
undid the masquerade).  Conntrack never sees the other translated flows, so
the asymmetric-tuple trap of NOTES.md does not arise.  Refused new
flows (reject share, no positive weight) and hairpin flows (the client is the
chosen backend) are only marked in skb->mark; the nft table rejects the first
(tcp reset / icmpx port-unreachable, prerouting at raw priority, before
conntrack) and masquerades the second (postrouting).  All other translated
packets that still take the stack path (local destination, MTU), and replies
to them, are marked for `notrack` in that same raw-priority chain: the LRU flow
table is their connection state.  Local processes: the
cgroup v2 sock_addr hooks connect4/6 / sendmsg4/6 translate at connect()/sendto()
time (Maglev by socket cookie; a refused flow fails with EPERM), recvmsg4/6 and
getpeername4/6 show the VIP again; an IPv6 socket reaching an IPv4 VIP as
::ffff:a.b.c.d is translated as IPv4.

Not handled (pass through untranslated): IP fragments, IPv6 extension headers,
ICMP errors about a translated flow (the inner header is not rewritten).
`pin_dir` must be on a bpf filesystem; the agent does not mount one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from agent.dataplane import maglev
from agent.dataplane.base import FrontendCounters, ProgrammedFrontend
from agent.dataplane.bpf import EbpfError, attach, loader, nft_table
from agent.dataplane.bpf.layouts import MAPS, Key
from agent.dataplane.bpf.maps import check_compiled, open_pinned
from agent.dataplane.bpf.mounts import on_bpffs
from agent.dataplane.bpf.syscall import possible_cpus
from agent.dataplane.ebpf.reconciler import MapReconciler
from agent.reconcile import Outcome
from agent.state import DesiredState


class EbpfDataplane:
    """Dataplane over tc/cgroup eBPF programs; adopts pinned maps at construction."""

    name = "ebpf"

    def __init__(
        self,
        interfaces: tuple[str, ...] = (),
        pin_dir: str = "/sys/fs/bpf/gatewaylb",
        maglev_size: int = maglev.DEFAULT_SIZE,
        cgroup_path: str | None = None,
        *,
        max_frontends: int = 16384,
        max_backends: int = 65536,
        pool_slots: int = 1 << 24,
        max_flows: int = 131072,
        nft: bool = True,
    ) -> None:
        if not maglev.is_prime(maglev_size):
            raise EbpfError(f"maglev_size {maglev_size} is not prime")
        self.interfaces = interfaces
        self.pin_dir = Path(pin_dir)
        self.cgroup_path = cgroup_path
        self._use_nft = nft
        if not on_bpffs(self.pin_dir):
            raise EbpfError(
                f"{self.pin_dir} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)"
            )
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        flags = loader.cflags(self.pin_dir, max_frontends, max_backends, pool_slots, max_flows)
        # Compiling creates the maps, or finds them pinned and reuses them.
        self._loader = loader.Loader(flags)
        check_compiled(self._loader.map_sizes, possible_cpus())
        self.maps = open_pinned(self.pin_dir)
        self._tc_fds = {prog: self._loader.load_tc(prog) for prog, _ in attach.TC_HOOKS}
        self._reconciler = MapReconciler(self.maps, maglev_size)
        # The table before the filters: a packet marked for reject or notrack
        # must not slip through netfilter untouched.
        if self._use_nft:
            nft_table.ensure()
        attach.attach_tc(self.interfaces, self._tc_fds)
        if cgroup_path:
            self._attach_cgroup(cgroup_path)

    def _attach_cgroup(self, path: str) -> None:
        attach.attach_cgroup(path, self.pin_dir, self._loader.load_sock_addr)

    # -- verbs (MapReconciler's) --------------------------------------------------------

    @property
    def writes(self) -> int:
        """Kernel write batches issued, for tests ("a no-op issues none")."""
        return self._reconciler.writes

    def reconcile(self, desired: DesiredState) -> Outcome:
        return self._reconciler.reconcile(desired)

    def read_counters(self) -> list[FrontendCounters]:
        return self._reconciler.read_counters()

    def programmed(self) -> list[ProgrammedFrontend]:
        """Read back from the kernel maps (not from this object's memory)."""
        return self._reconciler.programmed()

    def backend_counters(self, key: Key) -> dict[tuple[str, int], tuple[int, int, int]]:
        return self._reconciler.backend_counters(key)

    def maglev_table(self, key: Key) -> list[tuple[str, int] | None]:
        return self._reconciler.maglev_table(key)

    def flush_flows(self) -> None:
        self._reconciler.flush_flows()

    # -- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Let go of this process's handles; programs, filters and maps stay."""
        for m in self.maps.values():
            m.close()
        self._loader.close()

    def cleanup(self) -> None:
        """Remove everything this dataplane owns: filters, cgroup programs, the
        nft table, pins (maps are freed with their last reference)."""
        attach.detach_tc(self.interfaces)
        attach.detach_cgroup(self.pin_dir, self.cgroup_path)
        if self._use_nft:
            nft_table.delete()
        self.close()
        for pin, *_ in MAPS.values():
            with contextlib.suppress(FileNotFoundError):
                (self.pin_dir / pin).unlink()
        with contextlib.suppress(OSError):
            self.pin_dir.rmdir()
