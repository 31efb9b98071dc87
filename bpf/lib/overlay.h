/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The overlay between nodes: VXLAN in collect-metadata mode (UDP 8472).
 *
 * Encapsulation (from_container, from_host): a destination whose ipcache
 * entry carries a tunnel endpoint (a remote pod, a remote node's pod CIDR or
 * address) is sent out of the node's VXLAN device with
 * bpf_skb_set_tunnel_key: outer destination = the tunnel endpoint, VNI = the
 * source's security identity. Only identities 1..65535 go on the wire (local
 * CIDR/FQDN identities never do: the source of an encapsulated packet is a
 * pod or the node itself).
 *
 * Decapsulation (from_overlay, the VXLAN device's tcx ingress): the source
 * identity is the VNI; the node's own host identity becomes remote-node. The
 * packet is dropped when the VNI is not an identity that may be on the wire
 * (DROP_INVALID_IDENTITY) or when its inner source is not hosted by the node
 * that sent it, i.e. the inner source's ipcache entry does not name the outer
 * source as its tunnel endpoint (DROP_UNKNOWN_SENDER): nobody on the underlay
 * can speak for another node's pods.
 */
#ifndef MB_LIB_OVERLAY_H
#define MB_LIB_OVERLAY_H

#include "common.h"
#include "endpoint.h"
#include "identity.h"

#define MB_ID_REMOTE_NODE 6
#define MB_ID_WIRE_MAX 0xffff   /* reserved 1..255 and cluster identities 256..65535 */

#ifndef PACKET_HOST
#define PACKET_HOST 0
#endif

/* The ipcache entry's tunnel endpoint (IPv4, network order), 0 if it has none. */
static __always_inline __be32 ipcache_tunnel4(const struct ipcache_value *v)
{
	if (!v || !(v->flags & IPCACHE_F_HAS_TUNNEL) || v->tunnel_family != MB_FAMILY_IPV4)
		return 0;
	return *(const __be32 *)v->tunnel_addr;
}

/*
 * Set the tunnel key (remote @tunnel, VNI @identity) and redirect to the
 * node's VXLAN device. Returns the redirect verdict, or a negative drop
 * reason: -DROP_NO_TUNNEL_ENDPOINT (no overlay on this node),
 * -DROP_INVALID_IDENTITY (@identity may not go on the wire), -DROP_WRITE_ERROR.
 */
static __always_inline int overlay_encap4(struct __sk_buff *ctx, __be32 tunnel, __u32 identity)
{
	struct bpf_tunnel_key key = {};
	struct node_config *node = node_config();

	if (!node || !node->tunnel_ifindex || !tunnel)
		return -DROP_NO_TUNNEL_ENDPOINT;
	if (identity == 0 || identity > MB_ID_WIRE_MAX)
		return -DROP_INVALID_IDENTITY;
	key.tunnel_id = identity;
	key.remote_ipv4 = bpf_ntohl(tunnel);
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(ctx, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return -DROP_WRITE_ERROR;
	return bpf_redirect(node->tunnel_ifindex, 0);
}

/*
 * The source identity of a decapsulated packet with VNI @vni, outer source
 * @outer (network order) and inner source @inner; 0 with *@identity set, or a
 * drop reason.
 */
static __always_inline int overlay_source4(__u32 vni, __be32 outer, __be32 inner, __u32 *identity)
{
	struct ipcache_value *v;

	if (vni == 0 || vni > MB_ID_WIRE_MAX)
		return DROP_INVALID_IDENTITY;
	v = ipcache_ip4_lookup(inner);
	if (!outer || ipcache_tunnel4(v) != outer)
		return DROP_UNKNOWN_SENDER;
	/* Another node's host is, to this node, a remote node. */
	*identity = vni == MB_ID_HOST ? MB_ID_REMOTE_NODE : vni;
	return 0;
}

#endif
