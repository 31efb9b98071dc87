/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * IPv4 address/port rewriting with incremental checksum updates (RFC 1624),
 * for the service translations of lb.h:
 *
 *   address   written in place, IP header checksum updated in place (RFC 1624,
 *             no helper: the IP checksum is never offloaded), one
 *             bpf_l4_csum_replace with BPF_F_PSEUDO_HDR (TCP/UDP pseudo header)
 *   port      written in place + one bpf_l4_csum_replace (TCP/UDP)
 *
 * The L4 updates stay helpers: only the kernel knows whether the checksum is
 * offloaded (CHECKSUM_PARTIAL: the field holds the pseudo header's sum, which
 * an address changes and a port does not) or complete (skb->csum follows).
 * In-place writes need no unclone call of their own: a program that writes
 * packet data directly gets the verifier's unclone prologue.
 *
 * UDP: BPF_F_MARK_MANGLED_0, so a zero checksum (none) stays zero and a
 * computed zero becomes 0xffff. SCTP: its CRC32c covers no pseudo header, so an
 * address change needs no L4 update; a port change would need the CRC over the
 * whole packet recomputed and is refused (nat4_port returns DROP_CSUM_L4).
 * ICMP and others: no L4 checksum over addresses.
 *
 * They work on offsets (any IHL; the headers must be in the linear part,
 * as ipv4_hdr and l4_parse_ipv4 leave them) and invalidate packet pointers
 * (callers re-fetch headers afterwards).
 */
#ifndef MB_LIB_NAT_H
#define MB_LIB_NAT_H

#include "common.h"
#include "l4.h"

#define NAT4_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define NAT4_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define NAT4_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))

/* Offset of the L4 checksum from the L4 header, 0 if none covers addresses/ports. */
static __always_inline __u32 nat4_l4_csum_off(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return 16;
	if (proto == IPPROTO_UDP)
		return 6;
	return 0;
}

static __always_inline __u64 nat4_l4_flags(__u8 proto)
{
	return proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/*
 * RFC 1624 incremental update of a 16-bit one's complement checksum for a
 * 32-bit field changing from @from to @to: HC' = ~(~HC + ~m + m'). Byte order
 * does not matter as long as all three are taken from the packet as they are.
 */
static __always_inline __sum16 csum16_replace4(__sum16 check, __be32 from, __be32 to)
{
	__u32 sum = (__u16)~check;

	sum += ((~from) >> 16) + ((~from) & 0xffff) + (to >> 16) + (to & 0xffff);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

/*
 * Rewrite the source (@src != 0) or destination address from @from to @to.
 * Returns 0 or DROP_WRITE_ERROR / DROP_CSUM_L3 / DROP_CSUM_L4.
 */
static __always_inline int nat4_addr(struct __sk_buff *ctx, __u32 l4_off, __u8 proto, int src,
				     __be32 from, __be32 to)
{
	__u32 csum_off = nat4_l4_csum_off(proto);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if (from == to)
		return 0;
	if ((void *)(ip + 1) > data_end)
		return DROP_WRITE_ERROR;
	if (src)
		ip->saddr = to;
	else
		ip->daddr = to;
	ip->check = csum16_replace4(ip->check, from, to);
	if (csum_off && bpf_l4_csum_replace(ctx, l4_off + csum_off, from, to,
					    BPF_F_PSEUDO_HDR | nat4_l4_flags(proto) | 4) < 0)
		return DROP_CSUM_L4;
	return 0;
}

/*
 * Rewrite the source (@src != 0) or destination port of a TCP/UDP/SCTP header
 * at @l4_off from @from to @to (network order). Returns 0 or a drop reason.
 */
static __always_inline int nat4_port(struct __sk_buff *ctx, __u32 l4_off, __u8 proto, int src,
				     __be16 from, __be16 to)
{
	__u32 csum_off = nat4_l4_csum_off(proto);

	if (from == to)
		return 0;
	if (proto == IPPROTO_SCTP)
		return DROP_CSUM_L4;   /* CRC32c: no incremental update */
	{
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		__be16 *ports;

		if (l4_off > ETH_HLEN + 60)
			return DROP_WRITE_ERROR;
		ports = data + l4_off;
		if ((void *)(ports + 2) > data_end)
			return DROP_WRITE_ERROR;
		ports[src ? 0 : 1] = to;
	}
	if (csum_off && bpf_l4_csum_replace(ctx, l4_off + csum_off, from, to,
					    nat4_l4_flags(proto) | 2) < 0)
		return DROP_CSUM_L4;
	return 0;
}

/* Fold a 32-bit one's complement sum (bpf_csum_diff's result) into a 16-bit checksum. */
static __always_inline __u16 csum_fold32(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum & 0xffff;
}

#endif
