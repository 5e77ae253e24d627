"""The test cluster's controllers: a real kube-controller-manager and
kube-scheduler, built from the same k8s.io/kubernetes module as the API
server, started and stopped by the same control-plane code.

No pod runs here: `nodeagent.NodeAgent` registers a Node and renews its
Lease as a kubelet does, and the tests write pod status as a kubelet would,
then check what the controllers do with it (tests/k8s/cluster.py has a node
that runs the pods; test_cluster_gatewaylb.py uses it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from controlplane import NODE_MONITOR_GRACE, ControlPlane
from nodeagent import NodeAgent

from agent.lab import wait_for

pytestmark = pytest.mark.root

NS = "ctl"


nodes: list[NodeAgent] = []


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    with ControlPlane(controllers=True, crd_dir=None) as cp:
        print(f"\ncontrol plane with controllers up in {cp.timings['controllers']:.1f} s")
        cp.ensure_namespace(NS)
        try:
            yield cp
        finally:
            for node in nodes:
                node.stop()


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
    # A node that heartbeats: the node lifecycle controller lifts the not-ready
    # taint the API server gives every new node, and the scheduler binds.
    node = NodeAgent(cluster, "node-1", "10.10.0.1", "10.244.0.0/24")
    node.start()
    nodes.append(node)
    t0 = time.monotonic()
    wait_for(lambda: all(p["spec"].get("nodeName") == "node-1" for p in pods()), 60)
    print(f"\nboth pods bound to node-1 {time.monotonic() - t0:.2f} s after it registered")
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


def test_a_node_that_stops_heartbeating_goes_not_ready(cluster: ControlPlane) -> None:
    node = NodeAgent(cluster, "node-2", "10.10.0.2", "10.244.1.0/24", renew=1.0)
    node.start()
    nodes.append(node)

    def taints() -> set[str]:
        body = get(cluster, "/api/v1/nodes/node-2") or {}
        return {t["key"] for t in body.get("spec", {}).get("taints") or []}

    def ready() -> str:
        body = get(cluster, "/api/v1/nodes/node-2") or {}
        conds = body.get("status", {}).get("conditions") or []
        return next((c["status"] for c in conds if c["type"] == "Ready"), "")

    wait_for(lambda: "node.kubernetes.io/not-ready" not in taints(), 30)
    time.sleep(3)
    assert ready() == "True" and node.renewals > 0
    node.stop()
    t0 = time.monotonic()
    wait_for(lambda: ready() == "Unknown", 60)
    print(
        f"\nnode-2 NotReady {time.monotonic() - t0:.1f} s after its last heartbeat "
        f"(grace {NODE_MONITOR_GRACE})"
    )
    wait_for(lambda: "node.kubernetes.io/unreachable" in taints(), 10)
