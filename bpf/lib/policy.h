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
 * The allowing entry's proxy_port (non-zero for a port with L7 rules) tells
 * the caller to redirect the flow to the proxy (lib/proxy.h).
 */
#ifndef MB_LIB_POLICY_H
#define MB_LIB_POLICY_H

#include "common.h"

/*
 * Match type (MATCH_*, maps.h) of the entry that decided: exact identity or
 * wildcard (identity 0) x any port (the rule's prefix_len <= 40) or
 * protocol/port.
 */
static __always_inline __u8 policy_match_type(const struct policy_value *v, int exact)
{
	if (v->prefix_len > 40)
		return exact ? MATCH_L3_L4 : MATCH_L4_ONLY;
	return exact ? MATCH_L3_ONLY : MATCH_ALL;
}

/*
 * Returns 0 (allow) or DROP_POLICY / DROP_POLICY_DENY; *@match is the MATCH_*
 * of the deciding entry (the deny entry, the counted allow entry, or
 * MATCH_NONE); *@proxy_port the allowing entry's proxy port (network order,
 * 0: no L7 rules, lib/proxy.h).
 */
static __always_inline int policy_can_access(void *policy_map, __u32 remote_id, __u8 egress,
					     __u8 proto, __be16 dport, __u32 len, __u8 *match,
					     __be16 *proxy_port)
{
	struct policy_key key = {
		.prefixlen = 64,
		.sec_id = remote_id,
		.egress = egress,
		.protocol = proto,
		.dport = dport,
	};
	struct policy_value *id_hit, *any_hit, *hit;

	id_hit = bpf_map_lookup_elem(policy_map, &key);
	if (id_hit && (id_hit->flags & POLICY_F_DENY)) {
		*match = policy_match_type(id_hit, 1);
		return DROP_POLICY_DENY;
	}
	key.sec_id = 0;
	any_hit = bpf_map_lookup_elem(policy_map, &key);
	if (any_hit && (any_hit->flags & POLICY_F_DENY)) {
		*match = policy_match_type(any_hit, 0);
		return DROP_POLICY_DENY;
	}
	if (id_hit) {
		hit = id_hit;
		*match = policy_match_type(id_hit, 1);
	} else if (any_hit) {
		hit = any_hit;
		*match = policy_match_type(any_hit, 0);
	} else {
		*match = MATCH_NONE;
		return DROP_POLICY;
	}
	__sync_fetch_and_add(&hit->packets, 1);
	__sync_fetch_and_add(&hit->bytes, len);
	*proxy_port = hit->proxy_port;
	return 0;
}

#endif
