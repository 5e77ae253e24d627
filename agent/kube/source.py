"""The Kubernetes source: list+watch of every kind translate needs, into Snapshots.

One thread per resource runs the classic reflector loop: LIST (the whole
collection, atomically replacing that kind in the cache), then WATCH from the
list's resourceVersion with bookmarks; a 410 Gone means relist; any other
failure backs off exponentially and tries again.  Objects are parsed as they
arrive, so building a Snapshot is only collecting parsed objects.

Losing the API server changes nothing in the cache: the node keeps forwarding
on the last good state and resyncs when the server is back.  The source is not
`synced` until every kind has been listed once, so the agent never programs a
partial view (which would delete frontends for objects not yet seen).

The raw status of Gateway API objects is kept too: the status writer
(status.py) needs it to keep other controllers' route parents and unchanged
lastTransitionTimes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.gcpause import gc_paused
from agent.kube.client import ApiError, ApiResource, Gone, KubeClient
from agent.model.config import CONFIG_GROUP, CONFIG_KIND
from agent.model.routes import ROUTE_KINDS
from agent.model.snapshot import LoadProblem, Parsed, Snapshot, SnapshotBuilder, parse_object

log = logging.getLogger(__name__)

GW = "gateway.networking.k8s.io"
RESOURCES: tuple[ApiResource, ...] = (
    ApiResource("GatewayClass", GW, "v1", "gatewayclasses", namespaced=False),
    ApiResource("Gateway", GW, "v1", "gateways", namespaced=True),
    ApiResource("ListenerSet", GW, "v1", "listenersets", namespaced=True),
    ApiResource("HTTPRoute", GW, "v1", "httproutes", namespaced=True),
    ApiResource("GRPCRoute", GW, "v1", "grpcroutes", namespaced=True),
    ApiResource("TLSRoute", GW, "v1", "tlsroutes", namespaced=True),
    ApiResource("TCPRoute", GW, "v1", "tcproutes", namespaced=True),
    ApiResource("UDPRoute", GW, "v1", "udproutes", namespaced=True),
    ApiResource("ReferenceGrant", GW, "v1", "referencegrants", namespaced=True),
    ApiResource("BackendTLSPolicy", GW, "v1", "backendtlspolicies", namespaced=True),
    ApiResource("Service", "", "v1", "services", namespaced=True),
    ApiResource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", namespaced=True),
    ApiResource("Namespace", "", "v1", "namespaces", namespaced=False),
    ApiResource("Secret", "", "v1", "secrets", namespaced=True),
    ApiResource("ConfigMap", "", "v1", "configmaps", namespaced=True),
    ApiResource(CONFIG_KIND, CONFIG_GROUP, "v1alpha1", "gatewaylbconfigs", namespaced=False),
)
# Kinds whose CRD may not be installed: a cluster without gatewaylb's own CRD
# still runs (its GatewayClasses just cannot name parameters), and so does one
# with Gateway API CRDs older than ListenerSet's and BackendTLSPolicy's v1 (v1.5).
OPTIONAL_KINDS = frozenset({CONFIG_KIND, "ListenerSet", "BackendTLSPolicy"})
OPTIONAL_RETRY_SECONDS = 30.0
# Only TLS Secrets can be certificateRefs; the rest are none of the agent's business.
FIELD_SELECTORS = {"Secret": "type=kubernetes.io/tls"}
STATUS_KINDS = frozenset(
    {"GatewayClass", "Gateway", "ListenerSet", *ROUTE_KINDS, "BackendTLSPolicy"}
)

Key = tuple[str, str, str]  # kind, namespace, name


@dataclass
class _Entry:
    parsed: Parsed | LoadProblem | None
    resource_version: str
    status: dict[str, Any] | None


@dataclass
class _KindState:
    synced: bool = False
    resource_version: str = ""
    errors: int = 0
    last_error: str = ""


@dataclass
class StatusTarget:
    """Where a status writer finds an object: its resource and identity."""

    resource: ApiResource
    namespace: str
    name: str
    resource_version: str
    status: dict[str, Any] | None = field(default=None)


class KubeSource:
    name = "kubernetes"

    def __init__(
        self,
        client: KubeClient,
        *,
        resources: tuple[ApiResource, ...] = RESOURCES,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
    ) -> None:
        self.client = client
        self._resources = resources
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._objects: dict[Key, _Entry] = {}
        self._kinds = {r.kind: _KindState() for r in resources}
        self._version = 0
        self._snapshot: Snapshot | None = None
        self._snapshot_version = -1
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_changed: asyncio.Event | None = None
        self._threads: list[threading.Thread] = []

    # -- Source protocol -----------------------------------------------------------

    def start(self) -> None:
        for resource in self._resources:
            thread = threading.Thread(
                target=self._reflect, args=(resource,), name=f"watch-{resource.plural}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def synced(self) -> bool:
        with self._lock:
            return all(state.synced for state in self._kinds.values())

    def snapshot(self) -> Snapshot:
        with self._lock:
            if self._snapshot is not None and self._snapshot_version == self._version:
                return self._snapshot
            version = self._version
            entries = [e.parsed for e in self._objects.values()]
        with gc_paused():
            builder = SnapshotBuilder()
            for parsed in entries:
                builder.add(parsed)
            snapshot = builder.build()
        with self._lock:
            self._snapshot, self._snapshot_version = snapshot, version
        return snapshot

    def errors(self) -> list[str]:
        with self._lock:
            problems = [str(p) for p in (self._snapshot.problems if self._snapshot else ())]
            problems += [
                f"{kind}: {state.last_error}"
                for kind, state in sorted(self._kinds.items())
                if state.errors and state.last_error
            ]
        return problems

    async def wait_for_change(self, timeout: float) -> bool:
        if self._async_changed is None:
            self._loop = asyncio.get_running_loop()
            self._async_changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._async_changed.wait(), timeout)
        except TimeoutError:
            return False
        self._async_changed.clear()
        return self.synced()

    def close(self) -> None:
        self._stop.set()

    # -- what the status writer needs ------------------------------------------------

    def status_refs(self) -> dict[Key, StatusTarget]:
        by_kind = {r.kind: r for r in self._resources}
        with self._lock:
            return {
                key: StatusTarget(by_kind[key[0]], key[1], key[2], e.resource_version, e.status)
                for key, e in self._objects.items()
                if key[0] in STATUS_KINDS
            }

    def update_status(self, key: Key, resource_version: str, status: dict[str, Any]) -> None:
        """Record a status this agent just wrote (the watch event will follow)."""
        with self._lock:
            entry = self._objects.get(key)
            if entry is not None:
                entry.status = status
                entry.resource_version = resource_version

    # -- the reflector loop ----------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        if self._loop is not None and self._async_changed is not None:
            self._loop.call_soon_threadsafe(self._async_changed.set)

    def _reflect(self, resource: ApiResource) -> None:
        backoff = 0.0
        query = (
            {"fieldSelector": FIELD_SELECTORS[resource.kind]}
            if resource.kind in FIELD_SELECTORS
            else {}
        )
        while not self._stop.is_set():
            try:
                self._list(resource, query)
                backoff = 0.0
                while not self._stop.is_set():
                    self._watch(resource, query)
            except Gone:
                log.info("event=watch_expired kind=%s action=relist", resource.kind)
                continue
            except ApiError as exc:
                if exc.status == 404 and resource.kind in OPTIONAL_KINDS:
                    self._absent(resource)
                    self._stop.wait(OPTIONAL_RETRY_SECONDS)
                else:
                    backoff = self._failed(resource, exc, backoff)
            except Exception as exc:  # network, 5xx, RBAC: keep the cache, try again
                backoff = self._failed(resource, exc, backoff)

    def _failed(self, resource: ApiResource, exc: Exception, backoff: float) -> float:
        backoff = min(self._max_backoff, max(0.5, backoff * 2))
        state = self._kinds[resource.kind]
        with self._lock:
            state.errors += 1
            state.last_error = str(exc)[:300]
        log.warning(
            "event=watch_failed kind=%s error=%r retry_in=%.1fs",
            resource.kind,
            str(exc)[:200],
            backoff,
        )
        self._stop.wait(backoff * random.uniform(0.8, 1.2))
        return backoff

    def _absent(self, resource: ApiResource) -> None:
        """An optional kind the API server does not serve: synced and empty."""
        with self._lock:
            state = self._kinds[resource.kind]
            first = not state.synced
            removed = [k for k in self._objects if k[0] == resource.kind]
            for key in removed:
                del self._objects[key]
            state.synced = True
            if removed:
                self._version += 1
        if first:
            log.info(
                "event=kind_not_served kind=%s retry_every=%.0fs",
                resource.kind,
                OPTIONAL_RETRY_SECONDS,
            )
        if removed:
            self._notify()

    def _list(self, resource: ApiResource, query: dict[str, str]) -> None:
        t0 = time.monotonic()
        items: list[dict[str, Any]] = []
        params: dict[str, str | int] = {"limit": 500, **query}
        while True:
            page = self.client.request("GET", resource.collection_path(), query=params, timeout=60)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
            params["continue"] = cont
        fresh: dict[Key, _Entry] = {}
        with gc_paused():
            for item in items:
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
                key, entry = self._entry(resource, item)
                fresh[key] = entry
        with self._lock:
            # Replace this kind wholesale, atomically: deletions missed while
            # disconnected disappear here.
            for key in [k for k in self._objects if k[0] == resource.kind]:
                if key not in fresh:
                    del self._objects[key]
            self._objects.update(fresh)
            state = self._kinds[resource.kind]
            state.synced = True
            state.resource_version = str(meta.get("resourceVersion") or "")
            state.last_error = ""
            self._version += 1
        log.info(
            "event=listed kind=%s objects=%d took_ms=%.0f",
            resource.kind,
            len(items),
            (time.monotonic() - t0) * 1000,
        )
        self._notify()

    def _entry(self, resource: ApiResource, item: dict[str, Any]) -> tuple[Key, _Entry]:
        meta = item.get("metadata") or {}
        namespace = str(meta.get("namespace") or "") if resource.namespaced else ""
        key = (resource.kind, namespace, str(meta.get("name") or ""))
        source = f"{resource.kind} {namespace + '/' if namespace else ''}{key[2]}"
        parsed = parse_object(item, source)
        status = item.get("status") if resource.kind in STATUS_KINDS else None
        return key, _Entry(parsed, str(meta.get("resourceVersion") or ""), status)

    def _watch(self, resource: ApiResource, query: dict[str, str]) -> None:
        state = self._kinds[resource.kind]
        for event in self.client.watch(
            resource.collection_path(),
            resource_version=state.resource_version,
            query=query,
            timeout_seconds=self._watch_timeout,
        ):
            if self._stop.is_set():
                return
            kind = event.get("type")
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            if kind == "ERROR":
                code = int(obj.get("code") or 0)
                if code == 410:
                    raise Gone(410, "Gone", obj)
                raise ApiError(code, str(obj.get("reason") or "watch error"), obj)
            rv = str(meta.get("resourceVersion") or "")
            if kind == "BOOKMARK":
                state.resource_version = rv or state.resource_version
                continue
            obj.setdefault("apiVersion", resource.api_version)
            obj.setdefault("kind", resource.kind)
            key, entry = self._entry(resource, obj)
            with self._lock:
                state.resource_version = rv or state.resource_version
                old = self._objects.get(key)
                if kind == "DELETED":
                    self._objects.pop(key, None)
                elif old is not None and old.parsed == entry.parsed:
                    # Only the status (or another field translate ignores)
                    # changed, e.g. our own status write: nothing to recompute.
                    old.status, old.resource_version = entry.status, entry.resource_version
                    continue
                else:
                    self._objects[key] = entry
                self._version += 1
            self._notify()
