#!/usr/bin/env bash
# Prepare a Debian 12 machine and the repo's .venv for gatewaylb.
#
# Idempotent: every step checks before it acts, so a second run on a ready
# machine only looks (well under 2 s). Run as root on a fresh machine; on a
# ready one a non-root user gets the same result, since nothing needs root then.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
VENV=.venv
STAMP=$VENV/.installed-stamp
PACKAGES_FILE=scripts/debian-packages.txt

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# --- 1. Debian packages ------------------------------------------------------
# One dpkg-query for all packages (cheap); apt-get only when something is
# missing, because `apt-get update` alone costs seconds to minutes.
[ -f "$PACKAGES_FILE" ] || die "$PACKAGES_FILE not found"
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$PACKAGES_FILE")
[ ${#packages[@]} -gt 0 ] || die "$PACKAGES_FILE lists no packages"
declare -A status=()
while read -r name abbrev; do
    status[$name]=$abbrev
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${packages[@]}" 2>/dev/null || true)
missing=()
for p in "${packages[@]}"; do
    # "ii" = wanted and installed; anything else (absent, half-installed,
    # config-files only) gets (re)installed.
    [ "${status[$p]:-}" = ii ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    is_root || die "missing Debian packages (${missing[*]}); run as root: sudo make setup"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The lock timeout rides out an unattended-upgrades run on a fresh VM
    # instead of failing at once.
    apt_opts=(-o DPkg::Lock::Timeout=300)
    apt-get "${apt_opts[@]}" update -q
    apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

# --- 2. Kernel headers for bcc -----------------------------------------------
# bcc finds headers through /lib/modules/$(uname -r)/{build,source}. The
# running kernel here is not a Debian kernel (so that directory is absent),
# but Debian's 6.1 headers are known to let bcc compile our tc programs, so
# point those two links at the newest installed Debian headers.
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ]; then
    if is_root; then
        amd64_dir=$(find /usr/src -maxdepth 1 -type d -name 'linux-headers-*-amd64' \
            | sort -V | tail -n 1)
        [ -n "$amd64_dir" ] || die "no /usr/src/linux-headers-*-amd64 (is linux-headers-amd64 installed?)"
        hver=${amd64_dir#/usr/src/linux-headers-}
        hver=${hver%-amd64}
        common_dir=/usr/src/linux-headers-$hver-common
        [ -d "$common_dir" ] || die "$amd64_dir has no matching $common_dir"
        mkdir -p "/lib/modules/$kver"
        # -n: replace a dangling link in place instead of creating one inside it.
        ln -sfn "$amd64_dir" "/lib/modules/$kver/build"
        ln -sfn "$common_dir" "/lib/modules/$kver/source"
        log "linked /lib/modules/$kver/{build,source} -> headers $hver"
    else
        # Only the root-only eBPF tests need this; unit tests do not.
        log "warning: /lib/modules/$kver/build is missing and only root can link it"
    fi
fi

# --- 3. The venv ---------------------------------------------------------------
# Debian's python3-bpfcc and python3-nftables only import in Debian's own
# /usr/bin/python3 (not a pyenv or PATH python), hence that interpreter and
# --system-site-packages. Never pip-install the PyPI projects named `bcc` or
# `nftables`: they are unrelated to these bindings.
#
# A venv is rebuilt when it is broken, lacks system site packages, or was made
# at another path (its scripts' shebangs are absolute, so a moved repo breaks).
venv_ok() {
    [ -x "$VENV/bin/python" ] \
        && grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null \
        && [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$REPO" ] \
        && "$VENV/bin/python" -c '' 2>/dev/null
}
if ! venv_ok; then
    if [ -d "$VENV" ]; then
        log "rebuilding $VENV"
        rm -rf "$VENV"
    fi
    [ -x /usr/bin/python3 ] || die "/usr/bin/python3 not found"
    log "creating $VENV with /usr/bin/python3 ($(/usr/bin/python3 --version 2>&1))"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi

# Reinstall only when the dependency list may have changed: pip's resolver
# alone costs seconds even when everything is satisfied. The stamp is written
# after a successful install, so an interrupted install is retried next run.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    log "pip install -e '.[dev]'"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]' </dev/null
    printf '%s\n' "$REPO" >"$STAMP"
fi

# --- 4. Verify -------------------------------------------------------------------
"$VENV/bin/python" - <<'EOF' || die "the venv cannot import what gatewaylb needs (see above)"
import os
import platform
import sys

import bcc
import click
import kubernetes
import nftables
import prometheus_client
import pyroute2
import yaml

build = f"/lib/modules/{os.uname().release}/build"
print(
    f"setup: ok: python {platform.python_version()} ({sys.prefix}),"
    f" kernel {os.uname().release},"
    f" headers {os.path.realpath(build) if os.path.exists(build) else 'MISSING'},"
    f" bcc from {os.path.dirname(bcc.__file__)}, nftables from {os.path.dirname(nftables.__file__)}"
)
EOF
