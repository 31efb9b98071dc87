// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Endpoint (pod) datapath. One object serves every endpoint: the agent sets
 * CONFIG (.rodata) before load, loads it with the bpf root as pin root, puts
 * policy_ingress into mb_call_policy[ep_id], and only then attaches
 * from_container (tcx ingress of the host-side veth).
 *
 *   from_container  packets leaving the pod: ARP responder, anti-spoofing,
 *                   conntrack + egress policy (every IPv4 packet, whatever the
 *                   destination), then local delivery (tail call into the
 *                   destination's policy_ingress) or hand-off to the host
 *                   stack through the host device pair.
 *   policy_ingress  tail-call target for traffic *to* this endpoint (source
 *                   identity in skb->cb[0]): conntrack + ingress policy, L3
 *                   forward (MACs, TTL) and bpf_redirect_peer into the pod.

 * Nothing is attached to the host-side veth's egress: every path to a pod
 * (another pod, the host through from_host, later the overlay) tail-calls the
 * pod's policy_ingress, so ingress policy runs in the destination endpoint's
 * program whatever the source. The agent routes nothing through the lxc device.
 *
 * Conntrack + policy is one function, ipv4_ct_policy(), for both directions
 * (lib/conntrack.h, lib/policy.h, lib/l4.h describe the semantics).
 */
#define MB_FILE_ID MB_FILE_LXC

#include "common.h"
#include "config.h"
#include "eth.h"
#include "ipv4.h"
#include "arp.h"
#include "metrics.h"
#include "drop.h"
#include "endpoint.h"
#include "identity.h"
#include "l4.h"
#include "conntrack.h"
#include "policy.h"

/* Per-endpoint values; the agent writes them before load (BpfObject.setConst). */
volatile const struct ep_config CONFIG;

/*
 * Per-endpoint ingress/egress policy. Not pinned by libbpf (one per endpoint):
 * the agent pins it under its bpf root per endpoint and fills it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mb_policy SEC(".maps");

#define DROP_EGRESS(ctx, reason, dst_label) \
	send_drop(ctx, reason, METRIC_DIR_EGRESS, CONFIG.sec_id, dst_label, CONFIG.ep_id, 0)
#define DROP_INGRESS(ctx, reason, src_label) \
	send_drop(ctx, reason, METRIC_DIR_INGRESS, src_label, CONFIG.sec_id, CONFIG.ep_id, CONFIG.ep_id)

/*
 * Conntrack + policy for an IPv4 packet at this endpoint's egress
 * (dir = CT_EGRESS, the endpoint is the source, @remote_id the destination's
 * identity) or ingress (dir = CT_INGRESS, the endpoint is the destination,
 * @remote_id the source's identity). Returns 0 (pass) or a drop reason.
 *
 *   reply of a flow the other side tracked   pass, no policy
 *   ICMP error about such a flow (related)   pass, no policy
 *   established / new                        policy on every packet; a new
 *                                            flow gets an entry when allowed
 *
 * Cost on the pod->pod hot path per side: 2 CT lookups (reverse, forward) and
 * 2 policy lookups for forward packets; 1 CT lookup for replies.
 *
 * With EP_CFG_F_NO_POLICY (feature switch) nothing is tracked or enforced.
 */
static __always_inline int ipv4_ct_policy(struct __sk_buff *ctx, const struct iphdr *ip,
					  __u32 remote_id, const __u8 dir)
{
	const __u8 egress = dir == CT_EGRESS;
	const __u8 rdir = egress ? CT_INGRESS : CT_EGRESS;
	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__u32 len = ctx->len, now;
	struct ct_key key = {};
	struct ct_value *ct;
	struct l4_info l4;
	int ret;

	if (CONFIG.flags & EP_CFG_F_NO_POLICY)
		return 0;
	ret = l4_parse_ipv4(ctx, ip, &l4);
	if (ret)
		return ret;
	now = ct_now();

	/* Reply of a flow the other side of this endpoint tracked. Never creates. */
	ct_key_ipv4(&key, daddr, saddr, l4.dport, l4.sport, l4.proto, rdir);
	ct = ct_lookup(&key, now);
	if (ct) {
		ct_update(ct, &l4, len, 0, now);
		return 0;
	}
	if (l4.icmp_err && ct_related_ipv4(ctx, &l4, rdir, egress ? saddr : daddr, now))
		return 0;

	/* Established or new: policy on every packet, so revoking policy cuts flows. */
	ret = policy_can_access(&mb_policy, remote_id, egress, l4.proto, l4.policy_port, len);
	if (ret)
		return ret;
	ct_key_ipv4(&key, saddr, daddr, l4.sport, l4.dport, l4.proto, dir);
	ct = ct_lookup(&key, now);
	if (ct) {
		ct_update(ct, &l4, len, 1, now);
		return 0;
	}
	return ct_create(&key, &l4, len, remote_id, now);
}

/* ---------------------------------------------------------------------------- */

static __always_inline int handle_arp(struct __sk_buff *ctx)
{
	struct arp_eth_ipv4 *arp = arp_request(ctx);

	/*
	 * Not an Ethernet/IPv4 request, or a request for the pod's own address
	 * (DAD probe / gratuitous ARP): let it go to the host-side veth, where the
	 * stack has nothing to answer (no address lives on lxc devices).
	 */
	if (!arp || arp->tip == *(const volatile __be32 *)CONFIG.ipv4) {
		metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
		return TC_ACT_OK;
	}
	/* Everything else on the pod's link is the router: answer with node_mac. */
	arp_make_reply(arp, CONFIG.node_mac);
	metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
	return bpf_redirect(CONFIG.ifindex, 0);
}

static __always_inline int handle_ipv4_from_lxc(struct __sk_buff *ctx)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	__u32 dst_sec, dst_id = 0;
	struct endpoint_info *ep;
	struct node_config *node;
	struct ethhdr *eth;
	int ret;

	if (!ip)
		return DROP_EGRESS(ctx, DROP_INVALID, 0);
	eth = ipv4_eth(ip);
	if (!mac_eq(eth->h_source, CONFIG.mac))
		return DROP_EGRESS(ctx, DROP_INVALID_SMAC, 0);
	if (ip->saddr != *(const volatile __be32 *)CONFIG.ipv4)
		return DROP_EGRESS(ctx, DROP_INVALID_SIP, 0);

	/*
	 * Destination identity: a local endpoint's or node address's from
	 * mb_endpoints (the lookup we need anyway, same value as its ipcache
	 * entry), anything else from the ipcache (world if absent).
	 */
	ep = lookup_ip4_endpoint(ip->daddr);
	if (ep) {
		dst_sec = ep->sec_id;
		if (!(ep->flags & ENDPOINT_F_HOST))
			dst_id = ep->ep_id;
	} else {
		dst_sec = ipcache_ip4_identity(ip->daddr);
	}
	ret = ipv4_ct_policy(ctx, ip, dst_sec, CT_EGRESS);
	if (ret)
		return send_drop(ctx, ret, METRIC_DIR_EGRESS, CONFIG.sec_id, dst_sec, CONFIG.ep_id,
				 dst_id);

	if (dst_id) {
		/* Local delivery: the destination's policy_ingress does the rest. */
		metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
		ctx->cb[0] = CONFIG.sec_id;
		bpf_tail_call(ctx, &mb_call_policy, dst_id);
		return send_drop(ctx, DROP_MISSED_TAIL_CALL, METRIC_DIR_EGRESS, CONFIG.sec_id,
				 dst_sec, CONFIG.ep_id, dst_id);
	}

	/* Host or world: into the host stack via the host device pair. */
	node = node_config();
	if (!node || !node->net_ifindex)
		return DROP_EGRESS(ctx, DROP_UNROUTABLE, 0);
	eth_rewrite(eth, node->host_mac, node->net_mac);
	metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
	return bpf_redirect(node->net_ifindex, 0);
}

SEC("tc")
int from_container(struct __sk_buff *ctx)
{
	struct ethhdr *eth = ctx_data(ctx, ETH_HLEN);

	if (!eth)
		return DROP_EGRESS(ctx, DROP_INVALID, 0);
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return handle_ipv4_from_lxc(ctx);
	case bpf_htons(ETH_P_ARP):
		return handle_arp(ctx);
	default:
		/* Includes IPv6 (no v6 datapath in v1: the agent disables IPv6 in the pod). */
		return DROP_EGRESS(ctx, DROP_UNKNOWN_L3, 0);
	}
}

/* ---------------------------------------------------------------------------- */

SEC("tc")
int policy_ingress(struct __sk_buff *ctx)
{
	__u32 src_identity = ctx->cb[0];
	struct iphdr *ip;
	struct ethhdr *eth;
	int ret;

	ctx->cb[0] = 0;
	ip = ipv4_hdr(ctx);
	if (!ip)
		return DROP_INGRESS(ctx, DROP_INVALID, src_identity);
	ret = ipv4_ct_policy(ctx, ip, src_identity, CT_INGRESS);
	if (ret)
		return DROP_INGRESS(ctx, ret, src_identity);
	ret = ipv4_dec_ttl(ctx, ip);
	if (ret)
		return DROP_INGRESS(ctx, ret, src_identity);

	/* bpf_l3_csum_replace invalidated the packet pointers. */
	eth = ctx_data(ctx, ETH_HLEN);
	if (!eth)
		return DROP_INGRESS(ctx, DROP_INVALID, src_identity);
	eth_rewrite(eth, CONFIG.mac, CONFIG.node_mac);
	metrics_count(METRIC_FORWARDED, METRIC_DIR_INGRESS, ctx->len);
	return bpf_redirect_peer(CONFIG.ifindex, 0);
}


char _license[] SEC("license") = "Dual BSD/GPL";
