#!/usr/bin/env bash
# Prepare a Debian 12 machine and the repo's .venv for gatewaylb.
#
#   scripts/setup.sh [demo|test|bench|all]      (default: all, what `make setup` runs)
#
# A profile says what the machine is for (scripts/debian-packages.txt lists the
# packages of each): `demo` installs what `gatewaylb run` and `gatewaylb demo`
# need; `test` adds the test tools and the venv's `dev` extra (pytest, ruff,
# mypy, ...); `bench` adds the load generators; `all` is everything.
#
# Idempotent: every step checks before it acts, so a second run on a ready
# machine only looks (well under 2 s), and a profile that needs more than an
# earlier run installed installs just the rest. Run as root on a fresh machine;
# on a ready one a non-root user gets the same result, since nothing needs root then.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
VENV=.venv
# Line 1: the repo path the venv was made at; line 2: `extras: <pip extras installed>`.
STAMP=$VENV/.installed-stamp
PACKAGES_FILE=scripts/debian-packages.txt
# Packages installed for their programs only, whose Debian service must not run:
# the tests start their own instances (in lab namespaces, with their own
# configuration), and a system-wide Prometheus would listen on :9090 and scrape
# for nothing. Only a service this script has just installed is kept off; one
# installed before is left as it is.
NO_SERVICE=(prometheus)

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

PROFILE=${1:-all}
case $PROFILE in
    demo) sections="base" extras="" ;;
    test) sections="base test" extras="dev" ;;
    bench) sections="base test bench" extras="dev" ;;
    all) sections="*" extras="dev" ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) die "unknown profile '$PROFILE' (demo, test, bench or all)" ;;
esac
[ $# -le 1 ] || die "one profile at most (demo, test, bench or all)"

# --- 1. Debian packages ------------------------------------------------------
# One dpkg-query for all packages (cheap); apt-get only when something is
# missing, because `apt-get update` alone costs seconds to minutes. Checked on
# every run, so a `test` run after a `demo` run installs the test tools.
[ -f "$PACKAGES_FILE" ] || die "$PACKAGES_FILE not found"
# The packages of the profile's sections ("*": every section; lines before the
# first section belong to every profile). Exit 3: a section the file lacks.
packages_text=$(awk -v want="$sections" '
    BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) keep[w[i]] = 1; on = 1 }
    { sub(/#.*/, ""); gsub(/[[:space:]]/, "") }
    $0 == "" { next }
    /^\[.+\]$/ {
        s = substr($0, 2, length($0) - 2); seen[s] = 1
        on = ("*" in keep) || (s in keep)
        next
    }
    on { print }
    END { for (k in keep) if (k != "*" && !(k in seen)) { print "missing section " k > "/dev/stderr"; exit 3 } }
' "$PACKAGES_FILE") || die "$PACKAGES_FILE: no section for profile $PROFILE"
mapfile -t packages <<<"$packages_text"
[ -n "${packages[0]:-}" ] || die "$PACKAGES_FILE lists no packages for profile $PROFILE"
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
    is_root || die "missing Debian packages (${missing[*]}); run as root: sudo scripts/setup.sh $PROFILE"
    log "installing ($PROFILE): ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The lock timeout rides out an unattended-upgrades run on a fresh VM
    # instead of failing at once.
    apt_opts=(-o DPkg::Lock::Timeout=300)
    apt-get "${apt_opts[@]}" update -q
    quiet=()
    for p in "${NO_SERVICE[@]}"; do
        [[ " ${missing[*]} " == *" $p "* ]] && quiet+=("$p")
    done
    systemd=0
    [ -d /run/systemd/system ] && systemd=1
    # Under systemd a runtime mask keeps the postinst from starting the service
    # at all (deb-systemd-invoke starts only enabled units); it goes with the
    # disable below, so the unit is left disabled, not masked.
    for p in "${quiet[@]}"; do
        [ "$systemd" -eq 0 ] || systemctl mask --runtime --quiet "$p.service"
    done
    apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null
    for p in "${quiet[@]}"; do
        # Not enabled for the next boot either (systemctl edits the SysV links
        # too, and works without a running systemd).
        if command -v systemctl >/dev/null; then
            systemctl disable --quiet "$p.service" >/dev/null 2>&1 || true
        else
            update-rc.d "$p" disable >/dev/null 2>&1 || true
        fi
        if [ "$systemd" -eq 1 ]; then
            systemctl unmask --runtime --quiet "$p.service"
        elif [ -x "/etc/init.d/$p" ]; then
            # Without systemd the postinst starts it through invoke-rc.d (unless
            # a policy-rc.d forbids it, as in most containers): stop it again.
            "/etc/init.d/$p" stop >/dev/null 2>&1 || true
        fi
        log "$p: installed for its programs; its service is not running and not enabled"
    done
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

# Reinstall only when the dependency list may have changed or the profile
# needs an extra the last install lacked: pip's resolver alone costs seconds
# even when everything is satisfied. The stamp is written after a successful
# install, so an interrupted install is retried next run. An extra once
# installed stays recorded (pip never removes it), so a `demo` run after a
# `test` run reinstalls nothing.
if [ -f "$STAMP" ]; then
    if [ "$(sed -n 2p "$STAMP")" = "" ]; then
        stamp_extras=dev  # a stamp of one line predates profiles: it always installed [dev]
    else
        stamp_extras=$(sed -n 's/^extras: *//p' "$STAMP")
    fi
else
    stamp_extras=""
fi
want_extras=$stamp_extras
[ -z "$extras" ] || [ "$want_extras" = dev ] || want_extras=$extras
reinstall=0
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$want_extras" != "$stamp_extras" ]; then
    reinstall=1
elif [ "$want_extras" = dev ]; then
    # The test tools the stamp promises must still be there.
    for tool in pytest ruff mypy; do
        [ -x "$VENV/bin/$tool" ] || reinstall=1
    done
fi
if [ "$reinstall" -eq 1 ]; then
    target=.${want_extras:+[$want_extras]}
    log "pip install -e '$target'"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$target" </dev/null
    printf '%s\nextras: %s\n' "$REPO" "$want_extras" >"$STAMP"
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
