"""The L4 kernel dataplanes and what they share.

- `base.py`: the contract every dataplane keeps (a reconciler of the L4 part of
  a DesiredState, adopting a previous run's state) and the counter types;
- `frontends.py`: one normalised frontend for both (validation and canonical
  form), so they accept and refuse the same input;
- `nft/`: the nftables dataplane; `ebpf/` the eBPF one, on the kernel
  mechanics of `bpf/` (the C programs are the repository's bpf/);
- `maglev.py`: the Maglev table fill; `select.py`: choosing a dataplane
  (`--dataplane auto`); `inventory.py`: every kernel object gatewaylb may have
  left on a node (status, cleanup); `vips.py`: the guard of unserved VIP ports
  and the L7 VIPs as stages of the agent loop.

Nothing here reads the cluster or the manifests, or renders the proxy.
"""
