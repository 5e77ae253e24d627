"""Object identity and metadata shared by every kind.

Owns Key, GroupKind, ObjectMeta and the oldest-first order that breaks ties
(`age_order`).  Pure: never reads the clock; age compares creationTimestamp
as the API server wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from agent.model.fields import DNS1123_LABEL, DNS1123_SUBDOMAIN, Fields

GATEWAY_GROUP = "gateway.networking.k8s.io"
CORE_GROUP = ""
DEFAULT_NAMESPACE = "default"


class Key(NamedTuple):
    """namespace/name of an object; namespace is "" for cluster-scoped kinds."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


class GroupKind(NamedTuple):
    group: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    namespace: str
    name: str
    generation: int = 1
    # RFC 3339 as the API server writes it; lexical order is time order.  None
    # for objects that were never stored (manifest files), which sort newest.
    creation_timestamp: str | None = None
    uid: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    # Where the object came from, for messages: "FILE:LINE" or the API's apiVersion.
    api_version: str = ""
    source: str = ""

    @property
    def key(self) -> Key:
        return Key(self.namespace, self.name)

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def parse_meta(
    doc: Fields, *, namespaced: bool, api_version: str = "", source: str = ""
) -> ObjectMeta:
    meta = doc.obj("metadata")
    name = meta.string("name", max_len=253, min_len=1, pattern=DNS1123_SUBDOMAIN)
    namespace = ""
    if namespaced:
        namespace = meta.string("namespace", DEFAULT_NAMESPACE, max_len=63, pattern=DNS1123_LABEL)
    created = meta.opt_string("creationTimestamp", max_len=64)
    return ObjectMeta(
        namespace=namespace,
        name=name,
        # int64, as the API server stores it (a longer one would not even print).
        generation=meta.integer("generation", 1, minimum=0, maximum=2**63 - 1),
        creation_timestamp=created,
        uid=meta.string("uid", "", max_len=128),
        labels=meta.string_map("labels"),
        api_version=api_version,
        source=source,
    )


def age_order(meta: ObjectMeta) -> tuple[int, str, str, str]:
    """Sort key: oldest first, ties by namespace/name, never-stored objects last.

    This is the Gateway API's tie-break order for conflicting routes.
    """
    if meta.creation_timestamp is None:
        return (1, "", meta.namespace, meta.name)
    return (0, meta.creation_timestamp, meta.namespace, meta.name)
