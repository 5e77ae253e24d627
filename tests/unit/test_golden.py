"""Golden files: `gatewaylb translate -o json` for realistic scenarios.

Each directory under tests/golden holds the manifests of one scenario; the
expected output sits beside it as <scenario>.json.
After an intended change, regenerate with GOLDEN_UPDATE=1 and review the diff
like code: it is the spec of what users see.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main

GOLDEN = Path(__file__).parent.parent / "golden"
SCENARIOS = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_translate_output_matches_golden_file(scenario: str) -> None:
    directory = GOLDEN / scenario
    result = CliRunner().invoke(main, ["translate", "--manifests", str(directory)])
    assert result.exit_code == 0, result.output
    actual = json.loads(result.stdout)
    # Sources carry the absolute path of this checkout; keep only FILE:LINE tails.
    actual["problems"] = [p.replace(str(directory) + "/", "") for p in actual.get("problems", [])]
    expected_file = GOLDEN / f"{scenario}.json"
    if os.environ.get("GOLDEN_UPDATE") == "1":
        expected_file.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert expected_file.exists(), (
        f"no golden file; run with GOLDEN_UPDATE=1 and review {expected_file}"
    )
    assert actual == json.loads(expected_file.read_text())
