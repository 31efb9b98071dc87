/* BPF ring buffer reader integrated with the Node event loop.
 *
 * ringbufOpen(mapFd, cb) creates a libbpf ring_buffer and watches its epoll fd
 * with a uv_poll_t. When readable, ring_buffer__consume() runs on the JS thread
 * and each record is passed to cb as a Buffer (a copy) inside a handle scope.
 *
 * ringbufOpen(mapFd, cb, batch, maxRecords) is the batch mode: records are
 * copied back to back into the caller's Buffer `batch` (each as a u32 length,
 * a u32 of flags (bit 0: truncated), the bytes, padded to 8), at most
 * maxRecords per turn of the event loop, and cb(count, bytes) is called once
 * per turn: no JS object per record. The Buffer is referenced while open.
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
	/* batch mode */
	napi_ref batch_ref;
	uint8_t *batch;
	size_t batch_len;
	size_t batch_used;
	uint32_t batch_count;
	unsigned max_records;
};

/* Room kept free in the batch buffer before accepting one more record: a record
 * longer than what is left is truncated (flagged), never dropped. */
#define MB_RB_BATCH_SLACK 4096
#define MB_RB_BATCH_HDR 8

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
	if (r->batch_ref) {
		napi_delete_reference(r->env, r->batch_ref);
		r->batch_ref = NULL;
		r->batch = NULL;
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

/* Batch mode: append the record to the batch buffer; stop (the record is kept)
 * when the budget is spent or the buffer is nearly full. */
static int on_sample_batch(void *ctx, void *data, size_t size)
{
	struct mb_rb *r = ctx;
	if (r->closing)
		return -ECANCELED;
	size_t room = r->batch_len - r->batch_used - MB_RB_BATCH_HDR;
	uint32_t flags = 0;
	size_t n = size;
	if (n > room) {
		n = room;
		flags |= 1;
	}
	uint8_t *p = r->batch + r->batch_used;
	uint32_t len32 = (uint32_t)n;
	memcpy(p, &len32, 4);
	memcpy(p + 4, &flags, 4);
	memcpy(p + MB_RB_BATCH_HDR, data, n);
	r->batch_used += MB_RB_BATCH_HDR + ((n + 7) & ~(size_t)7);
	r->batch_count++;
	/* libbpf has already advanced past this record: stopping here loses nothing. */
	if (r->batch_count >= r->max_records || r->batch_len - r->batch_used < MB_RB_BATCH_SLACK + MB_RB_BATCH_HDR)
		return -EAGAIN;
	return 0;
}

static void on_poll_batch(struct mb_rb *r)
{
	napi_env env = r->env;
	r->in_consume = true;
	r->batch_used = 0;
	r->batch_count = 0;
	ring_buffer__consume(r->rb);
	r->in_consume = false;
	if (r->closing) {
		rb_teardown(r);
		return;
	}
	if (!r->batch_count)
		return;
	napi_value cb, global, args[2], res;
	if (napi_get_reference_value(env, r->cb, &cb) != napi_ok || !cb)
		return;
	napi_get_global(env, &global);
	args[0] = mb_u32(env, r->batch_count);
	args[1] = mb_u32(env, (uint32_t)r->batch_used);
	r->in_consume = true; /* ringbufClose from inside cb defers teardown */
	napi_status st = napi_call_function(env, global, cb, 2, args, &res);
	r->in_consume = false;
	napi_value exc = NULL;
	bool pending = false;
	if (st != napi_ok) {
		napi_is_exception_pending(env, &pending);
		if (pending)
			napi_get_and_clear_last_exception(env, &exc);
	}
	if (r->closing)
		rb_teardown(r);
	if (pending)
		napi_fatal_exception(env, exc);
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
	if (r->batch) {
		on_poll_batch(r);
		napi_close_handle_scope(env, scope);
		return;
	}
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

/* ringbufOpen(mapFd, callback[, batchBuffer, maxRecords]) -> handle */
static napi_value js_ringbuf_open(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
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
	void *batch = NULL;
	size_t batch_len = 0;
	uint32_t max_records = 0;
	bool batched = argc >= 3 && !mb_is_nullish(env, argv[2]);
	if (batched) {
		if (!mb_arg_buf(env, argv[2], "batch", &batch, &batch_len))
			return NULL;
		if (batch_len < 2 * (MB_RB_BATCH_SLACK + MB_RB_BATCH_HDR)) {
			mb_throw_type(env, "argument 'batch' must be at least %d bytes", 2 * (MB_RB_BATCH_SLACK + MB_RB_BATCH_HDR));
			return NULL;
		}
		if (argc < 4 || !mb_arg_u32(env, argv[3], "maxRecords", &max_records))
			return NULL;
		if (max_records < 1) {
			mb_throw_type(env, "argument 'maxRecords' must be at least 1");
			return NULL;
		}
	}
	struct mb_rb *r = calloc(1, sizeof(*r));
	if (!r) {
		mb_throw_errno(env, ENOMEM, "ringbufOpen", "map fd %d", fd);
		return NULL;
	}
	r->env = env;
	if (batched) {
		r->batch = batch;
		r->batch_len = batch_len;
		r->max_records = max_records;
		napi_create_reference(env, argv[2], 1, &r->batch_ref);
	}
	r->rb = ring_buffer__new(fd, batched ? on_sample_batch : on_sample, r, NULL);
	if (!r->rb) {
		int err = errno;
		if (r->batch_ref)
			napi_delete_reference(env, r->batch_ref);
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
