"""Fixtures for tests against a real kube-apiserver + etcd (tests/k8s/controlplane.py).

``make test`` builds the binaries first (``make k8s-bin``). Run directly, the
``controlplane`` fixture runs the same build script (a no-op when the binaries
are up to date, 5-8 minutes cold); only when that build fails and no binaries
exist are the tests skipped, with the build's error as the reason.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlplane import (
    BIN_DIR,
    BUILD_SCRIPT,
    ControlPlane,
    binaries_present,
)


def _ensure_binaries() -> str | None:
    """Build if needed; return None when usable binaries exist, else why not."""
    check = subprocess.run([str(BUILD_SCRIPT), "--check"], capture_output=True, check=False)
    if check.returncode == 0:
        return None
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    log = BIN_DIR / "build.log"
    with log.open("wb") as out:
        build = subprocess.run(
            [str(BUILD_SCRIPT)], stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if build.returncode == 0:
        return None
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    if binaries_present():
        warnings.warn(
            f"scripts/build-controlplane.sh failed; testing the stale binaries in {BIN_DIR}:\n"
            f"{tail}",
            stacklevel=1,
        )
        return None
    return (
        f"no kube-apiserver/etcd in {BIN_DIR} and scripts/build-controlplane.sh failed"
        f" ({log}):\n{tail}"
    )


@pytest.fixture(scope="session")
def controlplane() -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver (RBAC, Gateway API CRDs installed) for the
    whole session. Offers ``kubeconfig``, ``server``, ``ca_path``,
    ``token_for(namespace, serviceaccount)`` and ``request(...)``."""
    why_not = _ensure_binaries()
    if why_not is not None:
        pytest.skip(why_not)
    with ControlPlane() as cp:
        yield cp


@pytest.fixture(scope="session")
def cluster_binaries() -> None:
    """The one-node cluster's programs besides the control plane: kubectl,
    kube-controller-manager, kube-scheduler and the images' echo-basic and
    coredns (the same build script builds them all)."""
    why_not = _ensure_binaries()
    if why_not is not None:
        pytest.skip(why_not)
