"""The eBPF dataplane: L4 frontends in the maps of the programs in bpf/.

- `dataplane`: `EbpfDataplane`, the kernel dataplane (programs loaded and
  attached, maps opened, the nft table) and its teardown;
- `reconciler`: `MapReconciler`, the maps converged to a desired state
  (adoption, diff, plan, write order, failure isolation), over the `Map`
  interface only, so it runs in unit tests against in-memory maps;
- `view`: reading the maps back (`gatewaylb status`, counters).

The kernel mechanics they stand on (bpf(2), layouts, bcc, attach points,
allocators) are agent/dataplane/bpf/.
"""
