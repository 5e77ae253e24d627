"""The one contract of every stage that converges the world to what is wanted.

A reconciler (the eBPF and nftables dataplanes, the guard of unserved VIP
ports, the L7 VIPs, the proxy, the announcer, the status writers) is handed the
whole desired value each time and converges its piece of the world to it.  It
is idempotent (the same value twice writes nothing the second time), adopts
what a previous run left instead of resetting it, and never raises for one
object's trouble: what it could not do comes back as `Failure`s told on a
typed reference to the object concerned, so the lanes (agent/lanes.py) turn
them into Events and status in one place, and one failure never blocks the
others.  An exception means the stage as a whole failed; it is logged,
counted and retried with back-off.

Plain data, the Protocol, and the outcome both kernel dataplanes build from
their per-frontend errors (logged here, once for both): nothing here touches
the kernel or the cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from agent.refs import ObjectRef, Subject
from agent.state import DesiredState, FrontendKey

log = logging.getLogger("gatewaylb.agent")

# Event reasons, one for each kind of thing a node may fail to do.
FRONTEND_NOT_PROGRAMMED = "FrontendNotProgrammed"
NOT_SERVED_BY_PROXY = "NotServedByProxy"
ANNOUNCEMENT_PROBLEM = "AnnouncementProblem"


@dataclass(frozen=True, slots=True)
class Failure:
    """What one stage could not do for one object."""

    subject: Subject
    event_reason: str  # the Warning Event's reason
    message: str  # for a person: says what, where (listener, rule) and why
    rule: int | None = None  # the route rule concerned, when only one is
    # True: the failure is also the object's status (a rule dropped, a listener
    # not programmed), with `status_reason` as the condition's reason (None:
    # the usual one for the object).  False: a fact of this node only (Event).
    in_status: bool = False
    status_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call of `reconcile` did.

    changed: objects written or removed (0: nothing to do).
    failures: what could not be done, object by object.
    converged: False when the stage did not reach the desired value (some
        object failed, or the whole write was refused): the daemon retries
        with back-off.  Failures the stage cannot fix by retrying (a route the
        proxy cannot express) leave it converged.
    retry_after: converged, but worth trying again after so many seconds even
        if nothing changes (a port another process holds may be freed).
    """

    changed: int = 0
    failures: tuple[Failure, ...] = ()
    converged: bool = True
    retry_after: float | None = None


DesiredT_contra = TypeVar("DesiredT_contra", contravariant=True)


class Reconciler(Protocol[DesiredT_contra]):
    @property
    def name(self) -> str:
        """The `reconciler` label of the sync metrics."""
        ...

    def reconcile(self, desired: DesiredT_contra) -> Outcome: ...


def frontend_outcome(
    desired: DesiredState, changed: int, errors: Mapping[FrontendKey, str]
) -> Outcome:
    """A kernel dataplane's outcome: each refused frontend told on its Gateway
    (an error removing a frontend no Gateway wants any more is only logged,
    by the dataplane, and keeps the stage unconverged so it is retried)."""
    if not errors:  # every reconcile at 10k frontends: build no index for nothing
        return Outcome(changed)
    sources = {f.key: f.source for f in desired.l4}
    failures = []
    for key, message in sorted(errors.items()):
        vip, protocol, port = key
        log.error(
            "event=frontend_failed vip=%s protocol=%s port=%s error=%r",
            *(vip, protocol, port, message),
        )
        src = sources.get(key)
        if src is None:
            continue
        failures.append(
            Failure(
                ObjectRef("Gateway", src.namespace, src.gateway),
                FRONTEND_NOT_PROGRAMMED,
                f"listener {src.listener}: {protocol} {vip}:{port} not programmed: {message}",
            )
        )
    return Outcome(changed, tuple(failures), converged=not errors)
