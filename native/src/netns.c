/* Network namespace primitives: open/identify namespace fds and run a JS
 * callback with the calling thread temporarily switched into a netns.
 *
 * setns(2) only affects the calling thread. nsRun switches the main JS thread,
 * so only work done *synchronously* inside the callback (fs.writeFileSync on
 * /proc/sys/net/..., socket creation, native calls) happens in the target
 * namespace. Anything dispatched to the libuv threadpool (async fs, dns, zlib)
 * or awaited after the callback returns runs in whatever namespace those
 * threads are in, i.e. the agent's original one. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <linux/nsfs.h>
#include <unistd.h>

#define MB_SELF_NETNS "/proc/thread-self/ns/net"

/* Shared with netlink.c: open the calling thread's netns. Returns fd or -errno. */
int mb_netns_self(void)
{
	int fd = open(MB_SELF_NETNS, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Restore the thread's namespace; failing here would leave the main JS thread
 * in a foreign netns, which is unrecoverable. */
void mb_netns_restore(int origfd)
{
	if (setns(origfd, CLONE_NEWNET) < 0) {
		char msg[128];
		snprintf(msg, sizeof(msg), "setns back to original netns failed: errno %d", errno);
		napi_fatal_error("membrane netns", NAPI_AUTO_LENGTH, msg, NAPI_AUTO_LENGTH);
	}
	close(origfd);
}

static napi_value js_ns_open(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	char path[PATH_MAX];
	if (!mb_arg_str(env, argv[0], "path", path, sizeof(path)))
		return NULL;
	/* O_NONBLOCK: a FIFO given as a netns path must not block the agent. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		mb_throw_errno(env, errno, "open", "netns %s", path);
		return NULL;
	}
	return mb_i32(env, fd);
}

static napi_value js_ns_current(napi_env env, napi_callback_info info)
{
	int fd = mb_netns_self();
	if (fd < 0) {
		mb_throw_errno(env, -fd, "open", "netns %s", MB_SELF_NETNS);
		return NULL;
	}
	return mb_i32(env, fd);
}

static napi_value js_ns_run(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	napi_valuetype t;
	napi_typeof(env, argv[1], &t);
	if (t != napi_function) {
		mb_throw_type(env, "argument 'fn' must be a function");
		return NULL;
	}
	int orig = mb_netns_self();
	if (orig < 0) {
		mb_throw_errno(env, -orig, "open", "netns %s", MB_SELF_NETNS);
		return NULL;
	}
	if (setns(fd, CLONE_NEWNET) < 0) {
		int e = errno;
		close(orig);
		mb_throw_errno(env, e, "setns", "netns fd %d", fd);
		return NULL;
	}
	napi_value global, result = NULL;
	napi_get_global(env, &global);
	/* On a JS exception the status is napi_pending_exception and the
	 * exception stays pending: we restore and return NULL, so it propagates. */
	napi_status st = napi_call_function(env, global, argv[1], 0, NULL, &result);
	mb_netns_restore(orig);
	if (st != napi_ok)
		return NULL;
	return result;
}

static napi_value js_ns_identity(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		mb_throw_errno(env, errno, "fstat", "netns fd %d", fd);
		return NULL;
	}
	napi_value o;
	napi_create_object(env, &o);
	mb_set(env, o, "dev", mb_i64(env, (int64_t)st.st_dev));
	mb_set(env, o, "ino", mb_i64(env, (int64_t)st.st_ino));
	return o;
}

/* ioctl(NS_GET_NSTYPE): the CLONE_NEW* type of a namespace fd; ENOTTY when
 * the fd is not a namespace at all (a regular file, a directory, ...). */
static napi_value js_ns_type(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	int t = ioctl(fd, NS_GET_NSTYPE);
	if (t < 0) {
		mb_throw_errno(env, errno, "ioctl", "NS_GET_NSTYPE fd %d", fd);
		return NULL;
	}
	return mb_i32(env, t);
}

void mb_init_netns(napi_env env, napi_value exports)
{
	mb_export(env, exports, "nsOpen", js_ns_open);
	mb_export(env, exports, "nsCurrent", js_ns_current);
	mb_export(env, exports, "nsRun", js_ns_run);
	mb_export(env, exports, "nsIdentity", js_ns_identity);
	mb_export(env, exports, "nsType", js_ns_type);
}
