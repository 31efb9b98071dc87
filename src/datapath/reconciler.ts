/**
 * Desired-state reconciliation of BPF maps: the only writer of every map the
 * agent owns.
 *
 * A MapTable holds what one map should contain. Callers state it (upsert /
 * delete / replaceAll); flush() makes the kernel match the pending changes;
 * resync() compares the whole kernel map with the desired table and repairs
 * drift in both directions (an entry changed or removed behind the agent's
 * back is written again, an entry nobody wants is removed), counting what it
 * repaired. The Reconciler owns the tables of a node: it flushes them with
 * retries and backoff, resyncs them all periodically, and reports per-table
 * status (desired, in kernel, pending, failed, last error, drift repaired).
 *
 * ARRAY-like maps (every index exists) are tables with an `absent` value: an
 * index that is not desired holds it, delete() writes it, and resync treats it
 * as "no entry". Maps whose values are file descriptors (program arrays, map
 * of maps) store {fd, id}: fds are written, ids are what the kernel reads back.
 */
import type { BpfMap, Codec } from '../bpf';
import type { Logger } from '../util/log';

export interface TableStatus {
  map: string;
  /** entries the agent wants in the map */
  desired: number;
  /** entries found in the kernel at the last resync */
  inKernel?: number;
  /** changes not yet written (failed writes stay pending until a retry succeeds) */
  pending: number;
  /** writes that failed since the last successful flush */
  failed: number;
  lastError?: string;
  lastResync?: string;
  /** entries repaired by resyncs since start (written again / removed) */
  driftRepaired: number;
  /** several tables of one kind summarised (per-endpoint policy maps) */
  tables?: number;
}

export interface MapTableOptions<K, V> {
  /** a key as people read it (status, errors); keys are identified by their encoded bytes */
  keyId: (k: K) => string;
  /** do two values mean the same thing (counters maintained by the datapath never count) */
  same: (a: V, b: V) => boolean;
  /** ARRAY semantics: the value an index holds when nothing is desired there */
  absent?: V;
  /**
   * How values are kept, when not with the map's own codec: for values that do
   * not survive the map's codec (an fd is written, an id read back).
   */
  storeValue?: Codec<V>;
}

/** A value that is an fd when written and an id when read back (PROG_ARRAY, *_OF_MAPS). */
export interface FdRef {
  fd: number;
  id: number;
}

/** How a table keeps FdRef values: fd and id, 8 bytes. */
export const fdRefStoreCodec: Codec<FdRef> = {
  size: 8,
  encode(v: FdRef, out?: Buffer, offset = 0): Buffer {
    const b = out ?? Buffer.alloc(8);
    b.writeInt32LE(v.fd, offset);
    b.writeUInt32LE(v.id >>> 0, offset + 4);
    return b;
  },
  decode(b: Buffer, offset = 0): FdRef {
    return { fd: b.readInt32LE(offset), id: b.readUInt32LE(offset + 4) };
  },
};

export class TableError extends Error {
  constructor(
    readonly table: string,
    readonly op: 'update' | 'delete' | 'resync',
    readonly key: string,
    readonly cause: Error,
  ) {
    super(`${op} ${key} in ${table}: ${cause.message}`);
    this.name = 'TableError';
  }
}

/**
 * A desired state prepared once and adopted by any number of tables with the
 * same codecs (MapTable.prepare / adopt): endpoints with the same identity
 * share their policy map state instead of holding a copy each. Immutable.
 */
export class TableState {
  /** @internal encoded key -> encoded value (one-byte strings) */
  constructor(
    readonly entries: ReadonlyMap<string, string>,
    /** @internal */ readonly codecs: { key: Codec<unknown>; value: Codec<unknown> },
  ) {}

  get size(): number {
    return this.entries.size;
  }
}

/** A desired state encoded with these codecs (those of the tables that will adopt it). */
export function prepareState<K, V>(keyCodec: Codec<K>, valueCodec: Codec<V>, entries: Iterable<{ key: K; value: V }>): TableState {
  const m = new Map<string, string>();
  for (const e of entries) m.set(keyCodec.encode(e.key).toString('latin1'), valueCodec.encode(e.value).toString('latin1'));
  return new TableState(m, { key: keyCodec, value: valueCodec });
}

/**
 * Bytes as a one-byte string and back. A table keeps each entry as the two
 * encoded strings (what the kernel holds), not as objects with Buffers: an
 * entry costs tens of bytes instead of hundreds.
 */
const toStr = (b: Buffer): string => b.toString('latin1');
const toBuf = (s: string): Buffer => Buffer.from(s, 'latin1');

export class MapTable<K, V> {
  /** encoded key -> encoded value; shared with a TableState until written to */
  private desired: Map<string, string> = new Map();
  private shared = false;
  /** encoded keys whose kernel entry may differ from the desired one */
  private readonly pending = new Set<string>();
  private lastError?: string;
  private lastResync?: string;
  private failures = 0;
  private inKernel?: number;
  private repaired = 0;
  private readonly keyId: (k: K) => string;
  private readonly same: (a: V, b: V) => boolean;
  private readonly keyCodec: Codec<K>;
  private readonly valueCodec: Codec<V>;
  /** values are kept in the map's own encoding: written as they are */
  private readonly raw: boolean;
  private readonly absent?: V;
  private readonly absentEnc?: string;
  /** The batch flushAsync is writing, if any. */
  private flushing?: Promise<void>;

  constructor(
    readonly name: string,
    private readonly map: BpfMap<K, V>,
    opts: MapTableOptions<K, V>,
  ) {
    this.keyId = opts.keyId;
    this.same = opts.same;
    this.keyCodec = map.codecs.key;
    this.valueCodec = opts.storeValue ?? map.codecs.value;
    this.raw = !opts.storeValue;
    this.absent = opts.absent;
    this.absentEnc = opts.absent !== undefined ? this.encValue(opts.absent) : undefined;
  }

  private encKey(k: K): string {
    return toStr(this.keyCodec.encode(k));
  }

  private encValue(v: V): string {
    return toStr(this.valueCodec.encode(v));
  }

  private decKey(s: string): K {
    return this.keyCodec.decode(toBuf(s), 0);
  }

  private decValue(s: string): V {
    return this.valueCodec.decode(toBuf(s), 0);
  }

  /** Do two encoded values mean the same (equal bytes, else the table's own comparison). */
  private sameEnc(a: string, b: string): boolean {
    return a === b || this.same(this.decValue(a), this.decValue(b));
  }

  /** The desired map, owned by this table (copied from a shared state on first write). */
  private own(): Map<string, string> {
    if (this.shared) {
      this.desired = new Map(this.desired);
      this.shared = false;
    }
    return this.desired;
  }

  upsert(key: K, value: V): void {
    const k = this.encKey(key);
    const v = this.encValue(value);
    const cur = this.desired.get(k);
    if (cur !== undefined && this.sameEnc(cur, v)) return;
    this.own().set(k, v);
    this.pending.add(k);
  }

  /**
   * Desire `value` at `key`, writing it only if the kernel holds something
   * else there (adopting kernel state after a restart costs no write).
   */
  adopt(key: K, value: V): void {
    this.upsert(key, value);
    const k = this.kernelGet(key);
    if (k !== undefined && this.same(k, value)) this.pending.delete(this.encKey(key));
  }

  delete(key: K): void {
    const k = this.encKey(key);
    // Not ours (or already gone): still make sure the kernel does not hold it.
    if (this.desired.has(k)) this.own().delete(k);
    this.pending.add(k);
  }

  /** Make the desired table exactly `entries`: a diff against the current desired state. */
  replaceAll(entries: { key: K; value: V }[]): { upserts: number; deletes: number } {
    return this.adoptState(this.prepare(entries), false);
  }

  /**
   * A desired state for this table, or any table with the same codecs, to
   * adopt (adoptState): encoded once, shared by every table that adopts it.
   */
  prepare(entries: Iterable<{ key: K; value: V }>): TableState {
    return prepareState(this.keyCodec, this.valueCodec, entries);
  }

  /**
   * Make the desired table exactly `state` (a diff, as replaceAll) and keep a
   * reference to it instead of a copy, until this table is written to.
   */
  adoptState(state: TableState, share = true): { upserts: number; deletes: number } {
    if (state.codecs.key !== this.keyCodec || state.codecs.value !== this.valueCodec) {
      throw new Error(`${this.name}: a table state prepared with other codecs cannot be adopted`);
    }
    const next = state.entries;
    let upserts = 0;
    let deletes = 0;
    for (const k of this.desired.keys()) {
      if (!next.has(k)) {
        this.pending.add(k);
        deletes++;
      }
    }
    for (const [k, v] of next) {
      const cur = this.desired.get(k);
      if (cur !== undefined && this.sameEnc(cur, v)) continue;
      this.pending.add(k);
      upserts++;
    }
    this.desired = next as Map<string, string>;
    this.shared = share;
    return { upserts, deletes };
  }

  get size(): number {
    return this.desired.size;
  }

  get dirty(): boolean {
    return this.pending.size > 0;
  }

  get(key: K): V | undefined {
    const v = this.desired.get(this.encKey(key));
    return v === undefined ? undefined : this.decValue(v);
  }

  has(key: K): boolean {
    return this.desired.has(this.encKey(key));
  }

  entries(): { key: K; value: V }[] {
    return [...this.desired].map(([k, v]) => ({ key: this.decKey(k), value: this.decValue(v) }));
  }

  /** Write one entry (encoded) as the table wants it now. */
  private write(k: string): void {
    const want = this.desired.get(k) ?? this.absentEnc;
    if (want !== undefined) {
      if (this.raw) this.map.updateEncoded(toBuf(k), toBuf(want));
      else this.map.update(this.decKey(k), this.decValue(want));
    } else this.map.deleteEncoded(toBuf(k));
  }

  /**
   * Write pending changes to the kernel. Throws a TableError on the first
   * failure; what failed (and everything after it) stays pending for a retry.
   */
  flush(): void {
    for (const k of [...this.pending]) {
      try {
        this.write(k);
      } catch (e) {
        throw this.failed(this.desired.has(k) ? 'update' : 'delete', k, e);
      }
      this.pending.delete(k);
    }
    this.failures = 0;
    this.lastError = undefined;
  }

  /** Record a failed write (status) and return the error to throw. */
  private failed(op: TableError['op'], k: string | undefined, e: unknown): TableError {
    this.failures++;
    let id = '*';
    if (k !== undefined) {
      try {
        id = this.keyId(this.decKey(k));
      } catch {
        id = toBuf(k).toString('hex');
      }
    }
    const err = new TableError(this.name, op, id, e as Error);
    this.lastError = err.message;
    return err;
  }

  /**
   * flush() with the writes on a worker thread, the updates in one batch
   * (BpfMap.updateBatchAsync): for tables whose writes wait for an RCU grace
   * period (maps of maps), which then costs one grace period per batch, not
   * per entry. Changes stated in the same turn join the batch; a flush waits
   * for one in flight, then writes what is still pending. A change made while
   * a write is in flight stays pending.
   */
  async flushAsync(): Promise<void> {
    await undefined;
    while (this.flushing) await this.flushing.catch(() => undefined);
    if (!this.pending.size) return;
    const run = this.flushPendingAsync();
    this.flushing = run;
    try {
      await run;
    } finally {
      if (this.flushing === run) this.flushing = undefined;
    }
  }

  private async flushPendingAsync(): Promise<void> {
    const batch = [...this.pending].map((k) => ({ k, want: this.desired.get(k) }));
    const settle = (b: (typeof batch)[number]) => {
      if (this.desired.get(b.k) === b.want) this.pending.delete(b.k);
    };
    const ups = batch.filter((b) => b.want !== undefined);
    try {
      if (this.raw) {
        await this.map.updateBatchEncodedAsync(Buffer.concat(ups.map((b) => toBuf(b.k))), Buffer.concat(ups.map((b) => toBuf(b.want!))), ups.length);
      } else {
        await this.map.updateBatchAsync(ups.map((b) => [this.decKey(b.k), this.decValue(b.want!)] as const));
      }
    } catch {
      // Find the entry at fault one by one, so the error names it (written ones are written again).
      for (const b of ups) {
        try {
          await this.map.updateAsync(this.decKey(b.k), this.decValue(b.want!));
        } catch (e) {
          throw this.failed('update', b.k, e);
        }
      }
    }
    for (const b of ups) settle(b);
    for (const b of batch.filter((x) => x.want === undefined)) {
      if (this.desired.has(b.k)) continue; // wanted again meanwhile: the next flush writes it
      try {
        if (this.absentEnc !== undefined) this.write(b.k);
        else await this.map.deleteEncodedAsync(toBuf(b.k));
      } catch (e) {
        throw this.failed('delete', b.k, e);
      }
      settle(b);
    }
    if (!this.pending.size) {
      this.failures = 0;
      this.lastError = undefined;
    }
  }

  /** The kernel's value for one key now (undefined if absent). */
  kernelGet(key: K): V | undefined {
    const v = this.map.lookup(key);
    if (v === undefined || this.isAbsent(v)) return undefined;
    return v;
  }

  private isAbsent(v: V): boolean {
    return this.absent !== undefined && this.same(v, this.absent);
  }

  /** What the kernel map holds now (ARRAY tables: only indices not holding the absent value). */
  *kernelEntries(): Iterable<{ key: K; value: V }> {
    for (const [key, value] of this.map.entries()) {
      if (this.isAbsent(value)) continue;
      yield { key, value };
    }
  }

  /** Declare the kernel in sync with the desired table (after adopting what the kernel holds). */
  markClean(): void {
    this.pending.clear();
  }

  /** Remove every entry from the kernel map and the desired table now (fail closed). */
  clearAll(): void {
    for (const { key } of [...this.kernelEntries()]) this.pending.add(this.encKey(key));
    for (const k of this.desired.keys()) this.pending.add(k);
    this.desired = new Map();
    this.shared = false;
    this.flush();
  }

  close(): void {
    this.map.close();
  }

  /**
   * Compare the kernel map with the desired table and repair both directions.
   * Returns what was repaired; pending changes are written as part of it.
   */
  resync(): { updated: number; removed: number } {
    let updated = 0;
    let removed = 0;
    const seen = new Set<string>();
    let inKernel = 0;
    try {
      for (const { key, value } of [...this.kernelEntries()]) {
        inKernel++;
        const k = this.encKey(key);
        const want = this.desired.get(k);
        if (want === undefined) {
          this.write(k);
          if (!this.pending.has(k)) removed++;
          continue;
        }
        seen.add(k);
        if (!this.same(this.decValue(want), value)) {
          this.write(k);
          if (!this.pending.has(k)) updated++;
        }
      }
      for (const k of this.desired.keys()) {
        if (seen.has(k)) continue;
        this.write(k);
        if (!this.pending.has(k)) updated++;
      }
    } catch (e) {
      throw this.failed('resync', undefined, e);
    }
    this.pending.clear();
    this.failures = 0;
    this.lastError = undefined;
    this.inKernel = inKernel - removed + updated;
    this.repaired += updated + removed;
    this.lastResync = new Date().toISOString();
    return { updated, removed };
  }

  status(): TableStatus {
    return {
      map: this.name,
      desired: this.desired.size,
      inKernel: this.inKernel,
      pending: this.pending.size,
      failed: this.failures,
      lastError: this.lastError,
      lastResync: this.lastResync,
      driftRepaired: this.repaired,
    };
  }
}

/** Options for tables keyed by a u32 index or id. */
export function u32KeyOpts<V>(same: (a: V, b: V) => boolean, absent?: V): MapTableOptions<number, V> {
  return { keyId: (k) => String(k), same, absent };
}

/** Options for fd-valued tables (program arrays, maps of maps): compared by kernel object id, kept with their fd. */
export function fdRefOpts(): MapTableOptions<number, FdRef> {
  return { keyId: (k) => String(k), same: (a, b) => a.id === b.id, storeValue: fdRefStoreCodec };
}

/**
 * The node's tables: flushed with retries, resynced periodically, reported.
 * Groups (e.g. the per-endpoint policy maps) are summarised in status().
 */
export class Reconciler {
  private readonly tables = new Map<MapTable<any, any>, string | undefined>();
  private retryTimer?: NodeJS.Timeout;
  private resyncTimer?: NodeJS.Timeout;
  private retryDelayMs = 0;
  /** Called after a resync repaired drift in some table (for metrics and logs). */
  onDrift?: (table: string, repaired: { updated: number; removed: number }) => void;
  /** Called before each periodic resync, to refresh desired state that has no event of its own (node addresses). */
  beforeResync?: () => void;
  readonly counters = { flushFailures: 0, retries: 0, resyncs: 0, driftRepaired: 0 };

  constructor(private readonly log: Logger) {}

  /** Register a table; `group` summarises many tables of one kind in status(). */
  add<T extends MapTable<any, any>>(table: T, group?: string): T {
    this.tables.set(table, group);
    return table;
  }

  remove(table: MapTable<any, any>): void {
    this.tables.delete(table);
  }

  /**
   * Write every pending change. Failures are recorded per table and retried
   * with backoff (100 ms doubling to 10 s) until they succeed; returns false
   * if something is still pending.
   */
  flush(): boolean {
    let ok = true;
    for (const t of this.tables.keys()) {
      if (!t.dirty) continue;
      try {
        t.flush();
      } catch (e) {
        ok = false;
        this.counters.flushFailures++;
        this.log.error('map write failed; will retry', { table: t.name, error: e });
      }
    }
    if (ok) {
      this.retryDelayMs = 0;
      if (this.retryTimer) clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    } else this.scheduleRetry();
    return ok;
  }

  private scheduleRetry(): void {
    if (this.retryTimer) return;
    this.retryDelayMs = Math.min(10_000, this.retryDelayMs ? this.retryDelayMs * 2 : 100);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.counters.retries++;
      this.flush();
    }, this.retryDelayMs);
    this.retryTimer.unref();
  }

  /** Compare every table with the kernel and repair drift. */
  resyncAll(): { table: string; updated: number; removed: number }[] {
    this.counters.resyncs++;
    try {
      this.beforeResync?.();
    } catch (e) {
      this.log.error('refreshing desired state before resync failed', { error: e });
    }
    const out: { table: string; updated: number; removed: number }[] = [];
    for (const t of this.tables.keys()) {
      try {
        const r = t.resync();
        if (r.updated || r.removed) {
          out.push({ table: t.name, ...r });
          this.counters.driftRepaired += r.updated + r.removed;
          this.log.warn('map drift repaired', { table: t.name, ...r });
          this.onDrift?.(t.name, r);
        }
      } catch (e) {
        this.log.error('map resync failed; will retry', { table: t.name, error: e });
        this.scheduleRetry();
      }
    }
    return out;
  }

  /** Resync every table every intervalMs (0: never). */
  start(intervalMs: number): void {
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    if (intervalMs <= 0) return;
    this.resyncTimer = setInterval(() => this.resyncAll(), intervalMs);
    this.resyncTimer.unref();
  }

  stop(): void {
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.resyncTimer = undefined;
    this.retryTimer = undefined;
  }

  status(): TableStatus[] {
    const out: TableStatus[] = [];
    const groups = new Map<string, TableStatus>();
    for (const [t, group] of this.tables) {
      const s = t.status();
      if (!group) {
        out.push(s);
        continue;
      }
      const g = groups.get(group) ?? { map: group, desired: 0, inKernel: 0, pending: 0, failed: 0, driftRepaired: 0, tables: 0 };
      g.tables!++;
      g.desired += s.desired;
      g.inKernel = (g.inKernel ?? 0) + (s.inKernel ?? s.desired - s.pending);
      g.pending += s.pending;
      g.failed += s.failed;
      g.driftRepaired += s.driftRepaired;
      if (s.lastError) g.lastError = s.lastError;
      if (s.lastResync && (!g.lastResync || s.lastResync > g.lastResync)) g.lastResync = s.lastResync;
      groups.set(group, g);
    }
    return [...out, ...groups.values()];
  }
}

/** Undo stack for multi-step operations: each step registers its inverse. */
export class Undo {
  private readonly steps: { what: string; fn: () => void }[] = [];

  push(what: string, fn: () => void): void {
    this.steps.push({ what, fn });
  }

  /** Run every inverse in reverse order; failures are collected, never thrown. */
  run(): string[] {
    const errors: string[] = [];
    while (this.steps.length) {
      const s = this.steps.pop()!;
      try {
        s.fn();
      } catch (e) {
        errors.push(`undo ${s.what}: ${(e as Error).message}`);
      }
    }
    return errors;
  }

  clear(): void {
    this.steps.length = 0;
  }
}
