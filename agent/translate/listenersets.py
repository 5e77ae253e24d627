"""ListenerSets: listeners that another object adds to a Gateway.

A ListenerSet attaches when its parentRef names one of our Gateways and that
Gateway's spec.allowedListeners admits the ListenerSet's namespace (the default
admits none).  Its listeners are then judged like the Gateway's own (protocol,
route kinds, certificates, which it may take from its own namespace or through
a ReferenceGrant *from ListenerSet*) and merged behind them in the spec's order
of precedence: the Gateway's listeners first, then ListenerSets oldest first,
ties by namespace/name.  A listener that conflicts with one earlier in that
order loses; the earlier keeps its port, unlike two conflicting listeners of
one Gateway, which both lose.

Routes attach to these listeners only through a parentRef to the ListenerSet
(attach.py); they share the Gateway's addresses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.model.gateway import ListenerSet
from agent.model.meta import GATEWAY_GROUP, Key, age_order
from agent.translate.conflicts import listener_conflict
from agent.translate.evaluate import judge_listener
from agent.translate.gateways import GatewayState
from agent.translate.index import SnapshotIndex
from agent.translate.listeners import ListenerState
from agent.translate.status import (
    ACCEPTED,
    PROGRAMMED,
    R_ACCEPTED,
    R_INVALID,
    R_LISTENERS_NOT_VALID,
    R_NOT_ALLOWED,
    R_PARENT_NOT_ACCEPTED,
    R_PROGRAMMED,
    Condition,
    ListenerSetStatus,
)


@dataclass
class ListenerSetState:
    listener_set: ListenerSet
    gateway: GatewayState
    listeners: list[ListenerState] = field(default_factory=list)
    # (reason, message) when the Gateway does not take the ListenerSet at all.
    rejection: tuple[str, str] | None = None

    kind = "ListenerSet"

    @property
    def key(self) -> Key:
        return self.listener_set.meta.key

    @property
    def gateway_key(self) -> Key:
        return self.gateway.key

    @property
    def attached(self) -> bool:
        """Admitted by its Gateway, so its listeners take part in conflicts."""
        return self.rejection is None

    @property
    def accepted(self) -> bool:
        return self.attached and any(ls.valid for ls in self.listeners)

    def status(self) -> ListenerSetStatus:
        gen = self.listener_set.meta.generation
        if self.rejection is not None:
            return ListenerSetStatus(
                (
                    Condition(ACCEPTED, False, *self.rejection, gen),
                    Condition(PROGRAMMED, False, *self.rejection, gen),
                ),
                (),
            )
        invalid = [ls.listener.name for ls in self.listeners if not ls.valid]
        conds: list[Condition] = []
        if not self.accepted:
            why = "No listener is valid"
            conds.append(Condition(ACCEPTED, False, R_LISTENERS_NOT_VALID, why, gen))
            conds.append(Condition(PROGRAMMED, False, R_LISTENERS_NOT_VALID, why, gen))
        else:
            if invalid:
                why = f"Invalid listeners: {', '.join(invalid)}"
                conds.append(Condition(ACCEPTED, True, R_LISTENERS_NOT_VALID, why, gen))
            else:
                conds.append(Condition(ACCEPTED, True, R_ACCEPTED, "ListenerSet is accepted", gen))
            if self.gateway.programmed:
                conds.append(
                    Condition(PROGRAMMED, True, R_PROGRAMMED, "ListenerSet is programmed", gen)
                )
            else:
                why = f"Gateway {self.gateway.key} is not programmed"
                conds.append(Condition(PROGRAMMED, False, R_INVALID, why, gen))
        programmed = self.gateway.programmed
        return ListenerSetStatus(
            tuple(conds), tuple(ls.status(gen, programmed) for ls in self.listeners)
        )


def _admitted(state: GatewayState, listener_set: ListenerSet, index: SnapshotIndex) -> bool:
    allowed = state.gateway.allowed_listeners
    namespace = listener_set.meta.namespace
    if allowed.namespaces_from == "All":
        return True
    if allowed.namespaces_from == "Same":
        return namespace == state.key.namespace
    if allowed.namespaces_from == "Selector" and allowed.selector is not None:
        return allowed.selector.matches(index.namespace_labels(namespace))
    return False


def attach_listener_sets(
    listener_sets: Iterable[ListenerSet],
    gateways: dict[Key, GatewayState],
    index: SnapshotIndex,
) -> dict[Key, ListenerSetState]:
    """Judge every ListenerSet whose parent is one of `gateways`; record the
    attached ones on their Gateway.  Call before ports are claimed."""
    out: dict[Key, ListenerSetState] = {}
    for listener_set in sorted(listener_sets, key=lambda s: age_order(s.meta)):
        ref = listener_set.parent_ref
        if (ref.group, ref.kind) != (GATEWAY_GROUP, "Gateway"):
            continue
        gateway = gateways.get(listener_set.parent_key)
        if gateway is None:
            continue  # not a Gateway of ours
        state = ListenerSetState(
            listener_set,
            gateway,
            [
                ListenerState(lst, gateway=gateway.key, listener_set=listener_set.meta.key)
                for lst in listener_set.listeners
            ],
        )
        out[state.key] = state
        if not _admitted(gateway, listener_set, index):
            state.rejection = (
                R_NOT_ALLOWED,
                f"Gateway {gateway.key} does not allow ListenerSets from namespace "
                f"{listener_set.meta.namespace} (spec.allowedListeners.namespaces.from: "
                f"{gateway.gateway.allowed_listeners.namespaces_from})",
            )
            continue
        if not gateway.accepted:
            state.rejection = (R_PARENT_NOT_ACCEPTED, f"Gateway {gateway.key} is not accepted")
            continue
        taken = [ls for ls in (*gateway.listeners, *gateway.set_listeners) if ls.accepted]
        for ls in state.listeners:
            judge_listener(ls, index, gateway.gateway.frontend_tls)
            if ls.not_accepted is not None:
                continue
            ls.conflict = listener_conflict(ls, taken)
            if ls.conflict is None:
                taken.append(ls)
        gateway.listener_sets.append(state)
    return out
