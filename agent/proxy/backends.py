"""Backend sections: one per distinct (Service, endpoints, protocol, backend
filters, timeout, retry policy, TLS to the backend); its endpoints are its
servers.

Owns `BackendKey`, the backend names (stable across renders: a hash of what
the backend is), the endpoint checks, and the server options of a
BackendTLSPolicy (SNI, verification, a client certificate).  `Backends` is
the registry of one render: frontends ask it for a key and the name of the
section, and the budget asks it what a backend costs.

Pure: never runs haproxy, never writes a file (certificate and CA files go to
the `RunFiles` it is given); it does not decide which requests reach a
backend.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from agent.filters import Retry, RouteFilter
from agent.proxy import escape
from agent.proxy.certificates import RunFiles, certificate_id
from agent.proxy.escape import Unrepresentable, word
from agent.proxy.http_filters import header_lines
from agent.proxy.sections import Section, addr, safe_name, short_hash
from agent.state import Backend, BackendTLS, ServiceBackend


@dataclass(frozen=True, slots=True)
class BackendKey:
    mode: str
    service: str
    # Compared and hashed through `endpoints_id` (equal tuples, equal ids):
    # a large Service has thousands of endpoints, and keys are looked up for
    # every route entry.
    endpoints: tuple[Backend, ...] = field(compare=False)
    endpoints_id: int
    h2: bool
    filters: tuple[RouteFilter, ...]
    timeout_ms: int | None
    retry: Retry | None = None
    tls: BackendTLS | None = None


class Backends:
    """The backend sections of one render, written once per key.  A Service
    with more than `backend_servers` endpoints is refused (a backend's servers
    cost HAProxy O(n^2) to load beyond that; see `Budget`)."""

    def __init__(self, files: RunFiles, backend_servers: int) -> None:
        self.files = files
        self.backend_servers = backend_servers
        self.sections: dict[BackendKey, Section] = {}
        self.costs: dict[BackendKey, tuple[int, int]] = {}  # (bytes, servers)
        self.names: dict[BackendKey, str] = {}
        self.endpoints_checked: dict[int, str | None] = {}  # endpoints id -> why unusable
        self._endpoints_ids: dict[tuple[Backend, ...], int] = {}
        self._endpoints_by_object: dict[int, tuple[tuple[Backend, ...], int]] = {}

    def key(
        self,
        mode: str,
        svc: ServiceBackend,
        *,
        h2: bool = False,
        timeout_ms: int | None = None,
        filters: tuple[RouteFilter, ...] = (),
        retry: Retry | None = None,
    ) -> BackendKey:
        ident = self._endpoints_id(svc.endpoints)
        # Only HTTP is re-encrypted: a tcp-mode backend carries the client's
        # own stream (TLS passthrough) or one a TCPRoute asked for as it is.
        tls = svc.tls if mode == "http" else None
        return BackendKey(mode, svc.name, svc.endpoints, ident, h2, filters, timeout_ms, retry, tls)

    def _endpoints_id(self, endpoints: tuple[Backend, ...]) -> int:
        """A number standing for `endpoints` in this render: the tuple is hashed
        once per object, not once per use."""
        known = self._endpoints_by_object.get(id(endpoints))
        if known is None:
            ident = self._endpoints_ids.setdefault(endpoints, len(self._endpoints_ids))
            known = self._endpoints_by_object[id(endpoints)] = (endpoints, ident)
        return known[1]

    def name(self, key: BackendKey) -> str:
        name = self.names.get(key)
        if name is None:
            parts: tuple[object, ...] = (
                key.mode, key.service, key.endpoints, key.h2, key.filters, key.timeout_ms,
                key.retry,
            )  # fmt: skip
            if key.tls is not None:
                # Not the BackendTLS itself: its repr leaves out the CA bundle.
                tls = key.tls
                ca = hashlib.sha256(tls.ca_pem).hexdigest() if tls.ca_pem is not None else None
                client = certificate_id(tls.client_certificate) if tls.client_certificate else None
                parts += (tls.policy, tls.hostname, ca, client)
            name = self.names[key] = f"be_{safe_name(key.service)}_{short_hash(*parts)}"
        return name

    def add(self, key: BackendKey) -> str:
        """The name of the backend section for `key` (written once)."""
        if key not in self.sections:
            tls = self._server_tls(key.tls, key.h2) if key.tls is not None else ""
            self.sections[key] = backend_section(self.name(key), key, tls)
        return self.name(key)

    def in_order(self) -> list[Section]:
        """The sections written, in the order of the configuration."""
        sections = self.sections
        return [sections[k] for k in sorted(sections, key=lambda k: sections[k].header)]

    def cost(self, key: BackendKey) -> tuple[int, int]:
        """(bytes, servers) the backend adds to the configuration."""
        cost = self.costs.get(key)
        if cost is None:
            text = backend_section(self.name(key), key).text()
            cost = (len(text) + 2, len(key.endpoints))
            self.costs[key] = cost
        return cost

    def check_endpoints(self, svc: ServiceBackend) -> None:
        ident = self._endpoints_id(svc.endpoints)
        if ident not in self.endpoints_checked:
            try:
                check_endpoints(svc)
                self.endpoints_checked[ident] = None
            except Unrepresentable as exc:
                self.endpoints_checked[ident] = str(exc)
        verdict = self.endpoints_checked[ident]
        if verdict is not None:
            raise Unrepresentable(verdict)
        if len(svc.endpoints) > self.backend_servers:
            raise Unrepresentable(
                f"Service {svc.name} has {len(svc.endpoints)} endpoints; a backend holds at most "
                f"{self.backend_servers} servers"
            )

    def _server_tls(self, tls: BackendTLS, h2: bool) -> str:
        """Server options for a BackendTLSPolicy: send its hostname as SNI and
        verify the chain against its CAs and the certificate's names against
        that hostname."""
        ca = "@system-ca" if tls.ca_pem is None else self.files.ca(tls.ca_pem)
        host = escape.hostname(tls.hostname, wildcard=False)
        alpn = " alpn h2" if h2 else ""
        crt = ""
        if tls.client_certificate is not None:
            crt = f" crt {word(self.files.certificate(tls.client_certificate))}"
        return (
            f" ssl verify required ca-file {word(ca)} sni str({host}) verifyhost {host}{alpn}{crt}"
        )


def backend_section(name: str, key: BackendKey, server_tls: str = "") -> Section:
    section = Section(f"backend {name}")
    section.add(f"mode {key.mode}")
    section.add("balance roundrobin")
    if key.timeout_ms is not None:
        section.add(f"timeout server {key.timeout_ms}")
    if key.retry is not None:
        # Tries again on the same server (no redispatch): a retry policy
        # repeats the request to the backend it chose.  Connection failures
        # stay retried, as without a policy.
        if key.retry.attempts is not None:
            section.add(f"retries {key.retry.attempts}")
        codes = " ".join(str(c) for c in sorted(set(key.retry.codes)))
        section.add(f"retry-on conn-failure {codes}".rstrip())
    for flt in key.filters:
        if flt.request_header_modifier is not None:
            for line in header_lines("http-request", flt.request_header_modifier):
                section.add(line)
        if flt.response_header_modifier is not None:
            for line in header_lines("http-response", flt.response_header_modifier):
                section.add(line)
    proto = " proto h2" if key.h2 else ""
    for i, ep in enumerate(key.endpoints):
        weight = max(0, min(ep.weight, 256))
        section.add(f"server s{i} {addr(ep.ip, ep.port)} weight {weight}{proto}{server_tls}")
    return section


def check_endpoints(svc: ServiceBackend) -> None:
    for ep in svc.endpoints:
        try:
            addr(ep.ip, ep.port)
        except ValueError:
            raise Unrepresentable(f"endpoint address {ep.ip!r} is not an IP address") from None
        if not 1 <= ep.port <= 65535:
            raise Unrepresentable(f"endpoint port {ep.port} is out of range")
