"""KubeStatusWriter: the StatusReport into the status subresource of each
GatewayClass, Gateway, ListenerSet, route and BackendTLSPolicy.

A status writer of agent/statuswriter.py (a reconciler of `StatusView`).  A
status is patched only when it changed (no write storms), with optimistic
concurrency (resourceVersion) and a retry on conflict.  Conditions keep their
lastTransitionTime while their status stays the same; route parents and policy
ancestors written by other controllers are kept as they are.  Only the Lease
holder writes (see election.py); every agent still programs its own node.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.kube.client import ApiError, KubeClient
from agent.kube.source import Key, KubeSource, StatusTarget
from agent.model.routes import ROUTE_KINDS
from agent.reconcile import Outcome
from agent.statuswriter import StatusView
from agent.translate.status import Status

log = logging.getLogger(__name__)

# Kinds whose status is a list shared between controllers: (list, reference field).
SHARED_STATUS: dict[str, tuple[str, str]] = {
    **{kind: ("parents", "parentRef") for kind in ROUTE_KINDS},
    "BackendTLSPolicy": ("ancestors", "ancestorRef"),
}


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _stamp(
    new: list[dict[str, Any]], old: list[dict[str, Any]] | None, now: str
) -> list[dict[str, Any]]:
    """Conditions with lastTransitionTime: kept from the old condition of the
    same type while its status is unchanged, else now."""
    previous = {c.get("type"): c for c in old or [] if isinstance(c, dict)}
    out = []
    for cond in new:
        before = previous.get(cond["type"])
        keep = before is not None and before.get("status") == cond["status"]
        stamped = dict(cond)
        stamped["lastTransitionTime"] = (
            before.get("lastTransitionTime", now) if keep and before is not None else now
        )
        out.append(stamped)
    return out


def _parent_key(ref: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(ref.get(k) for k in ("group", "kind", "namespace", "name", "sectionName", "port"))


def merge_status(
    kind: str, old: dict[str, Any] | None, new: dict[str, Any], now: str, controller: str
) -> dict[str, Any]:
    old = old or {}
    merged = dict(new)
    if kind in SHARED_STATUS:
        entries, ref_field = SHARED_STATUS[kind]
        old_entries = [p for p in old.get(entries) or [] if isinstance(p, dict)]
        mine_before = {
            _parent_key(p.get(ref_field) or {}): p
            for p in old_entries
            if p.get("controllerName") == controller
        }
        others = [p for p in old_entries if p.get("controllerName") != controller]
        mine = []
        for entry in new.get(entries) or []:
            before = mine_before.get(_parent_key(entry[ref_field]))
            stamped = dict(entry)
            stamped["conditions"] = _stamp(
                entry["conditions"], (before or {}).get("conditions"), now
            )
            mine.append(stamped)
        merged[entries] = others + mine
        return merged
    merged["conditions"] = _stamp(new.get("conditions") or [], old.get("conditions"), now)
    if kind in ("Gateway", "ListenerSet"):
        old_listeners = {
            ls.get("name"): ls for ls in old.get("listeners") or [] if isinstance(ls, dict)
        }
        listeners = []
        for ls in new.get("listeners") or []:
            stamped = dict(ls)
            stamped["conditions"] = _stamp(
                ls["conditions"], (old_listeners.get(ls["name"]) or {}).get("conditions"), now
            )
            listeners.append(stamped)
        merged["listeners"] = listeners
    return merged


def _normalized(value: Any) -> Any:
    """The API server omits empty lists and nulls it stores: compare without them,
    or every sync would rewrite an unchanged status."""
    if isinstance(value, dict):
        out = {k: _normalized(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


class KubeStatusWriter:
    def __init__(
        self,
        client: KubeClient,
        source: KubeSource,
        controller_name: str,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        parallel: int = 8,
    ) -> None:
        self._parallel = parallel
        self._client = client
        self._source = source
        self._controller = controller_name
        self._is_leader = is_leader
        self._clock = clock
        self._writes_lock = threading.Lock()
        self.writes = 0  # patches sent, for tests and metrics
        # key -> (the status we last found or made current, the object's
        # resourceVersion then).  While both are unchanged the object needs no
        # look at all: at thousands of routes, rendering and comparing every
        # status after each sync would cost more CPU than the sync itself.
        self._confirmed: dict[Key, tuple[Status, str]] = {}

    name = "status"

    def reconcile(self, desired: StatusView) -> Outcome:
        if not self._is_leader():
            self._confirmed.clear()  # another agent writes meanwhile
            return Outcome()
        result = desired.result
        refs = self._source.status_refs()
        wanted: dict[Key, dict[str, Any]] = {}
        computed: dict[Key, Status] = {}
        ours: set[Key] = set()
        for o in result.status.objects:
            key = (o.kind, o.namespace, o.name)
            ours.add(key)
            ref = refs.get(key)
            if ref is not None and self._confirmed.get(key) == (o.status, ref.resource_version):
                continue
            wanted[key] = o.status.to_dict()
            computed[key] = o.status
        # Routes that no longer name any Gateway of ours lose our parents
        # entries; policies no Gateway of ours uses, our ancestors entries.
        for key, ref in refs.items():
            if key[0] in SHARED_STATUS and key not in ours and self._has_our_entries(ref):
                wanted[key] = {SHARED_STATUS[key[0]][0]: []}
        now = rfc3339(self._clock())
        started = time.monotonic()
        jobs = [
            (key, refs[key], new)
            for key, new in sorted(wanted.items())
            if key in refs  # else not in the API (yet, or any more)
        ]
        # Each patch is a round trip; a few in flight make thousands of routes'
        # first status minutes faster, and the API server copes with 8.
        with concurrent.futures.ThreadPoolExecutor(self._parallel) as pool:
            for (key, _, _), rv in zip(
                jobs,
                pool.map(lambda job: self._patch_logged(job[0], job[1], job[2], now), jobs),
                strict=True,
            ):
                if rv is not None and key in computed:
                    self._confirmed[key] = (computed[key], rv)
        if jobs:
            log.info(
                "event=status_written objects=%d took_ms=%.0f",
                len(jobs),
                1000 * (time.monotonic() - started),
            )
        if len(self._confirmed) > 2 * len(ours) + 1024:
            self._confirmed = {k: v for k, v in self._confirmed.items() if k in ours}
        return Outcome(changed=len(jobs))

    def _patch_logged(
        self, key: Key, target: StatusTarget, new: dict[str, Any], now: str
    ) -> str | None:
        """The object's resourceVersion once its status is current, None on failure."""
        try:
            return self._patch(key, target, new, now)
        except ApiError as exc:
            log.warning(
                "event=status_write_failed kind=%s object=%s/%s error=%r",
                key[0],
                key[1],
                key[2],
                str(exc)[:200],
            )
            return None

    def _has_our_entries(self, ref: StatusTarget) -> bool:
        entries = (ref.status or {}).get(SHARED_STATUS[ref.resource.kind][0]) or []
        return any(
            isinstance(p, dict) and p.get("controllerName") == self._controller for p in entries
        )

    def _patch(self, key: Key, ref: StatusTarget, new: dict[str, Any], now: str) -> str | None:
        status, rv = ref.status, ref.resource_version
        for attempt in range(4):
            merged = merge_status(key[0], status, new, now, self._controller)
            if _normalized(merged) == _normalized(status or {}):
                return rv
            path = ref.resource.object_path(ref.namespace, ref.name) + "/status"
            try:
                out = self._client.request(
                    "PATCH",
                    path,
                    body={"metadata": {"resourceVersion": rv}, "status": merged},
                    content_type="application/merge-patch+json",
                )
            except ApiError as exc:
                if exc.status == 404:
                    return None
                if exc.status != 409 or attempt == 3:
                    raise
                # Someone wrote in between: read the object again and re-merge.
                fresh = self._client.request(
                    "GET", ref.resource.object_path(ref.namespace, ref.name)
                )
                status = fresh.get("status")
                rv = str((fresh.get("metadata") or {}).get("resourceVersion") or "")
                continue
            with self._writes_lock:
                self.writes += 1
            new_rv = str((out.get("metadata") or {}).get("resourceVersion") or "")
            self._source.update_status(key, new_rv, out.get("status") or merged)
            return new_rv
        return None
