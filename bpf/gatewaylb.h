/* gatewaylb: map layouts shared by the tc and cgroup programs.
 *
 * agent/dataplane/bpf/layouts.py mirrors these structs with ctypes; the two must
 * change together.  Addresses are stored in network byte order in 16 bytes:
 * IPv4 uses addr[0] and leaves the rest zero, IPv6 uses all four words.
 * Ports are in network byte order.
 *
 * Sizes and mark bits are -D defines set by the loader; the defaults below
 * only serve a stand-alone compile.
 */
#ifndef GATEWAYLB_H
#define GATEWAYLB_H

#ifndef GLB_PIN_DIR
#define GLB_PIN_DIR "/sys/fs/bpf/gatewaylb"
#endif
#ifndef GLB_MAX_FRONTENDS
#define GLB_MAX_FRONTENDS 16384
#endif
#ifndef GLB_MAX_BACKENDS
#define GLB_MAX_BACKENDS 65536
#endif
#ifndef GLB_POOL_SLOTS
#define GLB_POOL_SLOTS 4194304
#endif
#ifndef GLB_MAX_FLOWS
#define GLB_MAX_FLOWS 131072
#endif
/* skb->mark bits read by the agent's nftables table (inet gatewaylb_ebpf). */
#ifndef GLB_MARK_REJECT
#define GLB_MARK_REJECT 0x10000000
#endif
#ifndef GLB_MARK_MASQ
#define GLB_MARK_MASQ 0x20000000
#endif
/* A packet of a flow the programs translate themselves (either direction):
 * the agent's table exempts it from netfilter conntrack (notrack), which
 * would only duplicate the flow table at a cost on every packet. */
#ifndef GLB_MARK_NOTRACK
#define GLB_MARK_NOTRACK 0x40000000
#endif

#define GLB_FAMILY_V4 4
#define GLB_FAMILY_V6 6

/* Backend id 0 in a Maglev slot means "refuse this new flow" (reject share). */
#define GLB_BACKEND_REJECT 0

/* frontend flags */
#define GLB_FE_REJECT_ALL 1 /* no positive weight: refuse every new flow */

/* flow flags */
#define GLB_FLOW_MASQ 1 /* hairpin: the client is the backend, SNAT needed */

struct glb_frontend_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct glb_frontend {
	__u32 id;          /* index into glb_fe_stats */
	__u32 flags;
	__u32 table_off;   /* first slot of this frontend's Maglev table in glb_maglev */
	__u32 table_size;  /* prime; 0 when there is no table */
	__u32 reject_weight;
	__u32 generation;  /* bumped on every write, for debugging */
};

struct glb_backend {
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 pad;
	__u32 weight;
	__u32 frontend_id;
};

/* Flow key, forward direction: client (src) -> VIP (dst).  The reverse-NAT
 * table uses the same layout for the reply: backend (src) -> client (dst). */
struct glb_flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct glb_flow {
	__u32 addr[4];  /* backend */
	__u16 port;
	__u8 flags;
	__u8 pad;
	__u32 backend_id;
	__u32 frontend_id;
};

struct glb_rev {
	__u32 addr[4];  /* VIP */
	__u16 port;
	__u16 pad;
};

/* Local sockets (cgroup hooks): the reply source to restore per socket. */
struct glb_sock_key {
	__u64 cookie;
	__u32 addr;
	__u16 port;
	__u16 pad;
};

/* IPv6 sockets (an IPv4 VIP reached as ::ffff:a.b.c.d included): the backend
 * address as the socket sees it. */
struct glb_sock_key6 {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 pad2;
};

struct glb_counter {
	__u64 packets;
	__u64 bytes;  /* IP packet length */
	__u64 flows;  /* new flows */
};

#endif
