/* BPF ring buffer drained by a thread of its own, delivered to JS in batches.
 *
 * ringbufThreadOpen(mapFd, cb, batch, maxRecords, stagingBytes) -> handle
 *
 * A reader thread consumes the kernel ring buffer (libbpf ring_buffer) as soon
 * as records arrive and copies them into a staging ring of stagingBytes in this
 * process, so the kernel ring never waits for the JS event loop: a loop that is
 * busy for a while (a large request, a garbage collection, synchronous kernel
 * work) costs no event as long as the staging ring holds what arrives
 * meanwhile. Under load the thread drains at most about once a millisecond (it
 * naps after a drain that found records), so it is not woken per record.
 *
 * On the JS thread (a uv_async handle), up to maxRecords staged records per turn
 * of the event loop are copied back to back into the caller's Buffer `batch`
 * (u32 length, u32 flags (bit 0: truncated), bytes padded to 8, as ringbuf.c's
 * batch mode) and cb(count, bytes) is called once; what is left is delivered on
 * the next turn, so a flood never starves the rest of the loop.
 *
 * Records that do not fit the staging ring (the loop fell behind by more than
 * it holds) are counted, not staged: ringbufThreadStats(h) -> {staged,
 * delivered, dropped}. ringbufThreadClose(h) stops and joins the thread; it is
 * idempotent and safe inside cb. If cb throws, the exception is re-raised as
 * an uncaught exception once the batch is released; the reader stays open.
 *
 * The staging ring is single-producer (the thread) single-consumer (the JS
 * thread): the producer publishes `head` with release semantics after writing,
 * the consumer publishes `tail` after copying out. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <bpf/libbpf.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define HDR 8
#define WRAP 0xffffffffu
#define NAP_NS 1000000 /* after a drain that found records */

struct mb_rbt {
	napi_env env;
	napi_ref cb;
	napi_ref batch_ref;
	uint8_t *batch;
	size_t batch_len;
	unsigned max_records;
	struct ring_buffer *rb;
	int epfd;     /* the thread's epoll: libbpf's epoll fd and stop_fd */
	int stop_fd;  /* eventfd: wakes the thread to stop */
	pthread_t thread;
	bool thread_started;
	uv_async_t async;
	bool async_started;
	bool in_cb;
	bool closing;
	int32_t handle;
	/* staging ring */
	uint8_t *stage;
	size_t stage_len; /* a multiple of 8 */
	_Atomic uint64_t head; /* bytes produced (monotonic), written by the thread */
	_Atomic uint64_t tail; /* bytes consumed (monotonic), written by the JS thread */
	_Atomic bool stopping;
	_Atomic uint64_t staged;
	_Atomic uint64_t dropped;
	uint64_t delivered;
};

static struct mb_rbt **rbts;
static size_t nrbts;

static int32_t rbt_add(struct mb_rbt *r)
{
	for (size_t i = 0; i < nrbts; i++)
		if (!rbts[i]) {
			rbts[i] = r;
			return (int32_t)i + 1;
		}
	struct mb_rbt **n = realloc(rbts, (nrbts + 8) * sizeof(*n));
	if (!n)
		return -1;
	memset(n + nrbts, 0, 8 * sizeof(*n));
	rbts = n;
	rbts[nrbts] = r;
	nrbts += 8;
	return (int32_t)(nrbts - 8) + 1;
}

/* Thread side: stage one record, or count it when the ring is full. */
static int on_sample_stage(void *ctx, void *data, size_t size)
{
	struct mb_rbt *r = ctx;
	uint32_t flags = 0;
	size_t n = size;
	size_t max = r->stage_len / 4 - HDR;
	if (n > max) {
		n = max;
		flags |= 1;
	}
	size_t need = HDR + ((n + 7) & ~(size_t)7);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	size_t pos = head % r->stage_len;
	size_t contiguous = r->stage_len - pos;
	size_t skip = need > contiguous ? contiguous : 0; /* wrap: the rest of the ring is skipped */
	if ((head + skip + need) - tail > r->stage_len) {
		atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
		return 0;
	}
	if (skip) {
		uint32_t w = WRAP;
		memcpy(r->stage + pos, &w, 4);
		head += skip;
		pos = 0;
	}
	uint32_t len32 = (uint32_t)n;
	memcpy(r->stage + pos, &len32, 4);
	memcpy(r->stage + pos + 4, &flags, 4);
	memcpy(r->stage + pos + HDR, data, n);
	atomic_store_explicit(&r->head, head + need, memory_order_release);
	atomic_fetch_add_explicit(&r->staged, 1, memory_order_relaxed);
	return 0;
}

/* Tell the event loop there is something staged. The fence orders the publication
 * of `head` before uv_async_send's read of its pending flag: without it the store
 * could sit in the store buffer while the loop clears the flag and reads the old
 * head, and the wakeup would be lost. */
static void rbt_notify(struct mb_rbt *r)
{
	atomic_thread_fence(memory_order_seq_cst);
	uv_async_send(&r->async);
}

static void *rbt_main(void *arg)
{
	struct mb_rbt *r = arg;
	struct epoll_event ev[2];
	while (!atomic_load(&r->stopping)) {
		int n = ring_buffer__consume(r->rb);
		if (n > 0) {
			rbt_notify(r);
			struct timespec nap = { 0, NAP_NS };
			nanosleep(&nap, NULL);
			continue;
		}
		if (n < 0 && n != -EINTR) {
			/* Nothing sensible to do but retry after a while. */
			struct timespec nap = { 0, 100 * NAP_NS };
			nanosleep(&nap, NULL);
			continue;
		}
		/* Idle: while staged records wait for the loop, remind it now and then (a safety net). */
		bool waiting = atomic_load(&r->tail) != atomic_load(&r->head);
		if (waiting)
			rbt_notify(r);
		epoll_wait(r->epfd, ev, 2, waiting ? 20 : 1000);
	}
	return NULL;
}

static void rbt_free(struct mb_rbt *r)
{
	if (r->rb)
		ring_buffer__free(r->rb);
	if (r->epfd >= 0)
		close(r->epfd);
	if (r->stop_fd >= 0)
		close(r->stop_fd);
	free(r->stage);
	free(r);
}

static void on_async_close(uv_handle_t *h)
{
	rbt_free(h->data);
}

static void rbt_stop_thread(struct mb_rbt *r)
{
	if (!r->thread_started)
		return;
	atomic_store(&r->stopping, true);
	uint64_t one = 1;
	if (write(r->stop_fd, &one, sizeof(one)) < 0) {
		/* the thread still sees `stopping` within its epoll timeout */
	}
	pthread_join(r->thread, NULL);
	r->thread_started = false;
}

static void rbt_teardown(struct mb_rbt *r)
{
	rbt_stop_thread(r);
	if (r->cb) {
		napi_delete_reference(r->env, r->cb);
		r->cb = NULL;
	}
	if (r->batch_ref) {
		napi_delete_reference(r->env, r->batch_ref);
		r->batch_ref = NULL;
		r->batch = NULL;
	}
	if (r->async_started)
		uv_close((uv_handle_t *)&r->async, on_async_close);
	else
		rbt_free(r);
}

/* JS thread: copy up to max_records staged records into the batch buffer. */
static uint32_t take_batch(struct mb_rbt *r, size_t *bytes, uint64_t *new_tail)
{
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	size_t used = 0;
	uint32_t count = 0;
	while (tail < head && count < r->max_records) {
		size_t pos = tail % r->stage_len;
		uint32_t len;
		memcpy(&len, r->stage + pos, 4);
		if (len == WRAP) {
			tail += r->stage_len - pos;
			continue;
		}
		size_t rec = HDR + ((len + 7) & ~(size_t)7);
		if (used + rec > r->batch_len)
			break;
		memcpy(r->batch + used, r->stage + pos, rec);
		used += rec;
		tail += rec;
		count++;
	}
	*bytes = used;
	*new_tail = tail;
	return count;
}

static void on_async(uv_async_t *h)
{
	struct mb_rbt *r = h->data;
	if (r->closing || !r->batch)
		return;
	napi_env env = r->env;
	size_t bytes;
	uint64_t new_tail;
	uint32_t count = take_batch(r, &bytes, &new_tail);
	if (!count) {
		atomic_store_explicit(&r->tail, new_tail, memory_order_release);
		return;
	}
	napi_handle_scope scope;
	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	napi_value cb, global, args[2], res;
	napi_value exc = NULL;
	bool pending = false;
	if (napi_get_reference_value(env, r->cb, &cb) == napi_ok && cb) {
		napi_get_global(env, &global);
		args[0] = mb_u32(env, count);
		args[1] = mb_u32(env, (uint32_t)bytes);
		r->in_cb = true;
		napi_status st = napi_call_function(env, global, cb, 2, args, &res);
		r->in_cb = false;
		if (st != napi_ok) {
			napi_is_exception_pending(env, &pending);
			if (pending)
				napi_get_and_clear_last_exception(env, &exc);
		}
	}
	r->delivered += count;
	/* The batch buffer is free again; the staged bytes may be reused. */
	atomic_store_explicit(&r->tail, new_tail, memory_order_seq_cst);
	if (r->closing)
		rbt_teardown(r);
	else if (new_tail < atomic_load_explicit(&r->head, memory_order_acquire))
		uv_async_send(&r->async); /* the rest on the next turn of the loop */
	if (pending)
		napi_fatal_exception(env, exc);
	napi_close_handle_scope(env, scope);
}

/* ringbufThreadOpen(mapFd, callback, batch, maxRecords, stagingBytes) -> handle */
static napi_value js_open(napi_env env, napi_callback_info info)
{
	MB_ARGS(5);
	int32_t fd;
	uint32_t max_records, staging;
	void *batch;
	size_t batch_len;
	if (!mb_arg_i32(env, argv[0], "mapFd", &fd))
		return NULL;
	napi_valuetype t;
	napi_typeof(env, argv[1], &t);
	if (t != napi_function) {
		mb_throw_type(env, "argument 'callback' must be a function");
		return NULL;
	}
	if (!mb_arg_buf(env, argv[2], "batch", &batch, &batch_len) || !mb_arg_u32(env, argv[3], "maxRecords", &max_records) ||
	    !mb_arg_u32(env, argv[4], "stagingBytes", &staging))
		return NULL;
	if (batch_len < 64 * 1024 || max_records < 1 || staging < 256 * 1024) {
		mb_throw_type(env, "ringbufThreadOpen: batch must be >= 64 KiB, maxRecords >= 1, stagingBytes >= 256 KiB");
		return NULL;
	}
	struct uv_loop_s *loop;
	if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
		mb_throw_errno(env, EINVAL, "napi_get_uv_event_loop", "ringbuf map fd %d", fd);
		return NULL;
	}
	struct mb_rbt *r = calloc(1, sizeof(*r));
	if (!r) {
		mb_throw_errno(env, ENOMEM, "ringbufThreadOpen", "map fd %d", fd);
		return NULL;
	}
	r->env = env;
	r->epfd = -1;
	r->stop_fd = -1;
	r->batch = batch;
	r->batch_len = batch_len;
	r->max_records = max_records;
	r->stage_len = staging & ~(size_t)7;
	r->stage = malloc(r->stage_len);
	int err = 0;
	const char *what = "malloc";
	if (!r->stage) {
		err = ENOMEM;
		goto fail;
	}
	r->rb = ring_buffer__new(fd, on_sample_stage, r, NULL);
	what = "ring_buffer__new";
	if (!r->rb) {
		err = errno;
		goto fail;
	}
	what = "epoll_create1";
	r->epfd = epoll_create1(EPOLL_CLOEXEC);
	r->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->epfd < 0 || r->stop_fd < 0) {
		err = errno;
		goto fail;
	}
	struct epoll_event e = { .events = EPOLLIN };
	e.data.fd = ring_buffer__epoll_fd(r->rb);
	what = "epoll_ctl";
	if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, e.data.fd, &e) < 0) {
		err = errno;
		goto fail;
	}
	e.data.fd = r->stop_fd;
	if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->stop_fd, &e) < 0) {
		err = errno;
		goto fail;
	}
	what = "uv_async_init";
	err = -uv_async_init(loop, &r->async, on_async);
	if (err)
		goto fail;
	r->async.data = r;
	r->async_started = true;
	napi_create_reference(env, argv[1], 1, &r->cb);
	napi_create_reference(env, argv[2], 1, &r->batch_ref);
	what = "pthread_create";
	err = pthread_create(&r->thread, NULL, rbt_main, r);
	if (err) {
		rbt_teardown(r);
		mb_throw_errno(env, err, what, "ringbuf map fd %d", fd);
		return NULL;
	}
	r->thread_started = true;
	int32_t h = rbt_add(r);
	if (h < 0) {
		rbt_teardown(r);
		mb_throw_errno(env, ENOMEM, "ringbufThreadOpen", "map fd %d", fd);
		return NULL;
	}
	r->handle = h;
	return mb_i32(env, h);
fail:
	rbt_free(r);
	mb_throw_errno(env, err, what, "ringbuf map fd %d", fd);
	return NULL;
}

static struct mb_rbt *lookup(napi_env env, napi_value v)
{
	int32_t h;
	if (!mb_arg_i32(env, v, "handle", &h))
		return NULL;
	if (h <= 0 || (size_t)h > nrbts)
		return NULL;
	return rbts[h - 1];
}

/* ringbufThreadClose(handle): idempotent, safe inside the callback */
static napi_value js_close(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	struct mb_rbt *r = lookup(env, argv[0]);
	if (!r)
		return NULL;
	rbts[r->handle - 1] = NULL;
	r->closing = true;
	if (!r->in_cb)
		rbt_teardown(r);
	return NULL;
}

/* ringbufThreadStats(handle) -> {staged, delivered, dropped} (records) */
static napi_value js_stats(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	struct mb_rbt *r = lookup(env, argv[0]);
	if (!r)
		return mb_undef(env);
	napi_value o;
	napi_create_object(env, &o);
	mb_set(env, o, "staged", mb_i64(env, (int64_t)atomic_load(&r->staged)));
	mb_set(env, o, "delivered", mb_i64(env, (int64_t)r->delivered));
	mb_set(env, o, "dropped", mb_i64(env, (int64_t)atomic_load(&r->dropped)));
	return o;
}

void mb_init_ringbuf_thread(napi_env env, napi_value exports)
{
	mb_export(env, exports, "ringbufThreadOpen", js_open);
	mb_export(env, exports, "ringbufThreadClose", js_close);
	mb_export(env, exports, "ringbufThreadStats", js_stats);
}
