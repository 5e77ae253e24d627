"""Compiling bpf/lb.c with bcc and loading its programs.

Owns the bcc object (untyped, kept behind the small typed `Loader`), the
compiler flags that size the maps and set the mark bits, and the capture of
libbcc's compiler and verifier output into the error raised.  The maps are
created, or found and reused, by bcc itself at compile time: lb.c declares
each one pinned under GLB_PIN_DIR (BPF_TABLE_PINNED), which is how a new agent
adopts the maps of the last one.  Never attaches a program and never touches
a map's contents.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from agent.dataplane.bpf import EbpfError
from agent.dataplane.bpf.layouts import MAPS, MARK_MASQ, MARK_NOTRACK, MARK_REJECT

# The C sources, compiled at load: the repository's bpf/ in a checkout, or where
# an installed image put them (the Dockerfile sets GATEWAYLB_BPF_DIR).
BPF_DIR: Final = Path(
    os.environ.get("GATEWAYLB_BPF_DIR") or Path(__file__).resolve().parents[3] / "bpf"
)


def cflags(
    pin_dir: Path, max_frontends: int, max_backends: int, pool_slots: int, max_flows: int
) -> list[str]:
    return [
        f"-I{BPF_DIR}",
        f'-DGLB_PIN_DIR="{pin_dir}"',
        f"-DGLB_MAX_FRONTENDS={max_frontends}",
        f"-DGLB_MAX_BACKENDS={max_backends}",
        f"-DGLB_POOL_SLOTS={pool_slots}",
        f"-DGLB_MAX_FLOWS={max_flows}",
        f"-DGLB_MARK_REJECT={MARK_REJECT:#x}",
        f"-DGLB_MARK_MASQ={MARK_MASQ:#x}",
        f"-DGLB_MARK_NOTRACK={MARK_NOTRACK:#x}",
    ]


@contextlib.contextmanager
def _capture_stderr() -> Iterator[list[str]]:
    """libbcc prints compiler errors and the verifier log on fd 2; keep them."""
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


class Loader:
    """Compiles bpf/lb.c with bcc and loads its programs; owns the bcc object."""

    def __init__(self, flags: list[str]) -> None:
        import bcc  # untyped, imported here so a machine without bcc can import this module

        self._bcc: Any = bcc
        with _capture_stderr() as log_text:
            try:
                self._b: Any = bcc.BPF(src_file=str(BPF_DIR / "lb.c").encode(), cflags=flags)
            except Exception as exc:
                raise EbpfError(f"bpf/lb.c does not compile: {exc}\n{''.join(log_text)}") from exc
        # (key size, value size) of each map as compiled, to check the ctypes mirrors
        self.map_sizes: dict[str, tuple[int, int]] = {}
        for name in MAPS:
            table = self._b[name.encode()]
            self.map_sizes[name] = (ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf))

    def load_tc(self, name: str) -> int:
        return self._load(name, self._bcc.BPF.SCHED_CLS, -1)

    def load_sock_addr(self, name: str, attach_type: int) -> int:
        return self._load(name, self._bcc.BPF.CGROUP_SOCK_ADDR, attach_type)

    def _load(self, name: str, prog_type: int, attach_type: int) -> int:
        log_text: list[str] = []
        try:
            with _capture_stderr() as log_text:
                fn = self._b.load_func(name.encode(), prog_type, attach_type=attach_type)
        except Exception as exc:
            raise EbpfError(f"verifier rejected {name}: {exc}\n{''.join(log_text)}") from exc
        return int(fn.fd)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._b.cleanup()
