/**
 * A watched cache of one key prefix: list once, then watch from the listing's
 * revision. Every change reaches subscribers exactly once and in revision
 * order, whatever happens to the connection:
 *
 *  - a dropped watch stream is resumed from the last revision applied here
 *    (not from whatever the client library last saw), so nothing is skipped;
 *  - a watch that etcd cancels (its revision was compacted away, or any other
 *    cancellation) is replaced by a fresh listing, diffed against the cache:
 *    subscribers see only the keys that really changed, deletions included.
 *
 * Reads (get, values, size) are served from the cache, so they work while etcd
 * is unreachable; `revision` says how current the cache is.
 */
import type { IWatchResponse } from 'etcd3';
import type { Watcher } from 'etcd3';
import type { Logger } from '../util/log';
import { isUnavailable } from './errors';
import type { Kvstore } from './kvstore';

export interface ReflectorEvent {
  type: 'put' | 'delete';
  /** Key relative to the reflector's prefix. */
  key: string;
  value?: string;
  /** The previous value, when there was one. */
  prev?: string;
  revision: number;
}

export interface CachedValue {
  value: string;
  modRevision: number;
  createRevision: number;
  lease: string;
}

export class Reflector {
  private readonly cache = new Map<string, CachedValue>();
  private readonly subscribers = new Set<(evs: ReflectorEvent[]) => void>();
  private watcher?: Watcher;
  private stopped = false;
  private rev = 0;
  private syncedOnce = false;
  private readonly syncWaiters: (() => void)[] = [];
  private revWaiters: { rev: number; resolve: (ok: boolean) => void; timer: NodeJS.Timeout }[] = [];
  private retryTimer?: NodeJS.Timeout;
  private backoffMs = 100;
  /** Counters for status and benchmarks. */
  readonly stats = { events: 0, relists: 0, resumes: 0, lastError: undefined as string | undefined, connected: false };

  constructor(
    private readonly kv: Kvstore,
    /** Relative to the cluster prefix, ending in "/". */
    readonly prefix: string,
    private readonly log: Logger,
  ) {}

  /** The revision the cache reflects (every change up to it has been applied). */
  get revision(): number {
    return this.rev;
  }

  get synced(): boolean {
    return this.syncedOnce;
  }

  get(key: string): CachedValue | undefined {
    return this.cache.get(key);
  }

  entries(): IterableIterator<[string, CachedValue]> {
    return this.cache.entries();
  }

  get size(): number {
    return this.cache.size;
  }

  /** Called with each batch of changes (one etcd revision or one relist), after the cache applied it. */
  subscribe(fn: (evs: ReflectorEvent[]) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /** Start: resolves after the first listing (retried until etcd answers or `timeoutMs` passes). */
  async start(timeoutMs = Infinity): Promise<void> {
    void this.relist();
    if (this.syncedOnce) return;
    await new Promise<void>((resolve, reject) => {
      const t = Number.isFinite(timeoutMs)
        ? setTimeout(() => reject(new Error(`kvstore: no listing of ${this.prefix} within ${timeoutMs} ms (${this.stats.lastError ?? 'no answer'})`)), timeoutMs)
        : undefined;
      this.syncWaiters.push(() => {
        if (t) clearTimeout(t);
        resolve();
      });
    });
  }

  /** Resolve true once the cache has applied revision `rev` (false after `timeoutMs`). */
  waitForRevision(rev: number, timeoutMs = 10_000): Promise<boolean> {
    if (this.rev >= rev) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = {
        rev,
        resolve,
        timer: setTimeout(() => {
          this.revWaiters = this.revWaiters.filter((x) => x !== w);
          resolve(false);
        }, timeoutMs),
      };
      this.revWaiters.push(w);
    });
  }

  stop(): void {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const w = this.watcher;
    this.watcher = undefined;
    if (w) void w.cancel().catch(() => undefined);
    for (const w2 of this.revWaiters) {
      clearTimeout(w2.timer);
      w2.resolve(false);
    }
    this.revWaiters = [];
  }

  /** Record that every change up to `rev` has been applied, and wake whoever waited for it. */
  private advance(rev: number): void {
    if (rev > this.rev) this.rev = rev;
    if (!this.revWaiters.length) return;
    this.revWaiters = this.revWaiters.filter((w) => {
      if (w.rev > this.rev) return true;
      clearTimeout(w.timer);
      w.resolve(true);
      return false;
    });
  }

  private emit(evs: ReflectorEvent[]): void {
    if (!evs.length) return;
    this.stats.events += evs.length;
    for (const s of this.subscribers) {
      try {
        s(evs);
      } catch (e) {
        this.log.error('kvstore subscriber failed', { prefix: this.prefix, error: e });
      }
    }
  }

  private scheduleRetry(fn: () => void): void {
    if (this.stopped) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, 2000);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      fn();
    }, delay);
  }

  /** List the prefix, replace the cache by diff (emitting real changes only), then watch from there. */
  private async relist(): Promise<void> {
    if (this.stopped) return;
    this.stats.relists++;
    let listing: { revision: number; kvs: import('./kvstore').KeyValue[] };
    try {
      listing = await this.kv.list(this.prefix);
    } catch (e) {
      this.stats.lastError = (e as Error).message;
      this.stats.connected = false;
      if (!isUnavailable(e)) this.log.warn('kvstore listing failed', { prefix: this.prefix, error: e });
      this.scheduleRetry(() => void this.relist());
      return;
    }
    if (this.stopped) return;
    this.backoffMs = 100;
    this.stats.connected = true;
    const seen = new Set<string>();
    const evs: ReflectorEvent[] = [];
    for (const item of listing.kvs) {
      const key = item.key.slice(this.prefix.length);
      seen.add(key);
      const cur = this.cache.get(key);
      if (cur && cur.modRevision === item.modRevision) continue;
      this.cache.set(key, { value: item.value, modRevision: item.modRevision, createRevision: item.createRevision, lease: item.lease });
      if (cur?.value !== item.value) evs.push({ type: 'put', key, value: item.value, prev: cur?.value, revision: item.modRevision });
    }
    for (const [key, cur] of [...this.cache]) {
      if (seen.has(key)) continue;
      this.cache.delete(key);
      evs.push({ type: 'delete', key, prev: cur.value, revision: listing.revision });
    }
    this.rev = Math.max(this.rev, listing.revision);
    this.emit(evs);
    this.advance(listing.revision);
    if (!this.syncedOnce) {
      this.syncedOnce = true;
      for (const w of this.syncWaiters.splice(0)) w();
    }
    await this.watch();
  }

  private async watch(): Promise<void> {
    if (this.stopped) return;
    const old = this.watcher;
    this.watcher = undefined;
    if (old) await old.cancel().catch(() => undefined);
    const w = this.kv.watchBuilder().prefix(this.prefix).startRevision(String(this.rev + 1)).watcher();
    this.watcher = w;
    w.on('data', (res: IWatchResponse) => this.onWatchData(w, res));
    w.on('connected', () => {
      if (this.watcher !== w) return;
      this.stats.connected = true;
      this.backoffMs = 100;
    });
    w.on('disconnected', (err: Error) => {
      if (this.watcher !== w) return;
      // The client re-attaches by itself; make it resume from what *we* applied.
      this.stats.connected = false;
      this.stats.resumes++;
      this.stats.lastError = err?.message;
      (w.request as { start_revision?: string | number }).start_revision = String(this.rev + 1);
    });
    w.on('error', (err: Error) => {
      if (this.watcher !== w) return;
      // etcd cancelled the watch (compacted revision, or another reason): list afresh.
      this.stats.lastError = err?.message;
      this.log.info('kvstore watch cancelled; listing again', { prefix: this.prefix, revision: this.rev, error: err });
      this.watcher = undefined;
      void w.cancel().catch(() => undefined);
      this.scheduleRetry(() => void this.relist());
    });
  }

  private onWatchData(w: Watcher, res: IWatchResponse): void {
    if (this.watcher !== w || this.stopped) return;
    const evs: ReflectorEvent[] = [];
    let maxRev = 0;
    for (const ev of res.events) {
      const rev = Number(ev.kv.mod_revision);
      maxRev = Math.max(maxRev, rev);
      if (rev <= this.rev) continue; // already applied (a listing overtook the stream)
      const key = ev.kv.key.toString().slice(this.prefix.length);
      const cur = this.cache.get(key);
      if (ev.type === 'Delete') {
        if (!cur) continue;
        this.cache.delete(key);
        evs.push({ type: 'delete', key, prev: cur.value, revision: rev });
      } else {
        const value = ev.kv.value.toString();
        this.cache.set(key, { value, modRevision: rev, createRevision: Number(ev.kv.create_revision), lease: String(ev.kv.lease ?? '0') });
        if (cur?.value === value) continue; // a re-put of the same value (lease moved): no change for readers
        evs.push({ type: 'put', key, value, prev: cur?.value, revision: rev });
      }
    }
    // Within one response, events may span several revisions; apply them all first.
    if (maxRev > this.rev) this.rev = maxRev;
    if (!res.events.length && res.header) {
      // Progress notification: every change up to the header revision has been sent.
      this.rev = Math.max(this.rev, Number(res.header.revision));
    }
    this.emit(evs);
    this.advance(this.rev);
  }
}
