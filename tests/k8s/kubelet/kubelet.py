"""The node agent that plays the kubelet for one lab node.

It registers the Node and heartbeats its Lease (`nodeagent.NodeAgent`),
watches the pods bound to the node and gives each a `PodWorker`, and serves
the kubelet API (container logs) behind the API server's egress tunnel.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from controlplane import ControlPlane, _signed_cert
from nodeagent import NodeAgent

from agent.lab import Lab

from .container import Tracker
from .nodefs import NodeFilesystem
from .pods import NodeServices, PodWorker
from .sandbox import PodNetwork
from .server import ConnectProxy, KubeletAPI
from .volumes import MountPoints

KUBELET_PORT = 10250


class Kubelet:
    def __init__(
        self,
        cp: ControlPlane,
        lab: Lab,
        *,
        name: str,
        pod_cidr: str,
        root: Path,
        kubernetes_service: tuple[str, int],
        egress_socket: Path,
    ) -> None:
        self.cp, self.lab, self.name = cp, lab, name
        self.root = root
        self.egress_socket = egress_socket
        self.node_ip = lab.node.ip4
        self.node = NodeAgent(cp, name, self.node_ip, pod_cidr, kubelet_port=KUBELET_PORT)
        tracker = Tracker(f"gatewaylb-lab/{lab.prefix.strip('-')}")
        self.services = NodeServices(
            node_name=name,
            host_ip=self.node_ip,
            api=cp,
            network=PodNetwork(lab.prefix, lab.node.ns, self.node_ip, pod_cidr, bridge="br0"),
            tracker=tracker,
            filesystem=NodeFilesystem(root, tracker.scope),
            mountpoints=MountPoints(),
            root=root,
            node_socket=self.node_socket,
            kubernetes_service=kubernetes_service,
        )
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch_conn: http.client.HTTPSConnection | None = None
        self._watcher = threading.Thread(target=self._watch, name="kubelet-watch", daemon=True)
        self._api: KubeletAPI | None = None
        self._proxy: ConnectProxy | None = None

    def node_socket(self) -> socket.socket:
        return self.lab.call(self.lab.node, socket.socket, socket.AF_INET, socket.SOCK_STREAM)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._serve()
        self.node.start()
        self._watcher.start()

    def _serve(self) -> None:
        pki = self.cp.pki
        _signed_cert(
            pki,
            "kubelet",
            f"/O=system:nodes/CN=system:node:{self.name}",
            [
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid",
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=serverAuth",
                f"subjectAltName=IP:{self.node_ip},DNS:{self.name}",
            ],
        )
        context = ssl_server_context(pki / "kubelet.crt", pki / "kubelet.key", self.cp.ca_path)

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.node_ip, KUBELET_PORT))
            sock.listen(64)
            return sock

        self._api = KubeletAPI(self.lab.call(self.lab.node, listen), context, self._find)
        threading.Thread(target=self._api.serve_forever, name="kubelet-api", daemon=True).start()
        self._proxy = ConnectProxy(self.egress_socket, self.node_socket)

    def stop(self) -> None:
        """Stop every pod's containers (the node is going away), then the
        watch, the API and the heartbeat."""
        self._stop.set()
        if self._watch_conn is not None and self._watch_conn.sock is not None:
            with contextlib.suppress(OSError):
                self._watch_conn.sock.shutdown(socket.SHUT_RDWR)
        self._watcher.join(timeout=10) if self._watcher.is_alive() else None
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.gone()
        for w in workers:
            w.join(timeout=15)
        if self._api is not None:
            self._api.shutdown()
            self._api.server_close()
        if self._proxy is not None:
            self._proxy.close()
        self.node.stop()
        self.services.tracker.close()
        self.services.filesystem.close()
        self.services.mountpoints.remove()
        shutil.rmtree(self.root / "pods", ignore_errors=True)

    # -- pods -----------------------------------------------------------------------------

    def _find(self, namespace: str, name: str) -> PodWorker | None:
        with self._lock:
            matches = [
                w for w in self.workers.values() if (w.namespace, w.name) == (namespace, name)
            ]
        return matches[-1] if matches else None

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self.workers.get(uid)
            for key, w in list(self.workers.items()):
                if w.done.is_set() and key != uid:
                    del self.workers[key]
        if kind == "DELETED":
            if worker is not None:
                worker.gone()
            return
        if worker is not None:
            worker.update(pod)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        if pod["metadata"].get("deletionTimestamp"):
            # Bound but never started here: nothing to stop.
            self.cp.request(
                "DELETE",
                f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )
            return
        worker = PodWorker(self.services, pod)
        with self._lock:
            self.workers[uid] = worker
        worker.start()

    def _watch(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self._stop.is_set():
            try:
                code, body = self.cp.request(
                    "GET", "/api/v1/pods", query={"fieldSelector": selector}
                )
                if code != 200:
                    raise OSError(f"list pods: HTTP {code}")
                listed = {p["metadata"]["uid"] for p in body["items"]}
                for pod in body["items"]:
                    self._handle("MODIFIED", pod)
                with self._lock:
                    vanished = [w for uid, w in self.workers.items() if uid not in listed]
                for w in vanished:
                    w.gone()
                self._stream(selector, body["metadata"]["resourceVersion"])
            except (OSError, http.client.HTTPException, ValueError):
                if self._stop.wait(0.5):
                    return

    def _stream(self, selector: str, version: str) -> None:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.cp.port, context=self.cp.ssl_context(), timeout=None
        )
        self._watch_conn = conn
        try:
            query = (
                f"fieldSelector={selector}&watch=true&allowWatchBookmarks=true"
                f"&resourceVersion={version}&timeoutSeconds=600"
            )
            conn.request("GET", f"/api/v1/pods?{query}", headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise OSError(f"watch pods: HTTP {resp.status}")
            while not self._stop.is_set():
                line = resp.readline()
                if not line:
                    return
                event = json.loads(line)
                if event["type"] == "ERROR":
                    return  # e.g. 410 Gone: list again
                if event["type"] != "BOOKMARK":
                    self._handle(event["type"], event["object"])
        finally:
            conn.close()

    # -- for tests ------------------------------------------------------------------------

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(w.done.is_set() for w in self.workers.values()):
                    return
            time.sleep(0.1)


def ssl_server_context(cert: Path, key: Path, client_ca: Path) -> Any:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
