/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 header access and the L3 forwarding step (TTL decrement). */
#ifndef MB_LIB_IPV4_H
#define MB_LIB_IPV4_H

#include "common.h"

#define IPV4_MIN_LEN (ETH_HLEN + sizeof(struct iphdr))

/*
 * Validate and return the IPv4 header following the Ethernet header, or NULL.
 * Options are allowed (ihl > 5); only the fixed 20 bytes are guaranteed linear.
 */
static __always_inline struct iphdr *ipv4_hdr(struct __sk_buff *ctx)
{
	void *data = ctx_data(ctx, IPV4_MIN_LEN);
	struct iphdr *ip;

	if (!data)
		return NULL;
	ip = data + ETH_HLEN;
	if (ip->version != 4 || ip->ihl < 5)
		return NULL;
	return ip;
}

/* The Ethernet header in front of a header returned by ipv4_hdr (same bounds). */
static __always_inline struct ethhdr *ipv4_eth(struct iphdr *ip)
{
	return (void *)ip - ETH_HLEN;
}

/*
 * Decrement the TTL and update the header checksum in place (RFC 1624: the
 * 16-bit word holding ttl and protocol drops by 0x0100, so the checksum rises
 * by as much, with the end-around carry). No helper call; packet pointers stay
 * valid. The IP header is not part of a CHECKSUM_COMPLETE sum's change (the
 * two edits cancel out), so skb->csum needs nothing. Returns 0 or
 * DROP_TTL_EXCEEDED.
 */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *ctx, struct iphdr *ip)
{
	__u32 check;

	(void)ctx;
	if (ip->ttl <= 1)
		return DROP_TTL_EXCEEDED;
	check = (__u32)ip->check + (__u32)bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xffff));
	ip->ttl--;
	return 0;
}

#endif
