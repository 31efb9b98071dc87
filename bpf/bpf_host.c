// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Host-side datapath.
 *
 * from_host runs on the tcx ingress of the "net" side of the host device pair:
 * everything the host stack routes to the pod CIDR (and to the service CIDR,
 * which the agent routes via the host device too) leaves the "host" side and
 * arrives here. Local endpoints get the packet through their policy_ingress
 * (tail call, source identity from the ipcache in skb->cb, lib/common.h); anything else
 * is unroutable.
 *
 * Services from the host (lib/lb.h): a TCP/UDP/SCTP packet to a frontend
 * (any frontend: ClusterIP or NodePort entry) gets a backend (CT_SERVICE entry
 * keyed by the host's original tuple) and is DNATed to it, then delivered as
 * above; only node-local backends can be reached this way (a remote backend
 * is DROP_UNROUTABLE: the reply would not pass here again to be reversed;
 * socket LB is the path for those). The frontend's rev_nat_index travels in
 * skb->cb[MB_CB_REVNAT] to the backend's policy_ingress, which stores it in
 * its CT_INGRESS entry; the backend's from_container reverses the reply's
 * source before handing it to the stack. A frontend without backends:
 * DROP_NO_SERVICE (the host's socket times out; no ICMP is built here).
 *
 * from_netdev runs on the tcx ingress of the node's external devices (the
 * agent attaches it to the devices named by its --devices flag): NodePort.
 * A TCP/UDP/SCTP packet whose {daddr, dport, proto} is a frontend with
 * LB_SVC_F_NODEPORT gets a backend, is DNATed to it (the client's source
 * address is kept: externalTrafficPolicy Local semantics, so the agent puts
 * only node-local backends into NodePort slots; a non-local backend is
 * DROP_UNROUTABLE) and delivered to the backend's policy_ingress (source
 * identity from the ipcache, normally world; cb[MB_CB_REVNAT] as above). The
 * backend's reply leaves through its from_container, which reverses the
 * source to node address:nodePort before handing it to the stack (the agent
 * sets accept_local=1 and rp_filter=0 on the host device: the reply's source
 * is a local address). Everything else: TC_ACT_OK, untouched.
 *
 * Trace point FROM_HOST (lib/trace.h): emitted here before the tail call
 * without aggregation; with aggregation the endpoint's policy_ingress emits it
 * (skb->cb[1] marks the packet) when its CT state says the packet is reported.
 * from_netdev emits FROM_NETWORK for NodePort packets without aggregation only.
 */
#define MB_FILE_ID MB_FILE_HOST

#include "common.h"
#include "ipv4.h"
#include "metrics.h"
#include "drop.h"
#include "endpoint.h"
#include "identity.h"
#include "trace.h"
#include "l4.h"
#include "conntrack.h"
#include "lb.h"
#include "overlay.h"
#include "snat.h"

/* Drops here have no endpoint: source = 0; dst id = the endpoint if known. */
#define DROP_HOST(ctx, reason, src_label, dst_label, dst_id) \
	send_drop(ctx, reason, METRIC_DIR_INGRESS, src_label, dst_label, 0, dst_id)

/*
 * Select a backend for a packet to frontend @svc and DNAT it. Returns 0 with
 * @lb filled (the packet now goes to lb->addr:lb->port) or a drop reason.
 * Invalidates packet pointers.
 */
static __always_inline int lb4_xlate(struct __sk_buff *ctx, __be32 saddr, __be32 daddr,
				     struct lb_service_value *svc, struct l4_info *l4,
				     struct lb4_result *lb)
{
	int ret;

	ret = lb4_local(saddr, daddr, l4, svc, ctx->len, ct_now(), lb);
	if (ret)
		return ret;
	return lb4_dnat(ctx, l4, daddr, lb);
}

/*
 * Deliver to a local endpoint's policy_ingress with source identity
 * @src_identity and @rev_nat for its CT_INGRESS entry; @point: the trace
 * observation point (FROM_HOST is deferred to policy_ingress under
 * aggregation, FROM_NETWORK only traced without aggregation).
 */
static __always_inline int deliver_local(struct __sk_buff *ctx, struct endpoint_info *ep,
					 __u32 src_identity, __u16 rev_nat, __u8 point)
{
	__u32 dst_id = ep->ep_id;
	struct mon m;

	cb_set(ctx, MB_CB_SRC_IDENTITY, src_identity);
	cb_set(ctx, MB_CB_TRACE, 0);
	cb_set(ctx, MB_CB_REVNAT, rev_nat);
	cb_set(ctx, MB_CB_DST_EP, dst_id);
	monitor_load(&m);
	if (m.flags & MONITOR_F_TRACE) {
		if (m.agg == MONITOR_AGG_NONE)
			send_trace(ctx, point, TRACE_CT_UNKNOWN, src_identity, ep->sec_id, 0,
				   dst_id, ctx->ifindex);
		else if (point == TRACE_FROM_HOST)
			cb_set(ctx, MB_CB_TRACE, MB_CB_TRACE_FROM_HOST);
	}
	bpf_tail_call(ctx, &mb_call_policy, dst_id);
	return DROP_HOST(ctx, DROP_MISSED_TAIL_CALL, src_identity, ep->sec_id, dst_id);
}

static __always_inline int handle_ipv4_from_host(struct __sk_buff *ctx)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	struct lb_service_value *svc;
	struct endpoint_info *ep;
	struct lb4_result lb;
	__u32 src_identity;
	struct l4_info l4;
	__u16 rev_nat = 0;
	int ret;

	if (!ip)
		return DROP_HOST(ctx, DROP_INVALID, 0, 0, 0);
	src_identity = ipcache_ip4_identity(ip->saddr);
	if (lb4_proto_ok(ip->protocol) && !(ip->frag_off & bpf_htons(IP_OFFSET)) &&
	    l4_parse_ipv4(ctx, ip, &l4) == 0) {
		svc = lb4_lookup_service(ip->daddr, l4.dport, l4.proto);
		if (svc) {
			ret = lb4_xlate(ctx, ip->saddr, ip->daddr, svc, &l4, &lb);
			if (ret)
				return DROP_HOST(ctx, ret, src_identity, 0, 0);
			rev_nat = lb.rev_nat;
			ip = ipv4_hdr(ctx);
			if (!ip)
				return DROP_HOST(ctx, DROP_INVALID, src_identity, 0, 0);
		}
	}
	ep = lookup_ip4_local_endpoint(ip->daddr);
	if (!ep) {
		/*
		 * Another node's pod (the host routes every remote pod CIDR via
		 * the host device): over the overlay, VNI = host (remote-node
		 * there). A service with a remote backend is not reversed here.
		 */
		__be32 tunnel = ipcache_tunnel4(ipcache_ip4_lookup(ip->daddr));

		if (tunnel && !rev_nat) {
			ret = overlay_encap4(ctx, tunnel, MB_ID_HOST);
			if (ret < 0)
				return DROP_HOST(ctx, -ret, src_identity, 0, 0);
			metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
			return ret;
		}
		return DROP_HOST(ctx, DROP_UNROUTABLE, src_identity, 0, 0);
	}
	return deliver_local(ctx, ep, src_identity, rev_nat, TRACE_FROM_HOST);
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

/*
 * NodePort on an external device. Fast exit (TC_ACT_OK, untouched) for
 * anything but an IPv4 TCP/UDP/SCTP packet to a NodePort frontend.
 */
static __always_inline int handle_ipv4_from_netdev(struct __sk_buff *ctx)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	struct lb_service_value *svc;
	struct endpoint_info *ep;
	struct lb4_result lb;
	__u32 src_identity;
	struct l4_info l4;
	__be16 ports[2];
	int ret;

	if (!ip || !lb4_proto_ok(ip->protocol) || (ip->frag_off & bpf_htons(IP_OFFSET)))
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN + (__u32)ip->ihl * 4, ports, sizeof(ports)) < 0)
		return TC_ACT_OK;
	svc = lb4_lookup_service(ip->daddr, ports[1], ip->protocol);
	if (likely(!svc || !(svc->flags & LB_SVC_F_NODEPORT)))
		return TC_ACT_OK;

	src_identity = ipcache_ip4_identity(ip->saddr);
	ret = l4_parse_ipv4(ctx, ip, &l4);
	if (ret)
		return DROP_HOST(ctx, ret, src_identity, 0, 0);
	ret = lb4_local(ip->saddr, ip->daddr, &l4, svc, ctx->len, ct_now(), &lb);
	if (ret)
		return DROP_HOST(ctx, ret, src_identity, 0, 0);
	ep = lookup_ip4_local_endpoint(lb.addr);
	if (!ep) {
		/*
		 * A backend on another node (externalTrafficPolicy Cluster): DNAT,
		 * SNAT to this node's address so the reply comes back here, and
		 * over the overlay with the client's identity.
		 */
		__be32 node_addr = ip->daddr, client = ip->saddr;
		__be32 tunnel = ipcache_tunnel4(ipcache_ip4_lookup(lb.addr));

		if (!tunnel || (svc->flags & LB_SVC_F_LOCAL))
			return DROP_HOST(ctx, DROP_UNROUTABLE, src_identity, 0, 0);
		ret = lb4_dnat(ctx, &l4, node_addr, &lb);
		if (!ret)
			ret = snat4_out(ctx, &l4, client, lb.addr, lb.port, node_addr, lb.rev_nat);
		if (ret)
			return DROP_HOST(ctx, ret, src_identity, 0, 0);
		ret = overlay_encap4(ctx, tunnel, src_identity);
		if (ret < 0)
			return DROP_HOST(ctx, -ret, src_identity, 0, 0);
		metrics_count(METRIC_FORWARDED, METRIC_DIR_SERVICE, ctx->len);
		return ret;
	}
	/* The client's address is kept: a node-local backend answers through us. */
	ret = lb4_dnat(ctx, &l4, ip->daddr, &lb);
	if (ret)
		return DROP_HOST(ctx, ret, src_identity, ep->sec_id, ep->ep_id);
	return deliver_local(ctx, ep, src_identity, lb.rev_nat, TRACE_FROM_NETWORK);
}

SEC("tc")
int from_netdev(struct __sk_buff *ctx)
{
	struct ethhdr *eth = ctx_data(ctx, ETH_HLEN);

	if (eth && eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_ipv4_from_netdev(ctx);
	return TC_ACT_OK;
}

/*
 * Route a (reverse-translated) packet out of the node towards its
 * destination: FIB lookup, TTL, then the egress device with the neighbour's
 * MAC (bpf_redirect_neigh resolves it when the FIB has none yet).
 */
static __always_inline int forward_to_world(struct __sk_buff *ctx, __u32 src_identity)
{
	struct bpf_fib_lookup fib = {};
	struct iphdr *ip = ipv4_hdr(ctx);
	int ret, found;

	if (!ip)
		return DROP_HOST(ctx, DROP_INVALID, src_identity, 0, 0);
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = ip->protocol;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	found = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT);
	if (found != BPF_FIB_LKUP_RET_SUCCESS && found != BPF_FIB_LKUP_RET_NO_NEIGH)
		return DROP_HOST(ctx, DROP_NO_FIB, src_identity, 0, 0);
	ret = ipv4_dec_ttl(ctx, ip);
	if (ret)
		return DROP_HOST(ctx, ret, src_identity, 0, 0);
	metrics_count(METRIC_FORWARDED, METRIC_DIR_SERVICE, ctx->len);
	if (found == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(ctx, 0, fib.dmac, ETH_ALEN, 0) < 0 ||
		    bpf_skb_store_bytes(ctx, ETH_ALEN, fib.smac, ETH_ALEN, 0) < 0)
			return DROP_HOST(ctx, DROP_WRITE_ERROR, src_identity, 0, 0);
		return bpf_redirect(fib.ifindex, 0);
	}
	return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
}

/*
 * A packet decapsulated by the overlay's VXLAN device: VNI @vni, outer
 * source @outer (network order). Checked (lib/overlay.h), then delivered to a
 * local endpoint's policy_ingress with the VNI's identity, or to the node's
 * stack when it is addressed to the node itself.
 */
static __always_inline int handle_ipv4_from_overlay(struct __sk_buff *ctx, __u32 vni, __be32 outer)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	struct endpoint_info *ep;
	__u32 src_identity = 0;
	int ret;

	if (!ip)
		return DROP_HOST(ctx, DROP_INVALID, vni, 0, 0);
	ret = overlay_source4(vni, outer, ip->saddr, &src_identity);
	if (ret)
		return DROP_HOST(ctx, ret, vni, 0, 0);
	/* The inner frame's MACs were the sender's: this packet is for us. */
	bpf_skb_change_type(ctx, PACKET_HOST);
	ep = lookup_ip4_endpoint(ip->daddr);
	if (ep && !(ep->flags & ENDPOINT_F_HOST))
		return deliver_local(ctx, ep, src_identity, 0, TRACE_FROM_OVERLAY);
	if (ep) {
		/* A backend's reply to a NodePort flow this node sent on: back to the client. */
		ret = snat4_in(ctx, ip);
		if (ret < 0)
			return DROP_HOST(ctx, -ret, src_identity, 0, 0);
		if (ret > 0)
			return forward_to_world(ctx, src_identity);
		/* The node itself (its router or underlay address): the stack takes it. */
		metrics_count(METRIC_FORWARDED, METRIC_DIR_INGRESS, ctx->len);
		return TC_ACT_OK;
	}
	return DROP_HOST(ctx, DROP_UNROUTABLE, src_identity, 0, 0);
}

/* The overlay's VXLAN device (collect-metadata): every packet another node tunnelled here. */
SEC("tc")
int from_overlay(struct __sk_buff *ctx)
{
	struct bpf_tunnel_key key = {};
	struct ethhdr *eth = ctx_data(ctx, ETH_HLEN);

	if (!eth)
		return DROP_HOST(ctx, DROP_INVALID, 0, 0, 0);
	if (bpf_skb_get_tunnel_key(ctx, &key, sizeof(key), 0) < 0)
		return DROP_HOST(ctx, DROP_NO_TUNNEL_KEY, 0, 0, 0);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return DROP_HOST(ctx, DROP_UNKNOWN_L3, key.tunnel_id, 0, 0);
	return handle_ipv4_from_overlay(ctx, key.tunnel_id, bpf_htonl(key.remote_ipv4));
}

char _license[] SEC("license") = "Dual BSD/GPL";
