#!/usr/bin/env bash
# Build the test control plane, a real kube-apiserver, etcd, kube-controller-manager
# and kube-scheduler, from the Go module in tests/k8s/controlplane into
# tests/k8s/bin/ (git-ignored).
#
# Reuses the binaries when they were built from the same sources: the stamp
# is a hash of go.mod, go.sum, the main.go files and the build flags, so a
# second run is a no-op that costs milliseconds and needs no Go at all.
# A cold build (no Go module or build cache) downloads ~0.5 GB of modules and
# takes 5-8 minutes on 2 cores; with warm caches (a fresh clone on a machine
# that built before) ~10 s. GOCACHE and GOMODCACHE stay at Go's defaults (or
# whatever the caller exported), so later builds are incremental.
#
#   scripts/build-controlplane.sh          build if needed
#   scripts/build-controlplane.sh --force  rebuild even if the stamp matches
#   scripts/build-controlplane.sh --check  exit 0 if up to date, 1 if not
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SRC=tests/k8s/controlplane
BIN=tests/k8s/bin
STAMP=$BIN/.stamp
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler)

log() { printf 'build-controlplane: %s\n' "$*"; }
die() { printf 'build-controlplane: error: %s\n' "$*" >&2; exit 1; }

mode=build
case "${1:-}" in
    "") ;;
    --force) mode=force ;;
    --check) mode=check ;;
    *) die "unknown argument ${1} (want --force or --check)" ;;
esac

# The Kubernetes version goes into the binary (kube-apiserver --version and
# /version report it instead of upstream's unset v0.0.0-master).
k8s_version=$(sed -n 's|^[[:space:]]*k8s\.io/kubernetes \(v[0-9][^[:space:]]*\).*$|\1|p' "$SRC/go.mod" | head -n 1)
[ -n "$k8s_version" ] || die "$SRC/go.mod does not require k8s.io/kubernetes"
k8s_minor=${k8s_version#v1.}
k8s_minor=${k8s_minor%%.*}
ver_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldflags="-s -w"
for p in "${ver_pkgs[@]}"; do
    ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
    ldflags+=" -X $p.gitTreeState=clean"
done
build_flags=(-trimpath "-ldflags=$ldflags")

stamp_of_sources() {
    {
        printf 'flags: CGO_ENABLED=0 GOFLAGS=-mod=mod %s\n' "${build_flags[*]}"
        (cd "$SRC" && find . -name '*.go' -o -name go.mod -o -name go.sum | LC_ALL=C sort \
            | xargs sha256sum)
    } | sha256sum | cut -d' ' -f1
}
want=$(stamp_of_sources)
up_to_date() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] || return 1
    for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done
}

if [ "$mode" = check ]; then
    up_to_date && exit 0 || exit 1
fi

mkdir -p "$BIN"
# One build at a time (make and pytest may both ask); the second waits and
# then finds the stamp up to date.
exec 9>"$BIN/.lock"
flock 9

if [ "$mode" = build ] && up_to_date; then
    log "up to date: ${BINARIES[*]/#/$BIN/} ($k8s_version)"
    exit 0
fi

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || die "no Go toolchain (go not in PATH nor /usr/local/go/bin/go)"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# Go's default caches live under $HOME; a bare CI environment may lack it.
if [ -z "${HOME:-}" ]; then
    HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
    export HOME
fi

log "$("$GO" version); GOMODCACHE=$("$GO" env GOMODCACHE) GOCACHE=$("$GO" env GOCACHE)"
t0=$SECONDS
log "downloading modules (k8s.io/kubernetes $k8s_version) ..."
(cd "$SRC" && "$GO" mod download)
t1=$SECONDS
log "modules ready in $((t1 - t0)) s; compiling ${BINARIES[*]} ..."
tmp=$(mktemp -d "$PWD/$BIN/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
pkgs=()
for b in "${BINARIES[@]}"; do pkgs+=("./cmd/$b"); done
(cd "$SRC" && "$GO" build "${build_flags[@]}" -o "$tmp/" "${pkgs[@]}")
t2=$SECONDS
for b in "${BINARIES[@]}"; do
    [ -x "$tmp/$b" ] || die "go build produced no $b"
    mv -f "$tmp/$b" "$BIN/$b"
done
printf '%s\n' "$want" >"$STAMP"
log "compiled in $((t2 - t1)) s; total $((t2 - t0)) s"
for b in "${BINARIES[@]}"; do
    log "$(du -h "$BIN/$b" | cut -f1)  $BIN/$b"
done
