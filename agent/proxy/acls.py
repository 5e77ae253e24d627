"""Conditions of a frontend: anonymous ACLs, hostname matching, the selection
of a listener by `txn.host`, and the weighted choice of a backend.

Both kinds of frontend (HTTP in `http_frontend`, TLS in `tls_frontend`) select
a listener, then a virtual host or SNI name, with these; every value in a
criterion goes through `agent.proxy.escape` first.

Pure: never runs haproxy, never writes a file; it writes lines into the
`Section` it is given and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.proxy import escape
from agent.proxy.escape import word
from agent.proxy.sections import Section
from agent.state import L7Listener


def anon(criterion: str) -> str:
    """An anonymous ACL.  Why not named ones: HAProxy looks a named ACL up by a
    linear scan of its section's list, at its definition and at every use, so
    a frontend with N named ACLs takes O(N^2) to load (14 600 took 2.9 s of
    `haproxy -c`, 29 200 took 27 s); anonymous ACLs load in linear time
    (40 000 in 0.44 s)."""
    return f"{{ {criterion} }}"


def selected(var: str, index: int) -> str:
    """The condition `txn.<var>` holds `index` (a selected listener, virtual
    host or route entry)."""
    return anon(f"var(txn.{var}) -m int {index}")


# -- hostnames --------------------------------------------------------------------------


def host_key(hostname: str | None) -> tuple[int, int, str]:
    """Most specific first: exact names, then wildcards (longer first), then any."""
    if hostname is None or hostname == "*":
        return (2, 0, "")
    if hostname.startswith("*."):
        return (1, -len(hostname), hostname)
    return (0, -len(hostname), hostname)


def host_acl(hostname: str | None, var: str = "txn.host") -> str | None:
    """The ACL criterion on `var` (the Host, or the SNI) for a hostname
    pattern (None: any host)."""
    if hostname is None or hostname == "*":
        return None
    escape.hostname(hostname)
    if hostname.startswith("*."):
        return f"var({var}) -m end -- {word(hostname[1:])}"
    return f"var({var}) -m str -- {word(hostname)}"


class Selector:
    """Listener, then virtual host / SNI name, selection on `txn.host`."""

    def __init__(self, section: Section, directive: str) -> None:
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
            crit = host_acl(ls.hostname)
            cond = "" if crit is None else " " + anon(crit)
            self.s.add(f"{self.directive} set-var(txn.l) int({i}) if !lset{cond}")
            out.append(" " + selected("l", i))
        return out


# -- weighted choice of a backend ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    backend: str | None  # None: the invalid share (500 / reject)
    weight: int


def weighted_pick(
    choices: list[Choice], cond: str, directive: str, refuse: str
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
        share = anon(f"var(txn.pick) -m int {low}:{high}")
        if choice.backend is None:
            rules.append(f"{refuse}{cond} {share}")
        else:
            uses.append(f"use_backend {choice.backend}{cond} {share}")
        low = high + 1
    return rules, uses
