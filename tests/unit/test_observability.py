"""The shipped dashboard, alert rules and their Kubernetes wiring
(deploy/observability, deploy/observability-operator), checked without a cluster:
promtool checks and unit-tests the rules, the dashboard is valid and every
panel queries documented metrics, the generated PrometheusRule is current, the
kustomizations build, and the metrics table of docs/reference.md is what the
agent exports.  tests/e2e/test_prometheus_e2e.py proves the same files on a
real Prometheus scraping real agents.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from helpers import load_script
from metrics_contract import (
    ALERT_TESTS,
    ALERTS,
    DASHBOARD,
    GRAFANA_BUILTINS,
    REPO,
    STANDARD,
    dashboard,
    documented,
    metric_names,
    panels,
    queries,
    template_variables,
    variables_in,
)
from prometheus_client.parser import text_string_to_metric_families

from agent.announce.reconciler import AnnounceStatus
from agent.dataplane.base import FrontendCounters
from agent.metrics import AgentMetrics, LabelledCounters

OPERATOR = REPO / "deploy" / "observability-operator"
KUBECTL = REPO / "tests" / "k8s" / "bin" / "kubectl"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: scripts/setup.sh test installs Debian's prometheus"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ALERTS.parent
    )


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


# -- alert rules ------------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = promtool("test", "rules", ALERT_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for rule in rules():
        seen = cases.get(rule["alert"], [])
        assert True in seen, f"{rule['alert']}: no test where it fires"
        assert False in seen, f"{rule['alert']}: no test where it must not fire"


def test_every_alert_has_a_window_a_severity_and_a_runbook() -> None:
    for rule in rules():
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for:` window"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert set(notes) >= {"summary", "description", "runbook"}, name
        steps = [line for line in notes["runbook"].splitlines() if line[:1].isdigit()]
        assert len(steps) >= 2, f"{name}: the runbook should be numbered steps"


def test_rules_and_dashboard_use_only_documented_metrics() -> None:
    known = {s for m in documented().values() for s in m.series_names()} | set(STANDARD)
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: {sorted(unknown)} are not in docs/reference.md"
    for q in queries(dashboard()):
        unknown = metric_names(q.expr) - known
        assert not unknown, f"panel {q.panel!r}: {sorted(unknown)} are not in docs/reference.md"


def test_memory_alert_threshold_is_80_percent_of_the_daemonset_limit() -> None:
    ds = yaml.safe_load((REPO / "deploy" / "daemonset" / "daemonset.yaml").read_text())
    (agent,) = (c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
    limit = agent["resources"]["limits"]["memory"]
    assert limit.endswith("Gi"), limit
    want = int(0.8 * float(limit[:-2]) * 2**30)
    (rule,) = (r for r in rules() if r["alert"] == "GatewayLBMemoryHigh")
    assert f"> {want}" in rule["expr"], f"threshold should be {want} (80% of {limit})"
    memory_panel = next(p for p in panels(dashboard()) if p["title"] == "Resident memory")
    steps = memory_panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == want


# -- the generated PrometheusRule -------------------------------------------------------


def _generator() -> ModuleType:
    return load_script(REPO / "scripts" / "gen-prometheusrule.py", "gen_prometheusrule")


def test_prometheusrule_is_what_the_generator_writes_from_the_rules() -> None:
    committed = (OPERATOR / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert _generator().generate(ALERTS.read_text(encoding="utf-8")) == committed, (
        "deploy/observability-operator/prometheusrule.yaml is stale: "
        "run .venv/bin/python scripts/gen-prometheusrule.py"
    )
    obj = yaml.safe_load(committed)
    assert obj["kind"] == "PrometheusRule"
    assert obj["spec"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))


# -- the dashboard ----------------------------------------------------------------------


def test_dashboard_is_valid_and_every_panel_has_a_query() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]] + [
        q["id"] for p in board["panels"] for q in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = [p["title"] for p in panels(board)]
    assert len(titles) == len(set(titles)), "panel titles must be unique (tests name panels)"
    defined = template_variables(board) | GRAFANA_BUILTINS
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        assert p.get("description"), f"{p['title']}: say what the panel answers"
        targets = p.get("targets", [])
        assert targets, f"{p['title']}: no query"
        for t in targets:
            assert t.get("expr", "").strip(), f"{p['title']} {t.get('refId')}: empty query"
            unknown = variables_in(t["expr"]) - defined
            assert not unknown, f"{p['title']}: undefined variables {unknown}"
    # One row per subject, in this order; more rows (L7 traffic) may go between.
    rows = iter(p["title"] for p in board["panels"] if p["type"] == "row")
    for want in ("Agents", "L4 traffic (kernel dataplane)", "Sync", "Announcement"):
        assert want in rows, f"row {want!r} missing or out of order"


# -- docs/reference.md is what the agent exports -----------------------------------------


def _exported(mode: str) -> dict[str, set[frozenset[str]]]:
    """Family sample name -> the label sets of its samples, for an agent whose
    every collector reports something (announce `mode`)."""
    m = AgentMetrics(version="0.0.0", dataplane="nftables", node="n1")
    labels = ("default", "edge", "tcp", "192.0.2.10", "tcp", "80")
    counters = FrontendCounters("192.0.2.10", "tcp", 80, 10, 600, {("10.0.0.1", 8080): 3})
    m.add_kernel_counters(lambda: [LabelledCounters(labels, counters)])
    m.add_announcements(
        lambda: AnnounceStatus(mode, frozenset({"192.0.2.10"}), {"192.0.2.1": "established"}, 2, ())
    )
    m.add_status_writer(lambda: ("leader", ""))
    m.add_unserved_packets(lambda: 4)
    m.set_rejected({("HTTPRoute", "NoMatchingParent"): 1})
    m.sync_duration.labels("nftables").observe(0.01)
    m.sync_errors.labels("nftables")
    out: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out.setdefault(s.name, set()).add(frozenset(set(s.labels) - {"le"}))
    return out


def test_reference_metrics_table_is_what_the_agent_exports() -> None:
    exported = _exported("bgp")
    for name, label_sets in _exported("l2").items():
        exported.setdefault(name, set()).update(label_sets)
    docs = documented()
    for m in docs.values():
        for series in m.series_names():
            assert series in exported, f"{series} is documented but not exported"
            assert exported[series] == {m.labels}, (
                f"{series}: exported with labels {exported[series]}, documented {set(m.labels)}"
            )
    names = {s for m in docs.values() for s in m.series_names()}
    undocumented = {
        n for n in exported if n.startswith("gatewaylb_") and not n.endswith("_created")
    } - names
    assert not undocumented, f"exported but not in docs/reference.md: {sorted(undocumented)}"
    for name in STANDARD[1:]:
        assert name in exported, name


# -- kustomize ---------------------------------------------------------------------------


def kustomize(directory: Path) -> list[dict[str, Any]]:
    # tests/k8s/bin/kubectl is built by `make k8s-bin`, which `make test` runs
    # before any test; `make unit` alone does not build it.
    if not KUBECTL.exists():
        pytest.skip(f"{KUBECTL} is not built (make k8s-bin; make test builds it first)")
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_kustomize_builds_the_plain_and_the_operator_variants() -> None:
    plain = {(o["kind"], o["metadata"]["name"]): o for o in kustomize(ALERTS.parent)}
    assert set(plain) == {
        ("ConfigMap", "gatewaylb-dashboard"),
        ("ConfigMap", "gatewaylb-alert-rules"),
    }
    board = plain[("ConfigMap", "gatewaylb-dashboard")]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["gatewaylb.json"]) == dashboard()
    rules_cm = plain[("ConfigMap", "gatewaylb-alert-rules")]
    assert rules_cm["data"]["gatewaylb-alerts.yaml"] == ALERTS.read_text(encoding="utf-8")

    operator = {(o["kind"], o["metadata"]["name"]): o for o in kustomize(OPERATOR)}
    assert set(operator) == set(plain) | {
        ("PodMonitor", "gatewaylb"),
        ("PrometheusRule", "gatewaylb"),
    }
    assert all(o["metadata"]["namespace"] == "gatewaylb-system" for o in operator.values())
    rule = operator[("PrometheusRule", "gatewaylb")]
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    monitor = operator[("PodMonitor", "gatewaylb")]["spec"]
    ds = yaml.safe_load((REPO / "deploy" / "daemonset" / "daemonset.yaml").read_text())
    pod = ds["spec"]["template"]
    assert monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    assert endpoint["honorLabels"] is True
