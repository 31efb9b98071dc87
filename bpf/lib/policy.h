/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Policy lookup in an endpoint's mb_policy (LPM trie on struct policy_key).
 *
 * Stored entries always fix identity and direction (prefix >= 40):
 *   40        any protocol, any port
 *   48        protocol fixed, any port
 *   48 + n    protocol fixed, port prefix (n high bits of the network-order dport)
 *   64        exact port
 * ICMP: the "port" is bpf_htons(icmp type), so an ICMP type is a /64 entry.
 *
 * Two full-length (64-bit) lookups: (1) the remote identity, (2) identity 0
 * (L3 wildcard). A deny hit in either drops (DROP_POLICY_DENY); otherwise a hit
 * allows (counted on the exact-identity hit if there is one, else on the
 * wildcard hit); no hit drops (DROP_POLICY). An empty map denies everything.
 */
#ifndef MB_LIB_POLICY_H
#define MB_LIB_POLICY_H

#include "common.h"

/* Returns 0 (allow) or DROP_POLICY / DROP_POLICY_DENY. */
static __always_inline int policy_can_access(void *policy_map, __u32 remote_id, __u8 egress,
					     __u8 proto, __be16 dport, __u32 len)
{
	struct policy_key key = {
		.prefixlen = 64,
		.sec_id = remote_id,
		.egress = egress,
		.protocol = proto,
		.dport = dport,
	};
	struct policy_value *id_hit, *any_hit;

	id_hit = bpf_map_lookup_elem(policy_map, &key);
	if (id_hit && (id_hit->flags & POLICY_F_DENY))
		return DROP_POLICY_DENY;
	key.sec_id = 0;
	any_hit = bpf_map_lookup_elem(policy_map, &key);
	if (any_hit && (any_hit->flags & POLICY_F_DENY))
		return DROP_POLICY_DENY;
	if (!id_hit) {
		if (!any_hit)
			return DROP_POLICY;
		id_hit = any_hit;
	}
	__sync_fetch_and_add(&id_hit->packets, 1);
	__sync_fetch_and_add(&id_hit->bytes, len);
	return 0;
}

#endif
