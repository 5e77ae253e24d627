"""The verdict on one Gateway, and the conditions it reads as.

Owns GatewayState (its listeners, addresses, whether it is accepted and
programmed, the ListenerSets it admits) and how it becomes a GatewayStatus,
and the stand-in for a malformed Gateway.  Like listeners.py it only holds and
renders verdicts: evaluate.py builds a GatewayState, addresses.py,
certificates.py and conflicts.py fill it in.  It must never read the snapshot
index, and must never import listenersets.py (that one imports this; the
AttachedListeners Protocol keeps the cycle out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agent.model.gateway import FrontendTLS, Gateway
from agent.model.meta import Key
from agent.model.snapshot import InvalidObject
from agent.state import TLSCertificate
from agent.translate.listeners import ListenerState
from agent.translate.status import (
    ACCEPTED,
    INSECURE_FRONTEND_VALIDATION_MODE,
    PROGRAMMED,
    R_ACCEPTED,
    R_CONFIGURATION_CHANGED,
    R_INVALID,
    R_LISTENERS_NOT_VALID,
    R_PROGRAMMED,
    R_RESOLVED_REFS,
    RESOLVED_REFS,
    Condition,
    GatewayStatus,
)


class AttachedListeners(Protocol):
    """What a Gateway needs of a ListenerSet that names it (listenersets.py):
    whether it is admitted and accepted, and its listeners."""

    listeners: list[ListenerState]

    @property
    def attached(self) -> bool: ...

    @property
    def accepted(self) -> bool: ...


@dataclass
class GatewayState:
    gateway: Gateway
    listeners: list[ListenerState]
    vips: tuple[str, ...] = ()
    wanted: int = 0  # addresses still to be assigned from the class's pools
    # (reason, message) when the Gateway as a whole is not accepted / programmed.
    not_accepted: tuple[str, str] | None = None
    not_programmed: tuple[str, str] | None = None
    # Its references outside listeners (spec.tls.backend.clientCertificateRef).
    unresolved: tuple[str, str] | None = None
    client_certificate: TLSCertificate | None = None
    # ListenerSets whose parentRef names this Gateway and which it allows, in
    # the spec's order of precedence (see listenersets.py).
    listener_sets: list[AttachedListeners] = field(default_factory=list)
    # Set by settle() once listener verdicts are final: routes ask for every parentRef.
    _accepted: bool | None = None

    kind = "Gateway"

    @property
    def key(self) -> Key:
        return self.gateway.meta.key

    @property
    def gateway_key(self) -> Key:
        return self.key

    @property
    def accepted(self) -> bool:
        if self._accepted is not None:
            return self._accepted
        return self.not_accepted is None and any(ls.accepted for ls in self.listeners)

    @property
    def set_listeners(self) -> list[ListenerState]:
        """The listeners that attached ListenerSets add, after the Gateway's own."""
        return [ls for s in self.listener_sets if s.attached for ls in s.listeners]

    def settle(self) -> None:
        """Listener verdicts are final (after claim_ports); remember the result."""
        self._accepted = None
        self._accepted = self.accepted

    @property
    def programmed(self) -> bool:
        # The Gateway's own configuration (its addresses and the listeners that
        # are valid) is programmed even while some listener cannot be served,
        # e.g. for want of a certificate: that listener says so in its own
        # status.  The conformance suite needs such Gateways Programmed=True.
        return self.accepted and self.not_programmed is None

    def status(self) -> GatewayStatus:
        gen = self.gateway.meta.generation
        conds: list[Condition] = []
        invalid = [ls for ls in self.listeners if not ls.accepted or ls.unresolved is not None]
        if self.not_accepted is not None:
            conds.append(Condition(ACCEPTED, False, *self.not_accepted, gen))
        elif not any(ls.accepted for ls in self.listeners):
            conds.append(
                Condition(ACCEPTED, False, R_LISTENERS_NOT_VALID, "No listener is valid", gen)
            )
        elif invalid:
            names = ", ".join(ls.listener.name for ls in invalid)
            conds.append(
                Condition(ACCEPTED, True, R_LISTENERS_NOT_VALID, f"Invalid listeners: {names}", gen)
            )
        else:
            conds.append(Condition(ACCEPTED, True, R_ACCEPTED, "Gateway is accepted", gen))
        if self.unresolved is not None:
            conds.append(Condition(RESOLVED_REFS, False, *self.unresolved, gen))
        else:
            conds.append(
                Condition(RESOLVED_REFS, True, R_RESOLVED_REFS, "All references resolved", gen)
            )
        insecure = _insecure_ports(self.gateway.frontend_tls)
        if insecure:
            conds.append(
                Condition(
                    INSECURE_FRONTEND_VALIDATION_MODE,
                    True,
                    R_CONFIGURATION_CHANGED,
                    f"client certificate validation is AllowInsecureFallback on {insecure}: "
                    "connections without a valid client certificate are accepted",
                    gen,
                )
            )
        programmed = self.programmed
        if programmed:
            conds.append(Condition(PROGRAMMED, True, R_PROGRAMMED, "Gateway is programmed", gen))
        elif not self.accepted:
            conds.append(Condition(PROGRAMMED, False, R_INVALID, "Gateway is not accepted", gen))
        else:
            assert self.not_programmed is not None
            conds.append(Condition(PROGRAMMED, False, *self.not_programmed, gen))
        return GatewayStatus(
            addresses=self.vips if programmed else (),
            conditions=tuple(conds),
            listeners=tuple(ls.status(gen, programmed) for ls in self.listeners),
            attached_listener_sets=sum(1 for s in self.listener_sets if s.accepted),
        )


def _insecure_ports(frontend: FrontendTLS | None) -> str:
    if frontend is None:
        return ""
    where = []
    if frontend.default is not None and frontend.default.mode == "AllowInsecureFallback":
        where.append("the default")
    where += [
        f"port {port}"
        for port, v in frontend.per_port
        if v is not None and v.mode == "AllowInsecureFallback"
    ]
    return ", ".join(where)


def invalid_gateway_state(inv: InvalidObject) -> GatewayState:
    """Stands in for a malformed Gateway when routes name it as their parent."""
    gateway = Gateway(inv.meta, inv.gateway_class or "", (), (), None)
    return GatewayState(gateway, [], not_accepted=(R_INVALID, f"invalid Gateway: {inv.error}"))
