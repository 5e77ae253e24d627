"""The announcement reconciler: hands the desired VIPs to the L2 or BGP announcer.

The announcers own their protocol (ARP/NDP answers and heartbeats; a gobgpd
child and its routes); this module only picks one by `--announce`, feeds it
the latest DesiredState, re-applies it periodically (an interface that came
up, a BGP speaker that died and must be restarted), and reports what is
announced for /metrics.  Announcement runs after the dataplane has programmed
the VIPs: a VIP is never advertised before this node can serve it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.model.config import CONFIG_GROUP, CONFIG_KIND
from agent.reconcile import ANNOUNCEMENT_PROBLEM, Failure, Outcome
from agent.refs import ObjectRef
from agent.state import DesiredState, L2Settings

if TYPE_CHECKING:
    from agent.announce.bgp.announcer import BGPAnnouncer
    from agent.announce.l2.announcer import L2Announcer

log = logging.getLogger("gatewaylb.announce")

MODES = ("none", "l2", "bgp")


@dataclass(frozen=True, slots=True)
class AnnounceStatus:
    mode: str
    announced: frozenset[str] = frozenset()
    peers: dict[str, str] = field(default_factory=dict)  # BGP peer -> FSM state
    ownership_changes: int = 0  # L2 takeovers and releases by this node
    problems: tuple[str, ...] = ()


class AnnounceReconciler:
    def __init__(self, mode: str, *, node_name: str, run_dir: Path, bgp_api_port: int) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown announce mode {mode!r}")
        self.mode = mode
        self.name = "announce"  # the metrics label
        self._lock = threading.Lock()
        self._desired: DesiredState | None = None
        self._warned_no_bgp = False
        # Imported on use: an agent that announces nothing loads neither.
        self._l2: L2Announcer | None = None
        self._bgp: BGPAnnouncer | None = None
        if mode == "l2":
            from agent.announce.l2.announcer import L2Announcer

            self._l2 = L2Announcer(node_name)
        elif mode == "bgp":
            from agent.announce.bgp.announcer import BGPAnnouncer

            self._bgp = BGPAnnouncer(node_name, run_dir, api_port=bgp_api_port)

    def reconcile(self, desired: DesiredState) -> Outcome:
        """Idempotent; run after the dataplane each sync (a VIP is announced
        once it is served) and again by supervision (`refresh`).  What cannot
        be announced is told on the GatewayLBConfig objects the BGP settings
        come from."""
        self._apply(desired)
        problems = self.problems()
        bgp = desired.announce.bgp
        sources = sorted({p.source for p in bgp.peers if p.source}) if bgp else []
        return Outcome(
            failures=tuple(
                Failure(
                    ObjectRef(CONFIG_KIND, "", name, f"{CONFIG_GROUP}/v1alpha1"),
                    ANNOUNCEMENT_PROBLEM,
                    problem,
                )
                for name in sources
                for problem in problems
            )
        )

    def _apply(self, desired: DesiredState) -> None:
        with self._lock:
            self._desired = desired
            if self._l2 is not None:
                # Without an l2 section every interface on the VIPs' subnets is used.
                settings = desired.announce.l2 or L2Settings(interfaces=())
                self._l2.apply(desired.announcements, settings)
            if self._bgp is not None:
                bgp = desired.announce.bgp
                if bgp is None:
                    if not self._warned_no_bgp:
                        log.warning(
                            "event=bgp_not_configured --announce bgp needs a GatewayLBConfig "
                            "with spec.announce.bgp referenced by a GatewayClass"
                        )
                        self._warned_no_bgp = True
                    return
                self._warned_no_bgp = False
                self._bgp.apply(desired.announcements, bgp)

    def refresh(self) -> None:
        """Re-apply the last desired state (supervision)."""
        with self._lock:
            desired = self._desired
        if desired is not None:
            self._apply(desired)

    def close(self, withdraw: bool = False) -> None:
        """Stop announcing.  withdraw=False leaves the BGP speaker running so a
        restarted agent adopts it and the routers see no change."""
        with self._lock:
            if self._l2 is not None:
                self._l2.close()
            if self._bgp is not None:
                self._bgp.close(withdraw=withdraw)

    def problems(self) -> tuple[str, ...]:
        """What the announcer could not apply (kept in memory: no I/O)."""
        return self._bgp.problems() if self._bgp is not None else ()

    def status(self) -> AnnounceStatus:
        if self._l2 is not None:
            return AnnounceStatus(
                "l2", self._l2.owned(), ownership_changes=self._l2.ownership_changes
            )
        if self._bgp is not None:
            return AnnounceStatus(
                "bgp",
                self._bgp.advertised(),
                peers=self._bgp.peer_states(),
                problems=self._bgp.problems(),
            )
        return AnnounceStatus("none")


def withdraw_all(run_dir: Path, node_name: str, bgp_api_port: int) -> None:
    """`gatewaylb cleanup`: stop a BGP speaker this agent left running."""
    from agent.announce.bgp.announcer import BGPAnnouncer

    BGPAnnouncer(node_name, run_dir, api_port=bgp_api_port).close(withdraw=True)
