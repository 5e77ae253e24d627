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
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

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


def build(entries: Sequence[tuple[str, int]], size: int = DEFAULT_SIZE) -> list[int]:
    """The Maglev table for `entries` = [(identity, weight), ...].

    Returns `size` indexes into `entries`.  Entries of weight <= 0 get no slot;
    with no positive weight at all the result is empty (the caller refuses new
    flows).  `size` must be a prime larger than the number of entries.
    """
    if not is_prime(size):
        raise ValueError(f"maglev table size {size} is not prime")
    live = [(i, ident, w) for i, (ident, w) in enumerate(entries) if w > 0]
    if not live:
        return []
    if len(live) > size:
        raise ValueError(f"{len(live)} backends do not fit a table of {size}")

    # Identical identities would share a permutation; order them by identity
    # first so that the result does not depend on the caller's ordering.
    live.sort(key=lambda item: (item[1], item[0]))
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
