"""Pure rendering of the nftables dataplane: DesiredState L4 frontends -> libnftables JSON.

Owns the layout of `table inet gatewaylb` (names, base chains, maps, the rules of one
frontend chain), the fingerprint that makes a frontend chain self-describing, the diff
between what is programmed and what is desired, and parsing a listed table back into
that model.  It does no I/O and never talks to the kernel: `nftables.py` does.

Layout (one frontend, IPv4 10.99.0.1 tcp/80, backends .11 w=3, .12 w=1, .13 w=0,
reject_weight 1):

    map fe4   { ipv4_addr . inet_proto . inet_service : verdict }  # -> goto fe_<id>
    map fcnt4 { ipv4_addr . inet_proto . inet_service : verdict }  # -> goto fc_<id>
    set masq4 { ipv4_addr }                                        # every backend ip
    chain nat_pre / nat_out   (nat, dstnat)   ip daddr . meta l4proto . th dport vmap @fe4
    chain nat_post            (nat, srcnat)   ct status dnat ip saddr @masq4 masquerade
    chain refuse_pre / _out   (filter, 0)     marked: tcp reset, else icmpx port-unreachable
    chain count_pre / _out    (filter, -150)  ip daddr . meta l4proto . th dport vmap @fcnt4
    chain fe_4_0a630001_t_80 {
        numgen random mod 5 < 3 counter meta l4proto tcp dnat ip to 10.20.0.11:8080
            comment "glb b=10.20.0.11,8080,3"
        numgen random mod 2 < 1 counter meta l4proto tcp dnat ip to 10.20.0.12:8080
            comment "glb b=10.20.0.12,8080,1"
        meta mark set meta mark | 0x00400000 accept comment "glb r=1 fp=<16 hex>"
        counter meta l4proto tcp dnat ip to 10.20.0.13:8080 comment "glb b=10.20.0.13,8080,0"
    }
    chain fc_4_0a630001_t_80 { counter }   # frontend packets/bytes, client -> VIP

Counters are inline, not named objects: libnftables 1.0.6 dumps every named
object before each rule command (50k counters cost ~160 ms a command at 10k).
The comments make the chain self-describing: adoption rebuilds the spec from
them and trusts it only when it matches the footer's fingerprint.

Each cascade rule draws a fresh random number: rule i takes w_i out of the weight
R_i still left (its own and every later backend's plus the reject share), which
gives every backend exactly w_i / total.  No anonymous set or vmap is used: with
libnftables 1.0.6 each one is dumped on every later command (NOTES.md).

Refusing is a packet mark because `reject` is not allowed in nat chains; the
filter chains at priority 0 of prerouting and output (after DNAT at -100) reject
marked packets: TCP reset, otherwise ICMP port unreachable.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.state import TCP, UDP, Backend, L4Frontend

FAMILY = "inet"
TABLE = "gatewaylb"
# A single bit of the packet mark: other owners of the mark (kube-proxy uses
# 0x4000, Cilium the 0x0f00 nibble) keep their bits.
REFUSE_MARK = 0x00400000
# Bumped whenever the base chains change shape; adoption rewrites them when the
# version found in the kernel differs.
SKELETON_VERSION = 1
SKELETON_TAG = f"glb skeleton v{SKELETON_VERSION}"
_FP_PREFIX = "glb "

Cmd = dict[str, Any]


# -- names -------------------------------------------------------------------


def _ip_hex(ip: str) -> str:
    return ipaddress.ip_address(ip).packed.hex()


@functools.lru_cache(maxsize=1 << 16)
def is_ipv6(ip: str) -> bool:
    return ipaddress.ip_address(ip).version == 6


@functools.lru_cache(maxsize=1 << 16)
def frontend_id(key: tuple[str, str, int]) -> str:
    """A stable identifier from the key alone, so that names are known without state."""
    vip, proto, port = key
    fam = "6" if is_ipv6(vip) else "4"
    return f"{fam}_{_ip_hex(vip)}_{proto[0]}_{port}"


def chain_name(key: tuple[str, str, int]) -> str:
    return "fe_" + frontend_id(key)


def count_chain_name(key: tuple[str, str, int]) -> str:
    return "fc_" + frontend_id(key)


# -- the normalised frontend ------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrontendSpec:
    """What one frontend chain encodes; equal specs mean identical kernel objects."""

    vip: str
    protocol: str
    port: int
    backends: tuple[Backend, ...]  # sorted, unique (ip, port); weight 0 kept
    reject_weight: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.vip, self.protocol, self.port)

    @property
    def v6(self) -> bool:
        return is_ipv6(self.vip)

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.key, self.backends, self.reject_weight)


@functools.lru_cache(maxsize=1 << 17)
def _fingerprint(key: tuple[str, str, int], backends: tuple[Backend, ...], reject: int) -> str:
    # Cached: a reconcile at 10k frontends compares 10k fingerprints.
    text = repr((key, [(b.ip, b.port, b.weight) for b in backends], reject))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RenderError(ValueError):
    """A frontend that cannot be programmed; reported for that frontend only."""


def normalise(fe: L4Frontend) -> FrontendSpec:
    """Validate one frontend and give it a canonical form (sorted, duplicates merged)."""
    if fe.protocol not in (TCP, UDP):
        raise RenderError(f"unsupported protocol {fe.protocol!r}")
    if not 0 < fe.port < 65536:
        raise RenderError(f"port {fe.port} out of range")
    try:
        vip = ipaddress.ip_address(fe.vip)
    except ValueError as exc:
        raise RenderError(f"bad vip {fe.vip!r}") from exc
    if fe.reject_weight < 0:
        raise RenderError("negative reject weight")
    merged: dict[tuple[str, int], int] = {}
    for b in fe.backends:
        try:
            ip = ipaddress.ip_address(b.ip)
        except ValueError as exc:
            raise RenderError(f"bad backend ip {b.ip!r}") from exc
        if ip.version != vip.version:
            raise RenderError(f"backend {b.ip} is not of the vip's address family")
        if not 0 < b.port < 65536 or b.weight < 0:
            raise RenderError(f"bad backend {b.ip}:{b.port} weight {b.weight}")
        k = (str(ip), b.port)
        merged[k] = merged.get(k, 0) + b.weight
    backends = tuple(Backend(ip, port, w) for (ip, port), w in sorted(merged.items()))
    total = sum(b.weight for b in backends) + fe.reject_weight
    if total >= 2**32:
        raise RenderError("total weight does not fit numgen's 32 bits")
    return FrontendSpec(str(vip), fe.protocol, fe.port, backends, fe.reject_weight)


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


def _obj(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **fields}}


def _fam(v6: bool) -> str:
    return "6" if v6 else "4"


# -- the skeleton ------------------------------------------------------------------

_BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    # name, type, hook, priority
    ("nat_pre", "nat", "prerouting", -100),
    ("nat_out", "nat", "output", -100),
    ("nat_post", "nat", "postrouting", 100),
    ("refuse_pre", "filter", "prerouting", 0),
    ("refuse_out", "filter", "output", 0),
    # Client-to-VIP packets, before DNAT rewrites the destination (mangle,
    # -150).  Replies are not counted: two more base chains walking every count
    # chain would add ~25 ms of kernel table validation to each change at 10k.
    ("count_pre", "filter", "prerouting", -150),
    ("count_out", "filter", "output", -150),
)
BASE_CHAIN_NAMES = frozenset(c[0] for c in _BASE_CHAINS)


def _base_rules(name: str) -> list[list[dict[str, Any]]]:
    rules: list[list[dict[str, Any]]] = []
    for v6 in (False, True):
        f = _fam(v6)
        if name in ("nat_pre", "nat_out"):
            rules.append([{"vmap": {"key": _key(v6, "daddr", "dport"), "data": f"@fe{f}"}}])
        elif name == "nat_post":
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
            rules.append([{"vmap": {"key": _key(v6, "daddr", "dport"), "data": f"@fcnt{f}"}}])
    if name in ("refuse_pre", "refuse_out"):
        marked = {
            "match": {
                "op": "==",
                "left": {"&": [{"meta": {"key": "mark"}}, REFUSE_MARK]},
                "right": REFUSE_MARK,
            }
        }
        tcp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
        rules.append([marked, tcp, {"reject": {"type": "tcp reset"}}])
        rules.append([marked, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}])
    return rules


def render_skeleton() -> list[Cmd]:
    """The table, maps, sets and base chains; idempotent (base chains are flushed)."""
    cmds: list[Cmd] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for v6 in (False, True):
        addr = "ipv6_addr" if v6 else "ipv4_addr"
        key_type = [addr, "inet_proto", "inet_service"]
        f = _fam(v6)
        cmds.append({"add": _obj("map", name=f"fe{f}", type=key_type, map="verdict")})
        cmds.append({"add": _obj("map", name=f"fcnt{f}", type=key_type, map="verdict")})
        cmds.append({"add": _obj("set", name=f"masq{f}", type=addr)})
    for name, typ, hook, prio in _BASE_CHAINS:
        chain = {"name": name, "type": typ, "hook": hook, "prio": prio, "policy": "accept"}
        cmds.append({"add": _obj("chain", **chain)})
        cmds.append({"flush": _obj("chain", name=name)})
        rules = _base_rules(name)
        for i, expr in enumerate(rules):
            rule: dict[str, Any] = {"chain": name, "expr": expr}
            if i == 0:
                rule["comment"] = SKELETON_TAG
            cmds.append({"add": _obj("rule", **rule)})
    return cmds


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


Counts = Mapping[tuple[str, int], tuple[int, int]]


def _counter(value: tuple[int, int] | None) -> dict[str, Any]:
    packets, nbytes = value or (0, 0)
    return {"counter": {"packets": packets, "bytes": nbytes}}


def render_chain_rules(spec: FrontendSpec, counts: Counts | None = None) -> list[Cmd]:
    """The rules of one frontend chain.  `counts` seeds the per-backend counters so
    that a rewritten chain continues the new-flow counts of the one it replaces."""
    counts = counts or {}
    cname = chain_name(spec.key)
    proto = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": spec.protocol}}
    family = "ip6" if spec.v6 else "ip"

    def dnat_rule(b: Backend, modulus: int | None) -> Cmd:
        expr: list[dict[str, Any]] = []
        if modulus is not None:
            numgen = {"numgen": {"mode": "random", "mod": modulus, "offset": 0}}
            expr.append({"match": {"op": "<", "left": numgen, "right": b.weight}})
        expr += [
            _counter(counts.get((b.ip, b.port))),
            proto,
            {"dnat": {"family": family, "addr": b.ip, "port": b.port}},
        ]
        return {"add": _obj("rule", chain=cname, expr=expr, comment=backend_comment(b))}

    cmds = [dnat_rule(b, modulus) for b, modulus in cascade(spec)]
    # Reached by the reject share, or by every flow when no backend has weight:
    # mark for the refuse chains, and stop here.
    mark = {"meta": {"key": "mark"}}
    refuse = {"mangle": {"key": mark, "value": {"|": [mark, REFUSE_MARK]}}}
    footer = {"chain": cname, "expr": [refuse, {"accept": None}], "comment": footer_comment(spec)}
    cmds.append({"add": _obj("rule", **footer)})
    # Weight-0 backends: unreachable rules after the footer's accept.  They keep
    # the backend known to a reader of the kernel and keep its flow count.
    cmds += [dnat_rule(b, None) for b in spec.backends if b.weight == 0]
    return cmds


def _elem_key(spec: FrontendSpec) -> dict[str, Any]:
    return {"concat": [spec.vip, spec.protocol, spec.port]}


def render_add(spec: FrontendSpec) -> list[Cmd]:
    """Every object of a frontend that is not programmed yet (map elements are
    batched by `render_plan`)."""
    fc = count_chain_name(spec.key)
    return [
        {"add": _obj("chain", name=chain_name(spec.key))},
        *render_chain_rules(spec),
        {"add": _obj("chain", name=fc)},
        {"add": _obj("rule", chain=fc, expr=[_counter(None)])},
    ]


def _backend_set(spec: FrontendSpec) -> set[tuple[str, int]]:
    return {(b.ip, b.port) for b in spec.backends}


def render_update(old: FrontendSpec, new: FrontendSpec, counts: Counts | None = None) -> list[Cmd]:
    """Rewrite one chain in place; its map elements and its count chain stay."""
    return [{"flush": _obj("chain", name=chain_name(new.key))}, *render_chain_rules(new, counts)]


def render_delete(old: FrontendSpec) -> list[Cmd]:
    """Chains go after the map elements that jump to them (same transaction: the
    kernel drops the references in order; verified on 6.18)."""
    cmds: list[Cmd] = []
    for name in (chain_name(old.key), count_chain_name(old.key)):
        cmds.append({"flush": _obj("chain", name=name)})
        cmds.append({"delete": _obj("chain", name=name)})
    return cmds


def _elements(op: str, specs: Iterable[FrontendSpec]) -> list[Cmd]:
    """One command per map: libnftables evaluates each command separately, so 10k
    elements in one command are far cheaper than 10k commands."""
    by_map: dict[str, list[Any]] = {}
    for spec in specs:
        f = _fam(spec.v6)
        key = _elem_key(spec)
        if op == "add":
            by_map.setdefault(f"fe{f}", []).append(
                [key, {"goto": {"target": chain_name(spec.key)}}]
            )
            by_map.setdefault(f"fcnt{f}", []).append(
                [key, {"goto": {"target": count_chain_name(spec.key)}}]
            )
        else:
            by_map.setdefault(f"fe{f}", []).append(key)
            by_map.setdefault(f"fcnt{f}", []).append(key)
    return [{op: _obj("element", name=name, elem=elems)} for name, elems in sorted(by_map.items())]


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


def plan(
    programmed: Mapping[tuple[str, str, int], FrontendSpec],
    desired: Mapping[tuple[str, str, int], FrontendSpec],
) -> Plan:
    added = tuple(desired[k] for k in sorted(desired.keys() - programmed.keys()))
    removed = tuple(programmed[k] for k in sorted(programmed.keys() - desired.keys()))
    updated = tuple(
        (programmed[k], desired[k])
        for k in sorted(desired.keys() & programmed.keys())
        # identity first: the dataplane reuses the spec of an unchanged frontend
        if programmed[k] is not desired[k] and programmed[k].fingerprint != desired[k].fingerprint
    )
    return Plan(added, updated, removed)


def render_plan(p: Plan, counts: Mapping[tuple[str, str, int], Counts] | None = None) -> list[Cmd]:
    """One transaction for a plan; `counts` carries the backend counters of updated
    frontends over their rewrite."""
    counts = counts or {}
    cmds: list[Cmd] = []
    for spec in p.added:
        cmds += render_add(spec)
    cmds += _elements("add", p.added)
    for old, new in p.updated:
        cmds += render_update(old, new, counts.get(new.key))
    cmds += _elements("delete", p.removed)
    for spec in p.removed:
        cmds += render_delete(spec)
    return cmds


def removed_backends(old: FrontendSpec, new: FrontendSpec | None) -> set[tuple[str, int]]:
    """Backends gone altogether (weight 0 still counts as present)."""
    return _backend_set(old) - (_backend_set(new) if new else set())


# -- reading back ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedTable:
    specs: dict[tuple[str, str, int], FrontendSpec]
    # key -> (packets, bytes) of the frontend, both directions
    frontend_counts: dict[tuple[str, str, int], tuple[int, int]]
    # key -> (backend ip, port) -> (new flows, bytes of their first packets)
    backend_counts: dict[tuple[str, str, int], dict[tuple[str, int], tuple[int, int]]]
    masq: set[str]
    skeleton_ok: bool
    # chains that do not parse -> the key a map element gives them (None: orphan)
    broken: dict[str, tuple[str, str, int] | None]
    # (map name, key) pairs present in the verdict maps
    elements: set[tuple[str, tuple[str, str, int]]]


def _key_from_elem(elem: Any) -> tuple[str, str, int] | None:
    try:
        vip, proto, port = elem["concat"]
        return (str(ipaddress.ip_address(vip)), str(proto), int(port))
    except (KeyError, TypeError, ValueError):
        return None


def _rule_counter(rule: Mapping[str, Any]) -> tuple[int, int]:
    for e in rule.get("expr", []):
        c = e.get("counter") if isinstance(e, dict) else None
        if isinstance(c, dict) and "packets" in c:
            return (int(c["packets"]), int(c["bytes"]))
    return (0, 0)


def parse_table(listing: Mapping[str, Any]) -> ParsedTable:
    """Rebuild the programmed frontends from `list table inet gatewaylb` JSON.

    A frontend chain is trusted only when its footer's fingerprint matches the
    spec rebuilt from its rules; otherwise it is reported broken (and replaced by
    the next reconcile, never silently kept).
    """
    chains: dict[str, list[dict[str, Any]]] = {}
    keys: dict[str, tuple[str, str, int]] = {}  # chain -> key, from the verdict maps
    elements: set[tuple[str, tuple[str, str, int]]] = set()
    masq: set[str] = set()
    skeleton_tags: dict[str, str] = {}
    for item in listing.get("nftables", []):
        if "chain" in item:
            chains.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            r = item["rule"]
            chains.setdefault(r["chain"], []).append(r)
            if r["chain"] in BASE_CHAIN_NAMES and "comment" in r:
                skeleton_tags[r["chain"]] = r["comment"]
        elif "map" in item and item["map"]["name"] in ("fe4", "fe6", "fcnt4", "fcnt6"):
            for elem in item["map"].get("elem", []):
                key = _key_from_elem(elem[0])
                target = (
                    elem[1].get("goto", {}).get("target") if isinstance(elem[1], dict) else None
                )
                if key and target:
                    keys[target] = key
                    elements.add((item["map"]["name"], key))
        elif "set" in item and item["set"]["name"] in ("masq4", "masq6"):
            masq.update(str(e) for e in item["set"].get("elem", []) if isinstance(e, str))
    skeleton_ok = all(skeleton_tags.get(n) == SKELETON_TAG for n in BASE_CHAIN_NAMES)
    specs: dict[tuple[str, str, int], FrontendSpec] = {}
    frontend_counts: dict[tuple[str, str, int], tuple[int, int]] = {}
    backend_counts: dict[tuple[str, str, int], dict[tuple[str, int], tuple[int, int]]] = {}
    broken: dict[str, tuple[str, str, int] | None] = {}
    for name, rules in chains.items():
        if name in BASE_CHAIN_NAMES:
            continue
        key = keys.get(name)
        if name.startswith("fc_") and key and count_chain_name(key) == name:
            frontend_counts[key] = _rule_counter(rules[0]) if rules else (0, 0)
            continue
        parsed = _parse_chain(key, rules) if key and chain_name(key) == name else None
        if parsed is None:
            broken[name] = key
            continue
        spec, counts = parsed
        specs[spec.key] = spec
        backend_counts[spec.key] = counts
    # A frontend whose count chain went missing is rewritten whole.
    for key in list(specs):
        if key not in frontend_counts:
            broken[chain_name(key)] = key
            del specs[key]
    return ParsedTable(specs, frontend_counts, backend_counts, masq, skeleton_ok, broken, elements)


def render_repair(
    key: tuple[str, str, int],
    spec: FrontendSpec | None,
    elements: set[tuple[str, tuple[str, str, int]]],
) -> list[Cmd]:
    """Replace whatever a chain that did not parse holds: rewrite the frontend when
    it is desired, else remove its elements and chains.  Commands are chosen so
    that none fails on a half-present frontend (a failing command would roll
    back the whole transaction)."""
    f = "6" if is_ipv6(key[0]) else "4"
    names = (chain_name(key), count_chain_name(key))
    cmds: list[Cmd] = []
    for name in names:
        cmds.append({"add": _obj("chain", name=name)})
        cmds.append({"flush": _obj("chain", name=name)})
    if spec is not None:
        cmds += render_chain_rules(spec)
        cmds.append({"add": _obj("rule", chain=names[1], expr=[_counter(None)])})
        cmds += _elements("add", [spec])
        return cmds
    elem = {"concat": [key[0], key[1], key[2]]}
    for m in (f"fe{f}", f"fcnt{f}"):
        if (m, key) in elements:
            cmds.append({"delete": _obj("element", name=m, elem=[elem])})
    cmds += [{"delete": _obj("chain", name=name)} for name in names]
    return cmds


def render_orphan(name: str) -> list[Cmd]:
    """A chain of ours that no map element reaches."""
    return [{"flush": _obj("chain", name=name)}, {"delete": _obj("chain", name=name)}]


def _parse_chain(
    key: tuple[str, str, int], rules: list[dict[str, Any]]
) -> tuple[FrontendSpec, dict[tuple[str, int], tuple[int, int]]] | None:
    backends: dict[tuple[str, int], int] = {}
    counts: dict[tuple[str, int], tuple[int, int]] = {}
    footer = None
    for r in rules:
        comment = str(r.get("comment", ""))
        try:
            if comment.startswith(_FP_PREFIX + "b="):
                ip, port, weight = comment[len(_FP_PREFIX) + 2 :].split(",")
                backends[(ip, int(port))] = int(weight)
                counts[(ip, int(port))] = _rule_counter(r)
            elif comment.startswith(_FP_PREFIX + "r="):
                footer = dict(part.split("=", 1) for part in comment[len(_FP_PREFIX) :].split())
        except ValueError:
            return None
    if footer is None or "r" not in footer:
        return None
    ordered = tuple(Backend(ip, port, w) for (ip, port), w in sorted(backends.items()))
    spec = FrontendSpec(key[0], key[1], key[2], ordered, int(footer["r"]))
    return (spec, counts) if spec.fingerprint == footer.get("fp") else None
