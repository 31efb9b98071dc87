/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service load balancing (IPv4): frontend lookup, backend selection, DNAT and
 * reverse NAT, over the maps of maps.h (mb_lb_services, mb_lb_backends,
 * mb_lb_revnat, mb_lb_affinity) and conntrack (mb_ct).
 *
 * Frontend: {addr = daddr, dport, slot 0, proto, family 4, scope 0} in
 * mb_lb_services, for TCP, UDP and SCTP packets (not non-first fragments).
 *
 * A flow keeps its backend: the first packet creates a CT_SERVICE entry keyed
 * by the *original* tuple {client:sport -> frontend:port, CT_SERVICE} whose
 * value carries backend_id and rev_nat_index (lifetime, counters and TCP state
 * as any CT entry, conntrack.h). Later packets reuse it as long as the backend
 * is still in mb_lb_backends (terminating or not); if it was removed, a new
 * backend is selected and the entry updated.
 *
 * Selection for a new flow (lb4_local):
 *   count 0                      DROP_NO_SERVICE (the caller rejects the flow)
 *   LB_SVC_F_AFFINITY            mb_lb_affinity {client, rev_nat_index}: its
 *                                backend if now - last_used <= timeout (slot 0's
 *                                backend_id, seconds) and the backend is active
 *   else LB_SVC_F_MAGLEV         slot (lb4_hash(5-tuple) % count) + 1
 *   else                         slot (bpf_get_prandom_u32() % count) + 1
 * A slot whose backend is missing or not active (LB_BACKEND_TERMINATING: the
 * agent leaves them out of the slots, this covers the race) is skipped: the
 * following slots (wrapping) are tried, LB_SELECT_TRIES slots in all, then
 * DROP_NO_SERVICE. With affinity, the choice is written back
 * ({now, backend}) for every new flow.
 *
 * Backend port 0 means "the frontend's port".
 *
 * Reverse NAT: the CT entry of the translated flow on the client side of the
 * node's datapath carries rev_nat_index; a reply that matches it gets its
 * source rewritten to mb_lb_revnat[rev_nat_index] (lb4_rev_nat). Which entry
 * that is depends on the client (bpf_lxc.c / bpf_host.c describe the paths):
 *   pod client      its CT_EGRESS entry (created after DNAT), used in the
 *                   client's policy_ingress
 *   host / world    the backend's CT_INGRESS entry (the rev_nat_index travels
 *                   in skb->cb[MB_CB_REVNAT] from from_host / from_netdev to the
 *                   backend's policy_ingress), used in the backend's
 *                   from_container before the reply is handed to the stack
 *
 * Hairpin: a pod whose flow is balanced to itself gets its source SNATed to
 * LB_HAIRPIN_IPV4 (maps.h) so the reply leaves the pod through its eth0 again;
 * the reply (to LB_HAIRPIN_IPV4) gets both translations reversed.
 */
#ifndef MB_LIB_LB_H
#define MB_LIB_LB_H

#include "common.h"
#include "l4.h"
#include "conntrack.h"
#include "events.h"
#include "ipv4.h"
#include "nat.h"

#define LB_SELECT_TRIES 4

struct lb4_result {
	__be32 addr;        /* backend address */
	__be16 port;        /* backend port (network order) */
	__u16 rev_nat;      /* the frontend's rev_nat_index */
	__u32 backend_id;
};

static __always_inline int lb4_proto_ok(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* The frontend's master entry (slot 0), or NULL. */
static __always_inline struct lb_service_value *lb4_lookup_service(__be32 addr, __be16 port,
								   __u8 proto)
{
	struct lb_service_key key = {
		.dport = port,
		.proto = proto,
		.family = MB_FAMILY_IPV4,
	};

	*(__be32 *)key.addr = addr;
	return bpf_map_lookup_elem(&mb_lb_services, &key);
}

static __always_inline struct lb_backend *lb4_backend(__u32 id)
{
	struct lb_backend *be = bpf_map_lookup_elem(&mb_lb_backends, &id);

	if (be && be->family != MB_FAMILY_IPV4)
		return NULL;
	return be;
}

/*
 * Flow hash for Maglev: of the original 5-tuple, stable for the flow. On the
 * raw (network order) values as 32/16-bit little-endian loads:
 *   h = fmix32(saddr * 0x9e3779b1 ^ daddr)
 *   h = fmix32(h ^ (sport << 16 | dport) * 0xcc9e2d51)
 *   h = fmix32(h ^ proto)
 * (fmix32: the murmur3 finaliser, events.h). test/datapath/lb.test.ts has the
 * same function in TypeScript.
 */
static __always_inline __u32 lb4_hash(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport,
				      __u8 proto)
{
	__u32 h = mb_fmix32(((__u32)saddr * 0x9e3779b1) ^ (__u32)daddr);

	h = mb_fmix32(h ^ (((__u32)sport << 16 | (__u32)dport) * 0xcc9e2d51));
	return mb_fmix32(h ^ proto);
}

/*
 * Create (or replace an expired) CT entry, as ct_create, with the service
 * fields: @rev_nat (reverse NAT for replies), @backend_id (CT_SERVICE).
 */
static __always_inline int lb_ct_create(const struct ct_key *key, const struct l4_info *l4,
					__u32 len, __u32 remote_id, __u32 now, __u16 rev_nat,
					__u32 backend_id, __u8 ct_flags)
{
	struct ct_value v = {
		.tx_packets = 1,
		.tx_bytes = len,
		.src_sec_id = remote_id,
		.last_report = now,
		.rev_nat_index = rev_nat,
		.backend_id = backend_id,
	};

	if (l4->proto == IPPROTO_TCP) {
		v.tx_flags_seen = l4->tcp_flags;
		v.flags = ct_tcp_flags(0, l4->tcp_flags, 1);
	}
	v.flags |= ct_flags;
	v.lifetime = ct_lifetime(l4->proto, v.flags, now);
	if (bpf_map_update_elem(&mb_ct, key, &v, BPF_ANY) < 0)
		return DROP_CT_CREATE_FAILED;
	return 0;
}

/*
 * Backend of the packet with tuple (@saddr, @daddr, @l4) to the frontend
 * @svc (its slot 0). Returns 0 with @res filled, or DROP_NO_SERVICE /
 * DROP_CT_CREATE_FAILED.
 */
static __always_inline int lb4_local(__be32 saddr, __be32 daddr, const struct l4_info *l4,
				     const struct lb_service_value *svc, __u32 len, __u32 now,
				     struct lb4_result *res)
{
	struct lb_service_key skey = {
		.dport = l4->dport,
		.proto = l4->proto,
		.family = MB_FAMILY_IPV4,
	};
	struct lb_affinity_key akey = {
		.rev_nat_index = svc->rev_nat_index,
		.family = MB_FAMILY_IPV4,
	};
	struct lb_affinity_value aval;
	struct lb_affinity_value *aff;
	struct lb_service_value *slot_v;
	struct ct_key ckey = {};
	struct lb_backend *be = NULL;
	struct ct_value *ct;
	__u32 id = 0, count, slot, i;
	__u8 flags = svc->flags;
	int ret;

	res->rev_nat = svc->rev_nat_index;
	ct_key_ipv4(&ckey, saddr, daddr, l4->sport, l4->dport, l4->proto, CT_SERVICE);
	ct = ct_lookup(&ckey, now);
	if (ct) {
		id = ct->backend_id;
		be = lb4_backend(id);
		if (be) {
			ct_update(ct, l4, len, 1, now);
			goto found;
		}
	}

	count = svc->count;
	if (!count)
		return DROP_NO_SERVICE;
	*(__be32 *)akey.client = saddr;
	if (flags & LB_SVC_F_AFFINITY) {
		aff = bpf_map_lookup_elem(&mb_lb_affinity, &akey);
		if (aff && now - aff->last_used <= svc->backend_id) {
			id = aff->backend_id;
			be = lb4_backend(id);
			if (be && be->flags == LB_BACKEND_ACTIVE)
				goto chosen;
		}
	}

	*(__be32 *)skey.addr = daddr;
	if (flags & LB_SVC_F_MAGLEV)
		slot = lb4_hash(saddr, daddr, l4->sport, l4->dport, l4->proto) % count;
	else
		slot = bpf_get_prandom_u32() % count;
	be = NULL;
	for (i = 0; i < LB_SELECT_TRIES; i++) {
		skey.slot = slot + 1;
		slot_v = bpf_map_lookup_elem(&mb_lb_services, &skey);
		if (slot_v) {
			id = slot_v->backend_id;
			be = lb4_backend(id);
			if (be && be->flags == LB_BACKEND_ACTIVE)
				break;
		}
		be = NULL;
		slot = slot + 1 < count ? slot + 1 : 0;
	}
	if (!be)
		return DROP_NO_SERVICE;

chosen:
	if (ct) {
		/* The flow's backend was removed: the flow moves to the new one. */
		ct->backend_id = id;
		ct_update(ct, l4, len, 1, now);
	} else {
		ret = lb_ct_create(&ckey, l4, len, 0, now, svc->rev_nat_index, id, 0);
		if (ret)
			return ret;
	}
	if (flags & LB_SVC_F_AFFINITY) {
		aval.last_used = now;
		aval.backend_id = id;
		bpf_map_update_elem(&mb_lb_affinity, &akey, &aval, BPF_ANY);
	}

found:
	res->addr = *(__be32 *)be->addr;
	res->port = be->port ? be->port : l4->dport;
	res->backend_id = id;
	return 0;
}

/*
 * DNAT the packet (destination @daddr:@l4->dport) to @res. Returns 0 or a drop
 * reason. Invalidates packet pointers.
 */
static __always_inline int lb4_dnat(struct __sk_buff *ctx, const struct l4_info *l4, __be32 daddr,
				    const struct lb4_result *res)
{
	int ret;

	ret = nat4_port(ctx, l4->l4_off, l4->proto, 0, l4->dport, res->port);
	if (ret)
		return ret;
	return nat4_addr(ctx, l4->l4_off, l4->proto, 0, daddr, res->addr);
}

/*
 * Reverse NAT of a reply of a translated flow: source -> the frontend
 * mb_lb_revnat[@rev_nat]; a hairpin reply (destination LB_HAIRPIN_IPV4) also
 * gets its destination back to @hairpin_dst (0: not a hairpin path).
 * Returns 0 or a drop reason (DROP_NO_SERVICE: the reverse NAT entry is gone).
 * Invalidates packet pointers.
 */
static __always_inline int lb4_rev_nat(struct __sk_buff *ctx, __u16 rev_nat, __be32 hairpin_dst)
{
	struct lb_revnat *rn = bpf_map_lookup_elem(&mb_lb_revnat, &rev_nat);
	__be32 saddr, daddr, to;
	__be16 sport, port;
	struct iphdr *ip;
	__u32 l4_off;
	__u8 proto;
	int ret;

	if (!rn || rn->family != MB_FAMILY_IPV4)
		return DROP_NO_SERVICE;
	to = *(__be32 *)rn->addr;
	port = rn->port;
	ip = ipv4_hdr(ctx);
	if (!ip)
		return DROP_INVALID;
	saddr = ip->saddr;
	daddr = ip->daddr;
	proto = ip->protocol;
	l4_off = ETH_HLEN + (__u32)ip->ihl * 4;
	if (!lb4_proto_ok(proto))
		return 0;   /* only TCP/UDP/SCTP flows are translated */
	if (port) {
		if (bpf_skb_load_bytes(ctx, l4_off, &sport, 2) < 0)
			return DROP_CT_INVALID_HDR;
		ret = nat4_port(ctx, l4_off, proto, 1, sport, port);
		if (ret)
			return ret;
	}
	ret = nat4_addr(ctx, l4_off, proto, 1, saddr, to);
	if (ret)
		return ret;
	if (hairpin_dst && daddr == bpf_htonl(LB_HAIRPIN_IPV4))
		return nat4_addr(ctx, l4_off, proto, 0, daddr, hairpin_dst);
	return 0;
}

/*
 * Turn the packet (a TCP/UDP/SCTP packet to a frontend without backends) into
 * an ICMP destination unreachable / port unreachable from the frontend to the
 * client, in place: IPv4 header (frontend -> client, TTL 64, TOS 0xc0),
 * ICMP type 3 code 3, the original IP header + its first 8 L4 bytes
 * (RFC 792), both checksums computed. The Ethernet header is left as it was
 * (the caller rewrites it). Returns 0, or -1 if the packet cannot be turned
 * (too short, IHL out of range, helper failure).
 */
static __noinline __attribute__((unused)) int lb4_icmp_port_unreach(struct __sk_buff *ctx)
{
	struct {
		struct iphdr ip;
		__u8 icmp[8];
		__u8 quote[60 + 8];
	} r = {};
	struct iphdr *ip;
	__be32 saddr, daddr;
	__u32 q;
	__u16 csum;

	ip = ipv4_hdr(ctx);
	if (!ip)
		return -1;
	saddr = ip->saddr;
	daddr = ip->daddr;
	q = (__u32)ip->ihl * 4 + 8;
	asm volatile("" : "+r"(q));
	if (q < 28 || q > sizeof(r.quote))
		return -1;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN, r.quote, q) < 0)
		return -1;
	if (bpf_skb_change_tail(ctx, ETH_HLEN + sizeof(r.ip) + sizeof(r.icmp) + q, 0) < 0)
		return -1;

	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tos = 0xc0;
	r.ip.tot_len = bpf_htons(sizeof(r.ip) + sizeof(r.icmp) + q);
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = daddr;
	r.ip.daddr = saddr;
	r.ip.check = csum_fold32(bpf_csum_diff(NULL, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));
	r.icmp[0] = ICMP_DEST_UNREACH;
	r.icmp[1] = 3;   /* port unreachable */
	csum = csum_fold32(bpf_csum_diff(NULL, 0, (__be32 *)r.icmp, sizeof(r.icmp) + q, 0));
	__builtin_memcpy(&r.icmp[2], &csum, 2);
	if (bpf_skb_store_bytes(ctx, ETH_HLEN, &r, sizeof(r.ip) + sizeof(r.icmp) + q, 0) < 0)
		return -1;
	return 0;
}

#endif
