/* BPF ring buffer reader integrated with the Node event loop.
 *
 * ringbufOpen(mapFd, cb) creates a libbpf ring_buffer and watches its epoll fd
 * with a uv_poll_t. When readable, ring_buffer__consume() runs on the JS thread
 * and each record is passed to cb as a Buffer (a copy) inside a handle scope.
 * If cb throws, consumption of the current batch stops and the exception is
 * re-raised as an uncaught exception (napi_fatal_exception) once the ring is in a
 * consistent state; the reader stays open. ringbufClose(h) is idempotent and safe
 * to call from inside cb (teardown is deferred until consume returns). While open,
 * the poll handle keeps the event loop alive. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <bpf/libbpf.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

struct mb_rb {
	napi_env env;
	napi_ref cb;
	struct ring_buffer *rb;
	uv_poll_t poll;
	int32_t handle;
	bool in_consume;
	bool closing;
	bool poll_started;
	napi_value pending_exc; /* valid only inside on_poll's handle scope */
	bool has_exc;
	unsigned budget;        /* records left in this turn of the event loop */
};

/* Records delivered per readiness callback: a flood of events must not starve the
 * rest of the event loop (API requests, CNI ADD). The epoll registration is
 * level-triggered, so what is left is read on the next turn. */
#define MB_RB_BUDGET 1024

static struct mb_rb **rbs;
static size_t nrbs;

static int32_t rb_add(struct mb_rb *r)
{
	for (size_t i = 0; i < nrbs; i++)
		if (!rbs[i]) {
			rbs[i] = r;
			return (int32_t)i + 1;
		}
	struct mb_rb **n = realloc(rbs, (nrbs + 8) * sizeof(*n));
	if (!n)
		return -1;
	memset(n + nrbs, 0, 8 * sizeof(*n));
	rbs = n;
	rbs[nrbs] = r;
	nrbs += 8;
	return (int32_t)(nrbs - 8) + 1;
}

static void on_uv_close(uv_handle_t *h)
{
	struct mb_rb *r = h->data;
	if (r->rb)
		ring_buffer__free(r->rb);
	free(r);
}

static void rb_teardown(struct mb_rb *r)
{
	if (r->cb) {
		napi_delete_reference(r->env, r->cb);
		r->cb = NULL;
	}
	if (r->poll_started) {
		uv_poll_stop(&r->poll);
		uv_close((uv_handle_t *)&r->poll, on_uv_close);
	} else {
		if (r->rb)
			ring_buffer__free(r->rb);
		free(r);
	}
}

static int on_sample(void *ctx, void *data, size_t size)
{
	struct mb_rb *r = ctx;
	if (r->closing || r->has_exc)
		return -ECANCELED;
	napi_env env = r->env;
	napi_value cb, global, buf, res;
	if (napi_get_reference_value(env, r->cb, &cb) != napi_ok || !cb)
		return -ECANCELED;
	napi_handle_scope scope;
	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return -ECANCELED;
	napi_get_global(env, &global);
	buf = mb_buffer_copy(env, data, size);
	napi_status st = napi_call_function(env, global, cb, 1, &buf, &res);
	napi_close_handle_scope(env, scope);
	if (st != napi_ok) {
		bool pending = false;
		napi_is_exception_pending(env, &pending);
		if (pending) {
			napi_get_and_clear_last_exception(env, &r->pending_exc);
			r->has_exc = true;
		}
		return -ECANCELED;
	}
	/* libbpf has already advanced past this record: stopping here loses nothing. */
	if (--r->budget == 0)
		return -EAGAIN;
	return 0;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
	struct mb_rb *r = h->data;
	if (r->closing)
		return;
	napi_env env = r->env;
	napi_handle_scope scope;
	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	r->in_consume = true;
	r->has_exc = false;
	r->budget = MB_RB_BUDGET;
	ring_buffer__consume(r->rb);
	r->in_consume = false;
	bool had_exc = r->has_exc;
	napi_value exc = r->pending_exc;
	r->has_exc = false;
	r->pending_exc = NULL;
	if (r->closing)
		rb_teardown(r);
	if (had_exc)
		napi_fatal_exception(env, exc);
	napi_close_handle_scope(env, scope);
}

/* ringbufOpen(mapFd, callback) -> handle */
static napi_value js_ringbuf_open(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "mapFd", &fd))
		return NULL;
	napi_valuetype t;
	napi_typeof(env, argv[1], &t);
	if (t != napi_function) {
		mb_throw_type(env, "argument 'callback' must be a function");
		return NULL;
	}
	struct uv_loop_s *loop;
	if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
		mb_throw_errno(env, EINVAL, "napi_get_uv_event_loop", "ringbuf map fd %d", fd);
		return NULL;
	}
	struct mb_rb *r = calloc(1, sizeof(*r));
	if (!r) {
		mb_throw_errno(env, ENOMEM, "ringbufOpen", "map fd %d", fd);
		return NULL;
	}
	r->env = env;
	r->rb = ring_buffer__new(fd, on_sample, r, NULL);
	if (!r->rb) {
		int err = errno;
		free(r);
		mb_throw_errno(env, err, "ring_buffer__new", "map fd %d", fd);
		return NULL;
	}
	int err = uv_poll_init(loop, &r->poll, ring_buffer__epoll_fd(r->rb));
	if (!err) {
		r->poll.data = r;
		err = uv_poll_start(&r->poll, UV_READABLE, on_poll);
		r->poll_started = true; /* initialised: must go through uv_close */
	}
	if (err) {
		rb_teardown(r);
		mb_throw_errno(env, -err, "uv_poll_start", "ringbuf map fd %d", fd);
		return NULL;
	}
	napi_create_reference(env, argv[1], 1, &r->cb);
	int32_t h = rb_add(r);
	if (h < 0) {
		rb_teardown(r);
		mb_throw_errno(env, ENOMEM, "ringbufOpen", "map fd %d", fd);
		return NULL;
	}
	r->handle = h;
	return mb_i32(env, h);
}

/* ringbufClose(handle): idempotent */
static napi_value js_ringbuf_close(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t h;
	if (!mb_arg_i32(env, argv[0], "handle", &h))
		return NULL;
	if (h <= 0 || (size_t)h > nrbs || !rbs[h - 1])
		return NULL;
	struct mb_rb *r = rbs[h - 1];
	rbs[h - 1] = NULL;
	r->closing = true;
	if (!r->in_consume)
		rb_teardown(r);
	return NULL;
}

void mb_init_ringbuf(napi_env env, napi_value exports)
{
	mb_export(env, exports, "ringbufOpen", js_ringbuf_open);
	mb_export(env, exports, "ringbufClose", js_ringbuf_close);
}
