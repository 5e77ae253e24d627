"""Who is on the segment and who owns which VIP: the peers heard in heartbeats,
and the rendezvous-hash owner choice (why both: the package docstring,
Membership and Ownership).

Pure: the caller passes decoded heartbeats and the clock, so every node computes
the same owners from the same member list.  Never touches a socket, a frame's
bytes or the time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from agent.announce.l2.frames import Heartbeat


@dataclass(frozen=True, slots=True)
class _Peer:
    last_seen: float
    ready: bool


class Membership:
    """The peers heard on the segment.  Pure: the caller passes the clock."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._peers: dict[str, _Peer] = {}

    def heard(self, hb: Heartbeat, now: float) -> None:
        if hb.node == self.node:
            return
        if hb.leaving:
            self._peers.pop(hb.node, None)
        else:
            self._peers[hb.node] = _Peer(now, hb.ready)

    def expire(self, now: float, dead_after: float) -> tuple[str, ...]:
        """Forget peers silent for longer than `dead_after`; returns them."""
        dead = tuple(n for n, p in sorted(self._peers.items()) if now - p.last_seen > dead_after)
        for name in dead:
            del self._peers[name]
        return dead

    def live(self) -> tuple[str, ...]:
        return tuple(sorted({self.node, *self._peers}))

    def ready_peers(self) -> frozenset[str]:
        return frozenset(n for n, p in self._peers.items() if p.ready)


# -- ownership --------------------------------------------------------------------------


def rendezvous_weight(node: str, vip: str) -> int:
    digest = hashlib.blake2b(f"{node}\0{vip}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(vip: str, nodes: Iterable[str]) -> str | None:
    """The node with the highest weight for `vip`; the name breaks (unlikely) ties."""
    return max(nodes, key=lambda n: (rendezvous_weight(n, vip), n), default=None)


def owned_by(node: str, vips: Iterable[str], nodes: Iterable[str]) -> frozenset[str]:
    members = tuple(nodes)
    return frozenset(v for v in vips if owner_of(v, members) == node)
