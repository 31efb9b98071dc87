/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU verdict counters in mb_metrics, at METRIC_INDEX(reason (0 = forwarded), dir). */
#ifndef MB_LIB_METRICS_H
#define MB_LIB_METRICS_H

#include "common.h"

#define METRIC_FORWARDED 0

static __always_inline void metrics_count(__u8 reason, __u8 dir, __u32 bytes)
{
	__u32 idx = METRIC_INDEX(reason, dir);
	struct metrics_value *v = bpf_map_lookup_elem(&mb_metrics, &idx);

	if (likely(v)) {
		v->count += 1;   /* per-CPU: no atomics needed */
		v->bytes += bytes;
	}
}

#endif
