"""The nftables dataplane, split by responsibility.

    layout     names, shards, base chains, a frontend chain's cascade and comments
    objects    nftables objects as data: a Transaction written, a Listing read
    render     the ruleset as objects, and the one renderer of them (nft text)
    state      NftState: what the kernel holds, as far as the dataplane knows
    plan       the one diff: NftState and desired frontends -> a Transaction
    parse      a Listing -> programmed FrontendSpecs, tags and broken objects
    netlink    NetlinkReader: nf_tables read over NETLINK_NETFILTER
    transport  the Transport seam and KernelNft (libnftables writes, netlink reads)
    fake       FakeNft: the in-memory Transport of the unit tests
    dataplane  NftablesDataplane: reconcile, adoption, counters, cleanup

Imports nothing itself, so that `netlink` can be used without libnftables.
"""
