/**
 * The cluster store client: etcd v3 through the `etcd3` package, scoped to one
 * cluster's key prefix so that several clusters (and test runs) share an etcd
 * without ever seeing each other's keys.
 *
 * Every call has a deadline (an unreachable etcd fails fast with
 * KvstoreUnavailableError instead of hanging an API request); watches are
 * streams without a deadline, resumed by the Reflector (reflector.ts); keys an
 * agent owns live on its lease through LeasedKeys (leased.ts).
 */
import { ConsecutiveBreaker, ExponentialBackoff, IBackoff, circuitBreaker, handleWhen, retry } from 'cockatiel';
import { Etcd3, EtcdLeaseInvalidError, IKeyValue, Lease, Namespace, isRecoverableError } from 'etcd3';
import type { Logger } from '../util/log';
import { KvstoreError, wrapEtcdError } from './errors';

export interface KvstoreOptions {
  /** etcd client URLs, e.g. http://127.0.0.1:2379 */
  endpoints: string[];
  /** Key prefix of this cluster, e.g. "membrane/default/" (a trailing slash is added). */
  prefix: string;
  log: Logger;
  /** Deadline of each unary call (default 5 s). */
  callTimeoutMs?: number;
}

export interface KeyValue {
  key: string;
  value: string;
  modRevision: number;
  createRevision: number;
  /** Lease id (decimal string), "0" when the key has none. */
  lease: string;
}

/** A condition of a transaction: compare one key's create/mod revision or value. */
export interface TxnCompare {
  key: string;
  target: 'create' | 'mod' | 'value' | 'version';
  op: '==' | '!=' | '>' | '<';
  value: number | string;
}

export type TxnOp = { type: 'put'; key: string; value: string; lease?: string } | { type: 'delete'; key: string } | { type: 'get'; key: string };

export interface TxnResult {
  succeeded: boolean;
  revision: number;
  /** Values read by 'get' operations of the branch that ran, in order (undefined: absent). */
  reads: (KeyValue | undefined)[];
}

const TARGET = { create: 'Create', mod: 'Mod', value: 'Value', version: 'Version' } as const;

export function kv(raw: IKeyValue): KeyValue {
  return {
    key: raw.key.toString(),
    value: raw.value.toString(),
    modRevision: Number(raw.mod_revision),
    createRevision: Number(raw.create_revision),
    lease: String(raw.lease ?? '0'),
  };
}

/** Parse "--kvstore-endpoints": comma-separated http(s) URLs. */
export function parseEndpoints(text: string, field = 'kvstore-endpoints'): string[] {
  const out = text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (!out.length) throw new Error(`${field}: "${text}" names no endpoint (expected URL[,URL...])`);
  for (const e of out) {
    let u: URL;
    try {
      u = new URL(e);
    } catch {
      throw new Error(`${field}: "${e}" is not a URL (expected e.g. http://127.0.0.1:2379)`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`${field}: "${e}" must use http or https`);
    if (!u.port) throw new Error(`${field}: "${e}" names no port`);
  }
  return out;
}

/** The first key after every key starting with `p` (etcd's range end of a prefix). */
export function prefixEnd(p: Buffer): Buffer {
  const end = Buffer.from(p);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

export class Kvstore {
  readonly prefix: string;
  private readonly etcd: Etcd3;
  /** The cluster-scoped view: every key below is relative to the prefix. */
  readonly ns: Namespace;
  private readonly timeoutMs: number;
  private closed = false;

  constructor(readonly opts: KvstoreOptions) {
    this.prefix = opts.prefix.endsWith('/') ? opts.prefix : `${opts.prefix}/`;
    this.timeoutMs = opts.callTimeoutMs ?? 5000;
    this.etcd = new Etcd3({
      hosts: opts.endpoints,
      dialTimeout: this.timeoutMs,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + this.timeoutMs }),
      faultHandling: {
        // One retry on another endpoint, then fail: callers own their retry loops.
        global: retry(handleWhen(isRecoverableError), { maxAttempts: 1 }),
        // An endpoint that failed 3 times in a row is skipped for 1 s.
        host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(3) }),
        // Watch streams reconnect fast once etcd is back (at most 2 s apart).
        // (etcd3 calls next() on it first, as on its own default: a factory is what it takes.)
        watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown>,
      },
    });
    this.ns = this.etcd.namespace(this.prefix);
  }

  /** Responses the client does not un-prefix itself (single gets, transactions). */
  private unprefixed(k: KeyValue): KeyValue {
    return k.key.startsWith(this.prefix) ? { ...k, key: k.key.slice(this.prefix.length) } : k;
  }

  get log(): Logger {
    return this.opts.log;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    try {
      const r = await this.ns.get(key).exec();
      return r.kvs.length ? this.unprefixed(kv(r.kvs[0])) : undefined;
    } catch (e) {
      throw wrapEtcdError(e, 'get', key);
    }
  }

  /** Every key under a prefix, with the store revision the listing is consistent with. */
  async list(prefix: string): Promise<{ revision: number; kvs: KeyValue[] }> {
    try {
      const r = await this.ns.getAll().prefix(prefix).exec();
      return { revision: Number(r.header.revision), kvs: r.kvs.map(kv) };
    } catch (e) {
      throw wrapEtcdError(e, 'list', prefix);
    }
  }

  /** Number of keys under a prefix (no values transferred). */
  async count(prefix: string): Promise<number> {
    try {
      return await this.ns.getAll().prefix(prefix).count();
    } catch (e) {
      throw wrapEtcdError(e, 'count', prefix);
    }
  }

  /** Keys (relative) under a prefix, without values. */
  async keys(prefix: string): Promise<string[]> {
    try {
      return await this.ns.getAll().prefix(prefix).keys();
    } catch (e) {
      throw wrapEtcdError(e, 'keys', prefix);
    }
  }

  /** One atomic transaction: if every comparison holds run `then`, else `otherwise`. */
  async txn(compares: TxnCompare[], then: TxnOp[], otherwise: TxnOp[] = []): Promise<TxnResult> {
    const what = then.map((o) => o.key).join(',') || compares.map((c) => c.key).join(',');
    try {
      let b = this.ns.if(compares[0]?.key ?? '', TARGET[compares[0]?.target ?? 'create'], compares[0]?.op ?? '>', compares[0]?.value ?? -1);
      if (!compares.length) {
        // No condition: "create revision > -1" holds for every key, present or not.
        b = this.ns.if('\0', 'Create', '>', -1);
      }
      for (const c of compares.slice(1)) b = b.and(c.key, TARGET[c.target], c.op, c.value);
      const ops = (list: TxnOp[]) =>
        list.map((o) => {
          if (o.type === 'put') {
            const p = this.ns.put(o.key).value(o.value);
            return o.lease && o.lease !== '0' ? p.lease(o.lease) : p;
          }
          if (o.type === 'delete') return this.ns.delete().key(o.key);
          return this.ns.get(o.key);
        });
      const r = await b.then(...ops(then)).else(...ops(otherwise)).commit();
      const ran = r.succeeded ? then : otherwise;
      const reads: (KeyValue | undefined)[] = [];
      r.responses.forEach((resp, i) => {
        if (ran[i]?.type !== 'get') return;
        const kvs = resp.response_range?.kvs ?? [];
        reads.push(kvs.length ? this.unprefixed(kv(kvs[0])) : undefined);
      });
      return { succeeded: r.succeeded, revision: Number(r.header.revision), reads };
    } catch (e) {
      throw wrapEtcdError(e, 'txn', what);
    }
  }

  /**
   * Delete groups of keys in one transaction, each group only if its guard key
   * is unchanged (same mod revision) and no key exists under its `emptyPrefix`
   * (a range comparison: "create revision == 0" holds for an empty range only).
   * All groups or none: on a failed comparison the caller retries one by one.
   */
  async deleteGuarded(groups: { keys: string[]; guard: { key: string; modRevision: number }; emptyPrefix: string }[]): Promise<{ succeeded: boolean; revision: number }> {
    const full = (k: string) => Buffer.from(this.prefix + k);
    const compare = groups.flatMap((g) => [
      { key: full(g.guard.key), target: 'Mod' as const, result: 'Equal' as const, mod_revision: g.guard.modRevision },
      { key: full(g.emptyPrefix), range_end: prefixEnd(full(g.emptyPrefix)), target: 'Create' as const, result: 'Equal' as const, create_revision: 0 },
    ]);
    const success = groups.flatMap((g) => g.keys.map((k) => ({ request_delete_range: { key: full(k) } })));
    try {
      const r = await this.etcd.kv.txn({ compare, success }, { deadline: Date.now() + this.timeoutMs });
      return { succeeded: !!r.succeeded, revision: Number(r.header.revision) };
    } catch (e) {
      throw wrapEtcdError(e, 'txn', groups.map((g) => g.guard.key).join(','));
    }
  }

  async put(key: string, value: string, lease?: string): Promise<number> {
    try {
      const p = this.ns.put(key).value(value);
      const r = await (lease && lease !== '0' ? p.lease(lease) : p).exec();
      return Number(r.header.revision);
    } catch (e) {
      throw wrapEtcdError(e, 'put', key);
    }
  }

  async delete(key: string): Promise<number> {
    try {
      const r = await this.ns.delete().key(key).exec();
      return Number(r.header.revision);
    } catch (e) {
      throw wrapEtcdError(e, 'delete', key);
    }
  }

  async deletePrefix(prefix: string): Promise<number> {
    try {
      const r = await this.ns.delete().prefix(prefix).exec();
      return Number(r.deleted);
    } catch (e) {
      throw wrapEtcdError(e, 'delete', prefix);
    }
  }

  /** A lease of `ttl` seconds with automatic keep-alive ('lost' fires when it cannot be renewed). */
  lease(ttl: number): Lease {
    if (this.closed) throw new KvstoreError('kvstore client is closed', 'lease');
    return this.ns.lease(ttl, { autoKeepAlive: true });
  }

  /** Remaining TTL of a lease in seconds (0: it no longer exists). */
  async leaseTtl(id: string): Promise<number> {
    try {
      const r = await this.etcd.leaseClient.leaseTimeToLive({ ID: id, keys: false });
      return Math.max(0, Number(r.TTL));
    } catch (e) {
      throw wrapEtcdError(e, 'lease ttl', id);
    }
  }

  async revokeLease(id: string): Promise<void> {
    try {
      await this.etcd.leaseClient.leaseRevoke({ ID: id });
    } catch (e) {
      if (e instanceof EtcdLeaseInvalidError) return; // already gone
      throw wrapEtcdError(e, 'lease revoke', id);
    }
  }

  /** A raw watch builder on this cluster's namespace (used by the Reflector). */
  watchBuilder() {
    return this.ns.watch();
  }

  /** The etcd server version and this cluster's database size (for status and benchmarks). */
  async serverStatus(): Promise<{ version: string; dbSize: number; revision: number }> {
    try {
      const s = await this.etcd.maintenance.status();
      return { version: s.version, dbSize: Number(s.dbSize), revision: Number(s.header.revision) };
    } catch (e) {
      throw wrapEtcdError(e, 'status');
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.etcd.close();
  }
}
