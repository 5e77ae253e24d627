"""L7 listeners -> one complete HAProxy 2.6 configuration (pure: no I/O).

`render()` is the entry point; `_Renderer` drives one render: it decides
which listeners are served and which share a frontend, runs the validation
pass, has the budget leave out what is over it, and assembles the sections
the other modules write.  Never runs haproxy, never writes a file (the files
the configuration needs are returned in `RenderedConfig.files`).

Layout of the output:

- `global` / `defaults` (`sections`): the master-worker plumbing (a stats
  socket that hands listening sockets to the next worker on reload),
  hitless-reload options and the default timeouts.
- one `frontend` per distinct listener set on a port: every (VIP, port) that
  serves the same listeners shares one frontend with one `bind` per VIP.
  HTTP and HTTPS listeners are `mode http` (`http_frontend`; HTTPS
  terminates TLS with a `crt-list`, certificates chosen by SNI); TLS
  listeners are `mode tcp` (`tls_frontend`: Passthrough routes on the
  ClientHello's SNI, Terminate decrypts first).
- one `backend` per distinct (Service, endpoints, protocol, backend filters,
  timeout) (`backends`): endpoints are its servers.

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
HAProxy takes minutes to parse; what each route adds is counted in the
validation pass, and a route over the `Budget` (`budget`) is left out and
reported.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.proxy import escape
from agent.proxy.acls import host_acl, host_key
from agent.proxy.backends import Backends
from agent.proxy.budget import DEFAULT_BUDGET, Budget, Ledger, over_total
from agent.proxy.certificates import RunFiles, certificate_id, client_verify
from agent.proxy.escape import Unrepresentable, word
from agent.proxy.http_frontend import CONDITIONS_PER_LINE, EntryWriter, HTTPFrontend
from agent.proxy.sections import (
    Section,
    addr,
    comment,
    defaults_section,
    global_section,
    health_section,
    short_hash,
)
from agent.proxy.tls_frontend import TCPFrontend, handover
from agent.refs import ListenerRef, ObjectRef, Subject
from agent.state import HTTPRouteEntry, L7Listener, TLSRouteEntry

HTTP, HTTPS, PASSTHROUGH, TERMINATE = "http", "https", "tls-passthrough", "tls-terminate"


@dataclass(frozen=True, slots=True)
class Problem:
    """Why (part of) a route or listener is not served.  `subject` is the route
    (or the listener) it is told on, `rule` its rule index when the problem is
    one rule, `reason` the message for a person, and
    `status_reason` the reason of the status condition it turns into (None:
    the usual one, `UnsupportedValue` on a route, `Invalid` on a listener)."""

    subject: Subject
    rule: int | None
    reason: str
    status_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedConfig:
    text: str
    files: Mapping[str, bytes]  # path relative to the run directory -> content
    problems: tuple[Problem, ...]
    binds: frozenset[tuple[str, int]] = frozenset()  # (IP, port) the frontends bind


def render(
    listeners: Sequence[L7Listener],
    run_dir: str,
    *,
    rejected_certificates: Mapping[str, str] | None = None,
    excluded_rules: frozenset[tuple[ObjectRef, int | None]] = frozenset(),
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
        routes = r.ledger.largest_routes(over) if over > 0 else []
        if not routes:
            break
        # The routes' estimated sizes fell short of the text they render to:
        # leave out the largest still in it, enough to cover what is over.
        reason = over_total("bytes", budget.bytes, "bytes of configuration")
        excluded.update((route, None) for route in routes)
        late.extend(Problem(route, None, reason) for route in routes)
    return dataclasses.replace(rc, problems=rc.problems + tuple(late))


# -- the renderer -------------------------------------------------------------------------


def _listener_id(ls: L7Listener) -> tuple[str, ...]:
    if ls.listener_set:
        return (ls.gateway, ls.listener_set, ls.listener)
    return (ls.gateway, ls.listener)


def _kind(ls: L7Listener) -> str | None:
    if ls.protocol == "HTTP":
        return HTTP
    if ls.protocol == "HTTPS" and ls.tls_mode in (None, "Terminate"):
        return HTTPS
    if ls.protocol == "TLS" and ls.tls_mode == "Passthrough":
        return PASSTHROUGH
    if ls.protocol == "TLS" and ls.tls_mode in (None, "Terminate"):
        return TERMINATE
    return None


def _may_share_port(a: str | None, b: str | None) -> bool:
    """Listener kinds one bind can serve together: the same, or TLS in both
    modes (told apart by the ClientHello's SNI)."""
    return a == b or {a, b} == {PASSTHROUGH, TERMINATE}


class _Renderer:
    def __init__(
        self,
        run_dir: str,
        rejected_certificates: dict[str, str],
        excluded: frozenset[tuple[ObjectRef, int | None]],
        budget: Budget,
    ) -> None:
        self.run_dir = run_dir
        self.rejected = rejected_certificates
        self.excluded = excluded
        self.budget = budget
        self.problems: dict[Problem, None] = {}
        self.files = RunFiles(run_dir)
        self.backends = Backends(self.files, budget.backend_servers)
        self.bad_rules: set[tuple[ObjectRef, int | None]] = set(excluded)
        self.threads: int | None = None
        self.ledger = Ledger(budget, self.backends, self._skip)
        self.binds: set[tuple[str, int]] = set()

    def problem(self, route: Subject, rule: int | None, reason: str) -> None:
        self.problems[Problem(route, rule, reason)] = None

    # -- top level ----------------------------------------------------------------------

    def render(self, listeners: Sequence[L7Listener]) -> RenderedConfig:
        usable = [ls for ls in listeners if self._listener_usable(ls)]
        # Pass 1: find the rules whose values cannot be represented, so that
        # every match of such a rule is left out everywhere.
        for ls in usable:
            for vh in ls.virtual_hosts:
                try:
                    host_acl(vh.hostname)
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
        for route, reason in self.ledger.over_budget():
            self._leave_out(route, reason)
        frontends = [
            section
            for name, binds, group in self._groups(usable)
            for section in self._frontends(name, binds, group)
        ]
        sections = [
            global_section(self.run_dir, self.threads),
            defaults_section(),
            health_section(self.run_dir),
        ]
        sections.extend(frontends)
        sections.extend(self.backends.in_order())
        text = (
            "# generated by gatewaylb: do not edit\n"
            + "\n\n".join(s.text() for s in sections)
            + "\n"
        )
        return RenderedConfig(
            text, dict(self.files.contents), tuple(self.problems), frozenset(self.binds)
        )

    def _listener_name(self, ls: L7Listener) -> ListenerRef:
        return ls.owner

    def _listener_usable(self, ls: L7Listener) -> bool:
        name = self._listener_name(ls)
        if _kind(ls) is None:
            self.problem(name, None, f"protocol {ls.protocol} mode {ls.tls_mode} is not supported")
            return False
        if not 1 <= ls.port <= 65535:
            self.problem(name, None, f"port {ls.port} is out of range")
            return False
        try:
            if ls.hostname is not None:
                escape.hostname(ls.hostname)
            for vip in ls.vips:
                addr(vip, ls.port)
        except (Unrepresentable, ValueError) as exc:
            self.problem(name, None, str(exc))
            return False
        if _kind(ls) in (HTTPS, TERMINATE):
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
                if group and not _may_share_port(_kind(group[0]), _kind(ls)):
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
            ident = short_hash(port, sorted(vips), [_listener_id(ls) for ls in group])
            out.append((f"fe_{port}_{ident}", [addr(v, port) for v in sorted(vips)], group))
        out.sort(key=lambda item: item[0])
        return out

    # -- validation pass -------------------------------------------------------------------

    def _check_entry(self, ls: L7Listener, vh_line: int, entry: HTTPRouteEntry) -> None:
        """Validate one occurrence of an entry (dry run) and count what it adds."""
        if (entry.route, entry.rule) in self.bad_rules or (entry.route, None) in self.bad_rules:
            return
        writer = EntryWriter(self.backends, ls, entry, 0, dry_run=True)
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
        self.ledger.charge(entry.route, entry.rule, 1 + len(conds) + len(lines), size + vh_line)
        self.ledger.uses(entry.route, writer.keys)

    def _check_tls_entry(self, entry: TLSRouteEntry) -> None:
        try:
            for h in entry.hostnames:
                host_acl(h)
            for svc in entry.backends.services:
                self.backends.check_endpoints(svc)
        except Unrepresentable as exc:
            self.bad_rules.add((entry.route, None))
            self.problem(entry.route, None, str(exc))
            return
        services = len(entry.backends.services)
        size = sum(len(h) + 96 for h in entry.hostnames) + 128 * (services + 1)
        self.ledger.charge(entry.route, None, len(entry.hostnames) + services + 1, size)
        self.ledger.uses(
            entry.route, (self.backends.key("tcp", svc) for svc in entry.backends.services)
        )

    def _skip(self, route: ObjectRef, rule: int | None) -> bool:
        return (route, rule) in self.bad_rules or (route, None) in self.bad_rules

    def _leave_out(self, route: ObjectRef, reason: str) -> None:
        self.bad_rules.add((route, None))
        self.problem(route, None, reason)

    # -- frontends ---------------------------------------------------------------------

    def _frontends(self, name: str, binds: list[str], listeners: list[L7Listener]) -> list[Section]:
        """The frontend for listeners that share binds.  TLS listeners in both
        modes on one port (TLSRouteModeMixed) take two: the public one reads
        the SNI of the ClientHello and passes passthrough names on as they are;
        the names of terminating listeners go, by a UNIX socket carrying the
        client's address (PROXY protocol), to a second frontend that
        terminates them."""
        terminating = [ls for ls in listeners if _kind(ls) == TERMINATE]
        passing = [ls for ls in listeners if _kind(ls) == PASSTHROUGH]
        if not (terminating and passing):
            return [self._frontend(name, binds, listeners)]
        link = handover(name, self.run_dir)
        public = self._frontend(name, binds, passing, terminating=(terminating, link.backend_name))
        inner = self._frontend(link.frontend, [link.bind], terminating)
        return [public, inner, link.backend]

    def _frontend(
        self,
        name: str,
        binds: list[str],
        listeners: list[L7Listener],
        terminating: tuple[list[L7Listener], str] | None = None,
    ) -> Section:
        """`terminating`: listeners this (passthrough) frontend hands to the
        backend that leads to their terminating frontend."""
        kind = _kind(listeners[0])
        s = Section(f"frontend {name}")
        ordered = sorted(listeners, key=lambda ls: host_key(ls.hostname))
        port = listeners[0].port
        names = ", ".join(f"{ls.gateway}/{ls.listener}" for ls in ordered)
        s.add(comment(f"# {kind} port {port}: {names}"))
        bind_opts = ""
        if kind in (HTTPS, TERMINATE):
            crt_list = self.files.crt_list(ordered, self.rejected)
            alpn = " alpn h2,http/1.1" if kind == HTTPS else ""
            bind_opts = f" ssl crt-list {word(crt_list)}{alpn}"
            bind_opts += client_verify(self.files, ordered)
        s.add(f"mode {'http' if kind in (HTTP, HTTPS) else 'tcp'}")
        for bind in binds:
            s.add(f"bind {bind}{bind_opts}")
        if kind in (HTTP, HTTPS):
            # Hitless reloads: an old worker closes a keep-alive connection
            # right after answering its next request, never while idle.
            s.add("option idle-close-on-response")
            s.add("option forwardfor")
            scheme = "https" if kind == HTTPS else "http"
            HTTPFrontend(self.backends, self._skip, s, ordered, port, scheme).write()
        elif terminating is not None:
            handed, backend = terminating
            ordered = sorted([*listeners, *handed], key=lambda ls: host_key(ls.hostname))
            TCPFrontend(
                self.backends, self._skip, s, ordered, True, handed=(handed, backend)
            ).write()
        else:
            TCPFrontend(self.backends, self._skip, s, ordered, kind == PASSTHROUGH).write()
        return s


def all_routes(listeners: Iterable[L7Listener]) -> set[ObjectRef]:
    """Every route name the listeners carry (for callers mapping problems)."""
    out: set[ObjectRef] = set()
    for ls in listeners:
        for vh in ls.virtual_hosts:
            out.update(e.route for e in vh.routes)
        out.update(t.route for t in ls.tls_routes)
    return out
