"""The nftables dataplane: converges the gatewaylb tables to the L4 frontends.

Owns `table inet gatewaylb` (shared: counters, masquerade, refusal) and the shard
tables `inet gatewaylb-NN` holding the frontend chains (see `nft_rules`), and the
UDP conntrack entries of endpoints it removes.  It never touches another table,
the ruleset as a whole, interfaces or routes.  It works in the network namespace
of the thread that constructs it (libnftables opens its netlink socket there):
the agent runs in the node's namespace, tests construct it in a thread switched
into a lab namespace.

The rendering is pure and lives in `nft_rules`; this module keeps what is
programmed, works out what changed (in time proportional to the change, not to
the number of frontends) and applies it as ONE libnftables JSON transaction.  An
unchanged state issues no transaction.

Costs that shaped it (libnftables 1.0.6, kernel 6.18, 10k frontends; see
bench/nft_scale.py): every write command makes libnftables dump all chains and
sets of the namespace first (not filtered by table in 1.0.6), and the kernel
re-validates, at commit, every chain of each table a goto/dnat was added to.
Sharding bounds the second; having no per-frontend count chains halves the
first.  `list tables` fills the FULL cache in 1.0.6 (every rule of every table):
table names come from a plain netlink dump instead.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections import Counter
from typing import Any

import nftables

from agent.dataplane import nft_rules as R
from agent.dataplane.base import (
    FrontendCounters,
    ProgrammedFrontend,
    ReconcileResult,
)
from agent.gcpause import gc_paused
from agent.state import UDP, DesiredState, L4Frontend

log = logging.getLogger(__name__)

Key = tuple[str, str, int]
CounterState = tuple[bool, R.BackendKeys]
_NO_COUNTERS: CounterState = (False, frozenset())
NFPROTO_INET = 1
# read_counters() is called by every scrape; scrapes closer than this share a read.
COUNTER_TTL = 1.0


class NftablesError(RuntimeError):
    pass


def _backend_ips(spec: R.FrontendSpec | None) -> set[str]:
    return {b.ip for b in spec.backends} if spec else set()


class NftablesDataplane:
    """Dataplane over libnftables; adopts existing tables at construction."""

    name = "nftables"

    def __init__(self, interfaces: tuple[str, ...] = ()) -> None:
        # Accepted for the common dataplane signature; the tables' base chains
        # hook every interface of the namespace, so there is nothing to attach.
        self.interfaces = interfaces
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        # Transactions written, for tests and logs ("a no-op issues none").
        self.transactions = 0
        self._reset_memory()
        # Normalising is pure but not free (~25 us a frontend): reuse the spec
        # of a frontend equal to the one seen last time.
        self._normalised: dict[Key, tuple[L4Frontend, R.FrontendSpec]] = {}
        self._counter_cache: tuple[float, list[FrontendCounters]] | None = None
        self._adopt()

    def _reset_memory(self) -> None:
        """What the kernel holds, as far as this object knows."""
        self._specs: dict[Key, R.FrontendSpec] = {}
        # backend ip -> number of programmed backends with it (masquerade set)
        self._ipref: Counter[str] = Counter()
        self._masq: set[str] = set()  # the kernel's masquerade set
        self._masq_dirty = False  # _masq may differ from _ipref's keys
        self._counters: dict[Key, CounterState] = {}  # counter elements present
        self._counters_dirty = False  # elements of unprogrammed keys may remain
        self._shared_ok = False
        self._shards_ok: set[int] = set()
        self._broken: dict[str, Key | None] = {}
        self._chain_tables: dict[str, str] = {}
        self._elements: set[Key] = set()  # only needed for repairs
        self._stray: set[tuple[str, str, Key]] = set()
        # Our tables that do not belong to the layout (other shard count, older
        # single-table layout): deleted by the next reconcile, atomically with
        # writing the new layout.
        self._foreign: set[str] = set()

    # -- kernel I/O ---------------------------------------------------------------

    def _run(self, cmds: list[dict[str, Any]]) -> Any:
        rc, output, error = self._nft.json_cmd({"nftables": cmds})
        if rc != 0:
            raise NftablesError(str(error).strip() or f"libnftables rc={rc}")
        return output

    def _write(self, cmds: list[dict[str, Any]]) -> None:
        self.transactions += 1
        self._counter_cache = None
        self._run(cmds)

    def _our_tables(self) -> set[str]:
        """Names of our inet tables, from one netlink table dump (~1 ms)."""
        try:
            from pyroute2.nftables.main import NFTables

            nf = NFTables(nfgen_family=NFPROTO_INET)
            try:
                names = {str(t.get_attr("NFTA_TABLE_NAME")) for t in nf.get_tables()}
            finally:
                nf.close()
        except Exception as exc:  # any failure: fall back to libnftables
            log.debug("event=table_dump_fallback error=%r", exc)
            out = self._run([{"list": {"tables": {"family": R.FAMILY}}}])
            names = {
                t["table"]["name"]
                for t in out.get("nftables", [])
                if t.get("table", {}).get("family") == R.FAMILY
            }
        return {n for n in names if R.is_our_table(n)}

    def _read(self, tables: set[str], into: R.ParsedTable | None = None) -> R.ParsedTable:
        """List and parse tables; the listings run in parallel threads (each with
        its own libnftables context), parsing stays in this thread."""
        parsed = into if into is not None else R.ParsedTable()
        cmds = [{"list": {"table": {"family": R.FAMILY, "name": n}}} for n in sorted(tables)]
        # One command each: libnftables limits its cache fill to a listed table.
        # (Listing from several threads is not safe: libnftables 1.0.6 garbled
        # JSON output with one context per thread.)
        for cmd in cmds:
            R.parse_table(self._run([cmd]), parsed)
        return parsed

    def _adopt(self) -> None:
        with gc_paused():
            self._adopt_tables()

    def _adopt_tables(self) -> None:
        tables = self._our_tables()
        if not tables:
            return
        layout = {R.TABLE, *R.SHARD_TABLES}
        # The shared table first: it says which layout wrote the others.
        parsed = self._read({R.TABLE}) if R.TABLE in tables else R.ParsedTable()
        if parsed.tags.get(R.TABLE) != R.SKELETON_TAG:
            # An older or differently sharded layout (or a half-deleted one):
            # nothing is adopted, the next reconcile replaces it atomically.
            self._foreign = tables
            log.info("event=adopt layout=foreign tables=%d", len(tables))
            return
        self._foreign = tables - layout
        parsed = self._read(tables & layout - {R.TABLE}, parsed)
        self._specs = dict(parsed.specs)
        self._ipref = Counter(b.ip for s in self._specs.values() for b in s.backends)
        self._masq = set(parsed.masq)
        self._masq_dirty = True
        self._counters = parsed.counter_state()
        self._counters_dirty = True
        self._shared_ok = parsed.tags.get(R.TABLE) == R.SKELETON_TAG
        self._shards_ok = parsed.shards_ok()
        self._broken = dict(parsed.broken)
        self._chain_tables = dict(parsed.chain_tables)
        self._elements = set(parsed.elements)
        self._stray = set(parsed.stray_elements)
        log.info(
            "event=adopt tables=%d frontends=%d broken=%d skeleton_ok=%s",
            len(tables),
            len(self._specs),
            len(self._broken),
            parsed.skeleton_ok,
        )

    # -- Dataplane ------------------------------------------------------------------

    def _desired(self, desired: DesiredState) -> tuple[dict[Key, R.FrontendSpec], dict[Key, str]]:
        errors: dict[Key, str] = {}
        want: dict[Key, R.FrontendSpec] = {}
        normalised: dict[Key, tuple[L4Frontend, R.FrontendSpec]] = {}
        cache = self._normalised
        for fe in desired.l4:
            key = fe.key
            if key in want or key in errors:
                errors[key] = "duplicate frontend"
                want.pop(key, None)
                continue
            cached = cache.get(key)
            if cached is not None and (cached[0] is fe or cached[0] == fe):
                want[key] = cached[1]
                normalised[key] = cached
                continue
            try:
                spec = R.normalise(fe)
            except R.RenderError as exc:
                errors[key] = str(exc)
                continue
            # Reuse the programmed object when equal: the diff compares identity first.
            old = self._specs.get(key)
            if old is not None and old.fingerprint == spec.fingerprint:
                spec = old
            want[key] = spec
            normalised[key] = (fe, spec)
        self._normalised = normalised
        # A frontend that cannot be rendered keeps what it had: refusing to
        # touch it is safer than tearing down a working chain on a bad input.
        for key in errors:
            if key in self._specs:
                want[key] = self._specs[key]
        return want, errors

    def _diff(
        self, want: dict[Key, R.FrontendSpec], programmed: dict[Key, R.FrontendSpec]
    ) -> R.Plan:
        """Like `R.plan`, in time proportional to the change plus one pass of
        identity checks (specs of unchanged frontends are the programmed objects)."""
        added: list[R.FrontendSpec] = []
        updated: list[tuple[R.FrontendSpec, R.FrontendSpec]] = []
        for key, spec in want.items():
            old = programmed.get(key)
            if old is spec:
                continue
            if old is None:
                added.append(spec)
            elif old.fingerprint != spec.fingerprint:
                updated.append((old, spec))
        removed = (
            [programmed[k] for k in programmed.keys() - want.keys()]
            if (len(want) - len(added) != len(programmed))
            else []
        )
        return R.Plan(
            tuple(sorted(added, key=lambda s: s.key)),
            tuple(sorted(updated, key=lambda p: p[1].key)),
            tuple(sorted(removed, key=lambda s: s.key)),
        )

    def _masq_diff(self, plan: R.Plan) -> tuple[set[str], set[str], Counter[str]]:
        """(ips to add, ips to delete, refcount delta) for a plan, from the changed
        frontends only."""
        delta: Counter[str] = Counter()
        for spec in plan.added:
            delta.update(b.ip for b in spec.backends)
        for old, new in plan.updated:
            delta.update(b.ip for b in new.backends)
            delta.subtract(b.ip for b in old.backends)
        for spec in plan.removed:
            delta.subtract(b.ip for b in spec.backends)
        if self._masq_dirty:
            touched = set(self._ipref) | set(delta) | self._masq
        else:
            touched = {ip for ip, d in delta.items() if d}
        after = {ip for ip in touched if self._ipref.get(ip, 0) + delta.get(ip, 0) > 0}
        add = {ip for ip in after if ip not in self._masq}
        delete = {ip for ip in touched - after if ip in self._masq}
        return add, delete, delta

    def reconcile(self, desired: DesiredState) -> ReconcileResult:
        # Rendering 10k frontends makes millions of short-lived, acyclic objects.
        with gc_paused():
            return self._reconcile(desired)

    def _reconcile(self, desired: DesiredState) -> ReconcileResult:
        want, errors = self._desired(desired)
        rebuild = bool(self._foreign) and not self._shared_ok and not self._specs
        if rebuild:
            # Replace a foreign layout in one transaction: no packet sees neither.
            self._reset_memory()
            self._foreign = self._our_tables()
        programmed = dict(self._specs)
        head: list[dict[str, Any]] = []
        if self._foreign:
            head += R.render_delete_tables(self._foreign)
        if not self._shared_ok:
            head += R.render_shared_skeleton()
        for shard in range(R.SHARDS):
            if shard not in self._shards_ok:
                head += R.render_shard_skeleton(shard)
        repairs, repaired = self._repair_cmds(want)
        programmed.update(repaired)
        plan = self._diff(want, programmed)
        el = R.Elements()
        for key, spec in repaired.items():
            el.counters(key, self._counters.get(key, _NO_COUNTERS), (True, R.backend_keys(spec)))
        if self._counters_dirty:
            for key, have in self._counters.items():
                if key not in want and key not in programmed:
                    el.counters(key, have, _NO_COUNTERS)
        masq_add, masq_del, delta = self._masq_diff(plan)
        for spec in repaired.values():
            masq_add |= _backend_ips(spec) - self._masq
            masq_del -= _backend_ips(spec)
        extra = el.head() + el.after_chains() + el.tail()
        if plan.empty and not head and not repairs and not extra and not masq_add and not masq_del:
            self._masq_dirty = self._counters_dirty = False
            return ReconcileResult(changed=0, errors=errors)

        cmds = (
            head
            + R.render_masq_diff(set(), masq_add)
            + repairs
            + extra
            + R.render_plan(plan, self._counters)
            + R.render_masq_diff(masq_del, set())
        )
        try:
            self._write(cmds)
        except NftablesError as exc:
            if rebuild:
                for key in want:
                    errors[key] = f"layout replacement failed: {exc}"
                return ReconcileResult(changed=0, errors=errors)
            log.warning("event=transaction_failed error=%r; retrying frontend by frontend", exc)
            return self._reconcile_one_by_one(plan, want, repaired, head, errors)

        self._after_skeleton()
        self._after_repairs(repaired)
        self._commit(plan, delta)
        self._masq = (self._masq | masq_add) - masq_del
        self._masq_dirty = self._counters_dirty = False
        self._flush_udp_conntrack(plan)
        return ReconcileResult(changed=plan.changed + len(repaired), errors=errors)

    def _repair_cmds(
        self, want: dict[Key, R.FrontendSpec]
    ) -> tuple[list[dict[str, Any]], dict[Key, R.FrontendSpec]]:
        cmds: list[dict[str, Any]] = []
        for table, map_name, stray in sorted(self._stray):
            cmds += R.render_stray(table, map_name, stray)
        repaired: dict[Key, R.FrontendSpec] = {}
        for name, key in sorted(self._broken.items(), key=lambda kv: kv[0]):
            table = self._chain_tables.get(name, "")
            if key is None or table != R.table_of(key) or key in repaired:
                cmds += R.render_orphan(name, table)
                continue
            spec = want.get(key)
            cmds += R.render_repair(key, spec, self._elements, table)
            if spec is not None:
                repaired[key] = spec
        return cmds, repaired

    def _after_skeleton(self) -> None:
        self._foreign.clear()
        self._shared_ok = True
        self._shards_ok = set(range(R.SHARDS))

    def _after_repairs(self, repaired: dict[Key, R.FrontendSpec]) -> None:
        for key, spec in repaired.items():
            self._specs[key] = spec
            self._ipref.update(b.ip for b in spec.backends)
            self._counters[key] = (True, R.backend_keys(spec))
        if self._counters_dirty:
            for key in [k for k in self._counters if k not in self._specs]:
                del self._counters[key]
        self._broken.clear()
        self._chain_tables.clear()
        self._elements.clear()
        self._stray.clear()

    def _commit(self, plan: R.Plan, delta: Counter[str]) -> None:
        """Memory follows the kernel only after a successful transaction."""
        for spec in plan.added:
            self._specs[spec.key] = spec
            self._counters[spec.key] = (True, R.backend_keys(spec))
        for _old, new in plan.updated:
            self._specs[new.key] = new
            self._counters[new.key] = (True, R.backend_keys(new))
        for spec in plan.removed:
            self._specs.pop(spec.key, None)
            self._counters.pop(spec.key, None)
        self._ipref.update(delta)
        for ip in [ip for ip, d in delta.items() if d and self._ipref[ip] <= 0]:
            del self._ipref[ip]

    def _reconcile_one_by_one(
        self,
        plan: R.Plan,
        want: dict[Key, R.FrontendSpec],
        repaired: dict[Key, R.FrontendSpec],
        head: list[dict[str, Any]],
        errors: dict[Key, str],
    ) -> ReconcileResult:
        """Cilium's rule: one broken frontend is reported, the others still land."""
        changed = 0
        try:
            repairs, repaired = self._repair_cmds(want)
            el = R.Elements()
            for key, spec in repaired.items():
                have = self._counters.get(key, _NO_COUNTERS)
                el.counters(key, have, (True, R.backend_keys(spec)))
            ips: set[str] = set()
            for spec in repaired.values():
                ips |= _backend_ips(spec)
            base = head + R.render_masq_diff(set(), ips - self._masq) + repairs
            base += el.head() + el.after_chains() + el.tail()
            if base:
                self._write(base)
            self._after_skeleton()
            self._after_repairs(repaired)
            self._masq |= ips
        except NftablesError as exc:
            for key in want:
                errors[key] = f"table setup failed: {exc}"
            return ReconcileResult(changed=0, errors=errors)
        singles: list[tuple[Key, R.Plan]] = (
            [(s.key, R.Plan((s,), (), ())) for s in plan.added]
            + [(n.key, R.Plan((), ((o, n),), ())) for o, n in plan.updated]
            + [(s.key, R.Plan((), (), (s,))) for s in plan.removed]
        )
        for key, single in singles:
            # Masquerade additions go with the frontend; removals wait for the end
            # (the union of old and new addresses keeps every rule valid).
            add, _delete, delta = self._masq_diff(single)
            try:
                self._write(R.render_masq_diff(set(), add) + R.render_plan(single, self._counters))
            except NftablesError as exc:
                errors[key] = str(exc)
                continue
            self._masq |= add
            self._commit(single, delta)
            self._flush_udp_conntrack(single)
            changed += 1
        try:
            stale = {ip for ip in self._masq if self._ipref.get(ip, 0) <= 0}
            if stale:
                self._write(R.render_masq_diff(stale, set()))
                self._masq -= stale
        except NftablesError as exc:
            log.warning("event=masq_shrink_failed error=%r", exc)
        return ReconcileResult(changed=changed + len(repaired), errors=errors)

    def read_counters(self) -> list[FrontendCounters]:
        """Counters of every frontend found in the kernel: one listing of the shared
        table (its counter sets), no rule listing.  Reads closer together than
        COUNTER_TTL share one kernel read (a write invalidates it)."""
        now = time.monotonic()
        if self._counter_cache is not None and now - self._counter_cache[0] < COUNTER_TTL:
            return list(self._counter_cache[1])
        # Biggest first: the backend set has one element per backend.
        names = ("bcnt4", "fcnt4", "bcnt6", "fcnt6")
        cmds = [{"list": {"set": {"family": R.FAMILY, "table": R.TABLE, "name": n}}} for n in names]
        parsed = R.ParsedTable()
        try:
            with gc_paused():
                for cmd in cmds:
                    R.parse_sets(self._run([cmd]), parsed)
        except NftablesError:
            return []
        out = []
        for key in sorted(parsed.frontend_counts.keys() | parsed.backend_counts.keys()):
            packets, nbytes = parsed.frontend_counts.get(key, (0, 0))
            backends = parsed.backend_counts.get(key, {})
            out.append(
                FrontendCounters(
                    vip=key[0],
                    protocol=key[1],
                    port=key[2],
                    packets=packets,
                    bytes=nbytes,
                    backend_connections={b: pb[0] for b, pb in sorted(backends.items())},
                )
            )
        self._counter_cache = (time.monotonic(), out)
        return list(out)

    def programmed(self) -> list[ProgrammedFrontend]:
        """Read back from the kernel: every shard's frontend chains."""
        tables = self._our_tables() & set(R.SHARD_TABLES)
        with gc_paused():
            parsed = self._read(tables)
        return [
            ProgrammedFrontend(
                vip=s.vip,
                protocol=s.protocol,
                port=s.port,
                backends=tuple((b.ip, b.port, b.weight) for b in s.backends),
                reject_weight=s.reject_weight,
            )
            for _k, s in sorted(parsed.specs.items())
        ]

    def cleanup(self) -> None:
        """Remove every table this dataplane owns (`inet gatewaylb`, `inet gatewaylb-*`),
        in one transaction."""
        tables = self._our_tables()
        if tables:
            self._write(R.render_delete_tables(tables))
        self._reset_memory()
        self._normalised.clear()
        self._counter_cache = None

    # -- UDP conntrack ------------------------------------------------------------------

    def _flush_udp_conntrack(self, plan: R.Plan) -> None:
        """UDP has no end of flow: without this, a client keeps sending to a
        removed endpoint until its conntrack entry times out.  Weight 0 keeps
        its entries (a draining endpoint still serves its flows)."""
        gone: list[tuple[R.FrontendSpec, tuple[str, int]]] = []
        for old, new in plan.updated:
            gone += [(old, b) for b in sorted(R.removed_backends(old, new))]
        for old in plan.removed:
            gone += [(old, b) for b in sorted(R.removed_backends(old, None))]
        for spec, (ip, port) in gone:
            if spec.protocol == UDP:
                delete_udp_conntrack(spec.vip, spec.port, ip, port)


def delete_udp_conntrack(vip: str, vport: int, backend_ip: str, backend_port: int) -> int:
    """Delete the UDP conntrack entries VIP:vport -> backend; returns how many.

    Uses Debian's `conntrack` tool with an argument list (it runs in the calling
    thread's network namespace, since a child inherits it).
    """
    tool = shutil.which("conntrack") or "/usr/sbin/conntrack"
    family = "ipv6" if R.is_ipv6(vip) else "ipv4"
    argv = [
        tool,
        "-D",
        "-f",
        family,
        "-p",
        "udp",
        "--orig-dst",
        vip,
        "--orig-port-dst",
        str(vport),
        "--reply-src",
        backend_ip,
        "--reply-port-src",
        str(backend_port),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning(
            "event=conntrack_delete_failed backend=%s:%d error=%r", backend_ip, backend_port, exc
        )
        return 0
    # "N flow entries have been deleted." on stderr; rc 1 when none matched.
    for word in proc.stderr.split():
        if word.isdigit():
            return int(word)
    return 0
