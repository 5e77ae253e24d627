"""The routing rules of an HTTP or HTTPS frontend (`mode http`).

Routing is decided once, then acted on: `txn.l` (listener), `txn.vh`
(virtual host), `txn.r` (route entry) are set by selection lines, then each
entry's actions (filters, backend choice) are written under `txn.r`.  The
whole scheme is in `agent.proxy.render`'s docstring.  Owns the match
conditions of an entry (path, headers, query parameters, method), its
actions and weighted backend choice, the 421 for misdirected requests and the
404 when nothing is selected; the filters themselves are in `http_filters`.

Pure: never runs haproxy, never writes a file; it does not bind, choose
certificates or decide which listeners share a frontend (`render` does).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.proxy import escape
from agent.proxy.acls import Choice, Selector, anon, host_acl, host_key, selected, weighted_pick
from agent.proxy.backends import BackendKey, Backends
from agent.proxy.escape import Unrepresentable, word
from agent.proxy.http_filters import (
    SUPPORTED_FILTERS,
    cors_lines,
    duration_ms,
    header_lines,
    path_rewrite,
    redirect,
)
from agent.proxy.sections import Section, comment
from agent.refs import ObjectRef
from agent.state import HTTPMatch, HTTPRouteEntry, L7Listener

H2C = "kubernetes.io/h2c"
# Anonymous ACLs (7 words each) on one selection line: HAProxy reads at most
# 64 words a line, and the line's head takes up to 11.
CONDITIONS_PER_LINE = 7


class HTTPFrontend:
    """Writes the rules of one HTTP(S) frontend into `s`.  `skip(route, rule)`
    tells a rule left out (None: the whole route)."""

    def __init__(
        self,
        backends: Backends,
        skip: Callable[[ObjectRef, int | None], bool],
        s: Section,
        listeners: list[L7Listener],
        port: int,
        scheme: str,
    ) -> None:
        self.backends, self.skip = backends, skip
        self.s, self.listeners, self.port, self.scheme = s, listeners, port, scheme
        self.links = 0

    def write(self) -> None:
        s = self.s
        sel = Selector(s, "http-request")
        s.add("http-request set-var(txn.host) req.hdr(host),field(1,:),lower")
        listener_conds = sel.listener_conditions(self.listeners)
        if self.scheme == "https" and len(self.listeners) > 1:
            self._misdirected(sel)
        sel.named("vhset", "var(txn.vh) -m found")
        sel.named("rset", "var(txn.r) -m found")
        entries: list[tuple[L7Listener, HTTPRouteEntry, int]] = []
        vh_index = 0
        for ls, lcond in zip(self.listeners, listener_conds, strict=True):
            for vh in sorted(ls.virtual_hosts, key=lambda v: host_key(v.hostname)):
                try:
                    crit = host_acl(vh.hostname)
                except Unrepresentable:
                    continue  # reported by the validation pass
                if all(self.skip(e.route, e.rule) for e in vh.routes):
                    # Nothing of it is served: as if its routes were absent,
                    # its requests go to the next most specific host.
                    continue
                cond = lcond + (" " + anon(crit) if crit else "")
                s.add(f"# virtual host {vh_index}: {word(vh.hostname)}")
                s.add(f"http-request set-var(txn.vh) int({vh_index}) if !vhset{cond}")
                is_vh = selected("vh", vh_index)
                for entry in vh.routes:
                    if self.skip(entry.route, entry.rule):
                        continue
                    e = len(entries)
                    s.add(comment(f"# entry {e}: {entry.route} rule {entry.rule}"))
                    conds = EntryWriter(self.backends, ls, entry, e).match_conditions()
                    for line in self._selection(e, f"!rset {is_vh}", conds):
                        s.add(line)
                    entries.append((ls, entry, e))
                vh_index += 1
        s.add("http-request return status 404 content-type text/plain string 'no route' if !rset")
        use_backend: list[str] = []
        for ls, entry, e in entries:
            writer = EntryWriter(self.backends, ls, entry, e)
            for line in writer.actions():
                s.add(line)
            use_backend.extend(writer.use_backend)
        for line in use_backend:
            s.add(line)

    def _misdirected(self, sel: Selector) -> None:
        """421 for a request whose Host selects another listener than the SNI
        of its connection did: a client reusing one TLS connection for
        another name (HTTP/2 coalescing) must not get past the certificate
        and listener that name has (GatewayHTTPSListenerDetectMisdirectedRequests)."""
        s = self.s
        s.add("http-request set-var(txn.sni) ssl_fc_sni,lower")
        sel.named("slset", "var(txn.sl) -m found")
        for i, ls in enumerate(self.listeners):
            crit = host_acl(ls.hostname, "txn.sni")
            cond = "" if crit is None else " " + anon(crit)
            s.add(
                f"http-request set-var(txn.sl) int({i}) if !slset "
                f"{anon('var(txn.sni) -m found')}{cond}"
            )
        refuse = (
            "http-request return status 421 content-type text/plain string 'misdirected request'"
        )
        s.add(f"{refuse} if {anon('var(txn.sni) -m found')} !slset lset")
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
            head = selected("m", self.links)
        out.append(f"http-request set-var(txn.r) int({e}) if {head}" + _join(groups[-1]))
        return out


def _join(conds: list[str]) -> str:
    return "".join(" " + c for c in conds)


class EntryWriter:
    """The ACLs, actions and backend choice of one HTTP route entry.  A dry
    run (the validation pass) names the backends without writing them."""

    def __init__(
        self,
        backends: Backends,
        ls: L7Listener,
        entry: HTTPRouteEntry,
        index: int,
        dry_run: bool = False,
    ) -> None:
        self.backends, self.ls, self.entry, self.e = backends, ls, entry, index
        self.dry_run = dry_run
        self.use_backend: list[str] = []
        self.keys: list[BackendKey] = []  # the backends it uses

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
        path_crit = path_criterion(m)
        if path_crit is not None:
            conds.append(anon(path_crit))
        for h in m.headers:
            fetch = word(f"req.fhdr({escape.fetch_arg_name(h.name)})")
            conds.append(anon(f"{fetch} {string_criterion(h.type, h.value)}"))
        for q in m.query_params:
            fetch = word(f"urlp({escape.fetch_arg_name(q.name)})")
            conds.append(anon(f"{fetch} {string_criterion(q.type, q.value)}"))
        if m.method is not None:
            if not re.fullmatch(r"[A-Z]{1,16}", m.method):
                raise Unrepresentable(f"method {m.method!r} is not an HTTP method")
            conds.append(anon(f"method -m str -- {word(m.method)}"))
        return conds

    # -- actions -------------------------------------------------------------------------

    def actions(self) -> list[str]:
        entry, e = self.entry, self.e
        cond = " if " + selected("r", e)
        out: list[str] = []
        redirected = False
        for flt in entry.filters:
            if flt.type not in SUPPORTED_FILTERS:
                raise Unrepresentable(f"the {flt.type} filter is not supported")
            if flt.request_header_modifier is not None:
                out.extend(header_lines("http-request", flt.request_header_modifier, cond))
            elif flt.response_header_modifier is not None:
                out.extend(header_lines("http-response", flt.response_header_modifier, cond))
            elif flt.url_rewrite is not None:
                rw = flt.url_rewrite
                if rw.hostname is not None:
                    host = escape.hostname(rw.hostname, wildcard=False)
                    out.append(f"http-request set-header host {word(host)}{cond}")
                if rw.path is not None:
                    out.extend(path_rewrite(rw.path, entry.match, cond))
            elif flt.request_redirect is not None:
                out.extend(redirect(flt, self.ls, entry.match, cond))
                redirected = True
            elif flt.cors is not None:
                out.extend(cors_lines(flt.cors, cond))
        for svc in entry.backends.services:
            self.backends.check_endpoints(svc)
            for flt in svc.filters:
                if flt.type not in ("RequestHeaderModifier", "ResponseHeaderModifier"):
                    raise Unrepresentable(f"the {flt.type} filter is not supported on a backendRef")
                mod = flt.request_header_modifier or flt.response_header_modifier
                if mod is not None:
                    header_lines("http-request", mod)
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
        choices: list[Choice] = []
        for svc in backends.services:
            if svc.weight <= 0:
                continue
            h2 = self.entry.grpc or svc.app_protocol == H2C
            key = self.backends.key(
                "http",
                svc,
                h2=h2,
                timeout_ms=timeout,
                filters=svc.filters,
                retry=self.entry.retry,
            )
            self.keys.append(key)
            name = self.backends.name(key) if self.dry_run else self.backends.add(key)
            choices.append(Choice(name, svc.weight))
        if backends.invalid_weight > 0:
            choices.append(Choice(None, backends.invalid_weight))
        # No backend at all (no backendRefs, every weight 0) is a 500 too.
        rules, uses = weighted_pick(choices, cond, "http-request", "http-request return status 500")
        self.use_backend.extend(uses)
        return rules


def path_criterion(m: HTTPMatch) -> str | None:
    """The ACL criterion for a path match (None = any path)."""
    if m.path_type == "Exact":
        escape.word(m.path)
        return f"path {string_criterion('Exact', m.path)}"
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


def string_criterion(kind: str, value: str) -> str:
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
