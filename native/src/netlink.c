/* Raw netlink sockets for the TypeScript rtnetlink implementation: open a
 * socket inside a given netns, send one message buffer, receive one datagram. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <errno.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

int mb_netns_self(void);
void mb_netns_restore(int origfd);

#define MB_NL_RCVBUF (4 * 1024 * 1024)

static napi_value js_nl_open(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t proto, nsfd = -1;
	if (!mb_arg_i32(env, argv[0], "protocol", &proto))
		return NULL;
	if (!mb_is_nullish(env, argv[1]) && !mb_arg_i32(env, argv[1], "netnsFd", &nsfd))
		return NULL;

	int orig = -1, fd, e;
	if (nsfd >= 0) {
		orig = mb_netns_self();
		if (orig < 0) {
			mb_throw_errno(env, -orig, "open", "netns /proc/thread-self/ns/net");
			return NULL;
		}
		if (setns(nsfd, CLONE_NEWNET) < 0) {
			e = errno;
			close(orig);
			mb_throw_errno(env, e, "setns", "netns fd %d", nsfd);
			return NULL;
		}
	}
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, proto);
	e = errno;
	if (orig >= 0)
		mb_netns_restore(orig); /* the socket stays bound to the netns it was created in */
	if (fd < 0) {
		mb_throw_errno(env, e, "socket", "AF_NETLINK protocol %d", proto);
		return NULL;
	}

	int one = 1, sz = MB_NL_RCVBUF;
	/* SO_RCVBUFFORCE bypasses rmem_max when privileged; fall back silently. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	/* Extended ACK (error strings) and capped ACK (no echo of the request). */
	setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));

	struct sockaddr_nl sa;
	memset(&sa, 0, sizeof(sa));
	sa.nl_family = AF_NETLINK;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		e = errno;
		close(fd);
		mb_throw_errno(env, e, "bind", "AF_NETLINK protocol %d", proto);
		return NULL;
	}
	return mb_i32(env, fd);
}

static napi_value js_nl_send(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd;
	void *data;
	size_t len;
	if (!mb_arg_i32(env, argv[0], "fd", &fd) || !mb_arg_buf(env, argv[1], "buf", &data, &len))
		return NULL;
	struct sockaddr_nl sa;
	memset(&sa, 0, sizeof(sa));
	sa.nl_family = AF_NETLINK; /* pid 0 = kernel */
	ssize_t n;
	do
		n = sendto(fd, data, len, 0, (struct sockaddr *)&sa, sizeof(sa));
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		mb_throw_errno(env, errno, "sendto", "netlink fd %d (%zu bytes)", fd, len);
		return NULL;
	}
	if ((size_t)n != len) {
		mb_throw_errno(env, EIO, "sendto", "netlink fd %d short send %zd of %zu", fd, n, len);
		return NULL;
	}
	return NULL;
}

static napi_value js_nl_recv(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd, timeout = -1;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	if (!mb_is_nullish(env, argv[1]) && !mb_arg_i32(env, argv[1], "timeoutMs", &timeout))
		return NULL;

	struct pollfd p = { .fd = fd, .events = POLLIN };
	int r;
	do
		r = poll(&p, 1, timeout < 0 ? -1 : timeout);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		mb_throw_errno(env, errno, "poll", "netlink fd %d", fd);
		return NULL;
	}
	if (r == 0)
		return mb_null(env);

	ssize_t want;
	do
		want = recv(fd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
	while (want < 0 && errno == EINTR);
	if (want < 0) {
		if (errno == EAGAIN)
			return mb_null(env);
		/* ENOBUFS: the kernel dropped messages (receive buffer overrun). */
		mb_throw_errno(env, errno, "recv", "netlink fd %d", fd);
		return NULL;
	}
	napi_value buf;
	void *data;
	if (napi_create_buffer(env, want > 0 ? (size_t)want : 1, &data, &buf) != napi_ok)
		return NULL;
	ssize_t n;
	do
		n = recv(fd, data, (size_t)(want > 0 ? want : 1), MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		mb_throw_errno(env, errno, "recv", "netlink fd %d", fd);
		return NULL;
	}
	if (n != want) {
		/* Should not happen (we peeked the size); return an exact-size copy. */
		return mb_buffer_copy(env, data, (size_t)n);
	}
	return buf;
}

void mb_init_netlink(napi_env env, napi_value exports)
{
	mb_export(env, exports, "nlOpen", js_nl_open);
	mb_export(env, exports, "nlSend", js_nl_send);
	mb_export(env, exports, "nlRecv", js_nl_recv);
}
