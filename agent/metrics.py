"""Prometheus metrics and the /metrics, /healthz, /readyz endpoint.

Names and labels are part of the contract (shared/CONTRACT.md).  Per-frontend
and per-backend counters live in the kernel; they are read at scrape time
through a callback, so /metrics always shows what the kernel counted, and an
agent restart continues the kernel's counts instead of resetting them.

Four collectors read at scrape time, through the callbacks they are given:
the frontend and backend counters and the unserved-packet counter (both kept
in the kernel), the announcer's state, and who writes status.  Nothing here
reads the kernel itself or ever writes to it; /healthz and /readyz only
report what their callbacks say.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.announce.reconciler import AnnounceStatus
from agent.dataplane.base import FrontendCounters

log = logging.getLogger(__name__)

FRONTEND_LABELS = ("namespace", "gateway", "listener", "vip", "protocol", "port")


@dataclass(frozen=True, slots=True)
class LabelledCounters:
    labels: tuple[str, str, str, str, str, str]  # FRONTEND_LABELS order
    counters: FrontendCounters


CountersSource = Callable[[], Iterable[LabelledCounters]]


class _KernelCounters(Collector):
    def __init__(self, source: CountersSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily(
            "gatewaylb_frontend_packets",
            "Packets that reached a frontend (VIP, protocol, port).",
            labels=FRONTEND_LABELS,
        )
        octets = CounterMetricFamily(
            "gatewaylb_frontend_bytes",
            "Bytes that reached a frontend.",
            labels=FRONTEND_LABELS,
        )
        flows = CounterMetricFamily(
            "gatewaylb_backend_connections",
            "New flows sent to a backend (for UDP, new conntrack entries).",
            labels=(*FRONTEND_LABELS, "backend_ip", "backend_port"),
        )
        try:
            items = list(self._source())
        except Exception:  # a scrape must never take the agent down
            log.exception("event=metrics_read_failed")
            items = []
        for item in items:
            labels = list(item.labels)
            packets.add_metric(labels, item.counters.packets)
            octets.add_metric(labels, item.counters.bytes)
            for (ip, port), count in sorted(item.counters.backend_connections.items()):
                flows.add_metric([*labels, ip, str(port)], count)
        yield packets
        yield octets
        yield flows


AnnounceSource = Callable[[], AnnounceStatus]


class _Announcements(Collector):
    """Read from the announcer at scrape time: its state changes on its own
    (a BGP session drops, a peer node dies and this one takes its VIPs)."""

    def __init__(self, source: AnnounceSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        st = self._source()
        announced = GaugeMetricFamily(
            "gatewaylb_announced_vips", "VIPs this node announces now.", labels=["mode"]
        )
        announced.add_metric([st.mode], len(st.announced))
        yield announced
        if st.mode == "bgp":
            up = GaugeMetricFamily(
                "gatewaylb_bgp_session_up",
                "1 when the BGP session with the peer is established.",
                labels=["peer", "state"],
            )
            for peer, state in sorted(st.peers.items()):
                up.add_metric([peer, state], 1.0 if state == "established" else 0.0)
            yield up
            problems = GaugeMetricFamily(
                "gatewaylb_bgp_config_problems", "BGP peers or settings this node had to skip."
            )
            problems.add_metric([], len(st.problems))
            yield problems
        if st.mode == "l2":
            changes = CounterMetricFamily(
                "gatewaylb_l2_ownership_changes",
                "Times this node took over or released a VIP in L2 mode.",
            )
            changes.add_metric([], st.ownership_changes)
            yield changes


WriterStateSource = Callable[[], tuple[str, str]]  # (state, reason)
CounterSource = Callable[[], int]


class _StatusWriter(Collector):
    """Who writes status, read at scrape time (the Lease changes hands on its own)."""

    def __init__(self, source: WriterStateSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        state, reason = self._source()
        family = GaugeMetricFamily(
            "gatewaylb_status_writer",
            "1 for this agent's status-writer state: leader (writes status), standby "
            "(another agent does), blocked (nobody can: reason says why), file "
            "(standalone, --status-file), disabled (standalone without --status-file).",
            labels=["state", "reason"],
        )
        family.add_metric([state, reason], 1.0)
        yield family


class _KernelCounter(Collector):
    """One counter kept in the kernel, read at scrape time."""

    def __init__(self, name: str, documentation: str, source: CounterSource) -> None:
        self._name, self._doc, self._source = name, documentation, source

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._doc)
        family.add_metric([], self._source())
        yield family


class AgentMetrics:
    def __init__(self, *, version: str, dataplane: str, node: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.info = Gauge(
            "gatewaylb_info",
            "Agent build and configuration.",
            ["version", "dataplane", "node"],
            registry=self.registry,
        )
        self.info.labels(version, dataplane, node).set(1)
        self.frontends_programmed = Gauge(
            "gatewaylb_frontends_programmed",
            "L4 frontends (VIP, protocol, port) programmed in the kernel.",
            registry=self.registry,
        )
        self.backends_programmed = Gauge(
            "gatewaylb_backends_programmed",
            "Backends programmed across all frontends.",
            registry=self.registry,
        )
        self.sync_duration = Histogram(
            "gatewaylb_sync_duration_seconds",
            "Time one reconciler took to converge the kernel to a desired state.",
            ["reconciler"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.sync_errors = Counter(
            "gatewaylb_sync_errors",
            "Reconciler runs that failed (fully or for some frontends).",
            ["reconciler"],
            registry=self.registry,
        )
        self.last_sync = Gauge(
            "gatewaylb_last_sync_timestamp_seconds",
            "Unix time of the last successful sync.",
            registry=self.registry,
        )
        self.manifest_errors = Gauge(
            "gatewaylb_source_errors",
            "Source documents or files that could not be used in the last sync.",
            registry=self.registry,
        )
        self.manifest_warnings = Gauge(
            "gatewaylb_source_warnings",
            "Unknown kinds and fields in manifest files in the last sync (the objects "
            "are used as written, the unknown parts ignored).",
            registry=self.registry,
        )

        self.rejected_objects = Gauge(
            "gatewaylb_rejected_objects",
            "Objects that are rejected or partly rejected (a condition says so in their "
            "status), by kind and reason.",
            ["kind", "reason"],
            registry=self.registry,
        )

    def add_status_writer(self, source: WriterStateSource) -> None:
        self.registry.register(_StatusWriter(source))

    def add_unserved_packets(self, source: CounterSource) -> None:
        self.registry.register(
            _KernelCounter(
                "gatewaylb_vip_unserved_packets",
                "Packets to a VIP on a protocol and port no listener serves, refused "
                "(TCP reset, ICMP port unreachable) instead of forwarded.",
                source,
            )
        )

    def set_rejected(self, counts: dict[tuple[str, str], int]) -> None:
        """Replace the rejected-object counts (kind, reason) -> n."""
        self.rejected_objects.clear()
        for (kind, reason), n in sorted(counts.items()):
            self.rejected_objects.labels(kind, reason).set(n)

    def add_kernel_counters(self, source: CountersSource) -> None:
        self.registry.register(_KernelCounters(source))

    def add_announcements(self, source: AnnounceSource) -> None:
        self.registry.register(_Announcements(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """Serves /metrics, /healthz and /readyz from a daemon thread."""

    def __init__(
        self,
        address: str,
        metrics: AgentMetrics,
        ready: Callable[[], bool],
        healthy: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
    ) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        metrics_ref, ready_ref, healthy_ref = metrics, ready, healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, metrics_ref.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, why = healthy_ref()
                    self._reply(200 if ok else 503, f"{why}\n".encode(), "text/plain")
                elif path == "/readyz":
                    if ready_ref():
                        self._reply(200, b"ready\n", "text/plain")
                    else:
                        self._reply(
                            503, b"not ready: first sync not programmed yet\n", "text/plain"
                        )
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the log

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self._server = Server((host, int(port)), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
