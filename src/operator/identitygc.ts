/**
 * Identity garbage collection: a cluster identity (identities/v1/id/<id> and
 * its label-set index) that no node references (identities/v1/refs/<id>/*,
 * on the nodes' leases) for --identity-gc-grace seconds is deleted.
 *
 * The grace period starts when the operator first sees the identity
 * unreferenced (a restarted operator starts it again: it can only wait
 * longer). The deletion is one transaction per batch that holds only if the
 * master key is unchanged and no reference exists under refs/<id>/ (a range
 * comparison), so a node that takes a reference at the last moment keeps the
 * identity; and an agent whose referenced identity vanished recreates it
 * (src/identity/cluster.ts).
 */
import { Kvstore, Reflector } from '../kvstore';
import { IDENTITY_IDS, IDENTITY_REFS, identityIdKey, identityLabelsKey } from '../kvstore/keys';
import type { Logger } from '../util/log';

export interface IdentityGcStats {
  runs: number;
  collected: number;
  kept: number;
  lastRun?: string;
  lastError?: string;
  /** Identities seen unreferenced and waiting out the grace period. */
  waiting: number;
}

const BATCH = 25; // 2 compares + 2 deletes each: within etcd's 128 operations per transaction

export class IdentityGc {
  private readonly ids: Reflector;
  private readonly refs: Reflector;
  private readonly unreferencedSince = new Map<number, number>();
  private active = false;
  private timer?: NodeJS.Timeout;
  private running?: Promise<number>;
  readonly stats: IdentityGcStats = { runs: 0, collected: 0, kept: 0, waiting: 0 };

  constructor(
    private readonly kv: Kvstore,
    private readonly graceMs: number,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {
    this.ids = new Reflector(kv, IDENTITY_IDS, log.child({ component: 'identity-watch' }));
    this.refs = new Reflector(kv, IDENTITY_REFS, log.child({ component: 'identity-refs-watch' }));
  }

  async start(): Promise<void> {
    await Promise.all([this.ids.start(), this.refs.start()]);
  }

  stop(): void {
    this.setActive(false);
    this.ids.stop();
    this.refs.stop();
  }

  setActive(on: boolean): void {
    this.active = on;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (!on) {
      this.unreferencedSince.clear();
      return;
    }
    this.timer = setInterval(() => void this.run().catch(() => undefined), this.intervalMs);
    void this.run().catch(() => undefined);
  }

  get identities(): number {
    return this.ids.size;
  }

  /** One pass; resolves with the number of identities collected. */
  run(): Promise<number> {
    if (!this.running) {
      this.running = this.pass().finally(() => {
        this.running = undefined;
      });
    }
    return this.running;
  }

  private async pass(): Promise<number> {
    if (!this.active) return 0;
    const referenced = new Set<number>();
    for (const [k] of this.refs.entries()) referenced.add(Number(k.slice(0, k.indexOf('/'))));
    const now = Date.now();
    const due: { id: number; labels?: string[]; modRevision: number }[] = [];
    const present = new Set<number>();
    for (const [k, v] of this.ids.entries()) {
      const id = Number(k);
      if (!Number.isInteger(id)) continue;
      present.add(id);
      if (referenced.has(id)) {
        this.unreferencedSince.delete(id);
        continue;
      }
      const since = this.unreferencedSince.get(id);
      if (since === undefined) {
        this.unreferencedSince.set(id, now);
        if (this.graceMs > 0) continue;
      } else if (now - since < this.graceMs) continue;
      let labels: string[] | undefined;
      try {
        labels = (JSON.parse(v.value) as { labels: string[] }).labels;
      } catch {
        labels = undefined;
      }
      due.push({ id, labels: Array.isArray(labels) ? labels : undefined, modRevision: v.modRevision });
    }
    for (const id of this.unreferencedSince.keys()) if (!present.has(id)) this.unreferencedSince.delete(id);
    let collected = 0;
    try {
      for (let i = 0; i < due.length && this.active; i += BATCH) {
        const batch = due.slice(i, i + BATCH);
        const groups = (list: typeof batch) =>
          list.map((d) => ({
            keys: [identityIdKey(d.id), ...(d.labels ? [identityLabelsKey(d.labels)] : [])],
            guard: { key: identityIdKey(d.id), modRevision: d.modRevision },
            emptyPrefix: `${IDENTITY_REFS}${d.id}/`,
          }));
        const r = await this.kv.deleteGuarded(groups(batch));
        let done = r.succeeded ? batch : [];
        if (!r.succeeded) {
          for (const one of batch) {
            if ((await this.kv.deleteGuarded(groups([one]))).succeeded) done.push(one);
            else this.stats.kept++;
          }
        }
        for (const d of done) {
          this.unreferencedSince.delete(d.id);
          this.log.debug('identity garbage-collected', { id: d.id, labels: d.labels });
        }
        collected += done.length;
      }
      this.stats.lastError = undefined;
    } catch (e) {
      this.stats.lastError = (e as Error).message;
      this.log.warn('identity gc failed; retrying at the next interval', { error: e });
    }
    this.stats.runs++;
    this.stats.collected += collected;
    this.stats.lastRun = new Date().toISOString();
    this.stats.waiting = this.unreferencedSince.size;
    if (collected) this.log.info('identities garbage-collected (no node referenced them for the grace period)', { collected, graceSeconds: this.graceMs / 1000 });
    return collected;
  }
}
