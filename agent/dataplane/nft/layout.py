"""The layout of the gatewaylb nftables tables: names, shards, base chains, and
what one frontend chain holds (its cascade and its self-describing comments).

Owns every name the nftables dataplane writes or recognises (tables, chains,
sets, maps), the hash that places a frontend in a shard, the skeleton tag, and
the comment format that `render` writes and `parse` reads back.  Pure data and
pure functions: it never renders nft text and never touches the kernel.

    table inet gatewaylb                       # shared, no frontend chains
      set masq4  { ipv4_addr }                                       # every backend ip
      set fcnt4  { ipv4_addr . inet_proto . inet_service; counter }  # frontend packets
      set bcnt4  { ipv4_addr . inet_proto . inet_service . ipv4_addr . inet_service;
                   counter }                                         # backend new flows
      chain count_pre / _out  (filter, -150)  ip daddr . meta l4proto . th dport @fcnt4
      chain nat_post          (nat, srcnat)   meta l4proto tcp ct original ip daddr .
                                              meta l4proto . ct original proto-dst .
                                              ip daddr . th dport @bcnt4   (and udp)
                                              ct status dnat ip saddr @masq4 masquerade
      chain refuse_pre / _out (filter, 0)     marked: tcp reset, else icmpx port-unreachable
    table inet gatewaylb-NN                    # NN = 00 .. SHARDS-1
      map fe4 { ipv4_addr . inet_proto . inet_service : verdict }     # -> goto fe_<id>
      chain nat_pre / nat_out (nat, dstnat)   ip daddr . meta l4proto . th dport vmap @fe4
      chain fe_4_0a630001_t_80 {
          numgen random mod 5 < 3 meta l4proto tcp dnat ip to 10.20.0.11:8080
              comment "glb b=10.20.0.11,8080,3"
          numgen random mod 2 < 1 meta l4proto tcp dnat ip to 10.20.0.12:8080
              comment "glb b=10.20.0.12,8080,1"
          meta mark set meta mark | 0x00400000 accept comment "glb r=1 fp=<16 hex>"
          meta l4proto tcp dnat ip to 10.20.0.13:8080 comment "glb b=10.20.0.13,8080,0"
      }
      chain fe_4_0a630002_t_80 {     # no reject share: no footer rule (it would be
                                     # dead), the last dnat's comment carries it
          numgen random mod 2 < 1 meta l4proto tcp dnat ip to 10.20.0.11:8080
              comment "glb b=10.20.0.11,8080,1"
          meta l4proto tcp dnat ip to 10.20.0.12:8080
              comment "glb b=10.20.0.12,8080,1 r=0 fp=<16 hex>"
      }

Why shards: a frontend lives in the shard chosen by a stable hash of its key
(`shard_of`), so that a change makes the kernel re-validate one small shard at
commit instead of every chain of one big table (nf_tables validates, per table,
every chain reachable from its base chains when a rule or verdict-map element
with a jump/goto/nat is added: ~55 ms at 10k frontends in one table).

Counters are per-element counters of the shared sets, not rule counters: reading
them is two set dumps (no rule listing), and rewriting a frontend chain leaves
them alone.  The backend set is looked up in nat postrouting, which sees the
first packet of each connection only, after DNAT: the element counts the new
flows sent to that backend.  Adding elements to a set without verdicts triggers
no commit-time validation.

Each cascade rule draws a fresh random number: rule i takes w_i out of the weight
R_i still left (its own and every later backend's plus the reject share), which
gives every backend exactly w_i / total.  No anonymous set or vmap is used: with
libnftables 1.0.6 each one is dumped on every later command (NOTES.md).

Refusing is a packet mark because `reject` is not allowed in nat chains; the
filter chains at priority 0 of prerouting and output (after DNAT at -100) reject
marked packets: TCP reset, otherwise ICMP port unreachable.  A nat hook runs the
base chains of every table in turn until one of them sets up a mapping, so a
marked (not NATed) packet just passes the other shards' lookups.

SHARDS, SKELETON_TAG and SHARD_TABLES are read as `layout.X` by the other
modules (never imported by name): bench/nft_scale.py --shards rebinds them.
"""

from __future__ import annotations

import functools
import socket
import zlib

from agent.dataplane.frontends import FrontendSpec, Key, is_ipv6
from agent.dataplane.nft.objects import Hook
from agent.state import Backend

BackendKeys = frozenset[tuple[str, int]]

FAMILY = "inet"
TABLE = "gatewaylb"  # the shared table
SHARD_PREFIX = TABLE + "-"
# Measured (bench/nft_scale.py, 10k frontends, one change): 8 shards 29 ms,
# 16: 27 ms, 32: 32 ms, 64: 40 ms.  Fewer shards mean more chains to validate per
# commit, more mean more sets and base chains for libnftables to dump on every
# command and more nat lookups per new flow (one per shard and hook).
SHARDS = 16
# A single bit of the packet mark: other owners of the mark (kube-proxy uses
# 0x4000, Cilium the 0x0f00 nibble) keep their bits.
REFUSE_MARK = 0x00400000
# Bumped whenever the layout changes shape.  The shard count and hash are part of
# the tag: a table set written with another layout is replaced whole, atomically.
SKELETON_VERSION = 2
SKELETON_TAG = f"glb skeleton v{SKELETON_VERSION} shards={SHARDS} hash=crc32"
COMMENT_PREFIX = "glb "


# -- names -------------------------------------------------------------------


def _ip_hex(ip: str) -> str:
    # inet_pton: a tenth of the cost of ipaddress, and as strict
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip).hex()


def fam(v6: bool) -> str:
    """The suffix of the per-family sets and maps (masq4, fe6, ...)."""
    return "6" if v6 else "4"


@functools.lru_cache(maxsize=1 << 17)
def chain_name(key: Key) -> str:
    """From the key alone (family, address, protocol, port), so that names are
    known without state."""
    vip, proto, port = key
    return f"fe_{fam(is_ipv6(vip))}_{_ip_hex(vip)}_{proto[0]}_{port}"


@functools.lru_cache(maxsize=1 << 17)
def shard_of(key: Key) -> int:
    """Stable across processes and Python versions (not `hash()`)."""
    vip, proto, port = key
    return zlib.crc32(f"{vip}|{proto}|{port}".encode()) % SHARDS


def shard_table(shard: int) -> str:
    return f"{SHARD_PREFIX}{shard:02d}"


def table_of(key: Key) -> str:
    # an index, not a format: called for every frontend of a load or a read
    return SHARD_TABLES[shard_of(key)]


SHARD_TABLES = tuple(shard_table(i) for i in range(SHARDS))


def layout_tables() -> tuple[str, ...]:
    """Every table of the layout, shared first (read at call time: see the module doc)."""
    return (TABLE, *SHARD_TABLES)


def is_our_table(name: str) -> bool:
    """`gatewaylb` and every `gatewaylb-*`: what cleanup removes."""
    return name == TABLE or name.startswith(SHARD_PREFIX)


def verdict_map(key: Key) -> str:
    return f"fe{fam(is_ipv6(key[0]))}"


# -- base chains and sets ---------------------------------------------------------


SHARED_HOOKS: tuple[tuple[str, Hook], ...] = (
    ("nat_post", Hook("nat", "postrouting", 100)),
    ("refuse_pre", Hook("filter", "prerouting", 0)),
    ("refuse_out", Hook("filter", "output", 0)),
    # Client-to-VIP packets, before DNAT rewrites the destination (mangle, -150).
    ("count_pre", Hook("filter", "prerouting", -150)),
    ("count_out", Hook("filter", "output", -150)),
)
SHARD_HOOKS: tuple[tuple[str, Hook], ...] = (
    ("nat_pre", Hook("nat", "prerouting", -100)),
    ("nat_out", Hook("nat", "output", -100)),
)
SHARED_SETS = ("masq4", "masq6", "fcnt4", "fcnt6", "bcnt4", "bcnt6")
COUNTER_SETS = ("bcnt4", "fcnt4", "bcnt6", "fcnt6")
VERDICT_MAPS = ("fe4", "fe6")
SHARED_CHAIN_NAMES = frozenset(name for name, _hook in SHARED_HOOKS)
SHARD_CHAIN_NAMES = frozenset(name for name, _hook in SHARD_HOOKS)
BASE_CHAIN_NAMES = SHARED_CHAIN_NAMES | SHARD_CHAIN_NAMES


# -- one frontend chain ----------------------------------------------------------------


def cascade(spec: FrontendSpec) -> list[tuple[Backend, int | None]]:
    """(backend, modulus) per positive backend; modulus None means "take the rest".

    Rule i matches `numgen random mod R_i < w_i`, R_i being the weight left from
    rule i on plus the reject share, so P(i) = w_i / total exactly.
    """
    positive = [b for b in spec.backends if b.weight > 0]
    out: list[tuple[Backend, int | None]] = []
    remaining = sum(b.weight for b in positive) + spec.reject_weight
    for b in positive:
        out.append((b, None if remaining == b.weight else remaining))
        remaining -= b.weight
    return out


def footer_merged(spec: FrontendSpec, steps: list[tuple[Backend, int | None]]) -> bool:
    """No reject share and a backend to take the rest (`steps`: the spec's
    cascade): the last cascade rule (a dnat, which ends the chain) is the last
    reachable one, so a separate footer would be dead.  Its comment carries the
    footer's instead (one rule fewer per frontend: ~10% of a big load)."""
    return spec.reject_weight == 0 and bool(steps)


def footer_comment(spec: FrontendSpec) -> str:
    return f"{COMMENT_PREFIX}r={spec.reject_weight} fp={spec.fingerprint}"


def backend_comment(b: Backend) -> str:
    return f"{COMMENT_PREFIX}b={b.ip},{b.port},{b.weight}"


def last_comment(spec: FrontendSpec, b: Backend) -> str:
    """The last cascade rule's comment when it carries the footer."""
    return f"{backend_comment(b)} r=0 fp={spec.fingerprint}"


def backend_keys(spec: FrontendSpec | None) -> BackendKeys:
    return frozenset((b.ip, b.port) for b in spec.backends) if spec else frozenset()


def backend_ips(spec: FrontendSpec | None) -> set[str]:
    return {b.ip for b in spec.backends} if spec else set()


def removed_backends(old: FrontendSpec, new: FrontendSpec | None) -> set[tuple[str, int]]:
    """Backends gone altogether (weight 0 still counts as present)."""
    return set(backend_keys(old) - backend_keys(new))
