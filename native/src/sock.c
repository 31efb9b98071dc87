/* Sockets Node cannot make itself: transparent (IP_TRANSPARENT) listeners and
 * marked (SO_MARK), transparently bound upstream sockets for the L7 proxy.
 * Each returns a non-blocking, close-on-exec fd that Node adopts:
 *   server.listen({fd})                            a listener from sockListen
 *   new net.Socket({fd}).connect({host, port})     an upstream from sockBound
 * Both options need CAP_NET_ADMIN (the proxy runs as root). */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IP_RECVORIGDSTADDR
#define IP_RECVORIGDSTADDR 20
#endif
#ifndef IP_ORIGDSTADDR
#define IP_ORIGDSTADDR 20
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

struct sa {
	union {
		struct sockaddr_in v4;
		struct sockaddr_in6 v6;
	} u;
	socklen_t len;
	int family;
};

static bool parse_addr(napi_env env, napi_value v, const char *name, uint32_t port, struct sa *out)
{
	char text[INET6_ADDRSTRLEN + 1];
	if (!mb_arg_str(env, v, name, text, sizeof(text)))
		return false;
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, text, &out->u.v4.sin_addr) == 1) {
		out->u.v4.sin_family = AF_INET;
		out->u.v4.sin_port = htons((uint16_t)port);
		out->len = sizeof(out->u.v4);
		out->family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, text, &out->u.v6.sin6_addr) == 1) {
		out->u.v6.sin6_family = AF_INET6;
		out->u.v6.sin6_port = htons((uint16_t)port);
		out->len = sizeof(out->u.v6);
		out->family = AF_INET6;
		return true;
	}
	mb_throw_type(env, "argument '%s' must be an IPv4 or IPv6 address, got \"%s\"", name, text);
	return false;
}

static int set_transparent(int fd, int family)
{
	int one = 1;
	if (family == AF_INET6)
		return setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
	return setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
}

/* sockListen(address, port, backlog, transparent[, mark]): a bound, listening TCP socket
 * (SO_MARK mark when non-zero: accepted sockets inherit it). */
static napi_value js_sock_listen(napi_env env, napi_callback_info info)
{
	MB_ARGS(5);
	uint32_t port, backlog, mark = 0;
	bool transparent = false;
	struct sa a;
	if (!mb_arg_u32(env, argv[1], "port", &port) || !mb_arg_u32(env, argv[2], "backlog", &backlog))
		return NULL;
	if (port > 65535) {
		mb_throw_type(env, "argument 'port' must be 0..65535, got %u", port);
		return NULL;
	}
	napi_get_value_bool(env, argv[3], &transparent);
	if (!mb_is_nullish(env, argv[4]) && !mb_arg_u32(env, argv[4], "mark", &mark))
		return NULL;
	if (!parse_addr(env, argv[0], "address", port, &a))
		return NULL;
	int fd = socket(a.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		mb_throw_errno(env, errno, "socket", "listener");
		return NULL;
	}
	int one = 1;
	const char *op = "setsockopt(SO_REUSEADDR)";
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto fail;
	op = "setsockopt(SO_MARK)";
	if (mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
		goto fail;
	op = "setsockopt(IP_TRANSPARENT)";
	if (transparent && set_transparent(fd, a.family) < 0)
		goto fail;
	op = "bind";
	if (bind(fd, (struct sockaddr *)&a.u, a.len) < 0)
		goto fail;
	op = "listen";
	if (listen(fd, (int)backlog) < 0)
		goto fail;
	return mb_i32(env, fd);
fail: {
	int err = errno;
	close(fd);
	mb_throw_errno(env, err, op, "listener on port %u%s", port, transparent ? " (transparent)" : "");
	return NULL;
}
}

/* sockBound(address, port, mark, transparent): a TCP socket bound to address:port
 * (port 0: chosen at connect time, IP_BIND_ADDRESS_NO_PORT), SO_MARK set when
 * mark != 0, not connected. */
static napi_value js_sock_bound(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	uint32_t port, mark;
	bool transparent = false;
	struct sa a;
	if (!mb_arg_u32(env, argv[1], "port", &port) || !mb_arg_u32(env, argv[2], "mark", &mark))
		return NULL;
	if (port > 65535) {
		mb_throw_type(env, "argument 'port' must be 0..65535, got %u", port);
		return NULL;
	}
	napi_get_value_bool(env, argv[3], &transparent);
	if (!parse_addr(env, argv[0], "address", port, &a))
		return NULL;
	int fd = socket(a.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		mb_throw_errno(env, errno, "socket", "upstream");
		return NULL;
	}
	int one = 1;
	const char *op = "setsockopt(IP_TRANSPARENT)";
	if (transparent && set_transparent(fd, a.family) < 0)
		goto fail;
	op = "setsockopt(SO_MARK)";
	if (mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
		goto fail;
	op = "setsockopt(IP_BIND_ADDRESS_NO_PORT)";
	if (port == 0 && a.family == AF_INET && setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) < 0)
		goto fail;
	op = "bind";
	if (bind(fd, (struct sockaddr *)&a.u, a.len) < 0)
		goto fail;
	return mb_i32(env, fd);
fail: {
	int err = errno;
	close(fd);
	char text[INET6_ADDRSTRLEN] = "?";
	if (a.family == AF_INET)
		inet_ntop(AF_INET, &a.u.v4.sin_addr, text, sizeof(text));
	else
		inet_ntop(AF_INET6, &a.u.v6.sin6_addr, text, sizeof(text));
	mb_throw_errno(env, err, op, "upstream socket bound to %s:%u mark 0x%x", text, port, mark);
	return NULL;
}
}

/* sockMark(fd): the socket's SO_MARK (to check what a socket carries). */
static napi_value js_sock_mark(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	uint32_t mark = 0;
	socklen_t len = sizeof(mark);
	if (getsockopt(fd, SOL_SOCKET, SO_MARK, &mark, &len) < 0) {
		mb_throw_errno(env, errno, "getsockopt(SO_MARK)", "fd %d", fd);
		return NULL;
	}
	return mb_u32(env, mark);
}

/* ---- UDP (the DNS proxy) ------------------------------------------------- */

/* udpSocket(address, port, mark, transparent): a bound UDP socket, blocking (it
 * is read by udpRecvAsync on a worker thread), SO_REUSEADDR, SO_MARK mark when
 * non-zero, IP_TRANSPARENT when transparent (it may then be bound to a foreign
 * address: answers are sent from the address a pod queried), and
 * IP_RECVORIGDSTADDR (each datagram's original destination). */
static napi_value js_udp_socket(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	uint32_t port, mark;
	bool transparent = false;
	struct sa a;
	if (!mb_arg_u32(env, argv[1], "port", &port) || !mb_arg_u32(env, argv[2], "mark", &mark))
		return NULL;
	if (port > 65535) {
		mb_throw_type(env, "argument 'port' must be 0..65535, got %u", port);
		return NULL;
	}
	napi_get_value_bool(env, argv[3], &transparent);
	if (!parse_addr(env, argv[0], "address", port, &a))
		return NULL;
	int fd = socket(a.family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		mb_throw_errno(env, errno, "socket", "udp");
		return NULL;
	}
	int one = 1;
	const char *op = "setsockopt(SO_REUSEADDR)";
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto fail;
	op = "setsockopt(SO_MARK)";
	if (mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
		goto fail;
	op = "setsockopt(IP_TRANSPARENT)";
	if (transparent && set_transparent(fd, a.family) < 0)
		goto fail;
	op = "setsockopt(IP_RECVORIGDSTADDR)";
	if (a.family == AF_INET && setsockopt(fd, SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof(one)) < 0)
		goto fail;
	op = "bind";
	if (bind(fd, (struct sockaddr *)&a.u, a.len) < 0)
		goto fail;
	return mb_i32(env, fd);
fail: {
	int err = errno;
	close(fd);
	mb_throw_errno(env, err, op, "udp socket on port %u%s", port, transparent ? " (transparent)" : "");
	return NULL;
}
}

#define UDP_BATCH_MAX 64
#define UDP_DGRAM_MAX 8192

struct udp_recv_work {
	napi_async_work work;
	napi_deferred deferred;
	int fd;
	unsigned int max;
	int n;
	int err;
	struct mmsghdr msgs[UDP_BATCH_MAX];
	struct iovec iov[UDP_BATCH_MAX];
	struct sockaddr_in src[UDP_BATCH_MAX];
	char ctrl[UDP_BATCH_MAX][64];
	unsigned char *bufs;  /* the caller's buffer (kept alive by ref) */
	napi_ref bufref;
};

static void udp_recv_execute(napi_env env, void *data)
{
	struct udp_recv_work *w = data;
	(void)env;
	for (unsigned int i = 0; i < w->max; i++) {
		w->iov[i].iov_base = w->bufs + (size_t)i * UDP_DGRAM_MAX;
		w->iov[i].iov_len = UDP_DGRAM_MAX;
		memset(&w->msgs[i], 0, sizeof(w->msgs[i]));
		w->msgs[i].msg_hdr.msg_name = &w->src[i];
		w->msgs[i].msg_hdr.msg_namelen = sizeof(w->src[i]);
		w->msgs[i].msg_hdr.msg_iov = &w->iov[i];
		w->msgs[i].msg_hdr.msg_iovlen = 1;
		w->msgs[i].msg_hdr.msg_control = w->ctrl[i];
		w->msgs[i].msg_hdr.msg_controllen = sizeof(w->ctrl[i]);
	}
	do {
		w->n = recvmmsg(w->fd, w->msgs, w->max, MSG_WAITFORONE, NULL);
	} while (w->n < 0 && errno == EINTR);
	w->err = w->n < 0 ? errno : 0;
}

static napi_value ip4_str(napi_env env, const struct in_addr *a)
{
	char text[INET_ADDRSTRLEN];
	inet_ntop(AF_INET, a, text, sizeof(text));
	return mb_str(env, text);
}

static void udp_recv_complete(napi_env env, napi_status status, void *data)
{
	struct udp_recv_work *w = data;
	if (status != napi_ok || w->n < 0) {
		napi_value e = mb_errno_error(env, w->err ? w->err : EIO, "recvmmsg", NULL, "udp fd %d", w->fd);
		napi_reject_deferred(env, w->deferred, e);
	} else {
		napi_value arr;
		napi_create_array_with_length(env, (size_t)w->n, &arr);
		for (int i = 0; i < w->n; i++) {
			struct msghdr *h = &w->msgs[i].msg_hdr;
			napi_value o;
			napi_create_object(env, &o);
			mb_set(env, o, "data", mb_buffer_copy(env, w->iov[i].iov_base, w->msgs[i].msg_len));
			mb_set(env, o, "srcIp", ip4_str(env, &w->src[i].sin_addr));
			mb_set(env, o, "srcPort", mb_u32(env, ntohs(w->src[i].sin_port)));
			for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
				if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) {
					struct sockaddr_in d;
					memcpy(&d, CMSG_DATA(c), sizeof(d));
					mb_set(env, o, "dstIp", ip4_str(env, &d.sin_addr));
					mb_set(env, o, "dstPort", mb_u32(env, ntohs(d.sin_port)));
				}
			}
			napi_set_element(env, arr, (uint32_t)i, o);
		}
		napi_resolve_deferred(env, w->deferred, arr);
	}
	napi_delete_async_work(env, w->work);
	napi_delete_reference(env, w->bufref);
	free(w);
}

/* udpRecvAsync(fd, buf) -> Promise<{data, srcIp, srcPort, dstIp, dstPort}[]>:
 * waits on a worker thread for at least one datagram and takes up to
 * buf.length / 8192 (<= 64) that are queued (recvmmsg, MSG_WAITFORONE) into
 * buf, a buffer the caller keeps for its socket (reused: no allocation per
 * call; not to be touched until the promise settles); each datagram is copied
 * out. dstIp/dstPort: the original destination (IP_ORIGDSTADDR). A shut down
 * socket gives []. */
static napi_value js_udp_recv_async(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd;
	void *buf;
	size_t blen;
	if (!mb_arg_i32(env, argv[0], "fd", &fd) || !mb_arg_buf(env, argv[1], "buf", &buf, &blen))
		return NULL;
	size_t max = blen / UDP_DGRAM_MAX;
	if (max < 1 || max > UDP_BATCH_MAX) {
		mb_throw_type(env, "argument 'buf' must hold 1..%d datagrams of %d bytes, got %zu bytes", UDP_BATCH_MAX, UDP_DGRAM_MAX, blen);
		return NULL;
	}
	struct udp_recv_work *w = calloc(1, sizeof(*w));
	if (!w) {
		mb_throw_type(env, "udpRecvAsync: out of memory");
		return NULL;
	}
	w->bufs = buf;
	napi_create_reference(env, argv[1], 1, &w->bufref);
	w->fd = fd;
	w->max = (unsigned int)max;
	napi_value promise, name;
	napi_create_promise(env, &w->deferred, &promise);
	napi_create_string_utf8(env, "udpRecvAsync", NAPI_AUTO_LENGTH, &name);
	napi_create_async_work(env, NULL, name, udp_recv_execute, udp_recv_complete, w, &w->work);
	napi_queue_async_work(env, w->work);
	return promise;
}

/* udpSendTo(fd, data, address, port) -> bytes sent (MSG_DONTWAIT). */
static napi_value js_udp_send_to(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	int32_t fd;
	uint32_t port;
	void *data;
	size_t len;
	struct sa a;
	if (!mb_arg_i32(env, argv[0], "fd", &fd) || !mb_arg_buf(env, argv[1], "data", &data, &len) ||
	    !mb_arg_u32(env, argv[3], "port", &port))
		return NULL;
	if (!parse_addr(env, argv[2], "address", port, &a))
		return NULL;
	ssize_t n = sendto(fd, data, len, MSG_DONTWAIT, (struct sockaddr *)&a.u, a.len);
	if (n < 0) {
		mb_throw_errno(env, errno, "sendto", "udp fd %d to port %u", fd, port);
		return NULL;
	}
	return mb_u32(env, (uint32_t)n);
}

/* sockShutdown(fd): wakes a udpRecvAsync waiting on it (it then gives []). */
static napi_value js_sock_shutdown(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	shutdown(fd, SHUT_RDWR);
	return mb_undef(env);
}

void mb_init_sock(napi_env env, napi_value exports)
{
	mb_export(env, exports, "udpSocket", js_udp_socket);
	mb_export(env, exports, "udpRecvAsync", js_udp_recv_async);
	mb_export(env, exports, "udpSendTo", js_udp_send_to);
	mb_export(env, exports, "sockShutdown", js_sock_shutdown);

	mb_export(env, exports, "sockListen", js_sock_listen);
	mb_export(env, exports, "sockBound", js_sock_bound);
	mb_export(env, exports, "sockMark", js_sock_mark);
}
