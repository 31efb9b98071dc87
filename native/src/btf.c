/* BTF introspection of ELF objects (used by scripts/gen-codecs.js and tests).
 * Types are described after resolving typedef/volatile/const/restrict/type_tag;
 * the typedef names seen on the way are kept in `typedefs` (outermost first), so
 * callers can recognise e.g. __be16. */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <string.h>

static napi_value describe_type(napi_env env, const struct btf *btf, __u32 id, int depth);

static napi_value describe_members(napi_env env, const struct btf *btf, const struct btf_type *t, int depth)
{
	napi_value arr;
	napi_create_array(env, &arr);
	const struct btf_member *m = btf_members(t);
	for (int i = 0; i < btf_vlen(t); i++, m++) {
		napi_value o;
		napi_create_object(env, &o);
		mb_set(env, o, "name", mb_str(env, btf__name_by_offset(btf, m->name_off)));
		mb_set(env, o, "bitOffset", mb_u32(env, btf_member_bit_offset(t, i)));
		mb_set(env, o, "bitSize", mb_u32(env, btf_member_bitfield_size(t, i)));
		mb_set(env, o, "type", describe_type(env, btf, m->type, depth + 1));
		napi_set_element(env, arr, i, o);
	}
	return arr;
}

static const char *kind_name(int k)
{
	switch (k) {
	case BTF_KIND_INT: return "int";
	case BTF_KIND_PTR: return "ptr";
	case BTF_KIND_ARRAY: return "array";
	case BTF_KIND_STRUCT: return "struct";
	case BTF_KIND_UNION: return "union";
	case BTF_KIND_ENUM: return "enum";
	case BTF_KIND_ENUM64: return "enum";
	case BTF_KIND_FWD: return "fwd";
	case BTF_KIND_FUNC: return "func";
	case BTF_KIND_FUNC_PROTO: return "func_proto";
	case BTF_KIND_VAR: return "var";
	case BTF_KIND_DATASEC: return "datasec";
	case BTF_KIND_FLOAT: return "float";
	case BTF_KIND_DECL_TAG: return "decl_tag";
	default: return "unknown";
	}
}

static napi_value describe_type(napi_env env, const struct btf *btf, __u32 id, int depth)
{
	napi_value o, tds;
	napi_create_object(env, &o);
	napi_create_array(env, &tds);
	uint32_t ntd = 0;
	const struct btf_type *t = btf__type_by_id(btf, id);
	while (t && id) {
		int k = btf_kind(t);
		if (k == BTF_KIND_TYPEDEF)
			napi_set_element(env, tds, ntd++, mb_str(env, btf__name_by_offset(btf, t->name_off)));
		else if (k != BTF_KIND_VOLATILE && k != BTF_KIND_CONST && k != BTF_KIND_RESTRICT &&
			 k != BTF_KIND_TYPE_TAG)
			break;
		id = t->type;
		t = btf__type_by_id(btf, id);
	}
	if (!t || id == 0) {
		mb_set(env, o, "kind", mb_str(env, "void"));
		mb_set(env, o, "name", mb_str(env, "void"));
		mb_set(env, o, "size", mb_u32(env, 0));
		return o;
	}
	int k = btf_kind(t);
	__s64 sz = btf__resolve_size(btf, id);
	mb_set(env, o, "kind", mb_str(env, kind_name(k)));
	mb_set(env, o, "name", mb_str(env, btf__name_by_offset(btf, t->name_off)));
	mb_set(env, o, "size", mb_u32(env, sz < 0 ? 0 : (uint32_t)sz));
	if (ntd)
		mb_set(env, o, "typedefs", tds);
	switch (k) {
	case BTF_KIND_INT: {
		__u8 enc = btf_int_encoding(t);
		mb_set(env, o, "signed", mb_bool(env, enc & BTF_INT_SIGNED));
		mb_set(env, o, "bits", mb_u32(env, btf_int_bits(t)));
		if (enc & BTF_INT_BOOL)
			mb_set(env, o, "bool", mb_bool(env, true));
		if (enc & BTF_INT_CHAR)
			mb_set(env, o, "char", mb_bool(env, true));
		break;
	}
	case BTF_KIND_ENUM:
	case BTF_KIND_ENUM64:
		mb_set(env, o, "signed", mb_bool(env, btf_kflag(t)));
		break;
	case BTF_KIND_ARRAY: {
		const struct btf_array *a = btf_array(t);
		mb_set(env, o, "nelems", mb_u32(env, a->nelems));
		mb_set(env, o, "elemType", describe_type(env, btf, a->type, depth + 1));
		break;
	}
	case BTF_KIND_STRUCT:
	case BTF_KIND_UNION:
		/* named aggregates are listed at top level by btfStructs; inline anonymous ones */
		if (!t->name_off && depth < 16)
			mb_set(env, o, "members", describe_members(env, btf, t, depth));
		break;
	default:
		break;
	}
	return o;
}

static struct btf *open_btf(napi_env env, napi_value v, char *path, size_t len)
{
	if (!mb_arg_str(env, v, "objPath", path, len))
		return NULL;
	struct btf *btf = btf__parse_elf(path, NULL);
	if (!btf) {
		int err = errno;
		napi_value e = mb_errno_error(env, err, "btf__parse_elf", NULL, "%s", path);
		mb_set(env, e, "path", mb_str(env, path));
		napi_throw(env, e);
	}
	return btf;
}

/* btfStructs(objPath) -> [{name, size, members}] for every named struct */
static napi_value js_btf_structs(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	char path[512];
	struct btf *btf = open_btf(env, argv[0], path, sizeof(path));
	if (!btf)
		return NULL;
	napi_value arr;
	napi_create_array(env, &arr);
	uint32_t n = 0, cnt = btf__type_cnt(btf);
	for (uint32_t id = 1; id < cnt; id++) {
		const struct btf_type *t = btf__type_by_id(btf, id);
		if (btf_kind(t) != BTF_KIND_STRUCT || !t->name_off)
			continue;
		napi_value o;
		napi_create_object(env, &o);
		mb_set(env, o, "name", mb_str(env, btf__name_by_offset(btf, t->name_off)));
		mb_set(env, o, "size", mb_u32(env, t->size));
		mb_set(env, o, "members", describe_members(env, btf, t, 0));
		napi_set_element(env, arr, n++, o);
	}
	btf__free(btf);
	return arr;
}

/* btfDatasecVars(objPath, secName) -> [{name, offset, size, typeName, type}] */
static napi_value js_btf_datasec_vars(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	char path[512], sec[128];
	if (!mb_arg_str(env, argv[1], "secName", sec, sizeof(sec)) ||
	    !mb_arg_str(env, argv[0], "objPath", path, sizeof(path)))
		return NULL;
	/* clang leaves DATASEC var offsets at 0 in .o files; libbpf fixes them up
	 * from the ELF symbol table when opening the object, so prefer that BTF. */
	struct btf *btf = NULL;
	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	if (obj && bpf_object__btf(obj)) {
		/* copy: the object (and its BTF) is closed before we return */
		__u32 sz;
		const void *raw = btf__raw_data(bpf_object__btf(obj), &sz);
		btf = raw ? btf__new(raw, sz) : NULL;
	}
	if (obj)
		bpf_object__close(obj);
	if (!btf)
		btf = open_btf(env, argv[0], path, sizeof(path));
	if (!btf)
		return NULL;
	int sid = btf__find_by_name_kind(btf, sec, BTF_KIND_DATASEC);
	if (sid < 0) {
		btf__free(btf);
		mb_throw_errno(env, ENOENT, "btf__find_by_name_kind", "DATASEC '%s' not in BTF of %s", sec, path);
		return NULL;
	}
	const struct btf_type *st = btf__type_by_id(btf, sid);
	const struct btf_var_secinfo *vs = btf_var_secinfos(st);
	napi_value arr;
	napi_create_array(env, &arr);
	for (int i = 0; i < btf_vlen(st); i++, vs++) {
		const struct btf_type *vt = btf__type_by_id(btf, vs->type);
		napi_value o;
		napi_create_object(env, &o);
		mb_set(env, o, "name", mb_str(env, btf__name_by_offset(btf, vt->name_off)));
		mb_set(env, o, "offset", mb_u32(env, vs->offset));
		mb_set(env, o, "size", mb_u32(env, vs->size));
		/* first named type under const/volatile (typedef names count) */
		__u32 tid = btf_kind(vt) == BTF_KIND_VAR ? vt->type : vs->type;
		const struct btf_type *tt = btf__type_by_id(btf, tid);
		while (tt && tid && !tt->name_off &&
		       (btf_kind(tt) == BTF_KIND_CONST || btf_kind(tt) == BTF_KIND_VOLATILE ||
			btf_kind(tt) == BTF_KIND_RESTRICT || btf_kind(tt) == BTF_KIND_TYPE_TAG)) {
			tid = tt->type;
			tt = btf__type_by_id(btf, tid);
		}
		mb_set(env, o, "typeName", mb_str(env, tt && tid ? btf__name_by_offset(btf, tt->name_off) : "void"));
		mb_set(env, o, "type", describe_type(env, btf, btf_kind(vt) == BTF_KIND_VAR ? vt->type : vs->type, 0));
		napi_set_element(env, arr, i, o);
	}
	btf__free(btf);
	return arr;
}

void mb_init_btf(napi_env env, napi_value exports)
{
	mb_export(env, exports, "btfStructs", js_btf_structs);
	mb_export(env, exports, "btfDatasecVars", js_btf_datasec_vars);
}
