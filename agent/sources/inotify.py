"""A minimal inotify watcher (Linux), through libc, for the manifest directory.

It only answers "something below this directory may have changed"; the caller
rescans.  Subdirectories are watched as they appear.  Editors that save by
rename (vim, kubectl edit) and tools that write in place are both seen.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class DirectoryWatcher:
    """Non-blocking inotify fd over a directory tree; use `fd` with a selector
    or asyncio's add_reader, then call `drain()`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd
        self._watches: dict[int, Path] = {}
        self._add_tree(directory)

    def _add(self, path: Path) -> None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), WATCH_MASK)
        if wd >= 0:
            self._watches[wd] = path

    def _add_tree(self, root: Path) -> None:
        if not root.is_dir():
            return
        self._add(root)
        # As files.py reads: os.walk does not enter a symbolic link to a
        # directory, so a cycle of links cannot loop; it is not watched either.
        for current, dirs, _files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for d in dirs:
                if not os.path.islink(os.path.join(current, d)):
                    self._add(Path(current) / d)

    def drain(self) -> bool:
        """Read all pending events; True if any may concern manifests."""
        changed = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return changed
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return changed
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                changed = True
                if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                    parent = self._watches.get(wd)
                    if parent is not None:
                        self._add_tree(parent / os.fsdecode(name))
                if mask & IN_DELETE_SELF:
                    self._watches.pop(wd, None)

    def rewatch_if_lost(self) -> None:
        """The directory itself was removed and made again: watch it anew."""
        if not self._watches:
            self._add_tree(self.directory)

    def close(self) -> None:
        os.close(self.fd)
