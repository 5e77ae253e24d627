"""The verdict on one listener, and the conditions it reads as.

Owns ListenerState (accepted? conflicted? references resolved? which route
kinds? which certificates?), the route kinds each listener protocol carries,
and how a listener's verdict becomes its ListenerStatus.  It only holds and
renders verdicts: the judging is in evaluate.py, certificates.py and
conflicts.py, so this module must never read the snapshot index, and it
imports nothing else of translate/ but status.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.model.gateway import Listener
from agent.model.meta import GATEWAY_GROUP, GroupKind, Key
from agent.model.routes import GRPC_ROUTE, HTTP_ROUTE, TCP_ROUTE, TLS_ROUTE, UDP_ROUTE
from agent.state import ClientValidation, TLSCertificate
from agent.translate.status import (
    ACCEPTED,
    CONFLICTED,
    PROGRAMMED,
    R_ACCEPTED,
    R_INVALID,
    R_NO_CONFLICTS,
    R_PROGRAMMED,
    R_RESOLVED_REFS,
    RESOLVED_REFS,
    Condition,
    ListenerStatus,
)

# Route kinds each listener protocol can carry (and carries by default).
_HTTP_KINDS = (GroupKind(GATEWAY_GROUP, HTTP_ROUTE), GroupKind(GATEWAY_GROUP, GRPC_ROUTE))
ROUTE_KINDS_BY_PROTOCOL: dict[tuple[str, str | None], tuple[GroupKind, ...]] = {
    ("HTTP", None): _HTTP_KINDS,
    ("HTTPS", "Terminate"): _HTTP_KINDS,
    ("TLS", "Passthrough"): (GroupKind(GATEWAY_GROUP, TLS_ROUTE),),
    ("TLS", "Terminate"): (
        GroupKind(GATEWAY_GROUP, TLS_ROUTE),
        GroupKind(GATEWAY_GROUP, TCP_ROUTE),
    ),
    ("TCP", None): (GroupKind(GATEWAY_GROUP, TCP_ROUTE),),
    ("UDP", None): (GroupKind(GATEWAY_GROUP, UDP_ROUTE),),
}
L4_PROTOCOLS = ("TCP", "UDP")
L7_PROTOCOLS = ("HTTP", "HTTPS", "TLS")


def transport_of(protocol: str) -> str:
    return "udp" if protocol == "UDP" else "tcp"


@dataclass
class ListenerState:
    listener: Listener
    gateway: Key
    # The ListenerSet that adds this listener to the Gateway; None for the
    # Gateway's own.  Its namespace is the one allowedRoutes "Same" and
    # certificate references are relative to.
    listener_set: Key | None = None
    supported_kinds: tuple[GroupKind, ...] = ()
    # (reason, message) when the listener is not accepted / conflicted / unresolved.
    not_accepted: tuple[str, str] | None = None
    conflict: tuple[str, str] | None = None
    unresolved: tuple[str, str] | None = None
    certificates: list[TLSCertificate] = field(default_factory=list)
    client_validation: ClientValidation | None = None
    attached_routes: int = 0

    @property
    def tls_mode(self) -> str | None:
        return self.listener.tls.mode if self.listener.tls is not None else None

    @property
    def owner_kind(self) -> str:
        return "Gateway" if self.listener_set is None else "ListenerSet"

    @property
    def owner_namespace(self) -> str:
        return (self.listener_set or self.gateway).namespace

    @property
    def owner(self) -> str:
        return f"{self.owner_kind} {self.listener_set or self.gateway}"

    @property
    def label(self) -> str:
        """The listener as its Gateway's status and messages name it."""
        prefix = f"ListenerSet {self.listener_set} " if self.listener_set is not None else ""
        return f"{prefix}listener {self.listener.name}"

    @property
    def metrics_name(self) -> str:
        """The `listener` label: "namespace/name/listener" for a ListenerSet's."""
        if self.listener_set is None:
            return self.listener.name
        return f"{self.listener_set}/{self.listener.name}"

    @property
    def valid(self) -> bool:
        """Accepted with every reference resolved."""
        return self.accepted and self.unresolved is None

    @property
    def accepted(self) -> bool:
        return self.not_accepted is None and self.conflict is None

    @property
    def needs_certificates(self) -> bool:
        return self.listener.protocol in ("HTTPS", "TLS") and self.tls_mode == "Terminate"

    @property
    def programmable(self) -> bool:
        """Would the dataplane serve this listener (given its Gateway is programmed)?"""
        if not self.accepted:
            return False
        return not (self.needs_certificates and not self.certificates)

    def status(self, generation: int, gateway_programmed: bool) -> ListenerStatus:
        conds: list[Condition] = []
        if self.conflict is not None:
            reason, message = self.conflict
            conds.append(Condition(ACCEPTED, False, reason, message, generation))
        elif self.not_accepted is not None:
            reason, message = self.not_accepted
            conds.append(Condition(ACCEPTED, False, reason, message, generation))
        else:
            conds.append(Condition(ACCEPTED, True, R_ACCEPTED, "Listener is accepted", generation))
        if self.unresolved is not None:
            reason, message = self.unresolved
            conds.append(Condition(RESOLVED_REFS, False, reason, message, generation))
        else:
            conds.append(
                Condition(
                    RESOLVED_REFS, True, R_RESOLVED_REFS, "All references resolved", generation
                )
            )
        if self.conflict is not None:
            reason, message = self.conflict
            conds.append(Condition(CONFLICTED, True, reason, message, generation))
        else:
            conds.append(Condition(CONFLICTED, False, R_NO_CONFLICTS, "No conflicts", generation))
        if self.programmable and gateway_programmed:
            conds.append(
                Condition(PROGRAMMED, True, R_PROGRAMMED, "Listener is programmed", generation)
            )
        elif self.conflict is not None:
            conds.append(
                Condition(PROGRAMMED, False, self.conflict[0], self.conflict[1], generation)
            )
        elif self.programmable:
            conds.append(
                Condition(PROGRAMMED, False, R_INVALID, "the Gateway is not programmed", generation)
            )
        else:
            why = (self.not_accepted or self.unresolved or ("", "listener is invalid"))[1]
            conds.append(Condition(PROGRAMMED, False, R_INVALID, why, generation))
        kinds = () if not self.accepted else self.supported_kinds
        return ListenerStatus(
            name=self.listener.name,
            supported_kinds=tuple((k.group, k.kind) for k in kinds),
            attached_routes=self.attached_routes,
            conditions=tuple(conds),
        )
