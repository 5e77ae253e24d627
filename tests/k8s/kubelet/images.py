"""Which executable an image reference runs: one explicit table.

The node has no container runtime and pulls nothing: each image a test or a
shipped manifest names maps to a program built or checked out here, with the
entry point, default command and environment its Dockerfile declares.  An
image not in the table is never guessed at: the container waits with reason
ErrImagePull and a message naming the image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = REPO / "tests" / "k8s" / "bin"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class Image:
    """What `docker inspect` would say of the image: ENTRYPOINT, CMD, ENV."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # The node directories the image's programs live in (its "layers").
    files: tuple[Path, ...] = ()

    def missing(self) -> str | None:
        """Why the image cannot run here (its program is not built), or None."""
        program = self.entrypoint[0] if self.entrypoint else ""
        if program.startswith("/") and not os.access(program, os.X_OK):
            return f"{program} is not built (run scripts/build-controlplane.sh or make setup)"
        return None


def _gatewaylb() -> Image:
    # deploy/daemonset/Dockerfile: the wheel in a venv, bpf/ beside it,
    # ENTRYPOINT ["gatewaylb"], CMD ["run", "--in-cluster"].
    venv = REPO / ".venv" / "bin"
    return Image(
        entrypoint=(str(venv / "gatewaylb"),),
        cmd=("run", "--in-cluster"),
        env={"PATH": f"{venv}:{DEFAULT_PATH}", "GATEWAYLB_BPF_DIR": str(REPO / "bpf")},
        files=(REPO,),
    )


def _echo_basic() -> Image:
    # sigs.k8s.io/gateway-api/conformance/echo-basic: ENTRYPOINT ["/echo-basic"].
    return Image(entrypoint=(str(BIN_DIR / "echo-basic"),), files=(BIN_DIR,))


def _coredns() -> Image:
    # github.com/coredns/coredns: ENTRYPOINT ["/coredns"].
    return Image(entrypoint=(str(BIN_DIR / "coredns"),), files=(BIN_DIR,))


# Repository (the reference without its tag or digest) -> image.  Any tag of
# these repositories runs the one program built here.
TABLE = {
    "gatewaylb": _gatewaylb,
    "registry.k8s.io/gateway-api/echo-basic": _echo_basic,
    "registry.k8s.io/coredns/coredns": _coredns,
}


def repository(reference: str) -> str:
    """`registry/name:tag@digest` -> `registry/name` (a port is not a tag)."""
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return name.removeprefix("docker.io/library/")


def resolve(reference: str) -> Image | str:
    """The image, or the message an ErrImagePull carries."""
    make = TABLE.get(repository(reference))
    if make is None:
        known = ", ".join(sorted(TABLE))
        return (
            f'image "{reference}" is not in the node\'s image table ({known}); '
            "this node runs only programs built from this checkout"
        )
    return make()
