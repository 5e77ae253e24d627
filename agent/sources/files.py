"""The standalone source: a directory of manifest files, read into Snapshots.

Reads every *.yaml, *.yml and *.json below a directory (`readfile` reads a
file, `manifests` parses it, remembering where each document starts so that
messages read FILE:LINE).  `ManifestDirectory` keeps the
last good parse of every file: a file that is half-saved or broken is reported
and its previous content stays in force, so a typo never removes working VIPs.
With a cache directory (`contentcache`), that last good content also
survives a restart.
No API server validated these files, so unknown kinds and fields are warned
about (Snapshot.warnings), as `kubectl --validate=strict` would.

The files are untrusted input.  Only regular files are read (never a FIFO or a
device, not even opened); every cost is bounded (`Limits`, here also over the
whole directory); nothing a file holds can raise anything but `ManifestError`,
and no file name can split a message made here over two lines.  Symbolic
links to files are followed, links to directories are not (os.walk's
default), so a cycle of links cannot loop.

Knows nothing of the kernel or of Gateway API semantics.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.model.snapshot import Snapshot, SnapshotBuilder
from agent.sources.contentcache import ContentCache
from agent.sources.inotify import DirectoryWatcher
from agent.sources.manifests import (
    DEFAULT_LIMITS,
    SUFFIXES,
    Limits,
    Manifest,
    ManifestError,
    parse_bytes,
    parse_text,
    shown,
)
from agent.sources.readfile import read_bytes

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LIMITS",
    "ContentCache",
    "FileSource",
    "Limits",
    "ManifestDirectory",
    "ManifestError",
    "load_directory",
    "parse_text",
    "read_manifest",
]


def read_manifest(path: Path, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """One file read and parsed; raises ManifestError and nothing else."""
    return parse_bytes(read_bytes(path, limits.file_bytes), path, limits)


# -- the directory --------------------------------------------------------------------------


@dataclass
class Listing:
    """The manifests below a directory; `complete` is False when some of it
    could not be listed, and then nothing may be taken as deleted."""

    paths: list[Path]
    errors: list[ManifestError]
    complete: bool


def list_manifests(directory: Path, max_files: int) -> Listing:
    """Every manifest below `directory`, sorted; hidden files and editors' temp
    files (.foo.yaml.swp, #foo#) are skipped.  Symbolic links to directories
    are not followed (os.walk's default, kept on purpose): no cycle of links
    can make the walk loop, and every file read lies below `directory` or is
    named by a link that does."""
    errors: list[ManifestError] = []

    def unlistable(exc: OSError) -> None:
        errors.append(ManifestError(exc.filename or directory, None, exc.strerror or str(exc)))

    found: list[Path] = []
    for root, dirs, files in os.walk(directory, onerror=unlistable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith((".", "#")) or not name.endswith(SUFFIXES):
                continue
            if len(found) >= max_files:
                error = ManifestError(directory, None, f"more than {max_files} manifest files")
                return Listing([], [error], complete=False)
            found.append(Path(root) / name)
    return Listing(sorted(found), errors, complete=not errors)


def manifest_files(directory: Path) -> list[Path]:
    """Every manifest below `directory`, sorted (what `list_manifests` lists)."""
    return list_manifests(directory, DEFAULT_LIMITS.files).paths


@dataclass
class _Totals:
    """What the files in force weigh together, against the directory limits."""

    size: int = 0
    tokens: int = 0
    documents: int = 0

    def add(self, manifest: Manifest, sign: int = 1) -> None:
        self.size += sign * manifest.size
        self.tokens += sign * manifest.tokens
        self.documents += sign * len(manifest.docs)

    def over(self, manifest: Manifest, limits: Limits) -> str | None:
        """Why `manifest` does not fit besides the files in force, if it does not."""
        if self.documents + len(manifest.docs) > limits.total_documents:
            return f"{limits.total_documents} documents"
        if self.tokens + manifest.tokens > limits.total_tokens:
            return f"{limits.total_tokens} tokens"
        if self.size + manifest.size > limits.total_bytes:
            return f"{limits.total_bytes} bytes"
        return None


class _OverTotal(ManifestError):
    """Refused for the directory's totals: worth another try when others change."""


def _over_total(path: Path, what: str) -> _OverTotal:
    return _OverTotal(path, None, f"not used: the manifests would hold more than {what}")


def load_directory(directory: Path, limits: Limits = DEFAULT_LIMITS) -> Snapshot:
    """One strict read: raises ManifestError on the first unreadable file."""
    if not directory.is_dir():
        raise ManifestError(directory, None, "not a directory")
    listing = list_manifests(directory, limits.files)
    if listing.errors:
        raise listing.errors[0]
    builder = SnapshotBuilder(check_fields=True)
    totals = _Totals()
    for path in listing.paths:
        manifest = read_manifest(path, limits)
        over = totals.over(manifest, limits)
        if over is not None:
            raise _over_total(path, over)
        totals.add(manifest)
        builder.add_documents(manifest.docs)
    return builder.build()


# -- the watched directory ------------------------------------------------------------------


Stamp = tuple[int, int, int, int, int]  # dev, inode, mtime_ns, ctime_ns (chmod), size


def _stamp(path: Path) -> Stamp | None:
    """The identity of what `path` holds now (of a dangling link: the link's);
    None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        try:
            st = os.lstat(path)
        except OSError:
            return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


@dataclass
class _FileState:
    stamp: Stamp  # of the content last read, good or not
    in_force: Manifest | None  # the last good parse (None: none yet)
    error: ManifestError | None = None  # why the content at `stamp` is not in force


@dataclass
class ManifestDirectory:
    """A watched directory's contents; each rescan reuses unchanged files and
    keeps the last good parse of broken ones (and, with a cache directory,
    finds it again after a restart)."""

    directory: Path
    cache_dir: Path | None = None
    limits: Limits = DEFAULT_LIMITS
    errors: list[ManifestError] = field(default_factory=list)
    _files: dict[Path, _FileState] = field(default_factory=dict)
    _totals: _Totals = field(default_factory=_Totals)
    _snapshot: Snapshot | None = None
    _cache: ContentCache | None = None
    _cache_error: ManifestError | None = None
    _pruned: bool = False

    def __post_init__(self) -> None:
        if self.cache_dir is not None:
            try:
                self._cache = ContentCache(self.cache_dir)
            except ManifestError as exc:  # reported with every scan's errors
                self._cache_error = exc

    def scan(self) -> Snapshot:
        """The directory's Snapshot; the very same object when nothing changed,
        so callers can skip work by identity."""
        if self.directory.is_dir():
            listing = list_manifests(self.directory, self.limits.files)
        else:
            listing = Listing([], [], complete=True)
        self.errors = list(listing.errors)
        if self._cache_error is not None:
            self.errors.append(self._cache_error)
        changed = False
        if listing.complete:
            listed = set(listing.paths)
            for gone in [path for path in self._files if path not in listed]:
                self._set_in_force(gone, None)
                del self._files[gone]
                if self._cache is not None:
                    self._cache.forget(gone)  # a deleted file is a real removal
                changed = True
            if self._cache is not None and not self._pruned:
                self._cache.prune(listing.paths)
                self._pruned = True
        held_back: list[Path] = []
        for path in listing.paths:
            stamp = _stamp(path)
            state = self._files.get(path)
            if stamp is None:  # removed since the listing: gone at the next scan
                if state is not None and state.error is not None:
                    self.errors.append(state.error)
                continue
            if state is not None and state.stamp == stamp:
                if isinstance(state.error, _OverTotal):
                    held_back.append(path)
                elif state.error is not None:
                    self.errors.append(state.error)
                continue
            changed = True
            self._read(path, stamp, state)
        # Files refused for the totals fit again only when others shrink.
        for path in held_back:
            state = self._files[path]
            if changed:
                self._read(path, state.stamp, state)
            elif state.error is not None:
                self.errors.append(state.error)
        if self._snapshot is not None and not changed:
            return self._snapshot
        builder = SnapshotBuilder(check_fields=True)
        for path in sorted(self._files):
            manifest = self._files[path].in_force
            if manifest is not None:
                builder.add_documents(manifest.docs)
        self._snapshot = builder.build()
        return self._snapshot

    def _read(self, path: Path, stamp: Stamp, state: _FileState | None) -> None:
        in_force = state.in_force if state is not None else None
        raw = b""
        try:
            raw = read_bytes(path, self.limits.file_bytes)
            manifest = parse_bytes(raw, path, self.limits)
            self._admit(path, manifest, in_force)
        except ManifestError as exc:
            self.errors.append(exc)
            if in_force is None:
                in_force = self._from_cache(path)
            self._files[path] = _FileState(stamp, in_force, exc)
            return
        self._files[path] = _FileState(stamp, manifest)
        if self._cache is not None:
            self._cache.store(path, raw)

    def _admit(self, path: Path, manifest: Manifest, replaces: Manifest | None) -> None:
        """Put `manifest` in force for `path` if the totals allow it."""
        if replaces is not None:
            self._totals.add(replaces, -1)
        over = self._totals.over(manifest, self.limits)
        if replaces is not None:
            self._totals.add(replaces)
        if over is not None:
            raise _over_total(path, over)
        self._set_in_force(path, manifest)

    def _set_in_force(self, path: Path, manifest: Manifest | None) -> None:
        state = self._files.get(path)
        if state is not None and state.in_force is not None:
            self._totals.add(state.in_force, -1)
        if manifest is not None:
            self._totals.add(manifest)
        if state is not None:
            state.in_force = manifest

    def _from_cache(self, path: Path) -> Manifest | None:
        """A broken file's content from before a restart, if it is cached and
        still fits."""
        if self._cache is None:
            return None
        raw = self._cache.load(path, self.limits.file_bytes)
        if raw is None:
            return None
        try:
            manifest = parse_bytes(raw, path, self.limits)
            self._admit(path, manifest, None)
        except ManifestError as exc:
            log.warning("event=manifest_cache_unusable file=%s error=%s", shown(str(path)), exc)
            return None
        log.warning(
            "event=manifest_from_cache file=%s bytes=%d documents=%d",
            shown(str(path)),
            len(raw),
            len(manifest.docs),
        )
        return manifest


class FileSource:
    """The manifest directory as an agent Source, woken by inotify."""

    name = "files"

    def __init__(
        self, directory: Path, cache_dir: Path | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._directory = ManifestDirectory(directory, cache_dir=cache_dir, limits=limits)
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
