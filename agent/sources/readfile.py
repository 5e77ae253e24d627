"""Reading untrusted files: regular files only, never more than a byte limit.

A path is opened with O_PATH (which opens nothing), checked with fstat, and
only a regular file is then read, at most limit+1 bytes: a FIFO or a device
(a link to /dev/zero) is never opened for reading, and `stat` sizes are
never trusted.  Every failure is a `ManifestError` naming the path.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from agent.sources.manifests import ManifestError, shown

log = logging.getLogger(__name__)


_FILE_TYPES = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISLNK, "symbolic link"),
)


def file_type(mode: int) -> str:
    return next((name for test, name in _FILE_TYPES if test(mode)), "unknown file type")


def _os_error(path: Path, exc: OSError) -> ManifestError:
    """An OSError as a ManifestError, naming the dangling link or the loop."""
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            return ManifestError(path, None, "dangling symbolic link")
        return ManifestError(path, None, f"dangling symbolic link (to {shown(target)})")
    if exc.errno == errno.ELOOP:
        return ManifestError(path, None, "symbolic link loop (too many levels of symbolic links)")
    return ManifestError(path, None, exc.strerror or str(exc))


READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_regular(path: Path) -> int:
    """A read-only fd of the regular file at `path` (symbolic links followed).

    Anything else is refused without being opened for reading: opening a FIFO
    blocks, a device can have effects (a watchdog, a tape); so the path is
    first opened with O_PATH, which opens nothing, and the very inode it names
    is checked, then reopened through /proc (no race with a rename).
    """
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        st = os.fstat(handle)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(path, None, f"not a regular file ({file_type(st.st_mode)})")
        try:
            fd = os.open(f"/proc/self/fd/{handle}", READ_FLAGS)
        except FileNotFoundError:  # no /proc: the path again, checked below
            fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        os.close(handle)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ManifestError(path, None, f"not a regular file ({file_type(st.st_mode)})")
    return fd


def read_fd(fd: int, size_hint: int, limit: int, path: Path) -> bytes:
    """At most `limit` bytes, or ManifestError: the limit holds while reading
    (a file may grow, /proc files say 0), not from what fstat said."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        want = min(limit + 1 - total, max(size_hint + 1 - total, 64 * 1024))
        try:
            chunk = os.read(fd, want)
        except InterruptedError:
            continue
        except BlockingIOError:  # never for a regular file; never wait for one either
            raise ManifestError(path, None, "not readable without waiting") from None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise ManifestError(path, None, f"file is larger than {limit} bytes")
    return b"".join(chunks)


def read_bytes(path: Path, limit: int) -> bytes:
    """The content of the regular file at `path`, at most `limit` bytes."""
    fd = _open_regular(path)
    try:
        return read_fd(fd, os.fstat(fd).st_size, limit, path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        os.close(fd)
