/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Redirection to the L7 proxy without NAT (bpf_sk_assign at tc ingress).
 *
 *   to the proxy   A flow whose policy entry carries a proxy port (a port
 *                  with L7 rules) is handed to the proxy: the socket of its
 *                  tuple if the proxy already accepted it, else the proxy's
 *                  transparent listener on the port (bound to loopback), is
 *                  assigned to the packet, which is marked MB_MARK_TO_PROXY
 *                  and passed up the stack (TC_ACT_OK): the fwmark rule makes
 *                  the stack deliver it locally, to that socket. The accepted
 *                  socket's local address is the original destination. No
 *                  socket (the proxy is down): DROP_PROXY_LOOKUP_FAILED, never
 *                  a bypass.
 *   from the proxy Its upstream sockets carry MB_MARK_FROM_PROXY (SO_MARK)
 *                  and the client's address: not redirected again; the
 *                  server's CT_INGRESS entry gets CT_F_FROM_PROXY.
 *   back to it     A reply whose entry has CT_F_FROM_PROXY (the server is a
 *                  local pod), or a TCP segment to a local pod that no entry
 *                  knows and that an upstream socket of the proxy owns (the
 *                  server is the world or the host), is steered the same
 *                  way to that socket instead of the pod.
 *
 * TCP (HTTP, DNS over TCP) and UDP (DNS) are redirected: a UDP datagram is
 * assigned the proxy's UDP socket on the listener port (one socket serves
 * every flow; it reads the original destination with IP_ORIGDSTADDR and
 * answers from that address). Everything here runs at tc ingress
 * (from_container on the lxc, from_host on the host device), the only hook
 * where bpf_sk_assign works.
 */
#ifndef MB_LIB_PROXY_H
#define MB_LIB_PROXY_H

#include <linux/if_packet.h>
#include "common.h"

#define MB_PROXY_LISTEN_ADDR 0x7f000001 /* the proxy's listeners bind 127.0.0.1 (host order) */

#ifndef BPF_TCP_LISTEN
#define BPF_TCP_LISTEN 10
#endif

static __always_inline int mark_from_proxy(const struct __sk_buff *ctx)
{
	return (ctx->mark & MB_MARK_MASK) == MB_MARK_FROM_PROXY;
}

/*
 * Is @sk the proxy's? Its sockets (listeners, accepted and upstream
 * connections) carry MB_MARK_FROM_PROXY, so another process listening on a
 * proxy port never receives redirected flows. A request socket (a handshake
 * in progress) has no mark of its own; it belongs to the listener that made it.
 */
static __always_inline int proxy_owns(struct bpf_sock *sk)
{
	struct bpf_sock *full = bpf_sk_fullsock(sk);

	return !full || (full->mark & MB_MARK_MASK) == MB_MARK_FROM_PROXY;
}

static __always_inline void proxy_tuple4(struct bpf_sock_tuple *t, __be32 saddr, __be32 daddr,
					 __be16 sport, __be16 dport)
{
	t->ipv4.saddr = saddr;
	t->ipv4.daddr = daddr;
	t->ipv4.sport = sport;
	t->ipv4.dport = dport;
}

/* Hand the packet to the stack for local delivery to the assigned socket. */
static __always_inline int proxy_deliver(struct __sk_buff *ctx)
{
	ctx->mark = (ctx->mark & ~MB_MARK_MASK) | MB_MARK_TO_PROXY;
	/* The frame may be addressed to another MAC (from the host device): make it ours. */
	bpf_skb_change_type(ctx, PACKET_HOST);
	return TC_ACT_OK;
}

/*
 * Assign the proxy's socket to a redirected TCP packet (tuple in network
 * order). Returns 0 or DROP_PROXY_LOOKUP_FAILED / DROP_PROXY_SET_FAILED.
 */
static __always_inline int proxy_assign_ipv4(struct __sk_buff *ctx, __be32 saddr, __be32 daddr,
					     __be16 sport, __be16 dport, __be16 proxy_port)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	long ret;

	proxy_tuple4(&tuple, saddr, daddr, sport, dport);
	/* A connection the proxy accepted (or is accepting: request socks count). */
	sk = bpf_skc_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* The lookup falls back to listeners: a host listener on the port is not the proxy. */
		if (sk->state != BPF_TCP_LISTEN && proxy_owns(sk))
			goto assign;
		bpf_sk_release(sk);
	}
	if (!proxy_port)
		return DROP_PROXY_LOOKUP_FAILED;
	tuple.ipv4.daddr = bpf_htonl(MB_PROXY_LISTEN_ADDR);
	tuple.ipv4.dport = proxy_port;
	sk = bpf_skc_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	if (sk->state != BPF_TCP_LISTEN || !proxy_owns(sk)) {
		bpf_sk_release(sk);
		return DROP_PROXY_LOOKUP_FAILED;
	}
assign:
	ret = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return ret ? DROP_PROXY_SET_FAILED : 0;
}

/*
 * Assign the proxy's UDP socket (bound to 127.0.0.1:@proxy_port, marked as
 * the proxy's) to a redirected datagram. Returns 0 or a drop reason.
 */
static __always_inline int proxy_assign_udp4(struct __sk_buff *ctx, __be32 saddr, __be16 sport,
					     __be16 proxy_port)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	long ret;

	if (!proxy_port)
		return DROP_PROXY_LOOKUP_FAILED;
	proxy_tuple4(&tuple, saddr, bpf_htonl(MB_PROXY_LISTEN_ADDR), sport, proxy_port);
	sk = bpf_sk_lookup_udp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	if ((sk->mark & MB_MARK_MASK) != MB_MARK_FROM_PROXY) {
		bpf_sk_release(sk);
		return DROP_PROXY_LOOKUP_FAILED;
	}
	ret = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return ret ? DROP_PROXY_SET_FAILED : 0;
}

/*
 * A packet towards one of the proxy's upstream sockets (a reply of a flow the
 * proxy opened): assign it that socket and deliver it locally. @must_own: only
 * when such a socket exists (returns -1 otherwise and leaves the packet
 * alone); without, a missing socket still goes to the stack, which resets
 * the dead connection.
 */
static __always_inline int proxy_steer_reply_ipv4(struct __sk_buff *ctx, __be32 saddr, __be32 daddr,
						  __be16 sport, __be16 dport, int must_own)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk, *full;
	int ours = 0;

	proxy_tuple4(&tuple, saddr, daddr, sport, dport);
	sk = bpf_skc_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN) {
			full = bpf_sk_fullsock(sk);
			ours = full && (full->mark & MB_MARK_MASK) == MB_MARK_FROM_PROXY;
			/* (a full socket only: an upstream connection is never a request sock) */
			if (ours && bpf_sk_assign(ctx, sk, 0))
				ours = 0;
		}
		bpf_sk_release(sk);
	}
	if (!ours && must_own)
		return -1;
	return proxy_deliver(ctx);
}

#endif
