"""The StatusReport: Gateway API status, as the spec defines it, as plain data.

Conditions carry no lastTransitionTime: translate has no clock.  The status
writers stamp it, keeping the previous time when a condition did not change.

Owns the condition types, the reasons and the dict form that status is
written in.  It decides no condition itself (the rest of translate does) and never
writes status anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Condition types
ACCEPTED = "Accepted"
PROGRAMMED = "Programmed"
RESOLVED_REFS = "ResolvedRefs"
CONFLICTED = "Conflicted"
SUPPORTED_VERSION = "SupportedVersion"
PARTIALLY_INVALID = "PartiallyInvalid"

# Reasons (apis/v1 gateway_types.go, gatewayclass_types.go, shared_types.go)
R_ACCEPTED = "Accepted"
R_PROGRAMMED = "Programmed"
R_RESOLVED_REFS = "ResolvedRefs"
R_NO_CONFLICTS = "NoConflicts"
R_SUPPORTED_VERSION = "SupportedVersion"
R_INVALID = "Invalid"
R_INVALID_PARAMETERS = "InvalidParameters"
R_PENDING = "Pending"
R_UNSUPPORTED_ADDRESS = "UnsupportedAddress"
R_ADDRESS_NOT_ASSIGNED = "AddressNotAssigned"
R_ADDRESS_NOT_USABLE = "AddressNotUsable"
R_LISTENERS_NOT_VALID = "ListenersNotValid"
R_PORT_UNAVAILABLE = "PortUnavailable"
R_UNSUPPORTED_PROTOCOL = "UnsupportedProtocol"
R_PROTOCOL_CONFLICT = "ProtocolConflict"
R_HOSTNAME_CONFLICT = "HostnameConflict"
R_INVALID_ROUTE_KINDS = "InvalidRouteKinds"
R_INVALID_CERTIFICATE_REF = "InvalidCertificateRef"
R_INVALID_CLIENT_CERTIFICATE_REF = "InvalidClientCertificateRef"
R_REF_NOT_PERMITTED = "RefNotPermitted"
R_NOT_ALLOWED_BY_LISTENERS = "NotAllowedByListeners"
R_NO_MATCHING_LISTENER_HOSTNAME = "NoMatchingListenerHostname"
R_NO_MATCHING_PARENT = "NoMatchingParent"
R_UNSUPPORTED_VALUE = "UnsupportedValue"
R_BACKEND_NOT_FOUND = "BackendNotFound"
R_INVALID_KIND = "InvalidKind"
# Policies (apis/v1 policy_types.go, backendtlspolicy_types.go)
R_CONFLICTED = "Conflicted"
R_INVALID_CA_CERTIFICATE_REF = "InvalidCACertificateRef"
R_NO_VALID_CA_CERTIFICATE = "NoValidCACertificate"
R_INVALID_CA_CERTIFICATE_KIND = "InvalidCACertificateKind"
INSECURE_FRONTEND_VALIDATION_MODE = "InsecureFrontendValidationMode"
R_CONFIGURATION_CHANGED = "ConfigurationChanged"
# ListenerSet (apis/v1 listenerset_types.go)
R_NOT_ALLOWED = "NotAllowed"
R_PARENT_NOT_ACCEPTED = "ParentNotAccepted"


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str
    observed_generation: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": "True" if self.status else "False",
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
        }


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    name: str
    supported_kinds: tuple[tuple[str, str], ...]  # (group, kind)
    attached_routes: int
    conditions: tuple[Condition, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "supportedKinds": [{"group": g, "kind": k} for g, k in self.supported_kinds],
            "attachedRoutes": self.attached_routes,
            "conditions": [c.to_dict() for c in self.conditions],
        }


@dataclass(frozen=True, slots=True)
class GatewayClassStatus:
    conditions: tuple[Condition, ...]
    supported_features: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"conditions": [c.to_dict() for c in self.conditions]}
        if self.supported_features:
            out["supportedFeatures"] = [{"name": f} for f in self.supported_features]
        return out


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    addresses: tuple[str, ...]
    conditions: tuple[Condition, ...]
    listeners: tuple[ListenerStatus, ...]
    attached_listener_sets: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "addresses": [{"type": "IPAddress", "value": a} for a in self.addresses],
            "conditions": [c.to_dict() for c in self.conditions],
            "listeners": [listener.to_dict() for listener in self.listeners],
            # Always written, 0 included: a merge patch that left it out would
            # keep the count of ListenerSets that have since gone.
            "attachedListenerSets": self.attached_listener_sets,
        }


@dataclass(frozen=True, slots=True)
class ListenerSetStatus:
    conditions: tuple[Condition, ...]
    listeners: tuple[ListenerStatus, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "conditions": [c.to_dict() for c in self.conditions],
            "listeners": [listener.to_dict() for listener in self.listeners],
        }


@dataclass(frozen=True, slots=True)
class ParentRefStatus:
    """The parentRef as the route wrote it, with group and kind made explicit."""

    group: str
    kind: str
    namespace: str | None
    name: str
    section_name: str | None
    port: int | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"group": self.group, "kind": self.kind}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        out["name"] = self.name
        if self.section_name is not None:
            out["sectionName"] = self.section_name
        if self.port is not None:
            out["port"] = self.port
        return out


@dataclass(frozen=True, slots=True)
class RouteParentStatus:
    parent_ref: ParentRefStatus
    controller_name: str
    conditions: tuple[Condition, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "parentRef": self.parent_ref.to_dict(),
            "controllerName": self.controller_name,
            "conditions": [c.to_dict() for c in self.conditions],
        }


@dataclass(frozen=True, slots=True)
class RouteStatus:
    parents: tuple[RouteParentStatus, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"parents": [p.to_dict() for p in self.parents]}


@dataclass(frozen=True, slots=True)
class PolicyAncestorStatus:
    """A policy's status as one controller sees it under one ancestor (a Gateway)."""

    group: str
    kind: str
    namespace: str
    name: str
    controller_name: str
    conditions: tuple[Condition, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ancestorRef": {
                "group": self.group,
                "kind": self.kind,
                "namespace": self.namespace,
                "name": self.name,
            },
            "controllerName": self.controller_name,
            "conditions": [c.to_dict() for c in self.conditions],
        }


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    ancestors: tuple[PolicyAncestorStatus, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ancestors": [a.to_dict() for a in self.ancestors]}


Status = GatewayClassStatus | GatewayStatus | ListenerSetStatus | RouteStatus | PolicyStatus


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    api_version: str
    kind: str
    namespace: str
    name: str
    generation: int
    status: Status

    @property
    def sort_key(self) -> tuple[int, str, str, str]:
        return (_KIND_ORDER.get(self.kind, 99), self.kind, self.namespace, self.name)

    def to_dict(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name, "generation": self.generation}
        if self.namespace:
            metadata = {"namespace": self.namespace, **metadata}
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": metadata,
            "status": self.status.to_dict(),
        }


_KIND_ORDER = {"GatewayClass": 0, "Gateway": 1, "ListenerSet": 2}


@dataclass(frozen=True, slots=True)
class StatusReport:
    objects: tuple[ObjectStatus, ...]

    def find(self, kind: str, namespace: str, name: str) -> ObjectStatus | None:
        for obj in self.objects:
            if obj.kind == kind and obj.namespace == namespace and obj.name == name:
                return obj
        return None

    def to_list(self) -> list[dict[str, Any]]:
        return [o.to_dict() for o in self.objects]
