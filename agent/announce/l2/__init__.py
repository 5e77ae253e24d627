"""L2 announcement of VIPs: one node of a segment answers ARP and NDP for each VIP.

Every node serves every VIP (the dataplanes translate L4 VIP traffic before
routing, L7 VIPs are local addresses on `lo`, and `agent/dataplane/vips.py`
refuses ports nobody serves); this package only decides which node's MAC the
LAN learns for a VIP, and makes the LAN learn another one fast when that node
dies.

Owns, on each announce interface: AF_PACKET sockets for heartbeats, ARP and
IPv6 neighbour solicitations; the solicited-node multicast memberships of the
candidate IPv6 VIPs; and the sysctls `net.ipv4.conf.<iface>.arp_ignore` and
`arp_announce` (raised to 1 and 2, and left so on close: a restarting agent must
not open a window in which every node answers ARP for the VIPs).  Never touches
addresses, routes, other sysctls, or interfaces it was not told to announce on.

Membership.  Every `heartbeat_interval_ms` each node broadcasts an Ethernet
frame with the IEEE local-experimental ethertype 0x88B5 on each announce
interface (magic, version, flags, sequence, node name); a peer is live until
`dead_after_ms` passes without one.  On the segment itself rather than over IP
or through the API server: it needs no address (IPv6-only nodes work), and it
measures exactly what matters, that a node still reaches the clients' segment;
an API-server lease stays valid for a node whose NIC is dead.

Ownership.  The owner of a VIP is the rendezvous (highest-random-weight) hash
winner among the ready live nodes: every node computes the same answer from the
same member list without talking, VIPs spread evenly, and a node that joins or
leaves moves only the VIPs it wins or loses.  A starting node listens for
`dead_after_ms` first (its heartbeats say "not ready" meanwhile): alone with an
empty peer list it would claim every VIP and pull clients away from the
rightful owners until their heartbeats arrive; and peers leave a not-ready node
out of the hash, so nobody stops answering for a VIP before its new owner
starts.  `close()` sends one "leaving" heartbeat so peers take over at once.

ARP.  The owner answers ARP requests for its IPv4 VIPs from a packet socket.
Linux answers ARP for any local address on any interface by default, so every
node would answer for the `lo`-bound L7 VIPs: `arp_ignore=1` (answer only for
addresses of the receiving interface) stops that, and `arp_announce=2` (use an
address of the outgoing interface as sender of the kernel's own ARP requests)
stops a node that replies from a VIP from advertising the VIP with its own MAC
to the client it asks for.  kube-proxy's IPVS `strictARP` sets the same two.
On takeover the owner sends gratuitous ARP (request and reply, sender = target
= VIP) three times over a second: clients update an existing entry from it (a
Linux client creates a new entry from it only with arp_accept=1).

NDP.  Linux answers a neighbour solicitation only for addresses of the
receiving interface (ndisc_recv_ns looks the target up on that device only), so
IPv6 needs no sysctl (tests/e2e/test_l2_announce_e2e.py checks it).  The owner
answers with a solicited NA (S+O, target link-layer address option) built whole
and sent from a packet socket: it goes straight to the solicitor's MAC without
the kernel first resolving the solicitor, and its source is the VIP, as Linux
does for its own addresses.  Solicitations arrive on an ETH_P_IPV6 packet socket
with a classic BPF filter (ICMPv6 type 135 only), so no other IPv6 traffic is
copied to user space, and unicast NUD probes are seen too.  For NICs and
MLD-snooping switches to deliver the multicast solicitations at all, an IPv6
socket joins the solicited-node group of every candidate VIP, not only the owned
ones, so that a takeover does not wait for an MLD report to reach a switch.  On
takeover the owner sends unsolicited NAs (O flag) to ff02::1.

Thread.  Heartbeats, replies and expiry run in one daemon thread that polls
with a 50 ms timeout, never in the agent's asyncio loop: a loop held for a
second by a large translation would miss heartbeats, and peers would take over
every VIP.  `apply` hands the thread a new configuration and waits for it; all
sockets are opened, used and closed by that thread only.

Limits.  With empty `interfaces`, the interfaces are found from the routes at
each `apply` only.  A VIP is announced on every announce interface, all assumed
to be one broadcast domain of the same nodes: a segment split in two gets one
owner per half.

Modules, one job each:

    frames.py      wire formats: heartbeat, ARP and NDP frames built and parsed
                   as bytes (no socket, no clock)
    membership.py  who is live on the segment and who owns which VIP (the
                   rendezvous hash); pure, the caller passes the clock
    ports.py       the kernel side of an announce interface: packet sockets,
                   multicast groups, the ARP sysctls, interface discovery
    engine.py      one node's state machine: heartbeats, ownership, takeover
                   announcements and answers, driven with an explicit clock
    announcer.py   L2Announcer, the public API, and the thread running the engine
"""
