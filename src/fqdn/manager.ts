/**
 * DNS-aware policy on the node: connects the FQDN cache (cache.ts) to the
 * identities, the ipcache, the policy repository, the change pipeline and
 * the DNS proxy (through the proxy manager's control channel).
 *
 *   DNS proxy --fqdn--> cache.learn --> identities + ipcache claims
 *       ^                                 + policy regeneration (maps written)
 *       '----------- fqdn-ack <-----------'  (the proxy then releases the answer)
 *
 * A timer expires addresses past their TTL that no conntrack entry uses.
 */
import type { BpfMap } from '../bpf';
import type * as gen from '../datapath/maps.gen';
import { liveConntrackAddresses } from '../datapath/ctgc';
import type { IdentityAllocator } from '../identity/identity';
import type { IpCache } from '../ipcache/ipcache';
import type { PolicyRepository } from '../policy/repository';
import { cidrLabels } from '../policy/repository';
import type { ProxyManager } from '../proxy/manager';
import type { Logger } from '../util/log';
import { FqdnCache } from './cache';

export interface FqdnManagerDeps {
  stateDir: string;
  settings: { minTtl: number; maxIpsPerName: number; maxIpsPerEndpoint: number };
  identities: IdentityAllocator;
  ipcache: IpCache;
  repo: PolicyRepository;
  proxy: ProxyManager;
  ct: BpfMap<gen.CtKey, gen.CtValue>;
  /** Regenerate every endpoint's policy; resolves when the maps are written. */
  regenerate(): Promise<void>;
  log: Logger;
}

const hostPrefix = (ip: string) => `${ip}/${ip.includes(':') ? 128 : 32}`;

export class FqdnManager {
  readonly cache: FqdnCache;
  private timer?: NodeJS.Timeout;
  private expiring = false;
  private markReady!: () => void;
  /** Resolves once the agent has loaded its policies (learning before that would see no toFQDNs selector). */
  private readonly ready = new Promise<void>((r) => (this.markReady = r));
  /** ms from an answer's arrival at the agent to its addresses in the maps (answers that changed them), for the bench and status. */
  readonly learnMs: number[] = [];

  constructor(private readonly d: FqdnManagerDeps) {
    this.cache = new FqdnCache(
      {
        acquire: (ip) => d.identities.acquireLocal(cidrLabels(hostPrefix(ip))).id,
        release: (id) => d.identities.release(id),
        claim: (ip, identity) => (identity === undefined ? d.ipcache.delete(hostPrefix(ip), 'fqdn') : d.ipcache.upsert(hostPrefix(ip), 'fqdn', { identity })),
        selectors: () => d.repo.fqdnSelectors(),
        onChanged: () => {
          // A selection changed: every endpoint's policy is recomputed (the memo is keyed on the revision).
          d.repo.revision++;
          return d.regenerate();
        },
        log: d.log,
      },
      { stateDir: d.stateDir, ...d.settings },
    );
    d.repo.fqdnIdentities = (sel) => this.cache.identitiesFor(sel);
    d.repo.onFqdnSelectors = () => void this.cache.recomputeSelections();
    d.proxy.fqdnSelectors = () => d.repo.fqdnSelectors();
    d.proxy.onFqdn = async (m) => {
      // Answers the proxy learned while no agent listened arrive as soon as it connects, before the policies are loaded.
      await this.ready;
      const t0 = process.hrtime.bigint();
      if (!(await this.cache.learn(m.endpoint, m.name, m.addresses, m.time))) return;
      this.learnMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (this.learnMs.length > 10_000) this.learnMs.splice(0, 5000);
    };
  }

  /** Restore the previous run's addresses (before the first regeneration). */
  restore(): number {
    return this.cache.restore();
  }

  /** Expire addresses every second. */
  start(): void {
    this.markReady();
    this.timer = setInterval(() => void this.expireNow(), 1000);
    this.timer.unref();
  }

  async expireNow(): Promise<string[]> {
    if (this.expiring) return [];
    this.expiring = true;
    try {
      return await this.cache.expire(() => liveConntrackAddresses(this.d.ct));
    } catch (e) {
      this.d.log.error('FQDN expiry failed', { error: e });
      return [];
    } finally {
      this.expiring = false;
    }
  }

  status() {
    const ms = [...this.learnMs].sort((a, b) => a - b);
    const pct = (p: number) => (ms.length ? Math.round(ms[Math.min(ms.length - 1, Math.floor((p / 100) * ms.length))] * 1000) / 1000 : null);
    return { addresses: this.cache.size, ...this.cache.counters, learnMs: { count: ms.length, p50: pct(50), p99: pct(99) } };
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.cache.persist();
  }
}
