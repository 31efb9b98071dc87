/**
 * The FQDN cache: the addresses allowed DNS answers gave for names a toFQDNs
 * selector matches, per endpoint that asked, until their TTL runs out.
 *
 *   learn()     an answer's addresses (from the DNS proxy, before it releases
 *               the answer): each new address gets a local identity (the
 *               CIDR labels of its /32, shared with toCIDR rules naming it)
 *               and an ipcache claim of source 'fqdn'; when what a selector
 *               selects changes, onChanged() regenerates the policy maps and
 *               learn() resolves once they are written
 *   expire()    addresses past their expiry (TTL, at least --tofqdns-min-ttl,
 *               plus a grace of 2 s for the connection that follows an answer)
 *               that no open connection uses (conntrack) are dropped, and
 *               with them their identity and ipcache claim when no name
 *               keeps them
 *   limits      at most maxIpsPerName addresses per name (the one expiring
 *               first makes room) and maxIpsPerEndpoint per
 *               endpoint (further ones are not learned); each hit is counted
 *   persisted   state-dir/fqdn-cache.json (atomic writes): restored at start,
 *               before the first regeneration, so an agent restart keeps
 *               the learned addresses in the maps
 */
import * as path from 'node:path';
import { readJson, writeJsonAtomic } from '../util/fsutil';
import type { Logger } from '../util/log';
import { parseIp } from '../util/ip';
import { canonicalName, NameSelector, selectorKey, selectorMatches } from './pattern';

/** Addresses stay this long past their expiry before they go (conntrack then holds those in use). */
export const EXPIRY_GRACE_MS = 2000;

export interface FqdnDeps {
  /** A local identity for an address (CIDR labels of its /32); released with release(). */
  acquire(ip: string): number;
  release(identity: number): void;
  /** The ipcache claim of an address (identity undefined: withdraw it). */
  claim(ip: string, identity: number | undefined): void;
  /** The toFQDNs selectors in force. */
  selectors(): NameSelector[];
  /** What some selector selects changed: regenerate; resolves when the maps are written. */
  onChanged(): Promise<void>;
  log: Logger;
}

export interface FqdnOptions {
  stateDir: string;
  /** Seconds an address is kept at least, whatever its TTL. */
  minTtl: number;
  maxIpsPerName: number;
  maxIpsPerEndpoint: number;
}

interface AddrEntry {
  /** ms since epoch */
  expires: number;
  ttl: number;
  endpoints: Set<number>;
}

export interface FqdnRow {
  name: string;
  ip: string;
  identity?: number;
  ttl: number;
  expires: string;
  /** Seconds left (negative: expired, kept while a connection uses it). */
  remaining: number;
  endpoints: number[];
  selectors: string[];
}

export class FqdnCache {
  /** name -> ip -> entry */
  private readonly names = new Map<string, Map<string, AddrEntry>>();
  /** ip -> identity and the number of names holding it */
  private readonly ips = new Map<string, { identity: number; refs: number }>();
  /** selector key -> identities selected (what toFQDNs peers resolve to) */
  private selections = new Map<string, Set<number>>();
  /** endpoint -> (name, address) pairs it holds (the per-endpoint limit) */
  private readonly perEndpoint = new Map<number, number>();
  readonly counters = { learned: 0, expired: 0, limitPerName: 0, limitPerEndpoint: 0, keptInUse: 0 };
  private persistTimer?: NodeJS.Timeout;
  private readonly file: string;

  constructor(
    private readonly deps: FqdnDeps,
    private readonly opts: FqdnOptions,
  ) {
    this.file = path.join(opts.stateDir, 'fqdn-cache.json');
  }

  /** The identities a toFQDNs selector selects now. */
  identitiesFor(sel: NameSelector): number[] {
    return [...(this.selections.get(selectorKey(sel)) ?? [])];
  }

  /** Learn an answer's addresses; resolves when the maps reflect them (true: the maps changed). */
  async learn(endpoint: number, name: string, addresses: { ip: string; ttl: number }[], now = Date.now()): Promise<boolean> {
    const n = canonicalName(name);
    const sels = this.deps.selectors();
    if (!sels.some((s) => selectorMatches(s, n))) return false;
    let entries = this.names.get(n);
    let added = false;
    let refreshed = false;
    for (const a of addresses) {
      let ip: string;
      try {
        const parsed = parseIp(a.ip, 'address');
        ip = parsed.family === 4 ? a.ip : a.ip.toLowerCase();
      } catch {
        continue;
      }
      const ttl = Math.max(a.ttl, this.opts.minTtl);
      const expires = now + ttl * 1000;
      const cur = entries?.get(ip);
      if (cur) {
        if (expires > cur.expires) cur.expires = expires;
        cur.ttl = a.ttl;
        if (!cur.endpoints.has(endpoint)) {
          if (this.endpointCount(endpoint) >= this.opts.maxIpsPerEndpoint) {
            this.counters.limitPerEndpoint++;
            continue;
          }
          cur.endpoints.add(endpoint);
          this.countEndpoint(endpoint, 1);
        }
        refreshed = true;
        continue;
      }
      if (this.endpointCount(endpoint) >= this.opts.maxIpsPerEndpoint) {
        this.counters.limitPerEndpoint++;
        continue;
      }
      if (!entries) {
        entries = new Map();
        this.names.set(n, entries);
      }
      if (entries.size >= this.opts.maxIpsPerName) {
        // Room for the new address: the one expiring first goes.
        this.counters.limitPerName++;
        let first: [string, AddrEntry] | undefined;
        for (const e of entries) if (!first || e[1].expires < first[1].expires) first = e;
        if (first) this.dropAddress(n, entries, first[0]);
      }
      entries.set(ip, { expires, ttl: a.ttl, endpoints: new Set([endpoint]) });
      this.countEndpoint(endpoint, 1);
      this.holdIp(ip);
      this.counters.learned++;
      added = true;
    }
    let changed = false;
    if (added) {
      if (this.recomputeSelections()) {
        await this.deps.onChanged();
        changed = true;
      }
      this.schedulePersist();
    } else if (refreshed) this.schedulePersist();
    return changed;
  }

  private endpointCount(endpoint: number): number {
    return this.perEndpoint.get(endpoint) ?? 0;
  }

  private countEndpoint(endpoint: number, d: number): void {
    const n = (this.perEndpoint.get(endpoint) ?? 0) + d;
    if (n > 0) this.perEndpoint.set(endpoint, n);
    else this.perEndpoint.delete(endpoint);
  }

  private holdIp(ip: string): void {
    const cur = this.ips.get(ip);
    if (cur) {
      cur.refs++;
      return;
    }
    const identity = this.deps.acquire(ip);
    this.ips.set(ip, { identity, refs: 1 });
    this.deps.claim(ip, identity);
  }

  private dropAddress(name: string, entries: Map<string, AddrEntry>, ip: string): void {
    for (const ep of entries.get(ip)?.endpoints ?? []) this.countEndpoint(ep, -1);
    entries.delete(ip);
    if (!entries.size) this.names.delete(name);
    const cur = this.ips.get(ip);
    if (!cur || --cur.refs > 0) return;
    this.ips.delete(ip);
    this.deps.claim(ip, undefined);
    this.deps.release(cur.identity);
  }

  /** Recompute what each selector selects; true if anything changed. */
  recomputeSelections(): boolean {
    const next = new Map<string, Set<number>>();
    for (const sel of this.deps.selectors()) {
      const ids = new Set<number>();
      for (const [name, entries] of this.names) {
        if (!selectorMatches(sel, name)) continue;
        for (const ip of entries.keys()) {
          const id = this.ips.get(ip)?.identity;
          if (id !== undefined) ids.add(id);
        }
      }
      next.set(selectorKey(sel), ids);
    }
    const same =
      next.size === this.selections.size &&
      [...next].every(([k, v]) => {
        const o = this.selections.get(k);
        return o !== undefined && o.size === v.size && [...v].every((x) => o.has(x));
      });
    this.selections = next;
    return !same;
  }

  /**
   * Drop expired addresses that no open connection uses (inUse: addresses
   * conntrack still has live entries for). Returns the addresses dropped.
   */
  async expire(inUse: () => Promise<Set<string>>, now = Date.now()): Promise<string[]> {
    const expired: [string, string][] = [];
    // A short grace after the expiry: the connection a client opens right after an answer with TTL 0 still finds the address.
    const before = now - EXPIRY_GRACE_MS;
    for (const [name, entries] of this.names) for (const [ip, e] of entries) if (e.expires <= before) expired.push([name, ip]);
    if (!expired.length) return [];
    const live = await inUse();
    const dropped: string[] = [];
    for (const [name, ip] of expired) {
      const entries = this.names.get(name);
      const e = entries?.get(ip);
      if (!entries || !e || e.expires > before) continue;
      if (live.has(ip)) {
        this.counters.keptInUse++;
        continue;
      }
      this.dropAddress(name, entries, ip);
      this.counters.expired++;
      dropped.push(ip);
    }
    if (dropped.length) {
      this.deps.log.info('FQDN addresses expired', { addresses: dropped.length });
      if (this.recomputeSelections()) await this.deps.onChanged();
      this.schedulePersist();
    }
    return dropped;
  }

  /** Every learned address with its name, identity, expiry and the endpoints that asked. */
  list(now = Date.now()): FqdnRow[] {
    const rows: FqdnRow[] = [];
    const sels = this.deps.selectors();
    for (const [name, entries] of this.names) {
      const matching = sels.filter((s) => selectorMatches(s, name)).map((s) => (s.matchName !== undefined ? `matchName: ${s.matchName}` : `matchPattern: ${s.matchPattern}`));
      for (const [ip, e] of entries) {
        rows.push({
          name,
          ip,
          identity: this.ips.get(ip)?.identity,
          ttl: e.ttl,
          expires: new Date(e.expires).toISOString(),
          remaining: Math.floor((e.expires - now) / 1000),
          endpoints: [...e.endpoints].sort((a, b) => a - b),
          selectors: matching,
        });
      }
    }
    return rows.sort((a, b) => a.name.localeCompare(b.name) || a.ip.localeCompare(b.ip));
  }

  get size(): number {
    let n = 0;
    for (const e of this.names.values()) n += e.size;
    return n;
  }

  /**
   * Restore what the previous run learned (state-dir/fqdn-cache.json), expired
   * entries included (expire() decides with conntrack). Identities and
   * ipcache claims are taken now; call before the first regeneration.
   */
  restore(): number {
    const saved = readJson<{ names?: Record<string, Record<string, { expires: number; ttl: number; endpoints: number[] }>> }>(this.file);
    let n = 0;
    for (const [name, ips] of Object.entries(saved?.names ?? {})) {
      const entries = new Map<string, AddrEntry>();
      for (const [ip, e] of Object.entries(ips)) {
        if (typeof e?.expires !== 'number') continue;
        try {
          parseIp(ip, 'address');
        } catch {
          continue;
        }
        const eps = new Set<number>(Array.isArray(e.endpoints) ? e.endpoints.filter((x) => Number.isInteger(x)) : []);
        entries.set(ip, { expires: e.expires, ttl: e.ttl ?? 0, endpoints: eps });
        for (const ep of eps) this.countEndpoint(ep, 1);
        this.holdIp(ip);
        n++;
      }
      if (entries.size) this.names.set(canonicalName(name), entries);
    }
    this.recomputeSelections();
    if (n) this.deps.log.info('FQDN cache restored', { addresses: n });
    return n;
  }

  private schedulePersist(): void {
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = undefined;
      this.persist();
    }, 200);
    this.persistTimer.unref();
  }

  /** Write the cache now (also on stop). */
  persist(): void {
    if (this.persistTimer) {
      clearTimeout(this.persistTimer);
      this.persistTimer = undefined;
    }
    const names: Record<string, Record<string, { expires: number; ttl: number; endpoints: number[] }>> = {};
    for (const [name, entries] of this.names) {
      names[name] = {};
      for (const [ip, e] of entries) names[name][ip] = { expires: e.expires, ttl: e.ttl, endpoints: [...e.endpoints] };
    }
    try {
      writeJsonAtomic(this.file, { version: 1, names }, { durable: false });
    } catch (e) {
      this.deps.log.error('FQDN cache could not be written', { file: this.file, error: e });
    }
  }
}
