#!/bin/sh
# A node: gatewaylb from the synced repository (make setup installs the Debian
# packages, including gobgpd), a local echo backend on the node's own address,
# and the agent as a systemd service reading this node's manifests.
set -eu
name="$1"
ip="$2"
apt-get update -q
apt-get install -y -q make
cd /gatewaylb
make setup
mkdir -p /etc/gatewaylb/manifests
sed -e "s/@NODE_IP@/$ip/g" /gatewaylb/vagrant/manifests.yaml > /etc/gatewaylb/manifests/all.yaml
cat > /etc/systemd/system/gatewaylb-backend.service <<UNIT
[Unit]
Description=gatewaylb try-out backend (echo) on $ip:8080
[Service]
ExecStart=/gatewaylb/.venv/bin/python -m agent.lab.echo --tcp 8080 --udp 8080 --name be@$name
WorkingDirectory=/gatewaylb
[Install]
WantedBy=multi-user.target
UNIT
cat > /etc/systemd/system/gatewaylb.service <<UNIT
[Unit]
Description=gatewaylb agent (standalone, BGP announcement)
After=network-online.target
[Service]
ExecStart=/gatewaylb/.venv/bin/gatewaylb run --manifests /etc/gatewaylb/manifests \
  --announce bgp --node-name $name --status-file /run/gatewaylb/status.json
# The agent leaves gobgpd and the kernel state in place when it stops; a
# restarted agent adopts them.  `gatewaylb cleanup` withdraws and removes all.
KillMode=process
Restart=on-failure
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now gatewaylb-backend gatewaylb
