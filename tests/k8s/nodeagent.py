"""The test cluster's node, as a kubelet keeps it alive: the Node and its Lease.

The first piece of the node agent that plays the kubelet for one lab node.  It
registers the Node (InternalIP, capacity, a pod CIDR, Ready) and renews the
node's Lease in `kube-node-lease` every `renew` seconds, which is how a
kubelet heartbeats; the node lifecycle controller then treats it as a live
node (it lifts the not-ready taint the API server puts on every new node) and,
once the heartbeats stop, marks it NotReady and taints it unreachable.

Running pods is `kubelet.Kubelet`'s part; this module owns only the Node
object and the Lease.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from controlplane import ControlPlane, ControlPlaneError

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40  # the kubelet's default


def micro_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class NodeAgent:
    def __init__(
        self,
        cp: ControlPlane,
        name: str,
        internal_ip: str,
        pod_cidr: str,
        *,
        renew: float = 2.0,
        capacity: dict[str, str] | None = None,
        kubelet_port: int = 10250,
    ) -> None:
        self.cp, self.name, self.internal_ip, self.pod_cidr = cp, name, internal_ip, pod_cidr
        self.renew = renew
        self.kubelet_port = kubelet_port
        self.capacity = capacity or {"cpu": "2", "memory": "4Gi", "pods": "110"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{name}", daemon=True)
        self.renewals = 0

    def _ok(self, status: int, body: Any, what: str) -> Any:
        if status not in (200, 201):
            raise ControlPlaneError(f"{what}: HTTP {status}: {body}")
        return body

    def register(self) -> None:
        """The Node, its status as a kubelet reports it, and its Lease."""
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
        }
        created = self._ok(*self.cp.request("POST", "/api/v1/nodes", node), "create Node")
        now = micro_time(time.time())
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "gatewaylb test node agent is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        status = {
            "status": {
                "conditions": [ready],
                "capacity": self.capacity,
                "allocatable": self.capacity,
                "addresses": [
                    {"type": "InternalIP", "address": self.internal_ip},
                    {"type": "Hostname", "address": self.name},
                ],
                # Where the API server finds this node's kubelet API (logs).
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
                "nodeInfo": {
                    "kubeletVersion": "v1.34.4",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            }
        }
        self._ok(
            *self.cp.request(
                "PATCH",
                f"/api/v1/nodes/{self.name}/status",
                status,
                content_type="application/merge-patch+json",
            ),
            "report Node status",
        )
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.name,
                        "uid": created["metadata"]["uid"],
                    }
                ],
            },
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now,
            },
        }
        self._ok(
            *self.cp.request(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", lease
            ),
            "create Lease",
        )

    def start(self) -> None:
        self.register()
        self._thread.start()

    def _heartbeat(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"
        while not self._stop.wait(self.renew):
            patch = {"spec": {"renewTime": micro_time(time.time())}}
            status, _ = self.cp.request(
                "PATCH", path, patch, content_type="application/merge-patch+json"
            )
            if status == 200:
                self.renewals += 1

    def stop(self) -> None:
        """Stop heartbeating (the node goes silent, as a dead kubelet would)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
