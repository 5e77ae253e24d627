"""ReferenceGrant: may an object in one namespace refer to one in another?

Owns that one question (`reference_permitted`), answered from the Snapshot
index alone.  It says only yes or no, never whether the target exists: the
caller picks the reason it reports (RefNotPermitted).
"""

from __future__ import annotations

from agent.model.meta import CORE_GROUP, GATEWAY_GROUP
from agent.translate.index import SnapshotIndex


def reference_permitted(
    index: SnapshotIndex,
    *,
    from_kind: str,
    from_namespace: str,
    to_kind: str,
    to_namespace: str,
    to_name: str,
    from_group: str = GATEWAY_GROUP,
    to_group: str = CORE_GROUP,
) -> bool:
    """Same-namespace references are always allowed; others need a ReferenceGrant
    in the target namespace that names both sides.  Every reference gatewaylb
    judges goes from a Gateway API object to a core one (Secret, ConfigMap,
    Service): the groups default to those."""
    if from_namespace == to_namespace:
        return True
    for grant in index.grants.get(to_namespace, ()):
        if not any(
            f.group == from_group and f.kind == from_kind and f.namespace == from_namespace
            for f in grant.from_
        ):
            continue
        if any(
            t.group == to_group and t.kind == to_kind and (t.name is None or t.name == to_name)
            for t in grant.to
        ):
            return True
    return False
