"""agent.model: untrusted dicts into frozen dataclasses, with CRD defaults and
validation, one message per bad object naming its field."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from helpers import (
    GW_GROUP,
    backend,
    endpoint,
    endpointslice,
    gateway,
    gateway_class,
    grpcroute,
    http,
    httproute,
    namespace,
    parent,
    reference_grant,
    rule,
    secret,
    service,
    snapshot,
    svc_port,
    tcp,
    tcproute,
    tls_passthrough,
    tlsroute,
    udproute,
)

from agent.model.gateway import Gateway
from agent.model.meta import age_order
from agent.model.routes import HTTPRoute, L4Route
from agent.model.snapshot import InvalidObject, LoadProblem, parse_object


def parse(doc: dict[str, Any]) -> Any:
    return parse_object(doc, "test.yaml:1")


def invalid_error(doc: dict[str, Any]) -> str:
    obj = parse(doc)
    assert isinstance(obj, InvalidObject), obj
    return obj.error


# -- defaults ------------------------------------------------------------------------


def test_parent_ref_group_and_kind_default_to_gateway() -> None:
    route = parse(httproute(parents=[parent("gw")]))
    assert isinstance(route, HTTPRoute)
    ref = route.parent_refs[0]
    assert (ref.group, ref.kind, ref.namespace, ref.section_name, ref.port) == (
        GW_GROUP,
        "Gateway",
        None,
        None,
        None,
    )


def test_http_match_without_path_defaults_to_path_prefix_slash() -> None:
    route = parse(httproute("r", rule(matches=[{"headers": [{"name": "x", "value": "1"}]}])))
    assert isinstance(route, HTTPRoute)
    match = route.rules[0].matches[0]
    assert (match.path.type, match.path.value) == ("PathPrefix", "/")
    assert match.headers[0].type == "Exact"


def test_http_rule_without_matches_matches_path_prefix_slash() -> None:
    route = parse(httproute("r", rule()))
    assert isinstance(route, HTTPRoute)
    assert [(m.path.type, m.path.value) for m in route.rules[0].matches] == [("PathPrefix", "/")]


def test_path_without_value_defaults_to_slash() -> None:
    route = parse(httproute("r", rule(matches=[{"path": {"type": "Exact"}}])))
    assert isinstance(route, HTTPRoute)
    assert route.rules[0].matches[0].path.value == "/"


def test_backend_ref_weight_defaults_to_1_and_kind_to_service() -> None:
    route = parse(tcproute("r", backend("svc", 80)))
    assert isinstance(route, L4Route)
    ref = route.rules[0].backend_refs[0]
    assert ref.weight == 1
    assert (ref.ref.group, ref.ref.kind, ref.ref.namespace) == ("", "Service", None)


def test_allowed_routes_default_to_same_namespace_and_protocol_kinds() -> None:
    gw = parse(gateway("gw", tcp()))
    assert isinstance(gw, Gateway)
    allowed = gw.listeners[0].allowed_routes
    assert (allowed.namespaces_from, allowed.selector, allowed.kinds) == ("Same", None, None)


def test_allowed_routes_namespaces_without_from_defaults_to_same() -> None:
    doc = gateway("gw", tcp())
    doc["spec"]["listeners"][0]["allowedRoutes"] = {"namespaces": {}}
    gw = parse(doc)
    assert isinstance(gw, Gateway)
    assert gw.listeners[0].allowed_routes.namespaces_from == "Same"


def test_allowed_route_kind_group_defaults_to_gateway_group() -> None:
    gw = parse(gateway("gw", tcp(kinds=["TCPRoute"])))
    assert isinstance(gw, Gateway)
    assert gw.listeners[0].allowed_routes.kinds == ((GW_GROUP, "TCPRoute"),)


def test_listener_tls_mode_defaults_to_terminate() -> None:
    doc = gateway("gw", {"name": "https", "protocol": "HTTPS", "port": 443,
                         "tls": {"certificateRefs": [{"name": "cert"}]}})  # fmt: skip
    gw = parse(doc)
    assert isinstance(gw, Gateway)
    tls = gw.listeners[0].tls
    assert tls is not None
    assert tls.mode == "Terminate"
    ref = tls.certificate_refs[0]
    assert (ref.group, ref.kind, ref.namespace) == ("", "Secret", None)


def test_gateway_address_type_defaults_to_ip_address() -> None:
    gw = parse(gateway("gw", tcp(), addresses=[{"value": "192.0.2.1"}]))
    assert isinstance(gw, Gateway)
    assert gw.addresses[0].type == "IPAddress"


def test_namespace_defaults_to_default_and_generation_to_1() -> None:
    doc = tcproute("r")
    del doc["metadata"]["namespace"]
    route = parse(doc)
    assert isinstance(route, L4Route)
    assert (route.meta.namespace, route.meta.generation) == ("default", 1)


def test_endpoint_without_conditions_is_ready_and_serving() -> None:
    es = parse(endpointslice("svc", endpoint("10.0.0.1")))
    ep = es.endpoints[0]
    assert (ep.ready, ep.serving, ep.terminating) == (True, True, False)


def test_endpoint_serving_defaults_to_ready() -> None:
    es = parse(endpointslice("svc", endpoint("10.0.0.1", ready=False)))
    assert (es.endpoints[0].ready, es.endpoints[0].serving) == (False, False)


def test_service_port_protocol_defaults_to_tcp() -> None:
    doc = service("svc", {"port": 80})
    svc = parse(doc)
    assert svc.ports[0].protocol == "TCP"
    assert svc.ports[0].target_port is None


def test_objects_are_frozen() -> None:
    route = parse(tcproute("r"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.meta = None


def test_age_order_puts_objects_without_timestamp_last_then_by_namespace_name() -> None:
    old = parse(tcproute("z", created="2024-01-01T00:00:00Z")).meta
    new = parse(tcproute("a", created="2024-06-01T00:00:00Z")).meta
    none_a = parse(tcproute("a")).meta
    none_b = parse(tcproute("b")).meta
    assert sorted([none_b, new, none_a, old], key=age_order) == [old, new, none_a, none_b]


# -- served API versions -------------------------------------------------------------

SERVED = [
    (lambda v: gateway_class(api_version=v), "v1"),
    (lambda v: gateway_class(api_version=v), "v1beta1"),
    (lambda v: gateway("gw", tcp(), api_version=v), "v1"),
    (lambda v: gateway("gw", tcp(), api_version=v), "v1beta1"),
    (lambda v: httproute("r", api_version=v), "v1"),
    (lambda v: httproute("r", api_version=v), "v1beta1"),
    (lambda v: {**grpcroute("r"), "apiVersion": v}, "v1"),
    (lambda v: reference_grant(namespace="a", from_namespace="b", api_version=v), "v1"),
    (lambda v: reference_grant(namespace="a", from_namespace="b", api_version=v), "v1beta1"),
    (lambda v: tcproute("r", api_version=v), "v1"),
    (lambda v: tcproute("r", api_version=v), "v1alpha2"),
    (lambda v: udproute("r", api_version=v), "v1"),
    (lambda v: udproute("r", api_version=v), "v1alpha2"),
    (lambda v: tlsroute("r", api_version=v), "v1"),
    (lambda v: tlsroute("r", api_version=v), "v1alpha3"),
    (lambda v: tlsroute("r", api_version=v), "v1alpha2"),
]


@pytest.mark.parametrize(
    ("make", "version"), SERVED, ids=[f"{m(f'{GW_GROUP}/{v}')['kind']}-{v}" for m, v in SERVED]
)
def test_every_served_api_version_parses(make: Any, version: str) -> None:
    doc = make(f"{GW_GROUP}/{version}")
    obj = parse(doc)
    assert obj is not None
    assert not isinstance(obj, LoadProblem | InvalidObject), obj
    assert obj.meta.api_version == f"{GW_GROUP}/{version}"


@pytest.mark.parametrize(
    "doc",
    [
        service("svc"),
        namespace("ns"),
        secret("cert"),
        endpointslice("svc", endpoint("10.0.0.1")),
    ],
    ids=lambda d: d["kind"],
)
def test_core_kinds_parse(doc: dict[str, Any]) -> None:
    obj = parse(doc)
    assert obj is not None
    assert not isinstance(obj, LoadProblem | InvalidObject), obj


@pytest.mark.parametrize(
    "doc",
    [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}},
        # a kind we read, but from another API group
        {"apiVersion": "example.com/v1", "kind": "Gateway", "metadata": {"name": "x"}},
        {"apiVersion": "gateway.networking.x-k8s.io/v1alpha1", "kind": "XBackend"},
    ],
    ids=["Deployment", "Pod", "foreign-Gateway", "XBackend"],
)
def test_unknown_kinds_are_skipped_quietly(doc: dict[str, Any]) -> None:
    assert parse(doc) is None
    snap = snapshot(doc)
    assert snap.problems == () and snap.invalid == ()


@pytest.mark.parametrize(
    "doc",
    [
        tcproute("r", api_version=f"{GW_GROUP}/v1alpha1"),
        gateway("gw", tcp(), api_version=f"{GW_GROUP}/v1alpha2"),
        {**grpcroute("r"), "apiVersion": f"{GW_GROUP}/v1alpha2"},
        tlsroute("r", api_version=f"{GW_GROUP}/v1beta1"),
    ],
    ids=["TCPRoute-v1alpha1", "Gateway-v1alpha2", "GRPCRoute-v1alpha2", "TLSRoute-v1beta1"],
)
def test_unserved_api_version_is_rejected_with_a_message(doc: dict[str, Any]) -> None:
    problem = parse(doc)
    assert isinstance(problem, LoadProblem)
    assert doc["apiVersion"] in problem.message
    assert "not served" in problem.message
    assert problem.source == "test.yaml:1"


@pytest.mark.parametrize(
    "doc",
    [None, [], "Gateway", {"kind": "Gateway"}, {"apiVersion": 1, "kind": "Gateway"}],
    ids=["null", "list", "string", "no-apiVersion", "int-apiVersion"],
)
def test_document_that_is_not_an_object_is_a_load_problem(doc: Any) -> None:
    assert isinstance(parse(doc), LoadProblem)


def test_object_without_a_name_is_a_load_problem_naming_metadata_name() -> None:
    doc = tcproute("r")
    del doc["metadata"]["name"]
    problem = parse(doc)
    assert isinstance(problem, LoadProblem)
    assert "metadata.name" in problem.message


def test_object_with_invalid_name_is_a_load_problem() -> None:
    problem = parse(tcproute("Not_A_Name"))
    assert isinstance(problem, LoadProblem)
    assert "metadata.name" in problem.message


# -- malformed objects -------------------------------------------------------------------


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set a dotted path (list indexes as numbers) in a document."""
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()

MALFORMED: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, document, field named in the message, words in the message)
    (
        "port-as-string",
        _set(gateway("gw", tcp()), "spec.listeners.0.port", "80"),
        "spec.listeners[0].port",
        "must be an integer",
    ),
    (
        "port-out-of-range",
        _set(gateway("gw", tcp()), "spec.listeners.0.port", 65536),
        "spec.listeners[0].port",
        "at most 65535",
    ),
    (
        "port-zero",
        _set(gateway("gw", tcp()), "spec.listeners.0.port", 0),
        "spec.listeners[0].port",
        "at least 1",
    ),
    (
        "port-bool",
        _set(gateway("gw", tcp()), "spec.listeners.0.port", True),
        "spec.listeners[0].port",
        "must be an integer",
    ),
    (
        "listeners-not-a-list",
        _set(gateway("gw", tcp()), "spec.listeners", {"name": "x"}),
        "spec.listeners",
        "must be an array",
    ),
    (
        "no-listeners",
        _set(gateway("gw", tcp()), "spec.listeners", []),
        "spec.listeners",
        "at least 1",
    ),
    (
        "missing-class",
        _set(gateway("gw", tcp()), "spec.gatewayClassName", _DELETE),
        "spec.gatewayClassName",
        "required",
    ),
    (
        "missing-protocol",
        _set(gateway("gw", tcp()), "spec.listeners.0.protocol", _DELETE),
        "spec.listeners[0].protocol",
        "required",
    ),
    (
        "bad-listener-hostname",
        gateway("gw", http(hostname="Foo_.example.com")),
        "spec.listeners[0].hostname",
        "invalid value",
    ),
    (
        "hostname-on-tcp",
        _set(gateway("gw", tcp()), "spec.listeners.0.hostname", "a.example.com"),
        "spec.listeners[0].hostname",
        "must not be set for protocol TCP",
    ),
    (
        "tls-on-http",
        _set(gateway("gw", http()), "spec.listeners.0.tls", {"mode": "Passthrough"}),
        "spec.listeners[0].tls",
        "must not be set for protocol HTTP",
    ),
    (
        "tls-listener-without-tls",
        _set(gateway("gw", tls_passthrough()), "spec.listeners.0.tls", _DELETE),
        "spec.listeners[0].tls.mode",
        "must be set for protocol TLS",
    ),
    (
        "https-passthrough",
        _set(
            gateway("gw", http()),
            "spec.listeners.0",
            {"name": "h", "protocol": "HTTPS", "port": 443, "tls": {"mode": "Passthrough"}},
        ),
        "spec.listeners[0].tls.mode",
        "must be Terminate",
    ),
    (
        "terminate-without-certs",
        _set(
            gateway("gw", http()),
            "spec.listeners.0",
            {"name": "h", "protocol": "HTTPS", "port": 443, "tls": {"mode": "Terminate"}},
        ),
        "spec.listeners[0].tls.certificateRefs",
        "must be set when mode is Terminate",
    ),
    (
        "duplicate-listener-name",
        gateway("gw", tcp("a", 1), tcp("a", 2)),
        "spec.listeners[1].name",
        "must be unique",
    ),
    (
        "duplicate-port-protocol-hostname",
        gateway("gw", tcp("a", 1), tcp("b", 1)),
        "spec.listeners[1]",
        "combination of port, protocol and hostname",
    ),
    (
        "selector-missing",
        gateway("gw", tcp(from_="Selector")),
        "spec.listeners[0].allowedRoutes.namespaces.selector",
        "required when from is Selector",
    ),
    (
        "from-enum",
        gateway("gw", tcp(from_="Everywhere")),
        "spec.listeners[0].allowedRoutes.namespaces.from",
        "unsupported value",
    ),
    (
        "bad-hostname-address",
        gateway("gw", tcp(), addresses=[{"type": "Hostname", "value": "-bad-"}]),
        "spec.addresses[0].value",
        "valid hostname",
    ),
    (
        "duplicate-address",
        gateway("gw", tcp(), addresses=["192.0.2.1", "192.0.2.1"]),
        "spec.addresses[1].value",
        "unique",
    ),
    (
        "service-backend-without-port",
        tcproute("r", backend("svc", None)),
        "spec.rules[0].backendRefs[0].port",
        "required for a Service",
    ),
    (
        "backend-port-out-of-range",
        tcproute("r", backend("svc", 70000)),
        "spec.rules[0].backendRefs[0].port",
        "at most 65535",
    ),
    (
        "weight-negative",
        tcproute("r", backend("svc", 80, weight=-1)),
        "spec.rules[0].backendRefs[0].weight",
        "at least 0",
    ),
    (
        "weight-too-large",
        tcproute("r", backend("svc", 80, weight=1_000_001)),
        "spec.rules[0].backendRefs[0].weight",
        "at most 1000000",
    ),
    (
        "tcproute-v1-two-rules",
        tcproute("r", rules=[{"backendRefs": [backend()]}, {"backendRefs": [backend()]}]),
        "spec.rules",
        "at most 1 items",
    ),
    ("tcproute-no-rules", tcproute("r", rules=[]), "spec.rules", "at least 1"),
    (
        "tcproute-rule-without-backends",
        tcproute("r", rules=[{"backendRefs": []}]),
        "spec.rules[0].backendRefs",
        "at least 1",
    ),
    (
        "udproute-v1-two-rules",
        udproute("r", rules=[{"backendRefs": [backend()]}, {"backendRefs": [backend()]}]),
        "spec.rules",
        "at most 1 items",
    ),
    ("tlsroute-v1-without-hostnames", tlsroute("r", hostnames=[]), "spec.hostnames", "at least 1"),
    (
        "tlsroute-ip-hostname",
        tlsroute("r", hostnames=["10.0.0.1"]),
        "spec.hostnames[0]",
        "cannot be an IP address",
    ),
    (
        "route-bad-hostname",
        httproute("r", hostnames=["UPPER.example.com"]),
        "spec.hostnames[0]",
        "invalid value",
    ),
    (
        "parent-port-out-of-range",
        tcproute("r", parents=[parent("gw", port=0)]),
        "spec.parentRefs[0].port",
        "at least 1",
    ),
    (
        "parent-without-name",
        tcproute("r", parents=[{"namespace": "x"}]),
        "spec.parentRefs[0].name",
        "required",
    ),
    (
        "two-refs-same-parent-one-without-section",
        tcproute("r", parents=[parent("gw"), parent("gw", section="a")]),
        "spec.parentRefs",
        "sectionName or port must be specified",
    ),
    (
        "two-identical-refs",
        tcproute("r", parents=[parent("gw"), parent("gw")]),
        "spec.parentRefs",
        "must be unique",
    ),
    (
        "two-refs-same-parent-same-section",
        tcproute("r", parents=[parent("gw", section="a"), parent("gw", section="a")]),
        "spec.parentRefs",
        "must be unique",
    ),
    (
        "http-path-not-absolute",
        httproute("r", rule(matches=[{"path": {"value": "foo"}}])),
        "spec.rules[0].matches[0].path.value",
        "absolute path",
    ),
    (
        "http-path-type-enum",
        httproute("r", rule(matches=[{"path": {"type": "Prefix", "value": "/"}}])),
        "spec.rules[0].matches[0].path.type",
        "unsupported value",
    ),
    (
        "http-bad-regex",
        httproute("r", rule(matches=[{"path": {"type": "RegularExpression", "value": "(("}}])),
        "spec.rules[0].matches[0].path.value",
        "invalid regular expression",
    ),
    (
        "http-method-enum",
        httproute("r", rule(matches=[{"method": "FETCH"}])),
        "spec.rules[0].matches[0].method",
        "unsupported value",
    ),
    (
        "redirect-with-backends",
        httproute(
            "r", rule(filters=[{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}])
        ),
        "spec.rules[0].filters",
        "must not be used together with backendRefs",
    ),
    (
        "grpc-method-without-service-and-method",
        grpcroute("r", rule(matches=[{"method": {"type": "Exact"}}])),
        "spec.rules[0].matches[0].method.service",
        "one or both",
    ),
    (
        "svc-duplicate-port",
        service("svc", svc_port(80), svc_port(80)),
        "spec.ports[1]",
        "duplicate port",
    ),
    (
        "slice-bad-ip",
        endpointslice("svc", endpoint("10.0.0.999")),
        "endpoints[0].addresses[0]",
        "invalid IP address",
    ),
    (
        "slice-family-mismatch",
        endpointslice("svc", endpoint("2001:db8::1")),
        "endpoints[0].addresses[0]",
        "not an IPv4 address",
    ),
    (
        "secret-bad-base64",
        {**secret("cert"), "data": {"tls.crt": "%%%"}},
        "data.tls.crt",
        "not valid base64",
    ),
    (
        "grant-without-from",
        _set(reference_grant(namespace="a", from_namespace="b"), "spec.from", []),
        "spec.from",
        "at least 1",
    ),
    (
        "gatewayclass-without-controller",
        _set(gateway_class(), "spec.controllerName", _DELETE),
        "spec.controllerName",
        "required",
    ),
]


@pytest.mark.parametrize(
    ("doc", "field", "words"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_object_is_rejected_with_a_message_naming_the_field(
    doc: dict[str, Any], field: str, words: str
) -> None:
    obj = parse(doc)
    if isinstance(obj, InvalidObject):
        message = obj.error
    elif isinstance(obj, LoadProblem):
        message = obj.message
    else:
        pytest.fail(f"accepted: {obj}")
    assert message.startswith(f"{field}:") or f" {field}:" in message, message
    assert words in message


def test_malformed_object_is_rejected_alone() -> None:
    bad = _set(gateway("bad", tcp()), "spec.listeners.0.port", "eighty")
    snap = snapshot(gateway_class(), bad, gateway("good", tcp()), tcproute("r"))
    assert [g.meta.name for g in snap.gateways] == ["good"]
    assert [r.meta.name for r in snap.l4_routes] == ["r"]
    assert [(i.kind, i.meta.name) for i in snap.invalid] == [("Gateway", "bad")]
    assert "spec.listeners[0].port" in snap.invalid[0].error


def test_invalid_gateway_keeps_its_class_and_invalid_route_its_parent_refs() -> None:
    gw = parse(_set(gateway("gw", tcp()), "spec.listeners.0.port", -1))
    assert isinstance(gw, InvalidObject)
    assert gw.gateway_class == "gatewaylb"
    route = parse(tcproute("r", backend("svc", None), parents=[parent("gw", section="tcp")]))
    assert isinstance(route, InvalidObject)
    assert [(p.name, p.section_name) for p in route.parent_refs] == [("gw", "tcp")]


def test_tls_listener_without_mode_defaults_to_terminate_like_the_api_server() -> None:
    # The CRD default (mode: Terminate) is applied before the CEL rule
    # "tls mode must be set for protocol TLS" runs, so only a missing tls fails it.
    doc = gateway("gw", {"name": "tls", "protocol": "TLS", "port": 443,
                         "tls": {"certificateRefs": [{"name": "cert"}]}})  # fmt: skip
    gw = parse(doc)
    assert isinstance(gw, Gateway), gw
    assert gw.listeners[0].tls is not None
    assert gw.listeners[0].tls.mode == "Terminate"


def test_tcproute_v1alpha2_may_carry_several_rules() -> None:
    route = parse(
        tcproute(
            "r",
            rules=[{"backendRefs": [backend("a")]}, {"backendRefs": [backend("b")]}],
            api_version=f"{GW_GROUP}/v1alpha2",
        )
    )
    assert isinstance(route, L4Route)
    assert len(route.rules) == 2


def test_tlsroute_v1alpha2_may_omit_hostnames() -> None:
    route = parse(tlsroute("r", hostnames=[], api_version=f"{GW_GROUP}/v1alpha2"))
    assert isinstance(route, L4Route)
    assert route.hostnames == ()


def test_integral_float_is_an_integer() -> None:
    gw = parse(_set(gateway("gw", tcp()), "spec.listeners.0.port", 80.0))
    assert isinstance(gw, Gateway)
    assert gw.listeners[0].port == 80


def test_deeply_nested_garbage_does_not_crash() -> None:
    nested: Any = {}
    node = nested
    for _ in range(5000):
        node["spec"] = {}
        node = node["spec"]
    doc = tcproute("r")
    doc["spec"]["rules"][0]["backendRefs"][0]["port"] = nested
    obj = parse(doc)
    assert isinstance(obj, InvalidObject)


# -- duplicates ----------------------------------------------------------------------


def test_duplicate_object_is_reported_and_the_first_wins() -> None:
    first = tcproute("r", backend("first", 80))
    second = tcproute("r", backend("second", 80))
    snap = snapshot(first, second)
    assert [r.rules[0].backend_refs[0].ref.name for r in snap.l4_routes] == ["first"]
    assert len(snap.problems) == 1
    message = str(snap.problems[0])
    assert "duplicate TCPRoute default/r" in message
    assert "test#0" in message and message.startswith("test#1")


def test_same_name_in_another_kind_or_namespace_is_not_a_duplicate() -> None:
    snap = snapshot(tcproute("r"), udproute("r"), tcproute("r", namespace="other"))
    assert snap.problems == ()
    assert len(snap.l4_routes) == 3


def test_duplicate_invalid_object_is_reported() -> None:
    bad = tcproute("r", backend("svc", None))
    snap = snapshot(bad, bad)
    assert len(snap.invalid) == 1
    assert len(snap.problems) == 1
