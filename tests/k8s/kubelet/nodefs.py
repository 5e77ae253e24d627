"""The lab node's own instances of what a DaemonSet takes from its host
and must not share with the machine: the bpf filesystem, the cgroup v2
hierarchy and the agent's state directory.

The lab node shares its kernel with the machine (and with every other lab
on it).  A hostPath of `/sys/fs/bpf` or `/sys/fs/cgroup` on a real node is
that node's alone; here it would be the machine's: pins would outlive the
node, and socket-level hooks attached to the cgroup v2 root would rewrite the
connections of every process on the machine, the lab's client included, so
a client "outside the node" would never cross the node's interfaces.  So the
node gets:

- a bpf filesystem of its own (a bpffs mount is an instance: its pins are
  invisible to any other mount), unmounted with the node;
- a cgroup v2 subtree that every container of the node joins (beside the
  tracking cgroup of its run), so programs attached there see the node's
  processes and nobody else's, and go away when the subtree is removed;
- a /run/gatewaylb of its own (the agent's state: the proxy worker's files).

hostPaths at or below those paths resolve to the node's instances, and
`command()` runs a command with the same view, as a shell on the node would.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

from agent.dataplane.bpf.mounts import on_bpffs
from agent.dataplane.select import cgroup2_root as agent_cgroup2_root

BPFFS = Path("/sys/fs/bpf")
CGROUP = Path("/sys/fs/cgroup")
RUN_DIR = Path("/run/gatewaylb")


def cgroup2_root() -> Path:
    """The machine's cgroup v2 hierarchy (pure v2, or hybrid's `unified`):
    where the agent itself would look."""
    root = agent_cgroup2_root()
    if root is None:
        raise OSError("no cgroup v2 hierarchy mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified")
    return Path(root)


class NodeFilesystem:
    def __init__(self, root: Path, cgroup: Path) -> None:
        """`root`: the node agent's directory; `cgroup`: the node's cgroup v2
        subtree (made by the container tracker, which owns its removal)."""
        self.bpffs = root / "bpffs"
        self.cgroup = cgroup
        self.bpffs.mkdir(parents=True, exist_ok=True)
        if not on_bpffs(self.bpffs):
            subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], check=True)
        # The agent's state directory too: the machine's own /run/gatewaylb
        # belongs to agents run outside the cluster.
        self.run_dir = root / "run-gatewaylb"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.remaps = {BPFFS: self.bpffs, CGROUP: self.cgroup, RUN_DIR: self.run_dir}

    def resolve(self, path: Path) -> Path:
        """A path on the node -> where it is on the machine."""
        for node_path, local in self.remaps.items():
            if path == node_path or node_path in path.parents:
                return local / path.relative_to(node_path)
        return path

    def command(self, argv: list[str], netns: str) -> list[str]:
        """`argv` as run on the node: its network namespace and its view of
        those directories, in a mount namespace of its own."""
        binds = " && ".join(
            f"mkdir -p {path} && mount --bind {local} {path}" for path, local in self.remaps.items()
        )
        return [
            "nsenter", f"--net=/run/netns/{netns}", "--",
            "unshare", "--mount", "--propagation", "slave", "--",
            "sh", "-c", f'{binds} && exec "$@"', "node", *argv,
        ]  # fmt: skip

    def close(self) -> None:
        """Unmount the bpf filesystem: its pins go, and with them the maps no
        program holds any more."""
        if on_bpffs(self.bpffs):
            subprocess.run(["umount", "-l", str(self.bpffs)], check=False)
        with contextlib.suppress(OSError):
            self.bpffs.rmdir()
        shutil.rmtree(self.run_dir, ignore_errors=True)
