"""Which fields and kinds the API server would accept: strict-validation warnings.

In standalone mode no API server stands between a manifest and the agent, so a
typo (`sectionNmae:`, `kind: TCPRout`) would be silently ignored where
`kubectl --validate=strict` names it.  This module owns the knowledge needed to
name it: a tree of the property names every served (kind, apiVersion) allows,
generated from the Gateway API CRDs into known_fields.json by
scripts/gen-known-fields.py, plus hand-written trees for the core kinds the
agent reads, which have no CRD.

A tree is what an OpenAPI v3 schema says about field names, nothing else:

- a dict maps each allowed property name to its subtree;
- `ANY` ("*") allows any key below it (labels, `x-kubernetes-preserve-unknown-fields`);
- `LEAF` (None) is a scalar;
- arrays are transparent: every element is checked against the same subtree.

Everything here only warns: it never rejects an object and never raises on a bad
shape (the parser in agent/model owns shapes and values).  It knows nothing of
what the agent does with the objects.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, TypeAlias

Tree: TypeAlias = "dict[str, Tree] | str | None"

ANY: Final = "*"
LEAF: Final = None
DATA_FILE: Final = "known_fields.json"

# A typo-ridden object is reported by its first mistakes, not buried under them.
MAX_UNKNOWN_FIELDS: Final = 20
# The walk follows the tree, so its depth is the tree's, whatever the input; but
# YAML aliases can make a small file a huge graph (one list repeated in every
# element of another), so the array elements visited per object are bounded.
# No schema here allows more than 1000 items in one array (EndpointSlice).
MAX_ELEMENTS: Final = 20_000

# Real names are rarely further than one or two keystrokes from a typo of them.
_FIELD_HINT_CUTOFF: Final = 0.7
# Outside our API groups a hint must be close: ServiceAccount and Endpoints are
# real kinds that merely look like Service and EndpointSlice.
_FOREIGN_KIND_CUTOFF: Final = 0.85
_KIND_HINT_CUTOFF: Final = 0.7
# networking.x-k8s.io (the Gateway API's ancestor) is one, networking.istio.io is not.
_GROUP_HINT_CUTOFF: Final = 0.75


def _obj(*leaves: str, **subtrees: Tree) -> dict[str, Tree]:
    tree: dict[str, Tree] = dict.fromkeys(leaves, LEAF)
    tree.update(subtrees)
    return tree


# metav1.ObjectMeta: the CRDs only say `metadata: {type: object}`.
OBJECT_META: Final[dict[str, Tree]] = _obj(
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    labels=ANY,
    annotations=ANY,
    ownerReferences=_obj("apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion"),
    managedFields=ANY,
)


def _root(**fields: Tree) -> dict[str, Tree]:
    return _obj("apiVersion", "kind", metadata=OBJECT_META, **fields)


# The core kinds the agent reads (core/v1 and discovery.k8s.io/v1 of Kubernetes).
CORE_TREES: Final[dict[tuple[str, str], dict[str, Tree]]] = {
    ("Service", "v1"): _root(
        spec=_obj(
            "clusterIP",
            "clusterIPs",
            "type",
            "externalIPs",
            "sessionAffinity",
            "loadBalancerIP",
            "loadBalancerSourceRanges",
            "externalName",
            "externalTrafficPolicy",
            "healthCheckNodePort",
            "publishNotReadyAddresses",
            "ipFamilies",
            "ipFamilyPolicy",
            "allocateLoadBalancerNodePorts",
            "loadBalancerClass",
            "internalTrafficPolicy",
            "trafficDistribution",
            ports=_obj("name", "protocol", "appProtocol", "port", "targetPort", "nodePort"),
            selector=ANY,
            sessionAffinityConfig=ANY,
        ),
        status=ANY,
    ),
    ("EndpointSlice", "discovery.k8s.io/v1"): _root(
        addressType=LEAF,
        endpoints=_obj(
            "addresses",
            "hostname",
            "nodeName",
            "zone",
            conditions=_obj("ready", "serving", "terminating"),
            targetRef=ANY,
            hints=ANY,
            deprecatedTopology=ANY,
        ),
        ports=_obj("name", "protocol", "port", "appProtocol"),
    ),
    ("Namespace", "v1"): _root(spec=_obj("finalizers"), status=ANY),
    ("Secret", "v1"): _root(data=ANY, stringData=ANY, type=LEAF, immutable=LEAF),
    ("ConfigMap", "v1"): _root(data=ANY, binaryData=ANY, immutable=LEAF),
}


@dataclass(frozen=True, slots=True)
class UnknownField:
    """A field the schema of its object does not allow."""

    path: str  # spec.parentRefs[0].sectionNmae
    name: str  # sectionNmae
    suggestion: str | None = None  # sectionName

    def __str__(self) -> str:
        return f'{self.path}: unknown field "{self.name}"{_did_you_mean(self.suggestion)}'


class _Node:
    """One object of a tree, compiled for the walk."""

    __slots__ = ("children", "names")

    def __init__(self, tree: dict[str, Tree], children: dict[str, _Node]) -> None:
        self.names = tree.keys()  # the allowed property names
        self.children = children  # those whose values are objects (or arrays of them)


def _compile(tree: dict[str, Tree], memo: dict[int, _Node]) -> _Node:
    node = memo.get(id(tree))
    if node is None:
        children = {k: _compile(v, memo) for k, v in tree.items() if isinstance(v, dict)}
        node = memo[id(tree)] = _Node(tree, children)
    return node


@dataclass(frozen=True, slots=True)
class _Known:
    nodes: dict[tuple[str, str], _Node]  # (kind, apiVersion) -> its tree
    kind_groups: dict[str, str]  # every kind of the CRDs -> its API group
    crd_groups: frozenset[str]  # the API groups the CRDs define


@functools.cache
def _known() -> _Known:
    trees: dict[tuple[str, str], dict[str, Tree]] = {}
    kind_groups: dict[str, str] = {}
    try:
        text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
        kinds = json.loads(text)["kinds"]
    except (OSError, ValueError, KeyError, TypeError):
        # Only warnings depend on it; the core trees still work.
        kinds = {}
    for kind, entry in kinds.items():
        for api_version, index in entry["apiVersions"].items():
            trees[(kind, api_version)] = entry["trees"][index]
            kind_groups[kind] = api_version.rpartition("/")[0]
    trees.update(CORE_TREES)
    memo: dict[int, _Node] = {}
    nodes = {key: _compile(tree, memo) for key, tree in trees.items()}
    return _Known(nodes, kind_groups, frozenset(kind_groups.values()))


def _close(name: str, candidates: Iterable[str], cutoff: float) -> str | None:
    """The candidate closest to `name`, ignoring case; None when none is close."""
    by_lower = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[match[0]] if match else None


def unknown_fields(
    doc: Mapping[Any, object],
    kind: str,
    api_version: str,
    *,
    limit: int = MAX_UNKNOWN_FIELDS,
) -> list[UnknownField]:
    """The fields of `doc` that its schema does not allow, in document order.

    At most `limit`; [] for a kind or version without a tree.  Never raises:
    values of the wrong shape are skipped, they are the parser's to report.
    """
    node = _known().nodes.get((kind, api_version))
    if node is None or (type(doc) is not dict and not isinstance(doc, Mapping)):
        return []
    # This runs on every document of a manifest directory: the common case, an
    # object without unknown fields, takes one walk that allocates nothing.
    if _clean(doc, node, MAX_ELEMENTS) >= 0:
        return []
    walk = _Walk(limit)
    walk.visit(doc, node)
    return walk.found


def _clean(value: Mapping[Any, object], node: _Node, budget: int) -> int:
    """The budget left after checking `value`; negative at the first unknown
    field, or when the budget runs out (then `_Walk` finds what there is)."""
    if not value.keys() <= node.names:
        return -1
    children = node.children
    if not children:
        return budget
    for key, child in value.items():
        sub = children.get(key)
        if sub is None:
            continue
        if type(child) is dict:
            if sub.children:
                budget = _clean(child, sub, budget)
                if budget < 0:
                    return budget
            elif not child.keys() <= sub.names:
                return -1
        elif type(child) is list:
            budget -= len(child)
            if budget < 0:
                return budget
            if sub.children:
                for item in child:
                    if type(item) is dict:
                        budget = _clean(item, sub, budget)
                        if budget < 0:
                            return budget
            else:
                names = sub.names
                for item in child:
                    if type(item) is dict and not item.keys() <= names:
                        return -1
    return budget


class _Walk:
    """One object's walk that names its unknown fields, in document order."""

    __slots__ = ("budget", "found", "limit", "trail")

    def __init__(self, limit: int) -> None:
        self.found: list[UnknownField] = []
        self.trail: list[str | int] = []  # the path of the value being visited
        self.limit = limit
        self.budget = MAX_ELEMENTS

    def visit(self, value: Mapping[Any, object], node: _Node) -> bool:
        """False once the walk must stop (limit or budget reached)."""
        if not value.keys() <= node.names and not self._report(value, node):
            return False
        children = node.children
        if not children:
            return True
        trail = self.trail
        for key, child in value.items():
            sub = children.get(key)
            if sub is None:
                continue  # a scalar, a map of anything, or unknown
            if type(child) is dict:
                if not sub.children and child.keys() <= sub.names:
                    continue  # the common leaf object, checked without a call
                trail.append(key)
                if not self.visit(child, sub):
                    return False
                trail.pop()
            elif type(child) is list:
                # Arrays are transparent: each element is checked against the
                # same subtree.  Anything but an object in one is a shape error.
                self.budget -= len(child)
                if self.budget < 0:
                    return False
                trail.append(key)
                for i, item in enumerate(child):
                    if type(item) is not dict:
                        continue
                    if not sub.children and item.keys() <= sub.names:
                        continue
                    trail.append(i)
                    if not self.visit(item, sub):
                        return False
                    trail.pop()
                trail.pop()
        return True

    def _report(self, value: Mapping[Any, object], node: _Node) -> bool:
        for key in value:
            if key in node.names:
                continue
            name = str(key)
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.trail)
            path = f"{path}.{name}".removeprefix(".")
            hint = _close(name, node.names, _FIELD_HINT_CUTOFF) if isinstance(key, str) else None
            self.found.append(UnknownField(path, name, hint))
            if len(self.found) >= self.limit:
                return False
        return True


def unknown_kind_problem(
    kind: str, api_version: str, reads: Mapping[str, tuple[str, tuple[str, ...]]]
) -> str | None:
    """Why a document of a kind the agent does not read deserves a warning.

    `reads` maps each kind the agent reads to (API group, served versions).  In
    the Gateway API's groups and ours every other kind is named: a real kind the
    agent does not implement, or an unknown one (with a hint).  In any other
    group only a near-miss of a kind or group the agent reads is: Deployments
    and Pods are simply not ours to read.
    """
    group = api_version.rpartition("/")[0]
    read_group = reads[kind][0] if kind in reads else None
    if read_group == group:
        return None  # ours: parse_object judges the version
    known = _known()
    if group in known.crd_groups:
        home = known.kind_groups.get(kind, read_group)
        if home == group:
            return f"kind {kind} is not supported by gatewaylb; ignored"
        if home is not None:
            return f"kind {kind} is not in {group} but in {_group_name(home)}; ignored"
        siblings = [k for k, g in known.kind_groups.items() if g == group]
        hint = _close(kind, siblings, _KIND_HINT_CUTOFF)
        return f'unknown kind "{kind}" in {group}{_did_you_mean(hint)}; ignored'
    if read_group is not None:
        # The same name in another group is another API (Istio's Gateway,
        # Knative's Service), unless the group is a misspelling of ours.
        if group and read_group and _close(group, [read_group], _GROUP_HINT_CUTOFF):
            return f'kind {kind}: unknown API group "{group}"{_did_you_mean(read_group)}; ignored'
        return None
    hint = _close(kind, reads, _FOREIGN_KIND_CUTOFF)
    if hint is None:
        return None
    return f'unknown kind "{kind}" in {_group_name(group)}{_did_you_mean(hint)}; ignored'


def _did_you_mean(name: str | None) -> str:
    return f' (did you mean "{name}"?)' if name else ""


def _group_name(group: str) -> str:
    return group or "the core API group"
