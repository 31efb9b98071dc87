/**
 * Conntrack garbage collection. The datapath treats an entry whose lifetime
 * (absolute seconds of CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns) has
 * passed as absent; the agent removes such entries periodically so the LRU map
 * keeps room for live flows.
 */
import type { BpfMap } from '../bpf';
import type * as gen from './maps.gen';

/** Seconds of CLOCK_MONOTONIC, the clock the datapath stamps lifetimes with. */
export function monotonicSeconds(): number {
  return Number(process.hrtime.bigint() / 1_000_000_000n);
}

export function gcConntrack(ct: BpfMap<gen.CtKey, gen.CtValue>, now = monotonicSeconds()): { scanned: number; deleted: number } {
  let scanned = 0;
  const expired: gen.CtKey[] = [];
  for (const [k, v] of ct.entries()) {
    scanned++;
    if (v.lifetime < now) expired.push(k);
  }
  for (const k of expired) ct.delete(k);
  return { scanned, deleted: expired.length };
}
