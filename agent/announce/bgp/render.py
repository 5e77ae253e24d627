"""gobgpd's TOML configuration for a DaemonConfig.

Deterministic (equal configs, equal text), so that comparing text tells the
announcer whether the daemon must reload.  Pure: it never validates (what plan
made is valid), never writes the file (the announcer installs it after
`gobgpd --dry-run`) and never talks to gobgpd.  Why the settings are what they
are (connect-retry, no listening port, graceful restart, the import policy)
is in the package docstring.
"""

from __future__ import annotations

from agent.announce.bgp.plan import DaemonConfig, PeerConfig

# gobgpd clamps connect-retry to at least 5 s (pkg/server/fsm.go).
CONNECT_RETRY = 5
# We import no route, so there is nothing to wait for before advertising.
DEFERRAL_TIME = 1

POLICY = "gatewaylb-reject-learned"
NEIGHBOR_SET = "gatewaylb-all-peers"


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
