/**
 * Conntrack garbage collection. The datapath treats an entry whose lifetime
 * (absolute seconds of CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns) has
 * passed as absent; the agent removes such entries periodically so the LRU map
 * keeps room for live flows.
 *
 * A table of hundreds of thousands of flows must not stall the agent: the map
 * is read on a worker thread (one BPF_MAP_LOOKUP_BATCH walk), lifetimes are
 * read in place from the raw values (no entry is decoded), and expired entries
 * are deleted in batches, yielding to the event loop between slices.
 */
import type { BpfMap } from '../bpf';
import type * as gen from './maps.gen';
import { FIELD_OFFSETS } from './maps.gen';
import type { Logger } from '../util/log';

/** Seconds of CLOCK_MONOTONIC, the clock the datapath stamps lifetimes with. */
export function monotonicSeconds(): number {
  return Number(process.hrtime.bigint() / 1_000_000_000n);
}

const SLICE = 4096;
const LIFETIME_OFF = FIELD_OFFSETS.ct_value.lifetime;

const yieldToLoop = () => new Promise<void>((r) => setImmediate(r));

export async function gcConntrack(ct: BpfMap<gen.CtKey, gen.CtValue>, now = monotonicSeconds()): Promise<{ scanned: number; deleted: number }> {
  const { keys, values, count } = await ct.rawEntriesAsync();
  const ks = ct.keySize;
  const vs = ct.valueSize;
  let deleted = 0;
  for (let start = 0; start < count; start += SLICE) {
    const end = Math.min(count, start + SLICE);
    const expired: number[] = [];
    for (let i = start; i < end; i++) if (values.readUInt32LE(i * vs + LIFETIME_OFF) < now) expired.push(i);
    if (expired.length) {
      const batch = Buffer.alloc(expired.length * ks);
      expired.forEach((i, j) => keys.copy(batch, j * ks, i * ks, (i + 1) * ks));
      ct.deleteRawBatch(batch, expired.length);
      deleted += expired.length;
    }
    if (end < count) await yieldToLoop();
  }
  return { scanned: count, deleted };
}

/** Periodic conntrack GC in the background: never two runs at once; the last run is reported in status. */
export class ConntrackGc {
  last?: { at: string; scanned: number; deleted: number };
  private timer?: NodeJS.Timeout;
  private running = false;

  constructor(
    private readonly ct: BpfMap<gen.CtKey, gen.CtValue>,
    private readonly log: Logger,
  ) {}

  start(intervalMs: number): void {
    this.timer = setInterval(() => void this.run(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      const r = await gcConntrack(this.ct);
      this.last = { at: new Date().toISOString(), ...r };
      if (r.deleted) this.log.debug('conntrack gc', r);
    } catch (e) {
      this.log.error('conntrack gc failed', { error: e });
    } finally {
      this.running = false;
    }
  }
}

const CT_KEY_FAMILY_OFF = FIELD_OFFSETS.ct_key.family;

/**
 * The IPv4 addresses that live conntrack entries name (either end): an
 * address still in use by an open connection. Read on a worker thread.
 */
export async function liveConntrackAddresses(ct: BpfMap<gen.CtKey, gen.CtValue>, now = monotonicSeconds()): Promise<Set<string>> {
  const { keys, values, count } = await ct.rawEntriesAsync();
  const ks = ct.keySize;
  const vs = ct.valueSize;
  const out = new Set<string>();
  for (let i = 0; i < count; i++) {
    if (values.readUInt32LE(i * vs + LIFETIME_OFF) < now) continue;
    const k = i * ks;
    if (keys[k + CT_KEY_FAMILY_OFF] !== 4) continue;
    out.add(`${keys[k]}.${keys[k + 1]}.${keys[k + 2]}.${keys[k + 3]}`);
    out.add(`${keys[k + 16]}.${keys[k + 17]}.${keys[k + 18]}.${keys[k + 19]}`);
  }
  return out;
}
