#include "addon.h"

static napi_value init(napi_env env, napi_value exports)
{
	mb_init_util(env, exports);
	mb_init_bpf_obj(env, exports);
	mb_init_bpf_map(env, exports);
	mb_init_bpf_link(env, exports);
	mb_init_bpf_prog(env, exports);
	mb_init_btf(env, exports);
	mb_init_ringbuf(env, exports);
	mb_init_ringbuf_thread(env, exports);
	mb_init_netns(env, exports);
	mb_init_netlink(env, exports);
	mb_init_sock(env, exports);
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
