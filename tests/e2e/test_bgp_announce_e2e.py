"""BGP announcement end to end, with real daemons.

Two nodes, each running a BGPAnnouncer in its own process (like an agent, so
it can be killed like one) and the gobgpd it manages, peer with a BIRD 2
router that installs the VIP with one next hop per node (ECMP, L4 hashing).
A client behind the router reaches both nodes.  Then, in this order: bad peers
are reported while the good ones work, peer changes are reloaded without a
restart, a not-ready VIP is withdrawn, an agent restart adopts gobgpd without
a flap, a gobgpd crash is bridged by graceful restart, a node that dies
silently is withdrawn within the hold time and comes back, a node whose link
goes down is withdrawn at once, and close(withdraw=True) withdraws and stops.

    client ── ec  router (BIRD, AS 64512)  e1 ── eth0 n1 (gobgpd, AS 64513)
      .3.2    .3.1                          .1.1   .1.2
                                            e2 ── eth0 n2 (gobgpd, AS 64513)
                                            .2.1   .2.2
    IPv4 10.77.N.0/24 and IPv6 fd00:77:N::/64 on every link, one session per
    family and node; n2's IPv6 session is iBGP (the router speaks AS 64513 on
    it).  The VIPs 10.99.0.50 and fd00:99::50 sit on each node's lo, where an
    echo server answers with the node's name.

The tests share one lab and run in file order (later ones kill nodes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.lab import netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        shutil.which("gobgpd") is None or shutil.which("bird") is None,
        reason="needs gobgpd and bird (Debian gobgpd, bird2)",
    ),
]

HELPER = Path(__file__).with_name("bgp_node.py")
VIP4 = "10.99.0.50"
VIP6 = "fd00:99::50"
PORT = 8080
ROUTER_ASN = 64512
NODE_ASN = 64513
HOLD = 3
# BIRD reads a quoted string verbatim (no escapes, no '"'): a backslash and
# TOML-significant characters prove the rendering on a real TCP-MD5 session.
BIRD_PASSWORD = "s3cr\\et 'x' #$ [y]"
# Every kind of character the TOML rendering must escape; checked through
# gobgpd's own API (a peer nobody answers, so no router has to agree).
NASTY_PASSWORD = 'q"uo\\te\nnew\tline \x7f ünï 🐝 ]#'


@dataclass(frozen=True)
class NodeSpec:
    name: str
    index: int

    @property
    def ip4(self) -> str:
        return f"10.77.{self.index}.2"

    @property
    def ip6(self) -> str:
        return f"fd00:77:{self.index}::2"

    @property
    def router4(self) -> str:
        return f"10.77.{self.index}.1"

    @property
    def router6(self) -> str:
        return f"fd00:77:{self.index}::1"


N1 = NodeSpec("n1", 1)
N2 = NodeSpec("n2", 2)


def peer(address: str, **kw: Any) -> dict[str, Any]:
    return {"address": address, "asn": ROUTER_ASN, "hold_time": HOLD, "keepalive_time": 1, **kw}


SETTINGS = {
    "n1": {
        "local_asn": NODE_ASN,
        "peers": [
            peer(N1.router4, password=BIRD_PASSWORD),
            peer(N1.router6),
            peer("10.77.1.300", source="cfg-bad-address"),
            peer("10.77.1.98", asn=0, source="cfg-bad-asn"),
            peer("10.77.1.99", password=NASTY_PASSWORD),
        ],
    },
    # n2's IPv6 session is iBGP (same AS): the next hop must still be n2's address.
    "n2": {"local_asn": NODE_ASN, "peers": [peer(N2.router4), peer(N2.router6, asn=NODE_ASN)]},
}


def announcements(ready: bool = True) -> list[dict[str, Any]]:
    return [
        {"vip": VIP4, "ready": ready, "gateways": ["ns/gw"]},
        {"vip": VIP6, "ready": ready, "gateways": ["ns/gw"]},
    ]


# -- the lab ---------------------------------------------------------------------------------


class NodeAgent:
    """bgp_node.py in a node's namespace: one BGPAnnouncer, driven by JSON lines."""

    def __init__(self, ns: str, node: NodeSpec, run_dir: Path, logf: Any) -> None:
        argv = netns.exec_argv(ns, [sys.executable, str(HELPER), node.name, str(run_dir)])
        self.node = node
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, text=True
        )

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"{self.node.name}: announcer process died"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def apply(self, ready: bool = True, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        settings = settings or SETTINGS[self.node.name]
        return self.call("apply", announcements=announcements(ready), settings=settings)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def kill(self) -> None:
        """SIGKILL, like an agent that crashed: gobgpd is not told."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class BGPLab(netns.NamespaceSet):
    def __init__(self) -> None:
        super().__init__()
        self.router = self.prefix + "router"
        self.client = self.prefix + "client"
        self.ns = {N1.name: self.prefix + "n1", N2.name: self.prefix + "n2"}
        self.tmp = Path(tempfile.mkdtemp(prefix="glb-bgp-"))
        self.bird_sock = self.tmp / "bird.ctl"
        self.agents: dict[str, NodeAgent] = {}
        self._logs: list[Any] = []

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        super().close()
        for f in self._logs:
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- building ------------------------------------------------------------------------------

    def _build(self) -> None:
        for name in (self.router, self.client, *self.ns.values()):
            self.add_namespace(name)
        self._link("ec", self.client, 3)
        netns.ip("route", "add", "default", "via", "10.77.3.1", ns=self.client)
        netns.ip("-6", "route", "add", "default", "via", "fd00:77:3::1", ns=self.client)
        for node in (N1, N2):
            ns = self.ns[node.name]
            self._link(f"e{node.index}", ns, node.index)
            netns.ip("route", "add", "default", "via", node.router4, ns=ns)
            netns.ip("-6", "route", "add", "default", "via", node.router6, ns=ns)
            netns.ip("addr", "add", f"{VIP4}/32", "dev", "lo", ns=ns)
            netns.ip("-6", "addr", "add", f"{VIP6}/128", "dev", "lo", ns=ns)
            self._start_echo(ns, node.name)
        for key, value in (
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            # Hash on ports too, so one client spreads its connections.
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ):
            netns.sysctl(self.router, key, value)
        self._start_bird()

    def _link(self, router_dev: str, ns: str, index: int) -> None:
        veth = ["link", "add", router_dev, "type", "veth", "peer", "name", "eth0", "netns", ns]
        netns.ip(*veth, ns=self.router)
        for where, dev, host in ((self.router, router_dev, 1), (ns, "eth0", 2)):
            netns.ip("addr", "add", f"10.77.{index}.{host}/24", "dev", dev, ns=where)
            netns.ip(
                "-6", "addr", "add", f"fd00:77:{index}::{host}/64", "dev", dev, "nodad", ns=where
            )
            netns.ip("link", "set", dev, "up", ns=where)

    def _log(self, name: str) -> Any:
        f = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 (closed in close())
        self._logs.append(f)
        return f

    def _start_echo(self, ns: str, name: str) -> None:
        argv = [sys.executable, "-m", "agent.lab.echo", "--tcp", str(PORT), "--name", name]
        proc = self.popen(ns, argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if b"ready" not in proc.stdout.readline():
            raise netns.LabError(f"echo server in {ns} did not start")

    def _start_bird(self) -> None:
        conf = self.tmp / "bird.conf"
        conf.write_text(bird_config())
        argv = ["bird", "-f", "-c", str(conf), "-s", str(self.bird_sock)]
        self.popen(self.router, argv, stderr=self._log("bird"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.birdc("show", "status", check=False).startswith("BIRD"):
                return
            time.sleep(0.05)
        raise netns.LabError(f"bird did not start: {(self.tmp / 'bird.log').read_text()}")

    # -- using -----------------------------------------------------------------------------------

    def start_agent(self, node: NodeSpec) -> NodeAgent:
        run_dir = self.tmp / node.name
        run_dir.mkdir(exist_ok=True)
        agent = NodeAgent(self.ns[node.name], node, run_dir, self._log(f"agent-{node.name}"))
        self.agents[node.name] = agent
        return agent

    def birdc(self, *args: str, check: bool = True) -> str:
        out = subprocess.run(
            ["birdc", "-s", str(self.bird_sock), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if check and out.returncode != 0:
            raise netns.LabError(f"birdc {args}: {out.stdout} {out.stderr}")
        return out.stdout

    def bird_session(self, proto: str) -> tuple[str, str]:
        """(state info, since) of a BIRD BGP protocol, e.g. ("Established", "03:45:58.821")."""
        for line in self.birdc("show", "protocols", proto).splitlines():
            cols = line.split()
            if cols and cols[0] == proto:
                return (cols[5] if len(cols) > 5 else cols[3], cols[4])
        return ("missing", "")

    def bird_same_session(self, proto: str, before: tuple[str, str]) -> bool:
        """Still the session `before` (as bird_session gave it): Established,
        and since the same time.  BIRD prints that time from its monotonic
        clock against the wall clock, so it may move by a millisecond between
        two readings; a session reset moves it by seconds (reconnecting)."""
        state, since = self.bird_session(proto)
        if state != before[0]:
            return False
        return abs(_seconds(since) - _seconds(before[1])) < 0.5

    def bird_next_hops(self, vip: str) -> frozenset[str]:
        """BGP.next_hop of every path BIRD holds for the VIP's host route."""
        prefix = f"{vip}/128" if ":" in vip else f"{vip}/32"
        out = self.birdc("show", "route", prefix, "all")
        return frozenset(
            line.split(":", 1)[1].split()[0] for line in out.splitlines() if "BGP.next_hop:" in line
        )

    def next_hops(self, vip: str) -> frozenset[str]:
        """Gateways of the router's kernel route to `vip` (one per node with ECMP)."""
        fam = "-6" if ":" in vip else "-4"
        out = netns.ip("-j", fam, "route", "show", vip, ns=self.router)
        hops: set[str] = set()
        for route in json.loads(out or "[]"):
            for hop in route.get("nexthops", [route]):
                if "gateway" in hop:
                    hops.add(hop["gateway"])
        return frozenset(hops)


def _tcp_hello(vip: str, sport: int) -> str | None:
    """One TCP connection from source port `sport`: the name of the node that
    answered, or None."""
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(1.0)
        try:
            s.bind(("", sport))
            s.connect((vip, PORT))
            s.sendall(b"hi\n")
            return s.recv(100).decode().split()[0]
        except OSError:
            return None


def gobgp_json(lab: BGPLab, node: NodeSpec, *args: str) -> Any:
    argv = ["gobgp", "-p", "50052", *args, "-j"]
    return json.loads(netns.run(netns.exec_argv(lab.ns[node.name], argv)))


def spread(lab: BGPLab, ports: range, vip: str = VIP4) -> list[str | None]:
    worker = netns.NetnsWorker(lab.client)
    try:
        return [worker.call(_tcp_hello, vip, p) for p in ports]
    finally:
        worker.close()


def bird_config() -> str:
    def session(name: str, addr: str, family: str, password: str = "") -> str:
        pw = f' password "{password}";' if password else ""
        return f"protocol bgp {name} from node{family} {{ neighbor {addr} as {NODE_ASN};{pw} }}\n"

    templates = "".join(
        f"""
template bgp node{fam} {{
  local as {ROUTER_ASN};
  hold time {HOLD};
  keepalive time 1;
  passive on;               # the nodes' gobgpd never listens
  error wait time 1, 2;     # not 60 s before a node that failed may come back
  graceful restart on;
  {fam} {{ import all; export none; }};
}}
"""
        for fam in ("ipv4", "ipv6")
    )
    return (
        f"""router id 10.77.3.1;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ merge paths on; ipv4 {{ import none; export all; }}; }}
protocol kernel k6 {{ merge paths on; ipv6 {{ import none; export all; }}; }}
{templates}"""
        + session("n1v4", N1.ip4, "ipv4", BIRD_PASSWORD)
        + session("n1v6", N1.ip6, "ipv6")
        + session("n2v4", N2.ip4, "ipv4")
        # iBGP: BIRD's "gateway direct" uses the BGP next hop as it came, so
        # the route only works if gobgpd sent n2's own on-link address.
        + f"protocol bgp n2v6 from nodeipv6 {{ local as {NODE_ASN}; neighbor {N2.ip6} as "
        f"{NODE_ASN}; direct; ipv6 {{ gateway direct; }}; }}\n"
    )


# -- watching the router ---------------------------------------------------------------------


@dataclass
class RouteWatch:
    """Samples the router's next hops for a VIP every 20 ms in a thread."""

    lab: BGPLab
    vip: str = VIP4
    samples: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RouteWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, self.lab.next_hops(self.vip)))
            time.sleep(0.02)

    def missing(self, hop: str) -> list[float]:
        return [t for t, hops in self.samples if hop not in hops]


def wait_for(what: str, predicate: Any, timeout: float, interval: float = 0.05) -> float:
    """Seconds until predicate() is true; fails after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def established(agent: NodeAgent, *peers: str) -> bool:
    states = agent.status()["peers"]
    return all(states.get(p) == "established" for p in peers)


# -- the tests ---------------------------------------------------------------------------------


def _seconds(clock: str) -> float:
    """Seconds since midnight of a BIRD time of day, "03:45:58.821"."""
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.fixture(scope="module")
def lab() -> Iterator[BGPLab]:
    with BGPLab() as lab:
        t0 = time.monotonic()
        for node in (N1, N2):
            lab.start_agent(node).apply()
        for node in (N1, N2):
            agent = lab.agents[node.name]
            wait_for(
                f"{node.name} sessions",
                lambda a=agent, n=node: established(a, n.router4, n.router6),
                timeout=30,
                interval=0.1,
            )
        print(f"\nsessions established {time.monotonic() - t0:.1f}s after the first apply")
        yield lab


def test_router_installs_the_vip_with_both_nodes_and_flows_reach_both(lab: BGPLab) -> None:
    both4 = frozenset({N1.ip4, N2.ip4})
    wait_for("ECMP route", lambda: lab.next_hops(VIP4) == both4, 5)
    # gobgpd wrote each session's local address as next hop: on eBGP
    # (IPv4 for both, IPv6 for n1) and on iBGP (IPv6 for n2), and sent the
    # IPv6 VIP over the IPv6 sessions only.
    both6 = frozenset({N1.ip6, N2.ip6})
    wait_for("both IPv6 paths", lambda: lab.bird_next_hops(VIP6) == both6, 5)
    assert lab.bird_next_hops(VIP4) == both4
    # BIRD prefers the iBGP path (shorter AS path): no ECMP for IPv6 here.
    assert len(lab.next_hops(VIP6)) == 1 and lab.next_hops(VIP6) <= both6
    for node in (N1, N2):
        assert lab.agents[node.name].status()["advertised"] == sorted([VIP4, VIP6])
    answers = spread(lab, range(42000, 42064))
    assert None not in answers
    assert set(answers) == {"n1", "n2"}, answers
    assert None not in spread(lab, range(43000, 43004), VIP6)
    print(f"64 IPv4 flows: n1={answers.count('n1')} n2={answers.count('n2')}")


def test_bad_peers_are_reported_and_the_good_ones_work(lab: BGPLab) -> None:
    status = lab.agents["n1"].status()
    problems = status["problems"]
    assert any(
        "'10.77.1.300'" in p and "cfg-bad-address" in p and "not an IP" in p for p in problems
    )
    assert any("'10.77.1.98'" in p and "ASN 0" in p for p in problems), problems
    assert len(problems) == 2, problems
    assert status["peers"][N1.router4] == "established"  # with the TCP-MD5 password
    assert set(status["peers"]) == {N1.router4, N1.router6, "10.77.1.99"}
    # The password survived TOML rendering and gobgpd's parser byte for byte.
    conf = {p["conf"]["neighbor_address"]: p["conf"] for p in gobgp_json(lab, N1, "neighbor")}
    assert conf["10.77.1.99"]["auth_password"] == NASTY_PASSWORD
    assert conf[N1.router4]["auth_password"] == BIRD_PASSWORD
    # No router id configured: the source address of the route to the first peer.
    assert gobgp_json(lab, N1, "global")["router_id"] == N1.ip4


def test_peer_changes_are_reloaded_without_touching_other_sessions(lab: BGPLab) -> None:
    n1 = lab.agents["n1"]
    pid = n1.status()["pid"]
    since = lab.bird_session("n1v4")
    changed = dict(SETTINGS["n1"])
    changed["peers"] = [p for p in changed["peers"] if p["address"] != "10.77.1.99"] + [
        peer("10.77.1.97")
    ]
    n1.apply(settings=changed)
    # apply() returns once gobgpd shows the new neighbour set (SIGHUP applied).
    assert set(n1.status()["peers"]) == {N1.router4, N1.router6, "10.77.1.97"}
    n1.apply()
    assert set(n1.status()["peers"]) == {N1.router4, N1.router6, "10.77.1.99"}
    assert n1.status()["pid"] == pid, "a peer change must not restart gobgpd"
    assert lab.bird_same_session("n1v4", since), "an unrelated session was reset"


def test_a_vip_that_is_not_ready_is_withdrawn(lab: BGPLab) -> None:
    n2 = lab.agents["n2"]
    t0 = time.monotonic()
    n2.apply(ready=False)
    wait_for("n2 withdrawn", lambda: lab.next_hops(VIP4) == {N1.ip4}, 5)
    gone = time.monotonic() - t0
    assert n2.status()["advertised"] == []
    assert set(spread(lab, range(44000, 44016))) == {"n1"}
    t0 = time.monotonic()
    n2.apply(ready=True)
    wait_for("n2 back", lambda: lab.next_hops(VIP4) == {N1.ip4, N2.ip4}, 5)
    back = time.monotonic() - t0
    print(f"\nnot ready: withdrawn from the router in {gone:.2f}s, back in {back:.2f}s")


def test_agent_restart_adopts_gobgpd_and_the_route_never_flaps(lab: BGPLab) -> None:
    pid = lab.agents["n1"].status()["pid"]
    since = lab.bird_session("n1v4")
    pidfile = lab.tmp / "n1" / "bgp" / "gobgpd.pid"
    with RouteWatch(lab) as watch:
        for lose_pidfile in (False, True):
            lab.agents["n1"].kill()
            if lose_pidfile:  # as if the agent died before writing it
                pidfile.unlink()
            new = lab.start_agent(N1)
            new.apply()
            assert new.status()["pid"] == pid, "the new agent must adopt the running gobgpd"
        time.sleep(HOLD + 0.5)  # long enough for a lost session to show
    assert not watch.missing(N1.ip4), f"route lost n1 at {watch.missing(N1.ip4)[:5]}"
    assert lab.bird_same_session("n1v4", since), "the BGP session was reset"
    assert established(new, N1.router4, N1.router6)
    print(f"\nagent restarts: {len(watch.samples)} samples, route never lost n1")


def test_gobgpd_crash_is_bridged_by_graceful_restart(lab: BGPLab) -> None:
    agent = lab.agents["n1"]
    pid = agent.status()["pid"]
    with RouteWatch(lab) as watch:
        os.kill(pid, signal.SIGKILL)  # the TCP sessions close without a Cease
        wait_for(
            "BIRD to see the session drop", lambda: lab.bird_session("n1v4")[0] != "Established", 5
        )
        t0 = time.monotonic()
        agent.apply()  # the agent's periodic apply finds gobgpd dead
        assert agent.status()["pid"] not in (None, pid)
        wait_for("n1 re-established", lambda: established(agent, N1.router4), 20, 0.1)
        reestablish = time.monotonic() - t0
        time.sleep(1.0)  # End-of-RIB processed; stale routes would go now
    lost = watch.missing(N1.ip4)
    print(f"\ngraceful restart: session back in {reestablish:.1f}s; route held: {not lost}")
    assert not lost, f"route lost n1 at {lost[:5]} (of {watch.samples[-1][0]:.1f}s)"


def kill_node(lab: BGPLab, node: NodeSpec) -> None:
    """The node's agent and its gobgpd die at once (SIGKILL)."""
    agent = lab.agents[node.name]
    pid = agent.status()["pid"]
    agent.kill()
    os.kill(pid, signal.SIGKILL)


DROP_EGRESS = (
    "add table inet bgptest { chain out { type filter hook output priority 0; policy drop; }; }"
)


def test_a_node_that_dies_silently_is_withdrawn_after_the_hold_time(lab: BGPLab) -> None:
    # A node that stops answering with its link up (a hung kernel, a switch in
    # between): only the hold timer can tell.  Its egress is dropped first so
    # that no FIN from the dying gobgpd reaches the router, which BIRD would
    # rightly take for a graceful restart and keep the route for.
    netns.run(netns.exec_argv(lab.ns["n2"], ["nft", DROP_EGRESS]))
    t0 = time.monotonic()
    kill_node(lab, N2)
    wait_for("n2 withdrawn", lambda: N2.ip4 not in lab.next_hops(VIP4), HOLD + 3, 0.02)
    gone = time.monotonic() - t0
    print(f"\nsilent node death: withdrawn after {gone:.2f}s (hold time {HOLD}s)")
    assert gone < HOLD + 1.0
    assert lab.next_hops(VIP4) == {N1.ip4}
    answers = spread(lab, range(45000, 45032))
    assert answers == ["n1"] * 32, answers


def test_a_revived_node_rejoins(lab: BGPLab) -> None:
    netns.run(netns.exec_argv(lab.ns["n2"], ["nft", "delete", "table", "inet", "bgptest"]))
    t0 = time.monotonic()
    lab.start_agent(N2).apply()  # finds the dead gobgpd's pid file, starts anew
    wait_for("n2 back", lambda: N2.ip4 in lab.next_hops(VIP4), 20, 0.1)
    print(f"\nrevived node: route back {time.monotonic() - t0:.1f}s after its first apply")
    assert set(spread(lab, range(46000, 46032))) == {"n1", "n2"}


def test_a_node_whose_link_goes_down_is_withdrawn_at_once(lab: BGPLab) -> None:
    # Link first, for the same reason as above (no FIN may reach the router).
    t0 = time.monotonic()
    netns.ip("link", "set", "eth0", "down", ns=lab.ns["n2"])
    kill_node(lab, N2)
    wait_for("n2 withdrawn", lambda: N2.ip4 not in lab.next_hops(VIP4), HOLD + 3, 0.02)
    gone = time.monotonic() - t0
    # BIRD watches the link of a directly connected neighbour ("Error: Link
    # down") and does not wait for the hold timer.
    print(f"\nnode link down: withdrawn after {gone:.2f}s")
    assert gone < HOLD + 1.0
    assert spread(lab, range(47000, 47032)) == ["n1"] * 32


def test_close_with_withdraw_removes_the_route_and_stops_gobgpd(lab: BGPLab) -> None:
    n1 = lab.agents["n1"]
    pid = n1.status()["pid"]
    n1.call("close", withdraw=True)
    gone = wait_for("n1 withdrawn", lambda: not lab.next_hops(VIP4), 3)
    assert (
        not Path(f"/proc/{pid}").exists()
        or "gobgpd" not in Path(f"/proc/{pid}/cmdline").read_text()
    )
    status = n1.status()
    assert (status["peers"], status["advertised"], status["pid"]) == ({}, [], None)
    print(f"\nclose(withdraw=True): route gone in {gone:.2f}s")
