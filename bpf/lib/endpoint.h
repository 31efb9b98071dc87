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

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mb_node, &zero);
}

#endif
