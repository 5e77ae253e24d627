"""The L7 reconciler the agent loop drives: HAProxy serving the L7 listeners.

HAProxy binds VIP:port, so the VIPs must be local addresses first: the agent
loop adds them (`agent.dataplane.vips.NodeVIPs.grow`) before this runs
and removes stale ones after (`settle`), once no configuration binds them.
A node without L7 listeners never starts HAProxy at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.proxy.render import Problem
from agent.proxy.worker import ApplyResult, ProxyWorker
from agent.state import DesiredState

log = logging.getLogger(__name__)


@dataclass
class ProxyReconciler:
    worker: ProxyWorker
    name: str = "proxy"

    def reconcile(self, desired: DesiredState) -> ApplyResult:
        if not desired.l7 and not self.worker.running():
            return ApplyResult(True, False)
        result = self.worker.apply(desired.l7)
        for problem in result.problems:
            log.warning(
                "event=l7_problem route=%r rule=%s status_reason=%s reason=%r",
                problem.route,
                problem.rule,
                problem.status_reason or "-",
                problem.reason,
            )
        if result.error:
            log.error("event=proxy_apply_failed error=%r", result.error)
        return result

    def ensure_running(self) -> bool:
        return self.worker.ensure_running() if self.worker.config_path.exists() else True

    def cleanup(self) -> None:
        self.worker.stop(remove_files=True)


__all__ = ["Problem", "ProxyReconciler"]
