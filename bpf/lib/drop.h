/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Drops: count in mb_metrics and emit a struct drop_event (with the first
 * EVENT_CAPTURE_LEN bytes of the packet) into the mb_events ring buffer.
 * A full ring buffer only loses the event (counted in mb_events_lost); the
 * metric is always updated. hdr.hash is the direction-independent flow hash
 * of events.h, shared with trace and policy verdict events.
 *
 * Every program file defines MB_FILE_ID before including this header; the
 * event carries (file, __LINE__) of the DROP() call site.
 */
#ifndef MB_LIB_DROP_H
#define MB_LIB_DROP_H

#include "common.h"
#include "metrics.h"
#include "events.h"

#ifndef MB_FILE_ID
#error "define MB_FILE_ID before including drop.h"
#endif

#define MB_FILE_LXC 1   /* bpf_lxc.c */
#define MB_FILE_HOST 2  /* bpf_host.c */

/*
 * Never read: keeps struct drop_event (and event_hdr) in the object's BTF for
 * scripts/gen-codecs.js. Lives in .rodata, so it costs no extra map.
 */
volatile const struct drop_event mb_btf_drop_event;

/*
 * Out of line (a BPF subprogram) to keep the hot paths small. BPF functions take
 * at most 5 arguments, so the small fields are packed:
 *   what = reason | dir << 8 | file << 16
 *   where = source ep id | dst ep id << 16 | line << 32
 */
static __noinline int __send_drop(struct __sk_buff *ctx, __u32 what, __u32 src_label,
				  __u32 dst_label, __u64 where)
{
	__u8 reason = what & 0xff;
	struct drop_event *e;
	__u32 len = ctx->len, cap;

	metrics_count(reason, (what >> 8) & 0xff, len);

	e = bpf_ringbuf_reserve(&mb_events, sizeof(*e), 0);
	if (!e) {
		events_lost();
		return TC_ACT_SHOT;
	}
	e->hdr.type = EVENT_DROP;
	e->hdr.subtype = reason;
	e->hdr.source = where & 0xffff;
	e->src_label = src_label;
	e->dst_label = dst_label;
	e->dst_id = (where >> 16) & 0xffff;
	e->line = (where >> 32) & 0xffff;
	e->file = (what >> 16) & 0xff;
	e->ext_error = 0;
	e->pad = 0;
	e->ifindex = ctx->ifindex;
	e->orig_len = len;
	e->pad2 = 0;
	cap = event_capture(ctx, e->data, len);
	e->cap_len = cap;
	e->hdr.hash = event_flow_hash(ctx, e->data, cap);
	bpf_ringbuf_submit(e, 0);
	return TC_ACT_SHOT;
}

/* Count + report a drop and return TC_ACT_SHOT. */
#define send_drop(ctx, reason, dir, src_label, dst_label, source, dst_id)              \
	__send_drop(ctx, (__u32)(reason) | (__u32)(dir) << 8 | (__u32)MB_FILE_ID << 16,  \
		    src_label, dst_label,                                                \
		    (__u64)((source) & 0xffff) | (__u64)((dst_id) & 0xffff) << 16 |      \
			    (__u64)__LINE__ << 32)

#endif
