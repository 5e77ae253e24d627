"""Route attachment: which listeners a route's parentRefs select, and why not.

For every parentRef that names one of our Gateways, or a ListenerSet of one,
this decides Accepted (with NoMatchingParent, NotAllowedByListeners or
NoMatchingListenerHostname when it fails) and, when accepted, the listeners
the route is attached to together with the hostnames it serves on each.  It
counts attachedRoutes as the spec says: only routes that are Accepted on that
listener.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.model.meta import GATEWAY_GROUP, GroupKind, Key, ObjectMeta
from agent.model.routes import GRPC_ROUTE, HTTP_ROUTE, TLS_ROUTE, ParentReference
from agent.translate.gateways import GatewayState
from agent.translate.hostnames import effective_hostnames
from agent.translate.index import SnapshotIndex
from agent.translate.listeners import ListenerState
from agent.translate.listenersets import ListenerSetState
from agent.translate.status import (
    R_NO_MATCHING_LISTENER_HOSTNAME,
    R_NO_MATCHING_PARENT,
    R_NOT_ALLOWED_BY_LISTENERS,
    ParentRefStatus,
)

HOSTNAME_KINDS = (HTTP_ROUTE, GRPC_ROUTE, TLS_ROUTE)


@dataclass(frozen=True, slots=True)
class Attachment:
    listener: ListenerState
    hostnames: tuple[str, ...]  # effective hostnames ("*" = any); () for TCP/UDP


# What a parentRef can name: a Gateway (its own listeners) or a ListenerSet (its listeners).
Parent = GatewayState | ListenerSetState


@dataclass(frozen=True, slots=True)
class Parents:
    gateways: Mapping[Key, GatewayState]
    listener_sets: Mapping[Key, ListenerSetState]

    def find(self, ref: ParentReference, route_namespace: str) -> Parent | None:
        """The parent of ours `ref` names, None when it names another's."""
        if ref.group != GATEWAY_GROUP:
            return None
        key = Key(ref.namespace or route_namespace, ref.name)
        if ref.kind == "Gateway":
            return self.gateways.get(key)
        if ref.kind == "ListenerSet":
            return self.listener_sets.get(key)
        return None


@dataclass(frozen=True, slots=True)
class ParentVerdict:
    parent: ParentRefStatus
    gateway: Key  # the Gateway whose addresses the attachments are on
    attachments: tuple[Attachment, ...]
    # (reason, message) when not accepted.
    rejection: tuple[str, str] | None


def parent_ref_status(ref: ParentReference, gateway_namespace: str) -> ParentRefStatus:
    # group, kind and namespace are always written out: the conformance suite
    # compares them as explicit values.
    return ParentRefStatus(
        group=ref.group,
        kind=ref.kind,
        namespace=gateway_namespace,
        name=ref.name,
        section_name=ref.section_name,
        port=ref.port,
    )


def _namespace_allowed(ls: ListenerState, route_namespace: str, index: SnapshotIndex) -> bool:
    allowed = ls.listener.allowed_routes
    if allowed.namespaces_from == "All":
        return True
    if allowed.namespaces_from == "Same":
        return route_namespace == ls.owner_namespace
    if allowed.selector is None:
        return False
    return allowed.selector.matches(index.namespace_labels(route_namespace))


def evaluate_parent(
    *,
    kind: str,
    meta: ObjectMeta,
    hostnames: tuple[str, ...],
    ref: ParentReference,
    target: Parent,
    index: SnapshotIndex,
) -> ParentVerdict:
    parent = parent_ref_status(ref, target.key.namespace)
    name = f"{target.kind} {target.key}"

    def reject(reason: str, message: str) -> ParentVerdict:
        return ParentVerdict(parent, target.gateway_key, (), (reason, message))

    if not target.accepted:
        return reject(R_NO_MATCHING_PARENT, f"{name} is not accepted")
    candidates = [
        ls
        for ls in target.listeners
        if (ref.section_name is None or ls.listener.name == ref.section_name)
        and (ref.port is None or ls.listener.port == ref.port)
    ]
    if not candidates:
        wanted = []
        if ref.section_name is not None:
            wanted.append(f"named {ref.section_name!r}")
        if ref.port is not None:
            wanted.append(f"on port {ref.port}")
        return reject(
            R_NO_MATCHING_PARENT,
            f"{name} has no listener {' and '.join(wanted)}",
        )
    group_kind = GroupKind(GATEWAY_GROUP, kind)
    by_kind = [ls for ls in candidates if ls.accepted and group_kind in ls.supported_kinds]
    if not by_kind:
        return reject(
            R_NOT_ALLOWED_BY_LISTENERS,
            f"no listener of {name} that this parentRef selects allows {kind}s",
        )
    by_namespace = [ls for ls in by_kind if _namespace_allowed(ls, meta.namespace, index)]
    if not by_namespace:
        return reject(
            R_NOT_ALLOWED_BY_LISTENERS,
            f"no listener of {name} allows routes from namespace {meta.namespace}",
        )
    attachments: list[Attachment] = []
    for ls in by_namespace:
        if kind in HOSTNAME_KINDS:
            names = effective_hostnames(ls.listener.hostname, hostnames)
            if not names:
                continue
            attachments.append(Attachment(ls, names))
        else:
            attachments.append(Attachment(ls, ()))
    if not attachments:
        return reject(
            R_NO_MATCHING_LISTENER_HOSTNAME,
            f"no hostname of the route intersects a listener hostname of {name}",
        )
    return ParentVerdict(parent, target.gateway_key, tuple(attachments), None)
