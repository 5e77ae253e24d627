"""Announcing VIPs on bare metal: `reconciler.py` (the stage the daemon runs,
picking one announcer by `--announce`), `l2/` (ARP and NDP with failover
between the nodes) and `bgp/` (gobgpd sessions with ECMP).  Announces only
what it is told, after the dataplane serves it; never decides which VIP a
Gateway gets (translate/ipam.py does) and never programs the dataplane."""
