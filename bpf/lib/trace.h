/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Trace and policy verdict events (struct trace_event, policy_verdict_event in
 * maps.h) into the mb_events ring buffer, gated by the agent's monitor
 * configuration mb_monitor[0] (struct monitor_config). Drops (drop.h) are
 * always reported and are not affected by any of this.
 *
 * Each program reads mb_monitor[0] once per run (monitor_load) into a
 * struct mon and passes it down. A zero (or absent) config = flags 0: no trace
 * and no verdict events; the cost is one array lookup and a few branches.
 *
 *   MONITOR_F_TRACE    trace events at the observation points:
 *                        FROM_LXC  from_container, after anti-spoofing and the
 *                                  egress CT/policy step (its CT state)
 *                        TO_STACK  from_container, handing the packet to the
 *                                  host through the host device pair
 *                        TO_LXC    policy_ingress, right before
 *                                  bpf_redirect_peer into the pod
 *                        FROM_HOST from_host, before the tail call into the
 *                                  endpoint (see "FROM_HOST" below)
 *   MONITOR_F_VERDICT  policy verdict events: the first packet of a flow that
 *                      policy allowed (a new CT entry), and every packet
 *                      policy dropped (DROP_POLICY / DROP_POLICY_DENY).
 *                      Never aggregated.
 *
 * Aggregation (trace events only), per packet:
 *   MONITOR_AGG_NONE    every packet, tracked or not (ARP, CT state UNKNOWN)
 *   MONITOR_AGG_LOW     as MEDIUM, plus a periodic report of a flow when
 *                       now - ct.last_report >= report_interval (seconds; the
 *                       CT entry's last_report is set to now by every report)
 *   MONITOR_AGG_MEDIUM  the first packet of a flow (CT new); a packet carrying
 *                       a TCP flag out of SYN/FIN/RST not yet seen in its
 *                       direction of the CT entry; the first reply of a flow
 *                       (e.g. SYN-ACK, the first UDP reply); ICMP errors
 *                       related to a flow
 *   MONITOR_AGG_MAX     the first packet of a flow only
 * Above NONE, untracked packets (ARP, non-IP, endpoints without policy) are
 * never traced. A packet that is reported is reported at every observation
 * point it passes (FROM_LXC + TO_STACK, FROM_LXC + TO_LXC, ...), each program
 * deciding from its own CT entry.
 *
 * FROM_HOST: from_host has no CT state. With MONITOR_AGG_NONE it emits the
 * event itself (ct_state UNKNOWN). With aggregation it marks the packet
 * (skb->cb[MB_CB_TRACE] = MB_CB_TRACE_FROM_HOST) and the destination's
 * policy_ingress emits the same FROM_HOST event (source 0, the from_host
 * device's ifindex, its ingress CT state) right after its CT/policy step, when
 * the aggregation reports the packet.
 *
 * Event fields: hdr.source = the endpoint id of the program (0 in from_host),
 * hdr.hash = the direction-independent flow hash (events.h), ifindex = the
 * device the packet came in on for FROM_* points, the device it is sent to
 * for TO_LXC (the endpoint's host-side veth) and TO_STACK (the net side of the
 * host device pair). A full ring buffer loses the event and counts it in
 * mb_events_lost.
 */
#ifndef MB_LIB_TRACE_H
#define MB_LIB_TRACE_H

#include "common.h"
#include "events.h"

/* Never read: keep the event structs in the objects' BTF for scripts/gen-codecs.js. */
volatile const struct trace_event mb_btf_trace_event;
volatile const struct policy_verdict_event mb_btf_policy_verdict_event;

/* TCP flags whose first appearance in a direction is reported (AGG_LOW/MEDIUM). */
#define TRACE_AGG_TCP_FLAGS (0x01 | 0x02 | 0x04) /* FIN | SYN | RST */

/* The monitor configuration for one program run. */
struct mon {
	__u32 flags;     /* MONITOR_F_* */
	__u32 agg;       /* MONITOR_AGG_* */
	__u32 interval;  /* report_interval */
};

static __always_inline void monitor_load(struct mon *m)
{
	__u32 zero = 0;
	const struct monitor_config *c = bpf_map_lookup_elem(&mb_monitor, &zero);

	m->flags = 0;
	m->agg = 0;
	m->interval = 0;
	if (likely(c) && c->flags) {
		m->flags = c->flags;
		m->agg = c->aggregation;
		m->interval = c->report_interval;
	}
}

/* Trace a packet without CT state (only without aggregation)? */
static __always_inline int trace_untracked(const struct mon *m)
{
	return (m->flags & MONITOR_F_TRACE) && m->agg == MONITOR_AGG_NONE;
}

/*
 * Trace a packet of a tracked flow that was not new? @changes: non-zero if it
 * brought a TCP flag (TRACE_AGG_TCP_FLAGS) new to its direction of @ct, is
 * the flow's first reply, or is a related ICMP error. @ct may be NULL
 * (related): no periodic report then. Sets ct->last_report when AGG_LOW
 * reports. Plain read + write: two CPUs may both report one interval.
 */
static __always_inline int trace_aggregate(const struct mon *m, struct ct_value *ct, int changes,
					   __u32 now)
{
	__u32 last;

	if (!(m->flags & MONITOR_F_TRACE))
		return 0;
	if (m->agg == MONITOR_AGG_NONE)
		return 1;
	if (m->agg == MONITOR_AGG_MEDIUM)
		return changes;
	if (m->agg != MONITOR_AGG_LOW)
		return 0;                       /* MAX (or unknown): new flows only */
	if (!ct)
		return changes;
	last = ct->last_report;
	if (!changes && now - last < m->interval)
		return 0;
	if (last != now)
		ct->last_report = now;
	return 1;
}

/* Trace the first packet of a flow (always, unless traces are off). */
static __always_inline int trace_new(const struct mon *m)
{
	return m->flags & MONITOR_F_TRACE;
}

/*
 * Out of line (BPF subprograms), arguments packed (5 at most):
 *   trace:   what = point | ct_state << 8
 *            where = source ep id | dst ep id << 16 | ifindex << 32
 *   verdict: what = verdict | drop_reason << 8 | dir << 16 | match_type << 24
 *            where = dst_port (host order) | proto << 16 | source ep id << 32
 */
static __noinline __attribute__((unused)) int __send_trace(struct __sk_buff *ctx, __u32 what, __u32 src_label,
				   __u32 dst_label, __u64 where)
{
	struct trace_event *e;
	__u32 len = ctx->len, cap;

	e = bpf_ringbuf_reserve(&mb_events, sizeof(*e), 0);
	if (!e) {
		events_lost();
		return 0;
	}
	e->hdr.type = EVENT_TRACE;
	e->hdr.subtype = what & 0xff;
	e->hdr.source = where & 0xffff;
	e->src_label = src_label;
	e->dst_label = dst_label;
	e->dst_id = (where >> 16) & 0xffff;
	e->ct_state = (what >> 8) & 0xff;
	e->pad = 0;
	e->ifindex = where >> 32;
	e->orig_len = len;
	e->pad2 = 0;
	cap = event_capture(ctx, e->data, len);
	e->cap_len = cap;
	e->hdr.hash = event_flow_hash(ctx, e->data, cap);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __noinline __attribute__((unused)) int __send_verdict(struct __sk_buff *ctx, __u32 remote_label, __u32 what,
				     __u64 where)
{
	struct policy_verdict_event *e;
	__u32 len = ctx->len, cap;

	e = bpf_ringbuf_reserve(&mb_events, sizeof(*e), 0);
	if (!e) {
		events_lost();
		return 0;
	}
	e->hdr.type = EVENT_POLICY_VERDICT;
	e->hdr.subtype = 0;
	e->hdr.source = (where >> 32) & 0xffff;
	e->remote_label = remote_label;
	e->verdict = what & 0xff;
	e->drop_reason = (what >> 8) & 0xff;
	e->dir = (what >> 16) & 0xff;
	e->match_type = (what >> 24) & 0xff;
	e->dst_port = where & 0xffff;
	e->proto = (where >> 16) & 0xff;
	e->audited = 0;
	e->ifindex = ctx->ifindex;
	e->orig_len = len;
	e->pad = 0;
	cap = event_capture(ctx, e->data, len);
	e->cap_len = cap;
	e->hdr.hash = event_flow_hash(ctx, e->data, cap);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

#define send_trace(ctx, point, ct_state, src_label, dst_label, source, dst_id, ifindex)     \
	__send_trace(ctx, (__u32)(point) | (__u32)((ct_state) & 0xff) << 8, src_label,      \
		     dst_label,                                                              \
		     (__u64)((source) & 0xffff) | (__u64)((dst_id) & 0xffff) << 16 |         \
			     (__u64)(__u32)(ifindex) << 32)

#define send_verdict(ctx, remote_label, verdict, reason, dir, match, dport, proto, source)  \
	__send_verdict(ctx, remote_label,                                                   \
		       (__u32)(verdict) | (__u32)((reason) & 0xff) << 8 |                   \
			       (__u32)((dir) & 0xff) << 16 | (__u32)((match) & 0xff) << 24, \
		       (__u64)((dport) & 0xffff) | (__u64)((proto) & 0xff) << 16 |          \
			       (__u64)((source) & 0xffff) << 32)

#endif
