/* Program info and BPF_PROG_TEST_RUN. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* progInfo(fd) -> {id, type, name, tag} */
static napi_value js_prog_info(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	struct bpf_prog_info pi = {};
	__u32 len = sizeof(pi);
	if (bpf_obj_get_info_by_fd(fd, &pi, &len) < 0) {
		mb_throw_errno(env, errno, "bpf(BPF_OBJ_GET_INFO_BY_FD)", "program fd %d", fd);
		return NULL;
	}
	char tag[BPF_TAG_SIZE * 2 + 1];
	for (int i = 0; i < BPF_TAG_SIZE; i++)
		sprintf(tag + 2 * i, "%02x", pi.tag[i]);
	napi_value o;
	napi_create_object(env, &o);
	mb_set(env, o, "id", mb_u32(env, pi.id));
	mb_set(env, o, "type", mb_u32(env, pi.type));
	mb_set(env, o, "name", mb_str(env, pi.name));
	mb_set(env, o, "tag", mb_str(env, tag));
	/* Cumulative run time and count: non-zero only while BPF stats are enabled. */
	napi_value rt, rc;
	napi_create_double(env, (double)pi.run_time_ns, &rt);
	napi_create_double(env, (double)pi.run_cnt, &rc);
	mb_set(env, o, "runTimeNs", rt);
	mb_set(env, o, "runCount", rc);
	return o;
}

static bool opt_u32(napi_env env, napi_value obj, const char *key, uint32_t *out, bool *present)
{
	napi_value v;
	bool has = false;
	*present = false;
	if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has)
		return true;
	napi_get_named_property(env, obj, key, &v);
	if (mb_is_nullish(env, v))
		return true;
	*present = true;
	return mb_arg_u32(env, v, key, out);
}

static bool opt_buf(napi_env env, napi_value obj, const char *key, void **data, size_t *len)
{
	napi_value v;
	bool has = false;
	*data = NULL;
	*len = 0;
	if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has)
		return true;
	napi_get_named_property(env, obj, key, &v);
	if (mb_is_nullish(env, v))
		return true;
	return mb_arg_buf(env, v, key, data, len);
}

/* progTestRun(progFd, {data, ctx?, repeat?, dataSizeOut?, ctxSizeOut?})
 *   -> {retval, data, ctx|null, duration}
 * dataSizeOut defaults to data.length + 512 (programs may grow the packet);
 * ctxSizeOut defaults to ctx.length when ctx is given. */
static napi_value js_prog_test_run(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "progFd", &fd))
		return NULL;
	napi_valuetype t;
	napi_typeof(env, argv[1], &t);
	if (t != napi_object) {
		mb_throw_type(env, "progTestRun: options object required");
		return NULL;
	}
	void *data, *ctx;
	size_t dlen, clen;
	uint32_t repeat = 0, dout = 0, cout = 0;
	bool has_repeat, has_dout, has_cout;
	if (!opt_buf(env, argv[1], "data", &data, &dlen) || !opt_buf(env, argv[1], "ctx", &ctx, &clen) ||
	    !opt_u32(env, argv[1], "repeat", &repeat, &has_repeat) ||
	    !opt_u32(env, argv[1], "dataSizeOut", &dout, &has_dout) ||
	    !opt_u32(env, argv[1], "ctxSizeOut", &cout, &has_cout))
		return NULL;
	if (!has_dout)
		dout = (uint32_t)dlen + 512;
	if (!has_cout)
		cout = ctx ? (uint32_t)clen : 0;
	void *dbuf = malloc(dout ? dout : 1);
	void *cbuf = cout ? calloc(1, cout) : NULL;
	if (!dbuf || (cout && !cbuf)) {
		free(dbuf);
		free(cbuf);
		mb_throw_errno(env, ENOMEM, "progTestRun", "program fd %d", fd);
		return NULL;
	}
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = data, .data_size_in = (__u32)dlen,
		    .data_out = dbuf, .data_size_out = dout, .ctx_in = ctx, .ctx_size_in = (__u32)clen,
		    .ctx_out = cbuf, .ctx_size_out = cout, .repeat = (int)repeat);
	if (bpf_prog_test_run_opts(fd, &opts) < 0) {
		int err = errno;
		char nm[BPF_OBJ_NAME_LEN + 8] = "";
		struct bpf_prog_info pi = {};
		__u32 l = sizeof(pi);
		if (bpf_obj_get_info_by_fd(fd, &pi, &l) == 0)
			snprintf(nm, sizeof(nm), "'%s' ", pi.name);
		free(dbuf);
		free(cbuf);
		mb_throw_errno(env, err, "bpf(BPF_PROG_TEST_RUN)", "program %s(fd %d)%s", nm, fd,
			       err == ENOSPC ? ": output larger than dataSizeOut/ctxSizeOut" : "");
		return NULL;
	}
	napi_value o;
	napi_create_object(env, &o);
	mb_set(env, o, "retval", mb_u32(env, opts.retval));
	mb_set(env, o, "data", mb_buffer_copy(env, dbuf, opts.data_size_out < dout ? opts.data_size_out : dout));
	mb_set(env, o, "ctx", cbuf ? mb_buffer_copy(env, cbuf, opts.ctx_size_out < cout ? opts.ctx_size_out : cout)
				   : mb_null(env));
	mb_set(env, o, "duration", mb_u32(env, opts.duration));
	free(dbuf);
	free(cbuf);
	return o;
}

void mb_init_bpf_prog(napi_env env, napi_value exports)
{
	mb_export(env, exports, "progInfo", js_prog_info);
	mb_export(env, exports, "progTestRun", js_prog_test_run);
}
