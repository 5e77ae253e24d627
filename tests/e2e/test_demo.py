"""`gatewaylb demo` (what `make demo` runs) passes on this machine and cleans up."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root


def _lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.startswith("glb-")}


def test_demo_sends_tcp_udp_and_http_by_the_routes_and_removes_its_lab() -> None:
    before = _lab_namespaces()
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo"], capture_output=True, text=True, timeout=120
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo passed" in result.stdout
    assert "echo-blue (be1)" in result.stdout and "UDP:" in result.stdout
    assert "HTTP: 1000 requests" in result.stdout and "GET /green/x -> be2" in result.stdout
    # Its own namespaces are gone (others' labs may come and go meanwhile).
    node = re.search(r"starting the agent in (glb-[0-9a-f]+-)node", result.stdout)
    assert node is not None, result.stdout
    leftovers = {ns for ns in _lab_namespaces() - before if ns.startswith(node.group(1))}
    assert not leftovers, leftovers
