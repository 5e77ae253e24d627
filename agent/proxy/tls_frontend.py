"""The routing rules of a TLS frontend (`mode tcp`), and the hand-over between
the two frontends of a port that serves TLS in both modes.

A Passthrough frontend reads the SNI of the ClientHello (`req.ssl_sni`) and
sends the stream as it is; a Terminate frontend decrypts first and reads
`ssl_fc_sni`.  Either selects a listener, then a TLSRoute hostname, into
`txn.r`, and picks that route's backend by weight; a terminating listener's
TCPRoute takes its connections whole.  On a port with listeners of both
modes (TLSRouteModeMixed) the public frontend passes the names of
terminating listeners, by a UNIX socket carrying the client's address (PROXY
protocol), to a second frontend that terminates them (`handover`).

Pure: never runs haproxy, never writes a file; it does not bind, choose
certificates or decide which listeners share a frontend (`render` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.proxy.acls import Choice, Selector, anon, host_acl, host_key, selected, weighted_pick
from agent.proxy.backends import Backends
from agent.proxy.escape import word
from agent.proxy.sections import Section
from agent.refs import ObjectRef
from agent.state import BackendSet, L7Listener

TLS_INSPECT_DELAY = "5s"


@dataclass(frozen=True, slots=True)
class Handover:
    """The way from the public frontend of a mixed TLS port to its
    terminating frontend."""

    frontend: str  # the terminating frontend's name
    bind: str  # its bind: the UNIX socket, accepting the PROXY protocol
    backend_name: str  # the public frontend's backend to it
    backend: Section


def handover(name: str, run_dir: str) -> Handover:
    """The hand-over of the public frontend `name` to its terminating one."""
    socket = f"unix@{run_dir}/{name}.sock"
    to_terminator = f"be_{name}_terminate"
    backend = Section(f"backend {to_terminator}")
    backend.add("mode tcp")
    backend.add(f"server terminate {word(socket)} send-proxy-v2")
    return Handover(f"{name}_terminate", word(socket) + " accept-proxy", to_terminator, backend)


class TCPFrontend:
    """Writes the rules of one TLS frontend into `s`.  `skip(route, rule)`
    tells a route left out (rule None)."""

    def __init__(
        self,
        backends: Backends,
        skip: Callable[[ObjectRef, int | None], bool],
        s: Section,
        listeners: list[L7Listener],
        passthrough: bool,
        handed: tuple[list[L7Listener], str] | None = None,
    ) -> None:
        self.backends, self.skip = backends, skip
        self.s, self.listeners, self.passthrough = s, listeners, passthrough
        # Listeners whose connections go whole to one backend (the way to
        # their terminating frontend), and that backend.
        self.handed = handed

    def write(self) -> None:
        s, d = self.s, "tcp-request content"
        sel = Selector(s, d)
        if self.passthrough:
            s.add(f"tcp-request inspect-delay {TLS_INSPECT_DELAY}")
            sel.named("tls_hello", "req.ssl_hello_type 1")
            s.add(f"{d} reject if !tls_hello")
            s.add(f"{d} set-var(txn.host) req.ssl_sni,lower")
        else:
            s.add(f"{d} set-var(txn.host) ssl_fc_sni,lower")
        listener_conds = sel.listener_conditions(self.listeners)
        sel.named("rset", "var(txn.r) -m found")
        targets: list[tuple[object, BackendSet | str]] = []
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
                if self.skip(entry.route, None):
                    continue
                idx = len(targets)
                targets.append((entry.route, entry.backends))
                pairs.extend((h, idx) for h in entry.hostnames)
            for hostname, idx in sorted(pairs, key=lambda p: host_key(p[0])):
                crit = host_acl(hostname)
                cond = lcond + (" " + anon(crit) if crit else "")
                s.add(f"{d} set-var(txn.r) int({idx}) if !rset{cond}")
            if ls.tcp_backends is not None and not self.passthrough:
                idx = len(targets)
                targets.append((f"{ls.gateway}/{ls.listener} TCPRoute", ls.tcp_backends))
                s.add(f"{d} set-var(txn.r) int({idx}) if !rset{lcond}")
        s.add(f"{d} reject if !rset")
        use_backend: list[str] = []
        for idx, (_, backends) in enumerate(targets):
            cond = " if " + selected("r", idx)
            if isinstance(backends, str):
                use_backend.append(f"use_backend {backends}{cond}")
                continue
            choices = [
                Choice(self.backends.add(self.backends.key("tcp", svc)), svc.weight)
                for svc in backends.services
                if svc.weight > 0
            ]
            if backends.invalid_weight > 0:
                choices.append(Choice(None, backends.invalid_weight))
            rules, uses = weighted_pick(choices, cond, d, f"{d} reject")
            for line in rules:
                s.add(line)
            use_backend.extend(uses)
        for line in use_backend:
            s.add(line)
