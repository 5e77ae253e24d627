"""Gateway and listener validation: a GatewayState put together.

Produces, for each Gateway of our classes, the verdict on every listener
(accepted? conflicted? refs resolved? which route kinds?) before any route is
looked at; attach.py then counts routes onto these listeners.  This module
puts a GatewayState together from the parts that own each question
(addresses.py, certificates.py, conflicts.py); it must never look at routes,
and ports between Gateways are settled later (conflicts.claim_ports), once
every Gateway has its addresses.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.model.config import AddressPool
from agent.model.gateway import FrontendTLS, Gateway
from agent.translate.addresses import address_problem, usable_vips
from agent.translate.certificates import (
    resolve_certificates,
    resolve_client_certificate,
    resolve_client_validation,
)
from agent.translate.conflicts import mark_conflicts
from agent.translate.gateways import GatewayState
from agent.translate.index import SnapshotIndex
from agent.translate.listeners import L7_PROTOCOLS, ROUTE_KINDS_BY_PROTOCOL, ListenerState
from agent.translate.status import (
    R_INVALID,
    R_INVALID_PARAMETERS,
    R_INVALID_ROUTE_KINDS,
    R_UNSUPPORTED_PROTOCOL,
)


def _supported_kinds(ls: ListenerState) -> None:
    allowed = ROUTE_KINDS_BY_PROTOCOL[(ls.listener.protocol, ls.tls_mode)]
    requested = ls.listener.allowed_routes.kinds
    if requested is None:
        ls.supported_kinds = allowed
        return
    valid = tuple(dict.fromkeys(k for k in requested if k in allowed))
    invalid = [k for k in requested if k not in allowed]
    ls.supported_kinds = valid
    if invalid:
        names = ", ".join(f"{k.kind}.{k.group}" if k.group else k.kind for k in invalid)
        ls.unresolved = (
            R_INVALID_ROUTE_KINDS,
            f"route kinds not supported on a {ls.listener.protocol} listener: {names}",
        )


def judge_listener(
    ls: ListenerState, index: SnapshotIndex, frontend: FrontendTLS | None = None
) -> None:
    """A listener on its own: its protocol, route kinds and certificates
    (its own, and those it checks clients' against)."""
    protocol = ls.listener.protocol
    if (protocol, ls.tls_mode) not in ROUTE_KINDS_BY_PROTOCOL:
        if protocol in L7_PROTOCOLS:
            ls.not_accepted = (R_UNSUPPORTED_PROTOCOL, f"unsupported TLS mode for {protocol}")
        else:
            ls.not_accepted = (
                R_UNSUPPORTED_PROTOCOL,
                f"protocol {protocol!r} is not supported (supported: HTTP, HTTPS, TLS, TCP, UDP)",
            )
        return
    _supported_kinds(ls)
    if ls.needs_certificates:
        resolve_certificates(ls, index)
        if frontend is not None:
            resolve_client_validation(ls, frontend, index)


def evaluate_gateway(
    gateway: Gateway,
    class_accepted: bool,
    index: SnapshotIndex,
    pools: tuple[AddressPool, ...] | None = None,
    hosts: Mapping[str, str] | None = None,
) -> GatewayState:
    state = GatewayState(
        gateway=gateway,
        listeners=[
            ListenerState(listener=lst, gateway=gateway.meta.key) for lst in gateway.listeners
        ],
    )
    for ls in state.listeners:
        judge_listener(ls, index, gateway.frontend_tls)
    mark_conflicts(state.listeners)

    if not class_accepted:
        state.not_accepted = (
            R_INVALID,
            f"GatewayClass {gateway.class_name} is not accepted",
        )
    elif gateway.infrastructure_parameters_ref is not None:
        ref = gateway.infrastructure_parameters_ref
        state.not_accepted = (
            R_INVALID_PARAMETERS,
            f"spec.infrastructure.parametersRef: {ref.kind}.{ref.group} is not supported",
        )
    else:
        state.not_accepted = address_problem(gateway)
    resolve_client_certificate(state, index)
    if state.not_accepted is None:
        addresses = usable_vips(gateway, pools, hosts or {})
        state.vips, state.wanted = addresses.vips, addresses.wanted
        state.not_programmed = addresses.not_programmed
    return state
