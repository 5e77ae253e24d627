"""What the agent says about refused input: each problem once, when it appears.

The daemon hands every sync's source problems and rejections here; a line is
logged only when a problem appears or changes (and one info line when an
object is accepted again), at most LOG_LIMIT new ones a sync, so thousands of
junk documents never flood the log.  Owns only what was last said; never
reads the source or writes status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agent.metrics import AgentMetrics
from agent.model.snapshot import Snapshot
from agent.translate.rejections import Rejection, foreign_classes, rejected_counts, rejections
from agent.translate.status import StatusReport

log = logging.getLogger("gatewaylb.agent")

# New problems said per sync: thousands of junk documents must not flood the log.
LOG_LIMIT = 100


class SaidOnce:
    def __init__(self, metrics: AgentMetrics, controller_name: str) -> None:
        self._metrics = metrics
        self._controller_name = controller_name
        self._rejections: frozenset[Rejection] = frozenset()
        self._foreign_classes: frozenset[str] = frozenset()
        self._source_problems: frozenset[str] = frozenset()

    def rejected_objects(self) -> int:
        """Objects refused in whole or in part at the last report."""
        return len({(r.kind, r.namespace, r.name) for r in self._rejections})

    def source_problems(self, errors: Sequence[str], warnings: Sequence[str]) -> None:
        """Files or documents that cannot be used, and unknown kinds and
        fields: each said once while it lasts."""
        current = frozenset(errors) | frozenset(warnings)
        new = [("source_problem", m) for m in sorted(frozenset(errors) - self._source_problems)]
        new += [
            ("manifest_warning", m) for m in sorted(frozenset(warnings) - self._source_problems)
        ]
        for event, message in new[:LOG_LIMIT]:
            log.warning("event=%s message=%r", event, message)
        _said_more(len(new), "source problems and manifest warnings")
        self._source_problems = current

    def rejections(self, snapshot: Snapshot, status: StatusReport) -> None:
        """One warning line per refused object, logged when it appears or
        changes; one info line when it is accepted again; the counts by kind
        and reason in `gatewaylb_rejected_objects`."""
        current = frozenset(rejections(snapshot, status))
        new = sorted(current - self._rejections, key=_rejection_order)
        _said_more(len(new), "rejected objects")
        for r in new[:LOG_LIMIT]:
            log.warning(
                "event=object_rejected kind=%s object=%r source=%r where=%r condition=%s "
                "reason=%s message=%r",
                r.kind,
                r.object,
                r.source or "-",
                r.where,
                r.condition,
                r.reason,
                r.message,
            )
        still = {(r.kind, r.namespace, r.name) for r in current}
        cleared = {(r.kind, r.namespace, r.name) for r in self._rejections} - still
        for kind, namespace, name in sorted(cleared)[:LOG_LIMIT]:
            log.info(
                "event=object_accepted kind=%s object=%r",
                kind,
                f"{namespace}/{name}" if namespace else name,
            )
        self._rejections = current
        self._metrics.set_rejected(rejected_counts(tuple(current)))
        foreign = frozenset(foreign_classes(snapshot, self._controller_name))
        for line in sorted(foreign - self._foreign_classes):
            log.info("event=gatewayclass_not_ours message=%r", line)
        self._foreign_classes = foreign


def _said_more(count: int, what: str) -> None:
    if count > LOG_LIMIT:
        log.warning(
            "event=log_truncated what=%r shown=%d more=%d hint=%r",
            what,
            LOG_LIMIT,
            count - LOG_LIMIT,
            "see the status (file or API) or `gatewaylb translate --manifests DIR`",
        )


def _rejection_order(r: Rejection) -> tuple[str, str, str, str]:
    return (r.kind, r.namespace, r.name, r.where)
