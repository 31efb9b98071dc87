#define _GNU_SOURCE
#include "util.h"
#include "addon.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <stdlib.h>
#include <fcntl.h>

static const char *errno_code(int err)
{
	switch (err) {
#define C(x) case x: return #x;
	C(EPERM) C(ENOENT) C(ESRCH) C(EINTR) C(EIO) C(ENXIO) C(E2BIG) C(EBADF) C(EAGAIN)
	C(ENOMEM) C(EACCES) C(EFAULT) C(EBUSY) C(EEXIST) C(ENODEV) C(ENOTDIR) C(EINVAL)
	C(ENFILE) C(EMFILE) C(ENOSPC) C(ERANGE) C(ENOSYS) C(ENOTEMPTY) C(ELOOP) C(ENODATA)
	C(ETIME) C(EPROTO) C(EOVERFLOW) C(EBADMSG) C(EOPNOTSUPP) C(EAFNOSUPPORT)
	C(EADDRINUSE) C(EADDRNOTAVAIL) C(ENETDOWN) C(ENETUNREACH) C(ENOBUFS) C(ETIMEDOUT)
	C(ECONNREFUSED) C(EHOSTUNREACH) C(EALREADY) C(ENOTCONN) C(ENOTSOCK) C(EPROTONOSUPPORT)
	case 524: return "ENOTSUPP"; /* kernel-internal, e.g. unsupported batch op */
#undef C
	default: return "EUNKNOWN";
	}
}

void mb_throw_errno(napi_env env, int err, const char *op, const char *fmt, ...)
{
	char ctx[512] = "";
	char msg[768];
	if (fmt && *fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(ctx, sizeof(ctx), fmt, ap);
		va_end(ap);
	}
	if (err < 0)
		err = -err;
	snprintf(msg, sizeof(msg), "%s%s%s: %s (%s, errno %d)", op, ctx[0] ? " " : "", ctx,
		 strerror(err), errno_code(err), err);
	napi_value m, e;
	napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
	napi_create_error(env, NULL, m, &e);
	mb_set(env, e, "errno", mb_i32(env, err));
	mb_set(env, e, "code", mb_str(env, errno_code(err)));
	mb_set(env, e, "syscall", mb_str(env, op));
	napi_throw(env, e);
}

const char *mb_errno_code(int err)
{
	if (err < 0)
		err = -err;
	if (err == 524)
		return "ENOTSUPP"; /* kernel-internal, returned by bpf(2) for unsupported ops */
	return errno_code(err);
}

napi_value mb_errno_error(napi_env env, int err, const char *op, const char *detail,
			  const char *fmt, ...)
{
	char ctx[512] = "";
	if (fmt && *fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(ctx, sizeof(ctx), fmt, ap);
		va_end(ap);
	}
	if (err < 0)
		err = -err;
	const char *es = err == 524 ? "Operation not supported by this map/program type" : strerror(err);
	size_t dlen = detail ? strlen(detail) : 0;
	size_t cap = 1024 + dlen;
	char *msg = malloc(cap);
	if (!msg)
		return NULL;
	snprintf(msg, cap, "%s%s%s: %s (%s, errno %d)%s%s", op, ctx[0] ? " " : "", ctx, es,
		 mb_errno_code(err), err, dlen ? "\n" : "", dlen ? detail : "");
	napi_value m, e;
	napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
	free(msg);
	napi_create_error(env, NULL, m, &e);
	mb_set(env, e, "errno", mb_i32(env, err));
	mb_set(env, e, "code", mb_str(env, mb_errno_code(err)));
	mb_set(env, e, "syscall", mb_str(env, op));
	return e;
}

int mb_dup_cloexec(int fd)
{
	return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

void mb_throw_type(napi_env env, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	napi_throw_type_error(env, NULL, msg);
}

bool mb_is_nullish(napi_env env, napi_value v)
{
	napi_valuetype t;
	if (napi_typeof(env, v, &t) != napi_ok)
		return true;
	return t == napi_undefined || t == napi_null;
}

bool mb_arg_i64(napi_env env, napi_value v, const char *name, int64_t *out)
{
	napi_valuetype t;
	napi_typeof(env, v, &t);
	if (t == napi_bigint) {
		bool lossless;
		return napi_get_value_bigint_int64(env, v, out, &lossless) == napi_ok;
	}
	if (t != napi_number) {
		mb_throw_type(env, "argument '%s' must be a number", name);
		return false;
	}
	return napi_get_value_int64(env, v, out) == napi_ok;
}

bool mb_arg_u32(napi_env env, napi_value v, const char *name, uint32_t *out)
{
	int64_t x;
	if (!mb_arg_i64(env, v, name, &x))
		return false;
	if (x < 0 || x > 0xffffffffLL) {
		mb_throw_type(env, "argument '%s' out of range for u32: %lld", name, (long long)x);
		return false;
	}
	*out = (uint32_t)x;
	return true;
}

bool mb_arg_i32(napi_env env, napi_value v, const char *name, int32_t *out)
{
	int64_t x;
	if (!mb_arg_i64(env, v, name, &x))
		return false;
	if (x < INT32_MIN || x > INT32_MAX) {
		mb_throw_type(env, "argument '%s' out of range for i32: %lld", name, (long long)x);
		return false;
	}
	*out = (int32_t)x;
	return true;
}

bool mb_arg_str(napi_env env, napi_value v, const char *name, char *buf, size_t len)
{
	napi_valuetype t;
	napi_typeof(env, v, &t);
	if (t != napi_string) {
		mb_throw_type(env, "argument '%s' must be a string", name);
		return false;
	}
	size_t n;
	napi_get_value_string_utf8(env, v, NULL, 0, &n);
	if (n + 1 > len) {
		mb_throw_type(env, "argument '%s' too long (%zu bytes, max %zu)", name, n, len - 1);
		return false;
	}
	napi_get_value_string_utf8(env, v, buf, len, &n);
	return true;
}

bool mb_arg_buf(napi_env env, napi_value v, const char *name, void **data, size_t *len)
{
	bool is;
	if (napi_is_buffer(env, v, &is) == napi_ok && is)
		return napi_get_buffer_info(env, v, data, len) == napi_ok;
	if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
		napi_typedarray_type tt;
		size_t n, off;
		napi_value ab;
		if (napi_get_typedarray_info(env, v, &tt, &n, data, &ab, &off) != napi_ok)
			return false;
		if (tt != napi_uint8_array) {
			mb_throw_type(env, "argument '%s' must be a Buffer or Uint8Array", name);
			return false;
		}
		*len = n;
		return true;
	}
	mb_throw_type(env, "argument '%s' must be a Buffer", name);
	return false;
}

napi_value mb_u32(napi_env env, uint32_t v) { napi_value r; napi_create_uint32(env, v, &r); return r; }
napi_value mb_i32(napi_env env, int32_t v) { napi_value r; napi_create_int32(env, v, &r); return r; }
napi_value mb_i64(napi_env env, int64_t v) { napi_value r; napi_create_int64(env, v, &r); return r; }
napi_value mb_str(napi_env env, const char *s) { napi_value r; napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r); return r; }
napi_value mb_bool(napi_env env, bool v) { napi_value r; napi_get_boolean(env, v, &r); return r; }
napi_value mb_undef(napi_env env) { napi_value r; napi_get_undefined(env, &r); return r; }
napi_value mb_null(napi_env env) { napi_value r; napi_get_null(env, &r); return r; }

napi_value mb_buffer_copy(napi_env env, const void *data, size_t len)
{
	napi_value r;
	void *dst;
	napi_create_buffer_copy(env, len, data, &dst, &r);
	return r;
}

void mb_set(napi_env env, napi_value obj, const char *key, napi_value v)
{
	napi_set_named_property(env, obj, key, v);
}

void mb_export(napi_env env, napi_value exports, const char *name, napi_callback cb)
{
	napi_value fn;
	napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
	napi_set_named_property(env, exports, name, fn);
}

static napi_value js_close(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	if (close(fd) < 0)
		mb_throw_errno(env, errno, "close", "fd %d", fd);
	return NULL;
}

void mb_init_util(napi_env env, napi_value exports)
{
	mb_export(env, exports, "close", js_close);
}
