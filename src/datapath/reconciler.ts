/**
 * Desired-state tables for BPF maps. Callers state what a map should hold
 * (upsert/delete); flush() makes the kernel match the pending changes, resync()
 * compares the whole map with the desired table and repairs any drift.
 * Nothing else writes to a map.
 */
import type { BpfMap } from '../bpf';

export interface TableStatus {
  map: string;
  desired: number;
  pending: number;
  lastError?: string;
  lastResync?: string;
}

export class MapTable<K, V> {
  private readonly desired = new Map<string, { key: K; value: V }>();
  private readonly pending = new Set<string>();
  private readonly pendingKeys = new Map<string, K>();
  private lastError?: string;
  private lastResync?: string;

  constructor(
    readonly name: string,
    private readonly map: BpfMap<K, V>,
    private readonly keyId: (k: K) => string,
    private readonly same: (a: V, b: V) => boolean,
  ) {}

  upsert(key: K, value: V): void {
    const id = this.keyId(key);
    const cur = this.desired.get(id);
    if (cur && this.same(cur.value, value)) return;
    this.desired.set(id, { key, value });
    this.pending.add(id);
    this.pendingKeys.set(id, key);
  }

  delete(key: K): void {
    const id = this.keyId(key);
    this.desired.delete(id);
    this.pending.add(id);
    this.pendingKeys.set(id, key);
  }

  /** Make the desired table exactly `entries`: a diff against the current desired state. */
  replaceAll(entries: { key: K; value: V }[]): { upserts: number; deletes: number } {
    const next = new Map<string, { key: K; value: V }>();
    for (const e of entries) next.set(this.keyId(e.key), e);
    let upserts = 0;
    let deletes = 0;
    for (const [id, cur] of this.desired) {
      if (!next.has(id)) {
        this.delete(cur.key);
        deletes++;
      }
    }
    for (const e of next.values()) {
      const cur = this.desired.get(this.keyId(e.key));
      if (!cur || !this.same(cur.value, e.value)) upserts++;
      this.upsert(e.key, e.value);
    }
    return { upserts, deletes };
  }

  get size(): number {
    return this.desired.size;
  }

  get(key: K): V | undefined {
    return this.desired.get(this.keyId(key))?.value;
  }

  entries(): { key: K; value: V }[] {
    return [...this.desired.values()];
  }

  /** Apply pending changes to the kernel. Throws on the first failure (what failed stays pending). */
  flush(): void {
    for (const id of [...this.pending]) {
      const want = this.desired.get(id);
      const key = this.pendingKeys.get(id)!;
      try {
        if (want) this.map.update(want.key, want.value);
        else this.map.delete(key);
      } catch (e) {
        this.lastError = `${want ? 'update' : 'delete'} ${id} in ${this.name}: ${(e as Error).message}`;
        throw new Error(this.lastError);
      }
      this.pending.delete(id);
      this.pendingKeys.delete(id);
    }
    this.lastError = undefined;
  }

  /** What the kernel map holds now. */
  *kernelEntries(): Iterable<{ key: K; value: V }> {
    for (const [key, value] of this.map.entries()) yield { key, value };
  }

  /** Declare the kernel in sync with the desired table (after writing it another way). */
  markClean(): void {
    this.pending.clear();
    this.pendingKeys.clear();
  }

  /** Remove every entry from the kernel map and the desired table (fail closed). */
  clearAll(): void {
    this.desired.clear();
    this.markClean();
    for (const [k] of [...this.map.entries()]) this.map.delete(k);
  }

  close(): void {
    this.map.close();
  }

  /** Compare the kernel map with the desired table; fix both directions. */
  resync(): { updated: number; removed: number } {
    let updated = 0;
    let removed = 0;
    const seen = new Set<string>();
    for (const [k, v] of this.map.entries()) {
      const id = this.keyId(k);
      const want = this.desired.get(id);
      if (!want) {
        this.map.delete(k);
        removed++;
        continue;
      }
      seen.add(id);
      if (!this.same(want.value, v)) {
        this.map.update(want.key, want.value);
        updated++;
      }
    }
    for (const [id, want] of this.desired) {
      if (!seen.has(id)) {
        this.map.update(want.key, want.value);
        updated++;
      }
    }
    this.pending.clear();
    this.pendingKeys.clear();
    this.lastResync = new Date().toISOString();
    return { updated, removed };
  }

  status(): TableStatus {
    return { map: this.name, desired: this.desired.size, pending: this.pending.size, lastError: this.lastError, lastResync: this.lastResync };
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
