"""A small, typed HTTP client for the Kubernetes API: requests and watch streams.

The `kubernetes` package is used for what it does well (reading a kubeconfig
or the in-cluster service account, refreshing tokens); requests go through
urllib3 directly so that lists stay plain JSON (no model objects: 5k routes
would cost seconds to deserialise) and watches stream line by line.

Owns no cache and no semantics: the package's other modules (source.py,
status.py, events.py, election.py) build on it.  It never decides what to
read or write (paths, queries and bodies all come from its callers), never
retries a request (callers back off), and on a 410 raises `Gone` for the
caller to relist rather than relisting itself.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import urllib3

log = logging.getLogger(__name__)


def micro_time(ts: float) -> str:
    """Kubernetes' MicroTime (Lease renewTime, Event eventTime)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str) -> float:
    text = text.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: Mapping[str, Any] | None = None) -> None:
        message = (body or {}).get("message") or reason
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = dict(body or {})


class Gone(ApiError):
    """410: the resourceVersion is too old; relist."""


@dataclass(frozen=True, slots=True)
class ApiResource:
    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str | None = None) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace and self.namespaced:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"

    def object_path(self, namespace: str, name: str) -> str:
        return f"{self.collection_path(namespace if self.namespaced else None)}/{name}"


class KubeClient:
    def __init__(self, configuration: Any) -> None:
        self._cfg = configuration
        self.host = str(configuration.host).rstrip("/")
        ctx = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if not configuration.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            ctx.load_cert_chain(configuration.cert_file, configuration.key_file)
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=32, ssl_context=ctx)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubeClient:
        from kubernetes import config
        from kubernetes.client import Configuration

        cfg = Configuration()
        load: Any = config.load_kube_config  # the kubernetes package is untyped
        load(config_file=path, context=context, client_configuration=cfg)
        return cls(cfg)

    @classmethod
    def in_cluster(cls) -> KubeClient:
        from kubernetes import config
        from kubernetes.client import Configuration

        cfg = Configuration()
        load: Any = config.load_incluster_config
        load(client_configuration=cfg)
        return cls(cfg)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        hook = getattr(self._cfg, "refresh_api_key_hook", None)
        if hook is not None:
            hook(self._cfg)  # in-cluster: re-reads the rotated service-account token
        # Older clients keep the token under "authorization", newer under "BearerToken".
        token = self._cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        url = self.host + path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        resp = self._pool.request(
            method,
            url,
            body=data,
            headers=self._headers(content_type if data is not None else None),
            timeout=urllib3.Timeout(connect=5.0, read=timeout),
            retries=False,
        )
        payload: dict[str, Any] = {}
        if resp.data:
            try:
                payload = json.loads(resp.data)
            except json.JSONDecodeError:
                payload = {"message": resp.data[:200].decode(errors="replace")}
        if resp.status >= 400:
            error = Gone if resp.status == 410 else ApiError
            raise error(resp.status, resp.reason or "", payload)
        return payload

    def watch(
        self,
        path: str,
        *,
        resource_version: str,
        query: Mapping[str, str] | None = None,
        timeout_seconds: int = 300,
    ) -> Iterator[dict[str, Any]]:
        """Events of one watch request, until the server ends it."""
        params: dict[str, str | int] = dict(query or {})
        params.update(
            watch="true",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=timeout_seconds,
        )
        url = f"{self.host}{path}?{urlencode(params)}"
        resp = self._pool.request(
            "GET",
            url,
            headers=self._headers(),
            preload_content=False,
            timeout=urllib3.Timeout(connect=5.0, read=timeout_seconds + 30),
            retries=False,
        )
        try:
            if resp.status >= 400:
                body = json.loads(resp.read() or b"{}")
                error = Gone if resp.status == 410 else ApiError
                raise error(resp.status, resp.reason or "", body)
            buffer = b""
            for chunk in resp.stream(64 * 1024):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()
