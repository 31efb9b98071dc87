/* BPF links: tcx attach (kernel >= 6.6), detach, info.
 * libbpf 1.1 and the linux-libc-dev 6.1 uapi headers predate tcx, so the attach
 * types and link type are defined here and the link is created with the generic
 * bpf_link_create(prog_fd, ifindex, BPF_TCX_*, NULL). */
#define _GNU_SOURCE
#include "addon.h"
#include "util.h"
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define MB_BPF_TCX_INGRESS 46
#define MB_BPF_TCX_EGRESS 47
#define MB_BPF_LINK_TYPE_XDP 6
#define MB_BPF_LINK_TYPE_NETNS 5
#define MB_BPF_LINK_TYPE_TCX 11
#define MB_BPF_LINK_TYPE_NETKIT 13

/* linkCreateTcx(progFd, ifindex, 'ingress'|'egress') -> link fd */
static napi_value js_link_create_tcx(napi_env env, napi_callback_info info)
{
	MB_ARGS(3);
	int32_t prog_fd;
	uint32_t ifindex;
	char dir[16];
	if (!mb_arg_i32(env, argv[0], "progFd", &prog_fd) || !mb_arg_u32(env, argv[1], "ifindex", &ifindex) ||
	    !mb_arg_str(env, argv[2], "direction", dir, sizeof(dir)))
		return NULL;
	int at;
	if (!strcmp(dir, "ingress"))
		at = MB_BPF_TCX_INGRESS;
	else if (!strcmp(dir, "egress"))
		at = MB_BPF_TCX_EGRESS;
	else {
		mb_throw_type(env, "direction must be 'ingress' or 'egress', got '%s'", dir);
		return NULL;
	}
	int fd = bpf_link_create(prog_fd, (int)ifindex, (enum bpf_attach_type)at, NULL);
	if (fd < 0) {
		int err = errno;
		napi_value e = mb_errno_error(env, err, "bpf(BPF_LINK_CREATE)", NULL,
					      "tcx %s: prog fd %d on ifindex %u", dir, prog_fd, ifindex);
		mb_set(env, e, "ifindex", mb_u32(env, ifindex));
		napi_throw(env, e);
		return NULL;
	}
	return mb_i32(env, fd);
}

/* linkDetach(fd) */
static napi_value js_link_detach(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	if (bpf_link_detach(fd) < 0)
		mb_throw_errno(env, errno, "bpf(BPF_LINK_DETACH)", "link fd %d", fd);
	return NULL;
}

/* linkInfo(fd) -> {id, type, progId, ifindex?, attachType?} */
static napi_value js_link_info(napi_env env, napi_callback_info info)
{
	MB_ARGS(1);
	int32_t fd;
	if (!mb_arg_i32(env, argv[0], "fd", &fd))
		return NULL;
	/* bpf_link_info from a newer kernel may be bigger than the 6.1 struct: use a
	 * raw, zeroed buffer of the size we know and read the union by offset. */
	union {
		struct bpf_link_info li;
		__u32 raw[32];
	} u;
	memset(&u, 0, sizeof(u));
	__u32 len = sizeof(u.li);
	if (bpf_obj_get_info_by_fd(fd, &u.li, &len) < 0) {
		mb_throw_errno(env, errno, "bpf(BPF_OBJ_GET_INFO_BY_FD)", "link fd %d", fd);
		return NULL;
	}
	napi_value o;
	napi_create_object(env, &o);
	mb_set(env, o, "id", mb_u32(env, u.li.id));
	mb_set(env, o, "type", mb_u32(env, u.li.type));
	mb_set(env, o, "progId", mb_u32(env, u.li.prog_id));
	const __u32 *un = &u.raw[4]; /* union starts at offset 16 (aligned 8) */
	switch (u.li.type) {
	case MB_BPF_LINK_TYPE_TCX:
	case MB_BPF_LINK_TYPE_NETKIT: /* {ifindex, attach_type} */
		mb_set(env, o, "ifindex", mb_u32(env, un[0]));
		mb_set(env, o, "attachType", mb_u32(env, un[1]));
		break;
	case MB_BPF_LINK_TYPE_XDP:
		mb_set(env, o, "ifindex", mb_u32(env, un[0]));
		break;
	case MB_BPF_LINK_TYPE_NETNS:
		mb_set(env, o, "attachType", mb_u32(env, un[1]));
		break;
	default:
		break;
	}
	return o;
}

/* linkUpdate(linkFd, progFd): BPF_LINK_UPDATE, swap the link's program atomically. */
static napi_value js_link_update(napi_env env, napi_callback_info info)
{
	MB_ARGS(2);
	int32_t fd, prog_fd;
	if (!mb_arg_i32(env, argv[0], "linkFd", &fd) || !mb_arg_i32(env, argv[1], "progFd", &prog_fd))
		return NULL;
	if (bpf_link_update(fd, prog_fd, NULL) < 0)
		mb_throw_errno(env, errno, "bpf(BPF_LINK_UPDATE)", "link fd %d prog fd %d", fd, prog_fd);
	return NULL;
}

/* linkCreateCgroup(progFd, cgroupPath, attachType) -> link fd (BPF_LINK_CREATE on a cgroup v2 directory). */
static napi_value js_link_create_cgroup(napi_env env, napi_callback_info info)
{
	MB_ARGS(3);
	int32_t prog_fd;
	uint32_t attach_type;
	char path[4096];
	if (!mb_arg_i32(env, argv[0], "progFd", &prog_fd) || !mb_arg_str(env, argv[1], "cgroupPath", path, sizeof(path)) ||
	    !mb_arg_u32(env, argv[2], "attachType", &attach_type))
		return NULL;
	int cg = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cg < 0) {
		mb_throw_errno(env, errno, "open", "cgroup %s", path);
		return NULL;
	}
	int fd = bpf_link_create(prog_fd, cg, (enum bpf_attach_type)attach_type, NULL);
	int err = errno;
	close(cg);
	if (fd < 0) {
		mb_throw_errno(env, err, "bpf(BPF_LINK_CREATE)", "prog fd %d cgroup %s attach type %u", prog_fd, path, attach_type);
		return NULL;
	}
	return mb_i32(env, fd);
}

void mb_init_bpf_link(napi_env env, napi_value exports)
{
	mb_export(env, exports, "linkCreateCgroup", js_link_create_cgroup);
	mb_export(env, exports, "linkUpdate", js_link_update);
	mb_export(env, exports, "linkCreateTcx", js_link_create_tcx);
	mb_export(env, exports, "linkDetach", js_link_detach);
	mb_export(env, exports, "linkInfo", js_link_info);
}
