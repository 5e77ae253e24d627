"""A Gateway's addresses: which of spec.addresses are usable, and which
addresses the pools give to the Gateways that want some.

Owns the checks of spec.addresses (type, syntax, zone, addresses no VIP may
be, pools, real hosts' addresses) and the hand-over to ipam.py.  It writes
only a GatewayState's vips, wanted and not_programmed; it must never judge
listeners or ports (conflicts.py does, once the addresses are known).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.model.config import CONFIG_KIND, AddressPool
from agent.model.core import EndpointSlice
from agent.model.gateway import Gateway
from agent.model.meta import Key, age_order
from agent.translate.gateways import GatewayState
from agent.translate.ipam import AddressRequest, assign
from agent.translate.status import (
    R_ADDRESS_NOT_ASSIGNED,
    R_ADDRESS_NOT_USABLE,
    R_UNSUPPORTED_ADDRESS,
)


def address_problem(gateway: Gateway) -> tuple[str, str] | None:
    for i, addr in enumerate(gateway.addresses):
        if addr.type != "IPAddress":
            return (
                R_UNSUPPORTED_ADDRESS,
                f"spec.addresses[{i}]: address type {addr.type!r} is not supported "
                "(only IPAddress)",
            )
        if addr.value is None:
            continue
        try:
            ip = ipaddress.ip_address(addr.value)
        except ValueError:
            return (
                R_UNSUPPORTED_ADDRESS,
                f"spec.addresses[{i}]: {addr.value[:64]!r} is not an IP address",
            )
        if getattr(ip, "scope_id", None):
            return (
                R_UNSUPPORTED_ADDRESS,
                f"spec.addresses[{i}]: {addr.value[:64]!r}: an address with a zone cannot be "
                "a virtual IP",
            )
    return None


@dataclass(frozen=True, slots=True)
class HostAddresses:
    """Addresses of real hosts, which a VIP must not take over: the node would
    then intercept traffic meant for that host (MetalLB and Cilium's LB-IPAM
    refuse them too).  `node` are this node's own addresses, which only the
    agent can read; endpoint addresses come from the snapshot.  `allowed`
    lifts the rule for users who need it (`run --allow-host-addresses`)."""

    node: frozenset[str] = frozenset()
    allowed: bool = False


def host_addresses(hosts: HostAddresses, slices: Iterable[EndpointSlice]) -> dict[str, str]:
    """address -> what it is, for the messages; empty when host addresses are allowed."""
    if hosts.allowed:
        return {}
    out: dict[str, str] = {}
    for es in slices:
        for ep in es.endpoints:
            for address in ep.addresses:
                out.setdefault(
                    _canonical(address),
                    f"an endpoint address (EndpointSlice {es.meta.namespace}/{es.meta.name})",
                )
    for address in hosts.node:
        out[_canonical(address)] = "an address of this node"
    out.pop("", None)
    return out


def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return ""


def usable_vips(
    gateway: Gateway, pools: tuple[AddressPool, ...] | None, hosts: Mapping[str, str]
) -> GatewayState:
    """The addresses the Gateway names, and how many it leaves to the pools."""
    state = GatewayState(gateway, [])
    vips: list[str] = []
    for i, addr in enumerate(gateway.addresses):
        if addr.value is None:
            state.wanted += 1
            continue
        ip = ipaddress.ip_address(addr.value)
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback or str(ip) == "255.255.255.255":
            state.not_programmed = (
                R_ADDRESS_NOT_USABLE,
                f"spec.addresses[{i}]: {ip} cannot be used as a virtual IP",
            )
            return state
        if str(ip) in hosts:
            state.not_programmed = (
                R_ADDRESS_NOT_USABLE,
                f"spec.addresses[{i}]: {ip} is {hosts[str(ip)]}: a VIP must not be a real "
                "host's address, whose traffic this node would intercept "
                "(`gatewaylb run --allow-host-addresses` allows it)",
            )
            return state
        if pools and not any(p.contains(ip) for p in pools):
            names = ", ".join(p.name for p in pools)
            state.not_programmed = (
                R_ADDRESS_NOT_USABLE,
                f"spec.addresses[{i}]: {ip} is in none of the address pools of "
                f"GatewayClass {gateway.class_name} ({names})",
            )
            return state
        if str(ip) not in vips:
            vips.append(str(ip))
    if not gateway.addresses:
        state.wanted = 1
    state.vips = tuple(vips)
    if state.wanted and not pools:
        state.wanted = 0
        state.not_programmed = (
            R_ADDRESS_NOT_ASSIGNED,
            "spec.addresses asks for an address to be assigned and GatewayClass "
            f"{gateway.class_name} has no address pool (spec.parametersRef to a "
            f"{CONFIG_KIND} with addressPools)",
        )
    return state


def assign_addresses(
    states: Iterable[GatewayState],
    pools_of: Mapping[Key, tuple[AddressPool, ...]],
    prior: Mapping[Key, tuple[str, ...]],
    hosts: Iterable[str] = (),
) -> None:
    """Give Gateways that want addresses some from their pools (see ipam.py),
    never a host's address."""
    ordered = sorted(states, key=lambda s: age_order(s.gateway.meta))
    claimed = [v for s in ordered if s.accepted for v in s.vips]
    claimed += hosts
    requests = []
    for state in ordered:
        if not state.wanted or not state.accepted or state.not_programmed is not None:
            continue
        auto = tuple(p for p in pools_of.get(state.key, ()) if p.auto_assign)
        recorded = (*state.gateway.status_addresses, *prior.get(state.key, ()))
        requests.append(AddressRequest(state.key, auto, state.wanted, recorded))
    assigned = assign(requests, claimed)
    for state in ordered:
        if state.key not in assigned:
            continue
        got = assigned[state.key]
        if got is None:
            names = ", ".join(p.name for p in pools_of.get(state.key, ()) if p.auto_assign)
            state.not_programmed = (
                R_ADDRESS_NOT_ASSIGNED,
                f"no free address in the address pools of GatewayClass "
                f"{state.gateway.class_name} ({names or 'none with autoAssign'})",
            )
            continue
        state.vips = tuple(dict.fromkeys((*state.vips, *got)))
