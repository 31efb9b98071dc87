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
  /** Known from the cluster store (cluster mode): kept while the cluster has it, referenced or not. */
  cluster?: boolean;
  /** A what-if identity of a policy trace: never referenced in the cluster, gone at release. */
  transient?: boolean;
}

/**
 * Where cluster identities come from in cluster mode (src/identity/cluster.ts):
 * a watched view of every identity in the cluster, allocation of new ones, and
 * this node's references.
 */
export interface ClusterIdentityBackend {
  all(): { id: number; labels: string[] }[];
  onChange(fn: (id: number, labels: string[] | undefined) => void): void;
  lookup(canonical: string[]): number | undefined;
  allocate(canonical: string[]): Promise<number>;
  ensure(id: number, canonical: string[]): Promise<number>;
  ref(id: number): void;
  unref(id: number): void;
}

/** A label set whose identity only the cluster store can hand out, asked for synchronously. */
export class IdentityPendingError extends Error {}

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

  /**
   * Look up or allocate the identity for a label set and take a reference.
   * In cluster mode a label set the cluster has not seen yet throws
   * IdentityPendingError: use acquire, which allocates in the cluster.
   */
  acquireSync(labels: Iterable<string>): Identity {
    const canon = canonicalLabels(labels);
    const key = canon.join(',');
    const cur = this.byKey.get(key);
    if (cur) {
      if (!cur.reserved) {
        cur.refs = (cur.refs ?? 0) + 1;
        if (cur.refs === 1 && !cur.local && !cur.transient) this.cluster?.ref(cur.id);
      }
      return cur;
    }
    const local = isLocalLabelSet(canon);
    if (!local && this.cluster) {
      throw new IdentityPendingError(`identity for ${canon.join(',')} is not known in the cluster yet (it is allocated in the cluster store)`);
    }
    const id = local ? this.allocLocal() : this.allocCluster();
    const ident: Identity = { id, labels: canon, local, refs: 1 };
    this.insert(ident);
    this.save();
    for (const l of this.listeners) l({ type: 'add', identity: ident });
    return ident;
  }

  /**
   * The identity of a label set, allocated cluster-wide in cluster mode (same
   * label set, same id on every node), with a reference taken. A label set the
   * node already knows needs no round trip, so pods whose identity is known get
   * networking while the cluster store is unreachable.
   */
  async acquire(labels: Iterable<string>): Promise<Identity> {
    const canon = canonicalLabels(labels);
    const cur = this.byKey.get(canon.join(','));
    if (cur || !this.cluster || isLocalLabelSet(canon)) return this.acquireSync(canon);
    const id = await this.cluster.allocate(canon);
    // The watch has inserted it by now (allocate waits for it); insert anyway if not.
    if (!this.byKey.has(canon.join(','))) this.clusterIdentity(id, canon);
    return this.acquireSync(canon);
  }

  /**
   * For what-if questions (policy trace): the identity of a label set, taken
   * synchronously and released before anything else runs. A label set the
   * cluster has not seen gets a free id that never leaves this node.
   */
  acquireTransient(labels: Iterable<string>): Identity {
    const canon = canonicalLabels(labels);
    if (this.byKey.has(canon.join(',')) || !this.cluster || isLocalLabelSet(canon)) return this.acquireSync(canon);
    const ident: Identity = { id: this.allocCluster(), labels: canon, refs: 1, transient: true };
    this.insert(ident);
    for (const l of this.listeners) l({ type: 'add', identity: ident });
    return ident;
  }

  /** A local (CIDR/FQDN) identity, never asked of the cluster; synchronous. */
  acquireLocal(labels: Iterable<string>): Identity {
    const canon = canonicalLabels(labels);
    if (!isLocalLabelSet(canon)) throw new Error(`identity: ${canon.join(',')} is not a local (CIDR) label set`);
    return this.acquireSync(canon);
  }

  /** Cluster mode: cluster identities come from (and references go to) the cluster store. */
  attachCluster(backend: ClusterIdentityBackend): void {
    this.cluster = backend;
    backend.onChange((id, labels) => this.clusterIdentity(id, labels));
    for (const c of backend.all()) this.clusterIdentity(c.id, c.labels);
    for (const ident of this.byId.values()) {
      if (ident.reserved || ident.local || (ident.refs ?? 0) === 0) continue;
      backend.ref(ident.id);
      // Identities restored from disk (endpoints of an earlier run) keep their ids in the cluster.
      if (!ident.cluster) {
        backend.ensure(ident.id, ident.labels).then(
          (cid) => {
            if (cid !== ident.id) this.conflicts.push({ id: ident.id, labels: ident.labels, clusterId: cid });
          },
          () => undefined,
        );
      }
    }
  }
  private cluster?: ClusterIdentityBackend;
  /** Restored identities whose label set has another id in the cluster (for status). */
  readonly conflicts: { id: number; labels: string[]; clusterId: number }[] = [];

  /** An identity the cluster gained (labels) or lost (undefined, collected by the operator). */
  private clusterIdentity(id: number, labels: string[] | undefined): void {
    const ident = this.byId.get(id);
    if (!labels) {
      if (!ident || ident.reserved || ident.local) return;
      ident.cluster = false;
      if ((ident.refs ?? 0) === 0) {
        this.byId.delete(id);
        this.byKey.delete(ident.labels.join(','));
        this.save();
        for (const l of this.listeners) l({ type: 'delete', identity: ident });
      }
      return;
    }
    const canon = canonicalLabels(labels);
    if (ident) {
      if (ident.labels.join(',') === canon.join(',')) ident.cluster = true;
      return; // an id we hold for other labels: kept (reported through conflicts when restored)
    }
    if (this.byKey.has(canon.join(','))) return;
    const fresh: Identity = { id, labels: canon, refs: 0, cluster: true };
    this.insert(fresh);
    this.save();
    for (const l of this.listeners) l({ type: 'add', identity: fresh });
  }

  /** Drop a reference; identities with no references are removed (cluster mode: kept while the cluster has them). */
  release(id: number): void {
    const ident = this.byId.get(id);
    if (!ident || ident.reserved) return;
    ident.refs = Math.max(0, (ident.refs ?? 1) - 1);
    if (ident.refs === 0 && !ident.local && !ident.transient) this.cluster?.unref(id);
    if (ident.refs === 0 && ident.cluster) return;
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
      if (!ident.reserved && !ident.cluster && (ident.refs ?? 0) === 0) {
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
    if (cur) return this.acquireSync(canon);
    if (this.byId.has(id)) return this.acquireSync(canon);
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

/** CIDR (and world) label sets: node-local identities that never leave the node. */
export function isLocalLabelSet(canon: string[]): boolean {
  return canon.length > 0 && canon.every((l) => l.startsWith('cidr:') || l.startsWith('ipblock:') || l === 'reserved:world');
}

export function identityName(id: number, alloc?: IdentityAllocator): string {
  for (const [name, rid] of Object.entries(ReservedIdentity)) if (rid === id && id !== 0) return name;
  return alloc?.get(id) ? String(id) : String(id);
}
