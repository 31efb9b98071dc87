/**
 * Cluster-pool IPAM and node garbage collection (the operator's side).
 *
 *   ipam/v1/nodes/<node>   {podCIDRs, pool, allocatedAt, error?, orphanedSince?}   the node's allocation
 *   ipam/v1/cidrs/<cidr>   "<node>"                                              one CIDR, one node
 *
 * A node that registers without pod CIDRs (its agent has no --pod-cidr) gets
 * the pool's first free CIDR: both keys are created in one transaction that
 * holds only if the CIDR is still free and the node's allocation unchanged, so
 * a CIDR can never go to two nodes, whoever acts. Allocations live in etcd
 * without a lease: a restarted operator (or a new leader) finds them and
 * reallocates nothing; an agent restarted finds its CIDR again.
 *
 * A pool without a free CIDR is an error written into the node's allocation
 * (the agent shows it in `membrane status`) and logged; it is retried when
 * CIDRs come back.
 *
 * A node whose lease expired loses its record (etcd deletes it, and with it
 * its pods and identity references); its allocation is marked orphaned and
 * returns to the pool only after --node-gc-grace seconds (a node back within
 * the grace period keeps its CIDR). The mark is in etcd, so the grace period
 * survives operator restarts.
 */
import { Kvstore, Reflector } from '../kvstore';
import { ipamCidrKey, ipamNodeKey, nodeKey, unescapeSegment } from '../kvstore/keys';
import { NodeRecord, cidrsOverlap } from '../node/registry';
import { formatCidr, parseCidr } from '../util/ip';
import type { Logger } from '../util/log';
import { CidrPool, PoolExhaustedError } from './pool';
import type { IpamAllocation } from '../ipam/ipam';

export type { IpamAllocation };

export interface NodeGcStats {
  allocated: number;
  exhausted: number;
  orphaned: number;
  released: number;
  lastError?: string;
}

export class ClusterPoolIpam {
  private readonly ipam: Reflector;
  private active = false;
  private timer?: NodeJS.Timeout;
  private running = false;
  private again = false;
  private readonly loggedErrors = new Map<string, string>();
  readonly stats: NodeGcStats = { allocated: 0, exhausted: 0, orphaned: 0, released: 0 };

  constructor(
    private readonly kv: Kvstore,
    private readonly nodes: Reflector,
    private readonly pool: CidrPool | undefined,
    private readonly graceMs: number,
    private readonly log: Logger,
  ) {
    this.ipam = new Reflector(kv, 'ipam/v1/', log.child({ component: 'ipam-watch' }));
    this.ipam.subscribe(() => this.kick());
    this.nodes.subscribe(() => this.kick());
  }

  async start(): Promise<void> {
    await this.ipam.start();
  }

  stop(): void {
    this.active = false;
    if (this.timer) clearTimeout(this.timer);
    this.ipam.stop();
  }

  /** Act (leader) or stop acting. */
  setActive(on: boolean): void {
    this.active = on;
    if (on) this.kick();
    else if (this.timer) clearTimeout(this.timer);
  }

  allocations(): { node: string; alloc: IpamAllocation }[] {
    const out: { node: string; alloc: IpamAllocation }[] = [];
    for (const [k, v] of this.ipam.entries()) {
      if (!k.startsWith('nodes/')) continue;
      try {
        out.push({ node: unescapeSegment(k.slice('nodes/'.length)), alloc: JSON.parse(v.value) as IpamAllocation });
      } catch {
        /* ignored */
      }
    }
    return out;
  }

  kick(delayMs = 10): void {
    if (!this.active) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, delayMs);
  }

  private async run(): Promise<void> {
    if (!this.active || this.running) return;
    this.running = true;
    let next: number | undefined;
    try {
      do {
        this.again = false;
        next = await this.reconcile();
      } while (this.again && this.active);
      this.stats.lastError = undefined;
    } catch (e) {
      this.stats.lastError = (e as Error).message;
      this.log.warn('ipam: reconciling allocations failed; retrying', { error: e });
      next = 1000;
    } finally {
      this.running = false;
    }
    if (this.again) this.kick();
    else if (next !== undefined) this.kick(next);
  }

  private liveNodes(): Map<string, NodeRecord> {
    const out = new Map<string, NodeRecord>();
    for (const [k, v] of this.nodes.entries()) {
      try {
        out.set(unescapeSegment(k), JSON.parse(v.value) as NodeRecord);
      } catch {
        /* ignored */
      }
    }
    return out;
  }

  /** One pass; returns the delay until an orphan's grace period ends (if any). */
  private async reconcile(): Promise<number | undefined> {
    const live = this.liveNodes();
    const used = new Set<string>();
    for (const [k] of this.ipam.entries()) if (k.startsWith('cidrs/')) used.add(unescapeSegment(k.slice('cidrs/'.length)));
    const allocs = new Map<string, { alloc: IpamAllocation; modRevision: number }>();
    for (const [k, v] of this.ipam.entries()) {
      if (!k.startsWith('nodes/')) continue;
      try {
        allocs.set(unescapeSegment(k.slice('nodes/'.length)), { alloc: JSON.parse(v.value) as IpamAllocation, modRevision: v.modRevision });
      } catch {
        /* ignored */
      }
    }
    const now = Date.now();
    let wake: number | undefined;
    // Nodes that wait for a CIDR.
    for (const [name, rec] of live) {
      const cur = allocs.get(name);
      if (cur?.alloc.podCIDRs.length) {
        if (cur.alloc.orphanedSince) {
          await this.kv.txn([{ key: ipamNodeKey(name), target: 'mod', op: '==', value: cur.modRevision }], [{ type: 'put', key: ipamNodeKey(name), value: JSON.stringify({ ...cur.alloc, orphanedSince: undefined }) }]);
          this.log.info('node is back within the grace period: it keeps its pod CIDR', { node: name, podCIDRs: cur.alloc.podCIDRs });
        }
        continue;
      }
      if (rec.podCIDRs.length && this.pool) {
        // A node running with a CIDR of the pool that no allocation names (it took its CIDR back
        // while the operator released it, or it was given --pod-cidr inside the pool): adopt it.
        const own = canonical(rec.podCIDRs[0]);
        if (!cur && this.pool.owns(own) && !used.has(own)) {
          const r = await this.kv.txn(
            [{ key: ipamNodeKey(name), target: 'create', op: '==', value: 0 }, { key: ipamCidrKey(own), target: 'create', op: '==', value: 0 }],
            [
              { type: 'put', key: ipamCidrKey(own), value: name },
              { type: 'put', key: ipamNodeKey(name), value: JSON.stringify({ podCIDRs: [own], pool: this.pool.text, allocatedAt: new Date().toISOString() } satisfies IpamAllocation) },
            ],
          );
          if (r.succeeded) {
            used.add(own);
            this.log.info('ipam: adopted the pod CIDR a node runs with', { node: name, podCIDR: own });
          }
        }
        continue;
      }
      if (rec.podCIDRs.length || !this.pool) continue; // the node has its own --pod-cidr
      const reserved = [...live.values()].flatMap((n) => n.podCIDRs);
      const guard = cur ? { key: ipamNodeKey(name), target: 'mod' as const, op: '==' as const, value: cur.modRevision } : { key: ipamNodeKey(name), target: 'create' as const, op: '==' as const, value: 0 };
      let cidr: string;
      try {
        // The CIDR the node's pods held addresses from before (its state directory), if still free.
        const hint = rec.podCidrHint ? canonical(rec.podCidrHint) : undefined;
        const hintFree = hint && this.pool.owns(hint) && !used.has(hint) && !reserved.some((r) => cidrsOverlap(parseCidr(r), parseCidr(hint)));
        cidr = hintFree ? hint : this.pool.next(used, reserved);
      } catch (e) {
        if (!(e instanceof PoolExhaustedError)) throw e;
        const error = `${e.message}; node "${name}" has no pod CIDR`;
        if (cur?.alloc.error !== error) {
          await this.kv.txn([guard], [{ type: 'put', key: ipamNodeKey(name), value: JSON.stringify({ podCIDRs: [], pool: this.pool.text, error } satisfies IpamAllocation) }]);
          this.stats.exhausted++;
        }
        if (this.loggedErrors.get(name) !== error) {
          this.log.error('ipam: cannot allocate a pod CIDR: the cluster pool is exhausted', { node: name, pool: e.pool, maskSize: e.maskSize, allocated: e.allocated, size: e.size });
          this.loggedErrors.set(name, error);
        }
        continue;
      }
      const alloc: IpamAllocation = { podCIDRs: [cidr], pool: this.pool.text, allocatedAt: new Date().toISOString() };
      const r = await this.kv.txn(
        [guard, { key: ipamCidrKey(cidr), target: 'create', op: '==', value: 0 }],
        [
          { type: 'put', key: ipamCidrKey(cidr), value: name },
          { type: 'put', key: ipamNodeKey(name), value: JSON.stringify(alloc) },
        ],
      );
      if (!r.succeeded) {
        this.again = true; // someone wrote meanwhile: look again once the watch has it
        await this.ipam.waitForRevision(r.revision, 5000);
        continue;
      }
      used.add(cidr);
      this.loggedErrors.delete(name);
      this.stats.allocated++;
      this.log.info('ipam: pod CIDR allocated', { node: name, podCIDR: cidr, pool: this.pool.text });
      await this.ipam.waitForRevision(r.revision, 5000);
    }
    // Allocations of nodes that are gone.
    const release: { name: string; cur: { alloc: IpamAllocation; modRevision: number } }[] = [];
    for (const [name, cur] of allocs) {
      if (live.has(name)) continue;
      if (!cur.alloc.podCIDRs.length) {
        await this.kv.txn([{ key: ipamNodeKey(name), target: 'mod', op: '==', value: cur.modRevision }], [{ type: 'delete', key: ipamNodeKey(name) }]);
        continue;
      }
      if (!cur.alloc.orphanedSince) {
        const r = await this.kv.txn(
          [{ key: ipamNodeKey(name), target: 'mod', op: '==', value: cur.modRevision }, { key: nodeKey(name), target: 'create', op: '==', value: 0 }],
          [{ type: 'put', key: ipamNodeKey(name), value: JSON.stringify({ ...cur.alloc, orphanedSince: new Date().toISOString() }) }],
        );
        if (r.succeeded) {
          this.stats.orphaned++;
          this.log.info('node gone (its lease expired): its pod CIDR returns to the pool after the grace period', { node: name, podCIDRs: cur.alloc.podCIDRs, graceSeconds: this.graceMs / 1000 });
        }
        wake = Math.min(wake ?? Infinity, this.graceMs);
        continue;
      }
      const left = Date.parse(cur.alloc.orphanedSince) + this.graceMs - now;
      if (left > 0) {
        wake = Math.min(wake ?? Infinity, left);
        continue;
      }
      release.push({ name, cur });
    }
    await this.releaseAll(release);
    // CIDR keys whose node has no allocation naming them (an interrupted release), as the watch has it now.
    const current = new Map<string, IpamAllocation>();
    for (const [k, v] of this.ipam.entries()) {
      if (!k.startsWith('nodes/')) continue;
      try {
        current.set(unescapeSegment(k.slice('nodes/'.length)), JSON.parse(v.value) as IpamAllocation);
      } catch {
        /* ignored */
      }
    }
    for (const [k, v] of [...this.ipam.entries()]) {
      if (!k.startsWith('cidrs/')) continue;
      const cidr = unescapeSegment(k.slice('cidrs/'.length));
      const a = current.get(v.value);
      if (!a || !a.podCIDRs.includes(cidr)) {
        await this.kv.txn([{ key: ipamCidrKey(cidr), target: 'mod', op: '==', value: v.modRevision }], [{ type: 'delete', key: ipamCidrKey(cidr) }]);
      }
    }
    return wake === undefined ? undefined : Math.max(10, Math.ceil(wake) + 10);
  }

  /** Release orphaned allocations (batched transactions, each guarded). */
  private async releaseAll(items: { name: string; cur: { alloc: IpamAllocation; modRevision: number } }[]): Promise<void> {
    const BATCH = 20;
    for (let i = 0; i < items.length; i += BATCH) {
      const batch = items.slice(i, i + BATCH);
      const tx = (list: typeof batch) =>
        this.kv.txn(
          list.flatMap(({ name, cur }) => [
            { key: ipamNodeKey(name), target: 'mod' as const, op: '==' as const, value: cur.modRevision },
            { key: nodeKey(name), target: 'create' as const, op: '==' as const, value: 0 },
          ]),
          list.flatMap(({ name, cur }) => [{ type: 'delete' as const, key: ipamNodeKey(name) }, ...cur.alloc.podCIDRs.map((c) => ({ type: 'delete' as const, key: ipamCidrKey(canonical(c)) }))]),
        );
      const r = await tx(batch);
      let done = r.succeeded ? batch : [];
      if (!r.succeeded) {
        done = [];
        for (const one of batch) if ((await tx([one])).succeeded) done.push(one);
      }
      for (const { name, cur } of done) {
        this.stats.released++;
        this.log.info('node garbage-collected: its pod CIDR returned to the pool', { node: name, podCIDRs: cur.alloc.podCIDRs });
      }
    }
  }
}

function canonical(c: string): string {
  try {
    return formatCidr(parseCidr(c));
  } catch {
    return c;
  }
}
