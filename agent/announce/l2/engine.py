"""One node's L2 announcement state machine: its ports, membership and owned
VIPs, driven by the loop thread with an explicit clock.

Decides when to send heartbeats, which VIPs this node owns, when to announce
them after a takeover, and which ARP requests and neighbour solicitations to
answer.  It never opens a socket itself (ports come from `_Port.open`) and
never reads the clock (every call is given `now`), so tests drive it with fake
ports and a fake clock; it never runs on any thread but the loop's.
"""

from __future__ import annotations

import heapq
import logging
import selectors
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.announce.l2.frames import (
    ETH,
    ETH_P_ARP,
    ETH_P_HEARTBEAT,
    ETH_P_IPV6,
    Heartbeat,
    announcements_for,
    arp_reply,
    decode_heartbeat,
    heartbeat_frame,
    parse_arp_request,
    parse_neighbor_solicitation,
    solicited_na,
    solicited_node_group,
)
from agent.announce.l2.membership import Membership, owned_by
from agent.announce.l2.ports import _Port

# The name the logger had before the package was split: the JSON log's
# "logger" field and any per-logger level set by name stay the same.
log = logging.getLogger("agent.announce.l2")

TICK_S = 0.05  # poll timeout: the granularity of expiry and resends
# Gratuitous ARP / unsolicited NA after a takeover: the first may be lost, or
# reach a client while it still resolves with the dead owner.
ANNOUNCE_DELAYS_S = (0.0, 0.5, 1.0)
MAX_ANNOUNCE_PER_TICK = 1000  # thousands of VIPs must not delay heartbeats
RETRY_S = 5.0  # reopen interfaces that were missing or went away


@dataclass(frozen=True, slots=True)
class _Config:
    interfaces: tuple[str, ...] = ()
    vips: frozenset[str] = frozenset()
    heartbeat_s: float = 0.2
    dead_after_s: float = 1.0

    def groups(self) -> frozenset[str]:
        return frozenset(solicited_node_group(v) for v in self.vips if ":" in v)


def _summary(vips: Iterable[str], limit: int = 10) -> str:
    ordered = sorted(vips)
    return ",".join(ordered[:limit]) + (",..." if len(ordered) > limit else "")


class _Engine:
    """Ports, membership and ownership; driven by the loop thread only.  The
    public fields are swapped whole, so other threads may read them."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.cfg = _Config()
        self.selector = selectors.DefaultSelector()
        self.ports: dict[str, _Port] = {}
        self.membership = Membership(node)
        self.owned: frozenset[str] = frozenset()
        self.live: tuple[str, ...] = (node,)
        self.changes = 0
        self._computed_for: tuple[frozenset[str], frozenset[str]] | None = None
        self._warm_until: float | None = None  # None while no port is open
        self._next_heartbeat = 0.0
        self._last_heartbeat = 0.0
        self._seq = 0
        self._pending: list[tuple[float, str]] = []  # heap of (due, vip) announcements
        self._retry_at = 0.0
        self._unavailable: dict[str, str] = {}  # interface -> last error logged
        self._duplicate_warned = False

    # -- configuration

    def reconfigure(self, cfg: _Config, now: float) -> None:
        self.cfg = cfg
        self._sync_ports(now)

    def _sync_ports(self, now: float) -> None:
        for name in [n for n in self.ports if n not in self.cfg.interfaces]:
            self._close_port(self.ports[name])
        for name in self.cfg.interfaces:
            if name not in self.ports:
                self._open_port(name, now)
        for name in list(self._unavailable):
            if name not in self.cfg.interfaces:
                del self._unavailable[name]
        groups = self.cfg.groups()
        for port in self.ports.values():
            port.set_groups(groups)
        self._retry_at = now + RETRY_S

    def _open_port(self, name: str, now: float) -> None:
        try:
            port = _Port.open(name)
        except OSError as exc:
            error = exc.strerror or str(exc)
            if self._unavailable.get(name) != error:  # once per distinct error
                log.warning("event=l2_interface_unavailable interface=%s error=%s", name, error)
            self._unavailable[name] = error
            return
        self._unavailable.pop(name, None)
        self.ports[name] = port
        for ethertype, sock in port.socks.items():
            self.selector.register(sock, selectors.EVENT_READ, (port, ethertype))
        if self._warm_until is None:
            # Listen a full dead interval before claiming anything (see the package docstring).
            self._warm_until = now + self.cfg.dead_after_s
        for vip in self.owned:  # a new port learns our VIPs like after a takeover
            heapq.heappush(self._pending, (now, vip))
        log.info("event=l2_interface_open interface=%s mac=%s", name, port.mac.hex(":"))

    def _close_port(self, port: _Port) -> None:
        for sock in port.socks.values():
            self.selector.unregister(sock)
        port.close()
        del self.ports[port.name]
        if not self.ports:
            self._warm_until = None
        log.info("event=l2_interface_closed interface=%s", port.name)

    # -- time

    def _ready(self, now: float) -> bool:
        return self._warm_until is not None and now >= self._warm_until

    def timeout(self, now: float) -> float:
        due = min(self._next_heartbeat, self._pending[0][0] if self._pending else now + TICK_S)
        return max(0.0, min(TICK_S, due - now))

    def tick(self, now: float) -> None:
        if self._unavailable and now >= self._retry_at:
            self._sync_ports(now)
        self._expire(now)
        self._reconcile_ownership(now)
        if now >= self._next_heartbeat:
            self._check_stall(now)
            self._heartbeat(now)
        self._send_due(now)

    def _check_stall(self, now: float) -> None:
        if self._last_heartbeat and now - self._last_heartbeat > self.cfg.dead_after_s:
            # This thread was stalled long enough for peers to declare us dead
            # and announce our VIPs; they give them back on our next heartbeat
            # without our noticing any change, so announce them again.
            log.warning("event=l2_stalled seconds=%.2f", now - self._last_heartbeat)
            for vip in self.owned:
                heapq.heappush(self._pending, (now, vip))

    def _heartbeat(self, now: float, *, leaving: bool = False) -> None:
        self._seq += 1
        hb = Heartbeat(self.node, self._seq, ready=self._ready(now), leaving=leaving)
        for port in self.ports.values():
            port.send(ETH_P_HEARTBEAT, heartbeat_frame(port.mac, hb))
        self._last_heartbeat = now
        self._next_heartbeat = now + self.cfg.heartbeat_s

    def _expire(self, now: float) -> None:
        for name in self.membership.expire(now, self.cfg.dead_after_s):
            log.info("event=l2_peer_down node=%s reason=timeout", name)
        self.live = self.membership.live()

    # -- ownership

    def _reconcile_ownership(self, now: float) -> None:
        ready = self._ready(now)
        members = self.membership.ready_peers() | ({self.node} if ready else frozenset())
        if self._computed_for == (members, self.cfg.vips):
            return
        if ready and self._computed_for is not None and self.node not in self._computed_for[0]:
            self._next_heartbeat = now  # tell peers at once that we take part now
        self._computed_for = (members, self.cfg.vips)
        owned = owned_by(self.node, self.cfg.vips, members)
        gained, lost = owned - self.owned, self.owned - owned
        self.owned = owned
        self.changes += len(gained) + len(lost)
        for vip in gained:
            for delay in ANNOUNCE_DELAYS_S:
                heapq.heappush(self._pending, (now + delay, vip))
        if gained:
            log.info("event=l2_takeover count=%d vips=%s", len(gained), _summary(gained))
        if lost:
            log.info("event=l2_release count=%d vips=%s", len(lost), _summary(lost))

    def _send_due(self, now: float) -> None:
        sent = 0
        while self._pending and self._pending[0][0] <= now and sent < MAX_ANNOUNCE_PER_TICK:
            vip = heapq.heappop(self._pending)[1]
            if vip not in self.owned:  # released meanwhile
                continue
            for port in self.ports.values():
                for ethertype, frame in announcements_for(port.mac, vip):
                    port.send(ethertype, frame)
            sent += 1

    # -- receiving

    def handle(self, port: _Port, ethertype: int, now: float) -> None:
        if self.ports.get(port.name) is not port:  # closed earlier in this round
            return
        try:
            frames = port.read(ethertype)
        except OSError as exc:  # ENETDOWN and friends; reading clears the error
            port.report(exc)
            if port.gone():
                self._close_port(port)
                self._unavailable[port.name] = "gone"
            return
        handler = self._handlers[ethertype]
        for frame in frames:
            handler(self, port, frame, now)

    def _on_heartbeat(self, port: _Port, frame: bytes, now: float) -> None:
        hb = decode_heartbeat(frame[ETH.size :])
        if hb is None:
            return
        if hb.node == self.node:
            self._check_own_name(frame[6:12])
            return
        known = hb.node in self.membership.live()
        self.membership.heard(hb, now)
        if hb.leaving:
            log.info("event=l2_peer_down node=%s reason=leaving", hb.node)
        elif not known:
            log.info("event=l2_peer_up node=%s interface=%s", hb.node, port.name)
        self.live = self.membership.live()

    def _check_own_name(self, src_mac: bytes) -> None:
        # Our own frame seen on another of our ports is fine; another machine
        # with our name would make both claim the same VIPs.
        if not self._duplicate_warned and all(p.mac != src_mac for p in self.ports.values()):
            self._duplicate_warned = True
            log.warning("event=l2_duplicate_node_name node=%s mac=%s", self.node, src_mac.hex(":"))

    def _on_arp(self, port: _Port, frame: bytes, now: float) -> None:
        req = parse_arp_request(frame)
        # sender == target: someone's own gratuitous ARP, not a question
        if req and req.target_ip in self.owned and req.sender_ip != req.target_ip:
            port.send(ETH_P_ARP, arp_reply(port.mac, req))

    def _on_solicitation(self, port: _Port, frame: bytes, now: float) -> None:
        sol = parse_neighbor_solicitation(frame)
        if sol and sol.target in self.owned:
            port.send(ETH_P_IPV6, solicited_na(port.mac, sol))

    _handlers: dict[int, Callable[[_Engine, _Port, bytes, float], None]] = {
        ETH_P_HEARTBEAT: _on_heartbeat,
        ETH_P_ARP: _on_arp,
        ETH_P_IPV6: _on_solicitation,
    }

    def close(self, now: float) -> None:
        if self.ports:
            self._heartbeat(now, leaving=True)
        for port in list(self.ports.values()):
            self._close_port(port)
        self.owned = frozenset()
        self.selector.close()
