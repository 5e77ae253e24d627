"""The `gatewaylb` command line (also `python -m agent`).

Only argument handling and output formatting live here; every command delegates
to the module that owns the work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import click

from agent import __version__
from agent.announce.reconciler import MODES as ANNOUNCE_MODES
from agent.announce.reconciler import AnnounceReconciler, withdraw_all
from agent.daemon import Agent, SyncSettings
from agent.dataplane.select import (
    DEFAULT_BPF_PIN_DIR,
    MODES,
    DataplaneOptions,
    DataplaneUnavailable,
    available_modes,
    cgroup2_root,
    cleanup_all,
    open_dataplane,
)
from agent.dataplane.vips import NodeVIPs, VIPGuard
from agent.kube.client import KubeClient
from agent.kube.election import LeaseElector
from agent.kube.events import EventRecorder
from agent.kube.source import KubeSource
from agent.kube.status import KubeStatusWriter
from agent.logs import setup_logging
from agent.metrics import AgentMetrics, HealthServer
from agent.nodestatus import DEFAULT_AGENT_ADDRESS, read_node, status_document, status_table
from agent.output import dump, translation_document
from agent.proxy.addresses import VIPAddresses, node_addresses
from agent.proxy.reconciler import ProxyReconciler
from agent.proxy.worker import ProxyWorker
from agent.sources.base import Source
from agent.sources.files import FileSource, ManifestError, load_directory
from agent.statuswriter import FileStatusWriter, StatusWriter, addresses_from_status_file
from agent.translate import DEFAULT_CONTROLLER_NAME, translate
from agent.translate.rejections import foreign_classes, rejections

log = logging.getLogger("gatewaylb")
DEFAULT_RUN_DIR = Path("/run/gatewaylb")
DEFAULT_BGP_API_PORT = 50052  # not gobgpd's own default (50051), which a host daemon may use
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SERVICE_ACCOUNT_NAMESPACE = SERVICE_ACCOUNT_TOKEN.with_name("namespace")
DEFAULT_LEASE_NAMESPACE = "gatewaylb-system"
MANIFEST_CACHE = "manifest-cache"  # under --run-dir: each manifest's last good content


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
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 when any object is rejected (a refusing condition in its status), any "
    "document cannot be used, or any manifest has an unknown kind or field.",
)
def translate_command(manifests: Path, output: str, controller_name: str, strict: bool) -> None:
    """Print the status and desired state computed from manifests; change nothing.
    Warnings and a summary of rejected objects go to stderr."""
    try:
        snapshot = load_directory(manifests)
    except ManifestError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    result = translate(snapshot, controller_name)
    click.echo(dump(translation_document(snapshot, result), output), nl=False)
    notes = [f"error: {p}" for p in snapshot.problems]
    notes += [f"warning: {w}" for w in snapshot.warnings]
    notes += [f"note: {line}" for line in foreign_classes(snapshot, controller_name)]
    refused = rejections(snapshot, result.status)
    notes += [f"rejected: {r}" for r in refused]
    for note in notes:
        click.echo(note, err=True)
    objects = len({(r.kind, r.namespace, r.name) for r in refused})
    if notes:
        click.echo(
            f"translate: {objects} object(s) rejected, {len(snapshot.problems)} document(s) "
            f"unusable, {len(snapshot.warnings)} warning(s)",
            err=True,
        )
    if strict and (refused or snapshot.problems or snapshot.warnings):
        sys.exit(1)


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


# Its own prefix: the group's would make the variables GATEWAYLB_RUN_<OPTION>.
@main.command("run", context_settings={"auto_envvar_prefix": "GATEWAYLB"})
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
    "--lease-namespace",
    "--namespace",
    "lease_namespace",
    envvar=["GATEWAYLB_LEASE_NAMESPACE", "GATEWAYLB_NAMESPACE", "POD_NAMESPACE"],
    default=None,
    help="Kubernetes: the namespace of the status-writer Lease (default: the pod's "
    f"namespace, else {DEFAULT_LEASE_NAMESPACE}).",
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
    "--allow-host-addresses",
    is_flag=True,
    help="Let a Gateway take an address of this node or of an endpoint as its VIP (refused "
    "by default: the node would intercept that host's traffic).",
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
    lease_namespace: str | None,
    announce: str,
    bgp_api_port: int,
    allow_host_addresses: bool,
    proxy_threads: int | None,
    log_format: str,
    log_level: str,
) -> None:
    """Run the agent until SIGTERM/SIGINT; the kernel state stays in place on exit.

    Every option can also be set from the environment as GATEWAYLB_<OPTION>
    (upper case, '-' as '_'): GATEWAYLB_DATAPLANE=nftables,
    GATEWAYLB_INTERFACE="eth0 eth1" for a repeatable option, GATEWAYLB_IN_CLUSTER=1
    for a flag. The command line wins over the environment.
    """
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
        metrics.add_status_writer(lambda: ("file", ""))
    elector: LeaseElector | None = None
    events: EventRecorder | None = None
    source: Source
    if manifests is not None:
        # The last good content of each file survives a restart (a file half-saved
        # while the agent was down keeps its objects); /run: not a reboot.
        source = FileSource(manifests, cache_dir=run_dir / MANIFEST_CACHE)
        where = str(manifests)
        if status_file is None:
            metrics.add_status_writer(lambda: ("disabled", "NoStatusFile"))
    else:
        client = (
            KubeClient.in_cluster() if in_cluster else KubeClient.from_kubeconfig(str(kubeconfig))
        )
        kube = KubeSource(client)
        namespace = _lease_namespace(lease_namespace)
        elector = LeaseElector(
            client,
            namespace=namespace,
            identity=node_name,
            on_change=lambda leader: agent.rewrite_status() if leader else None,
        )
        metrics.add_status_writer(_writer_state(elector))
        writers.append(KubeStatusWriter(client, kube, controller_name, is_leader=elector.is_leader))
        events = EventRecorder(client, node=node_name, controller=controller_name)
        kube.start()
        source, where = kube, client.host
    agent = Agent(
        source=source,
        dataplane=plane,
        metrics=metrics,
        settings=SyncSettings(
            controller_name=controller_name, allow_host_addresses=allow_host_addresses
        ),
        node_addresses=node_addresses,
        status_writers=writers,
        proxy=ProxyReconciler(
            ProxyWorker(run_dir / "proxy", threads=proxy_threads, node_name=node_name)
        ),
        node_vips=NodeVIPs(VIPAddresses(), VIPGuard()),
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
    server = HealthServer(metrics_address, metrics, lambda: agent.ready, agent.healthy)
    if elector is not None:  # started once its on_change has an agent to call
        elector.start()
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


def _lease_namespace(flag: str | None) -> str:
    """--lease-namespace, else the pod's own namespace, else the default."""
    if flag:
        return flag
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_LEASE_NAMESPACE
    except OSError:
        return DEFAULT_LEASE_NAMESPACE


def _writer_state(elector: LeaseElector) -> Callable[[], tuple[str, str]]:
    def state() -> tuple[str, str]:
        s = elector.state()
        return s.state, s.reason

    return state


@main.command("cleanup")
@click.option(
    "--lab", is_flag=True, help="Also remove network namespaces left by labs (demo, tests)."
)
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    help="Accepted for compatibility: every interface is searched for gatewaylb's tc programs.",
)
@click.option(
    "--bpf-pin-dir",
    default=DEFAULT_BPF_PIN_DIR,
    show_default=True,
    help="A pin directory to remove besides those found on every mounted bpf filesystem.",
)
@click.option(
    "--cgroup-path",
    default="auto",
    show_default=True,
    help="A cgroup whose glb_* programs are all removed ('auto': only those that use the "
    "maps of a run found here; they are found on every mounted cgroup v2 hierarchy).",
)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_RUN_DIR,
    show_default=True,
    help="A run directory to clean besides those of the proxy workers and BGP speakers "
    "found running in this network namespace.",
)
@click.option(
    "--bgp-api-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_BGP_API_PORT,
    show_default=True,
)
def cleanup_command(
    lab: bool,
    interfaces: tuple[str, ...],
    bpf_pin_dir: str,
    cgroup_path: str,
    run_dir: Path,
    bgp_api_port: int,
) -> None:
    """Remove everything any gatewaylb run left in this network namespace:
    tc and cgroup programs, pinned maps, nftables tables, VIP addresses, the
    proxy worker and the BGP speaker (its routes are withdrawn).  Found in the
    kernel by name, whatever flags the run used.  Safe to run twice."""
    from agent.dataplane.inventory import find_run_dirs

    setup_logging("text", "warning")
    run_dirs = sorted({run_dir, *find_run_dirs()})
    removed: list[str] = []
    for directory in run_dirs:
        withdraw_all(directory, socket.gethostname(), bgp_api_port)
        worker = ProxyWorker(directory / "proxy")
        if worker.master_pid() is not None or worker.config_path.exists():
            ProxyReconciler(worker).cleanup()
            removed.append(f"the proxy worker under {directory / 'proxy'}")
        cache = directory / MANIFEST_CACHE
        # Only a cache the agent made: a real directory of root's.
        if cache.is_dir() and not cache.is_symlink() and cache.stat().st_uid == os.geteuid():
            shutil.rmtree(cache, ignore_errors=True)
            removed.append(f"the manifest cache {cache}")
    cgroup = None if cgroup_path == "auto" else cgroup_path
    removed += cleanup_all(DataplaneOptions(bpf_pin_dir=bpf_pin_dir, cgroup_path=cgroup))
    addresses = VIPAddresses().cleanup()
    if addresses:
        removed.append(f"VIP addresses on lo: {', '.join(addresses)}")
    for item in removed:
        click.echo(f"removed: {item}")
    if not removed:
        click.echo("nothing of gatewaylb's in this network namespace")
    if lab:
        from agent.lab.netns import cleanup_leftovers

        gone = cleanup_leftovers()
        click.echo(f"removed lab namespaces: {', '.join(gone) or 'none'}")


@main.command("status")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--metrics-address",
    default=DEFAULT_AGENT_ADDRESS,
    show_default=True,
    help="Where the running agent serves /metrics (its --metrics-address): ready, who "
    "writes status, rejected objects.  The kernel is read directly.",
)
@click.option(
    "--bpf-pin-dir",
    default=DEFAULT_BPF_PIN_DIR,
    show_default=True,
    help="A pin directory to read besides those found on every mounted bpf filesystem.",
)
def status_command(output: str, metrics_address: str, bpf_pin_dir: str) -> None:
    """What this node holds now: VIP, protocol, port, backends, counters, found
    in the kernel whatever flags the agent runs with; and the agent's own
    account (ready, status writer, rejected objects) when it answers."""
    setup_logging("text", "warning")
    node = read_node([bpf_pin_dir], metrics_address)
    if output == "json":
        click.echo(json.dumps(status_document(node), indent=2))
    else:
        click.echo(status_table(node), nl=False)
    if any(v.problem for v in node.dataplanes):
        sys.exit(1)


@main.command("demo")
@click.option("--dataplane", type=click.Choice(MODES), default="auto", show_default=True)
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the lab and the agent running and print how to use them; "
    "`gatewaylb cleanup --lab` removes them.",
)
def demo_command(dataplane: str, keep: bool) -> None:
    """A throwaway network-namespace lab: the agent on examples/demo, TCP, UDP and
    HTTP through a Gateway's VIP, checked against the route weights; then
    removed (unless --keep). Needs root."""
    from agent.lab.demo import run_demo

    sys.exit(run_demo(dataplane, keep=keep))
