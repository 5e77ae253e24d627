"""Kubernetes Events for what one node could not do.

Status is written by one agent for the whole cluster; a fact that belongs to
one node (a frontend the kernel refused, a route the local proxy could not
render) is told as a Warning Event on the object it concerns, naming the node
(reportingInstance), so `kubectl describe` shows it.  Repeats of the same
event are sent at most every `repeat_after` seconds.

Owns only the sending and the record of what was sent (in memory: a restart
forgets it).  It creates Events and nothing else: it never reads an object
and never writes another one or a status, nor decides what is worth telling
(lanes.py does); an API error on the write is logged, not raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.kube.client import ApiError, KubeClient, micro_time
from agent.refs import ObjectRef

log = logging.getLogger(__name__)


class EventRecorder:
    def __init__(
        self,
        client: KubeClient,
        *,
        node: str,
        controller: str,
        repeat_after: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._node = node
        self._controller = controller
        self._repeat_after = repeat_after
        self._clock = clock
        self._sent: dict[tuple[ObjectRef, str, str], float] = {}
        self._lock = threading.Lock()
        self.sent = 0

    def warning(self, ref: ObjectRef, reason: str, note: str) -> None:
        now = self._clock()
        key = (ref, reason, note)
        with self._lock:
            last = self._sent.get(key)
            if last is not None and now - last < self._repeat_after:
                return
            self._sent[key] = now
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # <object>.<hex time>, as kubectl and client-go name theirs.
            "metadata": {
                "name": f"{ref.name[:200]}.{int(now * 1e9):x}",
                "namespace": ref.namespace or "default",
            },
            "eventTime": micro_time(now),
            "type": "Warning",
            "reason": reason,
            "action": "Program",
            "note": f"node {self._node}: {note}"[:1024],
            "regarding": {
                "apiVersion": ref.api_version,
                "kind": ref.kind,
                "namespace": ref.namespace,
                "name": ref.name,
            },
            "reportingController": self._controller,
            "reportingInstance": self._node,
        }
        path = f"/apis/events.k8s.io/v1/namespaces/{ref.namespace or 'default'}/events"
        try:
            self._client.request("POST", path, body=body)
            self.sent += 1
        except ApiError as exc:
            log.warning("event=event_write_failed object=%s error=%r", ref, str(exc)[:200])
