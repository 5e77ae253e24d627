"""The nftables dataplane: converges `table inet gatewaylb` to the L4 frontends.

Owns that one table, and the UDP conntrack entries of endpoints it removes.  It
never touches another table, the ruleset as a whole, interfaces or routes.  It
works in the network namespace of the thread that constructs it (libnftables
opens its netlink socket there): the agent runs in the node's namespace, tests
construct it in a thread switched into a lab namespace.

The rendering is pure and lives in `nft_rules`; this module keeps what is
programmed, asks for the diff and applies it as ONE libnftables JSON transaction
holding only the changed frontends.  An unchanged state issues no transaction.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

import nftables

from agent.dataplane import nft_rules as R
from agent.dataplane.base import (
    FrontendCounters,
    ProgrammedFrontend,
    ReconcileResult,
)
from agent.state import UDP, DesiredState, L4Frontend

log = logging.getLogger(__name__)

Key = tuple[str, str, int]
_TABLE_REF = {"family": R.FAMILY, "name": R.TABLE}


class NftablesError(RuntimeError):
    pass


class NftablesDataplane:
    """Dataplane over libnftables; adopts an existing table at construction."""

    name = "nftables"

    def __init__(self, interfaces: tuple[str, ...] = ()) -> None:
        # Accepted for the common dataplane signature; the table's base chains
        # hook every interface of the namespace, so there is nothing to attach.
        self.interfaces = interfaces
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        # Transactions written, for tests and logs ("a no-op issues none").
        self.transactions = 0
        self._specs: dict[Key, R.FrontendSpec] = {}
        self._masq: set[str] = set()
        self._skeleton_ok = False
        self._broken: dict[str, Key | None] = {}
        self._elements: set[tuple[str, Key]] = set()
        # Backend new-flow counts last seen, carried over a chain rewrite.
        self._last_counts: dict[Key, dict[tuple[str, int], tuple[int, int]]] = {}
        # Normalising is pure but not free (~25 us a frontend): reuse the spec
        # of a frontend equal to the one seen last time.
        self._normalised: dict[Key, tuple[L4Frontend, R.FrontendSpec]] = {}
        self._adopt()

    # -- kernel I/O ---------------------------------------------------------------

    def _run(self, cmds: list[dict[str, Any]]) -> Any:
        rc, output, error = self._nft.json_cmd({"nftables": cmds})
        if rc != 0:
            raise NftablesError(str(error).strip() or f"libnftables rc={rc}")
        return output

    def _write(self, cmds: list[dict[str, Any]]) -> None:
        self.transactions += 1
        self._run(cmds)

    def _list(self) -> R.ParsedTable | None:
        if not self._table_exists():
            return None
        out = self._run([{"list": {"table": _TABLE_REF}}])
        return R.parse_table(out)

    def _table_exists(self) -> bool:
        # `list tables` needs only the table cache, unlike a failing `list table`.
        out = self._run([{"list": {"tables": {}}}])
        return any(
            t.get("table", {}).get("family") == R.FAMILY and t["table"].get("name") == R.TABLE
            for t in out.get("nftables", [])
        )

    def _adopt(self) -> None:
        parsed = self._list()
        if parsed is None:
            return
        self._specs = dict(parsed.specs)
        self._masq = set(parsed.masq)
        self._skeleton_ok = parsed.skeleton_ok
        self._broken = dict(parsed.broken)
        self._elements = set(parsed.elements)
        self._last_counts = {k: dict(v) for k, v in parsed.backend_counts.items()}
        log.info(
            "event=adopt table=%s frontends=%d broken=%d skeleton_ok=%s",
            R.TABLE,
            len(self._specs),
            len(self._broken),
            self._skeleton_ok,
        )

    # -- Dataplane ------------------------------------------------------------------

    def reconcile(self, desired: DesiredState) -> ReconcileResult:
        errors: dict[Key, str] = {}
        want: dict[Key, R.FrontendSpec] = {}
        normalised: dict[Key, tuple[L4Frontend, R.FrontendSpec]] = {}
        for fe in desired.l4:
            key = fe.key
            if key in want or key in errors:
                errors[key] = "duplicate frontend"
                want.pop(key, None)
                continue
            cached = self._normalised.get(key)
            if cached is not None and cached[0] == fe:
                want[key] = cached[1]
                normalised[key] = cached
                continue
            try:
                want[key] = R.normalise(fe)
                normalised[key] = (fe, want[key])
            except R.RenderError as exc:
                errors[key] = str(exc)
        self._normalised = normalised
        # A frontend that cannot be rendered keeps what it had: refusing to
        # touch it is safer than tearing down a working chain on a bad input.
        for key in errors:
            if key in self._specs:
                want[key] = self._specs[key]

        plan = R.plan(self._specs, want)
        masq = R.masq_ips(want.values())
        repairs = self._repair_cmds(want)
        head: list[dict[str, Any]] = [] if self._skeleton_ok else R.render_skeleton()
        if plan.empty and not repairs and not head and masq == self._masq:
            return ReconcileResult(changed=0, errors=errors)

        counts = {new.key: self._last_counts.get(new.key, {}) for _old, new in plan.updated}
        # Set additions before the rules that need them, removals after.
        masq_cmds = R.render_masq_diff(self._masq, masq)
        cmds = head + repairs + R.render_plan(plan, counts) + masq_cmds
        try:
            self._write(cmds)
        except NftablesError as exc:
            log.warning("event=transaction_failed error=%r; retrying frontend by frontend", exc)
            return self._reconcile_one_by_one(plan, want, masq, head, errors)

        repaired = len({k for k in self._broken.values() if k is not None})
        self._commit(plan, want, masq)
        self._flush_udp_conntrack(plan)
        return ReconcileResult(changed=plan.changed + repaired, errors=errors)

    def _repair_cmds(self, want: Mapping[Key, R.FrontendSpec]) -> list[dict[str, Any]]:
        cmds: list[dict[str, Any]] = []
        seen: set[Key] = set()
        for name, key in sorted(self._broken.items(), key=lambda kv: kv[0]):
            if key is None:
                cmds += R.render_orphan(name)
            elif key not in seen:
                seen.add(key)
                cmds += R.render_repair(key, want.get(key), self._elements)
        return cmds

    def _commit(self, plan: R.Plan, want: Mapping[Key, R.FrontendSpec], masq: set[str]) -> None:
        """Memory follows the kernel only after a successful transaction."""
        for key in [k for k in self._broken.values() if k is not None]:
            if key in want:
                self._specs[key] = want[key]
        self._broken.clear()
        self._elements.clear()  # only needed for repairs
        self._skeleton_ok = True
        for spec in plan.added:
            self._specs[spec.key] = spec
        for _old, new in plan.updated:
            self._specs[new.key] = new
        for spec in plan.removed:
            self._specs.pop(spec.key, None)
            self._last_counts.pop(spec.key, None)
        self._masq = set(masq)

    def _reconcile_one_by_one(
        self,
        plan: R.Plan,
        want: Mapping[Key, R.FrontendSpec],
        masq: set[str],
        head: list[dict[str, Any]],
        errors: dict[Key, str],
    ) -> ReconcileResult:
        """Cilium's rule: one broken frontend is reported, the others still land."""
        changed = 0
        # The union of old and new backend addresses keeps every rule valid.
        union = masq | self._masq
        try:
            base = head + self._repair_cmds(want) + R.render_masq_diff(self._masq, union)
            if base:
                self._write(base)
            self._commit(R.Plan((), (), ()), want, union)
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
            counts = {key: self._last_counts.get(key, {})}
            try:
                self._write(R.render_plan(single, counts))
            except NftablesError as exc:
                errors[key] = str(exc)
                continue
            self._commit(single, want, union)
            self._flush_udp_conntrack(single)
            changed += 1
        try:
            final = R.masq_ips(self._specs.values())
            if final != self._masq:
                self._write(R.render_masq_diff(self._masq, final))
                self._masq = final
        except NftablesError as exc:
            log.warning("event=masq_shrink_failed error=%r", exc)
        return ReconcileResult(changed=changed, errors=errors)

    def read_counters(self) -> list[FrontendCounters]:
        parsed = self._list()
        if parsed is None:
            return []
        out = []
        for key, spec in sorted(parsed.specs.items()):
            packets, nbytes = parsed.frontend_counts.get(key, (0, 0))
            backends = parsed.backend_counts.get(key, {})
            self._last_counts[key] = dict(backends)
            out.append(
                FrontendCounters(
                    vip=spec.vip,
                    protocol=spec.protocol,
                    port=spec.port,
                    packets=packets,
                    bytes=nbytes,
                    backend_connections={b: pb[0] for b, pb in sorted(backends.items())},
                )
            )
        return out

    def programmed(self) -> list[ProgrammedFrontend]:
        parsed = self._list()
        if parsed is None:
            return []
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
        if self._table_exists():
            self._write([{"delete": {"table": _TABLE_REF}}])
        self._specs.clear()
        self._masq.clear()
        self._broken.clear()
        self._elements.clear()
        self._last_counts.clear()
        self._skeleton_ok = False

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
