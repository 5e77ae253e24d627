"""A pod worker: one thread per pod bound to the node, as the kubelet has.

It builds the pod's sandbox and volumes, starts each container, restarts them
by the pod's restartPolicy with the kubelet's back-off, runs their probes,
writes the pod's status as a kubelet does, and on deletion runs the preStop
hooks, stops the containers within the grace period, tears the sandbox down
and finishes the deletion.  What it cannot honour never passes silently: the
container waits with reason CreateContainerConfigError (or ErrImagePull) and
a message naming the field.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import images, spec
from .container import Run, Tracker, rfc3339
from .nodefs import NodeFilesystem
from .probes import ProbeSpec, ProbeState, run_probe
from .sandbox import PodNetwork, Sandbox
from .volumes import MountPoints, materialize

BACKOFF_INITIAL = 10.0  # the kubelet's container restart back-off
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
TICK = 0.1
RETRY_SETUP = 2.0  # a missing Secret or ConfigMap is looked up again this often


@dataclass
class NodeServices:
    """What every pod worker of one node shares."""

    node_name: str
    host_ip: str
    api: Any  # controlplane.ControlPlane: request(method, path, body, ...)
    network: PodNetwork
    tracker: Tracker
    filesystem: NodeFilesystem
    mountpoints: MountPoints
    root: Path
    node_socket: Callable[[], socket.socket]
    kubernetes_service: tuple[str, int]  # the `kubernetes` Service's ClusterIP and port


class ContainerSlot:
    """One container of the pod across its restarts."""

    def __init__(self, index: int, container: Mapping[str, Any]) -> None:
        self.index = index
        self.spec = container
        self.name: str = container["name"]
        self.waiting: tuple[str, str] | None = ("ContainerCreating", "")
        self.run: Run | None = None
        self.previous: Run | None = None
        self.restarts = 0
        self.backoff = 0.0
        self.next_start = 0.0
        self.finished = False  # terminated and not to be restarted
        self.terminated_reason = ""
        self.probes: dict[str, ProbeState] = {}

    @property
    def where(self) -> str:
        return f"spec.containers[{self.index}]"

    def running(self) -> bool:
        return self.run is not None and self.run.poll() is None

    def started(self) -> bool:
        startup = self.probes.get("startup")
        return self.running() and (startup is None or startup.result)

    def ready(self) -> bool:
        readiness = self.probes.get("readiness")
        return self.started() and (readiness is None or readiness.result)


class PodWorker:
    def __init__(self, node: NodeServices, pod: Mapping[str, Any]) -> None:
        self.node = node
        self.pod: Mapping[str, Any] = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.key = f"{self.namespace}/{self.name}"
        self.dir = node.root / "pods" / self.uid
        self.log_dir = node.root / "logs" / f"{self.namespace}_{self.name}_{self.uid}"
        self.slots = [ContainerSlot(i, c) for i, c in enumerate(pod["spec"]["containers"])]
        self.sandbox: Sandbox | None = None
        self.volumes: dict[str, Path] | None = None
        self.start_time = time.time()
        self.transitions: dict[str, tuple[bool, str]] = {}
        self.last_status: dict[str, Any] | None = None
        self.deleted_from_api = False
        self.done = threading.Event()
        self._update = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=f"pod-{self.key}", daemon=True)

    # -- driven by the node agent -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def update(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            self.pod = pod
        self._update.set()

    def gone(self) -> None:
        """Deleted from the API (a forced delete): stop at once."""
        self.deleted_from_api = True
        self._update.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # -- the loop -------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._live()
            self._terminate()
        finally:
            self.done.set()

    def _deleting(self) -> bool:
        return self.deleted_from_api or bool(self.pod["metadata"].get("deletionTimestamp"))

    def _live(self) -> None:
        problems = spec.unsupported(self.pod["spec"])
        if problems:
            message = "not supported by this node: " + ", ".join(problems)
            for slot in self.slots:
                slot.waiting = ("CreateContainerConfigError", message)
            self._report()
            while not self._deleting():
                self._update.wait(1.0)
                self._update.clear()
            return
        next_setup = 0.0
        while not self._deleting():
            now = time.monotonic()
            if self.volumes is None and now >= next_setup:
                self._setup()
                next_setup = now + RETRY_SETUP
            if self.volumes is not None:
                for slot in self.slots:
                    self._tend(slot)
            self._report()
            if self._all_finished():
                self._teardown()
                while not self._deleting():
                    self._update.wait(1.0)
                    self._update.clear()
                return
            self._update.wait(TICK)
            self._update.clear()

    def _setup(self) -> None:
        try:
            if self.sandbox is None:
                host_network = bool(self.pod["spec"].get("hostNetwork"))
                self.sandbox = (
                    self.node.network.host() if host_network else self.node.network.create()
                )
            self.volumes = materialize(
                self.pod,
                self.dir,
                self._data_of,
                self._token_for,
                self._facts(),
                self.node.filesystem.resolve,
            )
        except spec.ConfigError as e:
            for slot in self.slots:
                slot.waiting = ("ContainerCreating", f"MountVolume.SetUp failed: {e}")

    def _all_finished(self) -> bool:
        return all(slot.finished for slot in self.slots)

    # -- containers -------------------------------------------------------------------

    def _tend(self, slot: ContainerSlot) -> None:
        now = time.time()
        if slot.run is not None and slot.run.poll() is not None:
            self._exited(slot, now)
        if slot.run is None and not slot.finished and now >= slot.next_start:
            self._start(slot)
        if slot.running():
            self._probe(slot, now)

    def _exited(self, slot: ContainerSlot, now: float) -> None:
        run = slot.run
        assert run is not None and run.exit_code is not None
        slot.previous, slot.run = run, None
        error = run.start_error()
        slot.terminated_reason = (
            "StartError" if error else ("Completed" if run.exit_code == 0 else "Error")
        )
        slot.probes = {}
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Never" or (policy == "OnFailure" and run.exit_code == 0):
            slot.finished = True
            return
        # The kubelet restarts at once the first time, then backs off.
        ran = (run.finished_at or now) - run.started_at
        if ran > BACKOFF_RESET_AFTER:
            slot.backoff = 0.0
        slot.next_start = now + slot.backoff
        slot.backoff = min(BACKOFF_MAX, slot.backoff * 2 if slot.backoff else BACKOFF_INITIAL)
        slot.restarts += 1
        if slot.next_start > now:
            slot.waiting = (
                "CrashLoopBackOff",
                f"back-off {slot.next_start - now:.0f}s restarting failed container="
                f"{slot.name} pod={self.name}_{self.namespace}({self.uid})",
            )

    def _start(self, slot: ContainerSlot) -> None:
        assert self.sandbox is not None and self.volumes is not None
        image = images.resolve(slot.spec.get("image", ""))
        if isinstance(image, str):
            slot.waiting = ("ErrImagePull", image)
            slot.next_start = time.time() + RETRY_SETUP
            return
        if (missing := image.missing()) is not None:
            slot.waiting = ("ErrImagePull", f'image "{slot.spec["image"]}": {missing}')
            slot.next_start = time.time() + RETRY_SETUP
            return
        try:
            env = spec.environment(
                slot.spec, image, self._facts(), self._data_of, self._service_env()
            )
            argv = spec.argv(slot.spec, image, env)
            caps = spec.capabilities(slot.spec)
            mounts = self.node.mountpoints.mounts(slot.spec, self.volumes, slot.where)
            probes = {
                kind: ProbeSpec.parse(slot.spec[f"{kind}Probe"])
                for kind in ("startup", "liveness", "readiness")
                if slot.spec.get(f"{kind}Probe")
            }
        except (spec.ConfigError, ValueError) as e:
            slot.waiting = ("CreateContainerConfigError", f"{slot.where}: {e}")
            slot.next_start = time.time() + RETRY_SETUP
            return
        ctx = slot.spec.get("securityContext") or {}
        # The container's own /tmp, as its image's writable layer would give
        # it: fresh for each run, never the node's.
        tmp = self.dir / "layers" / f"{slot.name}-{slot.restarts}" / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o1777)
        # The image's files stay where they are on the node, /tmp or not.
        image_files = []
        for p in image.files:
            if p.is_relative_to("/tmp"):
                (tmp / p.relative_to("/tmp")).mkdir(parents=True, exist_ok=True)
                image_files.append({"source": str(p), "target": str(p), "readOnly": False})
        launch = {
            "netns": f"/run/netns/{self.sandbox.ns}",
            "hostname": self.name if self.sandbox.own else None,
            "mounts": [
                {"source": str(tmp), "target": "/tmp", "readOnly": False},
                *image_files,
                *mounts,
            ],
            "workingDir": slot.spec.get("workingDir"),
            "argv": argv,
            "env": env,
            "capabilities": caps,
            "noNewPrivs": ctx.get("allowPrivilegeEscalation") is False,
        }
        work = self.dir / "run"
        work.mkdir(parents=True, exist_ok=True)
        slot.run = Run(
            self.node.tracker,
            f"{self.uid}-{slot.name}-{slot.restarts}",
            launch,
            self.log_dir / slot.name / f"{slot.restarts}.log",
            work,
        )
        slot.waiting = None
        started = slot.run.started_at
        slot.probes = {
            kind: ProbeState(p, started, initial=kind != "readiness") for kind, p in probes.items()
        }
        if "startup" in slot.probes:
            slot.probes["startup"].result = False

    def _probe(self, slot: ContainerSlot, now: float) -> None:
        assert slot.run is not None and self.sandbox is not None
        order = ["startup"] if not slot.started() else ["liveness", "readiness"]
        for kind in order:
            state = slot.probes.get(kind)
            if state is None or not state.due(now):
                continue
            ok, message = run_probe(
                state.spec,
                self.sandbox.ip,
                slot.spec.get("ports") or [],
                slot.run.pid,
                self.node.node_socket,
            )
            state.record(ok, message, time.time())
            if kind in ("startup", "liveness") and state.failures >= state.spec.failure_threshold:
                # The kubelet kills a container that fails liveness (or never
                # starts) and lets restartPolicy decide what follows.
                slot.run.stop(self._grace())

    # -- status ---------------------------------------------------------------------------

    def _condition(self, kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != ok:
            self.transitions[kind] = (ok, rfc3339(time.time()))
        cond = {
            "type": kind,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": self.transitions[kind][1],
        }
        if reason and not ok:
            cond["reason"] = reason
        return cond

    def _container_status(self, slot: ContainerSlot) -> dict[str, Any]:
        def terminated(run: Run, reason: str) -> dict[str, Any]:
            out = {
                "exitCode": run.exit_code,
                "reason": reason,
                "startedAt": rfc3339(run.started_at),
                "finishedAt": rfc3339(run.finished_at or time.time()),
                "containerID": f"gatewaylb-lab://{run.pid}",
            }
            if (error := run.start_error()) is not None:
                out["message"] = error
            return {"terminated": out}

        if slot.running():
            assert slot.run is not None
            state: dict[str, Any] = {"running": {"startedAt": rfc3339(slot.run.started_at)}}
        elif slot.finished and slot.previous is not None:
            state = terminated(slot.previous, slot.terminated_reason)
        else:
            reason, message = slot.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status: dict[str, Any] = {
            "name": slot.name,
            "image": slot.spec.get("image", ""),
            "imageID": "",
            "ready": slot.ready(),
            "started": slot.started(),
            "restartCount": slot.restarts,
            "state": state,
            "lastState": {},
        }
        if slot.run is not None:
            status["containerID"] = f"gatewaylb-lab://{slot.run.pid}"
        if slot.previous is not None and not slot.finished:
            status["lastState"] = terminated(slot.previous, slot.terminated_reason)
        return status

    def status(self) -> dict[str, Any]:
        containers = [self._container_status(s) for s in self.slots]
        all_ready = all(c["ready"] for c in containers)
        if self._all_finished():
            failed = any(s.previous is None or s.previous.exit_code != 0 for s in self.slots)
            phase = "Failed" if failed else "Succeeded"
        elif any(s.run is not None or s.restarts for s in self.slots):
            phase = "Running"
        else:
            phase = "Pending"
        scheduled = next(
            (
                c
                for c in self.pod.get("status", {}).get("conditions") or []
                if c["type"] == "PodScheduled"
            ),
            None,
        )
        conditions = [
            self._condition("PodReadyToStartContainers", self.sandbox is not None),
            self._condition("Initialized", True),
            self._condition("Ready", all_ready, "ContainersNotReady"),
            self._condition("ContainersReady", all_ready, "ContainersNotReady"),
        ]
        if scheduled:
            conditions.append(scheduled)
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.node.host_ip,
            "hostIPs": [{"ip": self.node.host_ip}],
            "startTime": rfc3339(self.start_time),
            "containerStatuses": containers,
        }
        if self.sandbox is not None:
            status["podIP"] = self.sandbox.ip
            status["podIPs"] = [{"ip": self.sandbox.ip}]
        return status

    def _report(self) -> None:
        status = self.status()
        if status == self.last_status:
            return
        code, _body = self.node.api.request(
            "PATCH",
            f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )
        if code == 200:
            self.last_status = status
        elif code == 404:
            self.deleted_from_api = True

    # -- termination ------------------------------------------------------------------

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(grace)

    def _terminate(self) -> None:
        grace = 0.0 if self.deleted_from_api else self._grace()
        deadline = time.monotonic() + grace
        stoppers = [
            threading.Thread(target=self._stop_container, args=(slot, deadline), daemon=True)
            for slot in self.slots
            if slot.running()
        ]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        for slot in self.slots:
            if slot.run is not None:
                slot.previous, slot.run = slot.run, None
                slot.terminated_reason = "Completed" if slot.previous.exit_code == 0 else "Error"
            slot.finished = True
        self._teardown()
        if self.deleted_from_api:
            return
        self._report()
        # The kubelet finishes the deletion once nothing runs (grace 0, only
        # this incarnation of the pod).
        self.node.api.request(
            "DELETE",
            f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
            {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            },
        )

    def _stop_container(self, slot: ContainerSlot, deadline: float) -> None:
        run = slot.run
        assert run is not None
        pre_stop = (slot.spec.get("lifecycle") or {}).get("preStop")
        if pre_stop and not self.deleted_from_api:
            self._pre_stop(pre_stop, run, deadline)
        run.stop(max(0.0, deadline - time.monotonic()))

    def _pre_stop(self, hook: Mapping[str, Any], run: Run, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if "sleep" in hook:
            time.sleep(max(0.0, min(remaining, float(hook["sleep"]["seconds"]))))
            return
        kinds = {"exec": "exec", "httpGet": "httpGet", "tcpSocket": "tcpSocket"}
        kind = next((k for k in kinds if k in hook), None)
        if kind is None:
            return
        probe = ProbeSpec(kind, hook[kind], 0, 1, max(0.1, remaining), 1, 1)
        assert self.sandbox is not None
        run_probe(probe, self.sandbox.ip, [], run.pid, self.node.node_socket)

    def _teardown(self) -> None:
        for slot in self.slots:
            if slot.run is not None:
                slot.run.stop(0)
        if self.sandbox is not None:
            self.node.network.remove(self.sandbox)
        volumes = self.dir / "volumes"
        if volumes.exists():
            shutil.rmtree(volumes, ignore_errors=True)

    # -- lookups --------------------------------------------------------------------------

    def _facts(self) -> spec.PodFacts:
        meta = self.pod["metadata"]
        return spec.PodFacts(
            name=self.name,
            namespace=self.namespace,
            uid=self.uid,
            node_name=self.node.node_name,
            service_account=self.pod["spec"].get("serviceAccountName", "default"),
            pod_ip=self.sandbox.ip if self.sandbox else "",
            host_ip=self.node.host_ip,
            labels=meta.get("labels") or {},
            annotations=meta.get("annotations") or {},
        )

    def _data_of(self, kind: str, name: str) -> Mapping[str, str] | None:
        plural = "secrets" if kind == "Secret" else "configmaps"
        code, body = self.node.api.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/{plural}/{quote(name, safe='')}"
        )
        if code != 200:
            return None
        if kind == "Secret":
            return {
                k: base64.b64decode(v).decode(errors="replace")
                for k, v in (body.get("data") or {}).items()
            }
        data = dict(body.get("data") or {})
        for k, v in (body.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v).decode(errors="replace")
        return data

    def _token_for(self, service_account: str, audience: str | None, expiration: int) -> str:
        request: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            },
        }
        if audience:
            request["spec"]["audiences"] = [audience]
        code, body = self.node.api.request(
            "POST",
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{service_account}/token",
            request,
        )
        if code != 201:
            raise spec.ConfigError(f"token for serviceaccount {service_account}: HTTP {code}")
        return str(body["status"]["token"])

    def _service_env(self) -> dict[str, str]:
        """The kubernetes Service's variables for every pod, and with
        enableServiceLinks (the default) those of the pod namespace's
        Services, as docker links name them."""
        services: list[tuple[str, str, list[Mapping[str, Any]]]] = []
        host, port = self.node.kubernetes_service
        services.append(("kubernetes", host, [{"port": port, "protocol": "TCP", "name": "https"}]))
        if self.pod["spec"].get("enableServiceLinks", True):
            code, body = self.node.api.request(
                "GET", f"/api/v1/namespaces/{self.namespace}/services"
            )
            for svc in (body.get("items") or []) if code == 200 else []:
                ip = svc["spec"].get("clusterIP")
                if ip and ip != "None" and svc["metadata"]["name"] != "kubernetes":
                    services.append((svc["metadata"]["name"], ip, svc["spec"].get("ports") or []))
        env: dict[str, str] = {}
        for name, ip, ports in services:
            if not ports:
                continue
            prefix = name.upper().replace("-", "_")
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            for p in ports:
                if p.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(
                        p["port"]
                    )
                proto = p.get("protocol", "TCP")
                base = f"{prefix}_PORT_{p['port']}_{proto}"
                env[base] = f"{proto.lower()}://{ip}:{p['port']}"
                env[f"{base}_PROTO"] = proto.lower()
                env[f"{base}_PORT"] = str(p["port"])
                env[f"{base}_ADDR"] = ip
            first = ports[0]
            env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        return env

    # -- logs ---------------------------------------------------------------------------

    def log_file(self, container: str, previous: bool) -> Path | None:
        slot = next((s for s in self.slots if s.name == container), None)
        if slot is None:
            return None
        with contextlib.suppress(AttributeError):
            run = slot.previous if previous else (slot.run or slot.previous)
            return run.log_path if run is not None else None
        return None

    def running_log(self, container: str) -> bool:
        slot = next((s for s in self.slots if s.name == container), None)
        return slot is not None and slot.running()
