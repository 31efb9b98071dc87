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
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
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

void mb_init_sock(napi_env env, napi_value exports)
{
	mb_export(env, exports, "sockListen", js_sock_listen);
	mb_export(env, exports, "sockBound", js_sock_bound);
	mb_export(env, exports, "sockMark", js_sock_mark);
}
