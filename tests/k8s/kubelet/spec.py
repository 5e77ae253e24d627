"""The pure half of the node agent: what a pod spec asks for, in the terms the
runtime half needs (argv, environment, capability numbers), and which of its
fields this node cannot honour.

Nothing here touches the kernel or the API server: lookups of Secrets and
ConfigMaps are passed in, so every rule is a unit test away.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .images import Image

# The fields a pod or container may carry (set by the user or by API
# defaulting) that this node honours, or that need nothing of a node.
POD_FIELDS = {
    "containers", "volumes", "restartPolicy", "terminationGracePeriodSeconds",
    "activeDeadlineSeconds", "dnsPolicy", "nodeSelector", "serviceAccountName",
    "serviceAccount", "automountServiceAccountToken", "nodeName", "hostNetwork",
    "securityContext", "hostname", "subdomain", "affinity", "schedulerName",
    "tolerations", "priorityClassName", "priority", "preemptionPolicy",
    "enableServiceLinks", "topologySpreadConstraints",
}  # fmt: skip
CONTAINER_FIELDS = {
    "name", "image", "command", "args", "workingDir", "ports", "env", "envFrom",
    "resources", "volumeMounts", "livenessProbe", "readinessProbe", "startupProbe",
    "lifecycle", "terminationMessagePath", "terminationMessagePolicy",
    "imagePullPolicy", "securityContext",
}  # fmt: skip
# securityContext fields and the only values this node can honour (it runs
# every container as root in the host's user namespace).
CONTAINER_SECURITY = {
    "capabilities": None,
    "privileged": None,
    "allowPrivilegeEscalation": None,
    "runAsNonRoot": False,
    "readOnlyRootFilesystem": False,
    "runAsUser": 0,
    "runAsGroup": 0,
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY = {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0}
VOLUME_SOURCES = {"secret", "configMap", "projected", "hostPath", "emptyDir", "downwardAPI"}
HANDLER_KINDS = {"exec", "httpGet", "tcpSocket", "sleep"}

# linux/capability.h
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
# What containerd and CRI-O give a container that asks for nothing.
RUNTIME_DEFAULT_CAPS = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip


class ConfigError(Exception):
    """A container this node will not start: the message names the field
    (CreateContainerConfigError)."""


def unsupported(pod_spec: Mapping[str, Any]) -> list[str]:
    """Every field of the pod that this node would otherwise ignore."""
    problems = [f"spec.{k}" for k in pod_spec if k not in POD_FIELDS]
    problems += _security(pod_spec.get("securityContext") or {}, POD_SECURITY, "spec")
    for i, volume in enumerate(pod_spec.get("volumes") or []):
        kinds = [k for k in volume if k != "name"]
        problems += [f"spec.volumes[{i}].{k}" for k in kinds if k not in VOLUME_SOURCES]
        if volume.get("emptyDir", {}).get("sizeLimit"):
            problems.append(f"spec.volumes[{i}].emptyDir.sizeLimit")
    for i, c in enumerate(pod_spec.get("containers") or []):
        where = f"spec.containers[{i}]"
        problems += [f"{where}.{k}" for k in c if k not in CONTAINER_FIELDS]
        problems += _security(c.get("securityContext") or {}, CONTAINER_SECURITY, where)
        lifecycle = c.get("lifecycle") or {}
        problems += [f"{where}.lifecycle.{k}" for k in lifecycle if k != "preStop"]
        for j, mount in enumerate(c.get("volumeMounts") or []):
            for key in ("subPathExpr", "recursiveReadOnly"):
                if mount.get(key):
                    problems.append(f"{where}.volumeMounts[{j}].{key}")
            if mount.get("mountPropagation") == "Bidirectional":
                problems.append(f"{where}.volumeMounts[{j}].mountPropagation")
        for j, env in enumerate(c.get("env") or []):
            ref = env.get("valueFrom") or {}
            for key in ref:
                if key not in ("fieldRef", "secretKeyRef", "configMapKeyRef"):
                    problems.append(f"{where}.env[{j}].valueFrom.{key}")
    return problems


def _security(ctx: Mapping[str, Any], honoured: Mapping[str, Any], where: str) -> list[str]:
    out = []
    for key, value in ctx.items():
        if key not in honoured:
            out.append(f"{where}.securityContext.{key}")
        elif honoured[key] is not None and value != honoured[key]:
            out.append(f"{where}.securityContext.{key}={value!r}")
    return out


def capabilities(container: Mapping[str, Any]) -> list[int] | None:
    """The capability numbers the container keeps; None: all (privileged)."""
    ctx = container.get("securityContext") or {}
    if ctx.get("privileged"):
        return None
    caps = ctx.get("capabilities") or {}
    drop = {_cap_name(c) for c in caps.get("drop") or []}
    kept = set() if "ALL" in drop else set(RUNTIME_DEFAULT_CAPS) - drop
    kept |= {_cap_name(c) for c in caps.get("add") or []}
    unknown = sorted(kept - set(CAPABILITIES))
    if unknown:
        raise ConfigError(f"securityContext.capabilities.add: unknown {', '.join(unknown)}")
    return sorted(CAPABILITIES.index(c) for c in kept)


def _cap_name(name: str) -> str:
    return name.upper().removeprefix("CAP_")


# --- environment and command -------------------------------------------------------


# (kind "Secret" or "ConfigMap", name) -> its data decoded, or None if absent.
DataOf = Callable[[str, str], Mapping[str, str] | None]


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What fieldRef may name (the downward API)."""

    name: str
    namespace: str
    uid: str
    node_name: str
    service_account: str
    pod_ip: str
    host_ip: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    def field(self, path: str) -> str:
        simple = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": self.service_account,
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return simple[path]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            source = self.labels if m.group(1) == "labels" else self.annotations
            return source.get(m.group(2), "")
        raise ConfigError(f"fieldRef.fieldPath: {path!r} is not supported")


def environment(
    container: Mapping[str, Any],
    image: Image,
    facts: PodFacts,
    data_of: DataOf,
    service_env: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment in the kubelet's order: the image's ENV,
    service variables, envFrom, then env (later wins; $(VAR) expanded
    against what came before)."""
    env = dict(image.env)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["HOSTNAME"] = facts.name
    env.update(service_env)
    for i, source in enumerate(container.get("envFrom") or []):
        refs = [(k, source[k]) for k in ("configMapRef", "secretRef") if k in source]
        if not refs:
            raise ConfigError(f"envFrom[{i}]: neither configMapRef nor secretRef")
        for kind, ref in refs:
            label = "ConfigMap" if kind == "configMapRef" else "Secret"
            data = data_of(label, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(
                    f"envFrom[{i}]: {label} {facts.namespace}/{ref.get('name')} not found"
                )
            for key, value in data.items():
                env[source.get("prefix", "") + key] = value
    for i, var in enumerate(container.get("env") or []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            env[name] = facts.field(ref["fieldRef"]["fieldPath"])
            continue
        for kind, label in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if kind not in ref:
                continue
            key_ref = ref[kind]
            value = (data_of(label, key_ref["name"]) or {}).get(key_ref["key"])
            if value is not None:
                env[name] = value
            elif not key_ref.get("optional"):
                raise ConfigError(
                    f"env[{i}] {name}: {label} {facts.namespace}/{key_ref['name']} "
                    f"has no key {key_ref['key']!r}"
                )
            break
        else:
            raise ConfigError(f"env[{i}].valueFrom: {', '.join(ref)} is not supported")
    return env


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes,
    anything else is left as written."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(one, text)


def argv(container: Mapping[str, Any], image: Image, env: Mapping[str, str]) -> list[str]:
    """command replaces the ENTRYPOINT, args the CMD (and command alone drops
    the CMD), as the kubelet composes them."""
    command: Sequence[str] = container.get("command") or image.entrypoint
    if container.get("command"):
        args: Sequence[str] = container.get("args") or ()
    else:
        args = container.get("args") or image.cmd
    out = [expand(a, env) for a in (*command, *args)]
    if not out:
        raise ConfigError("neither command nor the image's entrypoint names a program")
    return out
