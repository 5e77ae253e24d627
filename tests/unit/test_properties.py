"""Property tests: untrusted manifests never break build_snapshot + translate.

Realistic, valid worlds (GatewayClass, Gateways with TCP/UDP/HTTP/HTTPS/TLS
listeners, all five route kinds, Services, EndpointSlices, ReferenceGrants,
Namespaces, Secrets) are generated and then mutated: leaves replaced by values
of the wrong type, keys deleted, objects duplicated or renamed onto each other,
lists blown up to 10k elements, dicts nested deeper than the recursion limit.

Whatever the input, translate must not raise, must give every object of ours a
status (with observedGeneration = metadata.generation), must be deterministic
and independent of input order, and must produce JSON-ready output.

Real bugs found this way are kept as regression tests at the bottom, one per
bug, each with its minimal example.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path as FilePath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.model.meta import GATEWAY_GROUP, Key
from agent.model.snapshot import (
    SERVED_VERSIONS,
    InvalidObject,
    LoadProblem,
    Snapshot,
    build_snapshot,
    parse_object,
)
from agent.translate.core import DEFAULT_CONTROLLER_NAME, Translation, translate

CONTROLLER = DEFAULT_CONTROLLER_NAME
GW_V1 = f"{GATEWAY_GROUP}/v1"
GW_ALPHA2 = f"{GATEWAY_GROUP}/v1alpha2"
NAMESPACES = ("default", "team-a", "team-b")
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute", "TLSRoute")
HUGE = 10_000

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)

# A structurally valid PEM pair (ASN.1 SEQUENCE framing is all the agent checks).
_DER = base64.b64encode(b"\x30\x03\x02\x01\x00").decode()
CERT_PEM = f"-----BEGIN CERTIFICATE-----\n{_DER}\n-----END CERTIFICATE-----\n"
KEY_PEM = f"-----BEGIN PRIVATE KEY-----\n{_DER}\n-----END PRIVATE KEY-----\n"


# -- valid worlds ------------------------------------------------------------------


def _meta(name: str, namespace: str | None, generation: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "generation": generation}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


@st.composite
def worlds(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid, realistic set of documents that all parse without error."""
    gen = st.integers(min_value=1, max_value=5)
    docs: list[dict[str, Any]] = []
    for ns in NAMESPACES:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"team": ns}},
            }
        )
    docs.append(
        {
            "apiVersion": GW_V1,
            "kind": "GatewayClass",
            "metadata": _meta("gwlb", None, draw(gen)),
            "spec": {"controllerName": CONTROLLER},
        }
    )
    docs.append(
        {
            "apiVersion": GW_V1,
            "kind": "GatewayClass",
            "metadata": _meta("foreign", None, draw(gen)),
            "spec": {"controllerName": "example.com/other"},
        }
    )

    # Secrets for TLS termination.
    for ns in NAMESPACES[:2]:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _meta("cert", ns, 1),
                "type": "kubernetes.io/tls",
                "stringData": {"tls.crt": CERT_PEM, "tls.key": KEY_PEM},
            }
        )

    # Services, each with a TCP and a UDP port, and one or two EndpointSlices.
    services: list[tuple[str, str]] = []
    for i in range(draw(st.integers(min_value=1, max_value=4))):
        ns = draw(st.sampled_from(NAMESPACES))
        name = f"svc-{i}"
        services.append((ns, name))
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(name, ns, 1),
                "spec": {
                    "ports": [
                        {"name": "tcp", "port": 80, "protocol": "TCP", "targetPort": 8080},
                        {"name": "udp", "port": 53, "protocol": "UDP"},
                    ]
                },
            }
        )
        for s in range(draw(st.integers(min_value=0, max_value=2))):
            family = draw(st.sampled_from(["IPv4", "IPv4", "IPv4", "IPv6"]))
            endpoints = []
            for e in range(draw(st.integers(min_value=0, max_value=4))):
                addr = f"10.{i}.{s}.{e + 1}" if family == "IPv4" else f"fd00::{i}:{s}:{e + 1}"
                endpoints.append(
                    {
                        "addresses": [addr],
                        "conditions": {
                            "ready": draw(st.sampled_from([True, True, True, False])),
                            "serving": draw(st.booleans()),
                            "terminating": draw(st.booleans()),
                        },
                    }
                )
            docs.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        **_meta(f"{name}-{s}", ns, 1),
                        "labels": {"kubernetes.io/service-name": name},
                    },
                    "addressType": family,
                    "endpoints": endpoints,
                    "ports": [
                        {"name": "tcp", "port": 8080, "protocol": "TCP"},
                        {"name": "udp", "port": 5353, "protocol": "UDP"},
                    ],
                }
            )

    # Gateways with distinct VIPs and a mix of listeners.
    gateways: list[tuple[str, str, tuple[str, ...]]] = []
    for g in range(draw(st.integers(min_value=1, max_value=3))):
        ns = draw(st.sampled_from(NAMESPACES[:2]))
        listeners = []
        names = []
        for n, protocol in enumerate(
            draw(
                st.lists(
                    st.sampled_from(["TCP", "UDP", "HTTP", "HTTPS", "TLS"]),
                    min_size=1,
                    max_size=5,
                )
            )
        ):
            lname = f"{protocol.lower()}-{n}"
            names.append(lname)
            # Ports are sometimes shared between listeners (a conflict to judge).
            port = draw(st.sampled_from([80, 443, *[8000 + n] * 4]))
            listener: dict[str, Any] = {"name": lname, "port": port, "protocol": protocol}
            if protocol in ("HTTP", "HTTPS", "TLS") and draw(st.booleans()):
                listener["hostname"] = draw(st.sampled_from(["*.example.com", "a.example.com"]))
            if protocol == "HTTPS":
                listener["tls"] = {"certificateRefs": [{"name": "cert"}]}
            elif protocol == "TLS":
                mode = draw(st.sampled_from(["Passthrough", "Terminate"]))
                listener["tls"] = {"mode": mode}
                if mode == "Terminate":
                    listener["tls"]["certificateRefs"] = [{"name": "cert"}]
            allowed = draw(st.sampled_from(["Same", "All", "Selector", None]))
            if allowed == "Selector":
                listener["allowedRoutes"] = {
                    "namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": ns}}}
                }
            elif allowed is not None:
                listener["allowedRoutes"] = {"namespaces": {"from": allowed}}
            listeners.append(listener)
        # The parser (rightly) refuses duplicate port/protocol/hostname combos.
        seen: set[tuple[Any, ...]] = set()
        unique = []
        for lst in listeners:
            combo = (lst["port"], lst["protocol"], lst.get("hostname"))
            if combo not in seen:
                seen.add(combo)
                unique.append(lst)
        v4 = draw(st.sampled_from([True, True, True, False]))
        vip = f"192.0.2.{g + 1}" if v4 else f"2001:db8::{g + 1}"
        cls = draw(st.sampled_from(["gwlb", "gwlb", "gwlb", "foreign", "missing"]))
        gname = f"gw-{g}"
        gateways.append((ns, gname, tuple(lst["name"] for lst in unique)))
        docs.append(
            {
                "apiVersion": GW_V1,
                "kind": "Gateway",
                "metadata": _meta(gname, ns, draw(gen)),
                "spec": {
                    "gatewayClassName": cls,
                    "addresses": [{"type": "IPAddress", "value": vip}],
                    "listeners": unique,
                },
            }
        )

    # Routes of all five kinds.
    for r in range(draw(st.integers(min_value=0, max_value=8))):
        kind = draw(st.sampled_from(ROUTE_KINDS))
        ns = draw(st.sampled_from(NAMESPACES))
        refs = []
        for gns, gname, lnames in draw(
            st.lists(st.sampled_from(gateways), min_size=1, max_size=2, unique=True)
        ):
            ref: dict[str, Any] = {"name": gname}
            if gns != ns or draw(st.booleans()):
                ref["namespace"] = gns
            if draw(st.integers(min_value=0, max_value=3)) == 0:
                ref["sectionName"] = draw(st.sampled_from(lnames))
            refs.append(ref)
        backend_refs = []
        for sns, sname in draw(
            st.lists(st.sampled_from(services), min_size=1, max_size=3, unique=True)
        ):
            port = 53 if kind == "UDPRoute" else 80
            b: dict[str, Any] = {"name": sname, "port": port}
            if sns != ns:
                b["namespace"] = sns
            if draw(st.booleans()):
                b["weight"] = draw(st.integers(min_value=0, max_value=1_000_000))
            backend_refs.append(b)
        spec: dict[str, Any] = {"parentRefs": refs}
        if kind in ("HTTPRoute", "GRPCRoute", "TLSRoute"):
            spec["hostnames"] = draw(
                st.lists(
                    st.sampled_from(["a.example.com", "b.example.com", "*.example.com"]),
                    min_size=1 if kind == "TLSRoute" else 0,
                    max_size=2,
                    unique=True,
                )
            )
        if kind == "HTTPRoute":
            spec["rules"] = [
                {
                    "matches": [
                        {
                            "path": {"type": "PathPrefix", "value": "/api"},
                            "headers": [{"name": "x-env", "value": "prod"}],
                            "queryParams": [{"name": "v", "value": "1"}],
                            "method": "GET",
                        },
                        {"path": {"type": "Exact", "value": "/"}},
                    ],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "x-a", "value": "b"}]},
                        }
                    ],
                    "backendRefs": backend_refs,
                    "timeouts": {"request": "10s", "backendRequest": "5s"},
                }
            ]
        elif kind == "GRPCRoute":
            spec["rules"] = [
                {
                    "matches": [{"method": {"service": "pkg.Echo", "method": "Ping"}}],
                    "backendRefs": backend_refs,
                }
            ]
        else:
            spec["rules"] = [{"backendRefs": backend_refs}]
        api = GW_V1 if kind in ("HTTPRoute", "GRPCRoute") else GW_ALPHA2
        docs.append(
            {
                "apiVersion": api,
                "kind": kind,
                "metadata": _meta(f"route-{r}", ns, draw(gen)),
                "spec": spec,
            }
        )

    # ReferenceGrants letting routes in any namespace reach Services and Secrets.
    for ns in NAMESPACES:
        if draw(st.booleans()):
            docs.append(
                {
                    "apiVersion": "gateway.networking.k8s.io/v1beta1",
                    "kind": "ReferenceGrant",
                    "metadata": _meta("allow", ns, 1),
                    "spec": {
                        "from": [
                            {"group": GATEWAY_GROUP, "kind": k, "namespace": other}
                            for k in (*ROUTE_KINDS, "Gateway")
                            for other in NAMESPACES
                            if other != ns
                        ][:16],
                        "to": [{"group": "", "kind": "Service"}, {"group": "", "kind": "Secret"}],
                    },
                }
            )
    return docs


# -- mutations ---------------------------------------------------------------------

SPECIAL_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "line1\nline2",
    "tab\there",
    "\u202egnp.exe",  # RTL override
    "שלום",
    "مرحبا",
    "😀💥🚀",
    "\ud800",  # a lone surrogate, as a JSON \ud800 escape produces
    "x" * 100_000,
    "é" * 100_000,
    "a" * 253,
    "a" * 254,
    "*",
    "*.example.com",
    "10.0.0.1",
    "::1",
    "0.0.0.0",
    "255.255.255.255",
    "/",
    "//..",
    "Gateway",
    "Service",
    GATEWAY_GROUP,
    "gwlb",
    "gw-0",
    "svc-0",
    "default",
    "Terminate",
    "Passthrough",
    "RegularExpression",
    ".*",
    "(",
    "${jndi:x}",
]
SPECIAL_NUMBERS = [0, -1, 1, 65535, 65536, 2**31, 2**63, -(2**63), 10**30, 1e308, -0.0, 0.5]


class Deep(dict[str, Any]):
    """A dict nested `depth` levels deep, with a short repr (Hypothesis prints
    falsifying examples, and a plain repr would overflow the stack)."""

    def __init__(self, depth: int) -> None:
        node: dict[str, Any] = {}
        for _ in range(depth - 1):
            node = {"a": node}
        super().__init__(a=node)
        self.depth = depth

    def __repr__(self) -> str:
        return f"Deep({self.depth})"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(SPECIAL_NUMBERS),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(SPECIAL_STRINGS),
)
weird_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["name", "value", "type", "port", "x"]), scalars, max_size=3),
    st.sampled_from([2000, 5000]).map(Deep),
)

BLOATABLE = frozenset(
    {
        "parentRefs",
        "listeners",
        "endpoints",
        "addresses",
        "backendRefs",
        "rules",
        "hostnames",
        "matches",
        "headers",
        "filters",
        "ports",
        "from",
        "to",
        "certificateRefs",
    }
)

Path = tuple[str | int, ...]


def _paths(doc: Any, limit_depth: int = 12) -> list[Path]:
    """Every node's path in a document (iteratively, and only to a sane depth)."""
    out: list[Path] = []
    stack: list[tuple[Path, Any]] = [((), doc)]
    while stack:
        path, node = stack.pop()
        if path:
            out.append(path)
        if len(path) >= limit_depth:
            continue
        if isinstance(node, dict):
            stack.extend(((*path, k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in enumerate(node))
    out.sort(key=repr)
    return out


def _get(doc: Any, path: Path) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _edit(doc: Any, path: Path, fn: Any) -> Any:
    """A copy of doc with fn applied to the parent container of path's last step
    (only the containers along the path are copied)."""
    if len(path) == 1:
        copy = dict(doc) if isinstance(doc, dict) else list(doc)
        fn(copy, path[0])
        return copy
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _edit(doc[path[0]], path[1:], fn)
    return copy


MUTATIONS = ("replace", "replace", "replace", "delete", "dup_doc", "rename", "bloat", "dup_item")


@st.composite
def mutated_worlds(draw: st.DrawFn) -> list[dict[str, Any]]:
    docs = list(draw(worlds()))
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        op = draw(st.sampled_from(MUTATIONS))
        i = draw(st.integers(min_value=0, max_value=len(docs) - 1))
        doc = docs[i]
        if not isinstance(doc, dict):
            continue
        if op == "dup_doc":
            docs.insert(draw(st.integers(min_value=0, max_value=len(docs))), doc)
            continue
        if op == "rename":
            other = docs[draw(st.integers(min_value=0, max_value=len(docs) - 1))]
            name = _get(other, ("metadata", "name")) if _has(other, ("metadata", "name")) else "x"
            if isinstance(doc.get("metadata"), dict):
                docs[i] = _edit(doc, ("metadata", "name"), lambda c, k, v=name: c.__setitem__(k, v))
            continue
        paths = _paths(doc)
        if op == "bloat":
            paths = [
                p
                for p in paths
                if p[-1] in BLOATABLE and isinstance(_get(doc, p), list) and _get(doc, p)
            ]
        elif op == "dup_item":
            paths = [p for p in paths if isinstance(p[-1], int)]
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        if op == "replace":
            value = draw(weird_values)
            docs[i] = _edit(doc, path, lambda c, k, v=value: c.__setitem__(k, v))
        elif op == "delete":
            docs[i] = _edit(doc, path, lambda c, k: c.__delitem__(k))
        elif op == "bloat":
            item = _get(doc, path)[0]
            docs[i] = _edit(doc, path, lambda c, k, v=item: c.__setitem__(k, [v] * HUGE))
        else:  # dup_item: the same list element twice
            docs[i] = _edit(doc, path, lambda c, k: c.insert(k, c[k]))
    return docs


def _has(doc: Any, path: Path) -> bool:
    try:
        _get(doc, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def _sources(docs: list[Any]) -> list[tuple[object, str]]:
    return [(d, f"doc-{i}") for i, d in enumerate(docs)]


# -- property checks ---------------------------------------------------------------


def _kind_of(obj: Any) -> str:
    return obj.kind if hasattr(obj, "kind") and isinstance(obj.kind, str) else type(obj).__name__


def _all_objects(snap: Snapshot) -> list[Any]:
    return [
        *snap.gateway_classes,
        *snap.gateways,
        *snap.http_routes,
        *snap.grpc_routes,
        *snap.l4_routes,
        *snap.reference_grants,
        *snap.services,
        *snap.endpoint_slices,
        *snap.namespaces,
        *snap.secrets,
        *snap.invalid,
    ]


def _walk_generations(node: Any, out: list[int]) -> None:
    if isinstance(node, dict):
        if "observedGeneration" in node:
            out.append(node["observedGeneration"])
        for v in node.values():
            _walk_generations(v, out)
    elif isinstance(node, list):
        for v in node:
            _walk_generations(v, out)


def check_properties(snap: Snapshot, result: Translation) -> None:
    statuses = result.status.objects
    ids = Counter((o.kind, o.namespace, o.name) for o in statuses)
    assert all(n == 1 for n in ids.values()), [k for k, n in ids.items() if n > 1]
    by_id = {(o.kind, o.namespace, o.name): o for o in statuses}

    # (b) Gateways of our classes, parsed or invalid, each get exactly one status.
    ours = {gc.meta.name for gc in snap.gateway_classes if gc.controller_name == CONTROLLER}
    # A malformed GatewayClass that names our controller is ours too (and not accepted).
    ours |= {
        inv.meta.name
        for inv in snap.invalid
        if inv.kind == "GatewayClass" and inv.controller_name == CONTROLLER
    }
    our_gateways = {g.meta.key for g in snap.gateways if g.class_name in ours}
    expected_gateways = our_gateways | {
        inv.meta.key for inv in snap.invalid if inv.kind == "Gateway" and inv.gateway_class in ours
    }
    got_gateways = {Key(o.namespace, o.name) for o in statuses if o.kind == "Gateway"}
    assert got_gateways == expected_gateways
    for gc in snap.gateway_classes:
        assert (("GatewayClass", "", gc.meta.name) in by_id) == (gc.controller_name == CONTROLLER)

    # (b) Routes: one parents entry per parentRef naming one of our Gateways.
    routes: list[Any] = [*snap.http_routes, *snap.grpc_routes, *snap.l4_routes]
    routes += [inv for inv in snap.invalid if inv.kind in ROUTE_KINDS]
    for route in routes:
        wanted = sum(
            1
            for ref in route.parent_refs
            if ref.group == GATEWAY_GROUP
            and ref.kind == "Gateway"
            # Malformed Gateways of ours count: routes are told NoMatchingParent.
            and Key(ref.namespace or route.meta.namespace, ref.name) in expected_gateways
        )
        status = by_id.get((route.kind, route.meta.namespace, route.meta.name))
        if wanted == 0:
            assert status is None
        else:
            assert status is not None
            assert len(status.to_dict()["status"]["parents"]) == wanted
    route_kinds = {_kind_of(r) for r in routes} | set(ROUTE_KINDS)
    assert {o.kind for o in statuses} <= {"GatewayClass", "Gateway"} | route_kinds

    # attachedRoutes never exceeds the routes Accepted on that Gateway.
    accepted_on: Counter[Key] = Counter()
    for o in statuses:
        if o.kind not in ROUTE_KINDS:
            continue
        parents = o.to_dict()["status"]["parents"]
        keys = {
            Key(p["parentRef"].get("namespace", ""), p["parentRef"]["name"])
            for p in parents
            if any(c["type"] == "Accepted" and c["status"] == "True" for c in p["conditions"])
        }
        accepted_on.update(keys)
    for o in statuses:
        if o.kind == "Gateway":
            for listener in o.to_dict()["status"]["listeners"]:
                assert listener["attachedRoutes"] <= accepted_on[Key(o.namespace, o.name)]

    # (c) observedGeneration is the object's own generation, everywhere.
    generations = {
        (_kind_of(o), o.meta.namespace, o.meta.name): o.meta.generation for o in _all_objects(snap)
    }
    for o in statuses:
        assert o.generation == generations[(o.kind, o.namespace, o.name)]
        found: list[int] = []
        as_dict = o.to_dict()
        _walk_generations(as_dict["status"], found)
        assert found, f"{o.kind} {o.namespace}/{o.name} has no condition"
        assert set(found) == {o.generation}
        assert as_dict["metadata"]["generation"] == o.generation

    # (e) Weights are non-negative integers; output serialises to JSON.
    desired = result.desired
    for f in desired.l4:
        assert f.protocol in ("tcp", "udp")
        assert 1 <= f.port <= 65535
        assert f.vip in desired.vips
        weights = [b.weight for b in f.backends] + [f.reject_weight]
        assert all(type(w) is int and w >= 0 for w in weights), weights
        assert f.total_weight > 0 or not f.accepts_new_flows
    for listener in desired.l7:
        for vhost in listener.virtual_hosts:
            for entry in vhost.routes:
                for svc in entry.backends.services:
                    assert type(svc.weight) is int and svc.weight >= 0
                assert entry.backends.invalid_weight >= 0
    out = desired.to_dict()
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    status_list = result.status.to_list()
    assert json.loads(json.dumps(status_list, allow_nan=False)) == status_list


def _run(docs: list[Any]) -> tuple[Snapshot, Translation]:
    snap = build_snapshot(_sources(docs))
    return snap, translate(snap, CONTROLLER)


# -- the tests ---------------------------------------------------------------------


@SETTINGS
@given(worlds())
def test_generated_worlds_are_valid(docs: list[dict[str, Any]]) -> None:
    """The starting point of every mutation parses cleanly, so mutations matter."""
    snap, result = _run(docs)
    assert snap.problems == ()
    assert snap.invalid == ()
    check_properties(snap, result)


@SETTINGS
@given(mutated_worlds())
def test_mutated_worlds_never_raise_and_every_object_of_ours_gets_a_status(
    docs: list[Any],
) -> None:
    snap, result = _run(docs)
    check_properties(snap, result)


def _identity(doc: object) -> object:
    parsed = parse_object(doc, "")
    if parsed is None or isinstance(parsed, LoadProblem):
        return object()  # never equal: documents without identity are all kept
    kind = parsed.kind if isinstance(parsed, InvalidObject) else _kind_of(parsed)
    return (kind, parsed.meta.namespace, parsed.meta.name)


@settings(SETTINGS, max_examples=60)
@given(mutated_worlds(), st.randoms(use_true_random=False))
def test_translate_is_deterministic_and_independent_of_input_order(
    docs: list[Any], rnd: Any
) -> None:
    _, first = _run(docs)
    _, again = _run(docs)
    assert first.desired.to_dict() == again.desired.to_dict()
    assert first.status.to_list() == again.status.to_list()
    assert first == again

    # The first definition of a name wins, so shuffle only the winners.
    seen: set[object] = set()
    winners = []
    for doc in docs:
        ident = _identity(doc)
        if ident not in seen:
            seen.add(ident)
            winners.append(doc)
    rnd.shuffle(winners)
    _, shuffled = _run(winners)
    assert shuffled.desired.to_dict() == first.desired.to_dict()
    assert shuffled.status.to_list() == first.status.to_list()


json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=30,
)
_SERVED = sorted(
    (f"{group}/{v}" if group else v, kind)
    for kind, (group, versions) in SERVED_VERSIONS.items()
    for v in versions
)


@st.composite
def random_documents(draw: st.DrawFn) -> dict[str, Any]:
    api_version, kind = draw(st.sampled_from(_SERVED))
    doc: dict[str, Any] = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=4))
    doc.update(apiVersion=api_version, kind=kind)
    doc["metadata"] = draw(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"name": st.sampled_from(["a", "gw-0", "svc-0"])},
                optional={
                    "namespace": st.sampled_from(NAMESPACES),
                    "generation": st.integers(),
                    "labels": json_values,
                },
            ),
        )
    )
    doc["spec"] = draw(json_values)
    return doc


@settings(SETTINGS, max_examples=150)
@given(worlds(), st.lists(random_documents(), max_size=6))
def test_random_documents_next_to_a_valid_world_never_raise(
    world: list[dict[str, Any]], extra: list[dict[str, Any]]
) -> None:
    docs = [*world, *extra]
    snap, result = _run(docs)
    check_properties(snap, result)


@SETTINGS
@given(st.lists(json_values, max_size=5))
def test_arbitrary_json_never_raises(docs: list[Any]) -> None:
    snap, result = _run(docs)
    check_properties(snap, result)


# -- over-max lists are refused fast, with a message ---------------------------------


def _valid_one(kind: str) -> dict[str, Any]:
    docs = {
        "Gateway": {
            "apiVersion": GW_V1,
            "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {
                "gatewayClassName": "gwlb",
                "addresses": [{"value": "192.0.2.1"}],
                "listeners": [{"name": "tcp", "port": 80, "protocol": "TCP"}],
            },
        },
        "HTTPRoute": {
            "apiVersion": GW_V1,
            "kind": "HTTPRoute",
            "metadata": {"name": "r"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "hostnames": ["a.example.com"],
                "rules": [
                    {
                        "matches": [{"headers": [{"name": "x", "value": "y"}]}],
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {"set": [{"name": "x", "value": "y"}]},
                            }
                        ],
                        "backendRefs": [{"name": "svc", "port": 80}],
                    }
                ],
            },
        },
        "TCPRoute": {
            "apiVersion": GW_ALPHA2,
            "kind": "TCPRoute",
            "metadata": {"name": "r"},
            "spec": {
                "parentRefs": [{"name": "gw"}],
                "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}],
            },
        },
        "ReferenceGrant": {
            "apiVersion": GW_V1,
            "kind": "ReferenceGrant",
            "metadata": {"name": "g"},
            "spec": {
                "from": [{"group": GATEWAY_GROUP, "kind": "HTTPRoute", "namespace": "x"}],
                "to": [{"group": "", "kind": "Service"}],
            },
        },
        "EndpointSlice": {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "svc"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"]}],
            "ports": [{"port": 80}],
        },
    }
    return json.loads(json.dumps(docs[kind]))


OVER_MAX_CASES = [
    ("Gateway", ("spec", "listeners")),
    ("Gateway", ("spec", "addresses")),
    ("TCPRoute", ("spec", "parentRefs")),
    ("TCPRoute", ("spec", "rules", 0, "backendRefs")),
    ("HTTPRoute", ("spec", "parentRefs")),
    ("HTTPRoute", ("spec", "hostnames")),
    ("HTTPRoute", ("spec", "rules")),
    ("HTTPRoute", ("spec", "rules", 0, "matches")),
    ("HTTPRoute", ("spec", "rules", 0, "matches", 0, "headers")),
    ("HTTPRoute", ("spec", "rules", 0, "filters")),
    ("HTTPRoute", ("spec", "rules", 0, "backendRefs")),
    ("HTTPRoute", ("spec", "rules", 0, "filters", 0, "requestHeaderModifier", "set")),
    ("ReferenceGrant", ("spec", "from")),
    ("ReferenceGrant", ("spec", "to")),
    ("EndpointSlice", ("endpoints", 0, "addresses")),
    ("EndpointSlice", ("endpoints",)),
    ("EndpointSlice", ("ports",)),
]


@pytest.mark.parametrize(("kind", "path"), OVER_MAX_CASES)
def test_over_max_lists_are_refused_quickly_with_a_message(kind: str, path: Path) -> None:
    doc = _valid_one(kind)
    assert not isinstance(parse_object(doc, "f"), InvalidObject | LoadProblem)
    item = _get(doc, path)[0]
    bloated = _edit(doc, path, lambda c, k: c.__setitem__(k, [item] * HUGE))
    started = time.perf_counter()
    parsed = parse_object(bloated, "f")
    elapsed = time.perf_counter() - started
    assert isinstance(parsed, InvalidObject), parsed
    assert "at most" in parsed.error and str(HUGE) in parsed.error
    assert elapsed < 0.02, f"{elapsed:.3f}s to refuse a {HUGE}-element list"


# -- regressions: bugs the properties found, each kept with its minimal example ----

REPO_ROOT = FilePath(__file__).resolve().parents[2]
_PIPELINE = textwrap.dedent(
    """
    import json, sys
    from agent.model.snapshot import build_snapshot
    from agent.translate.core import translate
    docs = json.loads(sys.stdin.read())
    translate(build_snapshot([(d, "") for d in docs]))
    """
)


def _finishes_within(docs: list[Any], seconds: float) -> bool:
    """Runs build_snapshot + translate in a child process (a regex in C cannot be
    interrupted in-process) and says whether it finished in time."""
    try:
        subprocess.run(
            [sys.executable, "-c", _PIPELINE],
            cwd=REPO_ROOT,
            input=json.dumps(docs),
            text=True,
            timeout=seconds,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return False
    return True


def _http_route_with_header_value(value: str) -> dict[str, Any]:
    return {
        "apiVersion": GW_V1,
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"rules": [{"matches": [{"headers": [{"name": "x-env", "value": value}]}]}]},
    }


def test_header_value_pattern_is_linear() -> None:
    # 40 visible characters and a trailing newline (a common YAML slip).
    assert _finishes_within([_http_route_with_header_value("a" * 40 + "\n")], 3.0)


def test_certificate_check_is_linear_in_the_secret_size() -> None:
    docs = [
        {
            "apiVersion": GW_V1,
            "kind": "GatewayClass",
            "metadata": {"name": "gwlb"},
            "spec": {"controllerName": CONTROLLER},
        },
        {
            "apiVersion": GW_V1,
            "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {
                "gatewayClassName": "gwlb",
                "addresses": [{"value": "192.0.2.1"}],
                "listeners": [
                    {
                        "name": "https",
                        "port": 443,
                        "protocol": "HTTPS",
                        "tls": {"certificateRefs": [{"name": "cert"}]},
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "cert"},
            "stringData": {
                # 300 kB, well under the 1 MiB Kubernetes allows for a Secret.
                "tls.crt": "-----BEGIN CERTIFICATE-----" + " " * 300_000,
                "tls.key": KEY_PEM,
            },
        },
    ]
    assert _finishes_within(docs, 3.0)


def test_regex_with_a_huge_repeat_count_is_a_field_error() -> None:
    doc = {
        "apiVersion": GW_V1,
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {
            "rules": [
                {"matches": [{"path": {"type": "RegularExpression", "value": "a{4294967296}"}}]}
            ]
        },
    }
    snap = build_snapshot([(doc, "f")])
    assert len(snap.invalid) == 1


def test_regex_with_incompatible_flags_is_a_field_error() -> None:
    doc = _http_route_with_header_value("x")
    doc["spec"]["rules"][0]["matches"][0]["headers"][0].update(
        type="RegularExpression", value="(?a)(?u)x"
    )
    snap = build_snapshot([(doc, "f")])
    assert len(snap.invalid) == 1


def _tcp_world(parent_refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gateway = _valid_one("Gateway")
    route = _valid_one("TCPRoute")
    route["spec"]["parentRefs"] = parent_refs
    return [
        {
            "apiVersion": GW_V1,
            "kind": "GatewayClass",
            "metadata": {"name": "gwlb"},
            "spec": {"controllerName": CONTROLLER},
        },
        gateway,
        route,
    ]


def test_attached_routes_counts_each_route_once() -> None:
    # The CEL rule on parentRefs treats "namespace unset" and "namespace: default"
    # as different parents, so the API server accepts this route.
    docs = _tcp_world([{"name": "gw"}, {"name": "gw", "namespace": "default"}])
    _, result = _run(docs)
    status = result.status.find("Gateway", "default", "gw")
    assert status is not None
    assert status.to_dict()["status"]["listeners"][0]["attachedRoutes"] == 1


def test_malformed_gateway_class_of_ours_gets_a_status() -> None:
    docs = [
        {
            "apiVersion": GW_V1,
            "kind": "GatewayClass",
            "metadata": {"name": "gwlb"},
            "spec": {"controllerName": CONTROLLER, "description": "x" * 65},
        }
    ]
    _, result = _run(docs)
    assert result.status.find("GatewayClass", "", "gwlb") is not None
