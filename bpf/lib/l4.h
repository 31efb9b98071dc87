/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * L4 of an IPv4 packet as conntrack and policy see it:
 *
 *   TCP/UDP/SCTP   tuple ports = the L4 ports; policy port = dport
 *   ICMP echo      request (8): sport = echo id, dport = 0
 *                  reply (0):   sport = 0, dport = echo id
 *                  (so a reply is the reverse tuple of its request)
 *   other ICMP     ports 0
 *   ICMP, any      policy port = bpf_htons(icmp type) (see struct policy_key)
 *   other protos   ports 0, policy port 0
 *
 * Non-first fragments carry no L4 header: DROP_FRAG_NOSUPPORT (no fragment
 * tracking). First fragments (offset 0, MF set) are handled like whole packets.
 *
 * Ports are read with bpf_skb_load_bytes (any IHL, no packet-pointer
 * invalidation, no linearisation needed).
 */
#ifndef MB_LIB_L4_H
#define MB_LIB_L4_H

#include "common.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct l4_info {
	__be16 sport;       /* conntrack tuple ports (see above) */
	__be16 dport;
	__be16 policy_port; /* policy_key.dport */
	__u8 proto;
	__u8 tcp_flags;     /* TCP only */
	__u8 icmp_err;      /* ICMP destination unreachable / time exceeded / parameter problem */
	__u8 pad[3];
	__u32 l4_off;       /* offset of the L4 header from the start of the packet */
};

/* Tuple ports of an ICMP message from its first 8 bytes (type, code, csum, id, seq). */
static __always_inline void icmp_tuple_ports(__u8 type, __be16 id, __be16 *sport, __be16 *dport)
{
	*sport = 0;
	*dport = 0;
	if (type == ICMP_ECHO)
		*sport = id;
	else if (type == ICMP_ECHOREPLY)
		*dport = id;
}

/*
 * Fill @l4 for the IPv4 packet at @ip (validated by ipv4_hdr).
 * Returns 0 or a drop reason (DROP_FRAG_NOSUPPORT, DROP_CT_INVALID_HDR).
 */
static __always_inline int l4_parse_ipv4(struct __sk_buff *ctx, const struct iphdr *ip, struct l4_info *l4)
{
	__u8 hdr[14];

	l4->proto = ip->protocol;
	l4->sport = 0;
	l4->dport = 0;
	l4->policy_port = 0;
	l4->tcp_flags = 0;
	l4->icmp_err = 0;
	l4->l4_off = ETH_HLEN + (__u32)ip->ihl * 4;

	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return DROP_FRAG_NOSUPPORT;

	switch (l4->proto) {
	case IPPROTO_TCP:
		/* ports, seq, ack, data offset, flags */
		if (bpf_skb_load_bytes(ctx, l4->l4_off, hdr, 14) < 0)
			return DROP_CT_INVALID_HDR;
		l4->tcp_flags = hdr[13];
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(ctx, l4->l4_off, hdr, 4) < 0)
			return DROP_CT_INVALID_HDR;
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(ctx, l4->l4_off, hdr, 8) < 0)
			return DROP_CT_INVALID_HDR;
		icmp_tuple_ports(hdr[0], *(__be16 *)&hdr[4], &l4->sport, &l4->dport);
		l4->policy_port = bpf_htons(hdr[0]);
		l4->icmp_err = hdr[0] == ICMP_DEST_UNREACH || hdr[0] == ICMP_TIME_EXCEEDED ||
			       hdr[0] == ICMP_PARAMETERPROB;
		return 0;
	default:
		return 0;
	}
	l4->sport = *(__be16 *)&hdr[0];
	l4->dport = *(__be16 *)&hdr[2];
	l4->policy_port = l4->dport;
	return 0;
}

#endif
