"""L2Announcer, the public API of L2 announcement, and the daemon thread that
runs the engine (why a thread: the package docstring, Thread).

Owns that thread, its inbox and wake-up socket pair, and the turning of
Announcements and L2Settings into the engine's configuration.  Never drives the
engine from another thread (`apply` hands a configuration over and waits;
other threads only read fields the engine swaps whole), and never reads or
writes a frame.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agent.announce.l2.engine import _Config, _Engine
from agent.announce.l2.frames import Heartbeat, encode_heartbeat
from agent.announce.l2.ports import discover_interfaces
from agent.state import Announcement, L2Settings

# The name the logger had before the package was split: the JSON log's
# "logger" field and any per-logger level set by name stay the same.
log = logging.getLogger("agent.announce.l2")

APPLY_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class _Request:
    config: _Config | None  # None: stop
    done: threading.Event


def _canonical_vips(announcements: Sequence[Announcement]) -> frozenset[str]:
    out: set[str] = set()
    for a in announcements:
        try:
            out.add(str(ipaddress.ip_address(a.vip)))
        except ValueError:
            log.warning("event=l2_invalid_vip vip=%s gateways=%s", a.vip, ",".join(a.gateways))
    return frozenset(out)


def _config(announcements: Sequence[Announcement], settings: L2Settings) -> _Config:
    vips = _canonical_vips(announcements)
    heartbeat = max(settings.heartbeat_interval_ms, 10) / 1000
    dead_after = settings.dead_after_ms / 1000
    if dead_after < 2 * heartbeat:
        # One lost heartbeat must not look like a dead node.
        log.warning(
            "event=l2_settings_adjusted dead_after_ms=%d used_ms=%d",
            settings.dead_after_ms,
            int(3 * heartbeat * 1000),
        )
        dead_after = 3 * heartbeat
    interfaces = tuple(dict.fromkeys(settings.interfaces)) or discover_interfaces(sorted(vips))
    return _Config(interfaces, vips, heartbeat, dead_after)


class L2Announcer:
    """Answers ARP/NDP for the VIPs this node owns among the live nodes of the
    segment.  Synchronous and thread-safe; the socket loop runs in its own
    daemon thread, started by the first `apply`."""

    def __init__(self, node_name: str) -> None:
        encode_heartbeat(Heartbeat(node_name, 0))  # validates the name
        self.node_name = node_name
        self._engine = _Engine(node_name)
        self._lock = threading.Lock()  # serialises apply and close
        self._inbox: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- commands

    def apply(self, announcements: Sequence[Announcement], settings: L2Settings) -> None:
        """Announce exactly these VIPs (ready or not: a not-ready VIP still needs
        a node that answers for it) on the interfaces of `settings`."""
        config = _config(announcements, settings)
        with self._lock:
            if self._closed:
                log.warning("event=l2_apply_after_close")
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"l2-announce-{self.node_name}", daemon=True
                )
                self._thread.start()
            self._call(config)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._call(None)
                self._thread.join(APPLY_TIMEOUT_S)
            self._wake_r.close()
            self._wake_w.close()

    # -- metrics

    def owned(self) -> frozenset[str]:
        return self._engine.owned

    @property
    def ownership_changes(self) -> int:
        """Takeovers plus releases by this node, counted per VIP."""
        return self._engine.changes

    def live_nodes(self) -> tuple[str, ...]:
        """Nodes heard within the dead interval, this one included, sorted."""
        return self._engine.live

    # -- the thread

    def _call(self, config: _Config | None) -> None:
        request = _Request(config, threading.Event())
        self._inbox.put(request)
        self._wake_w.send(b"\0")
        if not request.done.wait(APPLY_TIMEOUT_S):
            log.warning("event=l2_loop_slow waited_s=%.0f", APPLY_TIMEOUT_S)

    def _run(self) -> None:
        engine = self._engine
        engine.selector.register(self._wake_r, selectors.EVENT_READ, None)
        while True:
            try:
                if not self._serve_inbox():
                    return
                # Read before expiring: after a stall, the heartbeats queued
                # meanwhile must count before anyone is declared dead.
                for key, _ in engine.selector.select(engine.timeout(time.monotonic())):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    else:
                        port, ethertype = key.data
                        engine.handle(port, ethertype, time.monotonic())
                engine.tick(time.monotonic())
            except Exception:  # a bug must not end announcing: log, back off, go on
                log.exception("event=l2_loop_error")
                time.sleep(0.1)

    def _serve_inbox(self) -> bool:
        while True:
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                return True
            try:
                if request.config is None:
                    self._engine.selector.unregister(self._wake_r)
                    self._engine.close(time.monotonic())
                    return False
                self._engine.reconfigure(request.config, time.monotonic())
            finally:
                request.done.set()
