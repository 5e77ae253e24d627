"""L7 listeners -> one complete HAProxy 2.6 configuration (pure: no I/O).

Layout of the output:

- `global` / `defaults`: the master-worker plumbing (a stats socket that hands
  listening sockets to the next worker on reload), hitless-reload options and
  the default timeouts.
- one `frontend` per distinct listener set on a port: every (VIP, port) that
  serves the same listeners shares one frontend with one `bind` per VIP.
  HTTP and HTTPS listeners are `mode http` (HTTPS terminates TLS with a
  `crt-list`, certificates chosen by SNI); TLS listeners are `mode tcp`
  (Passthrough routes on the ClientHello's SNI, Terminate decrypts first).
- one `backend` per distinct (Service, endpoints, protocol, backend filters,
  timeout): endpoints are its servers.

Routing in an HTTP frontend is decided once, then acted on:

1. `txn.host` = the Host header without port, lower case (SNI for TLS).
2. listener: the first listener on the port whose hostname matches (exact,
   then longer wildcard suffixes, then no hostname) -> `txn.l`.
3. virtual host inside that listener, in the same specificity order -> `txn.vh`.
4. route entry: the first entry of that virtual host, in the precedence order
   translate produced, whose every match condition holds -> `txn.r`.
   Nothing selected -> 404.  Conditions are anonymous ACLs (`{ ... }`; a
   named ACL costs HAProxy a linear search at each definition and use), at
   most 7 to a line (HAProxy reads 64 words); a longer conjunction is chained
   through `txn.m`.
5. the filters of entry `txn.r` (redirect, header modifiers, rewrites), its
   weighted choice of backend (`rand()` into `txn.pick`, ranges per Service,
   the invalid share answering 500), response header modifiers.

Every manifest string goes through `agent.proxy.escape`; a value that cannot be
represented drops its whole rule (every match of it, on every listener) and is
reported as a `Problem`, and the rest of the configuration is unaffected.

Objects valid through the Kubernetes API can still ask for a configuration
HAProxy takes minutes to parse (64 HTTPRoutes of 16 rules x 8 matches x 16
headers: 9.4 MB, 139k ACLs).  What each route adds is counted in the
validation pass (over every listener and hostname it is rendered on), and a
route over the `Budget` is left out and reported; over the total budget, the
routes that need the most are left out first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.filters import (
    CORSPolicy,
    HeaderModifier,
    PathModifier,
    Retry,
    RouteFilter,
)
from agent.logs import one_line
from agent.proxy import escape
from agent.proxy.escape import Unrepresentable, word
from agent.state import (
    Backend,
    BackendSet,
    BackendTLS,
    HTTPMatch,
    HTTPRouteEntry,
    L7Listener,
    ServiceBackend,
    TLSCertificate,
    TLSRouteEntry,
)

H2C = "kubernetes.io/h2c"
SUPPORTED_FILTERS = frozenset(
    {"RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "CORS"}
)
STATS_SOCKET = "stats.sock"
HEALTH_SOCKET = "health.sock"
CERT_DIR = "certs"
HARD_STOP_AFTER = "30s"
DEFAULT_SERVER_TIMEOUT_MS = 60_000
TLS_INSPECT_DELAY = "5s"
# Anonymous ACLs (7 words each) on one selection line: HAProxy reads at most
# 64 words a line, and the line's head takes up to 11.
CONDITIONS_PER_LINE = 7

HTTP, HTTPS, PASSTHROUGH, TERMINATE = "http", "https", "tls-passthrough", "tls-terminate"


@dataclass(frozen=True, slots=True)
class Problem:
    """Why (part of) a route or listener is not served.  `route` is the route's
    `Kind namespace/name` (or `Gateway ns/name listener NAME`), `rule` its rule
    index when the problem is one rule, `reason` the message for a person, and
    `status_reason` the reason of the status condition it turns into (None:
    the usual one, `UnsupportedValue` on a route, `Invalid` on a listener)."""

    route: str
    rule: int | None
    reason: str
    status_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """What one configuration may hold, so that HAProxy parses it (`haproxy -c`,
    and the master again on reload) in about a second.

    Measured with HAProxy 2.6.12 on 2 vCPUs (Xeon), one core busy per check:
    an anonymous ACL costs 5.6 us (exact) to 13 us (regex): 64 Ki regex ACLs
    0.85 s, 172 Ki exact ones 0.96 s; a server line 6-14 us while a backend
    holds up to 2 Ki of them (32 Ki servers in backends of 2 Ki: 0.45 s, of
    100: 0.20 s), but a backend's servers cost O(n^2) beyond that (4 Ki: 0.15 s,
    8 Ki: 0.86 s); long literal values cost little (33 MB of 4 KB header values:
    0.18 s).  A configuration at every limit at once checks in ~1.3 s.

    Per route (`route_*`, counted over every listener and hostname the route is
    rendered on) so that one route cannot take the whole budget; in total, the
    routes that need the most are left out first.  An ACL here is one match
    condition (path, header, query parameter, method) or one conditional line
    (a filter, a backend choice) of a route entry.
    """

    route_acls: int = 4096
    route_bytes: int = 1 << 20
    acls: int = 65536
    servers: int = 32768
    backend_servers: int = 2048
    bytes: int = 8 << 20


DEFAULT_BUDGET = Budget()


@dataclass(frozen=True, slots=True)
class RenderedConfig:
    text: str
    files: Mapping[str, bytes]  # path relative to the run directory -> content
    problems: tuple[Problem, ...]
    binds: frozenset[tuple[str, int]] = frozenset()  # (IP, port) the frontends bind


def certificate_id(cert: TLSCertificate) -> str:
    """Content address of a certificate + key pair (its file name)."""
    digest = hashlib.sha256(cert.cert_pem + b"\0" + cert.key_pem).hexdigest()
    return digest[:32]


def certificate_file(cert: TLSCertificate) -> str:
    return f"{CERT_DIR}/{certificate_id(cert)}.pem"


def certificate_pem(cert: TLSCertificate) -> bytes:
    chain = cert.cert_pem if cert.cert_pem.endswith(b"\n") else cert.cert_pem + b"\n"
    return chain + cert.key_pem + (b"" if cert.key_pem.endswith(b"\n") else b"\n")


def render(
    listeners: Sequence[L7Listener],
    run_dir: str,
    *,
    rejected_certificates: Mapping[str, str] | None = None,
    excluded_rules: frozenset[tuple[str, int | None]] = frozenset(),
    threads: int | None = None,
    budget: Budget = DEFAULT_BUDGET,
) -> RenderedConfig:
    """The configuration serving `listeners`, with files under `run_dir`.

    `rejected_certificates` maps `certificate_id`s the caller found unusable to
    the reason (they are left out, and a listener left without certificates is
    not served); `excluded_rules` are (route, rule) pairs to leave out (rule
    None: the whole route); `threads` sets HAProxy's thread count (default:
    one per CPU).  Routes over `budget` are left out and reported.
    """
    excluded = set(excluded_rules)
    late: list[Problem] = []
    for _ in range(3):
        r = _Renderer(
            run_dir.rstrip("/"), dict(rejected_certificates or {}), frozenset(excluded), budget
        )
        r.threads = threads
        rc = r.render(listeners)
        over = len(rc.text) - budget.bytes
        routes = r.largest_routes(over) if over > 0 else []
        if not routes:
            break
        # The routes' estimated sizes fell short of the text they render to:
        # leave out the largest still in it, enough to cover what is over.
        reason = _over_total("bytes", budget.bytes, "bytes of configuration")
        excluded.update((route, None) for route in routes)
        late.extend(Problem(route, None, reason) for route in routes)
    return dataclasses.replace(rc, problems=rc.problems + tuple(late))


# -- hostnames --------------------------------------------------------------------------


def _host_key(hostname: str | None) -> tuple[int, int, str]:
    """Most specific first: exact names, then wildcards (longer first), then any."""
    if hostname is None or hostname == "*":
        return (2, 0, "")
    if hostname.startswith("*."):
        return (1, -len(hostname), hostname)
    return (0, -len(hostname), hostname)


def _host_acl(hostname: str | None, var: str = "txn.host") -> str | None:
    """The ACL criterion on `var` (the Host, or the SNI) for a hostname
    pattern (None: any host)."""
    if hostname is None or hostname == "*":
        return None
    escape.hostname(hostname)
    if hostname.startswith("*."):
        return f"var({var}) -m end -- {word(hostname[1:])}"
    return f"var({var}) -m str -- {word(hostname)}"


# -- durations and names ----------------------------------------------------------------

_DURATION_PART = re.compile(r"([0-9]+)(ms|h|m|s)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def duration_ms(value: str) -> int:
    """A GEP-2257 duration (`1h30m`, `500ms`) in milliseconds."""
    pos, total = 0, 0
    if not value:
        raise Unrepresentable("empty duration")
    while pos < len(value):
        m = _DURATION_PART.match(value, pos)
        if m is None:
            raise Unrepresentable(f"duration {value!r} is not a GEP-2257 duration")
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    return total


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", text.replace("/", "."))[:48]


def _short_hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:10]


def _listener_id(ls: L7Listener) -> tuple[str, ...]:
    if ls.listener_set:
        return (ls.gateway, ls.listener_set, ls.listener)
    return (ls.gateway, ls.listener)


def _addr(ip: str, port: int) -> str:
    addr = ipaddress.ip_address(ip)
    if getattr(addr, "scope_id", None):  # "fe80::1%eth0": a zone is no part of a bind
        raise Unrepresentable(f"address {ip!r} has a zone")
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _comment(text: str) -> str:
    """Text for a `#` line, ASCII and on one line: an object name with a line
    break must not add a configuration line (names are validated before; this
    holds regardless)."""
    return one_line(text).encode("ascii", "backslashreplace").decode("ascii")


def _lf(literal: str) -> str:
    """A literal inside a log-format string we compose (before quoting)."""
    return literal.replace("%", "%%")


# -- the renderer -------------------------------------------------------------------------


@dataclass
class _Section:
    header: str
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join([self.header, *("    " + line for line in self.lines)])


@dataclass(frozen=True, slots=True)
class _Choice:
    backend: str | None  # None: the invalid share (500 / reject)
    weight: int


@dataclass(frozen=True, slots=True)
class _BackendKey:
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


@dataclass
class _Usage:
    """What one route adds to the configuration: (ACLs, bytes) per rule (None:
    a TLSRoute) over all its occurrences, and the backends it uses."""

    rules: dict[int | None, tuple[int, int]] = field(default_factory=dict)
    backends: set[_BackendKey] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Cost:
    acls: int
    bytes: int
    servers: int
    backends: set[_BackendKey]


def _largest_first(costs: Mapping[str, _Cost], what: str) -> list[str]:
    def size(route: str) -> tuple[int, str]:
        return (int(getattr(costs[route], what)), route)

    return sorted(costs, key=size, reverse=True)


def _over_total(what: str, limit: int, unit: str) -> str:
    whole_mib = what == "bytes" and limit % (1 << 20) == 0
    shown = f"{limit >> 20} MiB" if whole_mib else f"{limit} {unit}"
    return (
        f"the proxy configuration would exceed its budget of {shown}; the routes that need "
        f"the most {unit} are left out first"
    )


class _Renderer:
    def __init__(
        self,
        run_dir: str,
        rejected_certificates: dict[str, str],
        excluded: frozenset[tuple[str, int | None]],
        budget: Budget,
    ) -> None:
        self.run_dir = run_dir
        self.rejected = rejected_certificates
        self.excluded = excluded
        self.budget = budget
        self.problems: dict[Problem, None] = {}
        self.files: dict[str, bytes] = {}
        self.backends: dict[_BackendKey, _Section] = {}
        self.bad_rules: set[tuple[str, int | None]] = set(excluded)
        self.threads: int | None = None
        self.usage: dict[str, _Usage] = {}
        self.binds: set[tuple[str, int]] = set()
        self.backend_costs: dict[_BackendKey, tuple[int, int]] = {}  # (bytes, servers)
        self.backend_names: dict[_BackendKey, str] = {}
        self.endpoints_checked: dict[int, str | None] = {}  # endpoints id -> why unusable
        self._endpoints_ids: dict[tuple[Backend, ...], int] = {}
        self._endpoints_by_object: dict[int, tuple[tuple[Backend, ...], int]] = {}

    def problem(self, route: str, rule: int | None, reason: str) -> None:
        self.problems[Problem(route, rule, reason)] = None

    # -- top level ----------------------------------------------------------------------

    def render(self, listeners: Sequence[L7Listener]) -> RenderedConfig:
        usable = [ls for ls in listeners if self._listener_usable(ls)]
        # Pass 1: find the rules whose values cannot be represented, so that
        # every match of such a rule is left out everywhere.
        for ls in usable:
            for vh in ls.virtual_hosts:
                try:
                    _host_acl(vh.hostname)
                except Unrepresentable as exc:
                    for entry in vh.routes:
                        self.bad_rules.add((entry.route, entry.rule))
                        self.problem(entry.route, entry.rule, str(exc))
                    continue
                vh_line = 96 + len(vh.hostname)
                for entry in vh.routes:
                    self._check_entry(ls, vh_line, entry)
            for tls in ls.tls_routes:
                self._check_tls_entry(tls)
        self._enforce_budget()
        frontends = [
            section
            for name, binds, group in self._groups(usable)
            for section in self._frontends(name, binds, group)
        ]
        sections = [self._global(), self._defaults(), self._health()]
        sections.extend(frontends)
        sections.extend(
            self.backends[k] for k in sorted(self.backends, key=lambda k: self.backends[k].header)
        )
        text = (
            "# generated by gatewaylb: do not edit\n"
            + "\n\n".join(s.text() for s in sections)
            + "\n"
        )
        return RenderedConfig(text, dict(self.files), tuple(self.problems), frozenset(self.binds))

    def _listener_name(self, ls: L7Listener) -> str:
        return ls.owner

    def _kind(self, ls: L7Listener) -> str | None:
        if ls.protocol == "HTTP":
            return HTTP
        if ls.protocol == "HTTPS" and ls.tls_mode in (None, "Terminate"):
            return HTTPS
        if ls.protocol == "TLS" and ls.tls_mode == "Passthrough":
            return PASSTHROUGH
        if ls.protocol == "TLS" and ls.tls_mode in (None, "Terminate"):
            return TERMINATE
        return None

    def _listener_usable(self, ls: L7Listener) -> bool:
        name = self._listener_name(ls)
        if self._kind(ls) is None:
            self.problem(name, None, f"protocol {ls.protocol} mode {ls.tls_mode} is not supported")
            return False
        if not 1 <= ls.port <= 65535:
            self.problem(name, None, f"port {ls.port} is out of range")
            return False
        try:
            if ls.hostname is not None:
                escape.hostname(ls.hostname)
            for vip in ls.vips:
                _addr(vip, ls.port)
        except (Unrepresentable, ValueError) as exc:
            self.problem(name, None, str(exc))
            return False
        if self._kind(ls) in (HTTPS, TERMINATE):
            good = [c for c in ls.certificates if certificate_id(c) not in self.rejected]
            for cert in ls.certificates:
                reason = self.rejected.get(certificate_id(cert))
                if reason is not None:
                    self.problem(name, None, f"certificate {cert.secret}: {reason}")
            if not good:
                self.problem(name, None, "no usable certificate")
                return False
        return True

    def _groups(self, listeners: list[L7Listener]) -> list[tuple[str, list[str], list[L7Listener]]]:
        """(frontend name, bind addresses, listeners) for each distinct listener
        set on a port; listeners of another kind on an occupied port are refused."""
        by_bind: dict[tuple[str, int], list[L7Listener]] = {}
        for ls in listeners:
            for vip in ls.vips:
                vip_c = str(ipaddress.ip_address(vip))
                group = by_bind.setdefault((vip_c, ls.port), [])
                if group and not _may_share_port(self._kind(group[0]), self._kind(ls)):
                    self.problem(
                        self._listener_name(ls),
                        None,
                        f"{vip}:{ls.port} already serves {group[0].protocol} {group[0].owner}",
                    )
                    continue
                if ls not in group:
                    group.append(ls)
        self.binds.update(by_bind)
        merged: dict[tuple[int, tuple[int, ...]], tuple[list[str], list[L7Listener]]] = {}
        for (vip, port), group in by_bind.items():
            key = (port, tuple(id(ls) for ls in group))
            merged.setdefault(key, ([], group))[0].append(vip)
        out = []
        for (port, _), (vips, group) in merged.items():
            ident = _short_hash(port, sorted(vips), [_listener_id(ls) for ls in group])
            out.append((f"fe_{port}_{ident}", [_addr(v, port) for v in sorted(vips)], group))
        out.sort(key=lambda item: item[0])
        return out

    # -- fixed sections ----------------------------------------------------------------

    def _global(self) -> _Section:
        s = _Section("global")
        stats = word(self.run_dir + "/" + STATS_SOCKET)
        s.add(f"stats socket {stats} mode 600 level admin expose-fd listeners")
        if self.threads:
            s.add(f"nbthread {int(self.threads)}")
        s.add(f"hard-stop-after {HARD_STOP_AFTER}")
        s.add("mworker-max-reloads 50")
        s.add("tune.ssl.default-dh-param 2048")
        s.add("ssl-default-bind-options ssl-min-ver TLSv1.2")
        return s

    def _defaults(self) -> _Section:
        s = _Section("defaults")
        s.add("mode http")
        s.add("timeout connect 5s")
        s.add("timeout client 60s")
        s.add(f"timeout server {DEFAULT_SERVER_TIMEOUT_MS}")
        s.add("timeout http-request 10s")
        s.add("timeout http-keep-alive 60s")
        s.add("timeout tunnel 1h")
        s.add("timeout client-fin 5s")
        return s

    def _health(self) -> _Section:
        """A frontend on a unix socket: the worker's liveness probe, and a
        listener so that a configuration without L7 listeners still runs."""
        s = _Section("frontend gatewaylb_health")
        s.add(f"bind {word('unix@' + self.run_dir + '/' + HEALTH_SOCKET)} mode 600")
        s.add("http-request return status 200 content-type text/plain string ok")
        return s

    # -- validation pass -------------------------------------------------------------------

    def _check_entry(self, ls: L7Listener, vh_line: int, entry: HTTPRouteEntry) -> None:
        """Validate one occurrence of an entry (dry run) and count what it adds."""
        if (entry.route, entry.rule) in self.bad_rules or (entry.route, None) in self.bad_rules:
            return
        writer = _EntryWriter(self, ls, entry, 0, dry_run=True)
        try:
            conds, lines = writer.write()
        except Unrepresentable as exc:
            self.bad_rules.add((entry.route, entry.rule))
            self.problem(entry.route, entry.rule, str(exc))
            return
        # The selection line(s), the entry's conditional lines, and its share
        # of the virtual host's selection line.
        heads = -(-len(conds) // CONDITIONS_PER_LINE) or 1
        size = sum(len(c) + 1 for c in conds) + 64 * heads + sum(len(ln) + 5 for ln in lines)
        self._charge(entry.route, entry.rule, 1 + len(conds) + len(lines), size + vh_line)
        self.usage[entry.route].backends.update(writer.keys)

    def _check_tls_entry(self, entry: TLSRouteEntry) -> None:
        try:
            for h in entry.hostnames:
                _host_acl(h)
            for svc in entry.backends.services:
                self.check_endpoints(svc)
        except Unrepresentable as exc:
            self.bad_rules.add((entry.route, None))
            self.problem(entry.route, None, str(exc))
            return
        services = len(entry.backends.services)
        size = sum(len(h) + 96 for h in entry.hostnames) + 128 * (services + 1)
        self._charge(entry.route, None, len(entry.hostnames) + services + 1, size)
        self.usage[entry.route].backends.update(
            self.backend_key("tcp", svc) for svc in entry.backends.services
        )

    def check_endpoints(self, svc: ServiceBackend) -> None:
        ident = self._endpoints_id(svc.endpoints)
        if ident not in self.endpoints_checked:
            try:
                _check_endpoints(svc)
                self.endpoints_checked[ident] = None
            except Unrepresentable as exc:
                self.endpoints_checked[ident] = str(exc)
        verdict = self.endpoints_checked[ident]
        if verdict is not None:
            raise Unrepresentable(verdict)
        if len(svc.endpoints) > self.budget.backend_servers:
            raise Unrepresentable(
                f"Service {svc.name} has {len(svc.endpoints)} endpoints; a backend holds at most "
                f"{self.budget.backend_servers} servers"
            )

    def _skip(self, route: str, rule: int | None) -> bool:
        return (route, rule) in self.bad_rules or (route, None) in self.bad_rules

    # -- budget ------------------------------------------------------------------------

    def _charge(self, route: str, rule: int | None, acls: int, size: int) -> None:
        usage = self.usage.setdefault(route, _Usage())
        acls0, size0 = usage.rules.get(rule, (0, 0))
        usage.rules[rule] = (acls0 + acls, size0 + size)

    def _backend_cost(self, key: _BackendKey) -> tuple[int, int]:
        cost = self.backend_costs.get(key)
        if cost is None:
            text = _backend_section(self.backend_name(key), key).text()
            cost = (len(text) + 2, len(key.endpoints))
            self.backend_costs[key] = cost
        return cost

    def _route_cost(self, route: str) -> _Cost:
        """What `route` adds, less its rules already left out.  Its backends
        are counted whole, even where other routes share them."""
        usage = self.usage[route]
        live = [v for rule, v in usage.rules.items() if not self._skip(route, rule)]
        acls = sum(a for a, _ in live)
        size = sum(b for _, b in live)
        keys = usage.backends if live else set()
        servers = sum(self._backend_cost(k)[1] for k in keys)
        return _Cost(acls, size + sum(self._backend_cost(k)[0] for k in keys), servers, keys)

    def _enforce_budget(self) -> None:
        """Leave out the routes over the per-route budget, then, while the whole
        is over budget, the routes that need the most of what is short."""
        b = self.budget
        costs: dict[str, _Cost] = {}
        for route in sorted(self.usage):
            if self._skip(route, None):
                continue
            cost = self._route_cost(route)
            if cost.acls > b.route_acls:
                self._leave_out(
                    route,
                    f"the route needs {cost.acls} ACLs in the proxy configuration (its match "
                    "conditions on every listener and hostname it is attached to, and its "
                    f"filter and backend lines); the limit is {b.route_acls} per route",
                )
            elif cost.bytes > b.route_bytes:
                self._leave_out(
                    route,
                    f"the route needs {cost.bytes // 1024} KiB of proxy configuration; the "
                    f"limit is {b.route_bytes // 1024} KiB per route",
                )
            elif cost.acls:  # something of it is still rendered
                costs[route] = cost
        refs: dict[_BackendKey, int] = {}
        for cost in costs.values():
            for key in cost.backends:
                refs[key] = refs.get(key, 0) + 1
        total = {
            "acls": sum(c.acls for c in costs.values()),
            "servers": sum(self._backend_cost(k)[1] for k in refs),
            "bytes": sum(c.bytes for c in costs.values())
            - sum((n - 1) * self._backend_cost(k)[0] for k, n in refs.items()),
        }
        limits = {"acls": b.acls, "servers": b.servers, "bytes": b.bytes}
        units = {"acls": "ACLs", "servers": "servers", "bytes": "bytes of configuration"}
        # Each measure's routes, the largest first (ranked once: a backend
        # shared with other routes counts whole for each).
        order = {what: iter(_largest_first(costs, what)) for what in limits}
        while costs:
            what = next((w for w in limits if total[w] > limits[w]), None)
            if what is None:
                return
            route = next(r for r in order[what] if r in costs)  # each route seen once
            cost = costs.pop(route)
            total["acls"] -= cost.acls
            total["bytes"] -= cost.bytes
            for key in cost.backends:
                refs[key] -= 1
                if refs[key]:
                    total["bytes"] += self._backend_cost(key)[0]  # still there, for another
                else:
                    del refs[key]
                    total["servers"] -= self._backend_cost(key)[1]
            unit = units[what]
            self._leave_out(
                route,
                _over_total(what, limits[what], unit)
                + f" (this one: {getattr(cost, what)} {unit})",
            )

    def _leave_out(self, route: str, reason: str) -> None:
        self.bad_rules.add((route, None))
        self.problem(route, None, reason)

    def largest_routes(self, size: int) -> list[str]:
        """The routes still rendered that add the most configuration text,
        largest first, until they add up to `size` (none if they cannot)."""
        costs = {r: self._route_cost(r).bytes for r in self.usage if not self._skip(r, None)}
        if sum(costs.values()) < size:
            return []  # not the routes' doing: leaving them all out would not help
        out: list[str] = []
        for route in sorted(costs, key=lambda r: (costs[r], r), reverse=True):
            if size <= 0:
                break
            out.append(route)
            size -= costs[route]
        return out

    # -- frontends ---------------------------------------------------------------------

    def _frontends(
        self, name: str, binds: list[str], listeners: list[L7Listener]
    ) -> list[_Section]:
        """The frontend for listeners that share binds.  TLS listeners in both
        modes on one port (TLSRouteModeMixed) take two: the public one reads
        the SNI of the ClientHello and passes passthrough names on as they are;
        the names of terminating listeners go, by a UNIX socket carrying the
        client's address (PROXY protocol), to a second frontend that
        terminates them."""
        terminating = [ls for ls in listeners if self._kind(ls) == TERMINATE]
        passing = [ls for ls in listeners if self._kind(ls) == PASSTHROUGH]
        if not (terminating and passing):
            return [self._frontend(name, binds, listeners)]
        socket = f"unix@{self.run_dir}/{name}.sock"
        to_terminator = f"be_{name}_terminate"
        backend = _Section(f"backend {to_terminator}")
        backend.add("mode tcp")
        backend.add(f"server terminate {word(socket)} send-proxy-v2")
        public = self._frontend(name, binds, passing, terminating=(terminating, to_terminator))
        inner = self._frontend(f"{name}_terminate", [word(socket) + " accept-proxy"], terminating)
        return [public, inner, backend]

    def _frontend(
        self,
        name: str,
        binds: list[str],
        listeners: list[L7Listener],
        terminating: tuple[list[L7Listener], str] | None = None,
    ) -> _Section:
        """`terminating`: listeners this (passthrough) frontend hands to the
        backend that leads to their terminating frontend."""
        kind = self._kind(listeners[0])
        s = _Section(f"frontend {name}")
        ordered = sorted(listeners, key=lambda ls: _host_key(ls.hostname))
        port = listeners[0].port
        comment = ", ".join(f"{ls.gateway}/{ls.listener}" for ls in ordered)
        s.add(_comment(f"# {kind} port {port}: {comment}"))
        bind_opts = ""
        if kind in (HTTPS, TERMINATE):
            crt_list = self._crt_list(ordered)
            alpn = " alpn h2,http/1.1" if kind == HTTPS else ""
            bind_opts = f" ssl crt-list {word(self.run_dir + '/' + crt_list)}{alpn}"
            bind_opts += self._client_verify(ordered)
        s.add(f"mode {'http' if kind in (HTTP, HTTPS) else 'tcp'}")
        for addr in binds:
            s.add(f"bind {addr}{bind_opts}")
        if kind in (HTTP, HTTPS):
            # Hitless reloads: an old worker closes a keep-alive connection
            # right after answering its next request, never while idle.
            s.add("option idle-close-on-response")
            s.add("option forwardfor")
            _HTTPFrontend(self, s, ordered, port, "https" if kind == HTTPS else "http").write()
        elif terminating is not None:
            handed, backend = terminating
            ordered = sorted([*listeners, *handed], key=lambda ls: _host_key(ls.hostname))
            _TCPFrontend(self, s, ordered, True, handed=(handed, backend)).write()
        else:
            _TCPFrontend(self, s, ordered, kind == PASSTHROUGH).write()
        return s

    def _crt_list(self, listeners: list[L7Listener]) -> str:
        lines: list[str] = []
        for ls in listeners:
            for cert in ls.certificates:
                if certificate_id(cert) in self.rejected:
                    continue
                path = certificate_file(cert)
                self.files[path] = certificate_pem(cert)
                # SNI filters: the listener's hostname; without one, the names
                # in the certificate itself.
                filt = f" {ls.hostname}" if ls.hostname else ""
                lines.append(f"{self.run_dir}/{path}{filt}")
        content = ("\n".join(lines) + "\n").encode()
        name = f"{CERT_DIR}/crt-list-{hashlib.sha256(content).hexdigest()[:16]}.txt"
        self.files[name] = content
        return name

    # -- backends ----------------------------------------------------------------------

    def backend_key(
        self,
        mode: str,
        svc: ServiceBackend,
        *,
        h2: bool = False,
        timeout_ms: int | None = None,
        filters: tuple[RouteFilter, ...] = (),
        retry: Retry | None = None,
    ) -> _BackendKey:
        ident = self._endpoints_id(svc.endpoints)
        # Only HTTP is re-encrypted: a tcp-mode backend carries the client's
        # own stream (TLS passthrough) or one a TCPRoute asked for as it is.
        tls = svc.tls if mode == "http" else None
        return _BackendKey(
            mode, svc.name, svc.endpoints, ident, h2, filters, timeout_ms, retry, tls
        )

    def _endpoints_id(self, endpoints: tuple[Backend, ...]) -> int:
        """A number standing for `endpoints` in this render: the tuple is hashed
        once per object, not once per use."""
        known = self._endpoints_by_object.get(id(endpoints))
        if known is None:
            ident = self._endpoints_ids.setdefault(endpoints, len(self._endpoints_ids))
            known = self._endpoints_by_object[id(endpoints)] = (endpoints, ident)
        return known[1]

    def backend_name(self, key: _BackendKey) -> str:
        name = self.backend_names.get(key)
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
            name = self.backend_names[key] = f"be_{_safe_name(key.service)}_{_short_hash(*parts)}"
        return name

    def backend(self, key: _BackendKey) -> str:
        """The name of the backend section for `key` (written once)."""
        if key not in self.backends:
            tls = self._server_tls(key.tls, key.h2) if key.tls is not None else ""
            self.backends[key] = _backend_section(self.backend_name(key), key, tls)
        return self.backend_name(key)

    def _ca_file(self, pem: bytes) -> str:
        """The path of a CA bundle written among the configuration's files."""
        path = f"{CERT_DIR}/ca-{hashlib.sha256(pem).hexdigest()[:16]}.pem"
        self.files[path] = pem
        return f"{self.run_dir}/{path}"

    def _client_verify(self, listeners: list[L7Listener]) -> str:
        """Bind options that ask clients for a certificate (Gateway
        spec.tls.frontend).  Validation is per port, and a bind is one port
        of one Gateway, so its listeners agree; AllowValidOnly wins if not."""
        found = [ls.client_validation for ls in listeners if ls.client_validation is not None]
        if not found:
            return ""
        strict = [v for v in found if not v.insecure_fallback]
        validation = (strict or found)[0]
        ca = word(self._ca_file(validation.ca_pem))
        if validation.insecure_fallback:
            # Asked for, checked, and let through whatever the outcome.
            return f" verify optional ca-file {ca} ca-ignore-err all crt-ignore-err all"
        return f" verify required ca-file {ca}"

    def _server_tls(self, tls: BackendTLS, h2: bool) -> str:
        """Server options for a BackendTLSPolicy: send its hostname as SNI and
        verify the chain against its CAs and the certificate's names against
        that hostname."""
        ca = "@system-ca" if tls.ca_pem is None else self._ca_file(tls.ca_pem)
        host = escape.hostname(tls.hostname, wildcard=False)
        alpn = " alpn h2" if h2 else ""
        crt = ""
        if tls.client_certificate is not None:
            path = certificate_file(tls.client_certificate)
            self.files[path] = certificate_pem(tls.client_certificate)
            crt = f" crt {word(self.run_dir + '/' + path)}"
        return (
            f" ssl verify required ca-file {word(ca)} sni str({host}) verifyhost {host}{alpn}{crt}"
        )


def _backend_section(name: str, key: _BackendKey, server_tls: str = "") -> _Section:
    section = _Section(f"backend {name}")
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
            for line in _header_lines("http-request", flt.request_header_modifier):
                section.add(line)
        if flt.response_header_modifier is not None:
            for line in _header_lines("http-response", flt.response_header_modifier):
                section.add(line)
    proto = " proto h2" if key.h2 else ""
    for i, ep in enumerate(key.endpoints):
        weight = max(0, min(ep.weight, 256))
        section.add(f"server s{i} {_addr(ep.ip, ep.port)} weight {weight}{proto}{server_tls}")
    return section


def _check_endpoints(svc: ServiceBackend) -> None:
    for ep in svc.endpoints:
        try:
            _addr(ep.ip, ep.port)
        except ValueError:
            raise Unrepresentable(f"endpoint address {ep.ip!r} is not an IP address") from None
        if not 1 <= ep.port <= 65535:
            raise Unrepresentable(f"endpoint port {ep.port} is out of range")


def _header_lines(directive: str, mod: HeaderModifier, cond: str = "") -> list[str]:
    out = []
    for verb, pairs in (("set-header", mod.set), ("add-header", mod.add)):
        for name, value in pairs:
            header = word(escape.fetch_arg_name(name))
            out.append(f"{directive} {verb} {header} {escape.logformat(value)}{cond}")
    for name in mod.remove:
        out.append(f"{directive} del-header {word(escape.fetch_arg_name(name))}{cond}")
    return out


# -- HTTP frontends ---------------------------------------------------------------------------


def _anon(criterion: str) -> str:
    """An anonymous ACL.  Why not named ones: HAProxy looks a named ACL up by a
    linear scan of its section's list, at its definition and at every use, so
    a frontend with N named ACLs takes O(N^2) to load (14 600 took 2.9 s of
    `haproxy -c`, 29 200 took 27 s); anonymous ACLs load in linear time
    (40 000 in 0.44 s)."""
    return f"{{ {criterion} }}"


def _is(var: str, index: int) -> str:
    """The condition `txn.<var>` holds `index` (a selected listener, virtual
    host or route entry)."""
    return _anon(f"var(txn.{var}) -m int {index}")


class _Selector:
    """Listener, then virtual host / SNI name, selection on `txn.host`."""

    def __init__(self, section: _Section, directive: str) -> None:
        self.s = section
        self.directive = directive  # http-request | tcp-request content

    def named(self, name: str, criterion: str) -> None:
        """One of the few fixed named ACLs of a frontend (lset, vhset, rset)."""
        self.s.add(f"acl {name} {criterion}")

    def listener_conditions(self, listeners: list[L7Listener]) -> list[str]:
        """The condition naming each listener (in order)."""
        if len(listeners) == 1:
            return [""]
        self.named("lset", "var(txn.l) -m found")
        out = []
        for i, ls in enumerate(listeners):
            crit = _host_acl(ls.hostname)
            cond = "" if crit is None else " " + _anon(crit)
            self.s.add(f"{self.directive} set-var(txn.l) int({i}) if !lset{cond}")
            out.append(" " + _is("l", i))
        return out


class _HTTPFrontend:
    def __init__(
        self, r: _Renderer, s: _Section, listeners: list[L7Listener], port: int, scheme: str
    ) -> None:
        self.r, self.s, self.listeners, self.port, self.scheme = r, s, listeners, port, scheme
        self.links = 0

    def write(self) -> None:
        s = self.s
        sel = _Selector(s, "http-request")
        s.add("http-request set-var(txn.host) req.hdr(host),field(1,:),lower")
        listener_conds = sel.listener_conditions(self.listeners)
        if self.scheme == "https" and len(self.listeners) > 1:
            self._misdirected(sel)
        sel.named("vhset", "var(txn.vh) -m found")
        sel.named("rset", "var(txn.r) -m found")
        entries: list[tuple[L7Listener, HTTPRouteEntry, int]] = []
        vh_index = 0
        for ls, lcond in zip(self.listeners, listener_conds, strict=True):
            for vh in sorted(ls.virtual_hosts, key=lambda v: _host_key(v.hostname)):
                try:
                    crit = _host_acl(vh.hostname)
                except Unrepresentable:
                    continue  # reported by the validation pass
                if all(self.r._skip(e.route, e.rule) for e in vh.routes):
                    # Nothing of it is served: as if its routes were absent,
                    # its requests go to the next most specific host.
                    continue
                cond = lcond + (" " + _anon(crit) if crit else "")
                s.add(f"# virtual host {vh_index}: {word(vh.hostname)}")
                s.add(f"http-request set-var(txn.vh) int({vh_index}) if !vhset{cond}")
                is_vh = _is("vh", vh_index)
                for entry in vh.routes:
                    if self.r._skip(entry.route, entry.rule):
                        continue
                    e = len(entries)
                    s.add(_comment(f"# entry {e}: {entry.route} rule {entry.rule}"))
                    conds = _EntryWriter(self.r, ls, entry, e).match_conditions()
                    for line in self._selection(e, f"!rset {is_vh}", conds):
                        s.add(line)
                    entries.append((ls, entry, e))
                vh_index += 1
        s.add("http-request return status 404 content-type text/plain string 'no route' if !rset")
        use_backend: list[str] = []
        for ls, entry, e in entries:
            writer = _EntryWriter(self.r, ls, entry, e)
            for line in writer.actions():
                s.add(line)
            use_backend.extend(writer.use_backend)
        for line in use_backend:
            s.add(line)

    def _misdirected(self, sel: _Selector) -> None:
        """421 for a request whose Host selects another listener than the SNI
        of its connection did: a client reusing one TLS connection for
        another name (HTTP/2 coalescing) must not get past the certificate
        and listener that name has (GatewayHTTPSListenerDetectMisdirectedRequests)."""
        s = self.s
        s.add("http-request set-var(txn.sni) ssl_fc_sni,lower")
        sel.named("slset", "var(txn.sl) -m found")
        for i, ls in enumerate(self.listeners):
            crit = _host_acl(ls.hostname, "txn.sni")
            cond = "" if crit is None else " " + _anon(crit)
            s.add(
                f"http-request set-var(txn.sl) int({i}) if !slset "
                f"{_anon('var(txn.sni) -m found')}{cond}"
            )
        refuse = (
            "http-request return status 421 content-type text/plain string 'misdirected request'"
        )
        s.add(f"{refuse} if {_anon('var(txn.sni) -m found')} !slset lset")
        sel.named("same_listener", "var(txn.l),sub(txn.sl) -m int 0")
        s.add(f"{refuse} if slset lset !same_listener")

    def _selection(self, e: int, head: str, conds: list[str]) -> list[str]:
        """`txn.r` = e when `head` and every condition hold.  HAProxy reads at
        most 64 words on a line, so a longer conjunction is chained through
        `txn.m`, each link with a value of its own."""
        n = CONDITIONS_PER_LINE
        groups = [conds[i : i + n] for i in range(0, len(conds), n)] or [[]]
        out: list[str] = []
        for group in groups[:-1]:
            self.links += 1
            out.append(f"http-request set-var(txn.m) int({self.links}) if {head}" + _join(group))
            head = _is("m", self.links)
        out.append(f"http-request set-var(txn.r) int({e}) if {head}" + _join(groups[-1]))
        return out


def _join(conds: list[str]) -> str:
    return "".join(" " + c for c in conds)


class _EntryWriter:
    """The ACLs, actions and backend choice of one HTTP route entry."""

    def __init__(
        self, r: _Renderer, ls: L7Listener, entry: HTTPRouteEntry, index: int, dry_run: bool = False
    ) -> None:
        self.r, self.ls, self.entry, self.e = r, ls, entry, index
        self.dry_run = dry_run
        self.use_backend: list[str] = []
        self.keys: list[_BackendKey] = []  # the backends it uses

    def write(self) -> tuple[list[str], list[str]]:
        """Validate everything (dry run), or raise Unrepresentable: the match
        conditions, and the entry's conditional lines (actions, use_backend)."""
        conds = self.match_conditions()
        lines = self.actions()
        return conds, lines + self.use_backend

    # -- matching ------------------------------------------------------------------------

    def match_conditions(self) -> list[str]:
        """The conditions (anonymous ACLs) of the entry's match, all of which must hold."""
        m: HTTPMatch = self.entry.match
        conds: list[str] = []
        path_crit = _path_criterion(m)
        if path_crit is not None:
            conds.append(_anon(path_crit))
        for h in m.headers:
            fetch = word(f"req.fhdr({escape.fetch_arg_name(h.name)})")
            conds.append(_anon(f"{fetch} {_string_criterion(h.type, h.value)}"))
        for q in m.query_params:
            fetch = word(f"urlp({escape.fetch_arg_name(q.name)})")
            conds.append(_anon(f"{fetch} {_string_criterion(q.type, q.value)}"))
        if m.method is not None:
            if not re.fullmatch(r"[A-Z]{1,16}", m.method):
                raise Unrepresentable(f"method {m.method!r} is not an HTTP method")
            conds.append(_anon(f"method -m str -- {word(m.method)}"))
        return conds

    # -- actions -------------------------------------------------------------------------

    def actions(self) -> list[str]:
        entry, e = self.entry, self.e
        cond = " if " + _is("r", e)
        out: list[str] = []
        redirected = False
        for flt in entry.filters:
            if flt.type not in SUPPORTED_FILTERS:
                raise Unrepresentable(f"the {flt.type} filter is not supported")
            if flt.request_header_modifier is not None:
                out.extend(_header_lines("http-request", flt.request_header_modifier, cond))
            elif flt.response_header_modifier is not None:
                out.extend(_header_lines("http-response", flt.response_header_modifier, cond))
            elif flt.url_rewrite is not None:
                rw = flt.url_rewrite
                if rw.hostname is not None:
                    host = escape.hostname(rw.hostname, wildcard=False)
                    out.append(f"http-request set-header host {word(host)}{cond}")
                if rw.path is not None:
                    out.extend(self._path_rewrite(rw.path, cond))
            elif flt.request_redirect is not None:
                out.extend(self._redirect(flt, cond))
                redirected = True
            elif flt.cors is not None:
                out.extend(_cors_lines(flt.cors, cond))
        for svc in entry.backends.services:
            self.r.check_endpoints(svc)
            for flt in svc.filters:
                if flt.type not in ("RequestHeaderModifier", "ResponseHeaderModifier"):
                    raise Unrepresentable(f"the {flt.type} filter is not supported on a backendRef")
                mod = flt.request_header_modifier or flt.response_header_modifier
                if mod is not None:
                    _header_lines("http-request", mod)
        timeout = self._timeout_ms()
        if redirected:
            return out
        out.extend(self._backend_choice(cond, timeout))
        return out

    def _timeout_ms(self) -> int | None:
        t = self.entry.timeouts
        if t is None:
            return None
        values = [duration_ms(v) for v in (t.request, t.backend_request) if v is not None]
        positive = [v for v in values if v > 0]  # 0 disables the timeout
        return min(positive) if positive else None

    def _backend_choice(self, cond: str, timeout: int | None) -> list[str]:
        backends = self.entry.backends
        choices: list[_Choice] = []
        for svc in backends.services:
            if svc.weight <= 0:
                continue
            h2 = self.entry.grpc or svc.app_protocol == H2C
            key = self.r.backend_key(
                "http",
                svc,
                h2=h2,
                timeout_ms=timeout,
                filters=svc.filters,
                retry=self.entry.retry,
            )
            self.keys.append(key)
            name = self.r.backend_name(key) if self.dry_run else self.r.backend(key)
            choices.append(_Choice(name, svc.weight))
        if backends.invalid_weight > 0:
            choices.append(_Choice(None, backends.invalid_weight))
        # No backend at all (no backendRefs, every weight 0) is a 500 too.
        rules, uses = _weighted_pick(
            choices, cond, "http-request", "http-request return status 500"
        )
        self.use_backend.extend(uses)
        return rules

    def _prefix(self) -> str:
        m = self.entry.match
        if m.path_type != "PathPrefix":
            raise Unrepresentable("ReplacePrefixMatch needs a PathPrefix match")
        return m.path.rstrip("/")

    def _path_rewrite(self, mod: PathModifier, cond: str) -> list[str]:
        if mod.type == "ReplaceFullPath":
            path = escape.target_path(mod.value or "/")
            return [f"http-request set-path {escape.logformat(path)}{cond}"]
        if mod.type != "ReplacePrefixMatch":
            raise Unrepresentable(f"path modifier {mod.type!r} is not supported")
        prefix = self._prefix()
        escape.target_path(prefix or "/")
        replacement = escape.target_path(mod.value or "/").rstrip("/")
        rx = escape.regex_literal(prefix)
        rep = _lf(replacement)
        if not prefix:
            # Prefix "/": every path.  "/" itself becomes the replacement.
            if not replacement:
                return []
            return [
                f"http-request replace-path {word('^(/.+)$')} {word(rep + chr(92) + '1')}{cond}",
                f"http-request replace-path {word('^/$')} {word(rep)}{cond}",
            ]
        if replacement:
            pattern = word("^" + rx + "(/.*)?$")
            return [f"http-request replace-path {pattern} {word(rep + chr(92) + '1')}{cond}"]
        # Replacement "/": the exact prefix becomes "/", the rest keeps its
        # leading slash.  In this order neither rule can match the other's output.
        return [
            f"http-request replace-path {word('^' + rx + '$')} '/'{cond}",
            f"http-request replace-path {word('^' + rx + '(/.*)$')} {word(chr(92) + '1')}{cond}",
        ]

    def _redirect(self, flt: RouteFilter, cond: str) -> list[str]:
        rd = flt.request_redirect
        assert rd is not None
        if rd.status_code not in (301, 302, 303, 307, 308):
            raise Unrepresentable(f"redirect status {rd.status_code} is not supported")
        out: list[str] = []
        if rd.path is not None:
            out.extend(self._path_rewrite(rd.path, cond))
        scheme = rd.scheme or _listener_scheme(self.ls)
        if scheme not in ("http", "https"):
            raise Unrepresentable(f"redirect scheme {scheme!r} is not supported")
        if rd.port is not None:
            if not 1 <= rd.port <= 65535:
                raise Unrepresentable(f"redirect port {rd.port} is out of range")
            port = rd.port
        elif rd.scheme is not None:
            port = 443 if scheme == "https" else 80
        else:
            port = self.ls.port
        host = "%[var(txn.host)]"
        if rd.hostname is not None:
            host = _lf(escape.hostname(rd.hostname, wildcard=False))
        well_known = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
        port_part = "" if well_known else f":{port}"
        location = f"{scheme}://{host}{port_part}%[pathq]"
        out.append(f"http-request redirect location {word(location)} code {rd.status_code}{cond}")
        return out


def _listener_scheme(ls: L7Listener) -> str:
    return "https" if ls.protocol == "HTTPS" else "http"


def _path_criterion(m: HTTPMatch) -> str | None:
    """The ACL criterion for a path match (None = any path)."""
    if m.path_type == "Exact":
        escape.word(m.path)
        return f"path {_string_criterion('Exact', m.path)}"
    if m.path_type == "PathPrefix":
        prefix = m.path.rstrip("/")
        if not m.path.startswith("/"):
            raise Unrepresentable(f"path prefix {m.path!r} must start with '/'")
        if not prefix:
            return None
        # Segment-aware in one criterion: with a '/' appended, /foo matches
        # /foo and /foo/..., never /foobar.
        return f"path,concat(/) -m beg -- {word(prefix + '/')}"
    if m.path_type == "RegularExpression":
        return f"path -m reg -- {word(escape.anchored_regex(m.path))}"
    raise Unrepresentable(f"path match type {m.path_type!r} is not supported")


def cors_origin_pattern(origin: str) -> str:
    """One allowOrigins entry as PCRE: `*` any origin; `*.` before a host any
    number of labels; a host of `*` any host."""
    if origin == "*":
        return ".+"
    scheme, _, rest = origin.partition("://")
    host, colon, port = rest.partition(":")
    if host == "*":
        host_re = r"[A-Za-z0-9.-]+"
    elif host.startswith("*."):
        host_re = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\." + escape.regex_literal(host[2:])
    else:
        host_re = escape.regex_literal(host)
    port_re = ":" + escape.regex_literal(port) if colon else ""
    return escape.regex_literal(scheme + "://") + host_re + port_re


def _cors_lines(cors: CORSPolicy, cond: str) -> list[str]:
    """The CORS filter: a preflight is answered here, never forwarded (204
    with the policy's headers from an allowed origin, 403 from another);
    other requests from an allowed origin are forwarded and their response
    carries the allow-origin, credentials and expose headers.  The
    allowed origin is echoed back, never `*`, so that credentials can be
    allowed and caches told (Vary: Origin)."""
    patterns = "|".join(cors_origin_pattern(o) for o in cors.allow_origins)
    origin_ok = _anon(f"req.fhdr(origin) -m reg -i -- {word(f'^(?:{patterns})$')}")
    preflight = (
        f"{cond} {_anon('method -m str -- OPTIONS')} "
        f"{_anon('req.fhdr(access-control-request-method) -m found')} {origin_ok}"
    )
    # "*" cannot be combined with credentials (browsers refuse it): the
    # requested method and headers are echoed instead.  Values are words of
    # log-format: the echoes are sample expressions, the rest literal text.
    echo = cors.allow_credentials

    def literal(*values: str) -> str:
        return escape.logformat(", ".join(values))

    headers = [("access-control-allow-origin", word("%[req.fhdr(origin)]"))]
    if cors.allow_credentials:
        headers.append(("access-control-allow-credentials", literal("true")))
    if cors.allow_methods == ("*",):
        method = word("%[req.fhdr(access-control-request-method)]") if echo else literal("*")
        headers.append(("access-control-allow-methods", method))
    elif cors.allow_methods:
        headers.append(("access-control-allow-methods", literal(*cors.allow_methods)))
    if cors.allow_headers == ("*",):
        asked = word("%[req.fhdr(access-control-request-headers)]") if echo else literal("*")
        headers.append(("access-control-allow-headers", asked))
    elif cors.allow_headers:
        headers.append(("access-control-allow-headers", literal(*cors.allow_headers)))
    if cors.expose_headers:
        headers.append(("access-control-expose-headers", literal(*cors.expose_headers)))
    headers.append(("access-control-max-age", literal(str(int(cors.max_age)))))
    headers.append(("vary", literal("Origin")))
    answer = "".join(f" hdr {name} {value}" for name, value in headers)
    # A preflight is the proxy's to answer, allowed or not: a backend that
    # knows nothing of the policy must not be the one to judge the origin.
    refused = (
        f"{cond} {_anon('method -m str -- OPTIONS')} "
        f"{_anon('req.fhdr(access-control-request-method) -m found')} "
        f"{_anon('req.fhdr(origin) -m found')}"
    )
    out = [
        f"http-request return status 204{answer}{preflight}",
        "http-request return status 403 content-type text/plain "
        f"string {word('CORS: origin not allowed')}{refused}",
    ]
    out.append(f"http-request set-var(txn.cors) req.fhdr(origin){cond} {origin_ok}")
    found = f"{cond} {_anon('var(txn.cors) -m found')}"
    origin = word("%[var(txn.cors)]")
    out.append(f"http-response set-header access-control-allow-origin {origin}{found}")
    if cors.allow_credentials:
        out.append(f"http-response set-header access-control-allow-credentials 'true'{found}")
    if cors.expose_headers:
        exposed = escape.logformat(", ".join(cors.expose_headers))
        out.append(f"http-response set-header access-control-expose-headers {exposed}{found}")
    out.append(f"http-response add-header vary 'Origin'{found}")
    return out


def _string_criterion(kind: str, value: str) -> str:
    if kind == "Exact":
        if value in ("{", "}"):
            # Inside an anonymous ACL HAProxy ends the block at any word that
            # reads "}" once unquoted, quoted or not (and a lone "{" reads
            # like the start of one to a person): say them as a regex.
            return f"-m reg -- {word('^' + escape.regex_literal(value) + '$')}"
        return f"-m str -- {word(value)}"
    if kind == "RegularExpression":
        return f"-m reg -- {word(escape.anchored_regex(value))}"
    raise Unrepresentable(f"match type {kind!r} is not supported")


# -- TLS (mode tcp) frontends -----------------------------------------------------------------


class _TCPFrontend:
    def __init__(
        self,
        r: _Renderer,
        s: _Section,
        listeners: list[L7Listener],
        passthrough: bool,
        handed: tuple[list[L7Listener], str] | None = None,
    ) -> None:
        self.r, self.s, self.listeners, self.passthrough = r, s, listeners, passthrough
        # Listeners whose connections go whole to one backend (the way to
        # their terminating frontend), and that backend.
        self.handed = handed

    def write(self) -> None:
        s, d = self.s, "tcp-request content"
        sel = _Selector(s, d)
        if self.passthrough:
            s.add(f"tcp-request inspect-delay {TLS_INSPECT_DELAY}")
            sel.named("tls_hello", "req.ssl_hello_type 1")
            s.add(f"{d} reject if !tls_hello")
            s.add(f"{d} set-var(txn.host) req.ssl_sni,lower")
        else:
            s.add(f"{d} set-var(txn.host) ssl_fc_sni,lower")
        listener_conds = sel.listener_conditions(self.listeners)
        sel.named("rset", "var(txn.r) -m found")
        targets: list[tuple[str, BackendSet | str]] = []
        handed = self.handed[0] if self.handed is not None else []
        for ls, lcond in zip(self.listeners, listener_conds, strict=True):
            if any(ls is h for h in handed):
                assert self.handed is not None
                idx = len(targets)
                targets.append((f"{ls.gateway}/{ls.listener} terminate", self.handed[1]))
                s.add(f"{d} set-var(txn.r) int({idx}) if !rset{lcond}")
                continue
            pairs: list[tuple[str, int]] = []
            for entry in ls.tls_routes:
                if self.r._skip(entry.route, None):
                    continue
                idx = len(targets)
                targets.append((entry.route, entry.backends))
                pairs.extend((h, idx) for h in entry.hostnames)
            for hostname, idx in sorted(pairs, key=lambda p: _host_key(p[0])):
                crit = _host_acl(hostname)
                cond = lcond + (" " + _anon(crit) if crit else "")
                s.add(f"{d} set-var(txn.r) int({idx}) if !rset{cond}")
            if ls.tcp_backends is not None and not self.passthrough:
                idx = len(targets)
                targets.append((f"{ls.gateway}/{ls.listener} TCPRoute", ls.tcp_backends))
                s.add(f"{d} set-var(txn.r) int({idx}) if !rset{lcond}")
        s.add(f"{d} reject if !rset")
        use_backend: list[str] = []
        for idx, (_, backends) in enumerate(targets):
            cond = " if " + _is("r", idx)
            if isinstance(backends, str):
                use_backend.append(f"use_backend {backends}{cond}")
                continue
            choices = [
                _Choice(self.r.backend(self.r.backend_key("tcp", svc)), svc.weight)
                for svc in backends.services
                if svc.weight > 0
            ]
            if backends.invalid_weight > 0:
                choices.append(_Choice(None, backends.invalid_weight))
            rules, uses = _weighted_pick(choices, cond, d, f"{d} reject")
            for line in rules:
                s.add(line)
            use_backend.extend(uses)
        for line in use_backend:
            s.add(line)


def _may_share_port(a: str | None, b: str | None) -> bool:
    """Listener kinds one bind can serve together: the same, or TLS in both
    modes (told apart by the ClientHello's SNI)."""
    return a == b or {a, b} == {PASSTHROUGH, TERMINATE}


def _weighted_pick(
    choices: list[_Choice], cond: str, directive: str, refuse: str
) -> tuple[list[str], list[str]]:
    """(frontend rules, use_backend lines) that send each request or stream
    under `cond` to a choice in proportion to its weight: a random pick into
    txn.pick and one ACL per weight range.  A choice without a backend (the
    invalid share), or no choice at all, gets `refuse` (an HTTP 500 or a
    rejected connection)."""
    if not choices:
        return [f"{refuse}{cond}"], []
    if len(choices) == 1:
        only = choices[0].backend
        return ([f"{refuse}{cond}"], []) if only is None else ([], [f"use_backend {only}{cond}"])
    rules = [f"{directive} set-var(txn.pick) rand({sum(c.weight for c in choices)}){cond}"]
    uses: list[str] = []
    low = 0
    for choice in choices:
        high = low + choice.weight - 1
        share = _anon(f"var(txn.pick) -m int {low}:{high}")
        if choice.backend is None:
            rules.append(f"{refuse}{cond} {share}")
        else:
            uses.append(f"use_backend {choice.backend}{cond} {share}")
        low = high + 1
    return rules, uses


def all_routes(listeners: Iterable[L7Listener]) -> set[str]:
    """Every route name the listeners carry (for callers mapping problems)."""
    out: set[str] = set()
    for ls in listeners:
        for vh in ls.virtual_hosts:
            out.update(e.route for e in vh.routes)
        out.update(t.route for t in ls.tls_routes)
    return out
