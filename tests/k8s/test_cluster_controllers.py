"""The test cluster's controllers: a real kube-controller-manager and
kube-scheduler, built from the same k8s.io/kubernetes module as the API
server, started and stopped by the same control-plane code.

No node runs pods yet: the tests play the node's part by hand (a Node object,
pod status as a kubelet writes it) and check what the controllers do with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from controlplane import ControlPlane

pytestmark = pytest.mark.root

NS = "ctl"


def wait_for(pred: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    with ControlPlane(controllers=True, crd_dir=None) as cp:
        print(f"\ncontrol plane with controllers up in {cp.timings['controllers']:.1f} s")
        cp.ensure_namespace(NS)
        yield cp


def get(cp: ControlPlane, path: str) -> Any:
    status, body = cp.request("GET", path)
    return body if status == 200 else None


def test_a_namespace_gets_its_service_account_and_root_ca(cluster: ControlPlane) -> None:
    wait_for(lambda: get(cluster, f"/api/v1/namespaces/{NS}/serviceaccounts/default"), 20)
    ca = wait_for(lambda: get(cluster, f"/api/v1/namespaces/{NS}/configmaps/kube-root-ca.crt"), 20)
    assert ca["data"]["ca.crt"] == cluster.ca_path.read_text()


def test_a_deployment_becomes_pods_the_scheduler_binds_and_slices_follow_ready_pods(
    cluster: ControlPlane,
) -> None:
    labels = {"app": "echo"}
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "echo", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "echo", "image": "echo:test"}]},
                },
            },
        }
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "echo", "namespace": NS},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 3000}]},
        }
    )

    def pods() -> list[dict[str, Any]]:
        body = get(cluster, f"/api/v1/namespaces/{NS}/pods?labelSelector=app%3Decho")
        return list(body["items"]) if body else []

    wait_for(lambda: len(pods()) == 2, 30)
    # No node yet: the scheduler says so on each pod.
    wait_for(
        lambda: all(
            any(
                c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                for c in p.get("status", {}).get("conditions", [])
            )
            for p in pods()
        ),
        30,
    )
    # A Ready node: the scheduler binds both pods to it.
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}
    cluster.apply(node)
    status = {
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": "10.10.0.1"}],
        }
    }
    code, body = cluster.request(
        "PATCH",
        "/api/v1/nodes/node-1/status",
        status,
        content_type="application/merge-patch+json",
    )
    assert code == 200, body
    # The API server taints a new node not-ready; the node lifecycle controller
    # (not run here: no node renews a Lease yet) would lift it once Ready.
    code, body = cluster.request(
        "PATCH",
        "/api/v1/nodes/node-1",
        {"spec": {"taints": None}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, body
    t0 = time.monotonic()
    wait_for(lambda: all(p["spec"].get("nodeName") == "node-1" for p in pods()), 60)
    print(f"\nboth pods bound to node-1 {time.monotonic() - t0:.2f} s after it was schedulable")
    # As a kubelet would: the pods run, with their IPs, and are Ready.
    for i, pod in enumerate(pods()):
        ip = f"10.244.0.{10 + i}"
        ready = {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": "10.10.0.1",
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "ContainersReady", "status": "True"},
                ],
            }
        }
        name = pod["metadata"]["name"]
        code, body = cluster.request(
            "PATCH",
            f"/api/v1/namespaces/{NS}/pods/{name}/status",
            ready,
            content_type="application/strategic-merge-patch+json",
        )
        assert code == 200, body

    def sliced() -> set[str]:
        body = get(
            cluster,
            f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
            "?labelSelector=kubernetes.io%2Fservice-name%3Decho",
        )
        return {
            a
            for s in (body or {}).get("items", [])
            for e in s.get("endpoints") or []
            if e.get("conditions", {}).get("ready")
            for a in e["addresses"]
        }

    t0 = time.monotonic()
    wait_for(lambda: sliced() == {"10.244.0.10", "10.244.0.11"}, 20)
    print(f"EndpointSlice with both ready pods {time.monotonic() - t0:.2f} s after their status")


def test_deleting_a_namespace_removes_what_it_held(cluster: ControlPlane) -> None:
    cluster.ensure_namespace("ctl-gone")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "ctl-gone"},
            "data": {"a": "b"},
        }
    )
    code, body = cluster.request("DELETE", "/api/v1/namespaces/ctl-gone")
    assert code == 200, body
    wait_for(lambda: get(cluster, "/api/v1/namespaces/ctl-gone") is None, 60)
