"""Warnings for unknown fields and kinds in standalone manifests.

Where no API server validates the manifests, a typo must still be named, as
`kubectl --validate=strict` would: `sectionNmae:` would otherwise attach a route
to every listener, `kind: TCPRout` would vanish.  The warnings never change
what is parsed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import load_script

from agent.model.known import (
    MAX_UNKNOWN_FIELDS,
    UnknownField,
    _known,
    _Node,
    unknown_fields,
    unknown_kind_problem,
)
from agent.model.snapshot import (
    SERVED_VERSIONS,
    LoadProblem,
    Snapshot,
    SnapshotBuilder,
    build_snapshot,
)
from agent.sources.files import (
    FileSource,
    ManifestDirectory,
    load_directory,
    manifest_files,
    parse_text,
)

REPO = Path(__file__).resolve().parents[2]
# shared/ sits beside the repository (in CI too): its absence is a broken checkout.
GATEWAY_API = REPO.parent / "shared" / "gateway-api"
GW = "gateway.networking.k8s.io"

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata:
  name: db
  namespace: apps
spec:
  parentRefs:
  - name: gw
    sectionNmae: tcp
  rules:
  - backendRefs:
    - {name: db, port: 5432}
"""


def _load(tmp_path: Path, text: str, name: str = "m.yaml") -> tuple[Snapshot, str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_directory(tmp_path), str(path)


def _warnings(snapshot: Snapshot) -> list[str]:
    return [str(w) for w in snapshot.warnings]


# -- the cases, through the files source --------------------------------


def test_misspelt_section_name_is_named_with_file_line_object_and_hint(tmp_path: Path) -> None:
    snapshot, path = _load(tmp_path, ROUTE)
    assert _warnings(snapshot) == [
        f"{path}:1: TCPRoute apps/db: spec.parentRefs[0].sectionNmae: "
        'unknown field "sectionNmae" (did you mean "sectionName"?)'
    ]
    assert snapshot.warnings == (
        LoadProblem(
            f"{path}:1",
            "TCPRoute apps/db: spec.parentRefs[0].sectionNmae: "
            'unknown field "sectionNmae" (did you mean "sectionName"?)',
        ),
    )
    # A warning only: the route is parsed and used as before.
    assert [r.meta.name for r in snapshot.l4_routes] == ["db"]
    assert snapshot.problems == ()


def test_misspelt_route_kind_is_named_with_a_hint(tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n---\n" + ROUTE.replace(
        "kind: TCPRoute", "kind: TCPRout"
    ).replace("sectionNmae", "sectionName")
    snapshot, path = _load(tmp_path, text)
    assert _warnings(snapshot) == [
        f'{path}:5: unknown kind "TCPRout" in gateway.networking.k8s.io '
        '(did you mean "TCPRoute"?); ignored'
    ]
    assert snapshot.l4_routes == ()


def test_singular_backend_ref_is_named_beside_the_missing_backend_refs(tmp_path: Path) -> None:
    text = ROUTE.replace("sectionNmae", "sectionName").replace("- backendRefs:", "- backendRef:")
    snapshot, path = _load(tmp_path, text)
    assert _warnings(snapshot) == [
        f"{path}:1: TCPRoute apps/db: spec.rules[0].backendRef: "
        'unknown field "backendRef" (did you mean "backendRefs"?)'
    ]
    # The parser's own verdict is unchanged.
    assert [(i.kind, i.error) for i in snapshot.invalid] == [
        ("TCPRoute", "spec.rules[0].backendRefs: required value is missing")
    ]


def test_unknown_top_level_spec_field_of_a_gateway(tmp_path: Path) -> None:
    snapshot, path = _load(
        tmp_path,
        """\
        # a comment line, so that the document starts on line 2
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: gw, namespace: edge}
        spec:
          gatewayClassName: gatewaylb
          adresses: [{value: 192.0.2.1}]
          listeners: [{name: tcp, protocol: TCP, port: 80}]
          zzz: 1
        """,
    )
    assert _warnings(snapshot) == [
        f"{path}:2: Gateway edge/gw: spec.adresses: "
        'unknown field "adresses" (did you mean "addresses"?)',
        f'{path}:2: Gateway edge/gw: spec.zzz: unknown field "zzz"',
    ]
    assert [g.meta.name for g in snapshot.gateways] == ["gw"]


def test_field_under_an_http_route_filter(tmp_path: Path) -> None:
    snapshot, path = _load(
        tmp_path,
        """\
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports: [{port: 80, targetPort: 8080}]
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: web}
        spec:
          parentRefs: [{name: gw}]
          rules:
          - matches: [{path: {type: PathPrefix, value: /}}]
          - filters:
            - type: RequestHeaderModifier
              requestHeaderModifier:
                sett: [{name: x-a, value: b}]
            backendRefs:
            - name: web
              port: 80
              filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {add: [{name: x-b, value: c, vaule: d}]}
        """,
    )
    assert _warnings(snapshot) == [
        f"{path}:7: HTTPRoute default/web: spec.rules[1].filters[0].requestHeaderModifier.sett: "
        'unknown field "sett" (did you mean "set"?)',
        f"{path}:7: HTTPRoute default/web: "
        "spec.rules[1].backendRefs[0].filters[0].requestHeaderModifier.add[0].vaule: "
        'unknown field "vaule" (did you mean "value"?)',
    ]


def test_maps_of_any_key_give_no_warning(tmp_path: Path) -> None:
    snapshot, _ = _load(
        tmp_path,
        """\
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          labels: {app.kubernetes.io/name: web, anything-at-all: "yes", sectionNmae: x}
          annotations: {example.com/note: free text}
        spec:
          selector: {app: web, whatever: x}
          ports: [{name: http, port: 80, targetPort: http, appProtocol: http}]
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: gw, labels: {team: edge}}
        spec:
          gatewayClassName: gatewaylb
          infrastructure: {labels: {any: thing}, annotations: {a.b/c: d}}
          listeners:
          - name: https
            protocol: HTTPS
            port: 443
            tls: {options: {example.com/cipher: x}}
            allowedRoutes:
              namespaces: {from: Selector, selector: {matchLabels: {free: form}}}
        """,
    )
    assert _warnings(snapshot) == []


def test_misspelt_metadata_field_of_an_object_that_cannot_be_named(tmp_path: Path) -> None:
    snapshot, path = _load(
        tmp_path,
        """\
        apiVersion: gateway.networking.k8s.io/v1
        kind: GatewayClass
        metadata: {nmae: gatewaylb}
        spec: {controllerName: gatewaylb.io/agent}
        """,
    )
    assert [str(p) for p in snapshot.problems] == [
        f"{path}:1: GatewayClass: metadata.name: required value is missing"
    ]
    assert _warnings(snapshot) == [
        f'{path}:1: GatewayClass: metadata.nmae: unknown field "nmae" (did you mean "name"?)'
    ]


def test_core_kinds_are_checked_against_their_kubernetes_fields(tmp_path: Path) -> None:
    snapshot, path = _load(
        tmp_path,
        """\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-1
          labels: {kubernetes.io/service-name: web}
        addressType: IPv4
        endpoints:
        - addresses: [10.0.0.1]
          conditions: {ready: true, serving: true, terminating: false}
          nodeName: n1
          targetRef: {kind: Pod, name: web-1, namespace: default}
        - addresses: [10.0.0.2]
          condition: {ready: true}
        ports: [{name: http, port: 8080, protocol: TCP}]
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: cert}
        type: kubernetes.io/tls
        stringData: {tls.crt: x, tls.key: y}
        immutable: true
        dta: {}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: apps}
        spec: {finalizers: [kubernetes]}
        status: {phase: Active}
        """,
    )
    assert _warnings(snapshot) == [
        f"{path}:1: EndpointSlice default/web-1: endpoints[1].condition: "
        'unknown field "condition" (did you mean "conditions"?)',
        f'{path}:16: Secret default/cert: dta: unknown field "dta" (did you mean "data"?)',
    ]


# -- the manifests of the project and of upstream are clean -------------------------


def _manifest_dirs() -> list[Path]:
    return [
        GATEWAY_API / "conformance" / "base",
        GATEWAY_API / "conformance" / "tests",
        REPO / "examples",
        *sorted(p for p in (REPO / "tests" / "golden").iterdir() if p.is_dir()),
    ]


def test_no_unknown_field_in_conformance_examples_and_golden_manifests() -> None:
    checked = 0
    unknown: list[str] = []
    for directory in _manifest_dirs():
        paths = manifest_files(directory)
        assert paths, f"no manifest under {directory}"
        for path in paths:
            text = path.read_text().replace("{GATEWAY_CLASS_NAME}", "gatewaylb")
            for doc, source in parse_text(text, str(path)):
                if not isinstance(doc, dict):
                    continue
                kind, api_version = doc.get("kind"), doc.get("apiVersion")
                assert isinstance(kind, str) and isinstance(api_version, str), source
                unknown += [f"{source}: {u}" for u in unknown_fields(doc, kind, api_version)]
                checked += 1
    assert unknown == []
    assert checked > 500  # the conformance suite alone has that many documents


def test_conformance_manifests_warn_only_of_kinds_gatewaylb_does_not_implement() -> None:
    docs: list[tuple[object, str]] = []
    for directory in _manifest_dirs()[:2]:
        for path in manifest_files(directory):
            text = path.read_text().replace("{GATEWAY_CLASS_NAME}", "gatewaylb")
            docs += parse_text(text, path.name)
    messages = {w.message for w in build_snapshot(docs, check_fields=True).warnings}
    assert messages == set()


# -- unknown kinds --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "api_version", "expected"),
    [
        ("ListenerSet", f"{GW}/v1", None),
        ("BackendTLSPolicy", f"{GW}/v1", None),
        (
            "XBackendTrafficPolicy",
            "gateway.networking.x-k8s.io/v1alpha1",
            "kind XBackendTrafficPolicy is not supported by gatewaylb; ignored",
        ),
        (
            "TCPRout",
            f"{GW}/v1",
            'unknown kind "TCPRout" in gateway.networking.k8s.io (did you mean "TCPRoute"?); '
            "ignored",
        ),
        (
            "httproute",
            f"{GW}/v1",
            'unknown kind "httproute" in gateway.networking.k8s.io (did you mean "HTTPRoute"?); '
            "ignored",
        ),
        ("Bucket", f"{GW}/v1", 'unknown kind "Bucket" in gateway.networking.k8s.io; ignored'),
        (
            "GatewayLBConfg",
            "gatewaylb.io/v1alpha1",
            'unknown kind "GatewayLBConfg" in gatewaylb.io (did you mean "GatewayLBConfig"?); '
            "ignored",
        ),
        (
            "Gateway",
            "gateway.networking.x-k8s.io/v1alpha1",
            "kind Gateway is not in gateway.networking.x-k8s.io but in "
            "gateway.networking.k8s.io; ignored",
        ),
        (
            "Servce",
            "v1",
            'unknown kind "Servce" in the core API group (did you mean "Service"?); ignored',
        ),
        (
            "EndpointSlices",
            "discovery.k8s.io/v1",
            'unknown kind "EndpointSlices" in discovery.k8s.io '
            '(did you mean "EndpointSlice"?); ignored',
        ),
        (
            "Gateway",
            "gateway.networking.k8s.i0/v1",
            'kind Gateway: unknown API group "gateway.networking.k8s.i0" '
            '(did you mean "gateway.networking.k8s.io"?); ignored',
        ),
        # Not ours to read: other APIs, and real kinds that only look like ours.
        ("Deployment", "apps/v1", None),
        ("ConfigMap", "v1", None),
        ("ServiceAccount", "v1", None),
        ("Endpoints", "v1", None),
        ("Gateway", "networking.istio.io/v1", None),
        ("Service", "serving.knative.dev/v1", None),
        # Ours: parse_object judges the version.
        ("Gateway", f"{GW}/v1", None),
        ("Gateway", f"{GW}/v2", None),
    ],
)
def test_unknown_kind_problem(kind: str, api_version: str, expected: str | None) -> None:
    assert unknown_kind_problem(kind, api_version, SERVED_VERSIONS) == expected


def test_golden_unknown_kinds_warns_only_of_the_gateway_api_kind() -> None:
    directory = REPO / "tests" / "golden" / "unknown-kinds"
    snapshot = load_directory(directory)
    assert [(Path(w.source).name, w.message) for w in snapshot.warnings] == [
        ("manifests.yaml:22", "kind XBackendTrafficPolicy is not supported by gatewaylb; ignored")
    ]


# -- the walker -----------------------------------------------------------------------


def _route(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GW}/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}, "spec": spec}


def _object_positions(value: object, node: _Node, path: str) -> list[tuple[dict[Any, Any], str]]:
    """Every object in `value` that the schema describes, with its path."""
    if not isinstance(value, dict):
        return []
    found = [(value, path)]
    for key, child in value.items():
        sub = node.children.get(key)
        at = f"{path}.{key}" if path else key
        if sub is None:
            continue
        for i, item in enumerate(child) if isinstance(child, list) else [(None, child)]:
            found += _object_positions(item, sub, at if i is None else f"{at}[{i}]")
    return found


def test_a_misspelt_field_is_found_at_every_depth_of_real_manifests() -> None:
    # The walk has a fast path that only says whether an object is clean; an
    # unknown field put in every object of the conformance manifests must be
    # caught by it and named by the full walk.
    positions = 0
    for path in manifest_files(GATEWAY_API / "conformance" / "tests"):
        text = path.read_text().replace("{GATEWAY_CLASS_NAME}", "gatewaylb")
        for doc, source in parse_text(text, path.name):
            assert isinstance(doc, dict)
            kind, api_version = doc["kind"], doc["apiVersion"]
            node = _known().nodes.get((kind, api_version))
            if node is None:
                continue
            for obj, at in _object_positions(doc, node, ""):
                obj["zzBogus"] = 1
                expected = UnknownField(f"{at}.zzBogus" if at else "zzBogus", "zzBogus")
                assert unknown_fields(doc, kind, api_version) == [expected], source
                del obj["zzBogus"]
                positions += 1
    assert positions > 3000


def test_hints_only_for_close_names_of_the_same_object() -> None:
    doc = _route(
        {
            "parentRefs": [{"name": "gw", "SectionName": "a", "port": 80, "prot": 1}],
            "hostname": ["a.example"],
            "frobnicate": True,
        }
    )
    assert unknown_fields(doc, "HTTPRoute", f"{GW}/v1") == [
        UnknownField("spec.hostname", "hostname", "hostnames"),
        UnknownField("spec.frobnicate", "frobnicate", None),
        UnknownField("spec.parentRefs[0].SectionName", "SectionName", "sectionName"),
        UnknownField("spec.parentRefs[0].prot", "prot", "port"),
    ]
    assert str(UnknownField("spec.frobnicate", "frobnicate")) == (
        'spec.frobnicate: unknown field "frobnicate"'
    )


def test_experimental_channel_fields_are_known() -> None:
    # sessionPersistence and retry are experimental-channel fields of HTTPRoute v1.
    doc = _route({"rules": [{"retry": {"attempts": 2}, "sessionPersistence": {"type": "Cookie"}}]})
    assert unknown_fields(doc, "HTTPRoute", f"{GW}/v1") == []


def test_every_kind_and_version_gatewaylb_reads_has_a_field_tree() -> None:
    for kind, (group, versions) in SERVED_VERSIONS.items():
        for version in versions:
            api_version = f"{group}/{version}" if group else version
            doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "bogus": 1}
            assert unknown_fields(doc, kind, api_version) == [UnknownField("bogus", "bogus")], (
                kind,
                api_version,
            )


def test_kinds_and_versions_without_a_tree_give_nothing() -> None:
    assert unknown_fields({"bogus": 1}, "Deployment", "apps/v1") == []
    assert unknown_fields({"bogus": 1}, "Gateway", f"{GW}/v2") == []


def test_at_most_twenty_unknown_fields_per_object() -> None:
    doc = _route({f"field{i:02}": i for i in range(50)})
    found = unknown_fields(doc, "HTTPRoute", f"{GW}/v1")
    assert MAX_UNKNOWN_FIELDS == 20
    assert [u.path for u in found] == [f"spec.field{i:02}" for i in range(20)]


def test_bad_shapes_are_left_to_the_parser() -> None:
    doc = _route(
        {
            "parentRefs": "gw",  # a string where an array belongs
            "rules": [None, 3, "x", [{"bogus": 1}], {"matches": {"path": {"typo": 1}}}],
            80: "a key that is not a string",
        }
    )
    assert unknown_fields(doc, "HTTPRoute", f"{GW}/v1") == [
        UnknownField("spec.80", "80", None),
        # An object where an array belongs is checked like the array's element.
        UnknownField("spec.rules[4].matches.path.typo", "typo", "type"),
    ]
    assert unknown_fields("not an object", "HTTPRoute", f"{GW}/v1") == []  # type: ignore[arg-type]


def test_hostile_documents_neither_raise_nor_take_long() -> None:
    # Deep nesting along a known path and below it.
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"path": deep, "matches": [deep]}
    nested_list: list[Any] = []
    for _ in range(100_000):
        nested_list = [nested_list]
    # YAML aliases: one list repeated in every element of another (10^12 paths).
    headers = [{"name": "a", "value": "b"}] * 10_000
    matches = [{"headers": headers}] * 10_000
    rules = [{"matches": matches}] * 10_000
    # A cycle, as an anchor inside itself builds.
    cyclic: dict[str, Any] = {"name": "gw"}
    cyclic["parentRefs"] = [cyclic]
    for spec in (
        {"rules": [{"matches": [deep]}]},
        {"rules": [deep]},
        {"parentRefs": nested_list},
        {"rules": rules},
        {"parentRefs": [cyclic]},
        deep,
    ):
        found = unknown_fields(_route(spec), "HTTPRoute", f"{GW}/v1")
        assert len(found) <= MAX_UNKNOWN_FIELDS
        snapshot = build_snapshot([(_route(spec), "hostile.yaml:1")], check_fields=True)
        assert len(snapshot.warnings) <= MAX_UNKNOWN_FIELDS
    assert unknown_fields(_route({"parentRefs": [cyclic]}), "HTTPRoute", f"{GW}/v1") == [
        UnknownField("spec.parentRefs[0].parentRefs", "parentRefs", None)
    ]


# -- wiring: which sources warn ------------------------------------------------------------


def test_warnings_change_nothing_else_in_the_snapshot(tmp_path: Path) -> None:
    docs = parse_text(ROUTE.replace("backendRefs", "backendRef"), "m.yaml")
    checked = build_snapshot(docs, check_fields=True)
    unchecked = build_snapshot(docs)
    assert unchecked.warnings == ()
    assert len(checked.warnings) == 2
    builder = SnapshotBuilder(check_fields=True)
    builder.add_documents(docs)
    assert builder.build() == checked
    assert Snapshot(**{**_fields(checked), "warnings": ()}) == unchecked


def _fields(snapshot: Snapshot) -> dict[str, Any]:
    return {name: getattr(snapshot, name) for name in Snapshot.__dataclass_fields__}


def test_watched_directory_and_file_source_keep_warnings_apart_from_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ROUTE)
    (tmp_path / "b.yaml").write_text("kind: [unclosed\n")
    (tmp_path / "c.yaml").write_text(ROUTE)  # a duplicate: a problem
    hint = 'unknown field "sectionNmae" (did you mean "sectionName"?)'
    warning = f"TCPRoute apps/db: spec.parentRefs[0].sectionNmae: {hint}"
    expected = [f"{tmp_path}/a.yaml:1: {warning}", f"{tmp_path}/c.yaml:1: {warning}"]
    assert _warnings(ManifestDirectory(tmp_path).scan()) == expected

    source = FileSource(tmp_path)
    try:
        snapshot = source.snapshot()
        errors = source.errors()
    finally:
        source.close()
    assert _warnings(snapshot) == expected
    # errors() is what cannot be used; the daemon reports the warnings apart.
    assert errors == [
        f"{tmp_path}/b.yaml:2: did not find expected ',' or ']'",
        f"{tmp_path}/c.yaml:1: duplicate TCPRoute apps/db (first defined at {tmp_path}/a.yaml:1)",
    ]


# -- the generated file ---------------------------------------------------------------------


def _generator() -> ModuleType:
    return load_script(REPO / "scripts" / "gen-known-fields.py", "gen_known_fields")


def test_known_fields_json_is_what_the_generator_writes() -> None:
    assert (GATEWAY_API / "crds" / "standard").is_dir(), f"{GATEWAY_API} is missing"
    generator = _generator()
    committed = (REPO / "agent" / "model" / "known_fields.json").read_text(encoding="utf-8")
    assert generator.generate() == committed, (
        "agent/model/known_fields.json is stale: run .venv/bin/python scripts/gen-known-fields.py"
    )
