"""The test control plane is real: a kube-apiserver with etcd, RBAC enforced,
the Gateway API CRDs served with their CEL validation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controlplane import ControlPlane

GW = "/apis/gateway.networking.k8s.io/v1"


def _eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    """RBAC changes reach the authorizer through an informer: allow a moment."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _create(cp: ControlPlane, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    status, body = cp.request("POST", path, obj)
    assert status == 201, body
    result: dict[str, Any] = body
    return result


def test_api_server_answers(controlplane: ControlPlane) -> None:
    cp = controlplane
    status, version = cp.request("GET", "/version")
    assert status == 200
    assert version["gitVersion"].startswith("v1.")
    assert cp.request("GET", "/readyz")[0] == 200
    status, nss = cp.request("GET", "/api/v1/namespaces")
    assert status == 200
    assert {"default", "kube-system"} <= {n["metadata"]["name"] for n in nss["items"]}
    # The admin kubeconfig points at the same server with files that exist.
    config = json.loads(cp.kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == cp.server
    assert cp.server.startswith("https://127.0.0.1:")
    assert Path(config["clusters"][0]["cluster"]["certificate-authority"]) == cp.ca_path
    assert cp.ca_path.is_file()


def test_unauthenticated_request_is_not_admin(controlplane: ControlPlane) -> None:
    status, _ = controlplane.request("GET", "/api/v1/secrets", token="not-a-token")
    assert status == 401


def test_rbac_denies_then_allows_serviceaccount(controlplane: ControlPlane) -> None:
    cp = controlplane
    ns = "rbac-test"
    token = cp.token_for(ns, "reader")

    def status_of(path: str) -> int:
        return cp.request("GET", path, token=token)[0]

    # Authenticated (not 401) but not authorized.
    assert status_of("/api/v1/secrets") == 403
    assert status_of(f"/api/v1/namespaces/{ns}/secrets") == 403

    _create(
        cp,
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "secret-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
        },
    )
    _create(
        cp,
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader-reads-secrets"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "secret-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    assert _eventually(lambda: status_of(f"/api/v1/namespaces/{ns}/secrets") == 200)
    # A RoleBinding grants its namespace only, never the cluster.
    assert status_of("/api/v1/secrets") == 403
    assert status_of("/api/v1/namespaces/default/secrets") == 403

    _create(
        cp,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "rbac-test-secret-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    )
    _create(
        cp,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "rbac-test-reader-view-secrets"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "rbac-test-secret-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    assert _eventually(lambda: status_of("/api/v1/secrets") == 200)


def test_gateway_api_crds_established(controlplane: ControlPlane) -> None:
    status, crds = controlplane.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    )
    assert status == 200
    established = {
        c["metadata"]["name"]
        for c in crds["items"]
        if any(
            cond["type"] == "Established" and cond["status"] == "True"
            for cond in c.get("status", {}).get("conditions", [])
        )
    }
    wanted = {
        f"{plural}.gateway.networking.k8s.io"
        for plural in ("gatewayclasses", "gateways", "httproutes", "grpcroutes", "tcproutes")
    } | {"tlsroutes.gateway.networking.k8s.io", "referencegrants.gateway.networking.k8s.io"}
    assert wanted <= established
    # The safe-upgrades ValidatingAdmissionPolicy shipped with them is in too.
    status, _ = controlplane.request(
        "GET",
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/"
        "safe-upgrades.gateway.networking.k8s.io",
    )
    assert status == 200


def _gateway(name: str, listeners: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {"gatewayClassName": "gatewaylb-test", "listeners": listeners},
    }


def test_gateway_routes_roundtrip_and_status(controlplane: ControlPlane) -> None:
    cp = controlplane
    ns = "gwapi-test"
    cp.ensure_namespace(ns)
    cp.apply(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "gatewaylb-test"},
            "spec": {"controllerName": "gatewaylb.io/test-controller"},
        }
    )
    _create(
        cp,
        f"{GW}/namespaces/{ns}/gateways",
        _gateway(
            "gw",
            [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "tcp", "port": 5432, "protocol": "TCP"},
            ],
        ),
    )
    parent = [{"name": "gw", "sectionName": "http"}]
    _create(
        cp,
        f"{GW}/namespaces/{ns}/httproutes",
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web"},
            "spec": {
                "parentRefs": parent,
                "hostnames": ["www.example.test"],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                        "backendRefs": [{"name": "api", "port": 8080}],
                    }
                ],
            },
        },
    )
    _create(
        cp,
        f"{GW}/namespaces/{ns}/tcproutes",
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "TCPRoute",
            "metadata": {"name": "db"},
            "spec": {
                "parentRefs": [{"name": "gw", "sectionName": "tcp"}],
                "rules": [{"backendRefs": [{"name": "postgres", "port": 5432}]}],
            },
        },
    )

    status, gw = cp.request("GET", f"{GW}/namespaces/{ns}/gateways/gw")
    assert status == 200
    assert [li["name"] for li in gw["spec"]["listeners"]] == ["http", "tcp"]
    status, route = cp.request("GET", f"{GW}/namespaces/{ns}/httproutes/web")
    assert status == 200
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "api"
    # Defaults from the CRD schema were applied by the server.
    assert route["spec"]["parentRefs"][0]["group"] == "gateway.networking.k8s.io"
    status, tcp = cp.request("GET", f"{GW}/namespaces/{ns}/tcproutes/db")
    assert status == 200
    assert tcp["apiVersion"] == "gateway.networking.k8s.io/v1"

    # The status subresource is separate and patchable, as a controller does it.
    now = "2025-01-01T00:00:00Z"
    accepted = {
        "type": "Accepted",
        "status": "True",
        "reason": "Accepted",
        "message": "test",
        "observedGeneration": gw["metadata"]["generation"],
        "lastTransitionTime": now,
    }
    status, patched = cp.request(
        "PATCH",
        f"{GW}/namespaces/{ns}/gateways/gw/status",
        {"status": {"conditions": [accepted], "addresses": [{"value": "192.0.2.10"}]}},
        content_type="application/merge-patch+json",
    )
    assert status == 200, patched
    assert patched["status"]["addresses"] == [{"type": "IPAddress", "value": "192.0.2.10"}]
    status, patched = cp.request(
        "PATCH",
        f"{GW}/namespaces/{ns}/httproutes/web/status",
        {
            "status": {
                "parents": [
                    {
                        "parentRef": {"name": "gw", "sectionName": "http"},
                        "controllerName": "gatewaylb.io/test-controller",
                        "conditions": [{**accepted, "observedGeneration": 1}],
                    }
                ]
            }
        },
        content_type="application/merge-patch+json",
    )
    assert status == 200, patched
    status, route = cp.request("GET", f"{GW}/namespaces/{ns}/httproutes/web")
    assert route["status"]["parents"][0]["conditions"][0]["type"] == "Accepted"
    # A status write does not bump the spec's generation.
    assert route["metadata"]["generation"] == 1


def test_invalid_gateways_rejected(controlplane: ControlPlane) -> None:
    cp = controlplane
    ns = "gwapi-invalid"
    cp.ensure_namespace(ns)
    path = f"{GW}/namespaces/{ns}/gateways"

    def rejected(gw: dict[str, Any]) -> str:
        status, body = cp.request("POST", path, gw)
        assert status == 422, body
        assert body["reason"] == "Invalid"
        message: str = body["message"]
        return message

    # Two listeners with the same name: the list is a map keyed by name, and a
    # CEL rule says the same.
    msg = rejected(
        _gateway(
            "dup-name",
            [
                {"name": "web", "port": 80, "protocol": "HTTP"},
                {"name": "web", "port": 81, "protocol": "HTTP"},
            ],
        )
    )
    assert "Duplicate value" in msg or "Listener name must be unique" in msg
    # Same port, protocol and hostname under different names: CEL only.
    msg = rejected(
        _gateway(
            "dup-port",
            [
                {"name": "a", "port": 80, "protocol": "HTTP"},
                {"name": "b", "port": 80, "protocol": "HTTP"},
            ],
        )
    )
    assert "Combination of port, protocol and hostname must be unique" in msg
    # A hostname on a TCP listener: CEL only.
    msg = rejected(
        _gateway("tcp-host", [{"name": "t", "port": 9, "protocol": "TCP", "hostname": "x.test"}])
    )
    assert "hostname must not be specified for protocols ['TCP', 'UDP']" in msg
    status, gws = cp.request("GET", path)
    assert status == 200 and gws["items"] == []


def test_apiserver_restart_keeps_data_and_address(controlplane: ControlPlane) -> None:
    cp = controlplane
    cp.ensure_namespace("restart-test")
    server = cp.server
    cp.restart_apiserver()
    assert cp.server == server
    status, ns = cp.request("GET", "/api/v1/namespaces/restart-test")
    assert status == 200, ns
    # Bound tokens stay valid: the signing key is the same.
    token = cp.token_for("restart-test", "after")
    assert cp.request("GET", "/api/v1/secrets", token=token)[0] == 403
