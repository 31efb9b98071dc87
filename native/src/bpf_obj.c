/* BPF object lifecycle over libbpf: open, .rodata constants, map reuse, load,
 * program/map fds, pinning, bpffs mount.
 *
 * Objects live in a handle table (small positive integers). objProgFd/objMapFd
 * return a *dup'd* fd (O_CLOEXEC) that the caller owns and must close; closing
 * the object afterwards does not affect it, so pinned/attached things and fds
 * handed out stay alive.
 *
 * libbpf's log output is captured (libbpf_set_print) into a bounded buffer so a
 * failed open/load throws an Error that carries the tail of the verifier log.
 * Set MEMBRANE_LIBBPF_DEBUG=1 to also echo libbpf output (incl. debug) to stderr. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

/* ---------- libbpf log capture ---------- */

#define LOG_CAP (256 * 1024)
static char *log_buf;    /* last LOG_CAP bytes of libbpf output */
static size_t log_len;
static int log_echo = -1;

static void log_append(const char *s, size_t n)
{
	if (!log_buf) {
		log_buf = malloc(LOG_CAP + 1);
		if (!log_buf)
			return;
		log_len = 0;
	}
	if (n >= LOG_CAP) {
		memcpy(log_buf, s + (n - LOG_CAP), LOG_CAP);
		log_len = LOG_CAP;
	} else {
		if (log_len + n > LOG_CAP) {
			size_t drop = log_len + n - LOG_CAP;
			memmove(log_buf, log_buf + drop, log_len - drop);
			log_len -= drop;
		}
		memcpy(log_buf + log_len, s, n);
		log_len += n;
	}
	log_buf[log_len] = 0;
}

static int libbpf_print_cb(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (log_echo < 0) {
		const char *e = getenv("MEMBRANE_LIBBPF_DEBUG");
		log_echo = e && *e && strcmp(e, "0") != 0;
	}
	if (level == LIBBPF_DEBUG && !log_echo)
		return 0;
	char small[1024];
	va_list aq;
	va_copy(aq, ap);
	int n = vsnprintf(small, sizeof(small), fmt, aq);
	va_end(aq);
	if (n < 0)
		return 0;
	if ((size_t)n < sizeof(small)) {
		log_append(small, n);
		if (log_echo)
			fputs(small, stderr);
	} else {
		/* verifier logs arrive as one huge "%s" */
		char *big = malloc((size_t)n + 1);
		if (!big)
			return 0;
		vsnprintf(big, (size_t)n + 1, fmt, ap);
		log_append(big, n);
		if (log_echo)
			fputs(big, stderr);
		free(big);
	}
	return 0;
}

static void log_reset(void)
{
	log_len = 0;
	if (log_buf)
		log_buf[0] = 0;
}

/* Pointer to the start of the last `lines` lines of the captured log. */
static const char *log_tail(int lines)
{
	if (!log_buf || !log_len)
		return "";
	const char *p = log_buf + log_len;
	while (p > log_buf && (p[-1] == '\n'))
		p--;
	int seen = 0;
	while (p > log_buf) {
		if (p[-1] == '\n' && ++seen >= lines)
			break;
		p--;
	}
	return p;
}

/* The name of the last program libbpf complained about: "prog 'NAME': ..." */
static void log_failed_prog(char *out, size_t len)
{
	out[0] = 0;
	if (!log_buf)
		return;
	const char *last = NULL, *p = log_buf;
	while ((p = strstr(p, "prog '")) != NULL) {
		last = p;
		p += 6;
	}
	if (!last)
		return;
	last += 6;
	const char *end = strchr(last, '\'');
	if (!end || (size_t)(end - last) >= len)
		return;
	memcpy(out, last, end - last);
	out[end - last] = 0;
}

/* ---------- handle table ---------- */

struct mb_obj {
	struct bpf_object *obj;
	char path[512];
	bool loaded;
};

static struct mb_obj **objs;
static size_t nobjs;

static int32_t obj_add(struct mb_obj *o)
{
	for (size_t i = 0; i < nobjs; i++)
		if (!objs[i]) {
			objs[i] = o;
			return (int32_t)i + 1;
		}
	struct mb_obj **n = realloc(objs, (nobjs + 16) * sizeof(*n));
	if (!n)
		return -1;
	memset(n + nobjs, 0, 16 * sizeof(*n));
	objs = n;
	objs[nobjs] = o;
	nobjs += 16;
	return (int32_t)(nobjs - 16) + 1;
}

static struct mb_obj *obj_arg(napi_env env, napi_value v)
{
	int32_t h;
	if (!mb_arg_i32(env, v, "handle", &h))
		return NULL;
	if (h <= 0 || (size_t)h > nobjs || !objs[h - 1]) {
		mb_throw_type(env, "invalid or closed BPF object handle %d", h);
		return NULL;
	}
	return objs[h - 1];
}

/* ---------- objOpen(path, pinRoot|null) -> handle ---------- */

static napi_value js_obj_open(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	char path[512], pin_root[512] = "";
	if (!mb_arg_str(env, argv[0], "path", path, sizeof(path)))
		return NULL;
	if (!mb_is_nullish(env, argv[1]) &&
	    !mb_arg_str(env, argv[1], "pinRoot", pin_root, sizeof(pin_root)))
		return NULL;
	LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pin_root[0] ? pin_root : NULL);
	log_reset();
	struct bpf_object *obj = bpf_object__open_file(path, &opts);
	if (!obj) {
		int err = errno;
		napi_value e = mb_errno_error(env, err, "bpf_object__open_file", log_tail(40),
					      "object %s", path);
		mb_set(env, e, "path", mb_str(env, path));
		napi_throw(env, e);
		return NULL;
	}
	struct mb_obj *o = calloc(1, sizeof(*o));
	int32_t h = o ? obj_add(o) : -1;
	if (h < 0) {
		free(o);
		bpf_object__close(obj);
		mb_throw_errno(env, ENOMEM, "objOpen", "object %s", path);
		return NULL;
	}
	o->obj = obj;
	snprintf(o->path, sizeof(o->path), "%s", path);
	return mb_i32(env, h);
}

/* ---------- objSetRodata(h, varName, Buffer) ---------- */

static struct bpf_map *find_rodata_map(struct bpf_object *obj)
{
	struct bpf_map *m;
	bpf_object__for_each_map(m, obj) {
		const char *n = bpf_map__name(m);
		size_t l = strlen(n);
		if (bpf_map__is_internal(m) && l >= 7 && strcmp(n + l - 7, ".rodata") == 0)
			return m;
	}
	return NULL;
}

static napi_value js_obj_set_rodata(napi_env env, napi_callback_info info)
{
	MB_ARGS(3);
	struct mb_obj *o = obj_arg(env, argv[0]);
	if (!o)
		return NULL;
	char var[256];
	void *data;
	size_t len;
	if (!mb_arg_str(env, argv[1], "varName", var, sizeof(var)) ||
	    !mb_arg_buf(env, argv[2], "value", &data, &len))
		return NULL;
	if (o->loaded) {
		mb_throw_errno(env, EBUSY, "objSetRodata", "variable '%s' in %s: object already loaded", var, o->path);
		return NULL;
	}
	struct bpf_map *m = find_rodata_map(o->obj);
	struct btf *btf = bpf_object__btf(o->obj);
	if (!m || !btf) {
		mb_throw_errno(env, ENOENT, "objSetRodata", "variable '%s': object %s has no .rodata section%s",
			       var, o->path, btf ? "" : " or no BTF");
		return NULL;
	}
	int sec_id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (sec_id < 0) {
		mb_throw_errno(env, ENOENT, "objSetRodata", "variable '%s': no .rodata DATASEC in BTF of %s", var, o->path);
		return NULL;
	}
	const struct btf_type *sec = btf__type_by_id(btf, sec_id);
	const struct btf_var_secinfo *vs = btf_var_secinfos(sec);
	for (int i = 0; i < btf_vlen(sec); i++, vs++) {
		const struct btf_type *vt = btf__type_by_id(btf, vs->type);
		if (strcmp(btf__name_by_offset(btf, vt->name_off), var) != 0)
			continue;
		if (vs->size != len) {
			mb_throw_errno(env, EINVAL, "objSetRodata",
				       "variable '%s' in %s: size mismatch: variable is %u bytes, value is %zu bytes",
				       var, o->path, vs->size, len);
			return NULL;
		}
		size_t isz = 0;
		void *iv = (void *)bpf_map__initial_value(m, &isz);
		if (!iv || vs->offset + vs->size > isz) {
			mb_throw_errno(env, ERANGE, "objSetRodata",
				       "variable '%s' in %s: offset %u+%u outside .rodata (%zu bytes)", var,
				       o->path, vs->offset, vs->size, isz);
			return NULL;
		}
		memcpy((char *)iv + vs->offset, data, len);
		return NULL;
	}
	mb_throw_errno(env, ENOENT, "objSetRodata", "variable '%s' not found in .rodata of %s", var, o->path);
	return NULL;
}

/* ---------- objReuseMap(h, mapName, fd) ---------- */

static struct bpf_map *map_arg(napi_env env, struct mb_obj *o, napi_value v, char *name, size_t len)
{
	if (!mb_arg_str(env, v, "mapName", name, len))
		return NULL;
	struct bpf_map *m = bpf_object__find_map_by_name(o->obj, name);
	if (!m)
		mb_throw_errno(env, ENOENT, "bpf_object__find_map_by_name", "map '%s' not in object %s", name, o->path);
	return m;
}

static napi_value js_obj_reuse_map(napi_env env, napi_callback_info info)
{
	MB_ARGS(3);
	struct mb_obj *o = obj_arg(env, argv[0]);
	if (!o)
		return NULL;
	char name[256];
	int32_t fd;
	struct bpf_map *m = map_arg(env, o, argv[1], name, sizeof(name));
	if (!m || !mb_arg_i32(env, argv[2], "fd", &fd))
		return NULL;
	log_reset();
	int err = bpf_map__reuse_fd(m, fd);
	if (err) {
		napi_value e = mb_errno_error(env, err, "bpf_map__reuse_fd", log_tail(10),
					      "map '%s' (fd %d) in object %s", name, fd, o->path);
		mb_set(env, e, "map", mb_str(env, name));
		napi_throw(env, e);
	}
	return NULL;
}

/* ---------- objLoad(h) ---------- */

static napi_value js_obj_load(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	struct mb_obj *o = obj_arg(env, argv[0]);
	if (!o)
		return NULL;
	log_reset();
	int err = bpf_object__load(o->obj);
	if (err) {
		char prog[128];
		log_failed_prog(prog, sizeof(prog));
		const char *tail = log_tail(40);
		size_t dl = strlen(tail) + 64;
		char *detail = malloc(dl);
		if (detail)
			snprintf(detail, dl, "libbpf/verifier log (last 40 lines):\n%s", tail);
		napi_value e;
		if (prog[0])
			e = mb_errno_error(env, err, "bpf_object__load", detail, "object %s (program '%s')", o->path, prog);
		else
			e = mb_errno_error(env, err, "bpf_object__load", detail, "object %s", o->path);
		free(detail);
		mb_set(env, e, "path", mb_str(env, o->path));
		if (prog[0])
			mb_set(env, e, "program", mb_str(env, prog));
		mb_set(env, e, "log", mb_str(env, log_tail(200)));
		napi_throw(env, e);
		return NULL;
	}
	o->loaded = true;
	return NULL;
}

/* ---------- fds & names ---------- */

static napi_value js_obj_prog_fd(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	struct mb_obj *o = obj_arg(env, argv[0]);
	if (!o)
		return NULL;
	char name[256];
	if (!mb_arg_str(env, argv[1], "progName", name, sizeof(name)))
		return NULL;
	struct bpf_program *p = bpf_object__find_program_by_name(o->obj, name);
	if (!p) {
		mb_throw_errno(env, ENOENT, "bpf_object__find_program_by_name", "program '%s' not in object %s", name, o->path);
		return NULL;
	}
	int fd = bpf_program__fd(p);
	if (fd < 0) {
		mb_throw_errno(env, fd == -1 ? EINVAL : -fd, "bpf_program__fd",
			       "program '%s' in %s (object not loaded or program not autoloaded)", name, o->path);
		return NULL;
	}
	int d = mb_dup_cloexec(fd);
	if (d < 0) {
		mb_throw_errno(env, errno, "dup", "program '%s'", name);
		return NULL;
	}
	return mb_i32(env, d);
}

static napi_value js_obj_map_fd(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	struct mb_obj *o = obj_arg(env, argv[0]);
	if (!o)
		return NULL;
	char name[256];
	struct bpf_map *m = map_arg(env, o, argv[1], name, sizeof(name));
	if (!m)
		return NULL;
	int fd = bpf_map__fd(m);
	if (fd < 0) {
		mb_throw_errno(env, fd == -1 ? EINVAL : -fd, "bpf_map__fd", "map '%s' in %s (object not loaded?)", name, o->path);
		return NULL;
	}
	int d = mb_dup_cloexec(fd);
	if (d < 0) {
		mb_throw_errno(env, errno, "dup", "map '%s'", name);
		return NULL;
	}
	return mb_i32(env, d);
}

static napi_value js_obj_prog_names(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	struct mb_obj *o = obj_arg(env, argv[0]);
	if (!o)
		return NULL;
	napi_value arr;
	napi_create_array(env, &arr);
	uint32_t i = 0;
	struct bpf_program *p;
	bpf_object__for_each_program(p, o->obj) {
		napi_set_element(env, arr, i++, mb_str(env, bpf_program__name(p)));
	}
	return arr;
}

static napi_value js_obj_map_names(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	struct mb_obj *o = obj_arg(env, argv[0]);
	if (!o)
		return NULL;
	napi_value arr;
	napi_create_array(env, &arr);
	uint32_t i = 0;
	struct bpf_map *m;
	bpf_object__for_each_map(m, o->obj) {
		napi_set_element(env, arr, i++, mb_str(env, bpf_map__name(m)));
	}
	return arr;
}

/* objMapDefs(h) -> [{name, type, keySize, valueSize, maxEntries, flags, pinPath}] of an opened object */
static napi_value js_obj_map_defs(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	struct mb_obj *o = obj_arg(env, argv[0]);
	if (!o)
		return NULL;
	napi_value arr;
	napi_create_array(env, &arr);
	uint32_t i = 0;
	struct bpf_map *m;
	bpf_object__for_each_map(m, o->obj) {
		napi_value d;
		napi_create_object(env, &d);
		mb_set(env, d, "name", mb_str(env, bpf_map__name(m)));
		mb_set(env, d, "type", mb_u32(env, bpf_map__type(m)));
		mb_set(env, d, "keySize", mb_u32(env, bpf_map__key_size(m)));
		mb_set(env, d, "valueSize", mb_u32(env, bpf_map__value_size(m)));
		mb_set(env, d, "maxEntries", mb_u32(env, bpf_map__max_entries(m)));
		mb_set(env, d, "flags", mb_u32(env, bpf_map__map_flags(m)));
		const char *pp = bpf_map__pin_path(m);
		mb_set(env, d, "pinPath", pp ? mb_str(env, pp) : mb_null(env));
		napi_set_element(env, arr, i++, d);
	}
	return arr;
}

static napi_value js_obj_close(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t h;
	if (!mb_arg_i32(env, argv[0], "handle", &h))
		return NULL;
	if (h <= 0 || (size_t)h > nobjs || !objs[h - 1])
		return NULL; /* idempotent */
	bpf_object__close(objs[h - 1]->obj);
	free(objs[h - 1]);
	objs[h - 1] = NULL;
	return NULL;
}

/* ---------- pinning ---------- */

static napi_value js_obj_pin(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd;
	char path[512];
	if (!mb_arg_i32(env, argv[0], "fd", &fd) || !mb_arg_str(env, argv[1], "path", path, sizeof(path)))
		return NULL;
	if (bpf_obj_pin(fd, path) < 0) {
		napi_value e = mb_errno_error(env, errno, "bpf(BPF_OBJ_PIN)", NULL, "fd %d at %s", fd, path);
		mb_set(env, e, "path", mb_str(env, path));
		napi_throw(env, e);
	}
	return NULL;
}

/* objGet(path[, fileFlags]): fileFlags e.g. BPF_F_RDONLY for a read-only map fd. */
static napi_value js_obj_get(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	char path[512];
	uint32_t flags = 0;
	if (!mb_arg_str(env, argv[0], "path", path, sizeof(path)))
		return NULL;
	if (!mb_is_nullish(env, argv[1]) && !mb_arg_u32(env, argv[1], "fileFlags", &flags))
		return NULL;
	LIBBPF_OPTS(bpf_obj_get_opts, opts, .file_flags = flags);
	int fd = bpf_obj_get_opts(path, &opts);
	if (fd < 0) {
		napi_value e = mb_errno_error(env, errno, "bpf(BPF_OBJ_GET)", NULL, "%s", path);
		mb_set(env, e, "path", mb_str(env, path));
		napi_throw(env, e);
		return NULL;
	}
	return mb_i32(env, fd);
}

/* mountBpffs(path): mount -t bpf bpf <path> (mode 0700). */
static napi_value js_mount_bpffs(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	char path[512];
	if (!mb_arg_str(env, argv[0], "path", path, sizeof(path)))
		return NULL;
	if (mount("bpf", path, "bpf", 0, "mode=0700") < 0) {
		napi_value e = mb_errno_error(env, errno, "mount", NULL, "bpffs at %s", path);
		mb_set(env, e, "path", mb_str(env, path));
		napi_throw(env, e);
	}
	return NULL;
}

void mb_init_bpf_obj(napi_env env, napi_value exports)
{
	libbpf_set_print(libbpf_print_cb);
	mb_export(env, exports, "objOpen", js_obj_open);
	mb_export(env, exports, "objSetRodata", js_obj_set_rodata);
	mb_export(env, exports, "objReuseMap", js_obj_reuse_map);
	mb_export(env, exports, "objLoad", js_obj_load);
	mb_export(env, exports, "objProgFd", js_obj_prog_fd);
	mb_export(env, exports, "objMapFd", js_obj_map_fd);
	mb_export(env, exports, "objProgNames", js_obj_prog_names);
	mb_export(env, exports, "objMapNames", js_obj_map_names);
	mb_export(env, exports, "objMapDefs", js_obj_map_defs);
	mb_export(env, exports, "objClose", js_obj_close);
	mb_export(env, exports, "objPin", js_obj_pin);
	mb_export(env, exports, "objGet", js_obj_get);
	mb_export(env, exports, "mountBpffs", js_mount_bpffs);
}
