"""BGP announcement of VIPs through a gobgpd this agent manages.

Owns one gobgpd per node and everything under `<run_dir>/bgp/`:

    gobgpd.toml     the configuration in force (replaced atomically, mode 0600:
                    it holds the peers' TCP-MD5 passwords)
    gobgpd.pid      the daemon's pid (gobgpd writes none itself)
    gobgpd.log      its log (the previous daemon's in gobgpd.log.1)

and the host routes (/32, /128) of VIPs in that daemon's global RIB.  It never
touches a system gobgpd or BIRD service or their files, routes learned from
peers, or RIB entries other than host routes.  It announces what it is told:
which VIP a Gateway gets and whether it is ready is decided elsewhere.

Model: MetalLB's BGP mode (a speaker per node advertises each ready VIP as a
host route and the router spreads flows over the nodes with ECMP) and
agent/proxy/worker.py (a daemon under the run dir, adopted after an agent
restart).  The design rests on these facts, read in gobgpd 3.10's source and
measured against BIRD 2.0.12 (tests/e2e/test_bgp_announce_e2e.py proves the
behaviour built on them):

- SIGHUP re-reads the file and applies neighbour additions, removals and
  changes (a changed session parameter resets that one session) but ignores
  the global section: a changed AS or router id restarts the daemon.
- Paths go in with an unspecified next hop (0.0.0.0, ::).  gobgpd then writes
  the session's local address into every UPDATE, for eBGP and iBGP alike:
  this node's address on the link towards that peer, the next hop the router
  must use.  An explicit next hop would be sent verbatim (a "third-party" next
  hop on eBGP) and be wrong for peers on other links.
- For the same reason a session carries only its own address family: an IPv6
  VIP over an IPv4 session gets the IPv4 session address as next hop, which
  BIRD rejects ("mismatched address family").
- gobgpd first connects 5-10 s after a neighbour appears, then retries every
  [connect-retry, 2*connect-retry) s with a floor of 5 s; the default
  connect-retry is 120 s, so a router unreachable at the first attempt would
  wait minutes.  connect-retry is set to the floor.
- The daemon does not listen (port -1): the node always opens the sessions.
  Port 179 stays free for whatever else runs on the host and is not open on
  every VIP; and as no session can start before that first connect, a
  restarted daemon always holds its paths before it sends End-of-RIB.
- Graceful restart: the daemon starts with `-r`, so its OPEN carries the
  forwarding-state bit; without it BIRD flushes a restarting node's stale
  routes the moment the new session opens (observed: a moment with one next
  hop).  The bit is honest: the VIP dataplane keeps forwarding while gobgpd
  is down.  Selection deferral is 1 s because we import nothing to wait for.
  The flip side: a gobgpd that dies on a live node closes its sessions (the
  kernel sends FIN) and the peers keep its routes for restart_time, so the
  agent's periodic apply must bring it back well within that.  A dead node
  sends nothing; the peer's hold timer withdraws it.
- Routes learned from peers are rejected on import: a node must never become
  transit between two routers, and the global RIB then holds only our paths.
- The daemon runs in its own session and close(withdraw=False) leaves it
  running: a restarted agent adopts it (pid file, command line, API) and no
  session flaps.  A kill of the whole container or cgroup takes it down too;
  graceful restart then keeps the routes at the peers until the next daemon
  is back.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from agent.osutil import alive, terminate, write_atomically
from agent.state import Announcement, BGPPeer, BGPSettings

log = logging.getLogger(__name__)

SUBDIR = "bgp"
CONFIG = "gobgpd.toml"
PIDFILE = "gobgpd.pid"
LOGFILE = "gobgpd.log"

ASN_MAX = 4294967295
# gobgpd clamps connect-retry to at least 5 s (pkg/server/fsm.go).
CONNECT_RETRY = 5
# We import no route, so there is nothing to wait for before advertising.
DEFERRAL_TIME = 1
RESTART_TIME_MAX = 4095  # 12 bits in the graceful-restart capability
TCP_MD5_KEY_MAX = 80  # bytes, TCP_MD5SIG_MAXKEYLEN
START_TIMEOUT = 10.0
PATH_WORKERS = 8  # gobgp CLI processes at once when adding or withdrawing paths
RELOAD_TIMEOUT = 5.0
CLI_TIMEOUT = 10.0

# api.PeerState_SessionState; JSON leaves out 0 (unknown).
SESSION_STATES = {
    0: "unknown",
    1: "idle",
    2: "connect",
    3: "active",
    4: "opensent",
    5: "openconfirm",
    6: "established",
}

POLICY = "gatewaylb-reject-learned"
NEIGHBOR_SET = "gatewaylb-all-peers"


class BGPError(RuntimeError):
    pass


# -- the configuration as data -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A validated peer, ready to render."""

    address: str  # normalised
    asn: int
    port: int
    hold_time: int
    keepalive_time: int  # 0 = a third of the hold time (gobgpd's default)
    ebgp_multihop: int
    password: str = field(default="", repr=False)

    @property
    def family(self) -> str:
        return "ipv6-unicast" if ":" in self.address else "ipv4-unicast"


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    asn: int
    router_id: str
    listen_port: int = -1


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    global_: GlobalConfig
    peers: tuple[PeerConfig, ...]
    graceful_restart: bool
    restart_time: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What `plan` makes of the settings: a config, or None when the settings
    as a whole are unusable, and the problems found."""

    config: DaemonConfig | None
    problems: tuple[str, ...]


# -- validation ------------------------------------------------------------------------------


def peer_name(peer: BGPPeer) -> str:
    where = f" (from {peer.source})" if peer.source else ""
    return f"BGP peer {peer.address!r}{where}"


def peer_problem(peer: BGPPeer) -> str | None:
    """Why `peer` cannot be configured, or None."""
    try:
        addr = ipaddress.ip_address(peer.address)
    except ValueError:
        return "address is not an IP address"
    if addr.is_unspecified or addr.is_multicast:
        return "address cannot be a BGP neighbour"
    if addr.is_link_local and addr.version == 6:
        # gobgpd would need the interface (fe80::1%eth0); not supported here.
        return "IPv6 link-local neighbours are not supported"
    if not 1 <= peer.asn <= ASN_MAX:
        return f"ASN {peer.asn} is out of range 1..{ASN_MAX}"
    if not 1 <= peer.port <= 65535:
        return f"port {peer.port} is out of range 1..65535"
    if not 3 <= peer.hold_time <= 65535:
        # 0 (no keepalives) is legal BGP, but gobgpd reads 0 as "use 90 s".
        return f"hold time {peer.hold_time} is out of range 3..65535"
    if not 0 <= peer.keepalive_time < peer.hold_time:
        return f"keepalive time {peer.keepalive_time} must be below the hold time"
    if not 0 <= peer.ebgp_multihop <= 255:
        return f"eBGP multihop TTL {peer.ebgp_multihop} is out of range 0..255"
    return _password_problem(peer.password)


def _password_problem(password: str) -> str | None:
    try:
        key = password.encode()
    except UnicodeEncodeError:
        return "password is not valid Unicode text"
    if len(key) > TCP_MD5_KEY_MAX:
        return f"password is longer than {TCP_MD5_KEY_MAX} bytes (TCP-MD5 limit)"
    return None


def validate_peers(peers: Sequence[BGPPeer]) -> tuple[tuple[PeerConfig, ...], tuple[str, ...]]:
    """The usable peers (in order, first of a duplicated address wins) and a
    message for each one left out."""
    good: list[PeerConfig] = []
    problems: list[str] = []
    seen: set[str] = set()
    for peer in peers:
        reason = peer_problem(peer)
        if reason is not None:
            problems.append(f"{peer_name(peer)}: {reason}; peer skipped")
            continue
        address = str(ipaddress.ip_address(peer.address))
        if address in seen:
            problems.append(f"{peer_name(peer)}: configured more than once; duplicate skipped")
            continue
        seen.add(address)
        good.append(
            PeerConfig(
                address=address,
                asn=peer.asn,
                port=peer.port,
                hold_time=peer.hold_time,
                keepalive_time=peer.keepalive_time,
                ebgp_multihop=peer.ebgp_multihop,
                password=peer.password,
            )
        )
    return tuple(good), tuple(problems)


def settings_problems(settings: BGPSettings) -> tuple[str, ...]:
    """Problems with the node-wide settings; any of them means no config."""
    problems: list[str] = []
    if not 1 <= settings.local_asn <= ASN_MAX:
        problems.append(f"BGP local ASN {settings.local_asn} is out of range 1..{ASN_MAX}")
    if settings.router_id and not _is_router_id(settings.router_id):
        problems.append(f"BGP router id {settings.router_id!r} is not an IPv4 address")
    if settings.graceful_restart and not 1 <= settings.restart_time <= RESTART_TIME_MAX:
        problems.append(
            f"BGP graceful-restart time {settings.restart_time} is out of range "
            f"1..{RESTART_TIME_MAX}"
        )
    return tuple(f"{p}; BGP configuration not applied" for p in problems)


def _is_router_id(value: str) -> bool:
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return not addr.is_unspecified


def fallback_router_id(node_name: str) -> str:
    """A stable 32-bit id from the node name, for nodes without an IPv4 path
    to their first peer (IPv6-only): the router id must be 32 bits."""
    value = int.from_bytes(hashlib.sha256(node_name.encode()).digest()[:4], "big")
    return str(ipaddress.IPv4Address(value if 0 < value < 0xFFFFFFFF else 1))


def plan(
    settings: BGPSettings,
    node_name: str,
    route_source: Callable[[str], str | None],
) -> Plan:
    """Settings to a daemon config.  `route_source(peer)` is the preferred
    source address towards a peer (the kernel's choice), for the router id."""
    problems = settings_problems(settings)
    peers, peer_problems = validate_peers(settings.peers)
    if problems:
        return Plan(None, problems + peer_problems)
    router_id = str(ipaddress.IPv4Address(settings.router_id)) if settings.router_id else ""
    if not router_id:
        source = route_source(peers[0].address) if peers else None
        router_id = source if source and _is_router_id(source) else fallback_router_id(node_name)
    config = DaemonConfig(
        GlobalConfig(settings.local_asn, router_id),
        peers,
        settings.graceful_restart,
        settings.restart_time,
    )
    return Plan(config, peer_problems)


def desired_vips(announcements: Iterable[Announcement]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Normalised addresses of the ready VIPs, and messages for unusable ones."""
    vips: set[str] = set()
    problems: list[str] = []
    for ann in announcements:
        try:
            addr = ipaddress.ip_address(ann.vip)
        except ValueError:
            problems.append(f"VIP {ann.vip!r} (gateways {', '.join(ann.gateways)}): not an IP")
            continue
        if ann.ready:
            vips.add(str(addr))
    return frozenset(vips), tuple(problems)


# -- rendering -------------------------------------------------------------------------------

_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(value: str) -> str:
    """A TOML basic string.  Not json.dumps: JSON writes characters beyond
    the BMP as surrogate pairs, which TOML forbids.  Control characters and
    DEL (illegal raw in TOML) become \\uXXXX; the rest is written as is."""
    out = ['"']
    for ch in value:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def render_config(config: DaemonConfig) -> str:
    """The gobgpd TOML for `config`; deterministic (equal configs, equal text)."""
    g = config.global_
    lines = [
        "# Written by gatewaylb; replaced atomically and reloaded with SIGHUP.",
        "[global.config]",
        f"  as = {g.asn}",
        f"  router-id = {toml_string(g.router_id)}",
        f"  port = {g.listen_port}",
        "",
        *_render_import_policy(),
    ]
    for peer in config.peers:
        lines += ["", *_render_peer(peer, config)]
    return "\n".join(lines) + "\n"


def _render_import_policy() -> list[str]:
    # The default import policy would also reject our own paths (a global
    # import policy sees local paths too); a neighbour set covering every
    # address matches exactly the paths that came from a peer.
    return [
        "[global.apply-policy.config]",
        f"  import-policy-list = [{toml_string(POLICY)}]",
        '  default-import-policy = "accept-route"',
        "",
        "[[defined-sets.neighbor-sets]]",
        f"  neighbor-set-name = {toml_string(NEIGHBOR_SET)}",
        f"  neighbor-info-list = [{toml_string('0.0.0.0/0')}, {toml_string('::/0')}]",
        "",
        "[[policy-definitions]]",
        f"  name = {toml_string(POLICY)}",
        "  [[policy-definitions.statements]]",
        '    name = "from-any-peer"',
        "    [policy-definitions.statements.conditions.match-neighbor-set]",
        f"      neighbor-set = {toml_string(NEIGHBOR_SET)}",
        "    [policy-definitions.statements.actions]",
        '      route-disposition = "reject-route"',
    ]


def _render_peer(peer: PeerConfig, config: DaemonConfig) -> list[str]:
    lines = [
        "[[neighbors]]",
        "  [neighbors.config]",
        f"    neighbor-address = {toml_string(peer.address)}",
        f"    peer-as = {peer.asn}",
    ]
    if peer.password:
        lines.append(f"    auth-password = {toml_string(peer.password)}")
    lines += [
        "  [neighbors.transport.config]",
        f"    remote-port = {peer.port}",
        "  [neighbors.timers.config]",
        f"    connect-retry = {CONNECT_RETRY}",
        f"    hold-time = {peer.hold_time}",
    ]
    if peer.keepalive_time:
        lines.append(f"    keepalive-interval = {peer.keepalive_time}")
    # iBGP sessions are not TTL-limited by gobgpd; multihop matters for eBGP only.
    if peer.ebgp_multihop and peer.asn != config.global_.asn:
        lines += [
            "  [neighbors.ebgp-multihop.config]",
            "    enabled = true",
            f"    multihop-ttl = {peer.ebgp_multihop}",
        ]
    if config.graceful_restart:
        lines += [
            "  [neighbors.graceful-restart.config]",
            "    enabled = true",
            f"    restart-time = {config.restart_time}",
            f"    deferral-time = {DEFERRAL_TIME}",
        ]
    lines += [
        "  [[neighbors.afi-safis]]",
        "    [neighbors.afi-safis.config]",
        f"      afi-safi-name = {toml_string(peer.family)}",
    ]
    if config.graceful_restart:
        lines += ["    [neighbors.afi-safis.mp-graceful-restart.config]", "      enabled = true"]
    return lines


# -- parsing gobgp's JSON ----------------------------------------------------------------------


def parse_rib(text: str) -> frozenset[str]:
    """VIPs with a path of our own in `gobgp global rib -a FAMILY -j` output.

    Only host routes (/32, /128) from no neighbour count: a path learned from
    a peer carries "neighbor-ip", and other prefixes are not ours to manage."""
    data = json.loads(text or "{}")
    vips: set[str] = set()
    if not isinstance(data, Mapping):
        raise BGPError(f"unexpected RIB listing: {text[:200]!r}")
    for prefix, paths in data.items():
        try:
            net = ipaddress.ip_network(prefix)
        except ValueError:
            continue
        if net.prefixlen != net.max_prefixlen or not isinstance(paths, list):
            continue
        if any(isinstance(p, Mapping) and not p.get("neighbor-ip") for p in paths):
            vips.add(str(net.network_address))
    return frozenset(vips)


def parse_neighbors(text: str) -> dict[str, str]:
    """Peer address -> FSM state (lower case) from `gobgp neighbor -j`."""
    data = json.loads(text or "[]")
    if not isinstance(data, list):
        raise BGPError(f"unexpected neighbour listing: {text[:200]!r}")
    states: dict[str, str] = {}
    for peer in data:
        if not isinstance(peer, Mapping):
            continue
        state = peer.get("state") or {}
        conf = peer.get("conf") or {}
        address = conf.get("neighbor_address") or state.get("neighbor_address")
        if not address:
            continue
        code = state.get("session_state", 0)
        states[str(address)] = SESSION_STATES.get(code, f"state-{code}")
    return states


def parse_global(text: str) -> GlobalConfig | None:
    """The running daemon's global settings from `gobgp global -j`; None
    while it has none (started, initial configuration not read yet)."""
    data = json.loads(text or "{}")
    if not isinstance(data, Mapping) or not data.get("asn"):
        return None
    return GlobalConfig(int(data["asn"]), str(data.get("router_id", "")), _port(data))


def _port(data: Mapping[str, Any]) -> int:
    # listen_port is left out of the JSON when 0 (gobgpd's "default 179").
    return int(data.get("listen_port", 0))


# -- the announcer ---------------------------------------------------------------------------


class BGPAnnouncer:
    """Announces ready VIPs through one gobgpd rooted at `run_dir / "bgp"`.

    Synchronous and thread-safe; every call runs gobgp/gobgpd processes in the
    caller's network namespace.  No method raises for bad settings or a
    failing daemon: `problems()` says what is wrong.
    """

    def __init__(
        self,
        node_name: str,
        run_dir: Path,
        api_port: int = 50052,
        *,
        gobgpd: str = "gobgpd",
        gobgp: str = "gobgp",
    ) -> None:
        self.node_name = node_name
        self.dir = Path(run_dir).absolute() / SUBDIR
        self.api_port = api_port
        self.gobgpd = gobgpd
        self.gobgp = gobgp
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reloaded_pid: int | None = None  # the daemon we last configured
        self._problems: tuple[str, ...] = ()

    # -- paths -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG

    @property
    def pidfile(self) -> Path:
        return self.dir / PIDFILE

    @property
    def logfile(self) -> Path:
        return self.dir / LOGFILE

    # -- public API --------------------------------------------------------------------------

    def apply(self, announcements: Sequence[Announcement], settings: BGPSettings) -> None:
        """Make gobgpd announce the ready VIPs to the valid peers; idempotent."""
        with self._lock:
            planned = plan(settings, self.node_name, route_source)
            vips, vip_problems = desired_vips(announcements)
            problems = [*planned.problems, *vip_problems]
            try:
                if planned.config is not None:
                    self._ensure_daemon(planned.config)
                if self.daemon_pid() is not None:
                    problems += self._sync_paths(vips)
            except BGPError as exc:
                problems.append(f"gobgpd: {exc}")
            self._set_problems(tuple(problems))

    def close(self, withdraw: bool) -> None:
        """withdraw=True: withdraw every VIP and stop gobgpd (cleanup, explicit
        shutdown).  withdraw=False: leave gobgpd and its sessions running for
        the next agent to adopt."""
        with self._lock:
            if not withdraw:
                log.info("event=bgp_detached gobgpd_pid=%s", self.daemon_pid())
                return
            pid = self.daemon_pid() or self._find_unrecorded()
            if pid is not None:
                with contextlib.suppress(BGPError):
                    self._sync_paths(frozenset())
                self._terminate(pid)
                log.info("event=bgp_stopped gobgpd_pid=%d", pid)
            self._proc = None
            self._reloaded_pid = None
            for path in (self.pidfile, self.config_path):
                path.unlink(missing_ok=True)

    def problems(self) -> tuple[str, ...]:
        with self._lock:
            return self._problems

    def peer_states(self) -> dict[str, str]:
        """Peer address -> BGP FSM state ("established", "active", "idle", ...)."""
        with self._lock:
            if self.daemon_pid() is None:
                return {}
            try:
                return parse_neighbors(self._cli("neighbor", "-j"))
            except (BGPError, ValueError) as exc:
                log.warning("event=bgp_query_failed what=neighbors error=%s", exc)
                return {}

    def advertised(self) -> frozenset[str]:
        """VIPs currently in gobgpd's global RIB."""
        with self._lock:
            if self.daemon_pid() is None:
                return frozenset()
            try:
                return self._rib()
            except BGPError as exc:
                log.warning("event=bgp_query_failed what=rib error=%s", exc)
                return frozenset()

    def daemon_pid(self) -> int | None:
        """The pid of our live gobgpd (pid file, live process, our config)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                self._proc = None  # reaped: our child died
            try:
                pid = int(self.pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
            if not alive(pid) or not self._is_ours(pid):
                return None
            return pid

    # -- the daemon ------------------------------------------------------------------------

    def _ensure_daemon(self, config: DaemonConfig) -> None:
        """Running, with `config` in force: start, restart or reload."""
        text = render_config(config)
        pid = self.daemon_pid() or self._find_unrecorded()
        running = self._running_global() if pid is not None else None
        if pid is None or running is None:
            if pid is not None:
                log.warning("event=bgp_daemon_hung gobgpd_pid=%d action=restart", pid)
                self._terminate(pid)
            self._install(text)
            self._start(config)
        elif running != config.global_:
            # SIGHUP ignores the global section.
            log.info(
                "event=bgp_restart reason=global_changed old=%s new=%s", running, config.global_
            )
            self._install(text)
            self._terminate(pid)
            self._start(config)
        elif pid != self._reloaded_pid or self._read_config() != text:
            # Also once for a daemon we adopt: the file on disk may be newer
            # than what it read if the previous agent died between the two.
            self._install(text)
            self._reload(pid, config)

    def _start(self, config: DaemonConfig) -> None:
        self._rotate_log()
        argv = [
            self.gobgpd,
            "-f",
            str(self.config_path),
            "-t",
            "toml",
            "--api-hosts",
            f"127.0.0.1:{self.api_port}",
            "--pprof-disable",  # it would listen on localhost:6060
            "-p",  # plain log lines
        ]
        if config.graceful_restart:
            argv.append("-r")
        with open(self.logfile, "ab") as logf:
            # Own session: a signal to the agent's process group (Ctrl-C, a
            # supervisor stopping the agent alone) must not reach gobgpd.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        write_atomically(self.pidfile, f"{proc.pid}\n".encode(), 0o644)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BGPError(f"gobgpd exited (rc={proc.returncode}): {self._log_tail()}")
            if self._running_global(attempts=1) == config.global_:
                self._reloaded_pid = proc.pid
                log.info(
                    "event=bgp_started gobgpd_pid=%d asn=%d router_id=%s peers=%d",
                    proc.pid,
                    config.global_.asn,
                    config.global_.router_id,
                    len(config.peers),
                )
                return
            time.sleep(0.05)
        raise BGPError(f"gobgpd started but its API does not answer: {self._log_tail()}")

    def _reload(self, pid: int, config: DaemonConfig) -> None:
        os.kill(pid, signal.SIGHUP)
        want = {p.address for p in config.peers}
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            try:
                have = set(parse_neighbors(self._cli("neighbor", "-j")))
            except (BGPError, ValueError):
                have = None
            if have == want:
                self._reloaded_pid = pid
                log.info("event=bgp_reloaded gobgpd_pid=%d peers=%d", pid, len(want))
                return
            time.sleep(0.05)
        log.warning("event=bgp_reload_not_applied gobgpd_pid=%d action=restart", pid)
        self._terminate(pid)
        self._start(config)

    def _find_unrecorded(self) -> int | None:
        """A live gobgpd of ours that the pid file does not name (an agent
        died between starting it and writing the file): adopt it rather than
        start a second one that could not bind the API port."""
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)) and alive(int(entry.name)):
                pid = int(entry.name)
                log.info("event=bgp_daemon_found gobgpd_pid=%d", pid)
                write_atomically(self.pidfile, f"{pid}\n".encode(), 0o644)
                return pid
        return None

    def _running_global(self, attempts: int = 3) -> GlobalConfig | None:
        """The live daemon's global settings; None when its API does not
        answer (a few tries: one slow answer must not restart it)."""
        for attempt in range(attempts):
            try:
                return parse_global(self._cli("global", "-j"))
            except (BGPError, ValueError):
                if attempt + 1 < attempts:
                    time.sleep(0.2)
        return None

    def _install(self, text: str) -> None:
        """Check with `gobgpd --dry-run`, then replace the config atomically."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._read_config() == text:
            return
        candidate = self.dir / (CONFIG + ".new")
        write_atomically(candidate, text.encode(), 0o600)
        proc = _run([self.gobgpd, "--dry-run", "-t", "toml", "-f", str(candidate)])
        if proc.returncode != 0:
            candidate.unlink(missing_ok=True)
            detail = (proc.stdout + proc.stderr).strip()[-500:]
            raise BGPError(f"configuration refused by gobgpd --dry-run: {detail}")
        os.replace(candidate, self.config_path)

    def _read_config(self) -> str | None:
        try:
            return self.config_path.read_text()
        except OSError:
            return None

    def _is_ours(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return (
            bool(argv)
            and os.path.basename(argv[0]) == os.path.basename(self.gobgpd).encode()
            and str(self.config_path).encode() in argv
        )

    def _terminate(self, pid: int) -> None:
        # SIGTERM: gobgpd sends a Cease to each peer, which drops our routes
        # at once (no graceful restart for an announced shutdown).
        terminate(pid, timeout=5.0)
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
            self._proc = None

    def _rotate_log(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.logfile, self.logfile.with_name(LOGFILE + ".1"))

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-500:].strip()
        except OSError:
            return "(no log)"

    # -- paths in the RIB ------------------------------------------------------------------------

    def _rib(self) -> frozenset[str]:
        try:
            v4 = parse_rib(self._cli("global", "rib", "-a", "ipv4", "-j"))
            v6 = parse_rib(self._cli("global", "rib", "-a", "ipv6", "-j"))
        except ValueError as exc:
            raise BGPError(f"unreadable RIB listing: {exc}") from None
        return v4 | v6

    def _sync_paths(self, vips: frozenset[str]) -> list[str]:
        """Add missing VIPs, delete the others; one failing VIP does not stop
        the rest.  Returns a message per failure."""
        current = self._rib()
        work = [("add", v) for v in sorted(vips - current)]
        work += [("del", v) for v in sorted(current - vips)]
        if not work:
            return []

        def one(item: tuple[str, str]) -> str | None:
            verb, vip = item
            try:
                # No next hop: gobgpd sends each peer this node's address on
                # that session (see the module docstring).
                self._cli("global", "rib", "-a", _family(vip), verb, _host_prefix(vip))
            except BGPError as exc:
                return f"VIP {vip}: gobgp {verb} failed: {exc}"
            log.info("event=bgp_path_%s vip=%s", "added" if verb == "add" else "withdrawn", vip)
            return None

        # One CLI process per path costs ~10 ms, mostly process start: a few
        # in parallel cut a first announcement of 1000 VIPs several-fold.
        with concurrent.futures.ThreadPoolExecutor(max_workers=PATH_WORKERS) as pool:
            return [p for p in pool.map(one, work) if p is not None]

    # -- helpers -------------------------------------------------------------------------------

    def _cli(self, *args: str) -> str:
        argv = [self.gobgp, "-u", "127.0.0.1", "-p", str(self.api_port), *args]
        proc = _run(argv)
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip())[-500:]
            raise BGPError(f"{' '.join(args)}: rc={proc.returncode}: {detail}")
        return proc.stdout

    def _set_problems(self, problems: tuple[str, ...]) -> None:
        for p in problems:
            if p not in self._problems:
                log.warning("event=bgp_problem message=%r", p)
        self._problems = problems


def route_source(address: str) -> str | None:
    """The kernel's preferred source address towards `address` (in the
    caller's network namespace), or None without a route."""
    try:
        with IPRoute() as ipr:
            routes = list(ipr.route("get", dst=address))
    except Exception as exc:  # NetlinkError (no route), OSError
        log.debug("event=bgp_route_get_failed dst=%s error=%s", address, exc)
        return None
    for route in routes:
        src = route.get_attr("RTA_PREFSRC")
        if src:
            return str(src)
    return None


def _family(vip: str) -> str:
    return "ipv6" if ":" in vip else "ipv4"


def _host_prefix(vip: str) -> str:
    return f"{vip}/128" if ":" in vip else f"{vip}/32"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BGPError(f"{argv[0]}: {exc}") from None
