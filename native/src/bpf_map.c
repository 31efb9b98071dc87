/* BPF map element operations on raw fds (keys/values are Buffers; the TS layer
 * owns layouts). Per-CPU maps: valueLen must be roundup(valueSize, 8) *
 * numPossibleCpus(). ENOENT on lookup/delete/next-key is a normal result
 * (null/false), every other failure throws naming the operation, fd and errno. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef ENOTSUPP
#define ENOTSUPP 524
#endif

static bool arg_fd(napi_env env, napi_value v, int32_t *fd)
{
	return mb_arg_i32(env, v, "fd", fd);
}

/* Map name for error messages (best effort). */
static const char *map_name(int fd, char *buf, size_t len)
{
	struct bpf_map_info mi = {};
	__u32 l = sizeof(mi);
	if (bpf_obj_get_info_by_fd(fd, &mi, &l) == 0 && mi.name[0])
		snprintf(buf, len, "'%s' (fd %d)", mi.name, fd);
	else
		snprintf(buf, len, "fd %d", fd);
	return buf;
}

static void throw_map(napi_env env, int err, const char *op, int fd)
{
	char nb[64];
	mb_throw_errno(env, err, op, "map %s", map_name(fd, nb, sizeof(nb)));
}

static napi_value new_buffer(napi_env env, size_t len, void **data)
{
	napi_value r;
	if (napi_create_buffer(env, len, data, &r) != napi_ok)
		return NULL;
	return r;
}

/* mapInfo(fd) */
static napi_value js_map_info(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!arg_fd(env, argv[0], &fd))
		return NULL;
	struct bpf_map_info mi = {};
	__u32 len = sizeof(mi);
	if (bpf_obj_get_info_by_fd(fd, &mi, &len) < 0) {
		mb_throw_errno(env, errno, "bpf(BPF_OBJ_GET_INFO_BY_FD)", "map fd %d", fd);
		return NULL;
	}
	napi_value o;
	napi_create_object(env, &o);
	mb_set(env, o, "id", mb_u32(env, mi.id));
	mb_set(env, o, "type", mb_u32(env, mi.type));
	mb_set(env, o, "keySize", mb_u32(env, mi.key_size));
	mb_set(env, o, "valueSize", mb_u32(env, mi.value_size));
	mb_set(env, o, "maxEntries", mb_u32(env, mi.max_entries));
	mb_set(env, o, "flags", mb_u32(env, mi.map_flags));
	mb_set(env, o, "name", mb_str(env, mi.name));
	mb_set(env, o, "btfId", mb_u32(env, mi.btf_id));
	mb_set(env, o, "btfKeyTypeId", mb_u32(env, mi.btf_key_type_id));
	mb_set(env, o, "btfValueTypeId", mb_u32(env, mi.btf_value_type_id));
	return o;
}

/* mapLookup(fd, key, valueLen) -> Buffer | null */
static napi_value js_map_lookup(napi_env env, napi_callback_info info)
{
	MB_ARGS(3);
	int32_t fd;
	uint32_t vlen;
	void *key;
	size_t klen;
	if (!arg_fd(env, argv[0], &fd) || !mb_arg_buf(env, argv[1], "key", &key, &klen) ||
	    !mb_arg_u32(env, argv[2], "valueLen", &vlen))
		return NULL;
	void *val;
	napi_value r = new_buffer(env, vlen, &val);
	if (!r)
		return NULL;
	if (bpf_map_lookup_elem(fd, key, val) < 0) {
		if (errno == ENOENT)
			return mb_null(env);
		throw_map(env, errno, "bpf(BPF_MAP_LOOKUP_ELEM)", fd);
		return NULL;
	}
	return r;
}

/* mapUpdate(fd, key, value, flags) */
static napi_value js_map_update(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	int32_t fd;
	int64_t flags = 0;
	void *key, *val;
	size_t klen, vlen;
	if (!arg_fd(env, argv[0], &fd) || !mb_arg_buf(env, argv[1], "key", &key, &klen) ||
	    !mb_arg_buf(env, argv[2], "value", &val, &vlen))
		return NULL;
	if (!mb_is_nullish(env, argv[3]) && !mb_arg_i64(env, argv[3], "flags", &flags))
		return NULL;
	if (bpf_map_update_elem(fd, key, val, (__u64)flags) < 0)
		throw_map(env, errno, "bpf(BPF_MAP_UPDATE_ELEM)", fd);
	return NULL;
}

/* mapDelete(fd, key) -> bool (false if absent) */
static napi_value js_map_delete(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd;
	void *key;
	size_t klen;
	if (!arg_fd(env, argv[0], &fd) || !mb_arg_buf(env, argv[1], "key", &key, &klen))
		return NULL;
	if (bpf_map_delete_elem(fd, key) < 0) {
		if (errno == ENOENT)
			return mb_bool(env, false);
		throw_map(env, errno, "bpf(BPF_MAP_DELETE_ELEM)", fd);
		return NULL;
	}
	return mb_bool(env, true);
}

/* mapNextKey(fd, key|null, keyLen) -> Buffer | null (end) */
static napi_value js_map_next_key(napi_env env, napi_callback_info info)
{
	MB_ARGS(3);
	int32_t fd;
	uint32_t klen;
	void *key = NULL;
	size_t inlen;
	if (!arg_fd(env, argv[0], &fd))
		return NULL;
	if (!mb_is_nullish(env, argv[1]) && !mb_arg_buf(env, argv[1], "key", &key, &inlen))
		return NULL;
	if (!mb_arg_u32(env, argv[2], "keyLen", &klen))
		return NULL;
	void *next;
	napi_value r = new_buffer(env, klen, &next);
	if (!r)
		return NULL;
	if (bpf_map_get_next_key(fd, key, next) < 0) {
		if (errno == ENOENT)
			return mb_null(env);
		throw_map(env, errno, "bpf(BPF_MAP_GET_NEXT_KEY)", fd);
		return NULL;
	}
	return r;
}

struct growbuf {
	char *p;
	size_t len, cap;
};

static bool gb_reserve(struct growbuf *b, size_t extra)
{
	if (b->len + extra <= b->cap)
		return true;
	size_t nc = b->cap ? b->cap * 2 : 4096;
	while (nc < b->len + extra)
		nc *= 2;
	char *n = realloc(b->p, nc);
	if (!n)
		return false;
	b->p = n;
	b->cap = nc;
	return true;
}

static napi_value batch_result(napi_env env, struct growbuf *k, struct growbuf *v, uint32_t count)
{
	napi_value o;
	napi_create_object(env, &o);
	mb_set(env, o, "keys", mb_buffer_copy(env, k->p ? k->p : "", k->len));
	mb_set(env, o, "values", mb_buffer_copy(env, v->p ? v->p : "", v->len));
	mb_set(env, o, "count", mb_u32(env, count));
	return o;
}

static bool batch_unsupported(int err)
{
	return err == ENOTSUPP || err == EOPNOTSUPP || err == ENOSYS;
}

/* Fallback: whole-map dump via get_next_key + lookup. Entries deleted concurrently
 * are skipped; maxCount (0 = unlimited) caps the result. */
static int dump_by_next_key(int fd, uint32_t klen, uint32_t vlen, uint32_t max, struct growbuf *kb,
			    struct growbuf *vb, uint32_t *count, const char **op)
{
	char *cur = calloc(1, klen ? klen : 1), *next = calloc(1, klen ? klen : 1);
	if (!cur || !next) {
		free(cur);
		free(next);
		*op = "malloc";
		return ENOMEM;
	}
	bool first = true;
	int err = 0;
	while (!max || *count < max) {
		if (bpf_map_get_next_key(fd, first ? NULL : cur, next) < 0) {
			if (errno != ENOENT) {
				err = errno;
				*op = "bpf(BPF_MAP_GET_NEXT_KEY)";
			}
			break;
		}
		first = false;
		memcpy(cur, next, klen);
		if (!gb_reserve(kb, klen) || !gb_reserve(vb, vlen)) {
			err = ENOMEM;
			*op = "malloc";
			break;
		}
		if (bpf_map_lookup_elem(fd, cur, vb->p + vb->len) < 0) {
			if (errno == ENOENT)
				continue; /* raced with a delete */
			err = errno;
			*op = "bpf(BPF_MAP_LOOKUP_ELEM)";
			break;
		}
		memcpy(kb->p + kb->len, cur, klen);
		kb->len += klen;
		vb->len += vlen;
		(*count)++;
	}
	free(cur);
	free(next);
	return err;
}

/*
 * Read the whole map (at most @max entries, 0 = no limit) into @kb/@vb with
 * BPF_MAP_LOOKUP_BATCH, or key by key where the map type has no batch ops.
 * Returns 0 or an errno with *@op naming the failed operation. Touches no
 * JavaScript state: runs on worker threads too.
 */
static int dump_all(int fd, uint32_t klen, uint32_t vlen, uint32_t max, struct growbuf *kb, struct growbuf *vb,
		    uint32_t *total, const char **op)
{
	/* batch token: u32 bucket for hash maps, a key for array maps */
	size_t tlen = klen > 8 ? klen : 8;
	char *in_tok = calloc(1, tlen), *out_tok = calloc(1, tlen);
	uint32_t chunk = max && max < 1024 ? max : 1024;
	bool first = true;
	int err = 0;
	*op = "bpf(BPF_MAP_LOOKUP_BATCH)";
	if (!in_tok || !out_tok) {
		err = ENOMEM;
		goto out;
	}
	for (;;) {
		uint32_t want = chunk;
		if (max && max - *total < want)
			want = max - *total;
		if (max && want == 0)
			break;
		if (!gb_reserve(kb, (size_t)want * klen) || !gb_reserve(vb, (size_t)want * vlen)) {
			err = ENOMEM;
			break;
		}
		uint32_t n = want;
		LIBBPF_OPTS(bpf_map_batch_opts, opts);
		int r = bpf_map_lookup_batch(fd, first ? NULL : in_tok, out_tok, kb->p + kb->len,
					     vb->p + vb->len, &n, &opts);
		int e = r < 0 ? errno : 0;
		if (r < 0 && first && batch_unsupported(e)) {
			err = dump_by_next_key(fd, klen, vlen, max, kb, vb, total, op);
			break;
		}
		if (r < 0 && e == ENOSPC && n == 0) {
			/* a hash bucket holds more entries than 'want': retry bigger */
			if (chunk >= (1u << 20)) {
				err = e;
				break;
			}
			chunk *= 4;
			continue;
		}
		if (r < 0 && e != ENOENT) {
			err = e;
			break;
		}
		kb->len += (size_t)n * klen;
		vb->len += (size_t)n * vlen;
		*total += n;
		if (r < 0) /* ENOENT: end of map */
			break;
		memcpy(in_tok, out_tok, tlen);
		first = false;
	}
out:
	free(in_tok);
	free(out_tok);
	return err;
}

static bool dump_args(napi_env env, napi_value *argv, int32_t *fd, uint32_t *klen, uint32_t *vlen, uint32_t *max)
{
	if (!arg_fd(env, argv[0], fd) || !mb_arg_u32(env, argv[1], "keyLen", klen) ||
	    !mb_arg_u32(env, argv[2], "valueLen", vlen))
		return false;
	if (!mb_is_nullish(env, argv[3]) && !mb_arg_u32(env, argv[3], "maxCount", max))
		return false;
	return true;
}

/* mapLookupBatch(fd, keyLen, valueLen, maxCount) -> {keys, values, count} for the whole map */
static napi_value js_map_lookup_batch(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	int32_t fd;
	uint32_t klen, vlen, max = 0, total = 0;
	if (!dump_args(env, argv, &fd, &klen, &vlen, &max))
		return NULL;
	struct growbuf kb = {}, vb = {};
	const char *op;
	int err = dump_all(fd, klen, vlen, max, &kb, &vb, &total, &op);
	if (err) {
		free(kb.p);
		free(vb.p);
		throw_map(env, err, op, fd);
		return NULL;
	}
	napi_value res = batch_result(env, &kb, &vb, total);
	free(kb.p);
	free(vb.p);
	return res;
}

/* mapLookupBatchAsync(...): the same read on a libuv worker thread -> Promise<{keys, values, count}> */
struct dump_work {
	napi_async_work work;
	napi_deferred deferred;
	int fd;
	uint32_t klen, vlen, max, total;
	struct growbuf kb, vb;
	int err;
	const char *op;
};

static void dump_execute(napi_env env, void *data)
{
	struct dump_work *w = data;
	(void)env;
	w->err = dump_all(w->fd, w->klen, w->vlen, w->max, &w->kb, &w->vb, &w->total, &w->op);
}

static void dump_complete(napi_env env, napi_status status, void *data)
{
	struct dump_work *w = data;
	if (status != napi_ok || w->err) {
		char nb[64];
		napi_value e = mb_errno_error(env, w->err ? w->err : EIO, w->op ? w->op : "bpf(BPF_MAP_LOOKUP_BATCH)", NULL,
					      "map %s", map_name(w->fd, nb, sizeof(nb)));
		napi_reject_deferred(env, w->deferred, e);
	} else {
		napi_resolve_deferred(env, w->deferred, batch_result(env, &w->kb, &w->vb, w->total));
	}
	napi_delete_async_work(env, w->work);
	free(w->kb.p);
	free(w->vb.p);
	free(w);
}

static napi_value js_map_lookup_batch_async(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	struct dump_work *w = calloc(1, sizeof(*w));
	if (!w) {
		mb_throw_type(env, "mapLookupBatchAsync: out of memory");
		return NULL;
	}
	if (!dump_args(env, argv, &w->fd, &w->klen, &w->vlen, &w->max)) {
		free(w);
		return NULL;
	}
	napi_value promise, name;
	napi_create_promise(env, &w->deferred, &promise);
	napi_create_string_utf8(env, "mapLookupBatchAsync", NAPI_AUTO_LENGTH, &name);
	napi_create_async_work(env, NULL, name, dump_execute, dump_complete, w, &w->work);
	napi_queue_async_work(env, w->work);
	return promise;
}

static bool batch_args(napi_env env, napi_value *argv, bool with_values, int32_t *fd, void **keys,
		       void **vals, uint32_t *count, size_t *klen, size_t *vlen)
{
	size_t kl = 0, vl = 0;
	if (!arg_fd(env, argv[0], fd) || !mb_arg_buf(env, argv[1], "keys", keys, &kl))
		return false;
	if (with_values && !mb_arg_buf(env, argv[2], "values", vals, &vl))
		return false;
	if (!mb_arg_u32(env, argv[with_values ? 3 : 2], "count", count))
		return false;
	if (*count == 0) {
		*klen = *vlen = 0;
		return true;
	}
	if (kl % *count || (with_values && vl % *count)) {
		mb_throw_type(env, "batch: keys (%zu bytes) / values (%zu bytes) not a multiple of count %u", kl, vl, *count);
		return false;
	}
	*klen = kl / *count;
	*vlen = with_values ? vl / *count : 0;
	return true;
}

/* mapUpdateBatch(fd, keys, values, count, flags?) */
static napi_value js_map_update_batch(napi_env env, napi_callback_info info)
{
	MB_ARGS(5);
	int32_t fd;
	void *keys, *vals;
	uint32_t count;
	size_t klen, vlen;
	int64_t flags = 0;
	if (!batch_args(env, argv, true, &fd, &keys, &vals, &count, &klen, &vlen))
		return NULL;
	if (!mb_is_nullish(env, argv[4]) && !mb_arg_i64(env, argv[4], "flags", &flags))
		return NULL;
	if (!count)
		return NULL;
	uint32_t n = count;
	LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = (__u64)flags);
	if (bpf_map_update_batch(fd, keys, vals, &n, &opts) == 0)
		return NULL;
	int e = errno;
	if (!batch_unsupported(e)) {
		char nb[64];
		mb_throw_errno(env, e, "bpf(BPF_MAP_UPDATE_BATCH)", "map %s (%u of %u done)",
			       map_name(fd, nb, sizeof(nb)), n, count);
		return NULL;
	}
	for (uint32_t i = 0; i < count; i++) {
		if (bpf_map_update_elem(fd, (char *)keys + i * klen, (char *)vals + i * vlen, (__u64)flags) < 0) {
			char nb[64];
			mb_throw_errno(env, errno, "bpf(BPF_MAP_UPDATE_ELEM)", "map %s (batch fallback, %u of %u done)",
				       map_name(fd, nb, sizeof(nb)), i, count);
			return NULL;
		}
	}
	return NULL;
}

/* mapDeleteBatch(fd, keys, count): throws ENOENT (with progress) if a key is absent */
static napi_value js_map_delete_batch(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	int32_t fd;
	void *keys, *vals = NULL;
	uint32_t count;
	size_t klen, vlen;
	if (!batch_args(env, argv, false, &fd, &keys, &vals, &count, &klen, &vlen))
		return NULL;
	if (!count)
		return NULL;
	bool missing_ok = false;
	napi_valuetype t;
	if (napi_typeof(env, argv[3], &t) == napi_ok && t == napi_boolean)
		napi_get_value_bool(env, argv[3], &missing_ok);
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	/*
	 * With missing_ok, a key already gone (the datapath, an LRU or another writer removed it
	 * since it was read) is what the caller wanted: the kernel stops at it
	 * and reports how many it deleted before it, so skip it and go on.
	 */
	uint32_t done = 0;
	int e = 0;
	while (done < count) {
		uint32_t n = count - done;
		if (bpf_map_delete_batch(fd, (char *)keys + (size_t)done * klen, &n, &opts) == 0)
			return NULL;
		e = errno;
		if (n > count - done)
			n = count - done;
		if (e != ENOENT || !missing_ok) {
			done += n;
			break;
		}
		done += n + 1;
	}
	if (done >= count)
		return NULL;
	if (!batch_unsupported(e)) {
		char nb[64];
		mb_throw_errno(env, e, "bpf(BPF_MAP_DELETE_BATCH)", "map %s (%u of %u done)",
			       map_name(fd, nb, sizeof(nb)), done, count);
		return NULL;
	}
	for (uint32_t i = done; i < count; i++) {
		if (bpf_map_delete_elem(fd, (char *)keys + i * klen) < 0 && !(missing_ok && errno == ENOENT)) {
			char nb[64];
			mb_throw_errno(env, errno, "bpf(BPF_MAP_DELETE_ELEM)", "map %s (batch fallback, %u of %u done)",
				       map_name(fd, nb, sizeof(nb)), i, count);
			return NULL;
		}
	}
	return NULL;
}

/*
 * mapUpdateAsync(fd, key, value, flags) -> Promise<void>: the update runs on a
 * libuv worker thread. For maps whose syscall waits for an RCU grace period
 * (maps of maps: ~10 ms), so the event loop keeps serving meanwhile. key and
 * value are copied; the fd must stay open until the promise settles.
 */
struct map_update_work {
	napi_async_work work;
	napi_deferred deferred;
	int fd;
	__u64 flags;
	void *key;
	void *val;
	int err;
};

static void map_update_execute(napi_env env, void *data)
{
	struct map_update_work *w = data;
	(void)env;
	w->err = bpf_map_update_elem(w->fd, w->key, w->val, w->flags) < 0 ? errno : 0;
}

static void map_update_complete(napi_env env, napi_status status, void *data)
{
	struct map_update_work *w = data;
	if (status != napi_ok || w->err) {
		char nb[64];
		napi_value e = mb_errno_error(env, w->err ? w->err : EIO, "bpf(BPF_MAP_UPDATE_ELEM)", NULL, "map %s",
					      map_name(w->fd, nb, sizeof(nb)));
		napi_reject_deferred(env, w->deferred, e);
	} else {
		napi_resolve_deferred(env, w->deferred, mb_undef(env));
	}
	napi_delete_async_work(env, w->work);
	free(w->key);
	free(w->val);
	free(w);
}

static napi_value js_map_update_async(napi_env env, napi_callback_info info)
{
	MB_ARGS(4);
	int32_t fd;
	int64_t flags = 0;
	void *key, *val;
	size_t klen, vlen;
	if (!arg_fd(env, argv[0], &fd) || !mb_arg_buf(env, argv[1], "key", &key, &klen) ||
	    !mb_arg_buf(env, argv[2], "value", &val, &vlen))
		return NULL;
	if (!mb_is_nullish(env, argv[3]) && !mb_arg_i64(env, argv[3], "flags", &flags))
		return NULL;
	struct map_update_work *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->fd = fd;
	w->flags = (__u64)flags;
	w->key = malloc(klen ? klen : 1);
	w->val = malloc(vlen ? vlen : 1);
	if (!w->key || !w->val) {
		free(w->key);
		free(w->val);
		free(w);
		mb_throw_type(env, "mapUpdateAsync: out of memory");
		return NULL;
	}
	memcpy(w->key, key, klen);
	memcpy(w->val, val, vlen);
	napi_value promise, name;
	napi_create_promise(env, &w->deferred, &promise);
	napi_create_string_utf8(env, "mapUpdateAsync", NAPI_AUTO_LENGTH, &name);
	napi_create_async_work(env, NULL, name, map_update_execute, map_update_complete, w, &w->work);
	napi_queue_async_work(env, w->work);
	return promise;
}

/*
 * mapUpdateBatchAsync(fd, keys, values, count, flags) -> Promise<void>: BPF_MAP_UPDATE_BATCH
 * (element by element where the map type has no batch op) on a libuv worker
 * thread. For maps of maps the kernel waits for one RCU grace period per
 * syscall, so a batch installs many slots for the price of one. Keys and
 * values are copied; the fd must stay open until the promise settles.
 */
struct map_batch_work {
	napi_async_work work;
	napi_deferred deferred;
	int fd;
	__u64 flags;
	uint32_t count, done;
	size_t klen, vlen;
	void *keys;
	void *vals;
	int err;
	const char *syscall;
};

static void map_batch_execute(napi_env env, void *data)
{
	struct map_batch_work *w = data;
	(void)env;
	uint32_t n = w->count;
	if (!n)
		return;
	LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = w->flags);
	w->syscall = "bpf(BPF_MAP_UPDATE_BATCH)";
	if (bpf_map_update_batch(w->fd, w->keys, w->vals, &n, &opts) == 0) {
		w->done = w->count;
		return;
	}
	w->err = errno;
	w->done = n;
	if (!batch_unsupported(w->err))
		return;
	w->err = 0;
	w->syscall = "bpf(BPF_MAP_UPDATE_ELEM)";
	for (w->done = 0; w->done < w->count; w->done++) {
		if (bpf_map_update_elem(w->fd, (char *)w->keys + w->done * w->klen, (char *)w->vals + w->done * w->vlen, w->flags) < 0) {
			w->err = errno;
			return;
		}
	}
}

static void map_batch_complete(napi_env env, napi_status status, void *data)
{
	struct map_batch_work *w = data;
	if (status != napi_ok || w->err) {
		char nb[64];
		napi_value e = mb_errno_error(env, w->err ? w->err : EIO, w->syscall, NULL, "map %s (%u of %u done)",
					      map_name(w->fd, nb, sizeof(nb)), w->done, w->count);
		napi_reject_deferred(env, w->deferred, e);
	} else {
		napi_resolve_deferred(env, w->deferred, mb_undef(env));
	}
	napi_delete_async_work(env, w->work);
	free(w->keys);
	free(w->vals);
	free(w);
}

static napi_value js_map_update_batch_async(napi_env env, napi_callback_info info)
{
	MB_ARGS(5);
	int32_t fd;
	void *keys, *vals;
	uint32_t count;
	size_t klen, vlen;
	int64_t flags = 0;
	if (!batch_args(env, argv, true, &fd, &keys, &vals, &count, &klen, &vlen))
		return NULL;
	if (!mb_is_nullish(env, argv[4]) && !mb_arg_i64(env, argv[4], "flags", &flags))
		return NULL;
	struct map_batch_work *w = calloc(1, sizeof(*w));
	if (!w) {
		mb_throw_type(env, "mapUpdateBatchAsync: out of memory");
		return NULL;
	}
	w->fd = fd;
	w->flags = (__u64)flags;
	w->count = count;
	w->klen = klen;
	w->vlen = vlen;
	w->keys = malloc(count * klen + 1);
	w->vals = malloc(count * vlen + 1);
	if (!w->keys || !w->vals) {
		free(w->keys);
		free(w->vals);
		free(w);
		mb_throw_type(env, "mapUpdateBatchAsync: out of memory");
		return NULL;
	}
	if (count) {
		memcpy(w->keys, keys, count * klen);
		memcpy(w->vals, vals, count * vlen);
	}
	napi_value promise, name;
	napi_create_promise(env, &w->deferred, &promise);
	napi_create_string_utf8(env, "mapUpdateBatchAsync", NAPI_AUTO_LENGTH, &name);
	napi_create_async_work(env, NULL, name, map_batch_execute, map_batch_complete, w, &w->work);
	napi_queue_async_work(env, w->work);
	return promise;
}

/*
 * mapDeleteAsync(fd, key) -> Promise<boolean>: the delete on a libuv worker
 * thread (maps of maps wait for a grace period); false when the key was
 * absent. The key is copied; the fd must stay open until the promise settles.
 */
struct map_delete_work {
	napi_async_work work;
	napi_deferred deferred;
	int fd;
	void *key;
	int err;
};

static void map_delete_execute(napi_env env, void *data)
{
	struct map_delete_work *w = data;
	(void)env;
	w->err = bpf_map_delete_elem(w->fd, w->key) < 0 ? errno : 0;
}

static void map_delete_complete(napi_env env, napi_status status, void *data)
{
	struct map_delete_work *w = data;
	if (status == napi_ok && (w->err == 0 || w->err == ENOENT)) {
		napi_value b;
		napi_get_boolean(env, w->err == 0, &b);
		napi_resolve_deferred(env, w->deferred, b);
	} else {
		char nb[64];
		napi_value e = mb_errno_error(env, w->err ? w->err : EIO, "bpf(BPF_MAP_DELETE_ELEM)", NULL, "map %s",
					      map_name(w->fd, nb, sizeof(nb)));
		napi_reject_deferred(env, w->deferred, e);
	}
	napi_delete_async_work(env, w->work);
	free(w->key);
	free(w);
}

static napi_value js_map_delete_async(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd;
	void *key;
	size_t klen;
	if (!arg_fd(env, argv[0], &fd) || !mb_arg_buf(env, argv[1], "key", &key, &klen))
		return NULL;
	struct map_delete_work *w = calloc(1, sizeof(*w));
	if (!w || !(w->key = malloc(klen ? klen : 1))) {
		free(w);
		mb_throw_type(env, "mapDeleteAsync: out of memory");
		return NULL;
	}
	memcpy(w->key, key, klen);
	w->fd = fd;
	napi_value promise, name;
	napi_create_promise(env, &w->deferred, &promise);
	napi_create_string_utf8(env, "mapDeleteAsync", NAPI_AUTO_LENGTH, &name);
	napi_create_async_work(env, NULL, name, map_delete_execute, map_delete_complete, w, &w->work);
	napi_queue_async_work(env, w->work);
	return promise;
}

/* mapCreate(type, name, keySize, valueSize, maxEntries, flags) -> fd (owned by the caller) */
static napi_value js_map_create(napi_env env, napi_callback_info info)
{
	MB_ARGS(6);
	uint32_t type, ks, vs, max, flags;
	char name[BPF_OBJ_NAME_LEN];
	if (!mb_arg_u32(env, argv[0], "type", &type) ||
	    !mb_arg_str(env, argv[1], "name", name, sizeof(name)) ||
	    !mb_arg_u32(env, argv[2], "keySize", &ks) || !mb_arg_u32(env, argv[3], "valueSize", &vs) ||
	    !mb_arg_u32(env, argv[4], "maxEntries", &max) || !mb_arg_u32(env, argv[5], "flags", &flags))
		return NULL;
	LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = flags);
	int fd = bpf_map_create((enum bpf_map_type)type, name[0] ? name : NULL, ks, vs, max, &opts);
	if (fd < 0) {
		mb_throw_errno(env, errno, "bpf(BPF_MAP_CREATE)", "map '%s' (type %u, key %u, value %u, max %u)",
			       name, type, ks, vs, max);
		return NULL;
	}
	return mb_i32(env, fd);
}

static napi_value js_num_possible_cpus(napi_env env, napi_callback_info info)
{
	int n = libbpf_num_possible_cpus();
	if (n < 0) {
		mb_throw_errno(env, -n, "libbpf_num_possible_cpus", NULL);
		return NULL;
	}
	return mb_i32(env, n);
}

void mb_init_bpf_map(napi_env env, napi_value exports)
{
	mb_export(env, exports, "mapInfo", js_map_info);
	mb_export(env, exports, "mapCreate", js_map_create);
	mb_export(env, exports, "mapUpdateAsync", js_map_update_async);
	mb_export(env, exports, "mapLookup", js_map_lookup);
	mb_export(env, exports, "mapUpdate", js_map_update);
	mb_export(env, exports, "mapDelete", js_map_delete);
	mb_export(env, exports, "mapNextKey", js_map_next_key);
	mb_export(env, exports, "mapLookupBatch", js_map_lookup_batch);
	mb_export(env, exports, "mapLookupBatchAsync", js_map_lookup_batch_async);
	mb_export(env, exports, "mapUpdateBatch", js_map_update_batch);
	mb_export(env, exports, "mapUpdateBatchAsync", js_map_update_batch_async);
	mb_export(env, exports, "mapDeleteAsync", js_map_delete_async);
	mb_export(env, exports, "mapDeleteBatch", js_map_delete_batch);
	mb_export(env, exports, "numPossibleCpus", js_num_possible_cpus);
}
