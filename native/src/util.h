#ifndef MEMBRANE_UTIL_H
#define MEMBRANE_UTIL_H
#include <node_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Throw a JS Error whose message is "<op>: <strerror> (errno N)" plus context,
 * with properties {errno, code (e.g. "ENOENT"), syscall: op}. err is a positive errno. */
void mb_throw_errno(napi_env env, int err, const char *op, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Throw a plain TypeError/Error with a formatted message. */
void mb_throw_type(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Argument helpers: return false (with a pending TypeError naming the argument) on bad input. */
bool mb_arg_i64(napi_env env, napi_value v, const char *name, int64_t *out);
bool mb_arg_u32(napi_env env, napi_value v, const char *name, uint32_t *out);
bool mb_arg_i32(napi_env env, napi_value v, const char *name, int32_t *out);
/* Copies a string into buf (NUL-terminated). */
bool mb_arg_str(napi_env env, napi_value v, const char *name, char *buf, size_t len);
/* Buffer/Uint8Array view (no copy). */
bool mb_arg_buf(napi_env env, napi_value v, const char *name, void **data, size_t *len);
bool mb_is_nullish(napi_env env, napi_value v);

napi_value mb_u32(napi_env env, uint32_t v);
napi_value mb_i32(napi_env env, int32_t v);
napi_value mb_i64(napi_env env, int64_t v);
napi_value mb_str(napi_env env, const char *s);
napi_value mb_bool(napi_env env, bool v);
napi_value mb_undef(napi_env env);
napi_value mb_null(napi_env env);
/* New Node Buffer with a copy of data. */
napi_value mb_buffer_copy(napi_env env, const void *data, size_t len);
void mb_set(napi_env env, napi_value obj, const char *key, napi_value v);

/* Build (without throwing) an Error like mb_throw_errno's; if detail is non-NULL it
 * is appended to the message after a newline (e.g. a verifier log tail). The caller
 * may add properties and then napi_throw() it. */
napi_value mb_errno_error(napi_env env, int err, const char *op, const char *detail,
			  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Symbolic errno name ("ENOENT"), "EUNKNOWN" if not known. */
const char *mb_errno_code(int err);
/* fcntl(F_DUPFD_CLOEXEC) wrapper; returns -1 with errno set on failure. */
int mb_dup_cloexec(int fd);

void mb_export(napi_env env, napi_value exports, const char *name, napi_callback cb);

/* Fetch up to N args: size_t argc = N; napi_value argv[N]; MB_ARGS(N); */
#define MB_ARGS(n)                                                                     \
	size_t argc = (n);                                                             \
	napi_value argv[(n) > 0 ? (n) : 1];                                            \
	napi_value this_arg;                                                           \
	if (napi_get_cb_info(env, info, &argc, argv, &this_arg, NULL) != napi_ok)      \
		return NULL;                                                           \
	for (size_t _i = argc; _i < (size_t)(n); _i++)                                 \
		napi_get_undefined(env, &argv[_i]);                                    \
	(void)this_arg;

#endif
