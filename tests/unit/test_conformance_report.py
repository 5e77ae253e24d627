"""The README's conformance table says what the committed upstream report
(conformance/reports/v1.6.1/, written by `make conformance`) says: profiles,
core and extended results, features claimed.  After a new report, run this
test and paste the block it prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agent import __version__

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "conformance" / "reports" / "v1.6.1" / f"gatewaylb-{__version__}.yaml"
BEGIN = "<!-- conformance table: tests/unit/test_conformance_report.py -->"
END = "<!-- end of conformance table -->"


def _counts(part: dict[str, Any]) -> str:
    s = part["statistics"]
    total = s["Passed"] + s["Failed"] + s["Skipped"]
    return f"{s['Passed']}/{total} passed" + (f", {s['Failed']} failed" if s["Failed"] else "")


def table(report: dict[str, Any]) -> str:
    rows = [
        f"Upstream suite v{report['gatewayAPIVersion'].lstrip('v')} "
        f"({report['gatewayAPIChannel']} channel), run {report['date'][:10]}, "
        f"report [`{REPORT.relative_to(REPO)}`]({REPORT.relative_to(REPO)}).",
        "",
        "| Profile | Core | Extended | Extended features claimed |",
        "|---|---|---|---|",
    ]
    for p in sorted(report["profiles"], key=lambda p: p["name"]):
        ext = p.get("extended") or {}
        features = ", ".join(f"`{f}`" for f in ext.get("supportedFeatures") or [])
        rows.append(
            f"| {p['name']} | {p['core']['result']}: {_counts(p['core'])} | "
            f"{ext.get('result', '-')}: {_counts(ext) if ext else '-'} | {features} |"
        )
    provisional = report.get("succeededProvisionalTests") or []
    rows += ["", f"Provisional tests passed: {len(provisional)}."]
    return "\n".join(rows)


def test_the_readme_table_is_the_committed_report() -> None:
    report = yaml.safe_load(REPORT.read_text())
    readme = (REPO / "README.md").read_text()
    assert BEGIN in readme and END in readme, f"README lacks the markers {BEGIN} / {END}"
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    want = table(report)
    assert block == want, f"paste this between the markers:\n{want}"


def test_every_profile_passed_core_and_extended() -> None:
    report = yaml.safe_load(REPORT.read_text())
    assert {p["name"] for p in report["profiles"]} == {
        "GATEWAY-HTTP", "GATEWAY-TLS", "GATEWAY-GRPC", "GATEWAY-TCP", "GATEWAY-UDP"
    }  # fmt: skip
    for p in report["profiles"]:
        assert p["core"]["result"] == "success", p
        assert p["core"]["statistics"]["Skipped"] == 0, p
        assert p.get("extended", {}).get("result", "success") == "success", p
