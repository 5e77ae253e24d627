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

Modules, one job each:

    plan.py       settings and announcements to a DaemonConfig and the VIPs to
                  announce, with a message per problem; pure
    render.py     a DaemonConfig to gobgpd's TOML text; pure
    gobgp.py      running the gobgp and gobgpd binaries, reading gobgp's JSON
    announcer.py  BGPAnnouncer: the daemon's life and the paths in its RIB
"""
