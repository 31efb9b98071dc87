/* Raw netlink sockets for the TypeScript rtnetlink implementation: open a
 * socket inside a given netns, send one message buffer, receive one datagram. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <errno.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

/*
 * nlExchangeAsync(fd, request, seq, timeoutMs) -> Promise<Buffer>: send one
 * request and read its answer on a libuv worker thread: every datagram until
 * one holds the NLMSG_ERROR (ACK) or NLMSG_DONE with this sequence number,
 * returned end to end (the caller parses them). For requests the kernel
 * answers slowly (deleting a veth waits for RCU), so the event loop keeps
 * serving meanwhile. The socket must not be used by anyone else until the
 * promise settles.
 */
#define MB_NL_MAX_ANSWER (64u << 20)

struct nl_work {
	napi_async_work work;
	napi_deferred deferred;
	int fd;
	uint32_t seq;
	int timeout_ms;
	void *req;
	size_t req_len;
	char *resp;
	size_t resp_len, resp_cap;
	int err;
	const char *op;
};

static int64_t nl_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Does this datagram end the answer to `seq` (its ACK/error or the end of a dump)? */
static int nl_answer_done(const char *d, size_t len, uint32_t seq)
{
	size_t off = 0;
	while (off + sizeof(struct nlmsghdr) <= len) {
		const struct nlmsghdr *h = (const struct nlmsghdr *)(d + off);
		if (h->nlmsg_len < sizeof(struct nlmsghdr) || off + h->nlmsg_len > len)
			return 0;
		if (h->nlmsg_seq == seq && (h->nlmsg_type == NLMSG_ERROR || h->nlmsg_type == NLMSG_DONE))
			return 1;
		off += NLMSG_ALIGN(h->nlmsg_len);
	}
	return 0;
}

static void nl_exchange_execute(napi_env env, void *data)
{
	struct nl_work *w = data;
	(void)env;
	struct sockaddr_nl sa;
	memset(&sa, 0, sizeof(sa));
	sa.nl_family = AF_NETLINK;
	ssize_t n;
	do
		n = sendto(w->fd, w->req, w->req_len, 0, (struct sockaddr *)&sa, sizeof(sa));
	while (n < 0 && errno == EINTR);
	if (n < 0 || (size_t)n != w->req_len) {
		w->err = n < 0 ? errno : EIO;
		w->op = "sendto";
		return;
	}
	int64_t deadline = nl_now_ms() + w->timeout_ms;
	for (;;) {
		int64_t left = deadline - nl_now_ms();
		if (left <= 0) {
			w->err = ETIMEDOUT;
			w->op = "poll";
			return;
		}
		struct pollfd p = { .fd = w->fd, .events = POLLIN };
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			w->err = errno;
			w->op = "poll";
			return;
		}
		if (r == 0)
			continue;
		ssize_t want;
		do
			want = recv(w->fd, NULL, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
		while (want < 0 && errno == EINTR);
		if (want < 0 && errno == EAGAIN)
			continue;
		if (want < 0) {
			w->err = errno;
			w->op = "recv";
			return;
		}
		if (want == 0)
			want = 1;
		if (w->resp_len + (size_t)want > MB_NL_MAX_ANSWER) {
			w->err = E2BIG;
			w->op = "recv";
			return;
		}
		if (w->resp_len + (size_t)want > w->resp_cap) {
			size_t cap = w->resp_cap ? w->resp_cap : 8192;
			while (cap < w->resp_len + (size_t)want)
				cap *= 2;
			char *np = realloc(w->resp, cap);
			if (!np) {
				w->err = ENOMEM;
				w->op = "recv";
				return;
			}
			w->resp = np;
			w->resp_cap = cap;
		}
		do
			n = recv(w->fd, w->resp + w->resp_len, (size_t)want, MSG_DONTWAIT);
		while (n < 0 && errno == EINTR);
		if (n < 0 && errno == EAGAIN)
			continue;
		if (n < 0) {
			w->err = errno;
			w->op = "recv";
			return;
		}
		int done = nl_answer_done(w->resp + w->resp_len, (size_t)n, w->seq);
		w->resp_len += (size_t)n;
		if (done)
			return;
	}
}

static void nl_exchange_complete(napi_env env, napi_status status, void *data)
{
	struct nl_work *w = data;
	if (status != napi_ok || w->err) {
		napi_value e = mb_errno_error(env, w->err ? w->err : EIO, w->op ? w->op : "netlink", NULL, "netlink fd %d (seq %u)", w->fd, w->seq);
		napi_reject_deferred(env, w->deferred, e);
	} else {
		napi_resolve_deferred(env, w->deferred, mb_buffer_copy(env, w->resp ? w->resp : "", w->resp_len));
	}
	napi_delete_async_work(env, w->work);
	free(w->req);
	free(w->resp);
	free(w);
}

static napi_value js_nl_exchange_async(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	int32_t fd, timeout;
	uint32_t seq;
	void *data;
	size_t len;
	if (!mb_arg_i32(env, argv[0], "fd", &fd) || !mb_arg_buf(env, argv[1], "request", &data, &len) ||
	    !mb_arg_u32(env, argv[2], "seq", &seq) || !mb_arg_i32(env, argv[3], "timeoutMs", &timeout))
		return NULL;
	struct nl_work *w = calloc(1, sizeof(*w));
	if (!w || !(w->req = malloc(len ? len : 1))) {
		free(w);
		mb_throw_type(env, "nlExchangeAsync: out of memory");
		return NULL;
	}
	memcpy(w->req, data, len);
	w->req_len = len;
	w->fd = fd;
	w->seq = seq;
	w->timeout_ms = timeout > 0 ? timeout : 1;
	napi_value promise, name;
	napi_create_promise(env, &w->deferred, &promise);
	napi_create_string_utf8(env, "nlExchangeAsync", NAPI_AUTO_LENGTH, &name);
	napi_create_async_work(env, NULL, name, nl_exchange_execute, nl_exchange_complete, w, &w->work);
	napi_queue_async_work(env, w->work);
	return promise;
}

void mb_init_netlink(napi_env env, napi_value exports)
{
	mb_export(env, exports, "nlOpen", js_nl_open);
	mb_export(env, exports, "nlSend", js_nl_send);
	mb_export(env, exports, "nlRecv", js_nl_recv);
	mb_export(env, exports, "nlExchangeAsync", js_nl_exchange_async);
}
