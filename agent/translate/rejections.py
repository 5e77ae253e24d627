"""What the status says was refused, as lines a person reads in a log.

A rejected object is only useful to its author if the author sees it: the
status carries it, but in standalone mode nobody reads the status file, and in
a cluster a misspelled field shows nowhere but in `kubectl get -o yaml`.  This
module turns the StatusReport into one `Rejection` per refusing condition
(`Accepted=False`, `ResolvedRefs=False`, `Programmed=False`, `Conflicted=True`)
on a GatewayClass, a Gateway, a ListenerSet or one of their listeners, or a
route's parentRef,
and one per malformed object of a kind that has no status (a Service,
EndpointSlice or Secret: a route that uses it only sees no endpoints), with
the manifest's FILE:LINE when there is one.  It also names GatewayClasses
that no agent with this controller name serves, since their Gateways would
otherwise vanish from the output without a word.

Pure: a function of the snapshot and the report.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from agent.model.snapshot import Snapshot
from agent.translate.status import (
    ACCEPTED,
    CONFLICTED,
    PROGRAMMED,
    RESOLVED_REFS,
    Condition,
    GatewayClassStatus,
    GatewayStatus,
    ListenerSetStatus,
    ParentRefStatus,
    PolicyStatus,
    RouteStatus,
    StatusReport,
)

# Kinds gatewaylb reads that carry no status it could write.
STATUSLESS_KINDS = frozenset(
    {"Service", "EndpointSlice", "Secret", "ConfigMap", "Namespace", "ReferenceGrant"}
)
# Conditions that refuse when False; Conflicted refuses when True.
_REFUSING_WHEN_FALSE = (ACCEPTED, RESOLVED_REFS, PROGRAMMED)


@dataclass(frozen=True, slots=True)
class Rejection:
    kind: str
    namespace: str
    name: str
    source: str  # FILE:LINE of the manifest, "" for objects from the API server
    where: str  # "" (the object), "listener NAME", "parentRef ns/name[/section]"
    condition: str  # "Accepted=False", or several: "Accepted=False,Programmed=False"
    reason: str
    message: str

    @property
    def object(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def __str__(self) -> str:
        at = f" ({self.source})" if self.source else ""
        where = f" {self.where}:" if self.where else ":"
        return (
            f"{self.kind} {self.object}{at}{where} {self.condition} {self.reason}: {self.message}"
        )


def _refusing(conditions: tuple[Condition, ...]) -> list[Condition]:
    return [
        c
        for c in conditions
        if (c.type in _REFUSING_WHEN_FALSE and not c.status) or (c.type == CONFLICTED and c.status)
    ]


def _parent(ref: ParentRefStatus) -> str:
    name = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    section = f"/{ref.section_name}" if ref.section_name else ""
    port = f":{ref.port}" if ref.port is not None else ""
    return f"parentRef {name}{section}{port}"


def _sources(snapshot: Snapshot) -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = {}
    for gc in snapshot.gateway_classes:
        out[("GatewayClass", "", gc.meta.name)] = gc.meta.source
    for gw in snapshot.gateways:
        out[("Gateway", gw.meta.namespace, gw.meta.name)] = gw.meta.source
    for policy in snapshot.backend_tls_policies:
        out[("BackendTLSPolicy", policy.meta.namespace, policy.meta.name)] = policy.meta.source
    for lset in snapshot.listener_sets:
        out[("ListenerSet", lset.meta.namespace, lset.meta.name)] = lset.meta.source
    for http in snapshot.http_routes:
        out[(http.kind, http.meta.namespace, http.meta.name)] = http.meta.source
    for grpc in snapshot.grpc_routes:
        out[(grpc.kind, grpc.meta.namespace, grpc.meta.name)] = grpc.meta.source
    for l4 in snapshot.l4_routes:
        out[(l4.kind, l4.meta.namespace, l4.meta.name)] = l4.meta.source
    for invalid in snapshot.invalid:
        out[(invalid.kind, invalid.meta.namespace, invalid.meta.name)] = invalid.meta.source
    return out


def rejections(snapshot: Snapshot, report: StatusReport) -> tuple[Rejection, ...]:
    """Every refusing condition of the report, object by object, in report order."""
    sources = _sources(snapshot)
    out: list[Rejection] = []
    for obj in report.objects:
        source = _file_source(obj.kind, sources.get((obj.kind, obj.namespace, obj.name), ""))
        parts: list[tuple[str, tuple[Condition, ...]]] = []
        status = obj.status
        if isinstance(status, GatewayClassStatus):
            parts.append(("", status.conditions))
        elif isinstance(status, GatewayStatus | ListenerSetStatus):
            parts.append(("", status.conditions))
            parts += [(f"listener {ls.name}", ls.conditions) for ls in status.listeners]
        elif isinstance(status, RouteStatus):
            parts += [(_parent(p.parent_ref), p.conditions) for p in status.parents]
        elif isinstance(status, PolicyStatus):
            parts += [(f"ancestor {a.namespace}/{a.name}", a.conditions) for a in status.ancestors]
        for where, conditions in parts:
            # Conditions refusing for the same reason and message make one line.
            merged: dict[tuple[str, str], list[str]] = {}
            for c in _refusing(conditions):
                state = "True" if c.status else "False"
                merged.setdefault((c.reason, c.message), []).append(f"{c.type}={state}")
            out += [
                Rejection(
                    obj.kind,
                    obj.namespace,
                    obj.name,
                    source,
                    where,
                    ",".join(states),
                    reason,
                    message,
                )
                for (reason, message), states in merged.items()
            ]
    # Kinds without a status of their own: a malformed one is only ever said here.
    for inv in snapshot.invalid:
        if inv.kind in STATUSLESS_KINDS:
            out.append(
                Rejection(
                    inv.kind,
                    inv.meta.namespace,
                    inv.meta.name,
                    _file_source(inv.kind, inv.meta.source),
                    "",
                    "Invalid",
                    "Invalid",
                    inv.error,
                )
            )
    return tuple(out)


def _file_source(kind: str, source: str) -> str:
    """The manifest's FILE:LINE; "" for objects from the API server, whose
    source only names the object again."""
    return "" if source.startswith(f"{kind} ") else source


def rejected_counts(found: tuple[Rejection, ...]) -> dict[tuple[str, str], int]:
    """(kind, reason) -> number of distinct objects refused for that reason."""
    objects: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for r in found:
        objects.setdefault((r.kind, r.reason), set()).add((r.namespace, r.name))
    return {key: len(names) for key, names in objects.items()}


def foreign_classes(snapshot: Snapshot, controller_name: str) -> tuple[str, ...]:
    """A line for each GatewayClass whose controllerName is not this agent's:
    its Gateways are left to another controller.  With a near miss of our
    name (a typo) the line says so."""
    out: list[str] = []
    for gc in snapshot.gateway_classes:
        if gc.controller_name == controller_name:
            continue
        close = difflib.get_close_matches(gc.controller_name, [controller_name], n=1, cutoff=0.8)
        hint = f" (did you mean {controller_name!r}?)" if close else ""
        at = f" ({gc.meta.source})" if gc.meta.source else ""
        out.append(
            f"GatewayClass {gc.meta.name}{at}: spec.controllerName {gc.controller_name!r} is "
            f"not this agent's {controller_name!r}{hint}; its Gateways are left to that "
            "controller"
        )
    return tuple(out)
