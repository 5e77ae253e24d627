"""The last good content of each manifest file, kept across agent restarts.

A manifest that does not parse when the agent starts (half-saved while it was
down) falls back to what it held when it last parsed; deleting a file deletes
its entry.  The cache directory must be root's own and private: it is refused
otherwise, and that is reported.

In that directory it writes and deletes only its own entries (named by the
SHA-256 of a path) and its temp files.  It never parses what it keeps: it
hands back raw bytes, and the files source parses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from agent.osutil import write_atomically
from agent.sources.manifests import ManifestError, shown
from agent.sources.readfile import READ_FLAGS, file_type, read_fd

log = logging.getLogger(__name__)


_ENTRY_NAME = re.compile(r"[0-9a-f]{64}")
_TEMP_NAME = re.compile(r"\.[0-9a-f]{64}\..*\.tmp")


class ContentCache:
    """The raw bytes of each manifest's last good content, one file per
    manifest named by the SHA-256 of its absolute path, so that a file found
    broken at start (half-saved while the agent was down) falls back to what
    was in force before, instead of its objects vanishing.

    The agent runs as root and parses what it finds here: the directory must
    be ours and writable by nobody else (as agent/dataplane/maglev.py demands
    of its cache), entries are 0600 and written atomically.
    """

    def __init__(self, directory: Path) -> None:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(directory)
        except OSError as exc:
            raise ManifestError(
                directory, None, f"cache directory: {exc.strerror or exc}"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise ManifestError(
                directory, None, f"cache directory refused: a {file_type(st.st_mode)}"
            )
        if st.st_uid != os.geteuid():
            raise ManifestError(
                directory,
                None,
                f"cache directory refused: owned by uid {st.st_uid}, not {os.geteuid()}",
            )
        if st.st_mode & 0o022:
            raise ManifestError(
                directory,
                None,
                f"cache directory refused: writable by others (mode {st.st_mode & 0o7777:04o})",
            )
        self.directory = directory

    def entry(self, path: Path) -> Path:
        key = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()
        return self.directory / key

    def load(self, path: Path, limit: int) -> bytes | None:
        entry = self.entry(path)
        try:
            fd = os.open(entry, READ_FLAGS | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("event=manifest_cache_unreadable file=%s error=%s", shown(str(path)), exc)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                log.warning("event=manifest_cache_refused entry=%s", entry)
                return None
            return read_fd(fd, st.st_size, limit, entry)
        except (OSError, ManifestError) as exc:
            log.warning("event=manifest_cache_unreadable file=%s error=%s", shown(str(path)), exc)
            return None
        finally:
            os.close(fd)

    def store(self, path: Path, raw: bytes) -> None:
        entry = self.entry(path)
        with contextlib.suppress(OSError):
            if entry.stat().st_size == len(raw) and self.load(path, len(raw)) == raw:
                return  # the usual start: the same content as before
        try:
            write_atomically(entry, raw, 0o600)
        except OSError as exc:
            log.warning("event=manifest_cache_write_failed file=%s error=%s", shown(str(path)), exc)

    def forget(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.entry(path).unlink()

    def prune(self, keep: Iterable[Path]) -> None:
        """Drop the entries of files deleted while the agent was down, and
        temp files left by a crash; nothing else here is touched."""
        wanted = {self.entry(path).name for path in keep}
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            log.warning("event=manifest_cache_unreadable error=%s", exc)
            return
        for name in names:
            if (_ENTRY_NAME.fullmatch(name) and name not in wanted) or _TEMP_NAME.fullmatch(name):
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()
