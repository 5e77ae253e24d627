"""The L7 reconciler the agent loop drives: HAProxy serving the L7 listeners.

HAProxy binds VIP:port, so the VIPs must be local addresses first: the agent
loop runs `NodeVIPs.adding` (agent/dataplane/vips.py) before this stage and
`NodeVIPs.removing` after it, once no configuration binds the stale ones.
A node without L7 listeners never starts HAProxy at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.proxy.render import Problem
from agent.proxy.worker import ProxyWorker
from agent.reconcile import NOT_SERVED_BY_PROXY, Failure, Outcome
from agent.state import DesiredState

log = logging.getLogger(__name__)


@dataclass
class ProxyReconciler:
    worker: ProxyWorker
    name: str = "proxy"

    def reconcile(self, desired: DesiredState) -> Outcome:
        if not desired.l7 and not self.worker.running():
            return Outcome()
        result = self.worker.apply(desired.l7)
        for problem in result.problems:
            log.warning(
                "event=l7_problem object=%r rule=%s status_reason=%s reason=%r",
                str(problem.subject),
                problem.rule,
                problem.status_reason or "-",
                problem.reason,
            )
        if result.error:
            log.error("event=proxy_apply_failed error=%r", result.error)
        return Outcome(
            changed=int(result.changed),
            failures=problem_failures(result.problems),
            converged=result.ok,
            retry_after=result.retry_after,
        )

    def ensure_running(self) -> bool:
        return self.worker.ensure_running() if self.worker.config_path.exists() else True

    def cleanup(self) -> None:
        self.worker.stop(remove_files=True)


def problem_failures(problems: tuple[Problem, ...]) -> tuple[Failure, ...]:
    """What the proxy left out, as failures told on the route or listener and
    folded into its status."""
    return tuple(
        Failure(
            p.subject,
            NOT_SERVED_BY_PROXY,
            p.reason,
            rule=p.rule,
            in_status=True,
            status_reason=p.status_reason,
        )
        for p in problems
    )


__all__ = ["Problem", "ProxyReconciler", "problem_failures"]
