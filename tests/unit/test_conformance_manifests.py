"""The upstream conformance manifests (Gateway API v1.6.1) through translate.

Each case loads conformance/base/manifests.yaml plus one test's manifest, with
`{GATEWAY_CLASS_NAME}` substituted and our GatewayClass added, together with
the certificate Secrets the suite creates at setup, and checks what the Go test
asserts that can be checked without traffic: listener counts, supportedKinds,
attachedRoutes and condition types/statuses/reasons (see /tmp/research.md §1).

The Gateways in these manifests have no spec.addresses; until IPAM exists they
are Programmed=False/AddressNotAssigned, so Programmed is only checked in cases
that give each Gateway a static address (`addresses=True`), as IPAM would.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import CONTROLLER, GW_GROUP, gateway_class, secret

from agent.model.snapshot import build_snapshot
from agent.translate import Translation, translate

# shared/ sits beside the repository (in CI too): ../shared/gateway-api.
ROOT = Path(__file__).resolve().parents[3] / "shared" / "gateway-api" / "conformance"
BASE = ROOT / "base" / "manifests.yaml"
TESTS = ROOT / "tests"
INFRA = "gateway-conformance-infra"
WEB = "gateway-conformance-web-backend"
APP = "gateway-conformance-app-backend"
CLASS = "gatewaylb"
SKIP_READINESS = "gateway-api/skip-this-for-readiness"

pytestmark = pytest.mark.skipif(not TESTS.is_dir(), reason=f"{TESTS} is not present")

# Secrets conformance/utils/suite/suite.go creates in Setup (any well-formed
# certificate does for status purposes).
SUITE_SECRETS = [
    (WEB, "certificate"),
    (INFRA, "tls-validity-checks-certificate"),
    (INFRA, "tls-checks-certificate"),
    (INFRA, "tls-passthrough-checks-certificate"),
    (APP, "tls-passthrough-checks-certificate"),
    (INFRA, "tls-terminate-checks-certificate"),
]

# CA ConfigMaps the suite creates in Setup (ca.crt with a real CA certificate:
# gatewaylb loads CA bundles with the TLS library before using them).
SUITE_CA_CONFIG_MAPS = [
    (INFRA, "tls-validity-checks-ca-certificate"),
    (INFRA, "tls-validity-checks-per-port-ca-certificate"),
    (INFRA, "tls-checks-ca-certificate"),
    (INFRA, "mismatch-ca-certificate"),
    (WEB, "web-backend-cm"),
]

Doc = dict[str, Any]
Mutation = Callable[[list[Doc]], None]


@functools.cache
def ca_certificate() -> str:
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=suite-ca",
             "-keyout", f"{d}/k.pem", "-out", f"{d}/c.pem"],
            check=True, capture_output=True,
        )  # fmt: skip
        return Path(f"{d}/c.pem").read_text()


def ca_config_map(name: str, namespace: str) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"ca.crt": ca_certificate()},
    }


def _read(path: Path) -> list[Doc]:
    text = path.read_text().replace("{GATEWAY_CLASS_NAME}", CLASS)
    text = text.replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER)
    return [d for d in yaml.safe_load_all(text) if d]


@functools.cache
def _documents(test_file: str) -> tuple[Doc, ...]:
    docs = [gateway_class(CLASS), *_read(BASE)]
    if test_file:
        docs += _read(TESTS / f"{test_file}.yaml")
    docs += [secret(name, namespace=ns) for ns, name in SUITE_SECRETS]
    docs += [ca_config_map(name, ns) for ns, name in SUITE_CA_CONFIG_MAPS]
    return tuple(docs)


def _assign_addresses(docs: list[Doc]) -> None:
    """A distinct static VIP for every Gateway that has none (what IPAM would do)."""
    n = 0
    for doc in docs:
        if doc.get("kind") == "Gateway" and not doc["spec"].get("addresses"):
            n += 1
            doc["spec"]["addresses"] = [{"type": "IPAddress", "value": f"198.51.100.{n}"}]


def load(test_file: str, *mutations: Mutation, addresses: bool = False) -> Translation:
    docs = copy.deepcopy(list(_documents(test_file)))
    for mutate in mutations:
        mutate(docs)
    if addresses:
        _assign_addresses(docs)
    return translate(
        build_snapshot((d, f"{test_file}#{i}") for i, d in enumerate(docs)),
        controller_name=CONTROLLER,
    )


def _find(docs: list[Doc], kind: str, name: str, namespace: str = INFRA) -> Doc:
    for d in docs:
        meta = d.get("metadata", {})
        if (
            d.get("kind") == kind
            and meta.get("name") == name
            and (kind == "GatewayClass" or meta.get("namespace", "default") == namespace)
        ):
            return d
    raise AssertionError(f"no {kind} {namespace}/{name} in the manifests")


# -- expectations ---------------------------------------------------------------------------

# (type, status, reason); reason "" means any reason, as in the Go helpers.
Cond = tuple[str, bool, str]
ACCEPTED: Cond = ("Accepted", True, "Accepted")
RESOLVED: Cond = ("ResolvedRefs", True, "ResolvedRefs")
L_ACCEPTED: Cond = ("Accepted", True, "")
L_RESOLVED: Cond = ("ResolvedRefs", True, "")
L_PROGRAMMED: Cond = ("Programmed", True, "")


@dataclass(frozen=True)
class L:
    """A listener status; kinds None means supportedKinds must be empty."""

    name: str
    kinds: tuple[str, ...] | None
    attached: int
    conds: tuple[Cond, ...] = ()


@dataclass(frozen=True)
class GW:
    name: str
    conds: tuple[Cond, ...] = ()
    # The listeners exactly (count and names), or None to leave them unchecked.
    listeners: tuple[L, ...] | None = None
    zero_routes: bool = False  # GatewayMustHaveZeroRoutes
    namespace: str = INFRA


@dataclass(frozen=True)
class R:
    kind: str
    name: str
    gateway: str
    conds: tuple[Cond, ...]
    namespace: str = INFRA
    no_accepted_parents: bool = False  # *RouteMustHaveNoAcceptedParents


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    gateways: tuple[GW, ...] = ()
    routes: tuple[R, ...] = ()
    mutations: tuple[Mutation, ...] = ()
    addresses: bool = False
    skip: str | None = None
    extra: Callable[[Translation], None] | None = None
    tags: tuple[str, ...] = field(default=())


def _conds_match(actual: list[Doc], expected: tuple[Cond, ...], what: str) -> None:
    for type_, status, reason in expected:
        found = [
            c
            for c in actual
            if c["type"] == type_
            and c["status"] == ("True" if status else "False")
            and (not reason or c["reason"] == reason)
        ]
        shown = [(c["type"], c["status"], c["reason"]) for c in actual]
        assert found, f"{what}: expected {type_}={status}/{reason or '*'} in {shown}"


def _status(tr: Translation, kind: str, name: str, namespace: str) -> Doc:
    obj = tr.status.find(kind, namespace, name)
    assert obj is not None, f"no status for {kind} {namespace}/{name}"
    st: Doc = obj.to_dict()["status"]
    gen = obj.generation
    conditions = list(st.get("conditions", []))
    for ls in st.get("listeners", ()):
        conditions += ls["conditions"]
    for p in st.get("parents", ()):
        conditions += p["conditions"]
    stale = [c for c in conditions if c["observedGeneration"] != gen]
    assert not stale, f"{kind} {name}: conditions not at generation {gen}: {stale}"
    return st


def check_gateway(tr: Translation, gw: GW) -> None:
    st = _status(tr, "Gateway", gw.name, gw.namespace)
    _conds_match(st["conditions"], gw.conds, f"Gateway {gw.name}")
    actual = {ls["name"]: ls for ls in st["listeners"]}
    if gw.listeners is not None:
        assert sorted(actual) == sorted(ls.name for ls in gw.listeners), gw.name
        for want in gw.listeners:
            got = actual[want.name]
            what = f"Gateway {gw.name} listener {want.name}"
            kinds = [(k["group"], k["kind"]) for k in got["supportedKinds"]]
            if want.kinds is None:
                assert kinds == [], f"{what}: supportedKinds must be empty, got {kinds}"
            else:
                for kind in want.kinds:
                    assert (GW_GROUP, kind) in kinds, f"{what}: {kind} not in {kinds}"
            assert got["attachedRoutes"] == want.attached, f"{what}: attachedRoutes"
            _conds_match(got["conditions"], want.conds, what)
    if gw.zero_routes:
        listeners = st["listeners"]
        assert not listeners or (len(listeners) == 1 and listeners[0]["attachedRoutes"] == 0)


def check_route(tr: Translation, r: R) -> None:
    st = _status(tr, r.kind, r.name, r.namespace)
    mine = [
        p
        for p in st["parents"]
        if p["parentRef"]["name"] == r.gateway
        and p["parentRef"].get("namespace", r.namespace) == INFRA
    ]
    assert mine, f"{r.kind} {r.name}: no parent for Gateway {r.gateway}"
    for p in mine:
        ref = p["parentRef"]
        # The suite compares group and kind as explicit values, and the
        # namespace too whenever it is set or required.
        assert (ref["group"], ref["kind"], ref.get("namespace")) == (GW_GROUP, "Gateway", INFRA)
        assert p["controllerName"] == CONTROLLER
    conds = [c for p in mine for c in p["conditions"]]
    _conds_match(conds, r.conds, f"{r.kind} {r.namespace}/{r.name}")
    if r.no_accepted_parents:
        assert len(st["parents"]) == 1, "must have exactly one parent, not accepted"
        _conds_match(st["parents"][0]["conditions"], (("Accepted", False, ""),), r.name)


# -- mutations the Go tests apply -------------------------------------------------------------


def add_listener(gateway: str, listener: Doc, generation: int = 2) -> Mutation:
    def mutate(docs: list[Doc]) -> None:
        gw = _find(docs, "Gateway", gateway)
        gw["spec"]["listeners"].append(listener)
        gw["metadata"]["generation"] = generation

    return mutate


def keep_listeners(gateway: str, *names: str, generation: int = 2) -> Mutation:
    def mutate(docs: list[Doc]) -> None:
        gw = _find(docs, "Gateway", gateway)
        gw["spec"]["listeners"] = [ls for ls in gw["spec"]["listeners"] if ls["name"] in names]
        gw["metadata"]["generation"] = generation

    return mutate


def set_addresses(gateway: str, *values: Doc) -> Mutation:
    def mutate(docs: list[Doc]) -> None:
        _find(docs, "Gateway", gateway)["spec"]["addresses"] = list(values)

    return mutate


def delete(kind: str, name: str, namespace: str) -> Mutation:
    def mutate(docs: list[Doc]) -> None:
        docs.remove(_find(docs, kind, name, namespace))

    return mutate


def newer_copy(kind: str, older: str, newer: str, backend: str) -> Mutation:
    """The test creates a second route one second after the first."""

    def mutate(docs: list[Doc]) -> None:
        old = _find(docs, kind, older)
        old["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
        new = copy.deepcopy(old)
        new["metadata"]["name"] = newer
        new["metadata"]["creationTimestamp"] = "2025-01-01T00:00:01Z"
        new["spec"]["rules"][0]["backendRefs"][0]["name"] = backend
        docs.append(new)

    return mutate


def bump_class_generation(docs: list[Doc]) -> None:
    gc = _find(docs, "GatewayClass", "gatewayclass-observed-generation-bump")
    gc["spec"]["description"] = "bumped"
    gc["metadata"]["generation"] = 2


def only_older_route_carries_traffic(kind: str, older: str) -> Callable[[Translation], None]:
    def check(tr: Translation) -> None:
        sources = {f.source.route for f in tr.desired.l4 if f.source.listener in ("tcp", "udp")}
        assert f"{INFRA}/{older}" in sources
        assert not any(s.endswith("-newer") for s in sources)

    return check


# -- the cases ----------------------------------------------------------------------------------

HTTP_L_OK = (L_ACCEPTED, L_RESOLVED)
STATIC_USABLE = {"type": "IPAddress", "value": "198.51.100.200"}
STATIC_UNUSABLE = {"type": "IPAddress", "value": "0.0.0.0"}
STATIC_INVALID = {"type": "test/fake-invalid-type", "value": "fake address teehee!"}

CASES: list[Case] = [
    # ---- Gateway -----------------------------------------------------------------------------
    Case(
        "GatewayListenerUnsupportedProtocol",
        "gateway-invalid-listeners-unsupported-protocol",
        gateways=(
            GW(
                "gateway-only-unsupported-protocols",
                (("Accepted", False, "ListenersNotValid"),),
                (L("invalid", None, 0, (("Accepted", False, "UnsupportedProtocol"),)),),
            ),
            GW(
                "gateway-supported-and-unsupported-protocols",
                (("Accepted", True, "ListenersNotValid"),),
                (
                    L("http", ("HTTPRoute",), 0, (("Accepted", True, "Accepted"),)),
                    L("invalid", None, 0, (("Accepted", False, "UnsupportedProtocol"),)),
                ),
            ),
        ),
    ),
    Case(
        "GatewayInvalidRouteKind",
        "gateway-invalid-route-kind",
        gateways=(
            GW(
                "gateway-only-invalid-route-kind",
                listeners=(L("http", None, 0, (("ResolvedRefs", False, "InvalidRouteKinds"),)),),
            ),
            GW(
                "gateway-supported-and-invalid-route-kind",
                listeners=(
                    L("http", ("HTTPRoute",), 0, (("ResolvedRefs", False, "InvalidRouteKinds"),)),
                ),
            ),
        ),
    ),
    Case(
        "GatewayInvalidTLSConfiguration",
        "gateway-invalid-tls-configuration",
        gateways=tuple(
            GW(
                f"gateway-certificate-{what}",
                listeners=(
                    L(
                        "https",
                        ("HTTPRoute",),
                        0,
                        (("ResolvedRefs", False, "InvalidCertificateRef"),),
                    ),
                ),
            )
            for what in (
                "nonexistent-secret",
                "unsupported-group",
                "unsupported-kind",
                "malformed-secret",
            )
        ),
    ),
    Case(
        "GatewaySecretInvalidReferenceGrant",
        "gateway-secret-invalid-reference-grant",
        gateways=(
            GW(
                "gateway-secret-invalid-reference-grant",
                listeners=(
                    L("https", ("HTTPRoute",), 0, (("ResolvedRefs", False, "RefNotPermitted"),)),
                ),
            ),
        ),
    ),
    Case(
        "GatewaySecretMissingReferenceGrant",
        "gateway-secret-missing-reference-grant",
        gateways=(
            GW(
                "gateway-secret-missing-reference-grant",
                listeners=(
                    L("https", ("HTTPRoute",), 0, (("ResolvedRefs", False, "RefNotPermitted"),)),
                ),
            ),
        ),
    ),
    Case(
        "GatewaySecretReferenceGrantAllInNamespace",
        "gateway-secret-reference-grant-all-in-namespace",
        addresses=True,
        gateways=(
            GW(
                "gateway-secret-reference-grant-all-in-namespace",
                listeners=(
                    L(
                        "https",
                        ("HTTPRoute",),
                        0,
                        (("Programmed", True, "Programmed"), L_RESOLVED, L_ACCEPTED),
                    ),
                ),
            ),
        ),
    ),
    Case(
        "GatewaySecretReferenceGrantSpecific",
        "gateway-secret-reference-grant-specific",
        addresses=True,
        gateways=(
            GW(
                "gateway-secret-reference-grant-specific",
                listeners=(
                    L(
                        "https",
                        ("HTTPRoute",),
                        0,
                        (("Programmed", True, "Programmed"), L_RESOLVED, L_ACCEPTED),
                    ),
                ),
            ),
        ),
    ),
    Case(
        "GatewayModifyListeners-add",
        "gateway-modify-listeners",
        addresses=True,
        mutations=(
            add_listener(
                "gateway-add-listener",
                {
                    "name": "http",
                    "port": 80,
                    "protocol": "HTTP",
                    "hostname": "data.test.com",
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                },
            ),
        ),
        gateways=(
            GW(
                "gateway-add-listener",
                (("Accepted", True, ""), ("Programmed", True, "")),
                (L("https", ("HTTPRoute",), 1, HTTP_L_OK), L("http", ("HTTPRoute",), 1, HTTP_L_OK)),
            ),
        ),
    ),
    Case(
        "GatewayModifyListeners-remove",
        "gateway-modify-listeners",
        addresses=True,
        mutations=(keep_listeners("gateway-remove-listener", "http"),),
        gateways=(
            GW(
                "gateway-remove-listener",
                (("Accepted", True, ""), ("Programmed", True, "")),
                (L("http", ("HTTPRoute",), 1, HTTP_L_OK),),
            ),
        ),
    ),
    Case(
        "GatewayStaticAddresses-invalid-type",
        "gateway-static-addresses",
        mutations=(
            set_addresses(
                "gateway-static-addresses", STATIC_INVALID, STATIC_UNUSABLE, STATIC_USABLE
            ),
        ),
        gateways=(GW("gateway-static-addresses", (("Accepted", False, "UnsupportedAddress"),)),),
    ),
    Case(
        "GatewayStaticAddresses-unusable",
        "gateway-static-addresses",
        mutations=(set_addresses("gateway-static-addresses", STATIC_UNUSABLE, STATIC_USABLE),),
        gateways=(
            GW(
                "gateway-static-addresses",
                (("Accepted", True, "Accepted"), ("Programmed", False, "AddressNotUsable")),
            ),
        ),
    ),
    Case(
        "GatewayStaticAddresses-usable",
        "gateway-static-addresses",
        mutations=(set_addresses("gateway-static-addresses", STATIC_USABLE),),
        gateways=(
            GW(
                "gateway-static-addresses",
                (("Accepted", True, "Accepted"), ("Programmed", True, "Programmed")),
                (L("http", ("HTTPRoute",), 0, HTTP_L_OK),),
            ),
        ),
        extra=lambda tr: _assert_addresses(tr, "gateway-static-addresses", [STATIC_USABLE]),
    ),
    Case(
        "GatewayOptionalAddressValue",
        "gateway-optional-address-value",
        skip="needs IPAM: spec.addresses [{type: IPAddress}] without a value "
        "(GatewayAddressEmpty, provisional) is AddressNotAssigned for now",
    ),
    Case(
        "GatewayInvalidParametersRef",
        "gateway-invalid-parameters-ref",
        gateways=(
            GW("gateway-invalid-parameters-ref", (("Accepted", False, "InvalidParameters"),)),
        ),
    ),
    Case(
        "GatewayWithAttachedRoutes",
        "gateway-with-attached-routes",
        gateways=(
            GW(
                "gateway-with-one-attached-route",
                listeners=(L("http", ("HTTPRoute",), 1, HTTP_L_OK),),
            ),
            GW(
                "gateway-with-two-attached-routes",
                listeners=(L("http", ("HTTPRoute",), 2, HTTP_L_OK),),
            ),
            GW(
                "unresolved-gateway-with-one-attached-unresolved-route",
                listeners=(
                    L(
                        "tls",
                        ("HTTPRoute",),
                        1,
                        (("Programmed", False, ""), ("ResolvedRefs", False, "")),
                    ),
                ),
            ),
        ),
        routes=(
            R(
                "HTTPRoute",
                "http-route-not-accepted",
                "gateway-with-two-attached-routes",
                (("Accepted", False, "NoMatchingListenerHostname"),),
            ),
            R(
                "HTTPRoute",
                "http-route-4",
                "unresolved-gateway-with-one-attached-unresolved-route",
                (("ResolvedRefs", False, ""),),
            ),
        ),
    ),
    Case(
        "GatewayWithAttachedRoutesWithPort8080",
        "gateway-with-attached-routes-with-port-8080",
        gateways=(
            GW(
                "gateway-with-two-listeners-and-one-attached-route",
                listeners=(
                    L("http-unattached", ("HTTPRoute",), 0, HTTP_L_OK),
                    L("http", ("HTTPRoute",), 1, HTTP_L_OK),
                ),
            ),
        ),
    ),
    Case(
        "GatewayObservedGenerationBump",
        "gateway-observed-generation-bump",
        addresses=True,
        mutations=(
            add_listener(
                "gateway-observed-generation-bump",
                {"name": "alternate", "port": 80, "protocol": "HTTP", "hostname": "foo.com"},
            ),
        ),
        gateways=(
            GW(
                "gateway-observed-generation-bump",
                (("Accepted", True, ""), ("Programmed", True, "")),
            ),
        ),
    ),
    Case(
        "GatewayClassObservedGenerationBump",
        "gatewayclass-observed-generation-bump",
        mutations=(bump_class_generation,),
        extra=lambda tr: _assert_class_accepted(tr, "gatewayclass-observed-generation-bump", 2),
    ),
    # ---- HTTPRoute status (HTTP features themselves belong to a later issue) ---------------
    Case(
        "HTTPRouteInvalidCrossNamespaceBackendRef",
        "httproute-invalid-cross-namespace-backend-ref",
        gateways=(GW("same-namespace", listeners=(L("http", ("HTTPRoute",), 1, HTTP_L_OK),)),),
        routes=(
            R(
                "HTTPRoute",
                "invalid-cross-namespace-backend-ref",
                "same-namespace",
                (ACCEPTED, ("ResolvedRefs", False, "RefNotPermitted")),
            ),
        ),
    ),
    Case(
        "HTTPRouteInvalidNonExistentBackendRef",
        "httproute-invalid-nonexistent-backendref",
        routes=(
            R(
                "HTTPRoute",
                "invalid-nonexistent-backend-ref",
                "same-namespace",
                (ACCEPTED, ("ResolvedRefs", False, "BackendNotFound")),
            ),
        ),
    ),
    Case(
        "HTTPRouteInvalidBackendRefUnknownKind",
        "httproute-invalid-backendref-unknown-kind",
        routes=(
            R(
                "HTTPRoute",
                "invalid-backend-ref-unknown-kind",
                "same-namespace",
                (ACCEPTED, ("ResolvedRefs", False, "InvalidKind")),
            ),
        ),
    ),
    Case(
        "HTTPRouteInvalidCrossNamespaceParentRef",
        "httproute-invalid-cross-namespace-parent-ref",
        gateways=(GW("same-namespace", zero_routes=True),),
        routes=(
            R(
                "HTTPRoute",
                "invalid-cross-namespace-parent-ref",
                "same-namespace",
                (RESOLVED, ("Accepted", False, "NotAllowedByListeners")),
                namespace=WEB,
                no_accepted_parents=True,
            ),
        ),
    ),
    Case(
        "HTTPRouteInvalidParentRefNotMatchingListenerPort",
        "httproute-invalid-parentref-not-matching-listener-port",
        gateways=(GW("same-namespace", zero_routes=True),),
        routes=(
            R(
                "HTTPRoute",
                "httproute-listener-not-matching-route-port",
                "same-namespace",
                (RESOLVED, ("Accepted", False, "NoMatchingParent")),
                no_accepted_parents=True,
            ),
        ),
    ),
    Case(
        "HTTPRouteInvalidParentRefNotMatchingSectionName",
        "httproute-invalid-parentref-not-matching-section-name",
        gateways=(GW("same-namespace", zero_routes=True),),
        routes=(
            R(
                "HTTPRoute",
                "httproute-listener-not-matching-section-name",
                "same-namespace",
                (("Accepted", False, "NoMatchingParent"),),
                no_accepted_parents=True,
            ),
        ),
    ),
    Case(
        "HTTPRouteInvalidParentRefSectionNameNotMatchingPort",
        "httproute-invalid-parentref-section-name-not-matching-port",
        gateways=(
            GW("gateway-with-one-not-matching-port-and-section-name-route", zero_routes=True),
        ),
        routes=(
            R(
                "HTTPRoute",
                "httproute-listener-section-name-not-matching-port",
                "gateway-with-one-not-matching-port-and-section-name-route",
                (("Accepted", False, "NoMatchingParent"),),
                no_accepted_parents=True,
            ),
        ),
    ),
    Case(
        "HTTPRouteInvalidReferenceGrant",
        "httproute-invalid-reference-grant",
        routes=(
            R(
                "HTTPRoute",
                "reference-grant",
                "same-namespace",
                (ACCEPTED, ("ResolvedRefs", False, "RefNotPermitted")),
            ),
        ),
    ),
    Case(
        "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant",
        "httproute-partially-invalid-via-invalid-reference-grant",
        routes=(
            R(
                "HTTPRoute",
                "invalid-reference-grant",
                "same-namespace",
                (ACCEPTED, ("ResolvedRefs", False, "RefNotPermitted")),
            ),
        ),
    ),
    Case(
        "HTTPRouteHostnameIntersection",
        "httproute-hostname-intersection",
        gateways=(
            GW(
                "httproute-hostname-intersection",
                listeners=(
                    L("listener-1", ("HTTPRoute",), 2, HTTP_L_OK),
                    L("listener-2", ("HTTPRoute",), 1, HTTP_L_OK),
                    L("listener-3", ("HTTPRoute",), 1, HTTP_L_OK),
                ),
            ),
        ),
        routes=(
            *(
                R("HTTPRoute", name, "httproute-hostname-intersection", (ACCEPTED, RESOLVED))
                for name in (
                    "specific-host-matches-listener-specific-host",
                    "specific-host-matches-listener-wildcard-host",
                    "wildcard-host-matches-listener-specific-host",
                    "wildcard-host-matches-listener-wildcard-host",
                )
            ),
            R(
                "HTTPRoute",
                "no-intersecting-hosts",
                "httproute-hostname-intersection",
                (("Accepted", False, "NoMatchingListenerHostname"),),
            ),
            R(
                "HTTPRoute",
                "httproute-hostname-intersection-all",
                "httproute-hostname-intersection-all",
                (ACCEPTED, RESOLVED),
            ),
        ),
    ),
    Case(
        "HTTPRouteListenerHostnameMatching",
        "httproute-listener-hostname-matching",
        gateways=(
            GW(
                "httproute-listener-hostname-matching",
                listeners=tuple(
                    L(f"listener-{i}", ("HTTPRoute",), 1, HTTP_L_OK) for i in range(1, 5)
                ),
            ),
        ),
        routes=tuple(
            R("HTTPRoute", name, "httproute-listener-hostname-matching", (ACCEPTED, RESOLVED))
            for name in ("backend-v1", "backend-v2", "backend-v3")
        ),
    ),
    # ---- TCPRoute ------------------------------------------------------------------------------
    Case(
        "TCPRouteInvalidBackendRefNonexistent",
        "tcproute-invalid-backendref-nonexistent",
        routes=(
            R(
                "TCPRoute",
                "tcp-route-invalid-backend-ref-nonexistent",
                "tcp-gateway-invalid-backend",
                (("ResolvedRefs", False, "BackendNotFound"),),
            ),
        ),
    ),
    Case(
        "TCPRouteInvalidCrossNamespaceBackendRef",
        "tcproute-invalid-cross-namespace-backend-ref",
        addresses=True,
        gateways=(
            GW(
                "tcp-invalid-cross-namespace-backend-ref-gateway",
                listeners=(L("tcp", ("TCPRoute",), 1, (*HTTP_L_OK, L_PROGRAMMED)),),
            ),
        ),
        routes=(
            R(
                "TCPRoute",
                "tcp-invalid-cross-namespace-backend-ref",
                "tcp-invalid-cross-namespace-backend-ref-gateway",
                (ACCEPTED, ("ResolvedRefs", False, "RefNotPermitted")),
            ),
        ),
    ),
    Case(
        "TCPRouteInvalidNonTCPListener",
        "tcproute-invalid-non-tcp-listener",
        gateways=(GW("tcp-mixed-protocol-gateway", zero_routes=True),),
        routes=(
            R(
                "TCPRoute",
                "tcp-route",
                "tcp-mixed-protocol-gateway",
                (("Accepted", False, "NotAllowedByListeners"),),
            ),
        ),
    ),
    Case(
        "TCPRouteMultipleRoutesAttachment",
        "tcproute-multiple-routes-attachment",
        addresses=True,
        mutations=(
            newer_copy(
                "TCPRoute", "tcproute-attach-older", "tcproute-attach-newer", "tcp-attach-backend-2"
            ),
        ),
        gateways=(
            GW(
                "tcp-multi-route-attach-gateway",
                listeners=(L("tcp", ("TCPRoute",), 2, (("Accepted", True, "Accepted"),)),),
            ),
        ),
        routes=(
            R("TCPRoute", "tcproute-attach-older", "tcp-multi-route-attach-gateway", (ACCEPTED,)),
            R("TCPRoute", "tcproute-attach-newer", "tcp-multi-route-attach-gateway", (ACCEPTED,)),
        ),
        extra=only_older_route_carries_traffic("TCPRoute", "tcproute-attach-older"),
    ),
    Case(
        "TCPRouteParentRefAttachAll",
        "tcproute-parentref-attach-all",
        gateways=(
            GW(
                "tcp-attach-all-gateway",
                listeners=tuple(
                    L(n, ("TCPRoute",), 1, HTTP_L_OK) for n in ("one", "two", "three", "four")
                ),
            ),
        ),
        routes=(R("TCPRoute", "tcp-route-attach-all", "tcp-attach-all-gateway", (ACCEPTED,)),),
    ),
    Case(
        "TCPRouteParentRefPortAndSectionName",
        "tcproute-parentref-port-and-section-name",
        routes=tuple(
            R("TCPRoute", f"tcp-route-by-{n}", "tcp-multi-listener-gateway", (ACCEPTED,))
            for n in ("port", "section", "section-and-port")
        ),
    ),
    Case(
        "TCPRouteReferenceGrant",
        "tcproute-reference-grant",
        routes=(
            R(
                "TCPRoute",
                "tcp-reference-grant",
                "tcp-reference-grant-gateway",
                (ACCEPTED, RESOLVED),
            ),
        ),
    ),
    Case(
        "TCPRouteReferenceGrant-deleted",
        "tcproute-reference-grant",
        mutations=(lambda docs: _delete_all(docs, "ReferenceGrant"),),
        routes=(
            R(
                "TCPRoute",
                "tcp-reference-grant",
                "tcp-reference-grant-gateway",
                (ACCEPTED, ("ResolvedRefs", False, "RefNotPermitted")),
            ),
        ),
    ),
    Case(
        "TCPRouteWeightedRouting",
        "tcproute-weighted-routing",
        routes=(R("TCPRoute", "tcp-weighted-route", "tcp-weighted-gateway", (ACCEPTED,)),),
    ),
    # ---- UDPRoute ------------------------------------------------------------------------------
    Case(
        "UDPRoute",
        "udproute-simple",
        addresses=True,
        gateways=(
            GW(
                "udp-gateway",
                listeners=(L("coredns", ("UDPRoute",), 1, (*HTTP_L_OK, L_PROGRAMMED)),),
            ),
        ),
        routes=(R("UDPRoute", "udp-coredns", "udp-gateway", (ACCEPTED,)),),
    ),
    Case(
        "UDPRouteInvalidBackendRefNonexistent",
        "udproute-invalid-backendref-nonexistent",
        routes=(
            R(
                "UDPRoute",
                "udp-route-invalid-backend-ref-nonexistent",
                "udp-gateway-invalid-backend",
                (("ResolvedRefs", False, "BackendNotFound"),),
            ),
        ),
    ),
    Case(
        "UDPRouteInvalidCrossNamespaceBackendRef",
        "udproute-invalid-cross-namespace-backend-ref",
        routes=(
            R(
                "UDPRoute",
                "udp-route-invalid-cross-namespace-backend-ref",
                "udp-gateway-invalid-cross-namespace-backend-ref",
                (ACCEPTED, ("ResolvedRefs", False, "RefNotPermitted")),
            ),
        ),
    ),
    Case(
        "UDPRouteMultipleRoutesAttachment",
        "udproute-multiple-routes-attachment",
        addresses=True,
        mutations=(
            newer_copy(
                "UDPRoute", "udproute-attach-older", "udproute-attach-newer", "udp-attach-backend-2"
            ),
        ),
        gateways=(
            GW(
                "udp-multi-route-attach-gateway",
                listeners=(L("udp", ("UDPRoute",), 2, (("Accepted", True, "Accepted"),)),),
            ),
        ),
        routes=(
            R("UDPRoute", "udproute-attach-older", "udp-multi-route-attach-gateway", (ACCEPTED,)),
            R("UDPRoute", "udproute-attach-newer", "udp-multi-route-attach-gateway", (ACCEPTED,)),
        ),
        extra=only_older_route_carries_traffic("UDPRoute", "udproute-attach-older"),
    ),
    Case(
        "UDPRouteNotAllowedByListeners",
        "udproute-not-allowed-by-listeners",
        gateways=(GW("udproute-tls-only-gateway", zero_routes=True),),
        routes=(
            R(
                "UDPRoute",
                "udproute-not-allowed-by-listeners",
                "udproute-tls-only-gateway",
                (("Accepted", False, "NotAllowedByListeners"),),
            ),
        ),
    ),
    Case(
        "UDPRouteParentRefAttachAllListeners",
        "udproute-parentref-attach-all-listeners",
        gateways=(
            GW(
                "udp-attach-all-listeners-gateway",
                listeners=tuple(L(f"udp-{i}", ("UDPRoute",), 1, HTTP_L_OK) for i in (1, 2, 3)),
            ),
        ),
        routes=(
            R("UDPRoute", "udp-route-attach-all", "udp-attach-all-listeners-gateway", (ACCEPTED,)),
        ),
    ),
    Case(
        "UDPRouteParentRefPortAndSectionName",
        "udproute-parentref-port-and-section-name",
        routes=tuple(
            R("UDPRoute", f"udp-route-by-{n}", "udp-multi-listener-gateway", (ACCEPTED,))
            for n in ("port", "section", "section-and-port")
        ),
    ),
    Case(
        "UDPRouteReferenceGrant",
        "udproute-reference-grant",
        routes=(
            R(
                "UDPRoute",
                "udp-route-reference-grant",
                "udp-gateway-reference-grant",
                (ACCEPTED, RESOLVED),
            ),
        ),
    ),
    Case(
        "UDPRouteReferenceGrant-deleted",
        "udproute-reference-grant",
        mutations=(lambda docs: _delete_all(docs, "ReferenceGrant"),),
        routes=(
            R(
                "UDPRoute",
                "udp-route-reference-grant",
                "udp-gateway-reference-grant",
                (("ResolvedRefs", False, "RefNotPermitted"),),
            ),
        ),
    ),
    Case(
        "UDPRouteWeightedRouting",
        "udproute-weighted-routing",
        routes=(R("UDPRoute", "udp-weighted-route", "udp-weighted-gateway", (ACCEPTED,)),),
    ),
    # ---- TLSRoute status (the TLSRoute feature itself is not claimed yet) -----------------------
    Case(
        "TLSRouteSimpleSameNamespace",
        "tlsroute-simple-same-namespace",
        routes=(R("TLSRoute", "gateway-conformance-infra-test", "gateway-tlsroute", (ACCEPTED,)),),
    ),
    Case(
        "TLSRouteTerminateSimpleSameNamespace",
        "tlsroute-terminate-simple-same-namespace",
        routes=(
            R("TLSRoute", "tlsroute-terminated-test", "gateway-tlsroute-terminate", (ACCEPTED,)),
        ),
    ),
    Case(
        "TLSRouteListenerMixedTerminationNotSupported",
        "tlsroute-listener-mixed-termination-not-supported",
        skip="runs only for implementations without TLSRouteModeMixed; this agent serves "
        "Terminate and Passthrough TLS listeners on one port",
    ),
    Case(
        "TLSRouteMixedTerminationSameNamespace",
        "tlsroute-mixed-termination-same-namespace",
        gateways=(
            GW(
                "gateway-tlsroute-mixed-termination",
                listeners=(
                    L("tls-terminate", ("TLSRoute",), 1, (("Accepted", True, "Accepted"),)),
                    L("tls-passthrough", ("TLSRoute",), 1, (("Accepted", True, "Accepted"),)),
                ),
            ),
        ),
        routes=(
            R(
                "TLSRoute",
                "gateway-conformance-mixed-terminateroute",
                "gateway-tlsroute-mixed-termination",
                (ACCEPTED, RESOLVED),
            ),
            R(
                "TLSRoute",
                "gateway-conformance-mixed-passthroughroute",
                "gateway-tlsroute-mixed-termination",
                (ACCEPTED, RESOLVED),
            ),
        ),
    ),
    Case(
        "TLSRouteListenerTerminateNotSupported",
        "tlsroute-listener-terminate-not-supported",
        skip="runs only for implementations without TLS Terminate; this agent terminates TLS",
    ),
    Case(
        "TLSRouteListenerTerminateSupportedKinds",
        "tlsroute-listener-terminate-supported-kinds",
        gateways=(
            GW(
                "gateway-tlsroute-terminate-supported",
                listeners=(
                    L("tls-terminate", ("TLSRoute",), 0, (("Accepted", True, "Accepted"),)),
                ),
            ),
        ),
    ),
    Case(
        "TLSRouteListenerPassthroughSupportedKinds",
        "tlsroute-listener-passthrough-supported-kinds",
        gateways=(
            GW(
                "gateway-tlsroute-passthrough-supported-kind",
                listeners=(
                    L(
                        "tls-passthrough",
                        ("TLSRoute",),
                        0,
                        (("ResolvedRefs", False, "InvalidRouteKinds"),),
                    ),
                ),
            ),
        ),
    ),
    Case(
        "TLSRouteHostnameIntersection",
        "tlsroute-hostname-intersection",
        routes=tuple(
            R("TLSRoute", route, gw, (ACCEPTED, RESOLVED))
            for route, gw in (
                ("tlsroute-more-specific-wc-hostname-x-1", "gw-tlsroute-exact-hostname-x-1"),
                ("tlsroute-exact-hostname-x-2", "gw-tlsroute-more-specific-wc-hostname-x-2"),
                (
                    "tlsroute-less-specific-wc-hostname-x-2",
                    "gw-tlsroute-more-specific-wc-hostname-x-2",
                ),
                ("tlsroute-exact-hostname-x-3", "gw-tlsroute-less-specific-wc-hostname-x-3"),
                (
                    "tlsroute-more-specific-wc-hostname-x-3",
                    "gw-tlsroute-less-specific-wc-hostname-x-3",
                ),
                ("tlsroute-exact-hostname-x-4", "gw-tlsroute-empty-hostname-x-4"),
                ("tlsroute-less-specific-wc-hostname-x-4", "gw-tlsroute-empty-hostname-x-4"),
            )
        ),
    ),
    Case(
        "TLSRouteInvalidBackendRefNonexistent",
        "tlsroute-invalid-backendref-nonexistent",
        routes=(
            R(
                "TLSRoute",
                "invalid-backend-ref-nonexistent",
                "gateway-tlsroute-invalid-backend-ref-nonexistent",
                (ACCEPTED, ("ResolvedRefs", False, "BackendNotFound")),
            ),
        ),
    ),
    Case(
        "TLSRouteInvalidBackendRefUnknownKind",
        "tlsroute-invalid-backendref-unknown-kind",
        routes=(
            R(
                "TLSRoute",
                "invalid-backend-ref-unknown-kind",
                "gateway-tlsroute-invalid-backend-ref-unknown-kind",
                (ACCEPTED, ("ResolvedRefs", False, "InvalidKind")),
            ),
        ),
    ),
    Case(
        "TLSRouteInvalidNoMatchingListenerHostname",
        "tlsroute-invalid-no-matching-listener-hostname",
        gateways=(
            GW("gateway-tls-exact-hostname", zero_routes=True),
            GW("gateway-tls-wildcard-hostname", zero_routes=True),
        ),
        routes=(
            R(
                "TLSRoute",
                "tlsroute-hostname-mismatch-1",
                "gateway-tls-exact-hostname",
                (("Accepted", False, "NoMatchingListenerHostname"),),
                no_accepted_parents=True,
            ),
            R(
                "TLSRoute",
                "tlsroute-hostname-mismatch-2",
                "gateway-tls-wildcard-hostname",
                (("Accepted", False, "NoMatchingListenerHostname"),),
                no_accepted_parents=True,
            ),
        ),
    ),
    Case(
        "TLSRouteInvalidNoMatchingListener",
        "tlsroute-invalid-no-matching-listener",
        gateways=(
            GW("gateway-tlsroute-http-only", zero_routes=True),
            GW("gateway-tlsroute-https-only", zero_routes=True),
        ),
        routes=(
            R(
                "TLSRoute",
                "tlsroute-not-allowed-protocol-http",
                "gateway-tlsroute-http-only",
                (("Accepted", False, "NotAllowedByListeners"),),
                no_accepted_parents=True,
            ),
            R(
                "TLSRoute",
                "tlsroute-not-allowed-protocol-https",
                "gateway-tlsroute-https-only",
                (("Accepted", False, "NotAllowedByListeners"),),
                no_accepted_parents=True,
            ),
            R(
                "TLSRoute",
                "tlsroute-no-matching-section-name",
                "gateway-tlsroute-tls-passthrough-only",
                (("Accepted", False, "NoMatchingParent"),),
                no_accepted_parents=True,
            ),
        ),
    ),
    Case(
        "TLSRouteInvalidReferenceGrant",
        "tlsroute-invalid-reference-grant",
        routes=(
            R(
                "TLSRoute",
                "gateway-conformance-infra-test",
                "gateway-tlsroute-referencegrant",
                (ACCEPTED, ("ResolvedRefs", False, "RefNotPermitted")),
            ),
        ),
    ),
]


def _delete_all(docs: list[Doc], kind: str) -> None:
    docs[:] = [d for d in docs if d.get("kind") != kind]


def _assert_addresses(tr: Translation, gateway: str, expected: list[Doc]) -> None:
    st = _status(tr, "Gateway", gateway, INFRA)
    assert st["addresses"] == expected


def _assert_class_accepted(tr: Translation, name: str, generation: int) -> None:
    obj = tr.status.find("GatewayClass", "", name)
    assert obj is not None
    conds = obj.to_dict()["status"]["conditions"]
    _conds_match(conds, (("Accepted", True, ""),), name)
    assert {c["observedGeneration"] for c in conds} == {generation}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance_case(case: Case) -> None:
    if case.skip:
        pytest.skip(case.skip)
    tr = load(case.file, *case.mutations, addresses=case.addresses)
    for gw in case.gateways:
        check_gateway(tr, gw)
    for route in case.routes:
        check_route(tr, route)
    if case.extra is not None:
        case.extra(tr)


# -- every manifest file ------------------------------------------------------------------------

ALL_FILES = sorted(p.stem for p in TESTS.glob("*.yaml")) if TESTS.is_dir() else []

# Gateways the readiness check cannot expect to be ready, and why.
NOT_READY = {
    "gateway-without-address-value": "needs IPAM (spec.addresses entry without a value)",
    "gateway-tlsroute-mixed-termination-not-supported": "both listeners are ProtocolConflict "
    "by design; its test only runs for TLSRoute implementations",
    "gateway-tlsroute-mixed-termination": "needs TLSRouteModeMixed (experimental)",
}


@pytest.mark.parametrize("test_file", ["", *ALL_FILES], ids=["base", *ALL_FILES])
def test_manifest_loads_without_problems(test_file: str) -> None:
    tr = load(test_file)
    docs = _documents(test_file)
    # Every Gateway of our class gets a status, whatever its features.
    for d in docs:
        if d.get("kind") == "Gateway" and d["spec"].get("gatewayClassName") == CLASS:
            ns = d["metadata"].get("namespace", "default")
            assert tr.status.find("Gateway", ns, d["metadata"]["name"]) is not None
    snap = build_snapshot((d, f"#{i}") for i, d in enumerate(docs))
    assert snap.problems == ()
    assert snap.invalid == ()


@pytest.mark.parametrize("test_file", ["", *ALL_FILES], ids=["base", *ALL_FILES])
def test_gateways_without_addresses_are_address_not_assigned_until_ipam(test_file: str) -> None:
    tr = load(test_file)
    for d in _documents(test_file):
        if d.get("kind") != "Gateway" or d["spec"].get("addresses"):
            continue
        obj = tr.status.find("Gateway", d["metadata"].get("namespace", "default"),
                             d["metadata"]["name"])  # fmt: skip
        assert obj is not None
        st = obj.to_dict()["status"]
        programmed = [c for c in st["conditions"] if c["type"] == "Programmed"]
        accepted = [c for c in st["conditions"] if c["type"] == "Accepted"]
        assert programmed[0]["status"] == "False"
        if accepted[0]["status"] == "True":
            assert programmed[0]["reason"] == "AddressNotAssigned"
        assert st["addresses"] == []


@pytest.mark.parametrize("test_file", ["", *ALL_FILES], ids=["base", *ALL_FILES])
def test_gateways_not_skipped_for_readiness_become_ready_with_an_address(test_file: str) -> None:
    """NamespacesMustBeReady: every Gateway in the conformance namespaces without
    the skip annotation must be Accepted=True and Programmed=True, with fresh
    observedGeneration (given an address, as IPAM would assign)."""
    tr = load(test_file, addresses=True)
    for d in _documents(test_file):
        meta = d.get("metadata", {})
        if d.get("kind") != "Gateway" or meta.get("namespace") not in (INFRA, APP, WEB):
            continue
        if (meta.get("annotations") or {}).get(SKIP_READINESS) == "true":
            continue
        if meta["name"] in NOT_READY:
            continue
        st = _status(tr, "Gateway", meta["name"], meta["namespace"])
        _conds_match(st["conditions"], (("Accepted", True, ""), ("Programmed", True, "")),
                     f"Gateway {meta['name']}")  # fmt: skip
        assert st["addresses"] and all(a["type"] == "IPAddress" for a in st["addresses"])


def test_every_route_parent_of_ours_names_group_kind_namespace_and_controller() -> None:
    for test_file in ALL_FILES:
        tr = load(test_file)
        for obj in tr.status.objects:
            if obj.kind in ("GatewayClass", "Gateway", "ListenerSet", "BackendTLSPolicy"):
                continue
            for p in obj.to_dict()["status"]["parents"]:
                ref = p["parentRef"]
                assert ref["group"] == GW_GROUP, (test_file, ref)
                assert ref["kind"] in ("Gateway", "ListenerSet"), (test_file, ref)
                assert ref.get("namespace"), (test_file, obj.name, ref)
                assert p["controllerName"] == CONTROLLER
