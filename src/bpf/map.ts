/**
 * BpfMap: a BPF map fd with typed keys/values.
 *
 * A BpfMap owns its fd; views made with withCodecs() share it (closing any view
 * closes the fd for all of them). Keys/values are encoded with codecs whose
 * sizes must match the map's key/value sizes. Per-CPU maps (PERCPU_HASH,
 * PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE) hold one value per
 * possible CPU: read them with lookupPerCpu/entriesPerCpu; update() writes the
 * same value to every CPU, updatePerCpu() one value per CPU.
 */
import * as path from 'node:path';
import { Codec, rawCodec } from './codec';
import { BpfErrorContext, bpfUsageError, toBpfError, wrap } from './errors';
import { MapInfo, native } from './native';

export const BPF_MAP_TYPE = {
  HASH: 1,
  ARRAY: 2,
  PROG_ARRAY: 3,
  PERF_EVENT_ARRAY: 4,
  PERCPU_HASH: 5,
  PERCPU_ARRAY: 6,
  STACK_TRACE: 7,
  CGROUP_ARRAY: 8,
  LRU_HASH: 9,
  LRU_PERCPU_HASH: 10,
  LPM_TRIE: 11,
  ARRAY_OF_MAPS: 12,
  HASH_OF_MAPS: 13,
  DEVMAP: 14,
  SOCKMAP: 15,
  CPUMAP: 16,
  XSKMAP: 17,
  SOCKHASH: 18,
  CGROUP_STORAGE: 19,
  REUSEPORT_SOCKARRAY: 20,
  PERCPU_CGROUP_STORAGE: 21,
  QUEUE: 22,
  STACK: 23,
  SK_STORAGE: 24,
  DEVMAP_HASH: 25,
  STRUCT_OPS: 26,
  RINGBUF: 27,
} as const;

const PERCPU_TYPES: ReadonlySet<number> = new Set([
  BPF_MAP_TYPE.PERCPU_HASH,
  BPF_MAP_TYPE.PERCPU_ARRAY,
  BPF_MAP_TYPE.LRU_PERCPU_HASH,
  BPF_MAP_TYPE.PERCPU_CGROUP_STORAGE,
]);

export type UpdateFlag = 'any' | 'noexist' | 'exist';
const UPDATE_FLAGS: Record<UpdateFlag, number> = { any: 0, noexist: 1, exist: 2 };

/** Shared between a map and its codec views. */
interface FdState {
  fd: number;
  closed: boolean;
}

let ncpus: number | undefined;
/** libbpf_num_possible_cpus(), cached. */
export function numPossibleCpus(): number {
  if (ncpus === undefined) ncpus = native().numPossibleCpus();
  return ncpus;
}

/** BPF_F_RDONLY: the map fd can only be read. */
const BPF_F_RDONLY = 1 << 3;

export class BpfMap<K = Buffer, V = Buffer> {
  readonly name: string;
  /** BPF_MAP_TYPE_* */
  readonly type: number;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly flags: number;
  /** kernel map id */
  readonly id: number;
  readonly isPerCpu: boolean;
  /** bytes per CPU slot in per-CPU values: roundup(valueSize, 8) */
  private readonly cpuStride: number;
  /** bytes the kernel reads/writes per value (all CPUs for per-CPU maps) */
  private readonly valueLen: number;

  private constructor(
    private readonly state: FdState,
    info: MapInfo,
    name: string,
    private readonly keyCodec: Codec<K>,
    private readonly valueCodec: Codec<V>,
  ) {
    this.name = name;
    this.type = info.type;
    this.keySize = info.keySize;
    this.valueSize = info.valueSize;
    this.maxEntries = info.maxEntries;
    this.flags = info.flags;
    this.id = info.id;
    this.isPerCpu = PERCPU_TYPES.has(info.type);
    this.cpuStride = Math.ceil(info.valueSize / 8) * 8;
    this.valueLen = this.isPerCpu ? this.cpuStride * numPossibleCpus() : info.valueSize;
  }

  /** Open a pinned map. name (for messages) defaults to the pin's basename. */
  /** Open a pinned map; readOnly asks the kernel for a read-only fd (BPF_F_RDONLY): updates then fail with EPERM. */
  static fromPin(pinPath: string, name?: string, opts: { readOnly?: boolean } = {}): BpfMap {
    const nm = name ?? path.basename(pinPath);
    const fd = wrap({ op: 'open pinned map', map: nm, path: pinPath }, () => native().objGet(pinPath, opts.readOnly ? BPF_F_RDONLY : 0));
    try {
      return BpfMap.fromFd(fd, nm);
    } catch (e) {
      native().close(fd);
      throw e;
    }
  }

  /** Create a map (not pinned: pin() it or keep the BpfMap open, or it is gone when closed). */
  static create(spec: { type: number; name: string; keySize: number; valueSize: number; maxEntries: number; flags?: number }): BpfMap {
    const fd = wrap({ op: 'create map', map: spec.name }, () =>
      native().mapCreate(spec.type, spec.name, spec.keySize, spec.valueSize, spec.maxEntries, spec.flags ?? 0),
    );
    try {
      return BpfMap.fromFd(fd, spec.name);
    } catch (e) {
      native().close(fd);
      throw e;
    }
  }

  /** Wrap a map fd; the BpfMap takes ownership (closes it on close()). name defaults to the kernel's map name. */
  static fromFd(fd: number, name?: string): BpfMap {
    const info = wrap({ op: 'map info', map: name ?? `fd ${fd}` }, () => native().mapInfo(fd));
    return new BpfMap<Buffer, Buffer>({ fd, closed: false }, info, name ?? info.name, rawCodec(info.keySize), rawCodec(info.valueSize));
  }

  /** The codecs of this view (a desired-state table keeps entries encoded with them). */
  get codecs(): { key: Codec<K>; value: Codec<V> } {
    return { key: this.keyCodec, value: this.valueCodec };
  }

  /** The fd (shared by all views). Throws once closed. */
  get fd(): number {
    if (this.state.closed) throw bpfUsageError({ op: 'use', map: this.name }, 'map is closed', 'EBADF', 9);
    return this.state.fd;
  }

  get closed(): boolean {
    return this.state.closed;
  }

  /** A typed view sharing this map's fd. */
  withCodecs<K2, V2>(keyCodec: Codec<K2>, valueCodec: Codec<V2>): BpfMap<K2, V2> {
    if (keyCodec.size !== this.keySize)
      throw bpfUsageError({ op: 'withCodecs', map: this.name }, `key codec is ${keyCodec.size} bytes but the map's key size is ${this.keySize}`);
    if (valueCodec.size !== this.valueSize)
      throw bpfUsageError({ op: 'withCodecs', map: this.name }, `value codec is ${valueCodec.size} bytes but the map's value size is ${this.valueSize}`);
    return new BpfMap<K2, V2>(this.state, this.info0(), this.name, keyCodec, valueCodec);
  }

  private info0(): MapInfo {
    return {
      id: this.id, type: this.type, keySize: this.keySize, valueSize: this.valueSize, maxEntries: this.maxEntries,
      flags: this.flags, name: this.name, btfId: 0, btfKeyTypeId: 0, btfValueTypeId: 0,
    };
  }

  /** Fresh kernel info for the map. */
  info(): MapInfo {
    return wrap(this.ctx('info'), () => native().mapInfo(this.fd));
  }

  private ctx(op: string): BpfErrorContext {
    return { op, map: this.name };
  }

  private encKey(k: K, op: string): Buffer {
    return wrap(this.ctx(`${op} (encode key)`), () => this.keyCodec.encode(k));
  }

  private encValue(v: V, op: string): Buffer {
    return wrap(this.ctx(`${op} (encode value)`), () => this.valueCodec.encode(v));
  }

  private notPerCpu(op: string): void {
    if (this.isPerCpu) throw bpfUsageError(this.ctx(op), `map is per-CPU: use ${op}PerCpu()`);
  }

  /** The value, or undefined if the key is absent. Not for per-CPU maps (lookupPerCpu). */
  lookup(k: K): V | undefined {
    this.notPerCpu('lookup');
    const key = this.encKey(k, 'lookup');
    const b = wrap(this.ctx('lookup'), () => native().mapLookup(this.fd, key, this.valueLen));
    return b === null ? undefined : this.valueCodec.decode(b, 0);
  }

  /** One value per possible CPU, or undefined if absent. */
  lookupPerCpu(k: K): V[] | undefined {
    if (!this.isPerCpu) throw bpfUsageError(this.ctx('lookupPerCpu'), 'map is not per-CPU: use lookup()');
    const key = this.encKey(k, 'lookupPerCpu');
    const b = wrap(this.ctx('lookupPerCpu'), () => native().mapLookup(this.fd, key, this.valueLen));
    return b === null ? undefined : this.splitPerCpu(b, 0);
  }

  private splitPerCpu(b: Buffer, off: number): V[] {
    const out: V[] = [];
    const n = this.valueLen / this.cpuStride;
    for (let i = 0; i < n; i++) out.push(this.valueCodec.decode(b, off + i * this.cpuStride));
    return out;
  }

  private valueBytes(v: V, op: string): Buffer {
    const one = this.encValue(v, op);
    if (!this.isPerCpu) return one;
    const all = Buffer.alloc(this.valueLen);
    for (let o = 0; o < this.valueLen; o += this.cpuStride) one.copy(all, o);
    return all;
  }

  /** Insert/replace. On per-CPU maps the value is written to every CPU. */
  update(k: K, v: V, flag: UpdateFlag = 'any'): void {
    const key = this.encKey(k, 'update');
    const val = this.valueBytes(v, 'update');
    wrap(this.ctx('update'), () => native().mapUpdate(this.fd, key, val, UPDATE_FLAGS[flag]));
  }

  /**
   * update() of a key and value already encoded with this view's codecs (what
   * a desired-state table keeps). Not for per-CPU maps.
   */
  updateEncoded(key: Buffer, value: Buffer, flag: UpdateFlag = 'any'): void {
    this.notPerCpu('updateEncoded');
    wrap(this.ctx('update'), () => native().mapUpdate(this.fd, key, value, UPDATE_FLAGS[flag]));
  }

  /** delete() of an encoded key: true if deleted, false if absent. */
  deleteEncoded(key: Buffer): boolean {
    return wrap(this.ctx('delete'), () => native().mapDelete(this.fd, key));
  }

  /** deleteEncoded() on a worker thread (maps of maps wait for a grace period). The map must stay open until it settles. */
  async deleteEncodedAsync(key: Buffer): Promise<boolean> {
    try {
      return await native().mapDeleteAsync(this.fd, key);
    } catch (e) {
      throw toBpfError(e, this.ctx('delete (async)'));
    }
  }

  /** updateBatchAsync() of `count` encoded keys and values laid end to end. Not for per-CPU maps. */
  async updateBatchEncodedAsync(keys: Buffer, values: Buffer, count: number, flag: UpdateFlag = 'any'): Promise<void> {
    this.notPerCpu('updateBatchEncodedAsync');
    if (!count) return;
    try {
      await native().mapUpdateBatchAsync(this.fd, keys, values, count, UPDATE_FLAGS[flag]);
    } catch (e) {
      throw toBpfError(e, this.ctx('update batch (async)'));
    }
  }

  /** Per-CPU maps: one value per possible CPU (vs.length must equal numPossibleCpus()). */
  /**
   * update() on a worker thread: for maps whose update waits for an RCU grace
   * period (maps of maps), so the event loop is not blocked meanwhile. The map
   * must stay open until the promise settles.
   */
  async updateAsync(k: K, v: V, flag: UpdateFlag = 'any'): Promise<void> {
    const key = this.encKey(k, 'update');
    const val = this.valueBytes(v, 'update');
    try {
      await native().mapUpdateAsync(this.fd, key, val, UPDATE_FLAGS[flag]);
    } catch (e) {
      throw toBpfError(e, this.ctx('update (async)'));
    }
  }

  updatePerCpu(k: K, vs: V[], flag: UpdateFlag = 'any'): void {
    if (!this.isPerCpu) throw bpfUsageError(this.ctx('updatePerCpu'), 'map is not per-CPU: use update()');
    const n = this.valueLen / this.cpuStride;
    if (vs.length !== n) throw bpfUsageError(this.ctx('updatePerCpu'), `got ${vs.length} values, need one per possible CPU (${n})`);
    const key = this.encKey(k, 'updatePerCpu');
    const all = Buffer.alloc(this.valueLen);
    vs.forEach((v, i) => this.encValue(v, 'updatePerCpu').copy(all, i * this.cpuStride));
    wrap(this.ctx('updatePerCpu'), () => native().mapUpdate(this.fd, key, all, UPDATE_FLAGS[flag]));
  }

  /** true if deleted, false if the key was absent. */
  delete(k: K): boolean {
    const key = this.encKey(k, 'delete');
    return wrap(this.ctx('delete'), () => native().mapDelete(this.fd, key));
  }

  /** All keys (BPF_MAP_GET_NEXT_KEY walk). */
  keys(): K[] {
    const out: K[] = [];
    const fd = this.fd;
    let cur: Buffer | null = null;
    // a concurrently modified hash map can restart the walk: cap it
    const cap = Math.max(this.maxEntries, 1) * 2;
    while (out.length < cap) {
      const prev: Buffer | null = cur;
      cur = wrap(this.ctx('keys'), () => native().mapNextKey(fd, prev, this.keySize));
      if (cur === null) break;
      out.push(this.keyCodec.decode(cur, 0));
    }
    return out;
  }

  private dump(op: string): { keys: Buffer; values: Buffer; count: number } {
    return wrap(this.ctx(op), () => native().mapLookupBatch(this.fd, this.keySize, this.valueLen, this.maxEntries));
  }

  /** All entries, read with BPF_MAP_LOOKUP_BATCH where the map supports it. Not for per-CPU maps. */
  entries(): [K, V][] {
    this.notPerCpu('entries');
    const r = this.dump('entries');
    const out: [K, V][] = [];
    for (let i = 0; i < r.count; i++)
      out.push([this.keyCodec.decode(r.keys, i * this.keySize), this.valueCodec.decode(r.values, i * this.valueLen)]);
    return out;
  }

  /**
   * The whole map's raw keys and values (key i at i * keySize, value i at
   * i * valueSize), read on a worker thread: for large maps scanned in the
   * background (conntrack GC), so the event loop keeps serving meanwhile.
   */
  async rawEntriesAsync(): Promise<{ keys: Buffer; values: Buffer; count: number }> {
    this.notPerCpu('rawEntriesAsync');
    try {
      return await native().mapLookupBatchAsync(this.fd, this.keySize, this.valueLen, this.maxEntries);
    } catch (e) {
      throw toBpfError(e, this.ctx('rawEntriesAsync'));
    }
  }

  /** Per-CPU maps: all entries with one value per possible CPU. */
  entriesPerCpu(): [K, V[]][] {
    if (!this.isPerCpu) throw bpfUsageError(this.ctx('entriesPerCpu'), 'map is not per-CPU: use entries()');
    const r = this.dump('entriesPerCpu');
    const out: [K, V[]][] = [];
    for (let i = 0; i < r.count; i++)
      out.push([this.keyCodec.decode(r.keys, i * this.keySize), this.splitPerCpu(r.values, i * this.valueLen)]);
    return out;
  }

  /**
   * updateBatch() on a worker thread. For maps of maps the kernel waits for an
   * RCU grace period once per syscall: a batch installs many slots for one.
   */
  async updateBatchAsync(entries: Iterable<readonly [K, V]>, flag: UpdateFlag = 'any'): Promise<void> {
    const list = [...entries];
    if (!list.length) return;
    const keys = Buffer.alloc(list.length * this.keySize);
    const vals = Buffer.alloc(list.length * this.valueLen);
    list.forEach(([k, v], i) => {
      this.encKey(k, 'updateBatch').copy(keys, i * this.keySize);
      this.valueBytes(v, 'updateBatch').copy(vals, i * this.valueLen);
    });
    try {
      await native().mapUpdateBatchAsync(this.fd, keys, vals, list.length, UPDATE_FLAGS[flag]);
    } catch (e) {
      throw toBpfError(e, this.ctx('update batch (async)'));
    }
  }

  /** BPF_MAP_UPDATE_BATCH (per-element fallback for map types without batch ops). */
  updateBatch(entries: Iterable<readonly [K, V]>, flag: UpdateFlag = 'any'): void {
    const list = [...entries];
    if (!list.length) return;
    const keys = Buffer.alloc(list.length * this.keySize);
    const vals = Buffer.alloc(list.length * this.valueLen);
    list.forEach(([k, v], i) => {
      this.encKey(k, 'updateBatch').copy(keys, i * this.keySize);
      this.valueBytes(v, 'updateBatch').copy(vals, i * this.valueLen);
    });
    wrap(this.ctx('updateBatch'), () => native().mapUpdateBatch(this.fd, keys, vals, list.length, UPDATE_FLAGS[flag]));
  }

  /** BPF_MAP_DELETE_BATCH; throws ENOENT at the first absent key (earlier keys are deleted). */
  deleteBatch(keys: Iterable<K>): void {
    const list = [...keys];
    if (!list.length) return;
    const buf = Buffer.alloc(list.length * this.keySize);
    list.forEach((k, i) => this.encKey(k, 'deleteBatch').copy(buf, i * this.keySize));
    wrap(this.ctx('deleteBatch'), () => native().mapDeleteBatch(this.fd, buf, list.length));
  }

  /** BPF_MAP_DELETE_BATCH of `count` raw keys laid out one after the other (entries already gone are skipped). */
  deleteRawBatch(keys: Buffer, count: number): void {
    if (keys.length < count * this.keySize) throw bpfUsageError(this.ctx('deleteRawBatch'), `${count} keys need ${count * this.keySize} bytes, got ${keys.length}`);
    wrap(this.ctx('deleteRawBatch'), () => native().mapDeleteBatch(this.fd, keys, count, true));
  }

  /** Pin at path (bpffs). */
  pin(pinPath: string): void {
    wrap({ op: 'pin', map: this.name, path: pinPath }, () => native().objPin(this.fd, pinPath));
  }

  /** Close the fd (shared with all codec views). Idempotent. Pins stay. */
  close(): void {
    if (this.state.closed) return;
    this.state.closed = true;
    native().close(this.state.fd);
  }
}
