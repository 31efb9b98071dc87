/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Pieces shared by every event the datapath puts into the mb_events ring
 * buffer (drop.h, trace.h):
 *
 *   event_capture    orig_len / cap_len / the first EVENT_CAPTURE_LEN bytes
 *   event_flow_hash  hdr.hash: a hash of the IPv4 flow, the same for both
 *                    directions (addresses and ports are put in a canonical
 *                    order first), computed from the captured bytes, so it
 *                    costs nothing when no event is emitted and a drop, its
 *                    traces and its verdicts share one hash. Ports: TCP, UDP,
 *                    SCTP ports; ICMP echo request/reply the echo id; else 0.
 *                    Not IPv4 (ARP) or too short: bpf_get_hash_recalc().
 *   events_lost      a reserve that failed (ring buffer full) is counted in
 *                    the per-CPU mb_events_lost[0]; the event is lost.
 */
#ifndef MB_LIB_EVENTS_H
#define MB_LIB_EVENTS_H

#include "common.h"

static __always_inline void events_lost(void)
{
	__u32 zero = 0;
	__u64 *v = bpf_map_lookup_elem(&mb_events_lost, &zero);

	if (v)
		*v += 1;   /* per-CPU */
}

/*
 * Copy the first bytes of the packet into @data (EVENT_CAPTURE_LEN bytes of a
 * reserved record). Returns the captured length (0 if the copy failed).
 */
static __always_inline __u16 event_capture(struct __sk_buff *ctx, __u8 *data, __u32 len)
{
	__u64 cap = len < EVENT_CAPTURE_LEN ? len : EVENT_CAPTURE_LEN;

	/*
	 * Bounds the verifier can see on the register passed: 1..EVENT_CAPTURE_LEN
	 * (the barrier keeps clang from checking a copy).
	 */
	asm volatile("" : "+r"(cap));
	if (cap < 1 || cap > EVENT_CAPTURE_LEN)
		return 0;
	if (bpf_skb_load_bytes(ctx, 0, data, cap) < 0)
		return 0;
	return cap;
}

static __always_inline __u32 mb_fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Direction-independent flow hash of the captured packet in @d (see above). */
static __noinline __attribute__((unused)) __u32 event_flow_hash(struct __sk_buff *ctx, const __u8 *d, __u32 cap)
{
	__u32 a, b, t, off, ihl;
	__u16 pa = 0, pb = 0, pt;
	__u8 proto;

	if (cap < ETH_HLEN + 20 || cap > EVENT_CAPTURE_LEN || d[12] != 0x08 || d[13] != 0x00)
		return bpf_get_hash_recalc(ctx);
	ihl = d[ETH_HLEN] & 0xf;
	if ((d[ETH_HLEN] >> 4) != 4 || ihl < 5)
		return bpf_get_hash_recalc(ctx);
	proto = d[ETH_HLEN + 9];
	a = *(const __u32 *)(d + ETH_HLEN + 12);
	b = *(const __u32 *)(d + ETH_HLEN + 16);
	off = ETH_HLEN + ihl * 4;   /* <= 74: stays inside the capture buffer */
	/* Non-first fragments carry no L4 header. */
	if (!((d[ETH_HLEN + 6] & 0x1f) | d[ETH_HLEN + 7])) {
		switch (proto) {
		case IPPROTO_TCP:
		case IPPROTO_UDP:
		case 132: /* SCTP */
			if (off + 4 <= cap) {
				pa = *(const __u16 *)(d + off);
				pb = *(const __u16 *)(d + off + 2);
			}
			break;
		case IPPROTO_ICMP:
			/* Echo request (8) / reply (0): the id both ways. */
			if (off + 8 <= cap && (d[off] == 8 || d[off] == 0)) {
				pa = *(const __u16 *)(d + off + 4);
				pb = pa;
			}
			break;
		default:
			break;
		}
	}
	if (a > b || (a == b && pa > pb)) {
		t = a; a = b; b = t;
		pt = pa; pa = pb; pb = pt;
	}
	return mb_fmix32((a * 0x9e3779b1) ^ mb_fmix32(b ^ ((__u32)pa << 16 | pb) * 0xcc9e2d51) ^ proto);
}

#endif
