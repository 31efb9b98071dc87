/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Common includes and small helpers shared by every datapath program. */
#ifndef MB_LIB_COMMON_H
#define MB_LIB_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#ifndef __noinline
#define __noinline __attribute__((noinline))
#endif

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Well-known security identities (same numbers as the agent's identity allocator). */
#define MB_ID_UNKNOWN 0
#define MB_ID_HOST 1
#define MB_ID_WORLD 2

/*
 * Return the start of the packet with at least @len bytes linear (the verifier
 * then knows [data, data + len) is readable), or NULL if the packet is shorter.
 * bpf_skb_pull_data is only tried when the headers are not already linear
 * (rare on veth), so the fast path is one bounds check.
 */
static __always_inline void *ctx_data(struct __sk_buff *ctx, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (likely(data + len <= data_end))
		return data;
	if (bpf_skb_pull_data(ctx, len) < 0)
		return NULL;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + len > data_end)
		return NULL;
	return data;
}

#endif
