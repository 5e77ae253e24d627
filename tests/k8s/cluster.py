"""A one-node Kubernetes cluster in the lab: the test control plane with its
controllers, one lab node whose pods are processes in network namespaces,
and the Gateway API CRDs.

    client ns ── node ns (the Node: 10.10.0.1; pods' bridge br0 10.20.0.1/24) ── pod namespaces
                  │ kubernetes Service 10.213.0.1:443 (a relay to the API server)
                  │ kubelet API 10.10.0.1:10250 (logs), reached by the API server
                  │ through its egress tunnel
    host: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (127.0.0.1)

There is no kube-proxy and no cluster DNS: the `kubernetes` Service's
ClusterIP is served on the node by a relay (pods and hostNetwork pods reach
the API server at the address in KUBERNETES_SERVICE_HOST, as anywhere);
other ClusterIPs are not routed.  Pods get the node's resolv.conf (the
kubelet's fallback for ClusterFirst without a cluster DNS).

As a context manager (`with Cluster() as c:`), or from the command line:

    python tests/k8s/cluster.py up      # make cluster: starts it in the background
    python tests/k8s/cluster.py status
    python tests/k8s/cluster.py down    # make cluster-down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controlplane import BIN_DIR, BUILD_SCRIPT, ControlPlane, ControlPlaneError
from kubelet.kubelet import Kubelet
from relay import LoopbackRelay

from agent.lab import Lab, netns
from agent.osutil import alive

NODE_NAME = "lab-node"
POD_CIDR = "10.20.0.0/24"  # the lab node's bridge br0 is 10.20.0.1
KUBERNETES_SERVICE = ("10.213.0.1", 443)  # the first address of the service CIDR
RUN_DIR = Path("/run/gatewaylb-cluster")


class Cluster:
    def __init__(self, workdir: Path | None = None, verbosity: int = 1) -> None:
        self._own_workdir = workdir is None
        # Not under /tmp: every container gets a /tmp of its own, which would
        # hide the volumes the node keeps there.
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="gatewaylb-cluster-", dir="/run"))
        self.lab = Lab(backends=0)
        self.cp = ControlPlane(
            workdir=self.workdir / "controlplane",
            controllers=True,
            own_crds=False,  # `kubectl apply -k deploy/daemonset` brings gatewaylb's own
            node_tunnel=self.workdir / "node-tunnel.sock",
            verbosity=verbosity,
        )
        self.kubelet: Kubelet | None = None
        self.relay: LoopbackRelay | None = None
        self.timings: dict[str, float] = {}

    @property
    def kubeconfig(self) -> Path:
        return self.cp.kubeconfig

    @property
    def client_ns(self) -> str:
        return self.lab.client.ns

    @property
    def node_ns(self) -> str:
        return self.lab.node.ns

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        t0 = time.monotonic()
        try:
            self.lab.__enter__()
            self.cp.start(timeout=timeout)
            self.timings["controlplane"] = time.monotonic() - t0
            host, port = KUBERNETES_SERVICE
            netns.ip("addr", "add", f"{host}/32", "dev", "lo", ns=self.node_ns)
            self.relay = LoopbackRelay(self.lab, lambda: self.cp.port, listen=(host, port))
            self.kubelet = Kubelet(
                self.cp,
                self.lab,
                name=NODE_NAME,
                pod_cidr=POD_CIDR,
                root=self.workdir / "kubelet",
                kubernetes_service=KUBERNETES_SERVICE,
                egress_socket=self.workdir / "node-tunnel.sock",
            )
            self.kubelet.start()
            self._wait_schedulable(time.monotonic() + timeout)
            self.timings["ready"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise

    def _wait_schedulable(self, deadline: float) -> None:
        """The node lifecycle controller lifts the not-ready taint the API
        server puts on a new Node once it sees the Lease renewed."""
        while time.monotonic() < deadline:
            status, node = self.cp.request("GET", f"/api/v1/nodes/{NODE_NAME}")
            taints = (node.get("spec") or {}).get("taints") if status == 200 else None
            if status == 200 and not taints:
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"node {NODE_NAME} still tainted: {taints}")

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        self.cp.stop()
        self.lab.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers for tests and users ----------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60, **kw: Any) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        done = subprocess.run(
            [str(BIN_DIR / "kubectl"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
            **kw,
        )
        if check and done.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def node_command(self, argv: list[str]) -> list[str]:
        """`argv` as a shell on the node would run it: the node's network
        namespace, bpf filesystem and cgroup v2 subtree."""
        assert self.kubelet is not None
        return self.kubelet.services.filesystem.command(argv, self.node_ns)

    def on_node(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.node_command(list(argv)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "kubeconfig": str(self.kubeconfig),
            "kubectl": str(BIN_DIR / "kubectl"),
            "server": self.cp.server,
            "client_ns": self.client_ns,
            "node_ns": self.node_ns,
            "node": NODE_NAME,
            "workdir": str(self.workdir),
            "node_command": self.node_command([]),
        }


# --- command line (make cluster / make cluster-down) -------------------------------------


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((run_dir / "state.json").read_text())
        return state
    except (OSError, ValueError):
        return None


def cmd_serve(run_dir: Path) -> int:
    """The cluster's own process: runs it until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = Cluster(workdir=run_dir)
    t0 = time.monotonic()
    try:
        cluster.start()
    except BaseException as e:
        (run_dir / "failed").write_text(f"{e}\n")
        return 1
    state = {**cluster.state(), "seconds": round(time.monotonic() - t0, 1)}
    (run_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    try:
        stop.wait()
    finally:
        cluster.stop()
        (run_dir / "state.json").unlink(missing_ok=True)
    return 0


def cmd_up(run_dir: Path, timeout: float = 180) -> int:
    state = _read_state(run_dir)
    if state is not None and alive(int(state["pid"])):
        _print_state(state, "already running")
        return 0
    if subprocess.run([str(BUILD_SCRIPT), "--check"], check=False).returncode != 0:
        print("building the cluster's binaries first ...", file=sys.stderr)
        subprocess.run([str(BUILD_SCRIPT)], check=True)
    _clear(run_dir)  # a cluster is new each time: no etcd data or pods of a previous one
    run_dir.mkdir(parents=True, mode=0o700)
    log = open(run_dir / "cluster.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", "--run-dir", str(run_dir)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _read_state(run_dir)
        if state is not None:
            _print_state(state, f"cluster up in {state['seconds']} s")
            return 0
        if proc.poll() is not None:
            failed = run_dir / "failed"
            why = failed.read_text() if failed.exists() else f"exit {proc.returncode}"
            print(f"cluster: failed to start: {why} (log: {run_dir / 'cluster.log'})")
            return 1
        time.sleep(0.2)
    proc.terminate()
    print(f"cluster: not up within {timeout:.0f} s (log: {run_dir / 'cluster.log'})")
    return 1


def _clear(run_dir: Path) -> None:
    """Remove a stopped cluster's directory (unmounting what a crash left)."""
    if not run_dir.exists():
        return
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    for line in mounts:
        target = line.split()[1]
        if target.startswith(f"{run_dir}/"):
            subprocess.run(["umount", "-l", target], check=False)
    shutil.rmtree(run_dir, ignore_errors=True)


def _script() -> str:
    cwd = Path.cwd()

    def shown(p: Path) -> Path:
        return p.relative_to(cwd) if p.is_relative_to(cwd) else p

    return f"{shown(Path(sys.executable))} {shown(Path(__file__).resolve())}"


def _print_state(state: dict[str, Any], headline: str) -> None:
    client = state["client_ns"]
    print(
        f"{headline}: node {state['node']}, API server {state['server']}, "
        "Gateway API CRDs v1.6.1 (experimental channel)\n"
        f"  export KUBECONFIG={state['kubeconfig']}\n"
        f"  export PATH={Path(state['kubectl']).parent}:$PATH   # this kubectl\n"
        f"  kubectl get nodes\n"
        f"  nsenter --net=/run/netns/{client} curl http://<gateway address>/   "
        "# a client outside the node\n"
        f"  {_script()} client -- curl http://<gateway address>/   # the same\n"
        f"  {_script()} node -- gatewaylb status   # a command on the node\n"
        f"  make cluster-down"
    )


def cmd_down(run_dir: Path, timeout: float = 60) -> int:
    state = _read_state(run_dir)
    if state is None:
        print("cluster: not running")
        return 0
    pid = int(state["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        print(f"cluster: process {pid} did not stop within {timeout:.0f} s")
        return 1
    _clear(run_dir)
    print("cluster: stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status", "serve", "node", "client"))
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    parser.epilog = (
        "node -- COMMAND...: run COMMAND on the node; client -- COMMAND...: in the client "
        "namespace, outside the node (a shell when none is given)"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(rest) - (1 if "--" in argv else 0)])
    args.argv = rest
    if args.command == "up":
        return cmd_up(args.run_dir)
    if args.command == "down":
        return cmd_down(args.run_dir)
    if args.command == "serve":
        return cmd_serve(args.run_dir)
    state = _read_state(args.run_dir)
    if state is None or not alive(int(state["pid"])):
        print("cluster: not running")
        return 1
    if args.command == "node":
        return _on_node(state, args.argv)
    if args.command == "client":
        argv = ["nsenter", f"--net=/run/netns/{state['client_ns']}", "--", *(args.argv or ["bash"])]
        return subprocess.run(argv, check=False).returncode
    _print_state(state, "running")
    return 0


def _on_node(state: dict[str, Any], argv: list[str]) -> int:
    """Runs a command on the node (a shell when none is given); the checkout's
    venv first on PATH, so `gatewaylb` is the one the DaemonSet runs."""
    venv = Path(__file__).resolve().parents[2] / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{venv}:{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [*state["node_command"], *(argv or ["bash"])], env=env, check=False
    ).returncode


if __name__ == "__main__":
    raise SystemExit(main())
