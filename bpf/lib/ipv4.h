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
 * Decrement the TTL with an incremental header-checksum update (RFC 1624 via
 * bpf_l3_csum_replace on the 16-bit word holding ttl+protocol).
 * Returns 0, or DROP_TTL_EXCEEDED / DROP_CSUM_L3. Invalidates packet pointers.
 */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *ctx, struct iphdr *ip)
{
	__u8 ttl = ip->ttl;
	__be16 old, new;

	if (ttl <= 1)
		return DROP_TTL_EXCEEDED;
	old = *(__be16 *)&ip->ttl;          /* ttl, protocol */
	ip->ttl = ttl - 1;
	new = *(__be16 *)&ip->ttl;
	if (bpf_l3_csum_replace(ctx, ETH_HLEN + offsetof(struct iphdr, check),
				old, new, sizeof(__u16)) < 0)
		return DROP_CSUM_L3;
	return 0;
}

#endif
