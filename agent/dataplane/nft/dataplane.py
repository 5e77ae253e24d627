"""The nftables dataplane: converges the gatewaylb tables to the L4 frontends.

Owns `table inet gatewaylb` (shared: counters, masquerade, refusal) and the shard
tables `inet gatewaylb-NN` holding the frontend chains (see `layout`), the
dataplane's memory of them (`state.NftState`), and the UDP conntrack entries of
endpoints it removes.  It never touches another table, the ruleset as a whole,
interfaces or routes.

It keeps the contract of agent/dataplane/base.py: a reconcile normalises the
desired frontends, asks `plan` for ONE transaction that converges what is
programmed to them (in time proportional to the change, not to the number of
frontends), and hands it to its transport; an unchanged state issues no
transaction.  Memory follows the kernel only after the kernel took a
transaction.  A refused transaction is retried frontend by frontend, so one
bad frontend is reported on its Gateway and never blocks the others.
Constructing it adopts what a previous run left (trusting only chains whose
fingerprints check out) instead of flushing it, so established flows survive
an agent restart.

The transport is a constructor parameter: `KernelNft` (libnftables and the
netlink reader, in the network namespace of the constructing thread) by
default, `fake.FakeNft` in unit tests.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.dataplane.base import FrontendCounters, ProgrammedFrontend
from agent.dataplane.frontends import FrontendError, FrontendSpec, Key, is_ipv6, normalise
from agent.dataplane.nft import layout as L
from agent.dataplane.nft import plan as P
from agent.dataplane.nft.objects import Counts, Table, Transaction
from agent.dataplane.nft.parse import ParsedTable, parse
from agent.dataplane.nft.state import Debris, NftState
from agent.dataplane.nft.transport import KernelNft, NftablesError, Transport
from agent.gcpause import gc_paused
from agent.reconcile import Outcome, frontend_outcome
from agent.state import UDP, DesiredState, L4Frontend

# The name the log lines had before the package split: one logger for the dataplane.
log = logging.getLogger("agent.dataplane.nftables")

# read_counters() is called by every scrape; scrapes closer than this share a read.
COUNTER_TTL = 1.0

# (vip, vip port, backend ip, backend port) -> entries deleted
ForgetUdpFlows = Callable[[str, int, str, int], int]


@dataclass(frozen=True, slots=True)
class _Written:
    changed: int  # frontends written or removed
    errors: dict[Key, str] = field(default_factory=dict)  # frontends that failed


class NftablesDataplane:
    """Dataplane over a `Transport`; adopts existing tables at construction."""

    name = "nftables"

    def __init__(
        self,
        interfaces: tuple[str, ...] = (),
        transport: Transport | None = None,
        forget_udp_flows: ForgetUdpFlows | None = None,
    ) -> None:
        # Accepted for the common dataplane signature; the tables' base chains
        # hook every interface of the namespace, so there is nothing to attach.
        self.interfaces = interfaces
        self.transport: Transport = transport if transport is not None else KernelNft()
        self._forget_udp_flows = forget_udp_flows or delete_udp_conntrack
        # Transactions written, for tests and logs ("a no-op issues none").
        self.transactions = 0
        self._state = NftState()
        # Normalising is pure but not free (~25 us a frontend): reuse the spec
        # of a frontend equal to the one seen last time.
        self._normalised: dict[Key, tuple[L4Frontend, FrontendSpec]] = {}
        self._counter_cache: tuple[float, list[FrontendCounters]] | None = None
        self._adopt()

    # -- the transport -----------------------------------------------------------------

    def _apply(self, tx: Transaction) -> None:
        """ONE transaction: the kernel commits all of it or nothing."""
        self.transactions += 1
        self._counter_cache = None
        self.transport.apply(tx)

    def _our_tables(self) -> set[str]:
        return {n for n in self.transport.tables() if L.is_our_table(n)}

    def _read(self, tables: set[str]) -> ParsedTable:
        """Our tables as one consistent snapshot, parsed."""
        return parse(self.transport.read(tables))

    def _read_counter_sets(self) -> Counts:
        return self.transport.read_counters()

    # -- adoption ------------------------------------------------------------------------

    def _adopt(self) -> None:
        with gc_paused():
            self._adopt_tables()

    def _adopt_tables(self) -> None:
        tables = self._our_tables()
        if not tables:
            return
        layout = set(L.layout_tables())
        parsed = self._read(tables & layout)
        # The shared table says which layout wrote the others.
        if parsed.tags.get(L.TABLE) != L.SKELETON_TAG:
            # An older or differently sharded layout (or a half-deleted one):
            # nothing is adopted, the next reconcile replaces it atomically.
            self._state = NftState(foreign=tables)
            log.info("event=adopt layout=foreign tables=%d", len(tables))
            return
        self._state = NftState.adopted(
            specs=parsed.specs,
            counters=parsed.counter_state(),
            masq=set(parsed.masq),
            current=parsed.current(),
            foreign=tables - layout,
            debris=Debris(
                broken=dict(parsed.broken),
                chain_tables=dict(parsed.chain_tables),
                elements=frozenset(parsed.elements),
                stray=frozenset(parsed.stray_elements),
            ),
        )
        log.info(
            "event=adopt tables=%d frontends=%d broken=%d skeleton_ok=%s",
            len(tables),
            len(parsed.specs),
            len(parsed.broken),
            parsed.skeleton_ok,
        )

    # -- Dataplane -------------------------------------------------------------------------

    def _desired(self, desired: DesiredState) -> tuple[dict[Key, FrontendSpec], dict[Key, str]]:
        errors: dict[Key, str] = {}
        want: dict[Key, FrontendSpec] = {}
        normalised: dict[Key, tuple[L4Frontend, FrontendSpec]] = {}
        cache = self._normalised
        programmed = self._state.specs
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
                spec = normalise(fe)
            except FrontendError as exc:
                errors[key] = str(exc)
                continue
            # Reuse the programmed object when equal: the diff compares identity first.
            old = programmed.get(key)
            if old is not None and old.fingerprint == spec.fingerprint:
                spec = old
            want[key] = spec
            normalised[key] = (fe, spec)
        self._normalised = normalised
        # A frontend that cannot be rendered keeps what it had: refusing to
        # touch it is safer than tearing down a working chain on a bad input.
        for key in errors:
            if key in programmed:
                want[key] = programmed[key]
        return want, errors

    def reconcile(self, desired: DesiredState) -> Outcome:
        # Rendering 10k frontends makes millions of short-lived, acyclic objects.
        with gc_paused():
            written = self._reconcile(desired)
        return frontend_outcome(desired, written.changed, written.errors)

    def _reconcile(self, desired: DesiredState) -> _Written:
        want, errors = self._desired(desired)
        rebuild = self._state.rebuild
        if rebuild:
            # Replace a foreign layout in one transaction: no packet sees neither.
            self._state = NftState(foreign=self._our_tables())
        change = P.change(self._state, want)
        if not change.tx:
            self._state.unverified = False
            return _Written(changed=0, errors=errors)
        try:
            self._apply(change.tx)
        except NftablesError as exc:
            if rebuild:
                for key in want:
                    errors[key] = f"layout replacement failed: {exc}"
                return _Written(changed=0, errors=errors)
            log.warning("event=transaction_failed error=%r; retrying frontend by frontend", exc)
            return self._reconcile_one_by_one(change.plan, want, errors)
        self._took(change)
        self._state.unverified = False
        return _Written(changed=change.plan.changed + len(change.repaired), errors=errors)

    def _took(self, change: P.Change) -> None:
        """The kernel took `change`: memory follows."""
        state = self._state
        if change.settles:
            state.settle(change.repaired, change.forgotten)
        p = change.plan
        if not p.empty:
            state.commit(p.added, p.updated, p.removed, change.ipref_delta)
        state.masq |= change.masq_add  # in place: the retry takes one change a frontend
        state.masq -= change.masq_del
        self._forget_removed_udp_flows(p)

    def _reconcile_one_by_one(
        self, plan: P.Plan, want: dict[Key, FrontendSpec], errors: dict[Key, str]
    ) -> _Written:
        """Cilium's rule: one broken frontend is reported, the others still land."""
        setup = P.setup(self._state, want)
        try:
            if setup.tx:
                self._apply(setup.tx)
        except NftablesError as exc:
            for key in want:
                errors[key] = f"table setup failed: {exc}"
            return _Written(changed=0, errors=errors)
        self._took(setup)
        changed = 0
        for key, single in plan.singles():
            step = P.single(self._state, single)
            try:
                self._apply(step.tx)
            except NftablesError as exc:
                errors[key] = str(exc)
                continue
            self._took(step)
            changed += 1
        shrink = P.shrink(self._state)
        if shrink.tx:
            try:
                self._apply(shrink.tx)
                self._took(shrink)
            except NftablesError as exc:
                log.warning("event=masq_shrink_failed error=%r", exc)
        return _Written(changed=changed + len(setup.repaired), errors=errors)

    def read_counters(self) -> list[FrontendCounters]:
        """Counters of every frontend found in the kernel: the shared table's four
        counter sets (no rule listing; ~0.3 s at 10k frontends x 4 backends over
        netlink).  Reads closer together than COUNTER_TTL share one kernel read
        (a write invalidates it)."""
        now = time.monotonic()
        if self._counter_cache is not None and now - self._counter_cache[0] < COUNTER_TTL:
            return list(self._counter_cache[1])
        try:
            with gc_paused():
                counts = self._read_counter_sets()
        except NftablesError:
            return []
        out = []
        for key in sorted(counts.frontend_counts.keys() | counts.backend_counts.keys()):
            packets, nbytes = counts.frontend_counts.get(key, (0, 0))
            backends = counts.backend_counts.get(key, {})
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
        tables = self._our_tables() & set(L.SHARD_TABLES)
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
            self._apply(Transaction([("delete", Table(n)) for n in sorted(tables)]))
        self._state = NftState()
        self._normalised.clear()
        self._counter_cache = None

    # -- UDP conntrack ------------------------------------------------------------------

    def _forget_removed_udp_flows(self, plan: P.Plan) -> None:
        """UDP has no end of flow: without this, a client keeps sending to a
        removed endpoint until its conntrack entry times out.  Weight 0 keeps
        its entries (a draining endpoint still serves its flows)."""
        gone: list[tuple[FrontendSpec, tuple[str, int]]] = []
        for old, new in plan.updated:
            gone += [(old, b) for b in sorted(L.removed_backends(old, new))]
        for old in plan.removed:
            gone += [(old, b) for b in sorted(L.removed_backends(old, None))]
        for spec, (ip, port) in gone:
            if spec.protocol == UDP:
                self._forget_udp_flows(spec.vip, spec.port, ip, port)


def delete_udp_conntrack(vip: str, vport: int, backend_ip: str, backend_port: int) -> int:
    """Delete the UDP conntrack entries VIP:vport -> backend; returns how many.

    Uses Debian's `conntrack` tool with an argument list (it runs in the calling
    thread's network namespace, since a child inherits it).
    """
    tool = shutil.which("conntrack") or "/usr/sbin/conntrack"
    family = "ipv6" if is_ipv6(vip) else "ipv4"
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
