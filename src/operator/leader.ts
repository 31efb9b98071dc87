/**
 * Leader election on an etcd lease: one operator acts, the others wait.
 *
 * A candidate holds a lease (--leader-lease-ttl) and tries to create
 * operator/v1/leader on it (a transaction: only if absent). The winner leads
 * for as long as its lease lives; the others watch the key and try again when
 * it goes — at once when the leader stops (it revokes its lease), within the
 * TTL when it is killed (the lease expires). A leader that cannot renew its
 * lease for 3/4 of the TTL (etcd unreachable) steps down before etcd can
 * expire it — so before anyone else can win — and campaigns again.
 */
import type { Lease } from 'etcd3';
import { Kvstore, Reflector, isUnavailable } from '../kvstore';
import { OPERATOR_LEADER } from '../kvstore/keys';
import type { Logger } from '../util/log';

export interface LeaderRecord {
  id: string;
  since: string;
  pid: number;
}

export class LeaderElection {
  private lease?: Lease;
  private leaseId?: string;
  private leading = false;
  private stopped = false;
  private readonly watch: Reflector;
  private timer?: NodeJS.Timeout;
  private trying = false;
  /** Called when this candidate becomes the leader / stops being it. */
  onElected?: () => void;
  onDeposed?: (why: string) => void;
  readonly stats = { elections: 0, depositions: 0 };

  constructor(
    private readonly kv: Kvstore,
    readonly id: string,
    private readonly ttlSeconds: number,
    private readonly log: Logger,
  ) {
    this.watch = new Reflector(kv, 'operator/v1/', log.child({ component: 'leader-watch' }));
    this.watch.subscribe((evs) => {
      if (evs.some((e) => e.key === 'leader' && e.type === 'delete')) this.kick(0);
    });
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** The current leader as the watch last saw it. */
  leader(): LeaderRecord | undefined {
    const v = this.watch.get('leader');
    if (!v) return undefined;
    try {
      return JSON.parse(v.value) as LeaderRecord;
    } catch {
      return undefined;
    }
  }

  async start(): Promise<void> {
    await this.watch.start();
    this.kick(0);
  }

  private kick(delayMs: number): void {
    if (this.stopped || this.leading) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.campaign();
    }, delayMs);
  }

  private async ensureLease(): Promise<string> {
    if (this.lease && this.leaseId) return this.leaseId;
    const lease = this.kv.lease(this.ttlSeconds);
    lease.on('lost', (err: Error) => {
      if (this.lease !== lease) return;
      this.lease = undefined;
      this.leaseId = undefined;
      if (this.leading) this.depose(`lease lost: ${err.message}`);
      this.kick(500);
    });
    lease.on('keepaliveSucceeded', () => {
      if (this.lease === lease) this.renewedAt = Date.now();
    });
    this.lease = lease;
    try {
      this.leaseId = String(await lease.grant());
      this.renewedAt = Date.now();
      return this.leaseId;
    } catch (e) {
      if (this.lease === lease) this.lease = undefined;
      lease.release();
      throw e;
    }
  }

  private becomeLeader(lease: string): void {
    this.leading = true;
    this.stats.elections++;
    this.log.info('elected leader: this operator acts', { id: this.id, lease });
    this.watchRenewals();
    this.onElected?.();
  }

  private async campaign(): Promise<void> {
    if (this.trying || this.stopped || this.leading) return;
    this.trying = true;
    try {
      const lease = await this.ensureLease();
      const rec: LeaderRecord = { id: this.id, since: new Date().toISOString(), pid: process.pid };
      const r = await this.kv.txn(
        [{ key: OPERATOR_LEADER, target: 'create', op: '==', value: 0 }],
        [{ type: 'put', key: OPERATOR_LEADER, value: JSON.stringify(rec), lease }],
        [{ type: 'get', key: OPERATOR_LEADER }],
      );
      if (this.stopped) return;
      if (r.succeeded) {
        this.becomeLeader(lease);
        return;
      }
      const cur = r.reads[0];
      if (cur && cur.lease === lease) {
        // Our own key from an attempt whose answer was lost: we lead.
        this.becomeLeader(lease);
        return;
      }
      let who = '?';
      try {
        who = (JSON.parse(cur?.value ?? '{}') as LeaderRecord).id ?? '?';
      } catch {
        /* not ours to judge */
      }
      this.log.info('another operator leads; waiting', { leader: who });
      // The watch wakes us when the key goes; poll too, in case the watch is behind.
      this.kick(Math.max(1000, (this.ttlSeconds * 1000) / 2));
    } catch (e) {
      if (!isUnavailable(e)) this.log.warn('leader election attempt failed; retrying', { error: e });
      this.kick(1000);
    } finally {
      this.trying = false;
    }
  }

  /**
   * A leader that could not renew its lease for most of the TTL steps down
   * before etcd can expire it (the client itself would only notice after
   * twice the TTL): another operator can win only once the lease expired, so
   * two never act at once.
   */
  private renewedAt = 0;
  private guard?: NodeJS.Timeout;

  private watchRenewals(): void {
    if (this.guard) clearInterval(this.guard);
    this.guard = setInterval(() => {
      if (!this.leading) return;
      const since = Date.now() - this.renewedAt;
      if (since > this.ttlSeconds * 1000 * 0.75) {
        const lease = this.lease;
        this.lease = undefined;
        this.leaseId = undefined;
        this.depose(`lease not renewed for ${Math.round(since / 100) / 10} s (TTL ${this.ttlSeconds} s)`);
        lease?.release();
        this.kick(1000);
      }
    }, 250);
    this.guard.unref();
  }

  private depose(why: string): void {
    if (!this.leading) return;
    this.leading = false;
    this.stats.depositions++;
    this.log.error('no longer the leader: stopped acting', { id: this.id, reason: why });
    this.onDeposed?.(why);
  }

  /** Stop: a leader revokes its lease, so another operator takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.guard) clearInterval(this.guard);
    this.watch.stop();
    const lease = this.lease;
    this.lease = undefined;
    const was = this.leading;
    this.depose('stopping');
    if (lease) {
      if (was) await lease.revoke().catch(() => undefined);
      else await lease.revoke().catch(() => lease.release());
    }
  }
}
