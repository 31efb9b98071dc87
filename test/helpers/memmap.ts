/**
 * An in-memory stand-in for a BPF hash map, for unit tests of the desired-state
 * logic above the kernel (MapTable, the ipcache). Keys are compared by their
 * encoded bytes, as the kernel does. Never used where the kernel is under test.
 */
import type { Codec } from '../../src/bpf';

export class MemMap<K, V> {
  private readonly m = new Map<string, { k: K; v: V }>();
  failNext = 0;

  constructor(
    private readonly kc: Codec<K>,
    private readonly vc: Codec<V>,
  ) {}

  private id(k: K): string {
    return this.kc.encode(k).toString('hex');
  }

  get codecs(): { key: Codec<K>; value: Codec<V> } {
    return { key: this.kc, value: this.vc };
  }

  updateEncoded(k: Buffer, v: Buffer): void {
    this.update(this.kc.decode(k, 0), this.vc.decode(v, 0));
  }

  deleteEncoded(k: Buffer): boolean {
    return this.delete(this.kc.decode(k, 0));
  }

  async deleteEncodedAsync(k: Buffer): Promise<boolean> {
    await undefined;
    return this.deleteEncoded(k);
  }

  async updateBatchEncodedAsync(keys: Buffer, values: Buffer, count: number): Promise<void> {
    const list: [K, V][] = [];
    for (let i = 0; i < count; i++) list.push([this.kc.decode(keys, i * this.kc.size), this.vc.decode(values, i * this.vc.size)]);
    await this.updateBatchAsync(list);
  }

  lookup(k: K): V | undefined {
    return this.m.get(this.id(k))?.v;
  }

  update(k: K, v: V): void {
    if (this.failNext > 0) {
      this.failNext--;
      throw Object.assign(new Error('bpf(BPF_MAP_UPDATE_ELEM): No space left on device (errno 28)'), { code: 'E2BIG' });
    }
    this.m.set(this.id(k), { k: this.kc.decode(this.kc.encode(k)), v: this.vc.decode(this.vc.encode(v)) });
  }

  async updateAsync(k: K, v: V): Promise<void> {
    await undefined;
    this.update(k, v);
  }

  /** As the kernel's batch update: entries in order, stopping at the first failure. */
  async updateBatchAsync(entries: Iterable<readonly [K, V]>): Promise<void> {
    await undefined;
    this.batches++;
    for (const [k, v] of entries) this.update(k, v);
  }

  /** How many batch updates were made. */
  batches = 0;

  delete(k: K): boolean {
    return this.m.delete(this.id(k));
  }

  *entries(): IterableIterator<[K, V]> {
    for (const { k, v } of [...this.m.values()]) yield [k, v];
  }

  get size(): number {
    return this.m.size;
  }

  close(): void {}
}
