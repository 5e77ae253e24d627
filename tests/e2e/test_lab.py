"""The lab library's own guarantees: leftovers of a killed run are removed, the
namespaces of a live run are not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.lab import Lab, cleanup_leftovers, netns, new_prefix

pytestmark = pytest.mark.root


def test_cleanup_leftovers_removes_dead_runs_and_spares_live_ones() -> None:
    # A run that died: a namespace with a pid file naming a process that is gone.
    dead = new_prefix()
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    netns.RUN_DIR.mkdir(parents=True, exist_ok=True)
    (netns.RUN_DIR / f"{dead.strip('-')}.pid").write_text(child.stdout.strip())
    netns.create(dead + "node")
    with Lab(backends=1) as live:
        removed = cleanup_leftovers()
        assert dead + "node" in removed
        assert not netns.exists(dead + "node")
        assert netns.exists(live.node.ns), "a live run's lab must survive"
    assert not netns.exists(live.node.ns), "a lab removes its own namespaces"


def test_cli_cleanup_lab_flag() -> None:
    dead = new_prefix()
    netns.create(dead + "client")  # no pid file at all: an orphan
    out = subprocess.run(
        [sys.executable, "-m", "agent", "cleanup", "--lab", "--cgroup-path", "none"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert dead + "client" in out.stdout
    assert not netns.exists(dead + "client")
