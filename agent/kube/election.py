"""Leader election over a coordination.k8s.io/v1 Lease: who writes status.

Every agent programs its own node; exactly one writes status.  The holder
renews every `renew` seconds; another agent takes the Lease over once it has
not been renewed for `duration` seconds.  A holder that cannot renew stops
calling itself leader before the others can take over (it keeps a margin), so
two writers never overlap while clocks agree.

`state()` says who writes status from this agent's point of view and, when
nobody can, why: a missing Lease namespace or missing RBAC is said once at
error level with what to do, then kept in the state (and the
`gatewaylb_status_writer` metric) instead of being logged every renew period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.kube.client import ApiError, KubeClient, micro_time, parse_micro_time

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriterState:
    """Who writes status: `leader` (this agent), `standby` (another agent
    holds the Lease), `blocked` (this agent cannot take part: `reason` and
    `detail` say why and what to do), `starting` (not tried yet)."""

    state: str
    reason: str = ""
    detail: str = ""


def classify_lease_error(exc: Exception, namespace: str, name: str) -> WriterState:
    """A failed Lease request as a WriterState a person can act on."""
    if isinstance(exc, ApiError):
        details = exc.body.get("details") or {}
        if exc.status == 404 and details.get("kind") == "namespaces":
            return WriterState(
                "blocked",
                "LeaseNamespaceMissing",
                f"namespace {namespace!r} (for the Lease {namespace}/{name}) does not exist: "
                f"create it (kubectl create namespace {namespace}) or pass --lease-namespace "
                "(GATEWAYLB_LEASE_NAMESPACE) naming the agent's namespace",
            )
        if exc.status in (401, 403):
            return WriterState(
                "blocked",
                "Forbidden",
                f"the API server refused the Lease {namespace}/{name} ({exc}): grant the "
                "agent's ServiceAccount get, create and update on "
                f"coordination.k8s.io leases in {namespace} (deploy/daemonset/rbac.yaml)",
            )
    return WriterState("blocked", "LeaseUnavailable", f"Lease {namespace}/{name}: {exc}"[:300])


class LeaseElector:
    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        identity: str,
        name: str = "gatewaylb-status",
        duration: float = 15.0,
        renew: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._client = client
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name, self.namespace, self.identity = name, namespace, identity
        self._duration, self._renew, self._clock = duration, renew, clock
        self._leader_until = 0.0
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self.transitions = 0
        self._state = WriterState("starting")
        self._holder = ""

    def state(self) -> WriterState:
        if self.is_leader():
            return WriterState("leader")
        if self._state.state == "blocked":
            return self._state
        if self._holder and self._holder != self.identity:
            return WriterState("standby", "", f"{self._holder} holds the Lease")
        return self._state

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def is_leader(self) -> bool:
        return self._clock() < self._leader_until

    def _run(self) -> None:
        while not self._stop.is_set():
            was = self.is_leader()
            try:
                self.try_acquire_or_renew()
                self._set_state(WriterState("leader" if self.is_leader() else "standby"))
            except Exception as exc:  # API down: we stop being leader when our time runs out
                self._set_state(classify_lease_error(exc, self.namespace, self.name))
            now = self.is_leader()
            if now != was:
                log.info(
                    "event=lease_%s lease=%s/%s identity=%s",
                    "acquired" if now else "lost",
                    self.namespace,
                    self.name,
                    self.identity,
                )
                if self._on_change is not None:
                    self._on_change(now)
            self._stop.wait(self._renew)

    def _set_state(self, state: WriterState) -> None:
        """Log a change of state once: a blocked writer at error level with
        what to do, its recovery at info level."""
        before, self._state = self._state, state
        if state == before:
            return
        if state.state == "blocked":
            log.error(
                "event=status_writer_blocked lease=%s/%s reason=%s detail=%r",
                self.namespace,
                self.name,
                state.reason,
                state.detail,
            )
        elif before.state == "blocked":
            log.info(
                "event=status_writer_unblocked lease=%s/%s state=%s",
                self.namespace,
                self.name,
                state.state,
            )

    def try_acquire_or_renew(self) -> bool:
        now = self._clock()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self._duration),
            "renewTime": micro_time(now),
        }
        try:
            lease = self._client.request("GET", self._path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": micro_time(now), "leaseTransitions": 0},
            }
            return self._won(lambda: self._client.request("POST", self._collection, body=body), now)
        current: dict[str, Any] = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        renewed = current.get("renewTime")
        duration = float(current.get("leaseDurationSeconds") or self._duration)
        expired = renewed is None or parse_micro_time(str(renewed)) + duration < now
        self._holder = str(holder or "")
        if holder != self.identity and not expired and holder:
            self._leader_until = 0.0
            return False
        new_spec = dict(current)
        new_spec.update(spec)
        if holder != self.identity:
            new_spec["acquireTime"] = micro_time(now)
            new_spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        body = dict(lease)
        body["spec"] = new_spec
        return self._won(lambda: self._client.request("PUT", self._path, body=body), now)

    def _won(self, write: Callable[[], Any], now: float) -> bool:
        try:
            write()  # resourceVersion in the body: a concurrent writer gets 409
        except ApiError as exc:
            if exc.status in (409, 422):
                self._leader_until = 0.0
                return False
            raise
        # Lead a renew period less than the Lease lasts: a holder that cannot
        # renew steps down before anyone else may take over.
        self._leader_until = now + self._duration - self._renew
        return True
