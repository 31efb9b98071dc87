/**
 * Cluster-wide security identities (cluster mode): the same label set gets the
 * same numeric identity on every node.
 *
 *   identities/v1/id/<id>            {labels}   the master key
 *   identities/v1/labels/<label-set> "<id>"     the index: one label set, one id
 *   identities/v1/refs/<id>/<node>   ""         node <node> uses <id> (on the node's lease)
 *
 * Allocation: look the label set up in the watched cache; if unknown, pick a
 * free id (at random in 256..65535, so nodes allocating different label sets
 * at once rarely pick the same) and create both the master key and the index
 * in one transaction that succeeds only if neither exists. If the index exists,
 * another node won the race for this label set: take its id. If only the id
 * was taken, pick another and retry (backoff from 20 ms, 16 attempts). Nobody
 * holds a lock; nothing can produce two ids for one label set.
 *
 * References are leased keys: a node that dies drops its references with its
 * lease. Identities no node references are the operator's to collect (it
 * deletes the master key and the index together, only while no reference
 * exists); an identity this node references that vanishes anyway is recreated
 * with the same id.
 *
 * Local identities (CIDR, FQDN; scope bit 1<<24) never come here and never go
 * on the wire.
 */
import { Kvstore, KvstoreConflictError, LeasedKeys, Reflector, ReflectorEvent } from '../kvstore';
import { IDENTITY_IDS, IDENTITY_REFS, identityIdKey, identityLabelsKey, identityRefKey, unescapeSegment } from '../kvstore/keys';
import type { Logger } from '../util/log';
import { MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY } from './identity';

const ATTEMPTS = 16;

export class ClusterIdentities {
  private readonly ids: Reflector;
  private readonly byLabels = new Map<string, number>();
  private readonly byId = new Map<number, string[]>();
  private readonly listeners: ((id: number, labels: string[] | undefined) => void)[] = [];
  readonly stats = { allocations: 0, conflicts: 0 };

  constructor(
    private readonly kv: Kvstore,
    private readonly keys: LeasedKeys,
    private readonly node: string,
    private readonly log: Logger,
  ) {
    this.ids = new Reflector(kv, IDENTITY_IDS, log.child({ component: 'identities' }));
    this.ids.subscribe((evs) => this.onEvents(evs));
  }

  async start(timeoutMs?: number): Promise<void> {
    await this.ids.start(timeoutMs);
  }

  stop(): void {
    this.ids.stop();
  }

  get watchEvents(): number {
    return this.ids.stats.events;
  }

  /** Called for every identity the cluster gains (labels) or loses (undefined). */
  onChange(fn: (id: number, labels: string[] | undefined) => void): void {
    this.listeners.push(fn);
  }

  get synced(): boolean {
    return this.ids.synced;
  }

  lookup(canonical: string[]): number | undefined {
    return this.byLabels.get(canonical.join(','));
  }

  labelsOf(id: number): string[] | undefined {
    return this.byId.get(id);
  }

  all(): { id: number; labels: string[] }[] {
    return [...this.byId].map(([id, labels]) => ({ id, labels }));
  }

  private onEvents(evs: ReflectorEvent[]): void {
    for (const ev of evs) {
      const id = Number(ev.key);
      if (!Number.isInteger(id) || id < MIN_CLUSTER_IDENTITY || id > MAX_CLUSTER_IDENTITY) continue;
      const prev = this.byId.get(id);
      if (prev) this.byLabels.delete(prev.join(','));
      if (ev.type === 'delete') {
        this.byId.delete(id);
        if (prev && this.keys.get(identityRefKey(id, this.node)) !== undefined) {
          // Collected while this node took a reference (a race with the operator's GC): recreate it.
          this.log.warn('an identity this node uses was deleted; recreating it', { id, labels: prev });
          void this.ensure(id, prev).catch((e) => this.log.error('recreating a deleted identity failed', { id, error: e }));
          continue;
        }
        for (const l of this.listeners) l(id, undefined);
        continue;
      }
      let labels: string[];
      try {
        labels = (JSON.parse(ev.value!) as { labels: string[] }).labels;
        if (!Array.isArray(labels)) throw new Error('no labels');
      } catch (e) {
        this.log.error('identity master key is not valid; ignored', { id, error: e });
        continue;
      }
      this.byId.set(id, labels);
      this.byLabels.set(labels.join(','), id);
      for (const l of this.listeners) l(id, labels);
    }
  }

  /** The cluster-wide id of a (canonical) label set, allocating it if the cluster has none. */
  async allocate(canonical: string[]): Promise<number> {
    const known = this.lookup(canonical);
    if (known !== undefined) return known;
    let delay = 20;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const id = this.pickFree();
      const r = await this.kv.txn(
        [
          { key: identityIdKey(id), target: 'create', op: '==', value: 0 },
          { key: identityLabelsKey(canonical), target: 'create', op: '==', value: 0 },
        ],
        [
          { type: 'put', key: identityIdKey(id), value: JSON.stringify({ labels: canonical }) },
          { type: 'put', key: identityLabelsKey(canonical), value: String(id) },
        ],
        [{ type: 'get', key: identityLabelsKey(canonical) }],
      );
      if (r.succeeded) {
        this.stats.allocations++;
        await this.ids.waitForRevision(r.revision, 10_000);
        this.log.info('identity allocated', { id, labels: canonical });
        return id;
      }
      this.stats.conflicts++;
      const winner = r.reads[0] ? Number(r.reads[0].value) : undefined;
      if (winner !== undefined && Number.isInteger(winner)) {
        // Another node allocated this label set first: its id is the cluster's.
        await this.ids.waitForRevision(r.revision, 10_000);
        return winner;
      }
      await this.ids.waitForRevision(r.revision, 10_000);
      await new Promise((res) => setTimeout(res, delay * (0.5 + Math.random())));
      delay = Math.min(delay * 2, 1000);
    }
    throw new KvstoreConflictError(`identity: no free id could be claimed for ${canonical.join(',')} in ${ATTEMPTS} attempts`, 'txn', identityLabelsKey(canonical));
  }

  /**
   * Make sure `id` stands for `canonical` in the cluster (an endpoint restored
   * after a restart keeps the id its datapath uses): recreate the keys if the
   * operator collected them meanwhile. Returns the cluster's id for the label
   * set, which differs from `id` only if the id went to other labels.
   */
  async ensure(id: number, canonical: string[]): Promise<number> {
    const cur = this.lookup(canonical);
    if (cur !== undefined) return cur;
    if (!this.byId.has(id)) {
      const r = await this.kv.txn(
        [
          { key: identityIdKey(id), target: 'create', op: '==', value: 0 },
          { key: identityLabelsKey(canonical), target: 'create', op: '==', value: 0 },
        ],
        [
          { type: 'put', key: identityIdKey(id), value: JSON.stringify({ labels: canonical }) },
          { type: 'put', key: identityLabelsKey(canonical), value: String(id) },
        ],
      );
      await this.ids.waitForRevision(r.revision, 10_000);
      if (r.succeeded) return id;
    }
    return this.allocate(canonical);
  }

  /** This node uses `id` (a leased reference key). */
  ref(id: number): void {
    this.keys.set(identityRefKey(id, this.node), '');
  }

  unref(id: number): void {
    this.keys.delete(identityRefKey(id, this.node));
  }

  /** Identities referenced per node (one keys-only listing; for `membrane node list`). */
  async referencesPerNode(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const k of await this.kv.keys(IDENTITY_REFS)) {
      const node = unescapeSegment(k.slice(k.lastIndexOf('/') + 1));
      out.set(node, (out.get(node) ?? 0) + 1);
    }
    return out;
  }

  private pickFree(): number {
    const span = MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1;
    if (this.byId.size >= span) throw new KvstoreConflictError('identity: the cluster identity space (256..65535) is exhausted', 'txn');
    for (;;) {
      const id = MIN_CLUSTER_IDENTITY + Math.floor(Math.random() * span);
      if (!this.byId.has(id)) return id;
    }
  }
}
