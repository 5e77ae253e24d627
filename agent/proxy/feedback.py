"""What the proxy could not serve, written into the routes' and listeners' status.

translate decides status from the objects alone; a few things are only known
once the configuration is rendered or about to be loaded (a value that cannot
be written safely into HAProxy's syntax, a route over the configuration's
budget, a certificate the TLS library refuses, a listener port another process
holds on this node).  Those come back as `Problem`s and are folded into the
StatusReport here, so a user reads them on the object instead of in the
agent's log: a route's as Accepted=False (whole route) or PartiallyInvalid
(some rules), a listener's as Programmed=False, with the Problem's
`status_reason` when it has one (`PortUnavailable`).  Pure.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from agent.proxy.render import Problem
from agent.translate.status import (
    ACCEPTED,
    PARTIALLY_INVALID,
    PROGRAMMED,
    R_INVALID,
    R_UNSUPPORTED_VALUE,
    Condition,
    GatewayStatus,
    ListenerSetStatus,
    ListenerStatus,
    ObjectStatus,
    RouteParentStatus,
    RouteStatus,
    StatusReport,
)


def _replace(conds: tuple[Condition, ...], new: Condition) -> tuple[Condition, ...]:
    return (*(c for c in conds if c.type != new.type), new)


def apply_problems(report: StatusReport, problems: tuple[Problem, ...]) -> StatusReport:
    if not problems:
        return report
    by_route: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_route[p.route].append(p)
    objects = []
    for obj in report.objects:
        key = f"{obj.kind} {obj.namespace}/{obj.name}"
        if isinstance(obj.status, RouteStatus) and key in by_route:
            objects.append(_route(obj, obj.status, by_route[key]))
        elif isinstance(obj.status, GatewayStatus | ListenerSetStatus):
            objects.append(_listeners(obj, obj.status, by_route))
        else:
            objects.append(obj)
    return StatusReport(tuple(objects))


def _status_reason(problems: list[Problem], default: str) -> str:
    return next((p.status_reason for p in problems if p.status_reason), default)


def _route(obj: ObjectStatus, status: RouteStatus, problems: list[Problem]) -> ObjectStatus:
    whole = [p for p in problems if p.rule is None]
    reason = _status_reason(problems, R_UNSUPPORTED_VALUE)
    message = "; ".join(
        f"rule {p.rule}: {p.reason}" if p.rule is not None else p.reason for p in problems
    )[:1024]
    parents = []
    for parent in status.parents:
        conds = parent.conditions
        accepted = next((c for c in conds if c.type == ACCEPTED), None)
        if accepted is not None and accepted.status:
            gen = accepted.observed_generation
            if whole:
                conds = _replace(conds, Condition(ACCEPTED, False, reason, message, gen))
            else:
                conds = _replace(
                    conds,
                    Condition(PARTIALLY_INVALID, True, reason, f"Dropped Rule(s): {message}", gen),
                )
        parents.append(RouteParentStatus(parent.parent_ref, parent.controller_name, conds))
    return dataclasses.replace(obj, status=RouteStatus(tuple(parents)))


def _listeners(
    obj: ObjectStatus,
    status: GatewayStatus | ListenerSetStatus,
    by_route: dict[str, list[Problem]],
) -> ObjectStatus:
    prefix = f"{obj.kind} {obj.namespace}/{obj.name} listener "
    listeners: list[ListenerStatus] = []
    changed = False
    for ls in status.listeners:
        problems = by_route.get(prefix + ls.name)
        if problems:
            changed = True
            gen = next((c.observed_generation for c in ls.conditions), 0)
            message = "; ".join(p.reason for p in problems)[:1024]
            reason = _status_reason(problems, R_INVALID)
            ls = dataclasses.replace(
                ls,
                conditions=_replace(
                    ls.conditions, Condition(PROGRAMMED, False, reason, message, gen)
                ),
            )
        listeners.append(ls)
    if not changed:
        return obj
    return dataclasses.replace(obj, status=dataclasses.replace(status, listeners=tuple(listeners)))
