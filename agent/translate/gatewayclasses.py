"""GatewayClass acceptance: a class's status and its GatewayLBConfig.

Owns the Accepted and SupportedVersion conditions of our GatewayClasses and
the check of spec.parametersRef.  It must never look at Gateways: whether a
Gateway's class is accepted reaches evaluate.py as a plain bool.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.model.config import CONFIG_GROUP, CONFIG_KIND, GatewayLBConfig
from agent.model.gateway import GatewayClass, ParametersReference
from agent.model.snapshot import InvalidObject
from agent.translate.status import (
    ACCEPTED,
    R_ACCEPTED,
    R_INVALID,
    R_INVALID_PARAMETERS,
    R_SUPPORTED_VERSION,
    SUPPORTED_VERSION,
    Condition,
    GatewayClassStatus,
)

GATEWAY_API_VERSION = "v1.6.1"


def gateway_class_status(
    gc: GatewayClass,
    supported_features: tuple[str, ...],
    configs: Mapping[str, GatewayLBConfig | InvalidObject],
) -> tuple[GatewayClassStatus, GatewayLBConfig | None, bool]:
    """The class's status, its GatewayLBConfig (if it names one) and whether
    it is accepted."""
    gen = gc.meta.generation
    config: GatewayLBConfig | None = None
    problem = None
    if gc.parameters_ref is not None:
        config, problem = _class_config(gc.parameters_ref, configs)
    if problem is not None:
        accepted = Condition(ACCEPTED, False, R_INVALID_PARAMETERS, problem, gen)
    else:
        accepted = Condition(ACCEPTED, True, R_ACCEPTED, "GatewayClass is accepted", gen)
    version = Condition(
        SUPPORTED_VERSION,
        True,
        R_SUPPORTED_VERSION,
        f"Gateway API {GATEWAY_API_VERSION} is supported",
        gen,
    )
    status = GatewayClassStatus((accepted, version), supported_features)
    return status, config, accepted.status


def _class_config(
    ref: ParametersReference, configs: Mapping[str, GatewayLBConfig | InvalidObject]
) -> tuple[GatewayLBConfig | None, str | None]:
    what = f"parametersRef {ref.kind}.{ref.group or 'core'} {ref.name}"
    if (ref.group, ref.kind) != (CONFIG_GROUP, CONFIG_KIND):
        return None, (
            f"{what}: this controller takes parameters only of kind {CONFIG_KIND}.{CONFIG_GROUP}"
        )
    found = configs.get(ref.name)
    if found is None:
        return None, f"{what}: not found"
    if isinstance(found, InvalidObject):
        return None, f"{what} is invalid: {found.error}"
    return found, None


def invalid_class_status(inv: InvalidObject) -> GatewayClassStatus:
    gen = inv.meta.generation
    return GatewayClassStatus(
        (Condition(ACCEPTED, False, R_INVALID, f"invalid GatewayClass: {inv.error}", gen),), ()
    )
