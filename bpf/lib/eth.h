/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Ethernet addresses: compare, copy, rewrite. */
#ifndef MB_LIB_ETH_H
#define MB_LIB_ETH_H

#include "common.h"

/* 6-byte MAC compare as one 32-bit and one 16-bit load (unaligned loads are fine in tc). */
static __always_inline int mac_eq(const volatile void *a, const volatile void *b)
{
	return *(const volatile __u32 *)a == *(const volatile __u32 *)b &&
	       *(const volatile __u16 *)(a + 4) == *(const volatile __u16 *)(b + 4);
}

static __always_inline void mac_copy(void *dst, const volatile void *src)
{
	*(__u32 *)dst = *(const volatile __u32 *)src;
	*(__u16 *)(dst + 4) = *(const volatile __u16 *)(src + 4);
}

/* Rewrite the L2 header of a packet we route: dst first, then src. */
static __always_inline void eth_rewrite(struct ethhdr *eth, const volatile void *dst,
					const volatile void *src)
{
	mac_copy(eth->h_dest, dst);
	mac_copy(eth->h_source, src);
}

#endif
