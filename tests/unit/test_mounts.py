"""Which mounts a process can reach, from its mountinfo lines: where the
agent looks for the bpf filesystem and the cgroup v2 hierarchy."""

from __future__ import annotations

from agent.dataplane.bpf.mounts import visible_mounts


def line(mount_id: int, point: str, fstype: str) -> str:
    return f"{mount_id} 1 0:{mount_id} / {point} rw,relatime shared:{mount_id} - {fstype} x rw"


HYBRID_HOST = [
    line(20, "/", "ext4"),
    line(21, "/sys", "sysfs"),
    line(22, "/sys/fs/cgroup", "tmpfs"),
    line(23, "/sys/fs/cgroup/unified", "cgroup2"),
    line(24, "/sys/fs/cgroup/pids", "cgroup"),
    line(25, "/sys/fs/bpf", "bpf"),
]


def test_a_hybrid_host_sees_every_mount() -> None:
    assert dict(visible_mounts(HYBRID_HOST)) == {
        "/": "ext4",
        "/sys": "sysfs",
        "/sys/fs/cgroup": "tmpfs",
        "/sys/fs/cgroup/unified": "cgroup2",
        "/sys/fs/cgroup/pids": "cgroup",
        "/sys/fs/bpf": "bpf",
    }


def test_a_mount_on_a_directory_above_hides_the_mounts_below_it() -> None:
    # A container's hostPath: a cgroup2 subtree bound over /sys/fs/cgroup.
    container = [*HYBRID_HOST, line(30, "/sys/fs/cgroup", "cgroup2")]
    mounts = dict(visible_mounts(container))
    assert mounts["/sys/fs/cgroup"] == "cgroup2"
    assert "/sys/fs/cgroup/unified" not in mounts and "/sys/fs/cgroup/pids" not in mounts
    assert mounts["/sys/fs/bpf"] == "bpf"


def test_a_later_mount_on_the_same_point_is_the_one_seen() -> None:
    mounts = visible_mounts([*HYBRID_HOST, line(31, "/sys/fs/bpf", "tmpfs")])
    assert [k for m, k in mounts if m == "/sys/fs/bpf"] == ["tmpfs"]


def test_mounts_made_after_the_cover_stay_visible() -> None:
    mounts = dict(
        visible_mounts(
            [
                *HYBRID_HOST,
                line(30, "/sys/fs/cgroup", "cgroup2"),
                line(32, "/sys/fs/cgroup/x", "bpf"),
            ]
        )
    )
    assert mounts["/sys/fs/cgroup/x"] == "bpf"
