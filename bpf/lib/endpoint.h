/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Lookups of local endpoints (mb_endpoints) and the node configuration (mb_node). */
#ifndef MB_LIB_ENDPOINT_H
#define MB_LIB_ENDPOINT_H

#include "common.h"

static __always_inline struct endpoint_info *lookup_ip4_endpoint(__be32 addr)
{
	struct endpoint_key key = { .family = MB_FAMILY_IPV4 };

	*(__be32 *)key.addr = addr;
	return bpf_map_lookup_elem(&mb_endpoints, &key);
}

/* A local endpoint we can deliver to (not one of the node's own addresses). */
static __always_inline struct endpoint_info *lookup_ip4_local_endpoint(__be32 addr)
{
	struct endpoint_info *ep = lookup_ip4_endpoint(addr);

	if (ep && !(ep->flags & ENDPOINT_F_HOST))
		return ep;
	return NULL;
}

/* The configuration of endpoint @id, or NULL if the slot is not (or no longer) in use. */
static __always_inline const struct ep_config *ep_config_by_id(__u32 id)
{
	const struct ep_config *cfg = bpf_map_lookup_elem(&mb_ep_config, &id);

	if (!cfg || !id || cfg->ep_id != id)
		return NULL;
	return cfg;
}

/* The endpoint whose host-side veth is @ifindex (from_container's own endpoint). */
static __always_inline const struct ep_config *ep_config_by_ifindex(__u32 ifindex)
{
	const struct ep_config *cfg;
	__u32 *id = bpf_map_lookup_elem(&mb_lxc, &ifindex);

	if (!id)
		return NULL;
	cfg = ep_config_by_id(*id);
	if (!cfg || cfg->ifindex != ifindex)
		return NULL;
	return cfg;
}

/* The endpoint's policy map (LPM trie), NULL when none is installed (deny all). */
static __always_inline void *ep_policy_map(const struct ep_config *cfg)
{
	__u32 id = cfg->ep_id;

	return bpf_map_lookup_elem(&mb_policy_maps, &id);
}

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mb_node, &zero);
}

#endif
