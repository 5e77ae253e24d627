#!/usr/bin/env bash
# (Re)generate tests/k8s/controlplane/go.mod and go.sum for a Kubernetes and an
# etcd version. Run by a developer who bumps the test control plane, not by
# builds: the result (go.mod, go.sum) is committed.
#
#   scripts/gen-controlplane-gomod.sh v1.34.4 [ETCD_VERSION]
#
# ETCD_VERSION defaults to the go.etcd.io/etcd/server/v3 version that
# Kubernetes' own go.mod names, so that Go's minimal version selection picks
# for kube-apiserver exactly the dependency versions upstream built and tested
# it with (a newer etcd drags newer grpc, otel, x/net ... into both binaries).
#
# k8s.io/kubernetes is not meant to be consumed as a module: its go.mod points
# every staging module (k8s.io/api, k8s.io/apiserver, ...) at ./staging/src/...
# (kubernetes/kubernetes#79384). A consumer must pin each of them to the
# published v0.<minor>.<patch> matching v1.<minor>.<patch>; this script reads
# those staging lines from that very go.mod and writes the replace block.
set -euo pipefail

K8S_VERSION=${1:?usage: $0 K8S_VERSION(v1.x.y) [ETCD_VERSION(v3.x.y)]}
ETCD_VERSION=${2:-}
[[ $K8S_VERSION =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "K8S_VERSION must be v1.<minor>.<patch>" >&2; exit 2; }
STAGING_VERSION=v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}

cd "$(dirname "${BASH_SOURCE[0]}")/../tests/k8s/controlplane"
GO=$(command -v go || echo /usr/local/go/bin/go)
export GOFLAGS=-mod=mod

# Only the .mod file is needed to read the staging list.
k8s_gomod=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[ -f "$k8s_gomod" ] || { echo "could not download k8s.io/kubernetes@$K8S_VERSION's go.mod" >&2; exit 1; }
mapfile -t staging < <(sed -n 's|^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*$|\1|p' "$k8s_gomod")
[ ${#staging[@]} -gt 0 ] || { echo "no staging replace lines in $k8s_gomod" >&2; exit 1; }
go_directive=$(sed -n 's/^go \(.*\)$/\1/p' "$k8s_gomod")
mapfile -t godebug < <(sed -n 's/^godebug \(.*=.*\)$/\1/p' "$k8s_gomod")
if [ -z "$ETCD_VERSION" ]; then
    ETCD_VERSION=$(sed -n 's|^[[:space:]]*go\.etcd\.io/etcd/server/v3 \(v[^[:space:]]*\).*$|\1|p' "$k8s_gomod")
    [ -n "$ETCD_VERSION" ] || { echo "$k8s_gomod names no go.etcd.io/etcd/server/v3; give ETCD_VERSION" >&2; exit 1; }
fi

rm -f go.mod go.sum
"$GO" mod init gatewaylb/tests/k8s/controlplane >/dev/null 2>&1
"$GO" mod edit -go="$go_directive"
for d in "${godebug[@]}"; do
    "$GO" mod edit -godebug="$d"
done
for m in "${staging[@]}"; do
    "$GO" mod edit -replace="$m=$m@$STAGING_VERSION"
done
"$GO" mod edit -require="k8s.io/kubernetes@$K8S_VERSION" -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
"$GO" mod tidy
echo "go.mod: k8s.io/kubernetes $K8S_VERSION (${#staging[@]} staging modules at $STAGING_VERSION), etcd $ETCD_VERSION"
