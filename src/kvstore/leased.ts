/**
 * The keys one agent owns in the cluster store (its node record, its identity
 * references, its pods' ipcache entries), all attached to the agent's lease:
 * if the agent dies and nobody renews the lease, etcd deletes them all and every
 * other node forgets this one within the lease TTL.
 *
 * Callers state what should exist (set/delete, synchronous, never failing);
 * a background loop makes etcd match, in batched transactions, retrying with
 * backoff while etcd is unreachable. When the lease is lost (expired during an
 * outage), a new one is granted and every key is written again under it; the
 * previous lease (of this run or of the agent's previous run) is revoked once
 * everything lives on the new one, which removes keys that are no longer wanted.
 */
import type { Lease } from 'etcd3';
import type { Logger } from '../util/log';
import { KvstoreLeaseLostError, isUnavailable } from './errors';
import type { Kvstore, TxnOp } from './kvstore';

const BATCH = 64; // etcd's default limit is 128 operations per transaction

export interface LeasedKeysStatus {
  leaseId?: string;
  desired: number;
  pending: number;
  synced: boolean;
  lastError?: string;
  lastSync?: string;
  leasesGranted: number;
}

export class LeasedKeys {
  private readonly desired = new Map<string, string>();
  /** What etcd holds for us under the current lease, as far as we know. */
  private readonly written = new Map<string, string>();
  private lease?: Lease;
  private leaseId?: string;
  private running = false;
  private again = false;
  private closed = false;
  private timer?: NodeJS.Timeout;
  private backoffMs = 100;
  private lastError?: string;
  private lastSync?: string;
  private leasesGranted = 0;
  /** Leases whose keys must go once everything is written under the current one. */
  private readonly toRevoke = new Set<string>();
  private waiters: { resolve: (ok: boolean) => void; timer: NodeJS.Timeout }[] = [];
  /** Called with each newly granted lease id (the agent records it to revoke it after a restart). */
  onLease?: (id: string) => void;

  constructor(
    private readonly kv: Kvstore,
    private readonly ttlSeconds: number,
    private readonly log: Logger,
  ) {}

  /** A lease of an earlier run of this agent: revoked after the first complete sync. */
  adoptPreviousLease(id: string | undefined): void {
    if (id && id !== '0') this.toRevoke.add(id);
  }

  set(key: string, value: string): void {
    if (this.desired.get(key) === value) return;
    this.desired.set(key, value);
    this.kick();
  }

  delete(key: string): void {
    if (!this.desired.has(key)) return;
    this.desired.delete(key);
    this.kick();
  }

  get(key: string): string | undefined {
    return this.desired.get(key);
  }

  keys(prefix = ''): string[] {
    return [...this.desired.keys()].filter((k) => k.startsWith(prefix));
  }

  get currentLease(): string | undefined {
    return this.leaseId;
  }

  /** The current lease id, granting one if needed (for a caller's own transaction, see adopt()). */
  async grant(): Promise<string> {
    return this.ensureLease();
  }

  /**
   * A key the caller wrote itself under lease `lease` (in a transaction of its
   * own, e.g. with conditions): from now on it is one of ours, kept and
   * rewritten like any other.
   */
  adopt(key: string, value: string, lease: string): void {
    this.desired.set(key, value);
    if (lease === this.leaseId) this.written.set(key, value);
    else this.kick();
  }

  /** Number of desired keys not (yet) in etcd as desired. */
  pending(): number {
    let n = 0;
    for (const [k, v] of this.desired) if (this.written.get(k) !== v) n++;
    for (const k of this.written.keys()) if (!this.desired.has(k)) n++;
    return n;
  }

  /** Resolve true once etcd holds exactly the desired keys (false after `timeoutMs`). */
  flushed(timeoutMs = 10_000): Promise<boolean> {
    if (this.leaseId && this.pending() === 0 && !this.running) return Promise.resolve(true);
    this.kick();
    return new Promise((resolve) => {
      const w = {
        resolve,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          resolve(false);
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  status(): LeasedKeysStatus {
    const pending = this.pending();
    return {
      leaseId: this.leaseId,
      desired: this.desired.size,
      pending,
      synced: !!this.leaseId && pending === 0,
      lastError: this.lastError,
      lastSync: this.lastSync,
      leasesGranted: this.leasesGranted,
    };
  }

  /** Start syncing (also called implicitly by every change). */
  kick(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) return; // a retry is scheduled; it will pick the change up
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, 0);
  }

  /**
   * Stop renewing. With `revoke`, the lease is revoked (every key vanishes at
   * once); without, the keys stay until the TTL runs out, so a restarted agent
   * can take them over without other nodes noticing.
   */
  async close(opts: { revoke?: boolean } = {}): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    const lease = this.lease;
    this.lease = undefined;
    if (!lease) return;
    if (opts.revoke) await lease.revoke().catch(() => undefined);
    else lease.release();
  }

  private granting?: Promise<string>;

  private ensureLease(): Promise<string> {
    if (this.lease && this.leaseId) return Promise.resolve(this.leaseId);
    if (!this.granting) {
      this.granting = this.grantLease().finally(() => {
        this.granting = undefined;
      });
    }
    return this.granting;
  }

  private async grantLease(): Promise<string> {
    const lease = this.kv.lease(this.ttlSeconds);
    // A lease that cannot be granted or renewed: drop it; the next run grants another.
    lease.on('lost', (err: Error) => {
      if (this.lease !== lease) return;
      this.log.warn('kvstore lease lost; keys will be written again under a new lease', { lease: this.leaseId, error: err });
      if (this.leaseId) this.toRevoke.add(this.leaseId);
      this.lease = undefined;
      this.leaseId = undefined;
      this.written.clear();
      this.kick();
    });
    this.lease = lease;
    try {
      const id = String(await lease.grant());
      if (this.lease !== lease) throw new Error('lease was lost while being granted');
      this.leaseId = id;
      this.leasesGranted++;
      this.written.clear();
      this.log.info('kvstore lease granted', { lease: id, ttl: this.ttlSeconds });
      this.onLease?.(id);
      return id;
    } catch (e) {
      if (this.lease === lease) {
        this.lease = undefined;
        lease.release();
      }
      throw e;
    }
  }

  private async run(): Promise<void> {
    if (this.closed || this.running) return;
    this.running = true;
    try {
      do {
        this.again = false;
        const lease = await this.ensureLease();
        const ops: TxnOp[] = [];
        for (const [k, v] of this.desired) if (this.written.get(k) !== v) ops.push({ type: 'put', key: k, value: v, lease });
        for (const k of this.written.keys()) if (!this.desired.has(k)) ops.push({ type: 'delete', key: k });
        for (let i = 0; i < ops.length; i += BATCH) {
          const batch = ops.slice(i, i + BATCH);
          await this.kv.txn([], batch);
          if (this.leaseId !== lease) break; // lost meanwhile: start over under the new lease
          for (const o of batch) {
            if (o.type === 'put') this.written.set(o.key, o.value);
            else this.written.delete(o.key);
          }
        }
        if (this.leaseId !== lease) {
          this.again = true;
          continue;
        }
        if (!this.again && this.toRevoke.size) {
          for (const id of [...this.toRevoke]) {
            if (id === lease) {
              this.toRevoke.delete(id);
              continue;
            }
            await this.kv.revokeLease(id);
            this.toRevoke.delete(id);
            this.log.info('previous kvstore lease revoked', { lease: id });
          }
        }
      } while (this.again && !this.closed);
      this.backoffMs = 100;
      this.lastError = undefined;
      this.lastSync = new Date().toISOString();
      if (this.pending() === 0) {
        for (const w of this.waiters.splice(0)) {
          clearTimeout(w.timer);
          w.resolve(true);
        }
      }
    } catch (e) {
      this.lastError = (e as Error).message;
      if (e instanceof KvstoreLeaseLostError && this.lease) {
        // etcd says the lease is gone (expired during an outage): grant another at once.
        if (this.leaseId) this.toRevoke.add(this.leaseId);
        this.lease.release();
        this.lease = undefined;
        this.leaseId = undefined;
        this.written.clear();
        this.backoffMs = 0;
      } else if (!isUnavailable(e)) this.log.warn('kvstore: writing this node\'s keys failed; retrying', { error: e });
      if (!this.closed) {
        const delay = this.backoffMs;
        this.backoffMs = Math.min(Math.max(this.backoffMs * 2, 100), 2000);
        this.timer = setTimeout(() => {
          this.timer = undefined;
          void this.run();
        }, delay);
      }
    } finally {
      this.running = false;
    }
    if (this.again && !this.closed && !this.timer) this.kick();
  }
}
