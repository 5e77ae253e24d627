"""Who keeps a port: conflicts between listeners, and their precedence.

Owns the three rules: listeners of one Gateway that share a port
indistinctly all lose (mark_conflicts); a ListenerSet's listener loses to the
earlier listeners that hold its port (listener_conflict); between Gateways,
the older keeps a VIP's port (claim_ports).  It writes only a listener's
conflict / not-accepted verdict; it must never resolve references or
addresses.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.model.meta import Key, age_order
from agent.translate.gateways import GatewayState
from agent.translate.listeners import ListenerState, transport_of
from agent.translate.status import R_HOSTNAME_CONFLICT, R_PORT_UNAVAILABLE, R_PROTOCOL_CONFLICT


def mark_conflicts(listeners: list[ListenerState]) -> None:
    """Listeners that share a port must be distinct; all indistinct ones lose
    (the spec forbids picking a winner)."""
    by_port: dict[tuple[int, str], list[ListenerState]] = {}
    for ls in listeners:
        if ls.not_accepted is None:
            key = (ls.listener.port, transport_of(ls.listener.protocol))
            by_port.setdefault(key, []).append(ls)
    for (port, transport), group in by_port.items():
        if len(group) < 2 or transport == "udp":
            continue  # two UDP listeners on one port are refused by the CRD already
        protocols = {ls.listener.protocol for ls in group}
        message = ""
        if "TCP" in protocols:
            message = f"port {port}: a TCP listener cannot share its port with another listener"
        elif "HTTP" in protocols and len(protocols) > 1:
            message = f"port {port}: HTTP cannot share its port with HTTPS or TLS listeners"
        # TLS listeners in Terminate and Passthrough mode share a port: the
        # proxy tells them apart by the SNI of the ClientHello (TLSRouteModeMixed).
        if message:
            for ls in group:
                ls.conflict = (R_PROTOCOL_CONFLICT, message)
            continue
        by_hostname: dict[str | None, list[ListenerState]] = {}
        for ls in group:
            by_hostname.setdefault(ls.listener.hostname, []).append(ls)
        for hostname, same in by_hostname.items():
            if len(same) > 1:
                shown = hostname or "(no hostname)"
                for ls in same:
                    ls.conflict = (
                        R_HOSTNAME_CONFLICT,
                        f"port {port}: listeners {', '.join(s.listener.name for s in same)} "
                        f"share hostname {shown}",
                    )


def listener_conflict(new: ListenerState, taken: Iterable[ListenerState]) -> tuple[str, str] | None:
    """Why `new` cannot join listeners that already hold their ports (those
    of a Gateway and of the ListenerSets before it): the spec's precedence
    lets the earlier ones keep them."""
    port, transport = new.listener.port, transport_of(new.listener.protocol)
    for old in taken:
        if old.listener.port != port or transport_of(old.listener.protocol) != transport:
            continue
        protocols = {old.listener.protocol, new.listener.protocol}
        where = f"port {port}: {old.owner} listener {old.listener.name} ({old.listener.protocol})"
        if "TCP" in protocols or transport == "udp":
            return (R_PROTOCOL_CONFLICT, f"{where} holds this port whole")
        if "HTTP" in protocols and len(protocols) > 1:
            return (R_PROTOCOL_CONFLICT, f"{where}: HTTP cannot share a port with HTTPS or TLS")
        if old.listener.hostname == new.listener.hostname:
            shown = new.listener.hostname or "(no hostname)"
            return (R_HOSTNAME_CONFLICT, f"{where} has hostname {shown} already")
    return None


def claim_ports(states: list[GatewayState]) -> None:
    """Two Gateways cannot serve the same VIP, transport and port: the older one
    keeps it, the newer one's listener reads PortUnavailable."""
    owners: dict[tuple[str, str, int], tuple[Key, str]] = {}
    for state in sorted(states, key=lambda s: age_order(s.gateway.meta)):
        if not state.accepted or not state.vips:
            continue
        for ls in (*state.listeners, *state.set_listeners):
            if not ls.accepted:
                continue
            transport = transport_of(ls.listener.protocol)
            keys = [(vip, transport, ls.listener.port) for vip in state.vips]
            taken = next((owners[k] for k in keys if k in owners), None)
            if taken is not None and taken[0] != state.key:
                ls.not_accepted = (
                    R_PORT_UNAVAILABLE,
                    f"{transport.upper()} port {ls.listener.port} is already used on this address "
                    f"by Gateway {taken[0]} {taken[1]}",
                )
                continue
            for k in keys:
                owners.setdefault(k, (state.key, ls.label))
