/* gatewaylb L4 load balancer: tc (clsact, direct-action) and cgroup sock_addr programs.
 *
 * glb_ingress  tc ingress of every interface where VIP traffic arrives.  Looks
 *              up (vip, port, proto); a known flow keeps its backend (LRU flow
 *              table); a new flow takes the backend of its Maglev slot
 *              (hash of the 5-tuple).  Rewrites destination address and port
 *              (DNAT) and records the reverse translation.  A backend's reply
 *              to such a flow is translated back (source to VIP:port) here too.
 *              Both are then forwarded by the program itself when the kernel's
 *              FIB resolves the next hop (bpf_fib_lookup + bpf_redirect, the
 *              "host routing" of Cilium): the packet skips the node's IP stack,
 *              netfilter and bridge.  Anything the FIB cannot forward (local
 *              destination, fragmentation needed, TTL expiring, no route) goes
 *              up the stack as before, marked for notrack: the flow table here
 *              is the connection state, netfilter conntrack would only repeat it.
 *              Refused flows (reject share, no backend) and hairpin flows are
 *              only marked: nftables in the agent's table rejects / masquerades
 *              them.
 * glb_egress   tc egress of the same interfaces: reverse NAT of the replies that
 *              went through netfilter (hairpin flows, after conntrack undid the
 *              masquerade; replies that arrived on an interface without
 *              glb_ingress).  Packets glb_ingress already handled carry its mark
 *              and are passed at once.
 * glb_connect4, glb_sendmsg4, glb_recvmsg4, glb_getpeername4 and their
 * ...6 twins  cgroup sock_addr hooks for local processes: translate at
 *              connect()/sendmsg() time (per socket, Maglev by socket cookie),
 *              restore the VIP as the peer for recvmsg()/getpeername().  An
 *              IPv6 socket reaching an IPv4 VIP (::ffff:a.b.c.d) is translated
 *              as IPv4.
 *
 * Every map is pinned under GLB_PIN_DIR so a new loader adopts it.
 * IPv4 and IPv6 share the maps (16-byte addresses), but for the socket reverse map.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "gatewaylb.h"

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define GLB_HTONS(x) __builtin_bswap16(x)
#else
#define GLB_HTONS(x) (x)
#endif
#define GLB_NTOHS(x) GLB_HTONS(x)
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define GLB_HTONL(x) __builtin_bswap32(x)
#else
#define GLB_HTONL(x) (x)
#endif

#ifndef GLB_HOST_ROUTING
#define GLB_HOST_ROUTING 1
#endif
/* bcc's helpers.h declares bpf_redirect_neigh without its `plen` argument. */
static long (*glb_redirect_neigh)(__u32 ifindex, void *params, int plen,
				  __u64 flags) = (void *)BPF_FUNC_redirect_neigh;
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

BPF_TABLE_PINNED("hash", struct glb_frontend_key, struct glb_frontend, glb_frontends,
		 GLB_MAX_FRONTENDS, GLB_PIN_DIR "/frontends");
BPF_TABLE_PINNED("hash", __u32, struct glb_backend, glb_backends, GLB_MAX_BACKENDS,
		 GLB_PIN_DIR "/backends");
/* mmap-able: the agent writes new tables straight into the pool's memory (one
 * memcpy instead of a syscall that copies 10 M slots one by one). */
BPF_TABLE_PINNED("array", __u32, __u32, glb_maglev, GLB_POOL_SLOTS, GLB_PIN_DIR "/maglev",
		 BPF_F_MMAPABLE);
BPF_TABLE_PINNED("lru_hash", struct glb_flow_key, struct glb_flow, glb_flows, GLB_MAX_FLOWS,
		 GLB_PIN_DIR "/flows");
BPF_TABLE_PINNED("lru_hash", struct glb_flow_key, struct glb_rev, glb_rev, GLB_MAX_FLOWS,
		 GLB_PIN_DIR "/rev");
BPF_TABLE_PINNED("lru_hash", struct glb_sock_key, struct glb_rev, glb_sock_rev, GLB_MAX_FLOWS,
		 GLB_PIN_DIR "/sock_rev");
BPF_TABLE_PINNED("lru_hash", struct glb_sock_key6, struct glb_rev, glb_sock_rev6, GLB_MAX_FLOWS,
		 GLB_PIN_DIR "/sock_rev6");
BPF_TABLE_PINNED("percpu_array", __u32, struct glb_counter, glb_fe_stats, GLB_MAX_FRONTENDS,
		 GLB_PIN_DIR "/fe_stats");
BPF_TABLE_PINNED("percpu_array", __u32, struct glb_counter, glb_be_stats, GLB_MAX_BACKENDS,
		 GLB_PIN_DIR "/be_stats");

struct glb_pkt {
	struct glb_flow_key k;
	__u32 l3_off;
	__u32 l4_off;
	__u32 len;
	__u8 tcp_flags;
};

#define GLB_TCP_SYN 0x02
#define GLB_TCP_ACK 0x10

/* murmur3 (32-bit) over the flow key: stable, so the same 5-tuple lands on
 * the same Maglev slot on every node and after a flow-table flush. */
static __always_inline __u32 glb_mix(__u32 h, __u32 v)
{
	v *= 0xcc9e2d51;
	v = (v << 15) | (v >> 17);
	v *= 0x1b873593;
	h ^= v;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 glb_final(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 glb_flow_hash(struct glb_flow_key *k)
{
	__u32 h = 0x9747b28c;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		h = glb_mix(h, k->src[i]);
		h = glb_mix(h, k->dst[i]);
	}
	h = glb_mix(h, ((__u32)k->sport << 16) | k->dport);
	h = glb_mix(h, ((__u32)k->family << 8) | k->proto);
	return glb_final(h);
}

/* Parse into locals only: the helpers that rewrite the packet invalidate
 * every packet pointer, so later code works with offsets. */
static __always_inline int glb_parse(struct __sk_buff *skb, struct glb_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u32 l4_off;

	if ((void *)(eth + 1) > data_end)
		return -1;
	p->l3_off = sizeof(*eth);
	if (eth->h_proto == GLB_HTONS(ETH_P_IP)) {
		struct iphdr *ip = data + sizeof(*eth);

		if ((void *)(ip + 1) > data_end)
			return -1;
		/* Fragments carry no (or a partial) L4 header: not balanced. */
		if (ip->frag_off & GLB_HTONS(0x3fff))
			return -1;
		if (ip->ihl < 5)
			return -1;
		p->k.family = GLB_FAMILY_V4;
		p->k.proto = ip->protocol;
		p->k.src[0] = ip->saddr;
		p->k.dst[0] = ip->daddr;
		p->len = GLB_NTOHS(ip->tot_len);
		l4_off = sizeof(*eth) + ip->ihl * 4;
	} else if (eth->h_proto == GLB_HTONS(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + sizeof(*eth);

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		/* Extension headers are not walked: such packets pass untouched. */
		p->k.family = GLB_FAMILY_V6;
		p->k.proto = ip6->nexthdr;
		__builtin_memcpy(p->k.src, &ip6->saddr, 16);
		__builtin_memcpy(p->k.dst, &ip6->daddr, 16);
		p->len = GLB_NTOHS(ip6->payload_len) + sizeof(*ip6);
		l4_off = sizeof(*eth) + sizeof(*ip6);
	} else {
		return -1;
	}
	p->l4_off = l4_off;
	if (p->k.proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4_off;

		if ((void *)(th + 1) > data_end)
			return -1;
		p->k.sport = th->source;
		p->k.dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
	} else if (p->k.proto == IPPROTO_UDP) {
		struct udphdr *uh = data + l4_off;

		if ((void *)(uh + 1) > data_end)
			return -1;
		p->k.sport = uh->source;
		p->k.dport = uh->dest;
	} else {
		return -1;
	}
	return 0;
}

/* Rewrite the destination (dst=1) or source (dst=0) address and port, with
 * the L3 checksum (IPv4) and the L4 checksum (pseudo-header for addresses). */
static __always_inline int glb_nat(struct __sk_buff *skb, struct glb_pkt *p, int dst,
				   __u32 *old_addr, __u32 *new_addr, __u16 old_port, __u16 new_port)
{
	__u32 l3_off = p->l3_off;
	__u32 l4_off = p->l4_off;
	__u32 csum_off;
	__u64 mangled = 0;

	if (p->k.proto == IPPROTO_TCP) {
		csum_off = l4_off + offsetof(struct tcphdr, check);
	} else {
		csum_off = l4_off + offsetof(struct udphdr, check);
		mangled = BPF_F_MARK_MANGLED_0;
	}
	if (p->k.family == GLB_FAMILY_V4) {
		__u32 addr_off = l3_off + (dst ? offsetof(struct iphdr, daddr)
					       : offsetof(struct iphdr, saddr));
		__u32 from = old_addr[0];
		__u32 to = new_addr[0];

		if (bpf_l4_csum_replace(skb, csum_off, from, to,
					BPF_F_PSEUDO_HDR | mangled | sizeof(to)))
			return -1;
		if (bpf_l3_csum_replace(skb, l3_off + offsetof(struct iphdr, check), from, to,
					sizeof(to)))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &to, sizeof(to), 0))
			return -1;
	} else {
		__u32 addr_off = l3_off + (dst ? offsetof(struct ipv6hdr, daddr)
					       : offsetof(struct ipv6hdr, saddr));
		__u32 from[4], to[4];
		__s64 diff;

		__builtin_memcpy(from, old_addr, 16);
		__builtin_memcpy(to, new_addr, 16);
		diff = bpf_csum_diff(from, 16, to, 16, 0);
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR | mangled))
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, to, 16, 0))
			return -1;
	}
	if (old_port != new_port) {
		__u32 port_off = l4_off + (dst ? 2 : 0); /* dest / source, same in TCP and UDP */

		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | sizeof(new_port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
			return -1;
	}
	return 0;
}

static __always_inline void glb_count_fe(__u32 id, __u32 len, __u32 new_flow)
{
	struct glb_counter *c = glb_fe_stats.lookup(&id);

	if (c) {
		c->packets += 1;
		c->bytes += len;
		c->flows += new_flow;
	}
}

static __always_inline void glb_count_be(__u32 id, __u32 len, __u32 new_flow)
{
	struct glb_counter *c = glb_be_stats.lookup(&id);

	if (c) {
		c->packets += 1;
		c->bytes += len;
		c->flows += new_flow;
	}
}

static __always_inline int glb_addr_eq(__u32 *a, __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* The backend of a new flow: the frontend's Maglev slot for `hash`.  NULL when
 * the flow is refused (no positive weight, the reject share's slot, or a slot
 * whose backend is gone); *bid is the chosen id otherwise. */
static __always_inline struct glb_backend *glb_pick(struct glb_frontend *fe, __u32 hash,
						    __u32 *bid)
{
	__u32 slot;
	__u32 *slotp;

	if ((fe->flags & GLB_FE_REJECT_ALL) || fe->table_size == 0)
		return NULL;
	slot = fe->table_off + hash % fe->table_size;
	slotp = glb_maglev.lookup(&slot);
	if (!slotp || *slotp == GLB_BACKEND_REJECT)
		return NULL;
	*bid = *slotp;
	return glb_backends.lookup(bid);
}

/* Sockets are balanced by their cookie: one backend per socket. */
static __always_inline __u32 glb_cookie_hash(__u64 cookie)
{
	return glb_final((__u32)cookie ^ glb_mix(0x9747b28c, cookie >> 32));
}

/* Forward a translated packet to its next hop without the node's IP stack, as
 * ip_forward would: FIB lookup (policy rules included) from the ingress
 * interface, TTL / hop limit decrement, new MAC addresses, redirect to the
 * egress device.  TC_ACT_OK (the stack path) whenever the FIB has no forwarding
 * answer: local or blackhole destination, forwarding off, MTU exceeded (the
 * stack then sends the ICMP error), TTL about to expire. */
static __always_inline int glb_forward(struct __sk_buff *skb, struct glb_pkt *p, __u32 *src,
				       __u32 *dst)
{
#if GLB_HOST_ROUTING
	struct bpf_fib_lookup fib = {};
	__u8 ttl;
	int rc;

	if (bpf_skb_load_bytes(skb, p->l3_off + (p->k.family == GLB_FAMILY_V4
						     ? offsetof(struct iphdr, ttl)
						     : offsetof(struct ipv6hdr, hop_limit)),
			       &ttl, 1))
		return TC_ACT_OK;
	if (ttl <= 1)
		return TC_ACT_OK;
	fib.ifindex = skb->ingress_ifindex;
	fib.l4_protocol = p->k.proto;
	fib.tot_len = p->len;
	if (p->k.family == GLB_FAMILY_V4) {
		fib.family = AF_INET;
		fib.ipv4_src = src[0];
		fib.ipv4_dst = dst[0];
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, src, 16);
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	if (p->k.family == GLB_FAMILY_V4) {
		/* The TTL shares a 16-bit checksum word with the protocol. */
		__u16 old_word = GLB_HTONS(((__u16)ttl << 8) | p->k.proto);
		__u16 new_word = GLB_HTONS(((__u16)(ttl - 1) << 8) | p->k.proto);

		if (bpf_l3_csum_replace(skb, p->l3_off + offsetof(struct iphdr, check), old_word,
					new_word, sizeof(new_word)))
			return TC_ACT_SHOT;
		ttl -= 1;
		if (bpf_skb_store_bytes(skb, p->l3_off + offsetof(struct iphdr, ttl), &ttl, 1, 0))
			return TC_ACT_SHOT;
	} else {
		ttl -= 1;
		if (bpf_skb_store_bytes(skb, p->l3_off + offsetof(struct ipv6hdr, hop_limit), &ttl,
					1, 0))
			return TC_ACT_SHOT;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		/* The kernel resolves the neighbour and queues the packet meanwhile. */
		return glb_redirect_neigh(fib.ifindex, NULL, 0, 0);
	if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	return bpf_redirect(fib.ifindex, 0);
#else
	return TC_ACT_OK;
#endif
}

int glb_ingress(struct __sk_buff *skb)
{
	struct glb_pkt p = {};
	struct glb_frontend_key fk = {};
	struct glb_frontend *fe;
	struct glb_flow flow = {};
	struct glb_flow *known;
	__u32 new_flow = 0;
	__u32 fe_id;

	if (glb_parse(skb, &p))
		return TC_ACT_OK;
	__builtin_memcpy(fk.addr, p.k.dst, 16);
	fk.port = p.k.dport;
	fk.proto = p.k.proto;
	fk.family = p.k.family;
	fe = glb_frontends.lookup(&fk);
	if (!fe) {
		/* A backend's reply to a flow translated here (masqueraded flows'
		 * replies are addressed to the node and do not match). */
		struct glb_rev *rvp = glb_rev.lookup(&p.k);
		struct glb_rev rv;

		if (!rvp)
			return TC_ACT_OK;
		rv = *rvp;
		skb->mark |= GLB_MARK_NOTRACK;
		if (glb_nat(skb, &p, 0, p.k.src, rv.addr, p.k.sport, rv.port))
			return TC_ACT_SHOT;
		return glb_forward(skb, &p, rv.addr, p.k.dst);
	}
	fe_id = fe->id;

	known = glb_flows.lookup(&p.k);
	if (known) {
		struct glb_backend *still;

		flow = *known;
		/* The flow's backend left the frontend altogether (a draining one,
		 * weight 0, is still there).  A UDP flow then moves to a live
		 * backend instead of black-holing (the kube-proxy bug class), and
		 * so does a fresh SYN reusing the 5-tuple; an established TCP
		 * connection keeps its backend, as conntrack would.  The address
		 * is compared too: a removed backend's id may be given again.
		 * A fresh SYN also leaves a draining backend: it is a new
		 * connection (conntrack starts a new entry for a SYN on a closed
		 * one), and a terminating pod is about to stop listening. */
		if (p.k.proto == IPPROTO_UDP ||
		    (p.tcp_flags & (GLB_TCP_SYN | GLB_TCP_ACK)) == GLB_TCP_SYN) {
			still = glb_backends.lookup(&flow.backend_id);
			if (!still || !glb_addr_eq(still->addr, flow.addr) ||
			    still->port != flow.port ||
			    (p.k.proto == IPPROTO_TCP && still->weight == 0))
				known = NULL;
		}
	}
	if (!known) {
		struct glb_backend *be;
		__u32 bid = 0;

		be = glb_pick(fe, glb_flow_hash(&p.k), &bid);
		if (!be)
			goto reject;
		__builtin_memset(&flow, 0, sizeof(flow));
		__builtin_memcpy(flow.addr, be->addr, 16);
		flow.port = be->port;
		flow.backend_id = bid;
		flow.frontend_id = fe_id;
		/* Hairpin: the client is the chosen backend; without SNAT the
		 * backend would answer itself directly. */
		if (glb_addr_eq(flow.addr, p.k.src))
			flow.flags |= GLB_FLOW_MASQ;
		glb_flows.update(&p.k, &flow);
		new_flow = 1;
	}
	{
		/* (Re)write the reply translation: the LRU may have evicted it
		 * independently of the forward entry. */
		struct glb_flow_key rk = {};
		struct glb_rev rv = {};

		__builtin_memcpy(rk.src, flow.addr, 16);
		__builtin_memcpy(rk.dst, p.k.src, 16);
		rk.sport = flow.port;
		rk.dport = p.k.sport;
		rk.proto = p.k.proto;
		rk.family = p.k.family;
		if (new_flow || !glb_rev.lookup(&rk)) {
			__builtin_memcpy(rv.addr, p.k.dst, 16);
			rv.port = p.k.dport;
			glb_rev.update(&rk, &rv);
		}
	}
	glb_count_fe(fe_id, p.len, new_flow);
	glb_count_be(flow.backend_id, p.len, new_flow);
	/* Masqueraded flows need conntrack for the SNAT; all others skip it. */
	if (flow.flags & GLB_FLOW_MASQ) {
		skb->mark |= GLB_MARK_MASQ;
		if (glb_nat(skb, &p, 1, p.k.dst, flow.addr, p.k.dport, flow.port))
			return TC_ACT_SHOT;
		return TC_ACT_OK;
	}
	skb->mark |= GLB_MARK_NOTRACK;
	if (glb_nat(skb, &p, 1, p.k.dst, flow.addr, p.k.dport, flow.port))
		return TC_ACT_SHOT;
	return glb_forward(skb, &p, p.k.src, flow.addr);

reject:
	glb_count_fe(fe_id, p.len, 0);
	/* Backend id 0 counts refused new flows. */
	glb_count_be(GLB_BACKEND_REJECT, p.len, 1);
	skb->mark |= GLB_MARK_REJECT;
	return TC_ACT_OK;
}

int glb_egress(struct __sk_buff *skb)
{
	struct glb_pkt p = {};
	struct glb_rev *rvp;
	struct glb_rev rv;

	/* Translated (or refused) at ingress already: nothing left to do. */
	if (skb->mark & (GLB_MARK_NOTRACK | GLB_MARK_MASQ | GLB_MARK_REJECT))
		return TC_ACT_OK;
	if (glb_parse(skb, &p))
		return TC_ACT_OK;
	rvp = glb_rev.lookup(&p.k);
	if (!rvp)
		return TC_ACT_OK;
	rv = *rvp;
	if (glb_nat(skb, &p, 0, p.k.src, rv.addr, p.k.sport, rv.port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* ---- local processes: cgroup sock_addr hooks (IPv4) ---- */

static __always_inline int glb_sock_translate(struct bpf_sock_addr *ctx, __u32 new_flow)
{
	struct glb_frontend_key fk = {};
	struct glb_frontend *fe;
	struct glb_backend *be;
	struct glb_sock_key sk = {};
	struct glb_rev rv = {};
	__u32 bid = 0, fe_id;
	__u64 cookie;
	__u8 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	fk.addr[0] = ctx->user_ip4;
	fk.port = (__u16)ctx->user_port;
	fk.proto = proto;
	fk.family = GLB_FAMILY_V4;
	fe = glb_frontends.lookup(&fk);
	if (!fe)
		return 1;
	fe_id = fe->id;
	cookie = bpf_get_socket_cookie(ctx);
	be = glb_pick(fe, glb_cookie_hash(cookie), &bid);
	if (!be)
		return 0; /* refused: connect()/sendmsg() fail with EPERM */
	sk.cookie = cookie;
	sk.addr = be->addr[0];
	sk.port = be->port;
	rv.addr[0] = fk.addr[0];
	rv.port = fk.port;
	glb_sock_rev.update(&sk, &rv);
	ctx->user_ip4 = be->addr[0];
	ctx->user_port = be->port;
	glb_count_fe(fe_id, 0, new_flow);
	glb_count_be(bid, 0, new_flow);
	return 1;
}

int glb_connect4(struct bpf_sock_addr *ctx)
{
	return glb_sock_translate(ctx, 1);
}

int glb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return glb_sock_translate(ctx, 0);
}

static __always_inline int glb_sock_restore(struct bpf_sock_addr *ctx)
{
	struct glb_sock_key sk = {};
	struct glb_rev *rv;

	sk.cookie = bpf_get_socket_cookie(ctx);
	sk.addr = ctx->user_ip4;
	sk.port = (__u16)ctx->user_port;
	rv = glb_sock_rev.lookup(&sk);
	if (rv) {
		ctx->user_ip4 = rv->addr[0];
		ctx->user_port = rv->port;
	}
	return 1;
}

int glb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return glb_sock_restore(ctx);
}

int glb_getpeername4(struct bpf_sock_addr *ctx)
{
	return glb_sock_restore(ctx);
}

/* ---- local processes: IPv6 sockets ---- */

static __always_inline int glb_v4_mapped(__u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == GLB_HTONL(0x0000ffff);
}

static __always_inline int glb_sock_translate6(struct bpf_sock_addr *ctx, __u32 new_flow)
{
	struct glb_frontend_key fk = {};
	struct glb_frontend *fe;
	struct glb_backend *be;
	struct glb_sock_key6 sk = {};
	struct glb_rev rv = {};
	__u32 ip[4];
	__u32 bid = 0, fe_id, mapped;
	__u64 cookie;
	__u8 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	ip[0] = ctx->user_ip6[0];
	ip[1] = ctx->user_ip6[1];
	ip[2] = ctx->user_ip6[2];
	ip[3] = ctx->user_ip6[3];
	mapped = glb_v4_mapped(ip);
	if (mapped) {
		fk.addr[0] = ip[3];
		fk.family = GLB_FAMILY_V4;
	} else {
		__builtin_memcpy(fk.addr, ip, 16);
		fk.family = GLB_FAMILY_V6;
	}
	fk.port = (__u16)ctx->user_port;
	fk.proto = proto;
	fe = glb_frontends.lookup(&fk);
	if (!fe)
		return 1;
	fe_id = fe->id;
	cookie = bpf_get_socket_cookie(ctx);
	be = glb_pick(fe, glb_cookie_hash(cookie), &bid);
	if (!be)
		return 0; /* refused: connect()/sendmsg() fail with EPERM */
	sk.cookie = cookie;
	__builtin_memcpy(sk.addr, ip, 16);
	if (mapped)
		sk.addr[3] = be->addr[0];
	else
		__builtin_memcpy(sk.addr, be->addr, 16);
	sk.port = be->port;
	__builtin_memcpy(rv.addr, ip, 16); /* the VIP as this socket wrote it */
	rv.port = fk.port;
	glb_sock_rev6.update(&sk, &rv);
	ctx->user_ip6[0] = sk.addr[0];
	ctx->user_ip6[1] = sk.addr[1];
	ctx->user_ip6[2] = sk.addr[2];
	ctx->user_ip6[3] = sk.addr[3];
	ctx->user_port = be->port;
	glb_count_fe(fe_id, 0, new_flow);
	glb_count_be(bid, 0, new_flow);
	return 1;
}

int glb_connect6(struct bpf_sock_addr *ctx)
{
	return glb_sock_translate6(ctx, 1);
}

int glb_sendmsg6(struct bpf_sock_addr *ctx)
{
	return glb_sock_translate6(ctx, 0);
}

static __always_inline int glb_sock_restore6(struct bpf_sock_addr *ctx)
{
	struct glb_sock_key6 sk = {};
	struct glb_rev *rv;

	sk.cookie = bpf_get_socket_cookie(ctx);
	sk.addr[0] = ctx->user_ip6[0];
	sk.addr[1] = ctx->user_ip6[1];
	sk.addr[2] = ctx->user_ip6[2];
	sk.addr[3] = ctx->user_ip6[3];
	sk.port = (__u16)ctx->user_port;
	rv = glb_sock_rev6.lookup(&sk);
	if (rv) {
		ctx->user_ip6[0] = rv->addr[0];
		ctx->user_ip6[1] = rv->addr[1];
		ctx->user_ip6[2] = rv->addr[2];
		ctx->user_ip6[3] = rv->addr[3];
		ctx->user_port = rv->port;
	} else if (glb_v4_mapped(sk.addr)) {
		/* sendto() of a v4-mapped address runs the IPv4 sendmsg hook (the
		 * kernel hands it to udp_sendmsg), so its translation is in the
		 * IPv4 map; the reply still comes through this IPv6 hook. */
		struct glb_sock_key k4 = {};

		k4.cookie = sk.cookie;
		k4.addr = sk.addr[3];
		k4.port = sk.port;
		rv = glb_sock_rev.lookup(&k4);
		if (rv) {
			ctx->user_ip6[3] = rv->addr[0];
			ctx->user_port = rv->port;
		}
	}
	return 1;
}

int glb_recvmsg6(struct bpf_sock_addr *ctx)
{
	return glb_sock_restore6(ctx);
}

int glb_getpeername6(struct bpf_sock_addr *ctx)
{
	return glb_sock_restore6(ctx);
}
