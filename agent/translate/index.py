"""Lookups over a Snapshot, built once per translation so every rule is O(1).

Owns only those lookups: it keeps the Snapshot's objects as they are, judges
nothing and builds no status.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.model.core import ConfigMap, EndpointSlice, Namespace, Secret, Service
from agent.model.gateway import Gateway, GatewayClass, ReferenceGrant
from agent.model.meta import Key
from agent.model.snapshot import Snapshot


@dataclass
class SnapshotIndex:
    snapshot: Snapshot
    classes: dict[str, GatewayClass] = field(default_factory=dict)
    gateways: dict[Key, Gateway] = field(default_factory=dict)
    services: dict[Key, Service] = field(default_factory=dict)
    slices: dict[Key, list[EndpointSlice]] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    secrets: dict[Key, Secret] = field(default_factory=dict)
    config_maps: dict[Key, ConfigMap] = field(default_factory=dict)
    grants: dict[str, list[ReferenceGrant]] = field(default_factory=dict)
    # (kind, key) -> why a Service, EndpointSlice or Secret could not be read:
    # a reference to one says so instead of "not found".
    invalid: dict[tuple[str, Key], str] = field(default_factory=dict)

    @classmethod
    def build(cls, snapshot: Snapshot) -> SnapshotIndex:
        index = cls(snapshot)
        index.classes = {c.meta.name: c for c in snapshot.gateway_classes}
        index.gateways = {g.meta.key: g for g in snapshot.gateways}
        index.services = {s.meta.key: s for s in snapshot.services}
        for es in snapshot.endpoint_slices:
            if es.service_name is not None:
                index.slices.setdefault(Key(es.meta.namespace, es.service_name), []).append(es)
        index.namespaces = {n.meta.name: n for n in snapshot.namespaces}
        index.secrets = {s.meta.key: s for s in snapshot.secrets}
        index.config_maps = {c.meta.key: c for c in snapshot.config_maps}
        for grant in snapshot.reference_grants:
            index.grants.setdefault(grant.meta.namespace, []).append(grant)
        index.invalid = {(inv.kind, inv.meta.key): inv.error for inv in snapshot.invalid}
        return index

    def namespace_labels(self, name: str) -> dict[str, str]:
        ns = self.namespaces.get(name)
        # Kubernetes stamps every namespace with its own name as a label.
        labels = ns.meta.label_dict() if ns is not None else {}
        labels.setdefault("kubernetes.io/metadata.name", name)
        return labels
