"""What a new user meets in the first hour, driven from outside as they would.

- `ip netns exec NODE gatewaylb run` with default flags mounts a bpf
  filesystem that only that process sees; `status` and `cleanup` (default
  flags again) must still find and remove everything it left.
- A VIP port without a listener is refused (TCP reset, ICMP port
  unreachable), never forwarded, and a process listening on 0.0.0.0 on the
  node is not reachable through a VIP.
- Rejected objects and manifest typos reach the log once, and the metrics.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nftables
import pytest

from agent.dataplane.inventory import cgroup2_mounts, find_cgroup_programs
from agent.lab import Lab
from agent.lab.netns import exec_argv
from tests.e2e.test_agent import (
    METRICS,
    PORT,
    VIP,
    AgentProcess,
    Plane,
    basic_manifests,
    gateway_yaml,
    gatewaylb,
    http_get,
    route_yaml,
    tcp_ask,
    udp_ask,
    wait_for,
    write,
)

pytestmark = pytest.mark.root

HOST_SERVICE_PORT = 2222  # a node process listening on 0.0.0.0, like sshd


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(backends=2) as lab:
        for b in lab.backends:
            lab.start_echo(b, tcp=PORT, udp=PORT)
        yield lab


def netns_exec(lab: Lab, *args: str) -> list[str]:
    """`ip netns exec` as a user types it: a mount namespace of its own, a fresh /sys."""
    return ["ip", "netns", "exec", lab.node.ns, sys.executable, "-m", "agent", *args]


def our_tc_filters(lab: Lab) -> list[str]:
    out: list[str] = []
    links = subprocess.run(
        exec_argv(lab.node.ns, ["ip", "-j", "link", "show"]),
        capture_output=True,
        text=True,
        check=True,
    )
    for link in json.loads(links.stdout):
        for hook in ("ingress", "egress"):
            shown = subprocess.run(
                exec_argv(lab.node.ns, ["tc", "filter", "show", "dev", link["ifname"], hook]),
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if ":gatewaylb" in shown:
                out.append(f"{link['ifname']} {hook}")
    return out


def nft_tables(lab: Lab) -> list[str]:
    def tables() -> list[str]:
        nft = nftables.Nftables()
        nft.set_json_output(True)
        rc, out, _ = nft.json_cmd({"nftables": [{"list": {"tables": None}}]})
        assert rc == 0
        return [i["table"]["name"] for i in out["nftables"] if "table" in i]

    return [t for t in lab.call(lab.node, tables) if t.startswith("gatewaylb")]


def test_a_private_bpffs_run_is_seen_by_status_and_removed_by_cleanup(
    lab: Lab, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    basic_manifests(manifests, lab)
    log = tmp_path / "agent.log"
    argv = netns_exec(
        lab,
        "run",
        "--manifests",
        str(manifests),
        "--metrics-address",
        METRICS,
        "--run-dir",
        str(tmp_path / "run"),
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return lab.call(lab.node, http_get, f"http://{METRICS}/readyz")[0] == 200

        wait_for(ready, 30)
        assert lab.call(lab.client, tcp_ask, VIP, 80) in {"be1", "be2"}
        text = log.read_text()
        assert "dataplane_selected mode=ebpf" in text
        assert "event=bpffs_private" in text, text
    finally:
        proc.terminate()
        proc.wait(10)
    # The agent is gone; its programs stay, and so does the traffic.
    assert lab.call(lab.client, tcp_ask, VIP, 80) in {"be1", "be2"}
    assert our_tc_filters(lab)

    for how in ("ip netns exec", "nsenter"):
        argv = netns_exec(lab, "status", "-o", "json", "--metrics-address", METRICS)
        if how == "nsenter":
            argv = exec_argv(lab.node.ns, argv[4:])
        shown = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode == 0, shown.stderr
        doc = json.loads(shown.stdout)
        print(f"\nstatus through {how}: {doc['dataplanes'][0]['where']}")
        assert doc["dataplane"] == "ebpf", doc
        assert {(f["vip"], f["protocol"], f["port"]) for f in doc["frontends"]} == {
            (VIP, "tcp", 80),
            (VIP, "udp", 80),
        }
        assert doc["agent"]["reachable"] is False
    table = subprocess.run(
        netns_exec(lab, "status", "--metrics-address", METRICS),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    assert "dataplane: ebpf   frontends: 2" in table, table
    assert "agent: not reachable" in table

    done = subprocess.run(
        netns_exec(lab, "cleanup", "--run-dir", str(tmp_path / "run")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    assert "tc programs of gatewaylb" in done.stdout
    assert "gatewaylb_ebpf" in done.stdout
    assert our_tc_filters(lab) == []
    assert nft_tables(lab) == []
    assert lab.call(lab.client, tcp_ask, VIP, 80) not in {"be1", "be2"}
    again = subprocess.run(
        netns_exec(lab, "cleanup", "--run-dir", str(tmp_path / "run")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "nothing of gatewaylb's" in again.stdout


@pytest.fixture(params=["nftables", "ebpf"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Plane]:
    mode = str(request.param)
    if mode == "nftables":
        yield Plane(mode, None)
        return
    bpffs = tmp_path / "bpffs"
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    try:
        yield Plane(mode, bpffs)
    finally:
        subprocess.run(["umount", str(bpffs)], check=False)


@pytest.fixture()
def agent(lab: Lab, plane: Plane, tmp_path: Path) -> Iterator[AgentProcess]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    proc = AgentProcess(lab, plane, manifests, tmp_path / "status.json", tmp_path / "agent.log")
    yield proc
    if proc.alive():
        proc.stop()
    result = gatewaylb(lab, "cleanup", *plane.cleanup_args(), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr


def icmp_echo(addr: str) -> bool:
    """One ICMP echo request; True when a reply comes within a second."""
    request = struct.pack("!BBHHH", 8, 0, 0, 0x4C42, 1) + b"gatewaylb"
    padded = request + b"\0" * (len(request) % 2)
    total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    total = (total >> 16) + (total & 0xFFFF)
    checksum = ~(total + (total >> 16)) & 0xFFFF
    request = request[:2] + struct.pack("!H", checksum) + request[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(1.0)
        s.sendto(request, (addr, 0))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(1500)
            except TimeoutError:
                return False
            header = (data[0] & 0x0F) * 4
            if data[header] == 0 and data[header + 4 : header + 6] == b"\x4c\x42":
                return True
    return False


def unserved_packets(agent: AgentProcess) -> float:
    match = re.search(r"^gatewaylb_vip_unserved_packets_total (\S+)$", agent.metrics(), re.M)
    assert match, "gatewaylb_vip_unserved_packets_total is not exported"
    return float(match.group(1))


def test_vip_ports_without_a_listener_are_refused_not_forwarded(
    lab: Lab, agent: AgentProcess
) -> None:
    basic_manifests(agent.manifests, lab)
    host_service = lab.popen(
        lab.node,
        [
            sys.executable,
            "-c",
            "import socket,time\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {HOST_SERVICE_PORT})); s.listen()\n"
            "while True:\n"
            "    c,_=s.accept(); c.sendall(b'host-service\\n'); c.close()\n",
        ],
    )
    try:
        agent.start()
        assert lab.call(lab.client, tcp_ask, VIP, 80) in {"be1", "be2"}
        assert lab.call(lab.client, udp_ask, VIP, 80) == "be1"
        before = unserved_packets(agent)
        t0 = time.monotonic()
        assert lab.call(lab.client, tcp_ask, VIP, 81) == "refused"
        assert lab.call(lab.client, udp_ask, VIP, 81) == "refused"
        assert lab.call(lab.client, tcp_ask, VIP, HOST_SERVICE_PORT) == "refused"
        took = time.monotonic() - t0
        print(f"\nthree unserved VIP ports refused in {took * 1000:.0f} ms")
        assert took < 2.0
        # The node itself still reaches its own service; only VIP traffic is refused.
        assert lab.call(lab.client, tcp_ask, lab.node.ip4, HOST_SERVICE_PORT) == "host-service"
        # Other protocols to a VIP are dropped (counted), not forwarded either.
        assert lab.call(lab.client, icmp_echo, lab.node.ip4) is True  # the probe works
        assert lab.call(lab.client, icmp_echo, VIP) is False
        assert unserved_packets(agent) - before >= 4
        shown = gatewaylb(lab, "status", "--metrics-address", METRICS, *pin_args(agent.plane))
        assert re.search(r"refused at VIPs .*: [1-9]\d* packets", shown.stdout), shown.stdout
    finally:
        host_service.kill()
        host_service.wait()


def pin_args(plane: Plane) -> list[str]:
    return ["--bpf-pin-dir", str(plane.bpffs / "gatewaylb")] if plane.bpffs else []


BAD_GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bad, namespace: default}
spec:
  gatewayClassName: gatewaylb
  addresses: [{value: "10.99.0.99"}]
  listeners:
  - {name: tcp, protocol: TCP, port: 70000}
"""

TYPO_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: typo, namespace: default}
spec:
  parentRefs: [{name: demo, sectionNmae: tcp}]
  rules:
  - backendRefs: [{name: missing, port: 80}]
"""


def test_rejected_objects_and_typos_are_logged_once_and_counted(lab: Lab, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    basic_manifests(manifests, lab)
    write(manifests / "bad.yaml", BAD_GATEWAY)
    write(manifests / "typo.yaml", TYPO_ROUTE)
    agent = AgentProcess(
        lab, Plane("nftables", None), manifests, tmp_path / "status.json", tmp_path / "a.log"
    )
    agent.start()
    try:
        # Another sync that changes nothing about the rejected objects.
        write(manifests / "tcp.yaml", route_yaml("TCPRoute", "tcp", "tcp", {"blue": 1}))
        wait_for(lambda: agent.log.read_text().count("event=synced") >= 2, 10)
        text = agent.log.read_text()
        rejected = [ln for ln in text.splitlines() if "event=object_rejected" in ln]
        print("\n" + "\n".join(rejected))
        gateway = [ln for ln in rejected if "object='default/bad'" in ln]
        assert len(gateway) == 1, rejected
        assert "spec.listeners[0].port: must be at most 65535" in gateway[0]
        assert f"source='{manifests / 'bad.yaml'}:1'" in gateway[0]
        route = [ln for ln in rejected if "object='default/typo'" in ln]
        assert len(route) == 1 and "reason=BackendNotFound" in route[0], rejected
        typo = [ln for ln in text.splitlines() if "sectionNmae" in ln]
        assert len(typo) == 1 and "did you mean" in typo[0], typo
        assert "event=manifest_warning" in typo[0]
        assert re.search(r"event=synced .* rejected=2 ", text)
        metrics = agent.metrics()
        assert 'gatewaylb_rejected_objects{kind="Gateway",reason="Invalid"} 1.0' in metrics
        assert 'gatewaylb_rejected_objects{kind="TCPRoute",reason="BackendNotFound"} 1.0' in (
            metrics
        )
        assert 'gatewaylb_status_writer{reason="",state="file"} 1.0' in metrics
        assert "gatewaylb_source_warnings 1.0" in metrics
        shown = gatewaylb(lab, "status", "--metrics-address", METRICS)
        assert "status writer: file" in shown.stdout, shown.stdout
        assert "Gateway Invalid: 1" in shown.stdout, shown.stdout

        # Fixed: said once, and the count goes.
        write(manifests / "bad.yaml", BAD_GATEWAY.replace("70000", "7000"))
        wait_for(
            lambda: (
                "event=object_accepted kind=Gateway object='default/bad'" in (agent.log.read_text())
            ),
            10,
        )
        wait_for(lambda: 'kind="Gateway"' not in agent.metrics(), 5)
    finally:
        agent.stop()
        gatewaylb(lab, "cleanup", "--run-dir", str(tmp_path / "run"))


def test_cleanup_without_flags_removes_a_run_with_pins_and_cgroup_hooks_elsewhere(
    lab: Lab, tmp_path: Path
) -> None:
    """A run with its own pin directory and cgroup, killed: `status` and
    `cleanup` with no flags find both through the tc program's maps."""
    roots = cgroup2_mounts()
    if not roots:
        pytest.fail("no cgroup v2 hierarchy mounted: the socket hooks cannot be tested")
    cgroup = Path(roots[0]) / f"{lab.prefix}cgroup"
    cgroup.mkdir()
    bpffs = tmp_path / "bpffs"
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    basic_manifests(manifests, lab)
    try:
        pins = bpffs / "elsewhere"
        plane = Plane("ebpf", None)
        plane.args = lambda: [  # type: ignore[method-assign]
            "--dataplane", "ebpf", "--bpf-pin-dir", str(pins), "--cgroup-path", str(cgroup),
        ]  # fmt: skip
        agent = AgentProcess(lab, plane, manifests, tmp_path / "status.json", tmp_path / "a.log")
        agent.start()
        assert lab.call(lab.client, tcp_ask, VIP, 80) in {"be1", "be2"}
        assert len(find_cgroup_programs([str(cgroup)])) == 8
        agent.stop(signal.SIGKILL)

        shown = gatewaylb(lab, "status", "-o", "json", "--metrics-address", METRICS)
        doc = json.loads(shown.stdout)
        assert doc["dataplane"] == "ebpf" and len(doc["frontends"]) == 2, doc
        assert doc["kernel"]["pin_dirs"] == [str(pins)]
        assert len(doc["kernel"]["cgroup"]) == 8

        done = gatewaylb(lab, "cleanup", "--run-dir", str(tmp_path / "run"))
        print(done.stdout)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("removed: cgroup program glb_") == 8
        assert f"removed: pinned maps in {pins}" in done.stdout
        assert find_cgroup_programs([str(cgroup)]) == []
        assert not pins.exists()
        assert our_tc_filters(lab) == [] and nft_tables(lab) == []
        again = gatewaylb(lab, "cleanup", "--run-dir", str(tmp_path / "run"))
        assert again.returncode == 0 and "nothing of gatewaylb's" in again.stdout
    finally:
        gatewaylb(lab, "cleanup", "--cgroup-path", str(cgroup), "--bpf-pin-dir", str(pins))
        subprocess.run(["umount", str(bpffs)], check=False)
        cgroup.rmdir()


def test_a_vip_on_the_nodes_own_address_is_refused_and_its_traffic_untouched(
    lab: Lab, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    basic_manifests(manifests, lab)
    hijack = gateway_yaml(
        "- {name: tcp, protocol: TCP, port: 80}\n", vip=lab.node.ip4, name="hijack"
    ).split("---\n", 1)[1]
    write(manifests / "hijack.yaml", hijack)
    agent = AgentProcess(
        lab, Plane("nftables", None), manifests, tmp_path / "status.json", tmp_path / "a.log"
    )
    agent.start()
    try:
        gw = next(
            o["status"]
            for o in agent.status()["objects"]
            if o["kind"] == "Gateway" and o["metadata"]["name"] == "hijack"
        )
        programmed = next(c for c in gw["conditions"] if c["type"] == "Programmed")
        assert (programmed["status"], programmed["reason"]) == ("False", "AddressNotUsable")
        assert f"{lab.node.ip4} is an address of this node" in programmed["message"]
        shown = gatewaylb(lab, "status", "-o", "json", "--metrics-address", METRICS)
        vips = {f["vip"] for f in json.loads(shown.stdout)["frontends"]}
        assert vips == {VIP}, vips
        assert lab.call(lab.client, tcp_ask, VIP, 80) in {"be1", "be2"}
    finally:
        agent.stop()
        gatewaylb(lab, "cleanup", "--run-dir", str(tmp_path / "run"))
