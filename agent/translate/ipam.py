"""Address management: the VIPs of Gateways that ask for no particular address.

A Gateway without `spec.addresses`, or with IPAddress entries that carry no
value, gets one address per such request from the auto-assign pools of its
class's GatewayLBConfig.  The answer must be the same on every agent and
after every restart, yet no agent keeps a private allocation table, so it is a
function of the cluster state alone:

1. Addresses a Gateway names in its spec are used as they are; no pool gives
   them to anyone else.
2. An address the Gateway already holds (its `status.addresses`, or for a
   standalone agent the status file it wrote) is kept while it still lies in
   the class's pools and no older Gateway or spec claims it.
3. Anything still missing is probed from an offset derived from the Gateway's
   namespace/name, Gateways taken oldest first: a Gateway coming or going
   moves no other one, and every agent computes the same address.

A Gateway asking for two addresses from pools of both families gets one of
each (dual stack).  An exhausted pool leaves the Gateway AddressNotAssigned.

Pure: never reads the clock, a file or the cluster, and never records what it
assigns; the status writers do (status.addresses, the status file), and rule 2
reads it back.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.model.config import AddressPool, AddressRange
from agent.model.meta import Key


@dataclass(frozen=True, slots=True)
class AddressRequest:
    key: Key
    pools: tuple[AddressPool, ...]  # the auto-assign pools of the Gateway's class
    count: int  # addresses wanted
    recorded: tuple[str, ...]  # what it held before, most trusted first


def _as_int(address: str) -> tuple[int, int] | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return (ip.version, int(ip))


def _offset(key: Key, size: int) -> int:
    digest = hashlib.blake2b(f"{key.namespace}/{key.name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % size


Taken = set[tuple[int, int]]  # (IP version, address as an integer)


def _probe(rng: AddressRange, key: Key, taken: Taken) -> str | None:
    # At most len(taken) addresses of the range can be in use, so probing one
    # more than that finds a free one if any exists, even in a /64.
    start = _offset(key, rng.size)
    for step in range(min(rng.size, len(taken) + 1)):
        value = rng.first + (start + step) % rng.size
        if (rng.version, value) not in taken:
            taken.add((rng.version, value))
            return str(ipaddress.ip_address(value))
    return None


def _family_order(pools: Sequence[AddressPool], have: Sequence[str]) -> list[int]:
    """Families in pool order, the ones the Gateway does not hold yet first."""
    order = list(dict.fromkeys(r.version for p in pools for r in p.ranges))
    held = {ipaddress.ip_address(a).version for a in have}
    return sorted(order, key=lambda v: v in held)


def _allocate_one(req: AddressRequest, have: Sequence[str], taken: Taken) -> str | None:
    for version in _family_order(req.pools, have):
        for pool in req.pools:
            for rng in pool.ranges:
                if rng.version == version:
                    address = _probe(rng, req.key, taken)
                    if address is not None:
                        return address
    return None


def assign(
    requests: Sequence[AddressRequest], claimed: Iterable[str]
) -> dict[Key, tuple[str, ...] | None]:
    """Addresses for every request (oldest first), None where the pools cannot
    give all of them.  `claimed` are the addresses Gateways name in their specs."""
    taken: Taken = {v for v in map(_as_int, claimed) if v is not None}
    held: dict[Key, list[str]] = {req.key: [] for req in requests}
    for req in requests:
        for address in req.recorded:
            value = _as_int(address)
            if len(held[req.key]) >= req.count or value is None or value in taken:
                continue
            if any(ipaddress.ip_address(address) in r for p in req.pools for r in p.ranges):
                taken.add(value)
                held[req.key].append(str(ipaddress.ip_address(address)))
    out: dict[Key, tuple[str, ...] | None] = {}
    for req in requests:
        have = held[req.key]
        while len(have) < req.count:
            new = _allocate_one(req, have, taken)
            if new is None:
                break
            have.append(new)
        out[req.key] = tuple(have) if len(have) == req.count else None
    return out
