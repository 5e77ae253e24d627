"""Maglev consistent hashing: the lookup table that maps a flow hash to a backend.

Owns only arithmetic: no kernel, no maps.  The table is the one described in
"Maglev: A Fast and Reliable Software Network Load Balancer" (Eisenbud et al.,
NSDI 2016, section 3.4): every backend gets a permutation of the table's slots
from two hashes of a stable identity (``offset = h1 % M``,
``skip = h2 % (M - 1) + 1``) and the backends take turns claiming their next
free preferred slot until the table is full.

Weights follow Katran's weighted variant: a backend takes a turn in a round
only when its accumulated credit reaches the largest weight, so over the fill a
backend claims slots in proportion to its weight (error below one turn), and
the fill order, hence the table, is a pure function of the (identity, weight)
list.  Identities are hashed with BLAKE2b, never Python's ``hash()``, so every
process (and every node) builds the same table from the same backends.

The fill itself is a tight loop of about M ln M probes: `build_into` runs it in
C (maglev_fill.c, compiled once with the system compiler into a cache folder
and loaded with ctypes), about 10x faster than Python; without a compiler it
falls back to the Python loop of `build`, which gives the same table.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_SIZE = 16381

# Table sizes the dataplane chooses from (all prime, each about 4x the last).
# Maglev needs M >> N for minimal disruption (the paper uses M >= 100 N); a
# coarse ladder keeps the size, hence the table, stable while a frontend's
# backend count moves within a step.
SIZES = (251, 1021, 4093, 16381, 65521)


@functools.lru_cache(maxsize=64)
def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def table_size_for(entries: int, maximum: int = DEFAULT_SIZE) -> int:
    """The table size for `entries` weighted entries: the smallest size of the
    ladder with at least 100 slots per entry, never above `maximum` (a prime)."""
    if not is_prime(maximum):
        raise ValueError(f"maglev table size {maximum} is not prime")
    for size in SIZES:
        if size >= maximum:
            return maximum
        if size >= 100 * max(entries, 1):
            return size
    return maximum


def _permutation(identity: str, size: int) -> tuple[int, int]:
    digest = hashlib.blake2b(identity.encode(), digest_size=16).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little")
    return h1 % size, h2 % (size - 1) + 1


def _live(entries: Sequence[tuple[str, int]], size: int) -> list[tuple[int, str, int]]:
    """(index, identity, weight) of the entries with a slot, in fill order."""
    if not is_prime(size):
        raise ValueError(f"maglev table size {size} is not prime")
    live = [(i, ident, w) for i, (ident, w) in enumerate(entries) if w > 0]
    if len(live) > size:
        raise ValueError(f"{len(live)} backends do not fit a table of {size}")
    # Identical identities would share a permutation; order them by identity
    # first so that the result does not depend on the caller's ordering.
    live.sort(key=lambda item: (item[1], item[0]))
    return live


def build_into(entries: Sequence[tuple[str, int]], size: int, values: Sequence[int]) -> array[int]:
    """The table of `build`, holding values[i] where `build` holds i (u32s);
    empty when no entry has a positive weight."""
    live = _live(entries, size)
    if not live:
        return array("I")
    fill = _native_fill()
    if fill is None or any(w > 0xFFFFFFFF for _, _, w in live):
        # (The C loop takes u32 weights; larger ones are the Python loop's.)
        return array("I", [values[i] for i in build(entries, size)])
    n = len(live)
    u32s = ctypes.c_uint32 * n
    offsets, skips = u32s(), u32s()
    for k, (_, ident, _) in enumerate(live):
        offsets[k], skips[k] = _permutation(ident, size)
    weights = u32s(*(w for _, _, w in live))
    vals = u32s(*(values[i] for i, _, _ in live))
    out = array("I", bytes(4 * size))
    buf = (ctypes.c_uint32 * size).from_buffer(out)
    if fill(size, n, offsets, skips, weights, vals, buf) != 0:
        raise ValueError(f"maglev fill failed for {n} entries in {size} slots")
    del buf  # release the export so the array may be resized by callers
    return out


_FILL_SOURCE = Path(__file__).with_name("maglev_fill.c")


@functools.cache
def _native_fill() -> Callable[..., int] | None:
    """The C fill, compiled on first use into a cache keyed by the source's
    hash (so an upgraded source is rebuilt); None without a compiler."""
    if os.environ.get("GATEWAYLB_MAGLEV_PYTHON"):
        return None
    try:
        source = _FILL_SOURCE.read_bytes()
    except OSError as exc:
        log.warning("event=maglev_native_unavailable error=%s", exc)
        return None
    tag = hashlib.blake2b(source, digest_size=8).hexdigest()
    cache = Path(
        os.environ.get("GATEWAYLB_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gatewaylb"
    )
    lib = cache / f"maglev_fill-{tag}.so"
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The agent runs as root: never load a library another user could
        # have planted or could swap.
        st = cache.stat()
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise OSError(f"{cache} is writable by others or not ours")
        if not lib.exists():
            tmp = lib.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run(
                ["cc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(_FILL_SOURCE)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            os.replace(tmp, lib)  # atomic: a concurrent loader sees all or nothing
        fn = ctypes.CDLL(str(lib)).glb_maglev_fill
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("event=maglev_native_unavailable fallback=python error=%s", exc)
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_uint32, ctypes.c_uint32] + [ctypes.POINTER(ctypes.c_uint32)] * 5
    return fn


def build(entries: Sequence[tuple[str, int]], size: int = DEFAULT_SIZE) -> list[int]:
    """The Maglev table for `entries` = [(identity, weight), ...].

    Returns `size` indexes into `entries`.  Entries of weight <= 0 get no slot;
    with no positive weight at all the result is empty (the caller refuses new
    flows).  `size` must be a prime larger than the number of entries.
    """
    live = _live(entries, size)
    if not live:
        return []
    index = [i for i, _, _ in live]
    pos: list[int] = []
    skips: list[int] = []
    for _, ident, _ in live:
        offset, skip = _permutation(ident, size)
        pos.append(offset)
        skips.append(skip)

    table = [-1] * size
    taken = bytearray(size)
    filled = 0
    n = len(live)
    weights = [w for _, _, w in live]
    wmax = max(weights)

    if all(w == wmax for w in weights):
        # Equal weights: plain round robin, the paper's Population loop.
        while True:
            for k in range(n):
                c = pos[k]
                skip = skips[k]
                while taken[c]:
                    c += skip
                    if c >= size:
                        c -= size
                taken[c] = 1
                table[c] = index[k]
                c += skip
                pos[k] = c - size if c >= size else c
                filled += 1
                if filled == size:
                    return table

    credit = [0] * n
    while True:
        for k in range(n):
            credit[k] += weights[k]
            if credit[k] < wmax:
                continue
            credit[k] -= wmax
            c = pos[k]
            skip = skips[k]
            while taken[c]:
                c += skip
                if c >= size:
                    c -= size
            taken[c] = 1
            table[c] = index[k]
            c += skip
            pos[k] = c - size if c >= size else c
            filled += 1
            if filled == size:
                return table
