#!/usr/bin/env bash
# Build the test cluster's binaries into tests/k8s/bin/ (git-ignored), each
# from a Go module of its own (never merged: their k8s.io versions differ):
#   - tests/k8s/controlplane: a real kube-apiserver, etcd,
#     kube-controller-manager, kube-scheduler and kubectl (k8s.io/kubernetes);
#   - tests/k8s/conformance: the upstream Gateway API conformance suite,
#     unmodified (`go test -c sigs.k8s.io/gateway-api/conformance` ->
#     conformance.test), and its echo server echo-basic;
#   - tests/k8s/images/coredns: coredns (github.com/coredns/coredns).
#
# Reuses the binaries when they were built from the same sources: the stamp
# is a hash of the three modules' go.mod, go.sum and .go files and the build
# flags, so a second run is a no-op that costs milliseconds and needs no Go at
# all. A cold build (no Go module or build cache) fills 2.4 GB of module cache
# and 3.8 GB of build cache and took 463 s on 2 cores (control plane 336 s,
# coredns 98 s, echo-basic 10 s; 2026-12-07), and the conformance suite's test
# binary 73 s more; with warm caches (a fresh clone on a machine that built
# before) ~25 s. GOCACHE and GOMODCACHE stay at Go's defaults (or whatever the
# caller exported), so later builds are incremental.
#
#   scripts/build-controlplane.sh          build if needed
#   scripts/build-controlplane.sh --force  rebuild even if the stamp matches
#   scripts/build-controlplane.sh --check  exit 0 if up to date, 1 if not
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SRC=tests/k8s/controlplane
ECHO_SRC=tests/k8s/conformance
SUITE_PKG=sigs.k8s.io/gateway-api/conformance
ECHO_PKG=sigs.k8s.io/gateway-api/conformance/echo-basic
COREDNS_SRC=tests/k8s/images/coredns
COREDNS_PKG=github.com/coredns/coredns
BIN=tests/k8s/bin
STAMP=$BIN/.stamp
CP_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
BINARIES=("${CP_BINARIES[@]}" echo-basic conformance.test coredns)

log() { printf 'build-controlplane: %s\n' "$*"; }
die() { printf 'build-controlplane: error: %s\n' "$*" >&2; exit 1; }

mode=build
case "${1:-}" in
    "") ;;
    --force) mode=force ;;
    --check) mode=check ;;
    *) die "unknown argument ${1} (want --force or --check)" ;;
esac

# The version a module's go.mod requires of module $2 (empty if none).
required_version() {
    sed -n "s|^[[:space:]]*\(require[[:space:]]\{1,\}\)\{0,1\}${2//./\\.} \(v[0-9][^[:space:]]*\).*\$|\2|p" \
        "$1/go.mod" | head -n 1
}

# The Kubernetes version goes into the control plane's binaries
# (kube-apiserver --version, /version and kubectl version report it instead
# of upstream's unset v0.0.0-master).
k8s_version=$(required_version "$SRC" k8s.io/kubernetes)
[ -n "$k8s_version" ] || die "$SRC/go.mod does not require k8s.io/kubernetes"
echo_version=$(required_version "$ECHO_SRC" sigs.k8s.io/gateway-api/conformance)
[ -n "$echo_version" ] || die "$ECHO_SRC/go.mod does not require sigs.k8s.io/gateway-api/conformance"
coredns_version=$(required_version "$COREDNS_SRC" "$COREDNS_PKG")
[ -n "$coredns_version" ] || die "$COREDNS_SRC/go.mod does not require $COREDNS_PKG"
k8s_minor=${k8s_version#v1.}
k8s_minor=${k8s_minor%%.*}
ver_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldflags="-s -w"
for p in "${ver_pkgs[@]}"; do
    ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
    ldflags+=" -X $p.gitTreeState=clean"
done
build_flags=(-trimpath "-ldflags=$ldflags")
# The other modules have k8s.io versions of their own: no version stamping.
image_flags=(-trimpath "-ldflags=-s -w")

stamp_of_sources() {
    {
        printf 'flags: CGO_ENABLED=0 GOFLAGS=-mod=mod %s\n' "${build_flags[*]}"
        printf 'images: %s %s %s; %s %s\n' "${image_flags[*]}" "$ECHO_PKG" "$SUITE_PKG" \
            "${image_flags[*]}" "$COREDNS_PKG"
        find "$SRC" "$ECHO_SRC" "$COREDNS_SRC" -name '*.go' -o -name go.mod -o -name go.sum \
            | LC_ALL=C sort | xargs sha256sum
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
    log "up to date: ${BINARIES[*]/#/$BIN/} ($k8s_version, echo-basic $echo_version, coredns $coredns_version)"
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
tmp=$(mktemp -d "$PWD/$BIN/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
t_start=$SECONDS

# build_module NAME DIR "WHAT" "OUTPUTS" GO-BUILD-ARGS...: downloads DIR's modules,
# then runs go build in DIR (its own module) with -o $tmp/; each step timed.
build_module() {
    local name=$1 dir=$2 what=$3 outputs=$4
    shift 4
    local t0=$SECONDS
    log "$name: downloading modules ($what) ..."
    (cd "$dir" && "$GO" mod download)
    local t1=$SECONDS
    log "$name: modules ready in $((t1 - t0)) s; compiling $outputs ..."
    (cd "$dir" && "$GO" build -o "$tmp/" "$@")
    log "$name: compiled in $((SECONDS - t1)) s"
}

pkgs=()
for b in "${CP_BINARIES[@]}"; do pkgs+=("./cmd/$b"); done
build_module controlplane "$SRC" "k8s.io/kubernetes $k8s_version" "${CP_BINARIES[*]}" \
    "${build_flags[@]}" "${pkgs[@]}"
build_module echo-basic "$ECHO_SRC" "sigs.k8s.io/gateway-api/conformance $echo_version" echo-basic \
    "${image_flags[@]}" "$ECHO_PKG"
t1=$SECONDS
(cd "$ECHO_SRC" && "$GO" test -c "${image_flags[@]}" -o "$tmp/conformance.test" "$SUITE_PKG")
log "conformance: the suite's test binary compiled in $((SECONDS - t1)) s"
build_module coredns "$COREDNS_SRC" "$COREDNS_PKG $coredns_version" coredns \
    "${image_flags[@]}" "$COREDNS_PKG"

for b in "${BINARIES[@]}"; do
    [ -x "$tmp/$b" ] || die "go build produced no $b"
done
for b in "${BINARIES[@]}"; do
    mv -f "$tmp/$b" "$BIN/$b"
done
printf '%s\n' "$want" >"$STAMP"
log "total $((SECONDS - t_start)) s"
for b in "${BINARIES[@]}"; do
    log "$(du -h "$BIN/$b" | cut -f1)  $BIN/$b"
done
