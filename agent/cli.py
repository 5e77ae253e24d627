"""The `gatewaylb` command line (also `python -m agent`).

Only argument handling and output formatting live here; every command delegates
to the module that owns the work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from pathlib import Path

import click

from agent import __version__
from agent.announce.reconciler import MODES as ANNOUNCE_MODES
from agent.announce.reconciler import AnnounceReconciler, withdraw_all
from agent.daemon import Agent, SyncSettings
from agent.dataplane.addresses import VIPAddresses
from agent.dataplane.base import FrontendCounters
from agent.dataplane.select import (
    DEFAULT_BPF_PIN_DIR,
    MODES,
    DataplaneOptions,
    DataplaneUnavailable,
    available_modes,
    cgroup2_root,
    cleanup_all,
    open_dataplane,
    programmed_dataplane,
)
from agent.election import LeaseElector
from agent.events import EventRecorder
from agent.logs import setup_logging
from agent.metrics import AgentMetrics, HealthServer
from agent.output import dump, translation_document
from agent.proxy.reconciler import ProxyReconciler
from agent.proxy.worker import ProxyWorker
from agent.sources.base import Source
from agent.sources.files import FileSource, ManifestError, load_directory
from agent.sources.kube import KubeSource
from agent.sources.kubeapi import KubeClient
from agent.statuswriter import (
    FileStatusWriter,
    KubeStatusWriter,
    StatusWriter,
    addresses_from_status_file,
)
from agent.translate import DEFAULT_CONTROLLER_NAME, translate

log = logging.getLogger("gatewaylb")
DEFAULT_RUN_DIR = Path("/run/gatewaylb")
DEFAULT_BGP_API_PORT = 50052  # not gobgpd's own default (50051), which a host daemon may use
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "GATEWAYLB"}
)
def main() -> None:
    """gatewaylb: a kernel-native Kubernetes Gateway API implementation."""


@main.command("translate")
@click.option(
    "--manifests",
    "manifests",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory of Gateway API and core manifests (*.yaml, *.yml, *.json).",
)
@click.option(
    "-o", "--output", type=click.Choice(["json", "yaml"]), default="json", show_default=True
)
@click.option("--controller-name", default=DEFAULT_CONTROLLER_NAME, show_default=True)
def translate_command(manifests: Path, output: str, controller_name: str) -> None:
    """Print the status and desired state computed from manifests; change nothing."""
    try:
        snapshot = load_directory(manifests)
    except ManifestError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    for problem in snapshot.problems:
        click.echo(f"warning: {problem}", err=True)
    result = translate(snapshot, controller_name)
    click.echo(dump(translation_document(snapshot, result), output), nl=False)


@main.command("version")
def version_command() -> None:
    """Version and the dataplane modes this kernel supports."""
    click.echo(f"gatewaylb {__version__}")
    for mode, state in available_modes().items():
        click.echo(f"dataplane {mode}: {state}")


def _default_node_name() -> str:
    return socket.gethostname()


def _dataplane_options(
    interfaces: tuple[str, ...], bpf_pin_dir: str, cgroup_path: str
) -> DataplaneOptions:
    cgroup: str | None = cgroup_path
    if cgroup_path == "auto":
        cgroup = cgroup2_root()
    elif cgroup_path == "none":
        cgroup = None
    return DataplaneOptions(interfaces=interfaces, bpf_pin_dir=bpf_pin_dir, cgroup_path=cgroup)


@main.command("run")
@click.option(
    "--manifests", type=click.Path(path_type=Path), help="Standalone: a watched manifest directory."
)
@click.option(
    "--kubeconfig", type=click.Path(path_type=Path), help="Kubernetes source: kubeconfig file."
)
@click.option("--in-cluster", is_flag=True, help="Kubernetes source: the pod's service account.")
@click.option("--node-name", default=_default_node_name, help="This node's name.")
@click.option("--dataplane", type=click.Choice(MODES), default="auto", show_default=True)
@click.option(
    "--interface", "interfaces", multiple=True, help="Where VIP traffic arrives (repeatable)."
)
@click.option(
    "--bpf-pin-dir", default=DEFAULT_BPF_PIN_DIR, show_default=True, help="ebpf: map pins."
)
@click.option(
    "--cgroup-path",
    default="auto",
    show_default=True,
    help="ebpf: cgroup v2 whose processes get socket-level load balancing to VIPs "
    "('auto': the cgroup2 root; 'none': off).",
)
@click.option("--metrics-address", default="0.0.0.0:9469", show_default=True)
@click.option(
    "--status-file",
    type=click.Path(path_type=Path),
    help="Standalone: status JSON written after each sync.",
)
@click.option("--controller-name", default=DEFAULT_CONTROLLER_NAME, show_default=True)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_RUN_DIR,
    show_default=True,
    help="Where the L7 proxy worker keeps its configuration, sockets and certificates.",
)
@click.option(
    "--namespace",
    envvar=["GATEWAYLB_NAMESPACE", "POD_NAMESPACE"],
    default="gatewaylb-system",
    show_default=True,
    help="Kubernetes: the agent's namespace (holds the status-writer Lease).",
)
@click.option(
    "--announce",
    type=click.Choice(ANNOUNCE_MODES),
    default="none",
    show_default=True,
    help="How VIPs are announced: l2 (ARP/NDP), bgp (a managed gobgpd), none.",
)
@click.option(
    "--bgp-api-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_BGP_API_PORT,
    show_default=True,
    help="bgp: 127.0.0.1 port of the gobgpd API the agent drives.",
)
@click.option(
    "--proxy-threads",
    type=click.IntRange(1, 64),
    default=None,
    help="Threads of the L7 proxy worker (HAProxy's nbthread; default: half the CPUs the "
    "agent may use, at least 1: the worker shares the node with the pods it serves).",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info"
)
def run_command(
    manifests: Path | None,
    kubeconfig: Path | None,
    in_cluster: bool,
    node_name: str,
    dataplane: str,
    interfaces: tuple[str, ...],
    bpf_pin_dir: str,
    cgroup_path: str,
    metrics_address: str,
    status_file: Path | None,
    controller_name: str,
    run_dir: Path,
    namespace: str,
    announce: str,
    bgp_api_port: int,
    proxy_threads: int | None,
    log_format: str,
    log_level: str,
) -> None:
    """Run the agent until SIGTERM/SIGINT; the kernel state stays in place on exit."""
    setup_logging(log_format, log_level)
    if manifests is not None and (kubeconfig is not None or in_cluster):
        raise click.UsageError("--manifests and --kubeconfig/--in-cluster are exclusive")
    if manifests is None and kubeconfig is None and not in_cluster:
        if not SERVICE_ACCOUNT_TOKEN.exists():
            raise click.UsageError(
                "a source is needed: --manifests DIR, --kubeconfig or --in-cluster"
            )
        in_cluster = True
    if manifests is not None and not manifests.is_dir():
        raise click.UsageError(f"--manifests {manifests}: not a directory")
    options = _dataplane_options(interfaces, bpf_pin_dir, cgroup_path)
    try:
        plane = open_dataplane(dataplane, options)
    except DataplaneUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    metrics = AgentMetrics(version=__version__, dataplane=plane.name, node=node_name)
    writers: list[StatusWriter] = []
    if status_file is not None:
        writers.append(FileStatusWriter(status_file))
    elector: LeaseElector | None = None
    events: EventRecorder | None = None
    source: Source
    if manifests is not None:
        source = FileSource(manifests)
        where = str(manifests)
    else:
        client = (
            KubeClient.in_cluster() if in_cluster else KubeClient.from_kubeconfig(str(kubeconfig))
        )
        kube = KubeSource(client)
        elector = LeaseElector(client, namespace=namespace, identity=node_name)
        writers.append(KubeStatusWriter(client, kube, controller_name, is_leader=elector.is_leader))
        events = EventRecorder(client, node=node_name, controller=controller_name)
        kube.start()
        elector.start()
        source, where = kube, client.host
    agent = Agent(
        source=source,
        dataplane=plane,
        metrics=metrics,
        settings=SyncSettings(controller_name=controller_name),
        status_writers=writers,
        proxy=ProxyReconciler(
            ProxyWorker(run_dir / "proxy", threads=proxy_threads), VIPAddresses()
        ),
        events=events,
        announcer=(
            AnnounceReconciler(
                announce, node_name=node_name, run_dir=run_dir, bgp_api_port=bgp_api_port
            )
            if announce != "none"
            else None
        ),
        prior_addresses=addresses_from_status_file(status_file) if status_file else None,
    )
    server = HealthServer(metrics_address, metrics, lambda: agent.ready)
    server.start()
    log.info(
        "event=start version=%s node=%s dataplane=%s source=%s metrics=%s",
        __version__,
        node_name,
        plane.name,
        where,
        metrics_address,
    )
    try:
        asyncio.run(agent.run())
    finally:
        server.stop()
        source.close()
        if elector is not None:
            elector.stop()


@main.command("cleanup")
@click.option(
    "--lab", is_flag=True, help="Also remove network namespaces left by labs (demo, tests)."
)
@click.option("--interface", "interfaces", multiple=True, help="ebpf: interfaces to detach from.")
@click.option("--bpf-pin-dir", default=DEFAULT_BPF_PIN_DIR, show_default=True)
@click.option("--cgroup-path", default="auto", show_default=True)
@click.option("--run-dir", type=click.Path(path_type=Path), default=DEFAULT_RUN_DIR)
@click.option("--bgp-api-port", type=click.IntRange(1, 65535), default=DEFAULT_BGP_API_PORT)
def cleanup_command(
    lab: bool,
    interfaces: tuple[str, ...],
    bpf_pin_dir: str,
    cgroup_path: str,
    run_dir: Path,
    bgp_api_port: int,
) -> None:
    """Remove everything the agent put in the kernel, the proxy worker and the
    BGP speaker (its routes are withdrawn). Safe to run twice."""
    withdraw_all(run_dir, socket.gethostname(), bgp_api_port)
    for item in cleanup_all(_dataplane_options(interfaces, bpf_pin_dir, cgroup_path)):
        click.echo(f"removed: {item}")
    ProxyReconciler(ProxyWorker(run_dir / "proxy"), VIPAddresses()).cleanup()
    click.echo(f"removed: the proxy worker under {run_dir / 'proxy'} and its VIP addresses")
    if lab:
        from agent.lab.netns import cleanup_leftovers

        removed = cleanup_leftovers()
        click.echo(f"removed lab namespaces: {', '.join(removed) or 'none'}")


@main.command("status")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--metrics-address",
    default=None,
    help="Accepted for compatibility; the kernel is read directly.",
)
@click.option("--bpf-pin-dir", default=DEFAULT_BPF_PIN_DIR, show_default=True)
def status_command(output: str, metrics_address: str | None, bpf_pin_dir: str) -> None:
    """What the kernel holds now: VIP, protocol, port, backends, counters."""
    plane = programmed_dataplane(DataplaneOptions(bpf_pin_dir=bpf_pin_dir))
    programmed = plane.programmed()
    counters = {(c.vip, c.protocol, c.port): c for c in plane.read_counters()}
    empty = FrontendCounters("", "", 0, 0, 0)
    if output == "json":
        rows = []
        for fe in programmed:
            c = counters.get((fe.vip, fe.protocol, fe.port), empty)
            backends = [
                {
                    "ip": ip,
                    "port": port,
                    "weight": weight,
                    "connections": c.backend_connections.get((ip, port), 0),
                }
                for ip, port, weight in fe.backends
            ]
            rows.append(
                {
                    "vip": fe.vip,
                    "protocol": fe.protocol,
                    "port": fe.port,
                    "backends": backends,
                    "reject_weight": fe.reject_weight,
                    "packets": c.packets,
                    "bytes": c.bytes,
                }
            )
        click.echo(json.dumps({"dataplane": plane.name, "frontends": rows}, indent=2))
        return
    click.echo(f"dataplane: {plane.name}   frontends: {len(programmed)}")
    click.echo(f"{'VIP':<40} {'PROTO':<5} {'PORT':>5} {'PACKETS':>10} {'BYTES':>12}  BACKENDS")
    for fe in programmed:
        c = counters.get((fe.vip, fe.protocol, fe.port), empty)
        shown = ", ".join(
            f"{ip}:{port} w={weight} conns={c.backend_connections.get((ip, port), 0)}"
            for ip, port, weight in fe.backends
        )
        shown = shown or "(none: refuses connections)"
        if fe.reject_weight:
            shown += f", refused share w={fe.reject_weight}"
        click.echo(
            f"{fe.vip:<40} {fe.protocol:<5} {fe.port:>5} {c.packets:>10} {c.bytes:>12}  {shown}"
        )


@main.command("demo")
@click.option("--dataplane", type=click.Choice(MODES), default="auto", show_default=True)
def demo_command(dataplane: str) -> None:
    """A throwaway lab: the agent on examples/l4, TCP and UDP through the VIP."""
    from agent.lab.demo import run_demo

    sys.exit(run_demo(dataplane))
