/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU verdict counters in mb_metrics: key {reason (0 = forwarded), dir}. */
#ifndef MB_LIB_METRICS_H
#define MB_LIB_METRICS_H

#include "common.h"

#define METRIC_FORWARDED 0

static __always_inline void metrics_count(__u8 reason, __u8 dir, __u32 bytes)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value *v, init = { .count = 1, .bytes = bytes };

	v = bpf_map_lookup_elem(&mb_metrics, &key);
	if (likely(v)) {
		v->count += 1;   /* per-CPU: no atomics needed */
		v->bytes += bytes;
		return;
	}
	/* First packet for this key on any CPU; if another CPU raced us, add again. */
	if (bpf_map_update_elem(&mb_metrics, &key, &init, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(&mb_metrics, &key);
	if (v) {
		v->count += 1;
		v->bytes += bytes;
	}
}

#endif
