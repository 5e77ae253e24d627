"""A pod's volumes as directories on the node, and the mounts that put them
at their mountPaths inside each container's private mount namespace.

Secret, ConfigMap, downwardAPI and projected volumes (the service-account
token, the cluster's root CA and the namespace, as ServiceAccount admission
adds them to every pod) are written once into the pod's directory; hostPath
is checked against its `type`; emptyDir is a fresh directory.  The kubelet
refreshes projected tokens before they expire; pods here live far shorter
than a token (an hour), so the first one is the only one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .spec import ConfigError, DataOf, PodFacts

# (serviceAccountName, audience or None, expirationSeconds) -> a token bound to the pod
TokenFor = Callable[[str, str | None, int], str]


def materialize(
    pod: Mapping[str, Any],
    root: Path,
    data_of: DataOf,
    token_for: TokenFor,
    facts: PodFacts,
    host_path: Callable[[Path], Path] = lambda p: p,
) -> dict[str, Path]:
    """Volume name -> the node path that backs it (`host_path` maps a path
    on the node to the machine's).  Raises ConfigError naming the volume when
    a source is missing (the kubelet's FailedMount)."""
    out: dict[str, Path] = {}
    for i, volume in enumerate(pod["spec"].get("volumes") or []):
        name = volume["name"]
        where = f"spec.volumes[{i}] ({name})"
        if "hostPath" in volume:
            out[name] = _host_path(volume["hostPath"], where, host_path)
            continue
        directory = root / "volumes" / name
        directory.mkdir(parents=True, exist_ok=True)
        out[name] = directory
        if "emptyDir" in volume:
            continue
        mode = 0o644
        sources: list[tuple[str, Mapping[str, Any]]]
        if "projected" in volume:
            mode = volume["projected"].get("defaultMode", mode)
            sources = [
                (k, v) for src in volume["projected"].get("sources") or [] for k, v in src.items()
            ]
        else:
            sources = [(k, v) for k, v in volume.items() if k != "name"]
            mode = next((v.get("defaultMode", mode) for _, v in sources), mode)
        for kind, source in sources:
            for path, content, file_mode in _files(kind, source, data_of, token_for, facts, where):
                _write(directory, path, content, file_mode if file_mode is not None else mode)
    return out


def _files(
    kind: str,
    source: Mapping[str, Any],
    data_of: DataOf,
    token_for: TokenFor,
    facts: PodFacts,
    where: str,
) -> list[tuple[str, bytes, int | None]]:
    if kind in ("secret", "configMap"):
        label = "Secret" if kind == "secret" else "ConfigMap"
        ref = source.get("secretName") or source.get("name") or ""
        data = data_of(label, ref)
        if data is None:
            if source.get("optional"):
                return []
            raise ConfigError(f"{where}: {label} {facts.namespace}/{ref} not found")
        items = source.get("items")
        if not items:
            return [(key, value.encode(), None) for key, value in data.items()]
        files = []
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise ConfigError(
                    f"{where}: {label} {facts.namespace}/{ref} has no key {item['key']!r}"
                )
            files.append((item["path"], data[item["key"]].encode(), item.get("mode")))
        return files
    if kind == "downwardAPI":
        return [
            (item["path"], facts.field(item["fieldRef"]["fieldPath"]).encode(), item.get("mode"))
            for item in source.get("items") or []
        ]
    if kind == "serviceAccountToken":
        token = token_for(
            facts.service_account,
            source.get("audience"),
            int(source.get("expirationSeconds", 3600)),
        )
        return [(source["path"], token.encode(), None)]
    raise ConfigError(f"{where}: volume source {kind} is not supported")


def _write(directory: Path, relative: str, content: bytes, mode: int) -> None:
    target = (directory / relative).resolve()
    if directory.resolve() not in target.parents:
        raise ConfigError(f"volume item path {relative!r} leaves the volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    os.chmod(target, mode & 0o777)


def _host_path(source: Mapping[str, Any], where: str, resolve: Callable[[Path], Path]) -> Path:
    path = resolve(Path(source["path"]))
    kind = source.get("type") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif kind == "FileOrCreate":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o644, exist_ok=True)
    checks = {
        "Directory": stat.S_ISDIR,
        "DirectoryOrCreate": stat.S_ISDIR,
        "File": stat.S_ISREG,
        "FileOrCreate": stat.S_ISREG,
        "Socket": stat.S_ISSOCK,
        "CharDevice": stat.S_ISCHR,
        "BlockDevice": stat.S_ISBLK,
    }
    if kind and kind not in checks:
        raise ConfigError(f"{where}: hostPath.type {kind} is not supported")
    if kind:
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise ConfigError(f"{where}: hostPath {path}: {e.strerror}") from None
        if not checks[kind](mode):
            raise ConfigError(f"{where}: hostPath {path} is not a {kind}")
    return path


class MountPoints:
    """The mount points the node had to create for mountPaths that do not
    exist on it (a container's view is the node's filesystem plus its
    mounts); removed again when the node agent stops."""

    def __init__(self) -> None:
        self._created: list[Path] = []
        self._lock = threading.Lock()

    def mounts(
        self, container: Mapping[str, Any], volumes: Mapping[str, Path], where: str
    ) -> list[dict[str, Any]]:
        out = []
        for j, mount in enumerate(container.get("volumeMounts") or []):
            if mount["name"] not in volumes:
                raise ConfigError(f"{where}.volumeMounts[{j}]: no volume {mount['name']!r}")
            source = volumes[mount["name"]] / mount.get("subPath", "")
            if not source.exists():
                source.mkdir(parents=True)
            target = Path(mount["mountPath"])
            self._ensure(target, directory=source.is_dir())
            out.append(
                {
                    "source": str(source),
                    "target": str(target),
                    "readOnly": bool(mount.get("readOnly")),
                }
            )
        return out

    def _ensure(self, target: Path, directory: bool) -> None:
        with self._lock:
            if target.exists():
                return
            missing = [p for p in (target, *target.parents) if not p.exists()]
            for p in reversed(missing):
                if p == target and not directory:
                    p.touch()
                else:
                    p.mkdir()
                self._created.append(p)

    def remove(self) -> None:
        with self._lock:
            for p in reversed(self._created):
                with contextlib.suppress(OSError):
                    p.rmdir() if p.is_dir() else p.unlink()
            self._created.clear()
