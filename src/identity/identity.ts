/**
 * Security identities: numeric ids for label sets.
 *  - reserved identities 1..11 (host, world, ...),
 *  - cluster identities from 256, one per distinct security label set,
 *  - local identities (CIDR) with the scope bit 1<<24; they never leave the node.
 * The allocator persists its table so ids are stable across agent restarts.
 */
import * as path from 'node:path';
import { readJson, writeFileAtomic } from '../util/fsutil';
import { canonicalLabels } from './labels';

export const ReservedIdentity = {
  unknown: 0,
  host: 1,
  world: 2,
  unmanaged: 3,
  health: 4,
  init: 5,
  'remote-node': 6,
  'kube-apiserver': 7,
  ingress: 8,
  'world-ipv4': 9,
  'world-ipv6': 10,
  'encrypted-overlay': 11,
} as const;
export type ReservedName = keyof typeof ReservedIdentity;

export const MIN_CLUSTER_IDENTITY = 256;
export const MAX_CLUSTER_IDENTITY = 0xffff;
export const LOCAL_IDENTITY_SCOPE = 1 << 24;

export interface Identity {
  id: number;
  labels: string[];
  reserved?: boolean;
  local?: boolean;
  refs?: number;
}

interface IdentityFile {
  identities: { id: number; labels: string[] }[];
}

export class IdentityAllocator {
  private readonly byKey = new Map<string, Identity>();
  private readonly byId = new Map<number, Identity>();
  private nextCluster = MIN_CLUSTER_IDENTITY;
  private nextLocal = LOCAL_IDENTITY_SCOPE + 1;
  private readonly file?: string;
  private readonly listeners: ((ev: { type: 'add' | 'delete'; identity: Identity }) => void)[] = [];

  constructor(stateDir?: string) {
    for (const [name, id] of Object.entries(ReservedIdentity)) {
      if (id === 0) continue;
      const ident: Identity = { id, labels: [`reserved:${name}`], reserved: true };
      this.byId.set(id, ident);
      this.byKey.set(ident.labels.join(','), ident);
    }
    if (stateDir) {
      this.file = path.join(stateDir, 'identities.json');
      const saved = readJson<IdentityFile>(this.file);
      for (const s of saved?.identities ?? []) this.insert({ id: s.id, labels: s.labels, local: (s.id & LOCAL_IDENTITY_SCOPE) !== 0, refs: 0 });
    }
  }

  onChange(fn: (ev: { type: 'add' | 'delete'; identity: Identity }) => void): void {
    this.listeners.push(fn);
  }

  private insert(ident: Identity): void {
    this.byKey.set(ident.labels.join(','), ident);
    this.byId.set(ident.id, ident);
    if (ident.local) this.nextLocal = Math.max(this.nextLocal, ident.id + 1);
    else this.nextCluster = Math.max(this.nextCluster, ident.id + 1);
  }

  /** Look up or allocate the identity for a label set and take a reference. */
  acquire(labels: Iterable<string>): Identity {
    const canon = canonicalLabels(labels);
    const key = canon.join(',');
    const cur = this.byKey.get(key);
    if (cur) {
      if (!cur.reserved) cur.refs = (cur.refs ?? 0) + 1;
      return cur;
    }
    const local = canon.length > 0 && canon.every((l) => l.startsWith('cidr:') || l.startsWith('ipblock:') || l === 'reserved:world');
    const id = local ? this.allocLocal() : this.allocCluster();
    const ident: Identity = { id, labels: canon, local, refs: 1 };
    this.insert(ident);
    this.save();
    for (const l of this.listeners) l({ type: 'add', identity: ident });
    return ident;
  }

  /** Drop a reference; identities with no references are removed. */
  release(id: number): void {
    const ident = this.byId.get(id);
    if (!ident || ident.reserved) return;
    ident.refs = Math.max(0, (ident.refs ?? 1) - 1);
    if (ident.refs === 0) {
      this.byId.delete(id);
      this.byKey.delete(ident.labels.join(','));
      this.save();
      for (const l of this.listeners) l({ type: 'delete', identity: ident });
    }
  }

  /** After a restart: references are re-taken by restored endpoints; drop the rest. */
  pruneUnreferenced(): void {
    let changed = false;
    for (const ident of [...this.byId.values()]) {
      if (!ident.reserved && (ident.refs ?? 0) === 0) {
        this.byId.delete(ident.id);
        this.byKey.delete(ident.labels.join(','));
        changed = true;
      }
    }
    if (changed) this.save();
  }

  get(id: number): Identity | undefined {
    return this.byId.get(id);
  }

  list(): Identity[] {
    return [...this.byId.values()].sort((a, b) => a.id - b.id);
  }

  private allocCluster(): number {
    for (let i = 0; i <= MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY; i++) {
      const id = MIN_CLUSTER_IDENTITY + ((this.nextCluster - MIN_CLUSTER_IDENTITY + i) % (MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1));
      if (!this.byId.has(id)) { this.nextCluster = id + 1; return id; }
    }
    throw new Error('identity: cluster identity space (256..65535) is exhausted');
  }

  private allocLocal(): number {
    for (let i = 0; i < 0xffffff; i++) {
      const id = LOCAL_IDENTITY_SCOPE + 1 + ((this.nextLocal - LOCAL_IDENTITY_SCOPE - 1 + i) % 0xfffffe);
      if (!this.byId.has(id)) { this.nextLocal = id + 1; return id; }
    }
    throw new Error('identity: local identity space is exhausted');
  }

  /**
   * Re-insert an identity with a known id (an endpoint restored from disk keeps
   * the id its programs were loaded with, even if the table was not saved).
   */
  restore(id: number, labels: string[]): Identity {
    const canon = canonicalLabels(labels);
    const cur = this.byKey.get(canon.join(','));
    if (cur) return this.acquire(canon);
    if (this.byId.has(id)) return this.acquire(canon);
    const ident: Identity = { id, labels: canon, local: (id & LOCAL_IDENTITY_SCOPE) !== 0, refs: 1 };
    this.insert(ident);
    this.save();
    for (const l of this.listeners) l({ type: 'add', identity: ident });
    return ident;
  }

  /**
   * Saves are batched: many identities appear in one change (a policy with
   * thousands of CIDRs), so the file is written once, right after the change.
   * Crash safety does not depend on it: endpoints restore their recorded ids.
   */
  private save(): void {
    if (!this.file || this.saveScheduled) return;
    this.saveScheduled = true;
    setImmediate(() => this.flush());
  }
  private saveScheduled = false;

  /** Write the table now if a save is pending. */
  flush(): void {
    if (!this.file || !this.saveScheduled) return;
    this.saveScheduled = false;
    const identities = [...this.byId.values()].filter((i) => !i.reserved).map((i) => ({ id: i.id, labels: i.labels }));
    writeFileAtomic(this.file, JSON.stringify({ identities } satisfies IdentityFile) + '\n');
  }
}

export function identityName(id: number, alloc?: IdentityAllocator): string {
  for (const [name, rid] of Object.entries(ReservedIdentity)) if (rid === id && id !== 0) return name;
  return alloc?.get(id) ? String(id) : String(id);
}
