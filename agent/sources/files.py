"""The standalone source: a directory of manifest files, read into Snapshots.

Reads every *.yaml, *.yml and *.json below a directory (multi-document YAML,
JSON objects or arrays, and `kind: List` wrappers), remembering where each
document starts so that messages read FILE:LINE.  `ManifestDirectory` keeps the
last good parse of every file: a file that is half-saved or broken is reported
and its previous content stays in force, so a typo never removes working VIPs.
No API server validated these files, so unknown kinds and fields are warned
about (Snapshot.warnings), as `kubectl --validate=strict` would.

Knows nothing of the kernel or of Gateway API semantics.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.model.snapshot import Snapshot, SnapshotBuilder
from agent.sources.inotify import DirectoryWatcher

SUFFIXES = (".yaml", ".yml", ".json")
# A manifest bigger than this is a mistake (or an attack), not configuration.
MAX_FILE_BYTES = 64 * 1024 * 1024


class ManifestError(Exception):
    """A file that cannot be read or parsed; str() is 'FILE:LINE: message'."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


# libyaml's parser when PyYAML was built with it (Debian's is): 20x faster than
# the pure-Python one, which took 7 s for 10k routes.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Safe YAML without implicit timestamps: creationTimestamp stays the string
    the API server would send, not a datetime."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _expand(doc: Any, source: str) -> Iterator[tuple[object, str]]:
    """Unwrap `kind: List` and JSON arrays into their items."""
    if isinstance(doc, list):
        for item in doc:
            yield from _expand(item, source)
    elif isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            yield item, source
    elif doc is not None:
        yield doc, source


def parse_text(text: str, path: str) -> list[tuple[object, str]]:
    """Documents of one file with their 'FILE:LINE' source; raises ManifestError."""
    docs: list[tuple[object, str]] = []
    if path.endswith(".json"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(path, exc.lineno, exc.msg) from None
        docs.extend(_expand(value, f"{path}:1"))
        return docs
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            docs.extend(_expand(loader.construct_document(node), f"{path}:{line}"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ManifestError(path, line, str(exc.problem or exc.context or "invalid YAML")) from None
    except yaml.YAMLError as exc:
        raise ManifestError(path, None, str(exc)) from None
    except RecursionError:
        raise ManifestError(path, None, "document is nested too deeply") from None
    finally:
        loader.dispose()
    return docs


def read_file(path: Path) -> list[tuple[object, str]]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ManifestError(str(path), None, f"file is larger than {MAX_FILE_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(str(path), None, exc.strerror or str(exc)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(str(path), None, f"not UTF-8: {exc.reason}") from None
    return parse_text(text, str(path))


def manifest_files(directory: Path) -> list[Path]:
    """Every manifest below `directory`, sorted; hidden files and editors' temp
    files (.foo.yaml.swp, #foo#) are skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith((".", "#")) or not name.endswith(SUFFIXES):
                continue
            found.append(Path(root) / name)
    return sorted(found)


def load_directory(directory: Path) -> Snapshot:
    """One strict read: raises ManifestError on the first unreadable file."""
    if not directory.is_dir():
        raise ManifestError(str(directory), None, "not a directory")
    builder = SnapshotBuilder(check_fields=True)
    for path in manifest_files(directory):
        builder.add_documents(read_file(path))
    return builder.build()


@dataclass
class _CachedFile:
    stamp: tuple[int, int, int]  # mtime_ns, size, inode
    docs: list[tuple[object, str]]


@dataclass
class ManifestDirectory:
    """A watched directory's contents; each rescan reuses unchanged files and
    keeps the last good parse of broken ones."""

    directory: Path
    _files: dict[Path, _CachedFile] = field(default_factory=dict)
    errors: list[ManifestError] = field(default_factory=list)
    _snapshot: Snapshot | None = None

    def scan(self) -> Snapshot:
        """The directory's Snapshot; the very same object when nothing changed,
        so callers can skip work by identity."""
        self.errors = []
        paths = manifest_files(self.directory) if self.directory.is_dir() else []
        seen: set[Path] = set()
        changed = False
        for path in paths:
            seen.add(path)
            try:
                st = path.stat()
            except OSError:
                continue  # removed between the listing and now
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            cached = self._files.get(path)
            if cached is not None and cached.stamp == stamp:
                continue
            changed = True
            try:
                self._files[path] = _CachedFile(stamp, read_file(path))
            except ManifestError as exc:
                self.errors.append(exc)
        for gone in set(self._files) - seen:
            del self._files[gone]
            changed = True
        if self._snapshot is not None and not changed:
            return self._snapshot
        builder = SnapshotBuilder(check_fields=True)
        for path in sorted(self._files):
            builder.add_documents(self._files[path].docs)
        self._snapshot = builder.build()
        return self._snapshot


class FileSource:
    """The manifest directory as an agent Source, woken by inotify."""

    name = "files"

    def __init__(self, directory: Path) -> None:
        self._directory = ManifestDirectory(directory)
        self._watcher = DirectoryWatcher(directory)
        self._last_errors: list[str] = []

    def synced(self) -> bool:
        return True

    def snapshot(self) -> Snapshot:
        snapshot = self._directory.scan()
        self._last_errors = [
            *(str(e) for e in self._directory.errors),
            *(str(p) for p in snapshot.problems),
        ]
        return snapshot

    def errors(self) -> list[str]:
        return list(self._last_errors)

    async def wait_for_change(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(self._watcher.fd, ready.set)
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except TimeoutError:
            self._watcher.rewatch_if_lost()
            return False
        finally:
            loop.remove_reader(self._watcher.fd)
        return self._watcher.drain()

    def close(self) -> None:
        self._watcher.close()
