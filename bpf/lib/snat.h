/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * NodePort to a backend on another node (externalTrafficPolicy Cluster).
 * The client's packet arrives on this node's device (from_netdev); after the
 * DNAT to the backend its source becomes this node's address and a port
 * picked here (snat4_out), and it crosses the overlay; the backend answers
 * the node, the overlay brings the reply back (from_overlay), whose
 * destination is restored to the client and source to the frontend
 * (snat4_in), and it is routed out towards the client. Maps: mb_snat
 * (layout and semantics in maps.h).
 */
#ifndef MB_LIB_SNAT_H
#define MB_LIB_SNAT_H

#include "common.h"
#include "nat.h"
#include "l4.h"
#include "conntrack.h"

#define SNAT_TRIES 16

/*
 * SNAT the (already DNATed) packet with tuple @l4 from @client to @node_addr:
 * reuse the flow's port or claim a free one. Returns 0 or a drop reason.
 * Invalidates packet pointers.
 */
static __always_inline int snat4_out(struct __sk_buff *ctx, const struct l4_info *l4, __be32 client,
				     __be32 backend, __be16 backend_port, __be32 node_addr, __u16 rev_nat)
{
	struct snat4_key out = {
		.saddr = client, .daddr = backend, .sport = l4->sport, .dport = backend_port,
		.proto = l4->proto, .dir = SNAT_OUT,
	};
	struct snat4_key in = {
		.saddr = backend, .daddr = node_addr, .sport = backend_port,
		.proto = l4->proto, .dir = SNAT_IN,
	};
	struct snat4_value rev = { .addr = client, .port = l4->sport, .rev_nat_index = rev_nat };
	struct snat4_value fwd = { .addr = node_addr };
	struct snat4_value *cur;
	__u32 now = ct_now(), i, port;
	int ret;

	cur = bpf_map_lookup_elem(&mb_snat, &out);
	if (cur && cur->addr == node_addr) {
		fwd.port = cur->port;
	} else {
		port = bpf_ntohs(l4->sport);
		rev.created = now;
		for (i = 0; i < SNAT_TRIES; i++) {
			if (i)
				port = bpf_get_prandom_u32();
			in.dport = bpf_htons(SNAT_PORT_MIN + port % SNAT_PORT_SPAN);
			if (bpf_map_update_elem(&mb_snat, &in, &rev, BPF_NOEXIST) == 0)
				break;
		}
		if (i == SNAT_TRIES)
			return DROP_NAT_NO_PORT;
		fwd.port = in.dport;
		fwd.created = now;
		if (bpf_map_update_elem(&mb_snat, &out, &fwd, BPF_ANY) < 0) {
			bpf_map_delete_elem(&mb_snat, &in);
			return DROP_NAT_NO_PORT;
		}
	}
	ret = nat4_port(ctx, l4->l4_off, l4->proto, 1, l4->sport, fwd.port);
	if (ret)
		return ret;
	return nat4_addr(ctx, l4->l4_off, l4->proto, 1, client, node_addr);
}

/*
 * A reply to the node address @daddr: if it belongs to a NodePort flow this
 * node SNATed, restore its destination (the client) and its source (the
 * frontend). Returns 1 (translated), 0 (not ours), or a negative drop reason.
 * Invalidates packet pointers.
 */
static __always_inline int snat4_in(struct __sk_buff *ctx, const struct iphdr *ip)
{
	struct snat4_key in = { .saddr = ip->saddr, .daddr = ip->daddr, .proto = ip->protocol, .dir = SNAT_IN };
	__u32 l4_off = ETH_HLEN + (__u32)ip->ihl * 4;
	__be32 daddr = ip->daddr;
	struct snat4_value *v;
	__be16 ports[2];
	int ret;

	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return 0;
	if (bpf_skb_load_bytes(ctx, l4_off, ports, sizeof(ports)) < 0)
		return 0;
	in.sport = ports[0];
	in.dport = ports[1];
	v = bpf_map_lookup_elem(&mb_snat, &in);
	if (!v)
		return 0;
	ret = nat4_port(ctx, l4_off, in.proto, 0, in.dport, v->port);
	if (!ret)
		ret = nat4_addr(ctx, l4_off, in.proto, 0, daddr, v->addr);
	if (!ret)
		ret = lb4_rev_nat(ctx, v->rev_nat_index, 0);
	return ret ? -ret : 1;
}

#endif
