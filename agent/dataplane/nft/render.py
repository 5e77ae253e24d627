"""The one renderer of the nftables dataplane: the gatewaylb ruleset described
as objects (`objects`), and those objects written as nft text.

Owns the rule statements (the skeleton's base chains, one frontend chain's
cascade) and the text form of every op a `Transaction` may hold.  The text is
what libnftables runs (`Nftables.cmd`), as ONE transaction: at 10k frontends
libnftables 1.0.6 takes ~2.5 s to evaluate the JSON batch against ~1 s for the
same batch as text (bench/nft_scale.py), and text reads like the nft
documentation; so there is no JSON renderer.  Anything that could end a
string or a command is refused (`TextError`), never escaped: nft strings have
no escapes.

Pure: never touches the kernel, never decides what to write (that is `plan`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agent.dataplane.frontends import FrontendSpec
from agent.dataplane.nft import layout as L
from agent.dataplane.nft.layout import fam
from agent.dataplane.nft.objects import (
    Chain,
    Elements,
    Hook,
    Obj,
    Rules,
    RuleText,
    Set,
    Table,
    Transaction,
)
from agent.state import TCP, UDP


class TextError(ValueError):
    """An object this renderer cannot write safely (a bug, never an input problem)."""


_SAFE_COMMENT = re.compile(r"[0-9A-Za-z ,.=:_/+-]{0,127}\Z").match
_SAFE_NAME = re.compile(r"[0-9A-Za-z_-]+\Z").match
_SAFE_TYPE = re.compile(r"[0-9a-z_]+( \. [0-9a-z_]+)*\Z").match
_SAFE_ELEMS = re.compile(r"[0-9A-Za-z.:_ ,-]+\Z").match


def quote(text: str) -> str:
    """A comment as an nft string.  nft strings have no escapes, so anything that
    could end the string or the command is refused rather than quoted."""
    if not _SAFE_COMMENT(text):
        raise TextError(f"comment {text!r} cannot be written as nft text")
    return f'"{text}"'


def _name(text: str) -> str:
    if not _SAFE_NAME(text):
        raise TextError(f"bad object name {text!r}")
    return text


# -- the skeleton ---------------------------------------------------------------------


def _addr(v6: bool) -> str:
    return "ipv6_addr" if v6 else "ipv4_addr"


def _base_rules(chain: str) -> tuple[RuleText, ...]:
    """The rules of one base chain; the first carries the skeleton tag."""
    stmts: list[str] = []
    for v6 in (False, True):
        ip, f = ("ip6" if v6 else "ip"), fam(v6)
        key = f"{ip} daddr . meta l4proto . th dport"
        if chain in ("nat_pre", "nat_out"):
            stmts.append(f"{key} vmap @fe{f}")
        elif chain == "nat_post":
            # After DNAT: original VIP, protocol and port, then the chosen backend.
            # `ct original proto-dst` has a size only once the protocol is known.
            for proto in (TCP, UDP):
                stmts.append(
                    f"meta l4proto {proto} ct original {ip} daddr . meta l4proto"
                    f" . ct original proto-dst . {ip} daddr . th dport @bcnt{f}"
                )
            # Hairpin and backend-to-VIP-to-neighbour: the chosen backend would
            # answer the source directly (same host or same segment), so the
            # node must be the source.  Remote clients keep their address.
            stmts.append(f"ct status dnat {ip} saddr @masq{f} masquerade")
        elif chain in ("count_pre", "count_out"):
            stmts.append(f"{key} @fcnt{f}")
    if chain in ("refuse_pre", "refuse_out"):
        marked = f"meta mark & 0x{L.REFUSE_MARK:08x} == 0x{L.REFUSE_MARK:08x}"
        stmts.append(f"{marked} meta l4proto tcp reject with tcp reset")
        stmts.append(f"{marked} reject with icmpx type port-unreachable")
    return tuple((s, L.SKELETON_TAG if i == 0 else "") for i, s in enumerate(stmts))


def _base_chains(tx: Transaction, table: str, hooks: Iterable[tuple[str, Hook]]) -> None:
    # Flushed and written again: a base chain is right after this whatever it held.
    for name, hook in hooks:
        tx.add(Chain(table, name, hook))
        tx.flush(Chain(table, name))
        tx.add(Rules(table, name, _base_rules(name)))


def shared_skeleton(tx: Transaction) -> None:
    """The shared table, its sets and base chains; idempotent."""
    tx.add(Table(L.TABLE))
    for v6 in (False, True):
        addr, f = _addr(v6), fam(v6)
        fkey = f"{addr} . inet_proto . inet_service"
        tx.add(Set(L.TABLE, f"masq{f}", addr))
        tx.add(Set(L.TABLE, f"fcnt{f}", fkey, counter=True))
        tx.add(Set(L.TABLE, f"bcnt{f}", f"{fkey} . {addr} . inet_service", counter=True))
    _base_chains(tx, L.TABLE, L.SHARED_HOOKS)


def shard_skeleton(tx: Transaction, shard: int) -> None:
    table = L.shard_table(shard)
    tx.add(Table(table))
    for v6 in (False, True):
        key = f"{_addr(v6)} . inet_proto . inet_service"
        tx.add(Set(table, f"fe{fam(v6)}", key, verdicts=True))
    _base_chains(tx, table, L.SHARD_HOOKS)


def skeleton() -> Transaction:
    """Every table of the layout (a fresh start)."""
    tx = Transaction()
    shared_skeleton(tx)
    for shard in range(L.SHARDS):
        shard_skeleton(tx, shard)
    return tx


# -- one frontend ----------------------------------------------------------------------


def chain_body(spec: FrontendSpec) -> tuple[RuleText, ...]:
    """The rules of one frontend chain (no counters: those live in the shared
    sets).  The hot path of a big load (10k chains): names bound locally."""
    v6 = spec.v6
    dnat = f"meta l4proto {spec.protocol} dnat {'ip6' if v6 else 'ip'} to "
    backend_comment = L.backend_comment
    out = []
    steps = L.cascade(spec)
    merged = L.footer_merged(spec, steps)
    last = len(steps) - 1
    for i, (b, modulus) in enumerate(steps):
        draw = "" if modulus is None else f"numgen random mod {modulus} < {b.weight} "
        addr = f"[{b.ip}]" if v6 else b.ip
        comment = L.last_comment(spec, b) if merged and i == last else backend_comment(b)
        out.append((f"{draw}{dnat}{addr}:{b.port}", comment))
    if not merged:
        # Reached by the reject share, or by every flow when no backend has
        # weight: mark for the refuse chains, and stop here.
        mark = f"meta mark set meta mark | 0x{L.REFUSE_MARK:08x} accept"
        out.append((mark, L.footer_comment(spec)))
    # Weight-0 backends: unreachable rules after the footer's accept.  They keep
    # the backend known to a reader of the kernel (and its flow-count element).
    if len(steps) < len(spec.backends):
        for b in spec.backends:
            if b.weight == 0:
                addr = f"[{b.ip}]" if v6 else b.ip
                out.append((f"{dnat}{addr}:{b.port}", backend_comment(b)))
    return tuple(out)


def frontend_chain(spec: FrontendSpec) -> Chain:
    """A frontend's chain declared with its rules, in its shard."""
    key = spec.key
    return Chain(L.table_of(key), L.chain_name(key), None, chain_body(spec))


def frontend_rules(spec: FrontendSpec) -> Rules:
    """The same rules, appended to the frontend's chain (which exists)."""
    return Rules(L.table_of(spec.key), L.chain_name(spec.key), chain_body(spec))


# -- text ---------------------------------------------------------------------------------


def _rule(statement: str, comment: str) -> str:
    # Statements are this module's own text over validated specs, not checked
    # again (the hot path of a big load); a comment is, as nft strings have no
    # escapes.
    return f"{statement} comment {quote(comment)}" if comment else statement


def _elements(e: Elements) -> str:
    if e.goto:
        # key . key . key : goto chain -- the three-part keys of the frontend
        # maps written directly (10k of them in a big load)
        text = ", ".join(
            [
                f"{x[0]} . {x[1]} . {x[2]} : goto {x[3]}"
                if len(x) == 4
                else f"{' . '.join(map(str, x[:-1]))} : goto {x[-1]}"
                for x in e.elems
            ]
        )
    else:
        text = ", ".join([" . ".join(map(str, x)) for x in e.elems])
    # The values come from validated specs; this keeps a bug from ever
    # closing the element block or starting another command.
    if not _SAFE_ELEMS(text):
        raise TextError(f"bad elements for {e.table} {e.set}")
    return f"inet {_name(e.table)} {_name(e.set)} {{ {text} }}"


def _line(verb: str, obj: Obj) -> list[str]:
    """The command(s) of one op (a chain with a body is written by `lines`)."""
    if isinstance(obj, Table) and verb in ("add", "delete"):
        return [f"{verb} table inet {_name(obj.name)}"]
    if isinstance(obj, Elements) and verb in ("add", "delete"):
        return [f"{verb} element {_elements(obj)}"]
    if isinstance(obj, Rules) and verb == "add":
        head = f"add rule inet {_name(obj.table)} {_name(obj.chain)} "
        return [head + _rule(*r) for r in obj.rules]
    if isinstance(obj, Set) and verb == "add":
        if not _SAFE_TYPE(obj.type):
            raise TextError(f"bad set type {obj.type!r}")
        kind, typ = ("map", f"{obj.type} : verdict") if obj.verdicts else ("set", obj.type)
        where = f"inet {_name(obj.table)} {_name(obj.name)}"
        return [f"add {kind} {where} {{ type {typ};{' counter;' if obj.counter else ''} }}"]
    if isinstance(obj, Chain) and obj.body is None:
        where = f"chain inet {_name(obj.table)} {_name(obj.name)}"
        if obj.hook is None or verb != "add":
            return [f"{verb} {where}"]
        h = obj.hook
        spec = f"type {_name(h.type)} hook {_name(h.hook)} priority {int(h.priority)};"
        return [f"add {where} {{ {spec} policy accept; }}"]
    raise TextError(f"cannot write {verb} {obj!r}")


def lines(tx: Transaction) -> list[str]:
    """The transaction as nft commands, in order.  Consecutive chains with a body
    in one table become one block (`table T { chain C { rules } }`), which
    libnftables parses ~15% faster than one `add rule` command a rule."""
    out: list[str] = []
    block: list[str] = []  # the parts of the open block, joined once
    table = ""  # the open block's
    safe = _SAFE_COMMENT
    for verb, obj in tx:
        if isinstance(obj, Chain) and obj.body is not None:
            if verb != "add" or obj.hook is not None:
                raise TextError(f"cannot write {verb} {obj!r}")
            if not block or obj.table != table:
                if block:
                    block.append("}")
                    out.append("".join(block))
                table = obj.table
                block = [f"table inet {_name(table)} {{\n"]
            block.append(f"\tchain {_name(obj.name)} {{\n")
            # `_rule` and `quote`, inlined: the hot loop of a big load (40k
            # rules at 10k frontends)
            block += [
                f'\t\t{s} comment "{c}"\n' if c and safe(c) else f"\t\t{_rule(s, c)}\n"
                for s, c in obj.body
            ]
            block.append("\t}\n")
            continue
        if block:
            block.append("}")
            out.append("".join(block))
            block = []
        out += _line(verb, obj)
    if block:
        block.append("}")
        out.append("".join(block))
    return out


def text(tx: Transaction) -> str:
    """One nft script: libnftables runs it as ONE transaction (all or nothing)."""
    out = lines(tx)
    out.append("")  # the last command's newline, without copying the script again
    return "\n".join(out)
