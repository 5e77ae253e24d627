"""The L7 reconciler the agent loop drives: VIP host addresses, then HAProxy.

Order matters: HAProxy can only bind VIP:port once the VIP is a local address,
and an address is removed only after the configuration that bound it is gone.
A node without L7 listeners never starts HAProxy at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.dataplane.addresses import VIPAddresses, l7_vips
from agent.proxy.render import Problem
from agent.proxy.worker import ApplyResult, ProxyWorker
from agent.state import DesiredState

log = logging.getLogger(__name__)


@dataclass
class ProxyReconciler:
    worker: ProxyWorker
    addresses: VIPAddresses
    name: str = "proxy"

    def reconcile(self, desired: DesiredState) -> ApplyResult:
        wanted = l7_vips(desired)
        if not desired.l7 and not self.worker.running():
            self.addresses.reconcile(wanted)
            return ApplyResult(True, False)
        # Add first (binds need them), remove after the new config is in force.
        self.addresses.reconcile(wanted, remove=False)
        result = self.worker.apply(desired.l7)
        if result.ok:
            self.addresses.reconcile(wanted)
        for problem in result.problems:
            log.warning(
                "event=l7_problem route=%r rule=%s reason=%r",
                problem.route,
                problem.rule,
                problem.reason,
            )
        if result.error:
            log.error("event=proxy_apply_failed error=%r", result.error)
        return result

    def ensure_running(self) -> bool:
        return self.worker.ensure_running() if self.worker.config_path.exists() else True

    def cleanup(self) -> None:
        self.worker.stop(remove_files=True)
        self.addresses.cleanup()


__all__ = ["Problem", "ProxyReconciler"]
