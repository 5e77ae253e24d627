"""The kernel mechanics of the eBPF dataplane, one concern a module.

- `syscall`: the bpf(2) system call and one map by its fd (`BpfMap`);
- `layouts`: the ctypes mirrors of bpf/gatewaylb.h and the encoding of keys,
  addresses and values into them;
- `maps`: the `Map` interface the dataplane writes through, and opening the
  set of maps (by their pins, or through a program that uses them);
- `loader`: compiling bpf/lb.c with bcc and loading its programs;
- `attach`: tc filters and cgroup sock_addr hooks, attached and detached;
- `alloc`: the allocators of frontend/backend ids and Maglev pool extents;
- `nft_table`: the nftables table that completes what the programs mark;
- `mounts`: where the bpf and cgroup v2 file systems are mounted.

Nothing here knows a desired state or a Gateway, nor which frontends belong in
the maps: what to write and when is the dataplane's business
(agent/dataplane/ebpf/).  The C itself stays in the repository's bpf/.
"""


class EbpfError(RuntimeError):
    """The eBPF dataplane cannot do something: compile, load, attach, allocate."""
