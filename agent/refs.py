"""Typed references to the objects that status, Events and log lines speak of.

A stage that cannot do something for an object says so with one of these, so
the daemon can turn it into an Event and a status condition without parsing
an identity back out of a string.  Plain data: nothing here reads the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

GATEWAY_API = "gateway.networking.k8s.io/v1"


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    kind: str
    namespace: str  # "" for a cluster-scoped object
    name: str
    api_version: str = GATEWAY_API

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True, order=True)
class ListenerRef:
    """One listener of a Gateway or of a ListenerSet (its status carries it)."""

    owner: ObjectRef
    listener: str

    def __str__(self) -> str:
        return f"{self.owner} listener {self.listener}"


# What a failure can be told on: a whole object, or one listener of one.
Subject = ObjectRef | ListenerRef
