// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level service load balancing (cgroup v2 sock_addr hooks), over the
 * same maps as the packet datapath (lib/lb.h): the destination of a
 * connect()/sendmsg() to a frontend is rewritten to a backend before any
 * packet exists, so no NAT, conntrack or reverse NAT is needed on the wire,
 * and any backend (local, remote, the host itself) is reachable.
 *
 *   connect4      TCP and UDP connect() to a frontend: user_ip4/user_port ->
 *                 a backend; mb_lb_sock_revnat {socket cookie, backend} ->
 *                 frontend
 *   sendmsg4      unconnected UDP sendmsg() to a frontend: the same
 *   recvmsg4      UDP recvmsg() from a backend this socket was balanced to:
 *                 the source shown to the application is the frontend
 *   getpeername4  getpeername() of a balanced socket: the frontend
 *
 * Selection: slot 0 of {user_ip4, user_port, protocol, family 4, scope 0};
 * count 0 -> the call fails (connect/sendmsg return -EPERM: the hook's
 * verdict 0); random slot (bpf_get_prandom_u32() % count) + 1, or for
 * LB_SVC_F_MAGLEV (hash of the socket cookie % count) + 1; slots whose
 * backend is missing or not active are skipped (the next ones, up to
 * LB_SELECT_TRIES). Session affinity is not applied at the socket level (no
 * client address yet; documented limitation). NodePort frontends are not
 * balanced here (node address + node port stays a normal local connection).
 *
 * The agent attaches these programs to a dedicated cgroup (never the cgroup
 * root), e.g. with bpf_link_create(prog, cgroup_fd, BPF_CGROUP_INET4_CONNECT /
 * UDP4_SENDMSG / UDP4_RECVMSG / INET4_GETPEERNAME).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#define LB_SELECT_TRIES 4

#define SOCK_ALLOW 1
#define SOCK_REJECT 0

static __always_inline __u32 sock_fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline struct lb_backend *sock_backend(__u32 id)
{
	struct lb_backend *be = bpf_map_lookup_elem(&mb_lb_backends, &id);

	if (be && be->family != MB_FAMILY_IPV4)
		return NULL;
	return be;
}

/* Rewrite a connect()/sendmsg() to a frontend. Returns SOCK_ALLOW or SOCK_REJECT. */
static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
	struct lb_service_key key = { .family = MB_FAMILY_IPV4 };
	struct lb_sock_revnat_key rkey = { .family = MB_FAMILY_IPV4 };
	struct lb_sock_revnat_value rval = { .family = MB_FAMILY_IPV4 };
	struct lb_service_value *svc, *sv;
	struct lb_backend *be = NULL;
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u32 count, slot, i, id = 0;
	__u64 cookie;
	__u8 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return SOCK_ALLOW;
	*(__be32 *)key.addr = addr;
	key.dport = port;
	key.proto = proto;
	svc = bpf_map_lookup_elem(&mb_lb_services, &key);
	if (!svc || (svc->flags & LB_SVC_F_NODEPORT))
		return SOCK_ALLOW;
	count = svc->count;
	if (!count)
		return SOCK_REJECT;
	cookie = bpf_get_socket_cookie(ctx);
	if (svc->flags & LB_SVC_F_MAGLEV)
		slot = sock_fmix32((__u32)cookie ^ sock_fmix32(cookie >> 32)) % count;
	else
		slot = bpf_get_prandom_u32() % count;
	rval.rev_nat_index = svc->rev_nat_index;
	for (i = 0; i < LB_SELECT_TRIES; i++) {
		key.slot = slot + 1;
		sv = bpf_map_lookup_elem(&mb_lb_services, &key);
		if (sv) {
			id = sv->backend_id;
			be = sock_backend(id);
			if (be && be->flags == LB_BACKEND_ACTIVE)
				break;
		}
		be = NULL;
		slot = slot + 1 < count ? slot + 1 : 0;
	}
	if (!be)
		return SOCK_REJECT;

	rkey.cookie = cookie;
	*(__be32 *)rkey.addr = *(__be32 *)be->addr;
	rkey.port = be->port ? be->port : port;
	*(__be32 *)rval.addr = addr;
	rval.port = port;
	bpf_map_update_elem(&mb_lb_sock_revnat, &rkey, &rval, BPF_ANY);
	ctx->user_ip4 = *(__be32 *)rkey.addr;
	ctx->user_port = rkey.port;
	return SOCK_ALLOW;
}

/* Show the frontend instead of a backend this socket was balanced to. */
static __always_inline int sock4_rev_xlate(struct bpf_sock_addr *ctx)
{
	struct lb_sock_revnat_key rkey = { .family = MB_FAMILY_IPV4 };
	struct lb_sock_revnat_value *rv;

	rkey.cookie = bpf_get_socket_cookie(ctx);
	*(__be32 *)rkey.addr = ctx->user_ip4;
	rkey.port = (__be16)ctx->user_port;
	rv = bpf_map_lookup_elem(&mb_lb_sock_revnat, &rkey);
	if (rv && rv->family == MB_FAMILY_IPV4) {
		ctx->user_ip4 = *(__be32 *)rv->addr;
		ctx->user_port = rv->port;
	}
	return SOCK_ALLOW;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_rev_xlate(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock4_rev_xlate(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
