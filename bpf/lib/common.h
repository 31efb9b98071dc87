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
 * skb->cb words a program hands to the policy_ingress it tail-calls (and that
 * policy_ingress clears before anything else runs):
 *   MB_CB_SRC_IDENTITY  the source's security identity
 *   MB_CB_TRACE         MB_CB_TRACE_FROM_HOST: a FROM_HOST trace is pending (trace.h)
 *   MB_CB_REVNAT        rev_nat_index for the CT_INGRESS entry it creates (lb.h)
 *   MB_CB_DST_EP        the destination endpoint id: whose configuration and
 *                       policy apply (policy_ingress is shared by all endpoints)
 */
#define MB_CB_SRC_IDENTITY 0
#define MB_CB_TRACE 1
#define MB_CB_TRACE_FROM_HOST 1
#define MB_CB_REVNAT 2
#define MB_CB_DST_EP 3

/*
 * Write one skb->cb word. Volatile, so clang never merges neighbouring words
 * into one 64-bit store through a derived pointer, which the verifier refuses
 * on a context.
 */
static __always_inline void cb_set(struct __sk_buff *ctx, const int i, __u32 v)
{
	*(volatile __u32 *)&ctx->cb[i] = v;
}

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
