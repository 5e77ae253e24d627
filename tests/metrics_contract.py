"""The metrics contract as the documentation states it, and the queries of the
shipped dashboard: what tests/unit/test_observability.py checks the agent's
exporter and the files against, and tests/e2e/test_prometheus_e2e.py a real
Prometheus.

The contract is the metrics table of docs/reference.md, plus the one of
shared/CONTRACT.md beside the repository when it is there (the reference's
is the fuller one; both must hold).  Reads files only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "reference.md"
CONTRACT = REPO.parent / "shared" / "CONTRACT.md"
OBSERVABILITY = REPO / "deploy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yaml"
ALERT_TESTS = OBSERVABILITY / "alerts-tests.yaml"
DASHBOARD = OBSERVABILITY / "dashboard.json"

FRONTEND_LABELS = ("namespace", "gateway", "listener", "vip", "protocol", "port")
# Metrics the dashboard and the rules may use besides the documented ones:
# Prometheus' own `up`, and prometheus-client's process collector.
STANDARD = ("up", "process_resident_memory_bytes", "process_cpu_seconds_total")


@dataclass(frozen=True, slots=True)
class Documented:
    name: str
    type: str  # counter | gauge | histogram
    labels: frozenset[str]

    def series_names(self) -> tuple[str, ...]:
        """The names Prometheus stores for it."""
        if self.type == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


def metrics_table(path: Path) -> list[Documented]:
    """The rows of the table under the `## Metrics` heading of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    out: list[Documented] = []
    for line in section.splitlines():
        if not line.startswith("| `gatewaylb_"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`(gatewaylb_\w+)`", cells[0])
        kind = cells[1].split()[0]
        labels = set(re.findall(r"`(\w+)`", cells[2]))
        if "frontend's labels" in cells[2]:
            labels.update(FRONTEND_LABELS)
        out.extend(Documented(n, kind, frozenset(labels)) for n in names)
    if not out:
        raise AssertionError(f"{path}: no metrics table under '## Metrics'")
    return out


def documented() -> dict[str, Documented]:
    """Every documented metric by name; a metric both files list must agree."""
    merged: dict[str, Documented] = {}
    for path in (REFERENCE, CONTRACT):
        if not path.exists():
            continue
        for m in metrics_table(path):
            seen = merged.setdefault(m.name, m)
            assert seen == m, f"{path}: {m} differs from {seen}"
    return merged


# -- the dashboard ---------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows, and panels inside collapsed rows, included)."""
    for p in board["panels"]:
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


@dataclass(frozen=True, slots=True)
class Query:
    panel: str
    ref: str
    expr: str


def queries(board: dict[str, Any]) -> list[Query]:
    return [
        Query(p["title"], t.get("refId", "?"), t.get("expr", ""))
        for p in panels(board)
        for t in p.get("targets", [])
    ]


def template_variables(board: dict[str, Any]) -> set[str]:
    return {v["name"] for v in board.get("templating", {}).get("list", [])}


GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def variables_in(expr: str) -> set[str]:
    return {a or b for a, b in _VARIABLE.findall(expr)}


def concrete(expr: str, rate_interval: str = "2m") -> str:
    """The query Grafana would send with every variable at "All": the
    dashboard's variables are regex matchers (allValue `.*`)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in ("__rate_interval", "__interval"):
            return rate_interval
        if name == "__range":
            return "1h"
        return ".*"

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (gatewaylb_*, process_*, up)."""
    names = set(re.findall(r"\b(gatewaylb_\w+|process_\w+)\b", expr))
    if re.search(r"(^|[^\w])up\s*[{=<>!(\s)]", expr):
        names.add("up")
    return names
