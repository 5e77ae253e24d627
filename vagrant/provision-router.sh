#!/bin/sh
# The router: BIRD 2 peers with both nodes (they connect; it listens) and
# installs the VIPs with one next hop per node (ECMP, hashed on ports too).
set -eu
apt-get update -q
apt-get install -y -q bird2
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1
cat > /etc/bird/bird.conf <<'CONF'
router id 192.168.77.1;
protocol device { scan time 10; }
protocol kernel { merge paths on; ipv4 { import none; export all; }; }
template bgp nodes {
  local as 64512;
  hold time 9;
  passive on;
  graceful restart on;
  ipv4 { import all; export none; };
}
protocol bgp node1 from nodes { neighbor 192.168.77.11 as 64513; }
protocol bgp node2 from nodes { neighbor 192.168.77.12 as 64513; }
CONF
systemctl enable --now bird
systemctl restart bird
