"""Hostname matching and intersection between listeners and routes.

A wildcard `*.example.com` matches one or more labels in front of
`example.com` (never `example.com` itself), as the Gateway API defines it.
"""

from __future__ import annotations


def matches(pattern: str, hostname: str) -> bool:
    """Does `pattern` (exact or wildcard) cover the exact `hostname`?"""
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:]) and len(hostname) > len(pattern) - 1
    return pattern == hostname


def intersect(listener: str | None, route: str) -> str | None:
    """The hostnames both accept, as the more specific of the two, or None."""
    if listener is None:
        return route
    if listener == route:
        return route
    if route.startswith("*.") and listener.startswith("*."):
        if listener.endswith(route[1:]):
            return listener
        if route.endswith(listener[1:]):
            return route
        return None
    if route.startswith("*."):
        return listener if matches(route, listener) else None
    if listener.startswith("*."):
        return route if matches(listener, route) else None
    return None


def effective_hostnames(listener: str | None, route_hostnames: tuple[str, ...]) -> tuple[str, ...]:
    """The hostnames a route serves on a listener; () when they do not intersect.

    A route without hostnames takes the listener's (or "*" when it has none).
    """
    if not route_hostnames:
        return (listener or "*",)
    out: list[str] = []
    for name in route_hostnames:
        common = intersect(listener, name)
        if common is not None and common not in out:
            out.append(common)
    return tuple(out)


def specificity(hostname: str) -> tuple[int, int, str]:
    """Sort key, most specific first: exact names before wildcards, longer first."""
    if hostname == "*":
        return (2, 0, hostname)
    if hostname.startswith("*."):
        return (1, -len(hostname), hostname)
    return (0, -len(hostname), hostname)
