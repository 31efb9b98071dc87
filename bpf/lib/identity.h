/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Security identity of a remote address, from the ipcache (mb_ipcache, LPM). */
#ifndef MB_LIB_IDENTITY_H
#define MB_LIB_IDENTITY_H

#include "common.h"

/* The ipcache entry of the longest prefix covering an IPv4 address, or NULL. */
static __always_inline struct ipcache_value *ipcache_ip4_lookup(__be32 addr)
{
	struct ipcache_key key = {
		.prefixlen = 32 + 32,   /* family + pad, then the full v4 address */
		.family = MB_FAMILY_IPV4,
	};

	*(__be32 *)key.addr = addr;
	return bpf_map_lookup_elem(&mb_ipcache, &key);
}

/* Identity of an IPv4 address; MB_ID_WORLD when the ipcache has no covering prefix. */
static __always_inline __u32 ipcache_ip4_identity(__be32 addr)
{
	struct ipcache_value *v = ipcache_ip4_lookup(addr);

	return v ? v->sec_id : MB_ID_WORLD;
}

/* The address-block identity of an IPv4 address (mb_ipblock), 0 if none. */
static __always_inline __u32 ipblock_ip4_identity(__be32 addr)
{
	struct ipcache_key key = {
		.prefixlen = 32 + 32,
		.family = MB_FAMILY_IPV4,
	};
	__u32 *id;

	*(__be32 *)key.addr = addr;
	id = bpf_map_lookup_elem(&mb_ipblock, &key);
	return id ? *id : 0;
}

#endif
