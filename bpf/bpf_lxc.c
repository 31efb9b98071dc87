// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Endpoint (pod) datapath. One loaded object serves every endpoint: the agent
 * loads it once (maps pinned under its bpf root) and, per endpoint, fills the
 * endpoint's policy map into mb_policy_maps[ep_id], its configuration into
 * mb_ep_config[ep_id] and mb_lxc[ifindex], puts the shared policy_ingress into
 * mb_call_policy[ep_id], and only then attaches the shared from_container to
 * the tcx ingress of the endpoint's host-side veth. A packet can therefore
 * never run before its configuration, policy and tail-call target exist.
 *
 *   from_container  packets leaving the pod: ARP responder, anti-spoofing,
 *                   service DNAT (lib/lb.h; a frontend without backends is
 *                   answered with an ICMP port unreachable, drop 158),
 *                   conntrack + egress policy (every IPv4 packet, whatever the
 *                   destination, after DNAT: the backend's identity), reverse
 *                   NAT of replies to host/world clients of a service, then
 *                   local delivery (tail call into the destination's
 *                   policy_ingress) or hand-off to the host stack through the
 *                   host device pair.
 *   policy_ingress  tail-call target for traffic *to* an endpoint (skb->cb
 *                   words, lib/common.h: the destination endpoint id, the
 *                   source identity, a pending FROM_HOST trace, the
 *                   rev_nat_index to store in a new CT_INGRESS entry):
 *                   conntrack + ingress policy,
 *                   reverse NAT of replies to service flows this pod opened
 *                   (and hairpin replies), L3 forward (MACs, TTL) and
 *                   bpf_redirect_peer into the pod.
 *
 * Service paths (lib/lb.h): pod -> frontend -> backend is DNATed here and
 * reversed in this pod's policy_ingress (its CT_EGRESS entry carries
 * rev_nat_index), wherever the reply comes from (a local backend's
 * from_container, from_host). A pod balanced to itself is also SNATed to
 * LB_HAIRPIN_IPV4 (identity host towards its own ingress policy); its reply
 * to that address is looped back into its policy_ingress, which reverses both.
 * Related ICMP errors about translated flows pass conntrack (the CT entries
 * hold the translated tuple) but their quoted headers are not translated back
 * (best effort).

 * Nothing is attached to the host-side veth's egress: every path to a pod
 * (another pod, the host through from_host, later the overlay) tail-calls the
 * pod's policy_ingress, so ingress policy runs in the destination endpoint's
 * program whatever the source. The agent routes nothing through the lxc device.
 *
 * Conntrack + policy is one function, ipv4_ct_policy(), for both directions
 * (lib/conntrack.h, lib/policy.h, lib/l4.h describe the semantics).
 *
 * Observation (lib/trace.h): each program reads mb_monitor[0] once; trace
 * events FROM_LXC (+ TO_STACK) in from_container, TO_LXC (and a FROM_HOST
 * deferred by from_host) in policy_ingress, policy verdict events from
 * ipv4_ct_policy. Drops are always reported (lib/drop.h).
 */
#define MB_FILE_ID MB_FILE_LXC

#include "common.h"
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
#include "trace.h"
#include "lb.h"
#include "proxy.h"
#include "overlay.h"

#define DROP_EGRESS(ctx, cfg, reason, dst_label) \
	send_drop(ctx, reason, METRIC_DIR_EGRESS, (cfg)->sec_id, dst_label, (cfg)->ep_id, 0)
#define DROP_INGRESS(ctx, cfg, reason, src_label) \
	send_drop(ctx, reason, METRIC_DIR_INGRESS, src_label, (cfg)->sec_id, (cfg)->ep_id, (cfg)->ep_id)

/* The endpoint's own IPv4 address (network order). */
static __always_inline __be32 ep_ipv4(const struct ep_config *cfg)
{
	return *(const __be32 *)cfg->ipv4;
}

/* What ipv4_ct_policy found out about a packet it passed, for trace events, reverse NAT and the proxy. */
struct ct_obs {
	__u8 state;   /* TRACE_CT_* */
	__u8 report;  /* trace this packet (monitor flags + aggregation, lib/trace.h) */
	__u16 rev_nat; /* TRACE_CT_REPLY: the rev_nat_index of the flow's entry (0: not translated) */
	__u8 ct_flags; /* CT_F_* of the flow's entry (reply or established) */
	__u8 proxy;    /* OBS_PROXY_*: what the caller does with the packet */
	__be16 proxy_port; /* OBS_PROXY_REDIRECT: the proxy's listener port (0: only an accepted socket will do) */
	__be16 sport;  /* the packet's L4 ports (TCP), for the proxy's socket lookups */
	__be16 dport;
};

#define OBS_PROXY_NONE 0
#define OBS_PROXY_REDIRECT 1   /* redirected flow: hand it to the proxy (proxy_assign_ipv4) */
#define OBS_PROXY_REPLY 2      /* a reply to the proxy's upstream (CT_F_FROM_PROXY): steer it back to the proxy */
#define OBS_PROXY_DELIVERED 3  /* already assigned to a proxy upstream socket: return TC_ACT_OK */

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
 *
 * @l4: parsed by the caller when @l4_ready (from_container parses early for
 * the service lookup and updates it after DNAT), else parsed here. @rev_nat:
 * stored in the entry a new flow creates (service flows, lib/lb.h); a reply
 * reports its entry's rev_nat_index in @obs->rev_nat.
 *
 * Observation (@m): on pass, @obs gets the CT state and whether to trace the
 * packet. With MONITOR_F_VERDICT a policy verdict event is emitted for a new
 * flow policy allowed (after its CT entry was created) and for every policy
 * drop (the caller reports the drop itself).
 */
static __always_inline int ipv4_ct_policy(struct __sk_buff *ctx, const struct ep_config *cfg,
					  const struct iphdr *ip,
					  struct l4_info *l4p, int l4_ready, __u32 remote_id,
					  const __u8 dir, __u16 rev_nat, const struct mon *m,
					  struct ct_obs *obs)
{
	const __u8 egress = dir == CT_EGRESS;
	const __u8 rdir = egress ? CT_INGRESS : CT_EGRESS;
	const __u8 mdir = egress ? METRIC_DIR_EGRESS : METRIC_DIR_INGRESS;
	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__u32 len = ctx->len, now, changes;
	struct ct_key key = {};
	struct ct_value *ct;
	struct l4_info l4;
	__be16 proxy_port = 0;
	__u8 new_flags = 0;
	void *policy_map;
	__u8 match;
	int ret;

	obs->state = TRACE_CT_UNKNOWN;
	obs->report = 0;
	obs->rev_nat = 0;
	obs->ct_flags = 0;
	obs->proxy = OBS_PROXY_NONE;
	obs->proxy_port = 0;
	if (cfg->flags & EP_CFG_F_NO_POLICY) {
		obs->report = trace_untracked(m);
		return 0;
	}
	if (l4_ready) {
		l4 = *l4p;
	} else {
		ret = l4_parse_ipv4(ctx, ip, &l4);
		if (ret)
			return ret;
	}
	obs->sport = l4.sport;
	obs->dport = l4.dport;
	now = ct_now();

	/* Reply of a flow the other side of this endpoint tracked. Never creates. */
	ct_key_ipv4(&key, daddr, saddr, l4.dport, l4.sport, l4.proto, rdir);
	ct = ct_lookup(&key, now);
	if (ct) {
		changes = ct_update(ct, &l4, len, 0, now);
		obs->state = TRACE_CT_REPLY;
		obs->rev_nat = ct->rev_nat_index;
		obs->ct_flags = ct->flags;
		if (ct->flags & CT_F_FROM_PROXY)
			obs->proxy = OBS_PROXY_REPLY;
		obs->report = trace_aggregate(
			m, ct, (changes & (CT_UPD_FIRST_REPLY | TRACE_AGG_TCP_FLAGS)) != 0, now);
		return 0;
	}
	if (l4.icmp_err && ct_related_ipv4(ctx, &l4, rdir, egress ? saddr : daddr, now)) {
		obs->state = TRACE_CT_RELATED;
		obs->report = trace_aggregate(m, NULL, 1, now);
		return 0;
	}

	ct_key_ipv4(&key, saddr, daddr, l4.sport, l4.dport, l4.proto, dir);
	ct = ct_lookup(&key, now);
	/*
	 * A new TCP connection (bare SYN) on the tuple of a flow that is closing
	 * (a reused port), or of one recorded with another translation (a
	 * service flow and a direct flow DNATed to the same backend tuple): a
	 * new flow. Its entry is rewritten with what this connection went
	 * through (rev_nat_index, flags), so its replies are reversed by the
	 * right translation, and policy is taken again.
	 */
	if (ct && l4.proto == IPPROTO_TCP &&
	    (l4.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
	    ((ct->flags & CT_F_CLOSING) || ct->rev_nat_index != rev_nat))
		ct = NULL;
	/*
	 * A TCP segment to this pod that belongs to no flow and opens none (not
	 * a bare SYN): a reply to an upstream connection of the proxy, which
	 * speaks with this pod's address to a server that is not a local pod
	 * (lib/proxy.h). To that socket, if it exists.
	 */
	if (!ct && !egress && l4.proto == IPPROTO_TCP &&
	    (l4.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN &&
	    proxy_steer_reply_ipv4(ctx, saddr, daddr, l4.sport, l4.dport, 1) >= 0) {
		obs->proxy = OBS_PROXY_DELIVERED;
		obs->state = TRACE_CT_REPLY;
		obs->report = trace_aggregate(m, NULL, 0, now);
		return 0;
	}

	/*
	 * Established, and its verdict was taken under the endpoint's current
	 * policy for this same remote identity: it still holds. Any change to
	 * the endpoint's policy map bumps the epoch, so revoking a policy still
	 * cuts established flows at their next packet. Flows through the proxy
	 * take the full path.
	 */
	if (ct && ct->policy_epoch && ct->policy_epoch == cfg->policy_epoch &&
	    ct->src_sec_id == remote_id && !(ct->flags & CT_F_PROXY_REDIRECT)) {
		changes = ct_update(ct, &l4, len, 1, now);
		obs->state = TRACE_CT_ESTABLISHED;
		obs->ct_flags = ct->flags;
		obs->report = trace_aggregate(m, ct, (changes & TRACE_AGG_TCP_FLAGS) != 0, now);
		return 0;
	}

	/* Established or new: policy on every packet, so revoking policy cuts flows. */
	policy_map = ep_policy_map(cfg);
	if (policy_map) {
		ret = policy_can_access(policy_map, remote_id, egress, l4.proto, l4.policy_port,
					len, &match, &proxy_port);
		/*
		 * Nothing for the peer's identity: a NetworkPolicy ipBlock may still
		 * select its address (pods and nodes included), through mb_ipblock.
		 */
		if (ret == DROP_POLICY && (cfg->flags & EP_CFG_F_ADDR_POLICY)) {
			__u32 block = ipblock_ip4_identity(egress ? daddr : saddr);

			if (block)
				ret = policy_can_access(policy_map, block, egress, l4.proto,
							l4.policy_port, len, &match, &proxy_port);
		}
	} else {
		ret = DROP_POLICY;  /* no policy map installed: deny everything */
		match = MATCH_NONE;
	}
	if (ret) {
		if (m->flags & MONITOR_F_VERDICT)
			send_verdict(ctx, remote_id, VERDICT_DENY, ret, mdir, match,
				     bpf_ntohs(l4.policy_port), l4.proto, cfg->ep_id);
		return ret;
	}
	/*
	 * L7 rules on the port: the proxy decides each request. Packets from the
	 * proxy itself have been through it (every L7 rule on their way) and go
	 * on; their flow's replies must return to it.
	 */
	if (l4.proto != IPPROTO_TCP && l4.proto != IPPROTO_UDP)
		proxy_port = 0;
	if (!egress && mark_from_proxy(ctx)) {
		proxy_port = 0;
		new_flags = CT_F_FROM_PROXY;
	}
	if (ct) {
		changes = ct_update(ct, &l4, len, 1, now);
		/* Remember the verdict (see the fast path above). */
		if (ct->policy_epoch != cfg->policy_epoch)
			ct->policy_epoch = cfg->policy_epoch;
		if (ct->src_sec_id != remote_id)
			ct->src_sec_id = remote_id;
		obs->state = TRACE_CT_ESTABLISHED;
		obs->ct_flags = ct->flags;
		obs->report = trace_aggregate(m, ct, (changes & TRACE_AGG_TCP_FLAGS) != 0, now);
		/*
		 * A flow that went to the proxy stays there (a removed L7 rule only
		 * changes new flows); one that did not and now must (an L7 rule
		 * was added) goes there too: the proxy resets it, the client
		 * reconnects through the proxy. Never a bypass.
		 */
		if (proxy_port || ((ct->flags & CT_F_PROXY_REDIRECT) && !new_flags)) {
			if (!(ct->flags & CT_F_PROXY_REDIRECT))
				ct->flags |= CT_F_PROXY_REDIRECT;
			obs->proxy = OBS_PROXY_REDIRECT;
			obs->proxy_port = proxy_port;
		}
		return 0;
	}
	if (proxy_port)
		new_flags |= CT_F_PROXY_REDIRECT;
	ret = lb_ct_create(&key, &l4, len, remote_id, now, rev_nat, 0, new_flags);
	if (ret)
		return ret;
	obs->state = TRACE_CT_NEW;
	obs->ct_flags = new_flags;
	obs->report = trace_new(m);
	if (proxy_port) {
		obs->proxy = OBS_PROXY_REDIRECT;
		obs->proxy_port = proxy_port;
	}
	if (m->flags & MONITOR_F_VERDICT)
		send_verdict(ctx, remote_id, VERDICT_ALLOW, 0, mdir, match,
			     bpf_ntohs(l4.policy_port), l4.proto, cfg->ep_id);
	return 0;
}

/*
 * Hand a packet ipv4_ct_policy marked for the proxy to it (lib/proxy.h):
 * returns TC_ACT_OK (delivered to the proxy's socket by the stack) or the
 * drop (no proxy socket: fail closed).
 */
static __always_inline int to_proxy(struct __sk_buff *ctx, const struct ep_config *cfg,
				    const struct ct_obs *obs, __u32 src_sec, __u32 dst_sec,
				    __u8 mdir, __u32 dst_id)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	int ret;

	if (!ip)
		return send_drop(ctx, DROP_INVALID, mdir, src_sec, dst_sec, cfg->ep_id, dst_id);
	if (obs->proxy == OBS_PROXY_REPLY) {
		proxy_steer_reply_ipv4(ctx, ip->saddr, ip->daddr, obs->sport, obs->dport, 0);
	} else if (obs->proxy == OBS_PROXY_REDIRECT) {
		if (ip->protocol == IPPROTO_UDP)
			ret = proxy_assign_udp4(ctx, ip->saddr, obs->sport, obs->proxy_port);
		else
			ret = proxy_assign_ipv4(ctx, ip->saddr, ip->daddr, obs->sport, obs->dport,
						obs->proxy_port);
		if (ret)
			return send_drop(ctx, ret, mdir, src_sec, dst_sec, cfg->ep_id, dst_id);
		proxy_deliver(ctx);
	}
	metrics_count(METRIC_FORWARDED, mdir, ctx->len);
	if (obs->report)
		send_trace(ctx, TRACE_TO_PROXY, obs->state, src_sec, dst_sec, cfg->ep_id, dst_id,
			   ctx->ifindex);
	return TC_ACT_OK;
}

/* ---------------------------------------------------------------------------- */

static __always_inline int handle_arp(struct __sk_buff *ctx, const struct ep_config *cfg)
{
	struct arp_eth_ipv4 *arp = arp_request(ctx);

	/*
	 * Not an Ethernet/IPv4 request, or a request for the pod's own address
	 * (DAD probe / gratuitous ARP): let it go to the host-side veth, where the
	 * stack has nothing to answer (no address lives on lxc devices).
	 */
	if (!arp || arp->tip == ep_ipv4(cfg)) {
		struct mon m;

		metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
		/* Untracked: traced only without aggregation. */
		monitor_load(&m);
		if (trace_untracked(&m))
			send_trace(ctx, TRACE_FROM_LXC, TRACE_CT_UNKNOWN, cfg->sec_id, 0,
				   cfg->ep_id, 0, ctx->ifindex);
		return TC_ACT_OK;
	}
	/* Everything else on the pod's link is the router: answer with node_mac (no trace). */
	arp_make_reply(arp, cfg->node_mac);
	metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
	return bpf_redirect(cfg->ifindex, 0);
}

/*
 * Service translation of a packet from this pod (lib/lb.h): a frontend hit
 * gets a backend and is DNATed to it; a flow to itself is also SNATed to
 * LB_HAIRPIN_IPV4. Returns 0 (translated, @l4 updated, *@rev_nat and
 * *@hairpin set) or a drop reason (DROP_NO_SERVICE: no backend).
 */
static __always_inline int lb4_from_lxc(struct __sk_buff *ctx, __be32 saddr, __be32 daddr,
					struct lb_service_value *svc, struct l4_info *l4,
					__u16 *rev_nat, int *hairpin)
{
	struct lb4_result lb;
	int ret;

	ret = lb4_local(saddr, daddr, l4, svc, ctx->len, ct_now(), &lb);
	if (ret)
		return ret;
	ret = lb4_dnat(ctx, l4, daddr, &lb);
	if (ret)
		return ret;
	l4->dport = lb.port;
	l4->policy_port = lb.port;
	*rev_nat = lb.rev_nat;
	if (lb.addr == saddr) {
		/* Hairpin (the pod is its own backend): the reply must come back out of it. */
		ret = nat4_addr(ctx, l4->l4_off, l4->proto, 1, saddr, bpf_htonl(LB_HAIRPIN_IPV4));
		if (ret)
			return ret;
		*hairpin = 1;
	}
	return 0;
}

/*
 * A frontend without backends: count the drop (DROP_NO_SERVICE, with its
 * event on the original packet), then turn the packet into an ICMP port
 * unreachable from the frontend and send it back into the pod.
 */
static __always_inline int lb4_reject_lxc(struct __sk_buff *ctx, const struct ep_config *cfg)
{
	struct ethhdr *eth;

	send_drop(ctx, DROP_NO_SERVICE, METRIC_DIR_EGRESS, cfg->sec_id, 0, cfg->ep_id, 0);
	if (lb4_icmp_port_unreach(ctx) < 0)
		return TC_ACT_SHOT;
	eth = ctx_data(ctx, ETH_HLEN);
	if (!eth)
		return TC_ACT_SHOT;
	eth_rewrite(eth, cfg->mac, cfg->node_mac);
	return bpf_redirect(cfg->ifindex, 0);
}

static __always_inline int handle_ipv4_from_lxc(struct __sk_buff *ctx, const struct ep_config *cfg)
{
	struct iphdr *ip = ipv4_hdr(ctx);
	__u32 dst_sec, dst_id = 0, src_sec = cfg->sec_id;
	__be32 tunnel = 0;
	struct lb_service_value *svc;
	struct endpoint_info *ep;
	struct node_config *node;
	int l4_ready = 0, hairpin = 0;
	struct l4_info l4 = {};
	__u16 rev_nat = 0;
	struct ct_obs obs;
	struct ethhdr *eth;
	__be32 daddr;
	struct mon m;
	int ret;

	if (!ip)
		return DROP_EGRESS(ctx, cfg, DROP_INVALID, 0);
	eth = ipv4_eth(ip);
	if (!mac_eq(eth->h_source, cfg->mac))
		return DROP_EGRESS(ctx, cfg, DROP_INVALID_SMAC, 0);
	if (ip->saddr != ep_ipv4(cfg))
		return DROP_EGRESS(ctx, cfg, DROP_INVALID_SIP, 0);

	/*
	 * Services, before conntrack and policy: a frontend is DNATed to its
	 * backend here, so conntrack and egress policy see the backend (its
	 * address, port and identity). A local pod's address is never a
	 * frontend: pod-to-pod packets skip the service lookup.
	 */
	ep = lookup_ip4_endpoint(ip->daddr);
	if ((!ep || (ep->flags & ENDPOINT_F_HOST)) && lb4_proto_ok(ip->protocol) &&
	    !(ip->frag_off & bpf_htons(IP_OFFSET)) && l4_parse_ipv4(ctx, ip, &l4) == 0) {
		l4_ready = 1;
		svc = lb4_lookup_service(ip->daddr, l4.dport, l4.proto);
		if (svc) {
			ret = lb4_from_lxc(ctx, ip->saddr, ip->daddr, svc, &l4, &rev_nat, &hairpin);
			if (ret == DROP_NO_SERVICE)
				return lb4_reject_lxc(ctx, cfg);
			if (ret)
				return DROP_EGRESS(ctx, cfg, ret, 0);
			ip = ipv4_hdr(ctx);
			if (!ip)
				return DROP_EGRESS(ctx, cfg, DROP_INVALID, 0);
			if (hairpin)
				src_sec = MB_ID_HOST;
			ep = lookup_ip4_endpoint(ip->daddr);  /* the backend */
		}
	}

	/*
	 * Destination identity: a local endpoint's or node address's from
	 * mb_endpoints (the lookup we need anyway, same value as its ipcache
	 * entry), anything else from the ipcache (world if absent). The hairpin
	 * address stands for the host (only replies of hairpin flows go there).
	 */
	daddr = ip->daddr;
	if (unlikely(daddr == bpf_htonl(LB_HAIRPIN_IPV4))) {
		dst_sec = MB_ID_HOST;
	} else if (ep) {
		dst_sec = ep->sec_id;
		if (!(ep->flags & ENDPOINT_F_HOST))
			dst_id = ep->ep_id;
	} else {
		/* A remote pod or node: its ipcache entry names the node to tunnel to. */
		struct ipcache_value *ic = ipcache_ip4_lookup(daddr);

		dst_sec = ic ? ic->sec_id : MB_ID_WORLD;
		tunnel = ipcache_tunnel4(ic);
	}
	monitor_load(&m);
	ret = ipv4_ct_policy(ctx, cfg, ip, &l4, l4_ready, dst_sec, CT_EGRESS, rev_nat, &m, &obs);
	if (ret)
		return send_drop(ctx, ret, METRIC_DIR_EGRESS, cfg->sec_id, dst_sec, cfg->ep_id,
				 dst_id);
	if (obs.report)
		send_trace(ctx, TRACE_FROM_LXC, obs.state, cfg->sec_id, dst_sec, cfg->ep_id,
			   dst_id, ctx->ifindex);
	/* L7: to the proxy (a redirected flow, or this pod's reply to the proxy's upstream). */
	if (obs.proxy)
		return to_proxy(ctx, cfg, &obs, cfg->sec_id, dst_sec, METRIC_DIR_EGRESS, dst_id);

	if (unlikely(daddr == bpf_htonl(LB_HAIRPIN_IPV4))) {
		/*
		 * The pod's reply to a hairpin flow (it reached itself through a
		 * service): back into the pod, whose policy_ingress finds its
		 * CT_EGRESS entry and reverses both translations.
		 */
		if (obs.state != TRACE_CT_REPLY && obs.state != TRACE_CT_RELATED)
			return send_drop(ctx, DROP_UNROUTABLE, METRIC_DIR_EGRESS, cfg->sec_id,
					 dst_sec, cfg->ep_id, 0);
		dst_id = cfg->ep_id;
		dst_sec = cfg->sec_id;
	} else if (obs.rev_nat) {
		/*
		 * Reply of a service flow whose client is the host or the world
		 * (from_host / from_netdev stored rev_nat_index in this backend's
		 * CT_INGRESS entry): source back to the frontend.
		 */
		ret = lb4_rev_nat(ctx, obs.rev_nat, 0);
		if (ret)
			return send_drop(ctx, ret, METRIC_DIR_EGRESS, cfg->sec_id, dst_sec,
					 cfg->ep_id, dst_id);
	}

	if (dst_id) {
		/* Local delivery: the destination's policy_ingress does the rest. */
		metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
		cb_set(ctx, MB_CB_SRC_IDENTITY, src_sec);
		cb_set(ctx, MB_CB_TRACE, 0);
		cb_set(ctx, MB_CB_REVNAT, 0);   /* the client side (here) reverses pod flows */
		cb_set(ctx, MB_CB_DST_EP, dst_id);
		bpf_tail_call(ctx, &mb_call_policy, dst_id);
		return send_drop(ctx, DROP_MISSED_TAIL_CALL, METRIC_DIR_EGRESS, cfg->sec_id,
				 dst_sec, cfg->ep_id, dst_id);
	}

	if (tunnel) {
		/* Another node's pod (or the node itself): over the overlay, VNI = our identity. */
		if (obs.report)
			send_trace(ctx, TRACE_TO_OVERLAY, obs.state, cfg->sec_id, dst_sec, cfg->ep_id, 0,
				   ctx->ifindex);
		ret = overlay_encap4(ctx, tunnel, src_sec);
		if (ret < 0)
			return send_drop(ctx, -ret, METRIC_DIR_EGRESS, cfg->sec_id, dst_sec, cfg->ep_id,
					 0);
		metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
		return ret;
	}

	/* Host or world: into the host stack via the host device pair. */
	node = node_config();
	if (!node || !node->net_ifindex)
		return DROP_EGRESS(ctx, cfg, DROP_UNROUTABLE, 0);
	eth = ctx_data(ctx, ETH_HLEN);
	if (!eth)
		return DROP_EGRESS(ctx, cfg, DROP_INVALID, 0);
	eth_rewrite(eth, node->host_mac, node->net_mac);
	metrics_count(METRIC_FORWARDED, METRIC_DIR_EGRESS, ctx->len);
	if (obs.report)
		send_trace(ctx, TRACE_TO_STACK, obs.state, cfg->sec_id, dst_sec, cfg->ep_id, 0,
			   node->net_ifindex);
	return bpf_redirect(node->net_ifindex, 0);
}

SEC("tc")
int from_container(struct __sk_buff *ctx)
{
	const struct ep_config *cfg = ep_config_by_ifindex(ctx->ifindex);
	struct ethhdr *eth;

	/* Not (or no longer) an endpoint's veth: nothing from it may pass. */
	if (!cfg)
		return send_drop(ctx, DROP_EP_NOT_READY, METRIC_DIR_EGRESS, 0, 0, 0, 0);
	eth = ctx_data(ctx, ETH_HLEN);
	if (!eth)
		return DROP_EGRESS(ctx, cfg, DROP_INVALID, 0);
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return handle_ipv4_from_lxc(ctx, cfg);
	case bpf_htons(ETH_P_ARP):
		return handle_arp(ctx, cfg);
	default:
		/* Includes IPv6 (no v6 datapath in v1: the agent disables IPv6 in the pod). */
		return DROP_EGRESS(ctx, cfg, DROP_UNKNOWN_L3, 0);
	}
}

/* ---------------------------------------------------------------------------- */

SEC("tc")
int policy_ingress(struct __sk_buff *ctx)
{
	__u32 src_identity = ctx->cb[MB_CB_SRC_IDENTITY];
	__u32 pending = ctx->cb[MB_CB_TRACE];
	__u16 rev_nat = ctx->cb[MB_CB_REVNAT];
	const struct ep_config *cfg = ep_config_by_id(ctx->cb[MB_CB_DST_EP]);
	struct l4_info l4;
	struct ct_obs obs;
	struct iphdr *ip;
	struct ethhdr *eth;
	struct mon m;
	int ret;

	cb_set(ctx, MB_CB_SRC_IDENTITY, 0);
	cb_set(ctx, MB_CB_TRACE, 0);
	cb_set(ctx, MB_CB_REVNAT, 0);
	cb_set(ctx, MB_CB_DST_EP, 0);
	/* The slot was cleared (endpoint going away) between the tail call and now. */
	if (!cfg)
		return send_drop(ctx, DROP_EP_NOT_READY, METRIC_DIR_INGRESS, src_identity, 0, 0, 0);
	ip = ipv4_hdr(ctx);
	if (!ip)
		return DROP_INGRESS(ctx, cfg, DROP_INVALID, src_identity);
	monitor_load(&m);
	ret = ipv4_ct_policy(ctx, cfg, ip, &l4, 0, src_identity, CT_INGRESS, rev_nat, &m, &obs);
	if (ret)
		return DROP_INGRESS(ctx, cfg, ret, src_identity);
	/* L7: a redirected flow to the proxy; a reply to one of its upstreams already is. */
	if (obs.proxy == OBS_PROXY_DELIVERED) {
		metrics_count(METRIC_FORWARDED, METRIC_DIR_INGRESS, ctx->len);
		return TC_ACT_OK;
	}
	if (obs.proxy)
		return to_proxy(ctx, cfg, &obs, src_identity, cfg->sec_id, METRIC_DIR_INGRESS,
				cfg->ep_id);
	/* A FROM_HOST trace from_host left to the aggregation decision here (lib/trace.h). */
	if (obs.report && pending == MB_CB_TRACE_FROM_HOST)
		send_trace(ctx, TRACE_FROM_HOST, obs.state, src_identity, cfg->sec_id, 0,
			   cfg->ep_id, ctx->ifindex);
	if (obs.rev_nat) {
		/*
		 * Reply of a service flow this pod opened (its CT_EGRESS entry
		 * carries the frontend): source back to the frontend; a hairpin
		 * reply also gets its destination back to the pod.
		 */
		ret = lb4_rev_nat(ctx, obs.rev_nat, ep_ipv4(cfg));
		if (ret)
			return DROP_INGRESS(ctx, cfg, ret, src_identity);
		ip = ipv4_hdr(ctx);
		if (!ip)
			return DROP_INGRESS(ctx, cfg, DROP_INVALID, src_identity);
	}
	ret = ipv4_dec_ttl(ctx, ip);
	if (ret)
		return DROP_INGRESS(ctx, cfg, ret, src_identity);

	/* bpf_l3_csum_replace invalidated the packet pointers. */
	eth = ctx_data(ctx, ETH_HLEN);
	if (!eth)
		return DROP_INGRESS(ctx, cfg, DROP_INVALID, src_identity);
	eth_rewrite(eth, cfg->mac, cfg->node_mac);
	metrics_count(METRIC_FORWARDED, METRIC_DIR_INGRESS, ctx->len);
	if (obs.report)
		send_trace(ctx, TRACE_TO_LXC, obs.state, src_identity, cfg->sec_id, cfg->ep_id,
			   cfg->ep_id, cfg->ifindex);
	return bpf_redirect_peer(cfg->ifindex, 0);
}


char _license[] SEC("license") = "Dual BSD/GPL";
