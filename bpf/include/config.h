/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Load-time constants. One compiled object serves every endpoint: the agent
 * writes these .rodata values before load (BpfObject.setConst), so the verifier
 * sees them as constants and dead branches are pruned. No clang run per endpoint.
 */
#ifndef MEMBRANE_CONFIG_H
#define MEMBRANE_CONFIG_H

#include <linux/types.h>

#define EP_CFG_F_IPV4 1          /* ipv4 is set */
#define EP_CFG_F_IPV6 2          /* ipv6 is set */
#define EP_CFG_F_NO_POLICY 4     /* skip conntrack and policy (a feature switch; the agent never sets it) */

struct ep_config {
	__u32 ep_id;          /* endpoint id, 1..4095: index in mb_call_policy */
	__u32 sec_id;         /* the endpoint's security identity */
	__u32 ifindex;        /* host-side veth ifindex (bpf_redirect_peer target) */
	__u32 flags;          /* EP_CFG_F_* */
	__u8 ipv4[4];
	__u8 ipv6[16];
	__u8 mac[6];          /* pod-side (container) MAC */
	__u8 node_mac[6];     /* host-side veth MAC: the pod's router MAC */
};

#endif
