"""What one configuration may hold (`Budget`), what each route adds to it, and
which routes are left out when it would be over.

Objects valid through the Kubernetes API can still ask for a configuration
HAProxy takes minutes to parse (64 HTTPRoutes of 16 rules x 8 matches x 16
headers: 9.4 MB, 139k ACLs).  The renderer's validation pass charges what each
route adds to a `Ledger` (over every listener and hostname it is rendered
on); a route over the per-route budget is left out, and over the total
budget the routes that need the most are left out first.

Pure: never runs haproxy, never writes a file; it never renders a line of
configuration itself (a backend's size is asked of `Backends`), and it only
says which routes to leave out, with the reason: the renderer records them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from agent.proxy.backends import BackendKey, Backends
from agent.refs import ObjectRef


@dataclass(frozen=True, slots=True)
class Budget:
    """What one configuration may hold, so that HAProxy parses it (`haproxy -c`,
    and the master again on reload) in about a second.

    Measured with HAProxy 2.6.12 on 2 vCPUs (Xeon), one core busy per check:
    an anonymous ACL costs 5.6 us (exact) to 13 us (regex): 64 Ki regex ACLs
    0.85 s, 172 Ki exact ones 0.96 s; a server line 6-14 us while a backend
    holds up to 2 Ki of them (32 Ki servers in backends of 2 Ki: 0.45 s, of
    100: 0.20 s), but a backend's servers cost O(n^2) beyond that (4 Ki: 0.15 s,
    8 Ki: 0.86 s); long literal values cost little (33 MB of 4 KB header values:
    0.18 s).  A configuration at every limit at once checks in ~1.3 s.

    Per route (`route_*`, counted over every listener and hostname the route is
    rendered on) so that one route cannot take the whole budget; in total, the
    routes that need the most are left out first.  An ACL here is one match
    condition (path, header, query parameter, method) or one conditional line
    (a filter, a backend choice) of a route entry.
    """

    route_acls: int = 4096
    route_bytes: int = 1 << 20
    acls: int = 65536
    servers: int = 32768
    backend_servers: int = 2048
    bytes: int = 8 << 20


DEFAULT_BUDGET = Budget()


@dataclass
class Usage:
    """What one route adds to the configuration: (ACLs, bytes) per rule (None:
    a TLSRoute) over all its occurrences, and the backends it uses."""

    rules: dict[int | None, tuple[int, int]] = field(default_factory=dict)
    backends: set[BackendKey] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Cost:
    acls: int
    bytes: int
    servers: int
    backends: set[BackendKey]


def largest_first(costs: Mapping[ObjectRef, Cost], what: str) -> list[ObjectRef]:
    def size(route: ObjectRef) -> tuple[int, ObjectRef]:
        return (int(getattr(costs[route], what)), route)

    return sorted(costs, key=size, reverse=True)


def over_total(what: str, limit: int, unit: str) -> str:
    whole_mib = what == "bytes" and limit % (1 << 20) == 0
    shown = f"{limit >> 20} MiB" if whole_mib else f"{limit} {unit}"
    return (
        f"the proxy configuration would exceed its budget of {shown}; the routes that need "
        f"the most {unit} are left out first"
    )


class Ledger:
    """What each route of one render adds.  `skip(route, rule)` tells a rule
    (None: the whole route) already left out; it no longer counts."""

    def __init__(
        self,
        budget: Budget,
        backends: Backends,
        skip: Callable[[ObjectRef, int | None], bool],
    ) -> None:
        self.budget = budget
        self.backends = backends
        self.skip = skip
        self.usage: dict[ObjectRef, Usage] = {}

    def charge(self, route: ObjectRef, rule: int | None, acls: int, size: int) -> None:
        usage = self.usage.setdefault(route, Usage())
        acls0, size0 = usage.rules.get(rule, (0, 0))
        usage.rules[rule] = (acls0 + acls, size0 + size)

    def uses(self, route: ObjectRef, keys: Iterable[BackendKey]) -> None:
        """`route` (charged before) uses the backends `keys`."""
        self.usage[route].backends.update(keys)

    def route_cost(self, route: ObjectRef) -> Cost:
        """What `route` adds, less its rules already left out.  Its backends
        are counted whole, even where other routes share them."""
        usage = self.usage[route]
        live = [v for rule, v in usage.rules.items() if not self.skip(route, rule)]
        acls = sum(a for a, _ in live)
        size = sum(b for _, b in live)
        keys = usage.backends if live else set()
        servers = sum(self.backends.cost(k)[1] for k in keys)
        return Cost(acls, size + sum(self.backends.cost(k)[0] for k in keys), servers, keys)

    def over_budget(self) -> list[tuple[ObjectRef, str]]:
        """The routes to leave out, with the reason, in order: those over the
        per-route budget, then, while the whole is over budget, the routes
        that need the most of what is short."""
        b = self.budget
        out: list[tuple[ObjectRef, str]] = []
        costs: dict[ObjectRef, Cost] = {}
        for route in sorted(self.usage):
            if self.skip(route, None):
                continue
            cost = self.route_cost(route)
            if cost.acls > b.route_acls:
                out.append(
                    (
                        route,
                        f"the route needs {cost.acls} ACLs in the proxy configuration (its match "
                        "conditions on every listener and hostname it is attached to, and its "
                        f"filter and backend lines); the limit is {b.route_acls} per route",
                    )
                )
            elif cost.bytes > b.route_bytes:
                out.append(
                    (
                        route,
                        f"the route needs {cost.bytes // 1024} KiB of proxy configuration; the "
                        f"limit is {b.route_bytes // 1024} KiB per route",
                    )
                )
            elif cost.acls:  # something of it is still rendered
                costs[route] = cost
        refs: dict[BackendKey, int] = {}
        for cost in costs.values():
            for key in cost.backends:
                refs[key] = refs.get(key, 0) + 1
        total = {
            "acls": sum(c.acls for c in costs.values()),
            "servers": sum(self.backends.cost(k)[1] for k in refs),
            "bytes": sum(c.bytes for c in costs.values())
            - sum((n - 1) * self.backends.cost(k)[0] for k, n in refs.items()),
        }
        limits = {"acls": b.acls, "servers": b.servers, "bytes": b.bytes}
        units = {"acls": "ACLs", "servers": "servers", "bytes": "bytes of configuration"}
        # Each measure's routes, the largest first (ranked once: a backend
        # shared with other routes counts whole for each).
        order = {what: iter(largest_first(costs, what)) for what in limits}
        while costs:
            what = next((w for w in limits if total[w] > limits[w]), None)
            if what is None:
                break
            route = next(r for r in order[what] if r in costs)  # each route seen once
            cost = costs.pop(route)
            total["acls"] -= cost.acls
            total["bytes"] -= cost.bytes
            for key in cost.backends:
                refs[key] -= 1
                if refs[key]:
                    total["bytes"] += self.backends.cost(key)[0]  # still there, for another
                else:
                    del refs[key]
                    total["servers"] -= self.backends.cost(key)[1]
            unit = units[what]
            reason = (
                over_total(what, limits[what], unit) + f" (this one: {getattr(cost, what)} {unit})"
            )
            out.append((route, reason))
        return out

    def largest_routes(self, size: int) -> list[ObjectRef]:
        """The routes still rendered that add the most configuration text,
        largest first, until they add up to `size` (none if they cannot)."""
        costs = {r: self.route_cost(r).bytes for r in self.usage if not self.skip(r, None)}
        if sum(costs.values()) < size:
            return []  # not the routes' doing: leaving them all out would not help
        out: list[ObjectRef] = []
        for route in sorted(costs, key=lambda r: (costs[r], r), reverse=True):
            if size <= 0:
                break
            out.append(route)
            size -= costs[route]
        return out
