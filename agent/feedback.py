"""What a stage could not do, written into the routes' and listeners' status.

translate decides status from the objects alone; a few things are only known
once a stage tries (the proxy: a value that cannot be written safely into
HAProxy's syntax, a route over the configuration's budget, a certificate the
TLS library refuses, a listener port another process holds on this node).
Those come back as `Failure`s marked `in_status` and are folded into the
StatusReport here, so a user reads them on the object instead of in the
agent's log: a route's as Accepted=False (whole route) or PartiallyInvalid
(some rules), a listener's as Programmed=False, with the Failure's
`status_reason` when it has one (`PortUnavailable`).  Pure: never reads or
writes anything.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from agent.reconcile import Failure
from agent.refs import ListenerRef, ObjectRef, Subject
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


def fold_failures(report: StatusReport, failures: tuple[Failure, ...]) -> StatusReport:
    by_subject: dict[Subject, list[Failure]] = defaultdict(list)
    for f in failures:
        if f.in_status:
            by_subject[f.subject].append(f)
    if not by_subject:
        return report
    objects = []
    for obj in report.objects:
        key = ObjectRef(obj.kind, obj.namespace, obj.name)
        if isinstance(obj.status, RouteStatus) and key in by_subject:
            objects.append(_route(obj, obj.status, by_subject[key]))
        elif isinstance(obj.status, GatewayStatus | ListenerSetStatus):
            objects.append(_listeners(obj, obj.status, by_subject))
        else:
            objects.append(obj)
    return StatusReport(tuple(objects))


def _status_reason(problems: list[Failure], default: str) -> str:
    return next((p.status_reason for p in problems if p.status_reason), default)


def _route(obj: ObjectStatus, status: RouteStatus, problems: list[Failure]) -> ObjectStatus:
    whole = [p for p in problems if p.rule is None]
    reason = _status_reason(problems, R_UNSUPPORTED_VALUE)
    message = "; ".join(
        f"rule {p.rule}: {p.message}" if p.rule is not None else p.message for p in problems
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
    by_subject: dict[Subject, list[Failure]],
) -> ObjectStatus:
    owner = ObjectRef(obj.kind, obj.namespace, obj.name)
    listeners: list[ListenerStatus] = []
    changed = False
    for ls in status.listeners:
        problems = by_subject.get(ListenerRef(owner, ls.name))
        if problems:
            changed = True
            gen = next((c.observed_generation for c in ls.conditions), 0)
            message = "; ".join(p.message for p in problems)[:1024]
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
