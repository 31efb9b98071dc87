/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection tracking in the shared mb_ct LRU map (struct ct_key / ct_value,
 * maps.h). Entries are per endpoint side:
 *
 *   {tuple, CT_EGRESS}   a flow the endpoint opened (created at its egress;
 *                        saddr = the endpoint, enforced by anti-spoofing)
 *   {tuple, CT_INGRESS}  a flow the endpoint accepted (created at its ingress;
 *                        daddr = the endpoint)
 *
 * At an endpoint's egress (its ingress: swap CT_EGRESS/CT_INGRESS):
 *   {reverse(p), CT_INGRESS} alive          -> reply       (no policy)
 *   ICMP error, {inner, CT_INGRESS} alive   -> related     (no policy)
 *   {tuple(p), CT_EGRESS} alive             -> established (policy checked)
 *   else                                    -> new (policy; entry created if allowed)
 *
 * Value: tx_* count the entry's forward direction, rx_* its replies;
 * {tx,rx}_flags_seen the TCP flags seen per direction; last_report the time
 * (seconds, as lifetime) of the flow's last trace report (trace.h,
 * MONITOR_AGG_LOW), initially its creation.
 * lifetime is an absolute expiry in seconds of CLOCK_MONOTONIC
 * (bpf_ktime_get_coarse_ns() / 1e9, see ct_now); an entry with
 * lifetime < now is treated as absent (the agent's GC deletes it by the same
 * rule). Lifetimes (maps.h), refreshed by every packet:
 *   non-TCP                          CT_LIFETIME_NONTCP (60 s)
 *   TCP, only SYNs seen so far       CT_LIFETIME_SYN (60 s)
 *   TCP, a non-SYN segment seen      CT_LIFETIME_TCP (21600 s)  CT_F_SEEN_NON_SYN
 *   TCP, FIN or RST seen             CT_LIFETIME_CLOSE (10 s)   CT_F_TX/RX_CLOSING
 * A forward SYN (without ACK) on a closing entry reopens it (port reuse).
 */
#ifndef MB_LIB_CONNTRACK_H
#define MB_LIB_CONNTRACK_H

#include "common.h"
#include "l4.h"

#define CT_F_CLOSING (CT_F_RX_CLOSING | CT_F_TX_CLOSING)

/*
 * Seconds of CLOCK_MONOTONIC. The coarse variant (the clock as of the last
 * tick, <= 1/HZ behind bpf_ktime_get_ns()) is a plain read instead of a
 * clocksource access: measurably cheaper per packet, and exact enough for
 * lifetimes in seconds.
 */
static __always_inline __u32 ct_now(void)
{
	return bpf_ktime_get_coarse_ns() / 1000000000ULL;
}

static __always_inline void ct_key_ipv4(struct ct_key *key, __be32 saddr, __be32 daddr,
					__be16 sport, __be16 dport, __u8 proto, __u8 flags)
{
	*(__be32 *)key->saddr = saddr;
	*(__be32 *)key->daddr = daddr;
	key->sport = sport;
	key->dport = dport;
	key->nexthdr = proto;
	key->flags = flags;
	key->family = MB_FAMILY_IPV4;
}

/* The entry for @key unless absent or expired. Never creates. */
static __always_inline struct ct_value *ct_lookup(const struct ct_key *key, __u32 now)
{
	struct ct_value *v = bpf_map_lookup_elem(&mb_ct, key);

	if (v && v->lifetime < now)
		return NULL;
	return v;
}

static __always_inline __u32 ct_lifetime(__u8 proto, __u8 flags, __u32 now)
{
	if (proto != IPPROTO_TCP)
		return now + CT_LIFETIME_NONTCP;
	if (flags & CT_F_CLOSING)
		return now + CT_LIFETIME_CLOSE;
	if (flags & CT_F_SEEN_NON_SYN)
		return now + CT_LIFETIME_TCP;
	return now + CT_LIFETIME_SYN;
}

/* CT_F_* after a TCP segment with @tcp_flags in the entry's forward (tx) or reply direction. */
static __always_inline __u8 ct_tcp_flags(__u8 f, __u8 tcp_flags, int forward)
{
	if (!(tcp_flags & TCP_FLAG_SYN))
		f |= CT_F_SEEN_NON_SYN;
	if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		f |= forward ? CT_F_TX_CLOSING : CT_F_RX_CLOSING;
	return f;
}

/* ct_update's result: the first packet in the entry's reply direction. */
#define CT_UPD_FIRST_REPLY 0x100

/*
 * Account a packet on an existing entry and refresh its state and lifetime.
 * Returns what the packet changed, for trace aggregation (trace.h): the TCP
 * flags it added to its direction's flags_seen (as seen before this packet;
 * after a reopen, relative to the cleared set), or'ed with CT_UPD_FIRST_REPLY
 * for the first reply. Plain reads: a race only costs accuracy.
 */
static __always_inline __u32 ct_update(struct ct_value *v, const struct l4_info *l4, __u32 len,
				       int forward, __u32 now)
{
	__u8 f = v->flags;
	__u32 lt, changes = 0;

	if (forward) {
		__sync_fetch_and_add(&v->tx_packets, 1);
		__sync_fetch_and_add(&v->tx_bytes, len);
	} else {
		if (!v->rx_packets)
			changes = CT_UPD_FIRST_REPLY;
		__sync_fetch_and_add(&v->rx_packets, 1);
		__sync_fetch_and_add(&v->rx_bytes, len);
	}
	if (l4->proto == IPPROTO_TCP) {
		__u8 tf = l4->tcp_flags, nf, seen;

		if (forward && (f & CT_F_CLOSING) &&
		    (tf & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
			/* New connection on a closing tuple: start over. */
			f &= ~(CT_F_CLOSING | CT_F_SEEN_NON_SYN);
			v->tx_flags_seen = 0;
			v->rx_flags_seen = 0;
		}
		/* Plain read-modify-write: a lost bit in a race only costs accuracy. */
		if (forward) {
			seen = v->tx_flags_seen;
			if ((seen | tf) != seen)
				v->tx_flags_seen = seen | tf;
		} else {
			seen = v->rx_flags_seen;
			if ((seen | tf) != seen)
				v->rx_flags_seen = seen | tf;
		}
		changes |= tf & ~seen;
		nf = ct_tcp_flags(f, tf, forward);
		if (nf != v->flags)
			v->flags = nf;
		f = nf;
	}
	lt = ct_lifetime(l4->proto, f, now);
	if (v->lifetime != lt)
		v->lifetime = lt;
	return changes;
}

/*
 * Create (or replace an expired) entry for the first packet of a flow.
 * Returns 0 or DROP_CT_CREATE_FAILED.
 */
static __always_inline int ct_create(const struct ct_key *key, const struct l4_info *l4, __u32 len,
				     __u32 remote_id, __u32 now)
{
	struct ct_value v = {
		.tx_packets = 1,
		.tx_bytes = len,
		.src_sec_id = remote_id,
		.last_report = now,   /* trace aggregation: the creation was reported */
	};

	if (l4->proto == IPPROTO_TCP) {
		v.tx_flags_seen = l4->tcp_flags;
		v.flags = ct_tcp_flags(0, l4->tcp_flags, 1);
	}
	v.lifetime = ct_lifetime(l4->proto, v.flags, now);
	if (bpf_map_update_elem(&mb_ct, key, &v, BPF_ANY) < 0)
		return DROP_CT_CREATE_FAILED;
	return 0;
}

/*
 * ICMP error (l4->icmp_err) about a tracked flow of this endpoint: the quoted
 * IPv4 header + first 8 bytes of its L4 header, as a tuple, must be an alive
 * {inner, @ct_flags} entry. @ep_addr is the endpoint's address (the outer
 * source at egress, destination at ingress); it must be the inner header's
 * daddr (@ct_flags CT_INGRESS: the endpoint received the quoted packet) or
 * saddr (CT_EGRESS: the endpoint sent it). Returns 1 if related.
 */
static __always_inline int ct_related_ipv4(struct __sk_buff *ctx, const struct l4_info *l4,
					   __u8 ct_flags, __be32 ep_addr, __u32 now)
{
	struct ct_key key = {};
	struct iphdr inner;
	__u32 off = l4->l4_off + 8;   /* ICMP header */
	__be16 sport = 0, dport = 0;
	__u8 hdr[8];

	if (bpf_skb_load_bytes(ctx, off, &inner, sizeof(inner)) < 0)
		return 0;
	if (inner.version != 4 || inner.ihl < 5 || (inner.frag_off & bpf_htons(IP_OFFSET)))
		return 0;
	if ((ct_flags == CT_EGRESS ? inner.saddr : inner.daddr) != ep_addr)
		return 0;
	off += (__u32)inner.ihl * 4;
	switch (inner.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(ctx, off, hdr, 4) < 0)
			return 0;
		sport = *(__be16 *)&hdr[0];
		dport = *(__be16 *)&hdr[2];
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(ctx, off, hdr, 8) < 0)
			return 0;
		icmp_tuple_ports(hdr[0], *(__be16 *)&hdr[4], &sport, &dport);
		break;
	default:
		break;
	}
	ct_key_ipv4(&key, inner.saddr, inner.daddr, sport, dport, inner.protocol, ct_flags);
	return ct_lookup(&key, now) != NULL;
}

#endif
