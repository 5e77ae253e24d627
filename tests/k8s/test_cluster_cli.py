"""`make cluster` and `make cluster-down` as a user runs them: the cluster
comes up in the background, kubectl reaches it with the printed KUBECONFIG,
a command runs on the node, and `down` leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import NODE_NAME
from controlplane import BIN_DIR, REPO

pytestmark = pytest.mark.root

CLI = [sys.executable, str(REPO / "tests" / "k8s" / "cluster.py")]


def cli(run_dir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args[:1], "--run-dir", str(run_dir), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def run_dir(cluster_binaries: None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="glb-cluster-cli-", dir="/run")) / "cluster"
    try:
        yield path
    finally:
        cli(path, "down")
        shutil.rmtree(path.parent, ignore_errors=True)


def test_up_prints_what_a_user_needs_and_down_removes_everything(run_dir: Path) -> None:
    t0 = time.monotonic()
    up = cli(run_dir, "up")
    took = time.monotonic() - t0
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"\n{up.stdout}(up returned after {took:.1f} s)")
    assert took < 60
    kubeconfig = next(
        line.split("=", 1)[1]
        for line in up.stdout.splitlines()
        if line.strip().startswith("export KUBECONFIG=")
    )
    nodes = subprocess.run(
        [str(BIN_DIR / "kubectl"), "--kubeconfig", kubeconfig, "get", "nodes", "-o", "json"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    (node,) = json.loads(nodes.stdout)["items"]
    assert node["metadata"]["name"] == NODE_NAME
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    again = cli(run_dir, "up")
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout

    on_node = cli(run_dir, "node", "--", "sh", "-c", "ip -br addr show vc0; grep -c . /proc/mounts")
    assert on_node.returncode == 0, on_node.stderr
    assert "10.10.0.1/24" in on_node.stdout, on_node.stdout
    in_client = cli(run_dir, "client", "--", "ip", "-br", "addr", "show", "eth0")
    assert in_client.returncode == 0 and "10.10.0.2/24" in in_client.stdout, in_client
    state = json.loads((run_dir / "state.json").read_text())
    netns = {state["client_ns"], state["node_ns"]}

    down = cli(run_dir, "down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout
    assert not run_dir.exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in netns), listed
    assert cli(run_dir, "status").returncode == 1
