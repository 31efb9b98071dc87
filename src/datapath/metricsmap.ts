/**
 * mb_metrics: per-CPU packet and byte counters by (reason, direction), a
 * per-CPU array indexed by METRIC_INDEX(reason, dir) (bpf/include/maps.h).
 * The key codec turns {reason, dir} into that index and back, so readers
 * keep thinking in reasons and directions.
 */
import type { Codec } from '../bpf';

export interface MetricsKey {
  /** 0 = forwarded, else the drop reason */
  reason: number;
  /** METRIC_DIR_* */
  dir: number;
}

export function metricIndex(reason: number, dir: number): number {
  return ((reason & 0xff) << 2) | (dir & 3);
}

export const metricsKeyCodec: Codec<MetricsKey> = {
  size: 4,
  encode(v: MetricsKey, out?: Buffer, offset = 0): Buffer {
    const b = out ?? Buffer.alloc(4);
    b.writeUInt32LE(metricIndex(v.reason, v.dir), offset);
    return b;
  },
  decode(b: Buffer, offset = 0): MetricsKey {
    const i = b.readUInt32LE(offset);
    return { reason: i >>> 2, dir: i & 3 };
  },
};
