// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Host device pair datapath. from_host runs on the tcx ingress of the "net"
 * side of the host device pair: everything the host stack routes to the pod
 * CIDR leaves the "host" side and arrives here. Local endpoints get the packet
 * through their policy_ingress (tail call, source identity from the ipcache in
 * skb->cb[0]); anything else is unroutable.
 *
 * Trace point FROM_HOST (lib/trace.h): emitted here before the tail call
 * without aggregation; with aggregation the endpoint's policy_ingress emits it
 * (skb->cb[1] marks the packet) when its CT state says the packet is reported.
 */
#define MB_FILE_ID MB_FILE_HOST

#include "common.h"
#include "ipv4.h"
#include "metrics.h"
#include "drop.h"
#include "endpoint.h"
#include "identity.h"
#include "trace.h"

/* Drops here have no endpoint: source = 0; dst id = the endpoint if known. */
#define DROP_HOST(ctx, reason, src_label, dst_label, dst_id) \
	send_drop(ctx, reason, METRIC_DIR_INGRESS, src_label, dst_label, 0, dst_id)

static __always_inline int handle_ipv4_from_host(struct __sk_buff *ctx)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	struct endpoint_info *ep;
	__u32 src_identity, dst_id;
	struct mon m;

	if (!ip)
		return DROP_HOST(ctx, DROP_INVALID, 0, 0, 0);
	ep = lookup_ip4_local_endpoint(ip->daddr);
	if (!ep)
		return DROP_HOST(ctx, DROP_UNROUTABLE, ipcache_ip4_identity(ip->saddr), 0, 0);

	dst_id = ep->ep_id;
	src_identity = ipcache_ip4_identity(ip->saddr);
	ctx->cb[0] = src_identity;
	ctx->cb[MB_CB_TRACE] = 0;
	monitor_load(&m);
	if (m.flags & MONITOR_F_TRACE) {
		if (m.agg == MONITOR_AGG_NONE)
			send_trace(ctx, TRACE_FROM_HOST, TRACE_CT_UNKNOWN, src_identity, ep->sec_id, 0,
				   dst_id, ctx->ifindex);
		else
			ctx->cb[MB_CB_TRACE] = MB_CB_TRACE_FROM_HOST;
	}
	bpf_tail_call(ctx, &mb_call_policy, dst_id);
	return DROP_HOST(ctx, DROP_MISSED_TAIL_CALL, src_identity, ep->sec_id, dst_id);
}

SEC("tc")
int from_host(struct __sk_buff *ctx)
{
	struct ethhdr *eth = ctx_data(ctx, ETH_HLEN);

	if (!eth)
		return DROP_HOST(ctx, DROP_INVALID, 0, 0, 0);
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return handle_ipv4_from_host(ctx);
	case bpf_htons(ETH_P_ARP):
		/* The host side is NOARP: nothing to resolve on this link. */
		return DROP_HOST(ctx, DROP_UNSUPPORTED_L2, MB_ID_HOST, 0, 0);
	default:
		/* IPv6 is disabled on both sides of the pair; no v6 datapath in v1. */
		return DROP_HOST(ctx, DROP_UNKNOWN_L3, MB_ID_HOST, 0, 0);
	}
}

char _license[] SEC("license") = "Dual BSD/GPL";
