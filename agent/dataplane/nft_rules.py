"""Pure rendering of the nftables dataplane: DesiredState L4 frontends -> nft commands
(built as libnftables JSON structures, written to the kernel as nft text: `to_text`).

Owns the layout of the gatewaylb tables (names, base chains, maps, sets, the rules of
one frontend chain), the fingerprint that makes a frontend chain self-describing, the
diff between what is programmed and what is desired, and parsing listed tables back
into that model.  It does no I/O and never talks to the kernel: `nftables.py` does.

Layout: one shared table plus SHARDS shard tables.  A frontend lives in the shard
chosen by a stable hash of its key (`shard_of`), so that a change makes the kernel
re-validate one small shard at commit instead of every chain of one big table
(nf_tables validates, per table, every chain reachable from its base chains when a
rule or verdict-map element with a jump/goto/nat is added: ~55 ms at 10k frontends
in one table).

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

Counters are per-element counters of the shared sets, not rule counters: reading them
is two set dumps (no rule listing), and rewriting a frontend chain leaves them alone.
The backend set is looked up in nat postrouting, which sees the first packet of each
connection only, after DNAT: the element counts the new flows sent to that backend.
Adding elements to a set without verdicts triggers no commit-time validation.

The comments make the chain self-describing: adoption rebuilds the spec from them and
trusts it only when it matches the footer's fingerprint.

Each cascade rule draws a fresh random number: rule i takes w_i out of the weight
R_i still left (its own and every later backend's plus the reject share), which
gives every backend exactly w_i / total.  No anonymous set or vmap is used: with
libnftables 1.0.6 each one is dumped on every later command (NOTES.md).

Refusing is a packet mark because `reject` is not allowed in nat chains; the
filter chains at priority 0 of prerouting and output (after DNAT at -100) reject
marked packets: TCP reset, otherwise ICMP port unreachable.  A nat hook runs the
base chains of every table in turn until one of them sets up a mapping, so a
marked (not NATed) packet just passes the other shards' lookups.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.dataplane.frontends import (
    FrontendSpec,
    canonical_ip,
    is_ipv6,
)
from agent.state import TCP, UDP, Backend, FrontendKey

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
_FP_PREFIX = "glb "

Key = FrontendKey
Cmd = dict[str, Any]


# -- names -------------------------------------------------------------------


def _ip_hex(ip: str) -> str:
    # inet_pton: a tenth of the cost of ipaddress, and as strict
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip).hex()


@functools.lru_cache(maxsize=1 << 17)
def frontend_id(key: Key) -> str:
    """A stable identifier from the key alone, so that names are known without state."""
    vip, proto, port = key
    fam = "6" if is_ipv6(vip) else "4"
    return f"{fam}_{_ip_hex(vip)}_{proto[0]}_{port}"


def chain_name(key: Key) -> str:
    return "fe_" + frontend_id(key)


@functools.lru_cache(maxsize=1 << 17)
def shard_of(key: Key) -> int:
    """Stable across processes and Python versions (not `hash()`)."""
    vip, proto, port = key
    return zlib.crc32(f"{vip}|{proto}|{port}".encode()) % SHARDS


def shard_table(shard: int) -> str:
    return f"{SHARD_PREFIX}{shard:02d}"


def table_of(key: Key) -> str:
    return shard_table(shard_of(key))


SHARD_TABLES = tuple(shard_table(i) for i in range(SHARDS))


def is_our_table(name: str) -> bool:
    """`gatewaylb` and every `gatewaylb-*`: what cleanup removes."""
    return name == TABLE or name.startswith(SHARD_PREFIX)


# -- expressions ---------------------------------------------------------------


def _ref(family: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": family, "field": field}}


def _key(v6: bool, addr: str, port: str) -> dict[str, Any]:
    return {
        "concat": [
            _ref("ip6" if v6 else "ip", addr),
            {"meta": {"key": "l4proto"}},
            _ref("th", port),
        ]
    }


def _obj(kind: str, table: str = TABLE, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": table, **fields}}


def _fam(v6: bool) -> str:
    return "6" if v6 else "4"


def _l4(proto: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": proto}}


# -- the skeletons ------------------------------------------------------------------

_SHARED_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    # name, type, hook, priority
    ("nat_post", "nat", "postrouting", 100),
    ("refuse_pre", "filter", "prerouting", 0),
    ("refuse_out", "filter", "output", 0),
    # Client-to-VIP packets, before DNAT rewrites the destination (mangle, -150).
    ("count_pre", "filter", "prerouting", -150),
    ("count_out", "filter", "output", -150),
)
_SHARD_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    ("nat_pre", "nat", "prerouting", -100),
    ("nat_out", "nat", "output", -100),
)
SHARED_SETS = ("masq4", "masq6", "fcnt4", "fcnt6", "bcnt4", "bcnt6")
SHARED_CHAIN_NAMES = frozenset(c[0] for c in _SHARED_CHAINS)
SHARD_CHAIN_NAMES = frozenset(c[0] for c in _SHARD_CHAINS)
BASE_CHAIN_NAMES = SHARED_CHAIN_NAMES | SHARD_CHAIN_NAMES


def _bcnt_match(v6: bool, proto: str) -> list[dict[str, Any]]:
    """After DNAT: original VIP, protocol and port, then the chosen backend.
    `ct original proto-dst` has a size only once the protocol is known."""
    ipf = "ip6" if v6 else "ip"
    key = {
        "concat": [
            {"ct": {"key": f"{ipf} daddr", "dir": "original"}},
            {"meta": {"key": "l4proto"}},
            {"ct": {"key": "proto-dst", "dir": "original"}},
            _ref(ipf, "daddr"),
            _ref("th", "dport"),
        ]
    }
    return [_l4(proto), {"match": {"op": "==", "left": key, "right": f"@bcnt{_fam(v6)}"}}]


def _base_rules(name: str) -> list[list[dict[str, Any]]]:
    rules: list[list[dict[str, Any]]] = []
    for v6 in (False, True):
        f = _fam(v6)
        if name in ("nat_pre", "nat_out"):
            rules.append([{"vmap": {"key": _key(v6, "daddr", "dport"), "data": f"@fe{f}"}}])
        elif name == "nat_post":
            rules += [_bcnt_match(v6, TCP), _bcnt_match(v6, UDP)]
            # Hairpin and backend-to-VIP-to-neighbour: the chosen backend would
            # answer the source directly (same host or same segment), so the
            # node must be the source.  Remote clients keep their address.
            rules.append(
                [
                    {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                    {
                        "match": {
                            "op": "==",
                            "left": _ref("ip6" if v6 else "ip", "saddr"),
                            "right": f"@masq{f}",
                        }
                    },
                    {"masquerade": None},
                ]
            )
        elif name in ("count_pre", "count_out"):
            rules.append(
                [{"match": {"op": "==", "left": _key(v6, "daddr", "dport"), "right": f"@fcnt{f}"}}]
            )
    if name in ("refuse_pre", "refuse_out"):
        marked = {
            "match": {
                "op": "==",
                "left": {"&": [{"meta": {"key": "mark"}}, REFUSE_MARK]},
                "right": REFUSE_MARK,
            }
        }
        rules.append([marked, _l4(TCP), {"reject": {"type": "tcp reset"}}])
        rules.append([marked, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}])
    return rules


def _base_chains(table: str, chains: Iterable[tuple[str, str, str, int]]) -> list[Cmd]:
    cmds: list[Cmd] = []
    for name, typ, hook, prio in chains:
        chain = {"name": name, "type": typ, "hook": hook, "prio": prio, "policy": "accept"}
        cmds.append({"add": _obj("chain", table, **chain)})
        cmds.append({"flush": _obj("chain", table, name=name)})
        for i, expr in enumerate(_base_rules(name)):
            rule: dict[str, Any] = {"chain": name, "expr": expr}
            if i == 0:
                rule["comment"] = SKELETON_TAG
            cmds.append({"add": _obj("rule", table, **rule)})
    return cmds


def render_shared_skeleton() -> list[Cmd]:
    """The shared table, its sets and base chains; idempotent (base chains are flushed)."""
    cmds: list[Cmd] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for v6 in (False, True):
        addr = "ipv6_addr" if v6 else "ipv4_addr"
        f = _fam(v6)
        fkey = [addr, "inet_proto", "inet_service"]
        bkey = [*fkey, addr, "inet_service"]
        counter = [{"counter": None}]
        cmds.append({"add": _obj("set", name=f"masq{f}", type=addr)})
        cmds.append({"add": _obj("set", name=f"fcnt{f}", type=fkey, stmt=counter)})
        cmds.append({"add": _obj("set", name=f"bcnt{f}", type=bkey, stmt=counter)})
    return cmds + _base_chains(TABLE, _SHARED_CHAINS)


def render_shard_skeleton(shard: int) -> list[Cmd]:
    table = shard_table(shard)
    cmds: list[Cmd] = [{"add": {"table": {"family": FAMILY, "name": table}}}]
    for v6 in (False, True):
        addr = "ipv6_addr" if v6 else "ipv4_addr"
        key_type = [addr, "inet_proto", "inet_service"]
        cmds.append({"add": _obj("map", table, name=f"fe{_fam(v6)}", type=key_type, map="verdict")})
    return cmds + _base_chains(table, _SHARD_CHAINS)


def render_skeleton() -> list[Cmd]:
    """Every table of the layout (a fresh start)."""
    cmds = render_shared_skeleton()
    for shard in range(SHARDS):
        cmds += render_shard_skeleton(shard)
    return cmds


def render_delete_tables(names: Iterable[str]) -> list[Cmd]:
    return [{"delete": {"table": {"family": FAMILY, "name": n}}} for n in sorted(names)]


# -- one frontend -------------------------------------------------------------------


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


def footer_comment(spec: FrontendSpec) -> str:
    return f"{_FP_PREFIX}r={spec.reject_weight} fp={spec.fingerprint}"


def backend_comment(b: Backend) -> str:
    return f"{_FP_PREFIX}b={b.ip},{b.port},{b.weight}"


def render_chain_rules(spec: FrontendSpec) -> list[Cmd]:
    """The rules of one frontend chain (no counters: those live in the shared sets)."""
    cname = chain_name(spec.key)
    table = table_of(spec.key)
    proto = _l4(spec.protocol)
    family = "ip6" if spec.v6 else "ip"

    def dnat_rule(b: Backend, modulus: int | None, comment: str) -> Cmd:
        expr: list[dict[str, Any]] = []
        if modulus is not None:
            numgen = {"numgen": {"mode": "random", "mod": modulus, "offset": 0}}
            expr.append({"match": {"op": "<", "left": numgen, "right": b.weight}})
        expr += [proto, {"dnat": {"family": family, "addr": b.ip, "port": b.port}}]
        return {"add": _obj("rule", table, chain=cname, expr=expr, comment=comment)}

    steps = cascade(spec)
    merged = _footer_merged(spec)
    cmds = [
        dnat_rule(
            b,
            modulus,
            _last_comment(spec, b) if merged and i == len(steps) - 1 else backend_comment(b),
        )
        for i, (b, modulus) in enumerate(steps)
    ]
    if not merged:
        # Reached by the reject share, or by every flow when no backend has
        # weight: mark for the refuse chains, and stop here.
        mark = {"meta": {"key": "mark"}}
        refuse = {"mangle": {"key": mark, "value": {"|": [mark, REFUSE_MARK]}}}
        footer = {
            "chain": cname,
            "expr": [refuse, {"accept": None}],
            "comment": footer_comment(spec),
        }
        cmds.append({"add": _obj("rule", table, **footer)})
    # Weight-0 backends: unreachable rules after the footer's accept.  They keep
    # the backend known to a reader of the kernel (and its flow-count element).
    cmds += [dnat_rule(b, None, backend_comment(b)) for b in spec.backends if b.weight == 0]
    return cmds


def _footer_merged(spec: FrontendSpec) -> bool:
    """No reject share and a backend to take the rest: the last cascade rule (a
    dnat, which ends the chain) is the last reachable one, so a separate footer
    would be dead.  Its comment carries the footer's instead (one rule fewer per
    frontend: ~10% of a big load)."""
    return spec.reject_weight == 0 and any(b.weight > 0 for b in spec.backends)


def _last_comment(spec: FrontendSpec, b: Backend) -> str:
    return f"{backend_comment(b)} r=0 fp={spec.fingerprint}"


def render_add(spec: FrontendSpec) -> list[Cmd]:
    """The chain of a frontend that is not programmed yet (elements are batched by
    `render_plan`)."""
    return [
        {"add": _obj("chain", table_of(spec.key), name=chain_name(spec.key))},
        *render_chain_rules(spec),
    ]


def render_update(old: FrontendSpec, new: FrontendSpec) -> list[Cmd]:
    """Rewrite one chain in place; its map element and counter elements stay."""
    table = table_of(new.key)
    return [{"flush": _obj("chain", table, name=chain_name(new.key))}, *render_chain_rules(new)]


def render_delete(old: FrontendSpec) -> list[Cmd]:
    """Chains go after the map elements that jump to them (same transaction: the
    kernel drops the references in order; verified on 6.18)."""
    return render_orphan(chain_name(old.key), table_of(old.key))


def render_orphan(name: str, table: str) -> list[Cmd]:
    """Remove a chain of ours (nothing may jump to it any more)."""
    return [{"flush": _obj("chain", table, name=name)}, {"delete": _obj("chain", table, name=name)}]


def _fkey(key: Key) -> dict[str, Any]:
    return {"concat": [key[0], key[1], key[2]]}


BackendKeys = frozenset[tuple[str, int]]


# An element as plain values: a key (vip, proto, port), a backend key
# (vip, proto, port, ip, port), or a verdict element (vip, proto, port, chain).
ElemTuple = tuple[Any, ...]


@dataclass(slots=True)
class Elements:
    """Element commands of one transaction, batched per set: libnftables evaluates
    each command separately, so 10k elements in one command are far cheaper than
    10k commands.  Additions go before the rules (none needs them), deletions of
    verdict elements before the chains they point to.  Rendered as JSON commands
    (`head`, ...) or directly as nft text (`head_lines`, ...)."""

    add_vmap: dict[tuple[str, str], list[ElemTuple]] = field(default_factory=dict)
    del_vmap: dict[tuple[str, str], list[ElemTuple]] = field(default_factory=dict)
    add_set: dict[str, list[ElemTuple]] = field(default_factory=dict)
    del_set: dict[str, list[ElemTuple]] = field(default_factory=dict)

    def vmap(self, op: str, key: Key) -> None:
        where = (table_of(key), f"fe{_fam(is_ipv6(key[0]))}")
        if op == "add":
            self.add_vmap.setdefault(where, []).append((*key, chain_name(key)))
        else:
            self.del_vmap.setdefault(where, []).append(key)

    def counters(
        self, key: Key, have: tuple[bool, BackendKeys], want: tuple[bool, BackendKeys]
    ) -> None:
        """Make the counter elements of one frontend go from `have` to `want`
        ((frontend element present, backend elements present))."""
        f = _fam(is_ipv6(key[0]))
        if want[0] and not have[0]:
            self.add_set.setdefault(f"fcnt{f}", []).append(key)
        elif have[0] and not want[0]:
            self.del_set.setdefault(f"fcnt{f}", []).append(key)
        for b in sorted(want[1] - have[1]):
            self.add_set.setdefault(f"bcnt{f}", []).append((*key, *b))
        for b in sorted(have[1] - want[1]):
            self.del_set.setdefault(f"bcnt{f}", []).append((*key, *b))

    @staticmethod
    def _json(e: ElemTuple, verdicts: bool) -> Any:
        if verdicts:
            return [{"concat": list(e[:3])}, {"goto": {"target": e[3]}}]
        return {"concat": list(e)}

    @classmethod
    def _cmds(
        cls, op: str, groups: Mapping[Any, list[ElemTuple]], table: str | None = None
    ) -> list[Cmd]:
        out: list[Cmd] = []
        for where, elems in sorted(groups.items()):
            t, name = where if table is None else (table, where)
            verdicts = op == "add" and table is None
            elem = [cls._json(e, verdicts) for e in elems]
            out.append({op: _obj("element", t, name=name, elem=elem)})
        return out

    @staticmethod
    def _lines(
        op: str, groups: Mapping[Any, list[ElemTuple]], table: str | None = None
    ) -> list[str]:
        """`text_lines(_cmds(...))` without the detour (the hot part of a big load)."""
        out: list[str] = []
        for where, elems in sorted(groups.items()):
            t, name = where if table is None else (table, where)
            if op == "add" and table is None:
                text = ", ".join([f"{v} . {p} . {n} : goto {c}" for v, p, n, c in elems])
            else:
                text = ", ".join([" . ".join(map(str, e)) for e in elems])
            # The values come from validated specs; this keeps a bug from ever
            # closing the element block or starting another command.
            if not _SAFE_ELEMS(text):
                raise TextError(f"bad elements for {t} {name}")
            out.append(f"{op} element inet {_name(t)} {_name(name)} {{ {text} }}")
        return out

    def head(self) -> list[Cmd]:
        return self._cmds("add", self.add_set, TABLE)

    def after_chains(self) -> list[Cmd]:
        """Verdict additions (their chains exist by now) and deletions (before the
        chains they reach are deleted)."""
        return self._cmds("add", self.add_vmap) + self._cmds("delete", self.del_vmap)

    def tail(self) -> list[Cmd]:
        return self._cmds("delete", self.del_set, TABLE)

    def head_lines(self) -> list[str]:
        return self._lines("add", self.add_set, TABLE)

    def after_chains_lines(self) -> list[str]:
        return self._lines("add", self.add_vmap) + self._lines("delete", self.del_vmap)

    def tail_lines(self) -> list[str]:
        return self._lines("delete", self.del_set, TABLE)


def backend_keys(spec: FrontendSpec | None) -> BackendKeys:
    return frozenset((b.ip, b.port) for b in spec.backends) if spec else frozenset()


def masq_ips(specs: Iterable[FrontendSpec]) -> set[str]:
    return {b.ip for s in specs for b in s.backends}


def render_masq_diff(old: set[str], new: set[str]) -> list[Cmd]:
    cmds: list[Cmd] = []
    for ips, op in ((new - old, "add"), (old - new, "delete")):
        for v6 in (False, True):
            elems = sorted(ip for ip in ips if is_ipv6(ip) == v6)
            if elems:
                cmds.append({op: _obj("element", name=f"masq{_fam(v6)}", elem=elems)})
    return cmds


# -- the diff -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    added: tuple[FrontendSpec, ...]
    updated: tuple[tuple[FrontendSpec, FrontendSpec], ...]  # (old, new)
    removed: tuple[FrontendSpec, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.updated or self.removed)

    @property
    def changed(self) -> int:
        return len(self.added) + len(self.updated) + len(self.removed)


def plan(programmed: Mapping[Key, FrontendSpec], desired: Mapping[Key, FrontendSpec]) -> Plan:
    added = tuple(desired[k] for k in sorted(desired.keys() - programmed.keys()))
    removed = tuple(programmed[k] for k in sorted(programmed.keys() - desired.keys()))
    updated = tuple(
        (programmed[k], desired[k])
        for k in sorted(desired.keys() & programmed.keys())
        # identity first: the dataplane reuses the spec of an unchanged frontend
        if programmed[k] is not desired[k] and programmed[k].fingerprint != desired[k].fingerprint
    )
    return Plan(added, updated, removed)


CounterState = Mapping[Key, tuple[bool, BackendKeys]]


def render_plan(p: Plan, present: CounterState | None = None) -> list[Cmd]:
    """One transaction for a plan.  `present` is what the counter sets hold per
    frontend (default: exactly what the plan's old specs imply)."""
    present = present or {}
    el = Elements()
    chains: list[Cmd] = []
    for spec in p.added:
        chains += render_add(spec)
        el.vmap("add", spec.key)
        el.counters(
            spec.key, present.get(spec.key, (False, frozenset())), (True, backend_keys(spec))
        )
    for old, new in p.updated:
        chains += render_update(old, new)
        have = present.get(new.key, (True, backend_keys(old)))
        el.counters(new.key, have, (True, backend_keys(new)))
    deletes: list[Cmd] = []
    for spec in p.removed:
        el.vmap("delete", spec.key)
        deletes += render_delete(spec)
        el.counters(
            spec.key, present.get(spec.key, (True, backend_keys(spec))), (False, frozenset())
        )
    return el.head() + chains + el.after_chains() + deletes + el.tail()


def removed_backends(old: FrontendSpec, new: FrontendSpec | None) -> set[tuple[str, int]]:
    """Backends gone altogether (weight 0 still counts as present)."""
    return set(backend_keys(old) - backend_keys(new))


# -- reading back ----------------------------------------------------------------------


@dataclass(slots=True)
class ParsedTable:
    """Our tables read back (any subset of them: shared and/or shards)."""

    specs: dict[Key, FrontendSpec] = field(default_factory=dict)
    # key -> (packets, bytes) of the frontend, client -> VIP
    frontend_counts: dict[Key, tuple[int, int]] = field(default_factory=dict)
    # key -> (backend ip, port) -> (new flows, bytes of their first packets)
    backend_counts: dict[Key, dict[tuple[str, int], tuple[int, int]]] = field(default_factory=dict)
    masq: set[str] = field(default_factory=set)
    # skeleton tag per table seen (shared table and shards)
    tags: dict[str, str] = field(default_factory=dict)
    # chains that do not parse -> the key a map element gives them (None: orphan)
    broken: dict[str, Key | None] = field(default_factory=dict)
    # chain name -> table, for every non-base chain seen
    chain_tables: dict[str, str] = field(default_factory=dict)
    # keys with a verdict element in their own shard's map
    elements: set[Key] = field(default_factory=set)
    # verdict elements in a table that is not their key's shard: (table, map, key)
    stray_elements: set[tuple[str, str, Key]] = field(default_factory=set)

    @property
    def skeleton_ok(self) -> bool:
        return self.tags.get(TABLE) == SKELETON_TAG and all(
            self.tags.get(t) == SKELETON_TAG for t in SHARD_TABLES
        )

    def shards_ok(self) -> set[int]:
        return {i for i, t in enumerate(SHARD_TABLES) if self.tags.get(t) == SKELETON_TAG}

    def counter_state(self) -> dict[Key, tuple[bool, BackendKeys]]:
        keys = self.frontend_counts.keys() | self.backend_counts.keys()
        return {
            k: (k in self.frontend_counts, frozenset(self.backend_counts.get(k, {}))) for k in keys
        }


def _elem_val(elem: Any) -> tuple[Any, tuple[int, int]]:
    """An element as listed: plain, or wrapped with its counter."""
    if isinstance(elem, dict) and "elem" in elem:
        inner = elem["elem"]
        c = inner.get("counter") or {}
        return inner.get("val"), (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return elem, (0, 0)


def _key_from_elem(elem: Any) -> Key | None:
    try:
        vip, proto, port = elem["concat"]
        return (str(ipaddress.ip_address(vip)), str(proto), int(port))
    except (KeyError, TypeError, ValueError):
        return None


def _bkey_from_elem(elem: Any) -> tuple[Key, tuple[str, int]] | None:
    try:
        vip, proto, port, bip, bport = elem["concat"]
        key = (str(ipaddress.ip_address(vip)), str(proto), int(port))
        return key, (str(ipaddress.ip_address(bip)), int(bport))
    except (KeyError, TypeError, ValueError):
        return None


def parse_sets(listing: Mapping[str, Any], out: ParsedTable) -> None:
    """Fill the counters and masquerade set from a listing of the shared table
    (or of its sets)."""
    for item in listing.get("nftables", []):
        s = item.get("set")
        if not s or s.get("table") != TABLE:
            continue
        name = s["name"]
        for raw in s.get("elem", []):
            val, counts = _elem_val(raw)
            if name in ("masq4", "masq6") and isinstance(val, str):
                out.masq.add(val)
            elif name in ("fcnt4", "fcnt6"):
                key = _key_from_elem(val)
                if key:
                    out.frontend_counts[key] = counts
            elif name in ("bcnt4", "bcnt6"):
                kb = _bkey_from_elem(val)
                if kb:
                    out.backend_counts.setdefault(kb[0], {})[kb[1]] = counts


@dataclass(slots=True)
class Objects:
    """Chains, rules and verdict-map elements of ONE of our tables, whoever read them
    (a libnftables JSON listing, or the dataplane's netlink dump)."""

    table: str
    chains: list[str] = field(default_factory=list)
    # (chain, comment or "") per rule, in chain order
    rules: list[tuple[str, str]] = field(default_factory=list)
    # (map name, key, goto target or None), fe4 / fe6 only
    verdicts: list[tuple[str, Key | None, str | None]] = field(default_factory=list)


def objects_from_json(listing: Mapping[str, Any]) -> list[Objects]:
    """Split a JSON listing (of any of our tables) into one `Objects` per table."""
    per: dict[str, Objects] = {}

    def of(table: str) -> Objects:
        return per.setdefault(table, Objects(table))

    for item in listing.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            of(c["table"]).chains.append(c["name"])
        elif "rule" in item:
            r = item["rule"]
            of(r["table"]).rules.append((r["chain"], str(r.get("comment", ""))))
        elif "map" in item and item["map"]["name"] in ("fe4", "fe6"):
            m = item["map"]
            objs = of(m["table"])
            for elem in m.get("elem", []):
                key = _key_from_elem(_elem_val(elem[0])[0])
                target = (
                    elem[1].get("goto", {}).get("target") if isinstance(elem[1], dict) else None
                )
                objs.verdicts.append((m["name"], key, target))
    return list(per.values())


def parse_table(listing: Mapping[str, Any], out: ParsedTable | None = None) -> ParsedTable:
    """Rebuild the programmed frontends from listings of our tables (JSON)."""
    out = out if out is not None else ParsedTable()
    parse_sets(listing, out)
    for objs in objects_from_json(listing):
        parse_objects(objs, out)
    return out


def parse_objects(objs: Objects, out: ParsedTable) -> ParsedTable:
    """Rebuild the programmed frontends of one table.

    A frontend chain is trusted only when its footer's fingerprint matches the
    spec rebuilt from its rules, and it sits in its key's shard; otherwise it is
    reported broken (and replaced by the next reconcile, never silently kept).
    """
    table = objs.table
    chains: dict[str, list[str]] = {}  # chain -> comments of its rules
    keys: dict[str, Key] = {}  # chain -> key, from the verdict maps
    for name in objs.chains:
        if name not in BASE_CHAIN_NAMES:
            chains.setdefault(name, [])
            out.chain_tables[name] = table
    tagged: set[str] = set()
    for chain, comment in objs.rules:
        if chain in BASE_CHAIN_NAMES:
            if comment.startswith("glb skeleton"):
                # every base chain of a table must carry the tag
                seen = out.tags.setdefault(table, comment)
                if seen != comment:
                    out.tags[table] = "mixed"
                if comment == SKELETON_TAG:
                    tagged.add(chain)
            continue
        chains.setdefault(chain, []).append(comment)
        out.chain_tables.setdefault(chain, table)
    for map_name, key, target in objs.verdicts:
        if not key or not target:
            continue
        if table_of(key) != table or chain_name(key) != target:
            out.stray_elements.add((table, map_name, key))
            continue
        keys[target] = key
        out.elements.add(key)
    # A table's tag counts only when all its base chains exist and are tagged.
    need = SHARED_CHAIN_NAMES if table == TABLE else SHARD_CHAIN_NAMES
    if objs.rules and out.tags.get(table) == SKELETON_TAG and tagged != need:
        out.tags[table] = "incomplete"
    for name, comments in chains.items():
        key = keys.get(name)
        parsed = (
            _parse_chain(key, comments)
            if key and out.chain_tables.get(name) == table_of(key)
            else None
        )
        if parsed is None:
            out.broken[name] = key
            continue
        out.specs[parsed.key] = parsed
    return out


def render_repair(
    key: Key,
    spec: FrontendSpec | None,
    elements: set[Key],
    table: str | None = None,
) -> list[Cmd]:
    """Replace whatever a chain that did not parse holds: rewrite the frontend when
    it is desired, else remove its element and chain.  Commands are chosen so
    that none fails on a half-present frontend (a failing command would roll
    back the whole transaction).  Counter elements are the caller's business."""
    name = chain_name(key)
    table = table or table_of(key)
    cmds: list[Cmd] = [
        {"add": _obj("chain", table, name=name)},
        {"flush": _obj("chain", table, name=name)},
    ]
    if spec is not None and table == table_of(key):
        el = Elements()
        el.vmap("add", key)
        return cmds + render_chain_rules(spec) + el.after_chains()
    if key in elements and table == table_of(key):
        el = Elements()
        el.vmap("delete", key)
        cmds += el.after_chains()
    return [*cmds, {"delete": _obj("chain", table, name=name)}]


def render_stray(table: str, map_name: str, key: Key) -> list[Cmd]:
    return [{"delete": _obj("element", table, name=map_name, elem=[_fkey(key)])}]


_FOOTER = re.compile(r"glb r=(\d+) fp=(\S+)")


def _parse_chain(key: Key, comments: list[str]) -> FrontendSpec | None:
    backends: dict[tuple[str, int], int] = {}
    footer = None
    for comment in comments:
        if comment.startswith("glb b="):
            # "glb b=IP,PORT,W", or the last cascade rule's "glb b=IP,PORT,W r=0 fp=F"
            backend, _sep, rest = comment[6:].partition(" ")
            if rest:
                footer = _FOOTER.fullmatch("glb " + rest)
                if footer is None:
                    return None
            parts = backend.split(",")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                return None
            try:  # only canonical addresses: they are written back as nft text
                if canonical_ip(parts[0]) != parts[0]:
                    return None
            except ValueError:
                return None
            backends[(parts[0], int(parts[1]))] = int(parts[2])
        elif comment.startswith("glb r="):
            footer = _FOOTER.fullmatch(comment)
            if footer is None:
                return None
    if footer is None:
        return None
    ordered = tuple(Backend(ip, port, w) for (ip, port), w in sorted(backends.items()))
    spec = FrontendSpec(key[0], key[1], key[2], ordered, int(footer[1]))
    return spec if spec.fingerprint == footer[2] else None


# -- nft text ---------------------------------------------------------------------------
#
# Writes go to libnftables as nft text (`Nftables.cmd`), not JSON: at 10k frontends
# libnftables 1.0.6 takes ~2.5 s to evaluate the JSON batch against ~1 s for the
# same batch as text (bench/nft_scale.py).  The commands are still built as the
# JSON structures above (the model the tests check); `to_text` translates the
# small vocabulary this module emits, and refuses anything else.


class TextError(ValueError):
    """A command this translator does not know (a bug, never an input problem)."""


_SAFE_COMMENT = re.compile(r"[0-9A-Za-z ,.=:_/+-]{0,127}\Z").match
_SAFE_NAME = re.compile(r"[0-9A-Za-z_-]+\Z").match
_SAFE_ATOM = re.compile(r"[0-9A-Za-z.:_-]+\Z").match
_SAFE_ELEMS = re.compile(r"[0-9A-Za-z.:_ ,-]+\Z").match
_SAFE_CONCAT = re.compile(r"[0-9A-Za-z.:_-]+( \. [0-9A-Za-z.:_-]+)*\Z").match


def quote(text: str) -> str:
    """A comment as an nft string.  nft strings have no escapes, so anything that
    could end the string or the command is refused rather than quoted."""
    if not _SAFE_COMMENT(text):
        raise TextError(f"comment {text!r} cannot be written as nft text")
    return f'"{text}"'


def _name(text: Any) -> str:
    s = str(text)
    if not _SAFE_NAME(s):
        raise TextError(f"bad object name {s!r}")
    return s


def _atom(v: Any) -> str:
    """A constant: an address, a protocol or service name, a number."""
    if isinstance(v, bool):
        raise TextError(f"bad constant {v!r}")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str) and _SAFE_ATOM(v):
        return v
    if isinstance(v, dict) and "concat" in v:
        return " . ".join([_atom(x) for x in v["concat"]])
    raise TextError(f"bad constant {v!r}")


def _expr(e: Any) -> str:
    if not isinstance(e, dict):
        if isinstance(e, str) and e.startswith("@"):
            return "@" + _name(e[1:])
        return _atom(e)
    ((kind, v),) = e.items()
    if kind == "payload":
        return f"{v['protocol']} {v['field']}"
    if kind == "meta":
        return f"meta {v['key']}"
    if kind == "ct":
        return f"ct {v['dir']} {v['key']}" if "dir" in v else f"ct {v['key']}"
    if kind == "numgen":
        if v.get("mode") != "random" or v.get("offset", 0) != 0:
            raise TextError(f"numgen {v!r}")
        return f"numgen random mod {int(v['mod'])}"
    if kind == "concat":
        return " . ".join(_expr(x) for x in v)
    if kind in ("&", "|"):
        left, right = v
        r = f"0x{right:08x}" if isinstance(right, int) else _expr(right)
        return f"{_expr(left)} {kind} {r}"
    raise TextError(f"expression {kind!r}")


def _stmt(s: dict[str, Any]) -> str:
    ((kind, v),) = s.items()
    if kind == "match":
        op, left, right = v["op"], _expr(v["left"]), v["right"]
        if op == "in" or (op == "==" and isinstance(right, str)):
            # flag test (`ct status dnat`), set lookup (`... @set`), symbol (`tcp`)
            return f"{left} {_expr(right)}"
        if op not in ("==", "<"):
            raise TextError(f"operator {op!r}")
        r = f"0x{right:08x}" if isinstance(right, int) and op == "==" else _expr(right)
        return f"{left} {op} {r}"
    if kind == "vmap":
        return f"{_expr(v['key'])} vmap {_expr(v['data'])}"
    if kind == "dnat":
        fam, addr, port = v["family"], _atom(v["addr"]), int(v["port"])
        if fam not in ("ip", "ip6"):
            raise TextError(f"dnat family {fam!r}")
        return f"dnat {fam} to " + (f"[{addr}]:{port}" if fam == "ip6" else f"{addr}:{port}")
    if kind == "masquerade" and v is None:
        return "masquerade"
    if kind == "accept" and v is None:
        return "accept"
    if kind == "goto":
        return f"goto {_name(v['target'])}"
    if kind == "mangle":
        return f"{_expr(v['key'])} set {_expr(v['value'])}"
    if kind == "reject":
        if v == {"type": "tcp reset"}:
            return "reject with tcp reset"
        if v.get("type") == "icmpx" and set(v) == {"type", "expr"}:
            return f"reject with icmpx type {_name(v['expr'])}"
    raise TextError(f"statement {kind!r} {v!r}")


def _concat(e: Any) -> str:
    """The common element, a concatenation of constants: one check of the result."""
    text = " . ".join(map(str, e["concat"]))
    if not _SAFE_CONCAT(text):
        raise TextError(f"bad element {e!r}")
    return text


def _elem(e: Any) -> str:
    if isinstance(e, list):  # verdict map element: [key, {"goto": ...}]
        key, verdict = e
        return f"{_elem(key)} : {_stmt(verdict)}"
    if isinstance(e, dict) and "concat" in e:
        return _concat(e)
    return _atom(e)


def _type(t: Any) -> str:
    return " . ".join(_name(x) for x in t) if isinstance(t, list) else _name(t)


def _cmd_text(cmd: Cmd) -> str:
    ((op, body),) = cmd.items()
    if op not in ("add", "flush", "delete"):
        raise TextError(f"operation {op!r}")
    ((kind, o),) = body.items()
    if o.get("family") != FAMILY:
        raise TextError(f"family {o.get('family')!r}")
    if kind == "table":
        return f"{op} table inet {_name(o['name'])}"
    where = f"inet {_name(o['table'])}"
    if kind == "rule":
        if op != "add":
            raise TextError("only rules are added")
        text = f"add rule {where} {_name(o['chain'])} " + " ".join(_stmt(s) for s in o["expr"])
        return text + f" comment {quote(o['comment'])}" if "comment" in o else text
    if kind == "element":
        elems = ", ".join(_elem(e) for e in o["elem"])
        return f"{op} element {where} {_name(o['name'])} {{ {elems} }}"
    name = f"{where} {_name(o['name'])}"
    if kind == "chain":
        if op == "add" and "hook" in o:
            if o.get("policy", "accept") != "accept":
                raise TextError("only accepting base chains")
            spec = f"type {_name(o['type'])} hook {_name(o['hook'])} priority {int(o['prio'])};"
            return f"add chain {name} {{ {spec} policy accept; }}"
        return f"{op} chain {name}"
    if kind in ("set", "map") and op == "add":
        typ = _type(o["type"]) + (f" : {_name(o['map'])}" if kind == "map" else "")
        stmts = o.get("stmt", [])
        if stmts not in ([], [{"counter": None}]):
            raise TextError(f"set statements {stmts!r}")
        return f"add {kind} {name} {{ type {typ};{' counter;' if stmts else ''} }}"
    if kind in ("set", "map"):
        return f"{op} {kind} {name}"
    raise TextError(f"object {kind!r}")


def text_lines(cmds: Iterable[Cmd]) -> list[str]:
    return [_cmd_text(c) for c in cmds]


def to_text(cmds: Iterable[Cmd]) -> str:
    """One nft script: libnftables runs it as ONE transaction (all or nothing)."""
    return "".join(line + "\n" for line in text_lines(cmds))


# The hot path of a big load, written as text directly (a third of the cost of
# building the JSON structures and translating them).  Unit tests hold each of
# these equal to `text_lines` of its JSON twin.


def _chain_body(spec: FrontendSpec) -> list[str]:
    """The statements of each rule of a frontend chain, as nft text."""
    v6 = spec.v6
    dnat = f"meta l4proto {spec.protocol} dnat {'ip6' if v6 else 'ip'} to "
    out = []
    steps = cascade(spec)
    merged = _footer_merged(spec)
    for i, (b, modulus) in enumerate(steps):
        draw = "" if modulus is None else f"numgen random mod {modulus} < {b.weight} "
        addr = f"[{b.ip}]" if v6 else b.ip
        comment = _last_comment(spec, b) if merged and i == len(steps) - 1 else backend_comment(b)
        out.append(f"{draw}{dnat}{addr}:{b.port} comment {quote(comment)}")
    if not merged:
        mark = f"meta mark set meta mark | 0x{REFUSE_MARK:08x} accept"
        out.append(f"{mark} comment {quote(footer_comment(spec))}")
    for b in spec.backends:
        if b.weight == 0:
            addr = f"[{b.ip}]" if v6 else b.ip
            out.append(f"{dnat}{addr}:{b.port} comment {quote(backend_comment(b))}")
    return out


def chain_rules_text(spec: FrontendSpec) -> list[str]:
    """`text_lines(render_chain_rules(spec))`, directly."""
    head = f"add rule inet {table_of(spec.key)} {chain_name(spec.key)} "
    return [head + rule for rule in _chain_body(spec)]


def render_plan_lines(p: Plan, present: CounterState | None = None) -> list[str]:
    """The transaction of `render_plan(p, present)` as nft text, the same objects
    in the same order, except that the rules of added and rewritten chains are
    written as one block per shard table (`table T { chain C { rules } }`),
    which libnftables parses ~15% faster than one `add rule` command a rule."""
    present = present or {}
    el = Elements()
    blocks: dict[str, list[str]] = {}
    flushes: list[str] = []
    for spec in p.added:
        blocks.setdefault(table_of(spec.key), []).append(_chain_block(spec))
        el.vmap("add", spec.key)
        el.counters(
            spec.key, present.get(spec.key, (False, frozenset())), (True, backend_keys(spec))
        )
    for old, new in p.updated:
        flushes.append(f"flush chain inet {table_of(new.key)} {chain_name(new.key)}")
        blocks.setdefault(table_of(new.key), []).append(_chain_block(new))
        have = present.get(new.key, (True, backend_keys(old)))
        el.counters(new.key, have, (True, backend_keys(new)))
    deletes: list[str] = []
    for spec in p.removed:
        el.vmap("delete", spec.key)
        where = f"chain inet {table_of(spec.key)} {chain_name(spec.key)}"
        deletes += [f"flush {where}", f"delete {where}"]
        el.counters(
            spec.key, present.get(spec.key, (True, backend_keys(spec))), (False, frozenset())
        )
    chains = [f"table inet {t} {{\n{''.join(blocks[t])}}}" for t in sorted(blocks)]
    return el.head_lines() + flushes + chains + el.after_chains_lines() + deletes + el.tail_lines()


def _chain_block(spec: FrontendSpec) -> str:
    rules = "".join(f"\t\t{rule}\n" for rule in _chain_body(spec))
    return f"\tchain {chain_name(spec.key)} {{\n{rules}\t}}\n"
