/* Membrane native addon: thin N-API bindings over libbpf, bpf(2), setns(2) and
 * netlink sockets. Each .c file registers its functions through one init hook. */
#ifndef MEMBRANE_ADDON_H
#define MEMBRANE_ADDON_H
#include <node_api.h>

void mb_init_util(napi_env env, napi_value exports);
void mb_init_bpf_obj(napi_env env, napi_value exports);
void mb_init_bpf_map(napi_env env, napi_value exports);
void mb_init_bpf_link(napi_env env, napi_value exports);
void mb_init_bpf_prog(napi_env env, napi_value exports);
void mb_init_btf(napi_env env, napi_value exports);
void mb_init_ringbuf(napi_env env, napi_value exports);
void mb_init_ringbuf_thread(napi_env env, napi_value exports);
void mb_init_netns(napi_env env, napi_value exports);
void mb_init_netlink(napi_env env, napi_value exports);
void mb_init_sock(napi_env env, napi_value exports);

#endif
