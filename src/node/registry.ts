/**
 * Nodes of the cluster. Each agent registers its node (name, underlay address,
 * router address, pod CIDRs, health) under its lease at nodes/v1/<name>, and
 * watches every other node's record: a node whose agent stops renewing its
 * lease disappears from etcd within the lease TTL, and from every node's maps
 * right after; one that comes back is programmed again.
 *
 * Registration is serialised through nodes/registry (a transaction guarded by
 * its revision), so two nodes starting at once with overlapping pod CIDRs
 * cannot both get in: the second is refused with an error naming both.
 * Pod CIDRs come from --pod-cidr, or (without it) from the operator's cluster
 * pool: the node registers without pod CIDRs, waits for its allocation
 * (ipam/v1/nodes/<node>) and then writes them into its record.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Kvstore, LeasedKeys, Reflector, ReflectorEvent } from '../kvstore';
import { NODES, NODE_REGISTRY, nodeKey, unescapeSegment } from '../kvstore/keys';
import { Cidr, parseCidr, cidrContains, bitsOf } from '../util/ip';
import type { Logger } from '../util/log';

export interface NodeAddress {
  /** InternalIP: the underlay address tunnels go to; RouterIP: the node's address in its pod CIDR. */
  type: 'InternalIP' | 'RouterIP';
  ip: string;
}

export interface NodeRecord {
  name: string;
  /** Persistent id of the agent's state directory: tells a restart of this node from another agent using its name. */
  bootId: string;
  addresses: NodeAddress[];
  podCIDRs: string[];
  tunnel: { type: 'vxlan'; port: number };
  health: { status: 'ok' | 'degraded'; problems: string[]; since: string };
  version: string;
  startedAt: string;
  /** Cluster pool: the CIDR this node's pods held addresses from before (its state), asked for again if free. */
  podCidrHint?: string;
  /** Where the node's agent serves its flows to the cluster's agents (--relay-address), if it does. */
  relay?: { address: string };
}

export interface NodeView extends NodeRecord {
  alive: boolean;
  lastSeen?: string;
  self: boolean;
}

export class NodeRegistrationError extends Error {
  constructor(
    message: string,
    readonly field: 'pod-cidr' | 'node-name',
  ) {
    super(message);
  }
}

export function internalIp(n: NodeRecord): string | undefined {
  return n.addresses.find((a) => a.type === 'InternalIP')?.ip;
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  if (a.addr.family !== b.addr.family) return false;
  return a.prefixLen <= b.prefixLen ? cidrContains(a, b.addr) : cidrContains(b, a.addr);
}

/** The first pod CIDR of `mine` overlapping one of another node's, or undefined. */
export function findOverlap(mine: string[], others: NodeRecord[], self: string): { mine: string; other: NodeRecord; theirs: string } | undefined {
  for (const m of mine) {
    const mc = parseCidr(m);
    for (const o of others) {
      if (o.name === self) continue;
      for (const t of o.podCIDRs) {
        if (cidrsOverlap(mc, parseCidr(t))) return { mine: m, other: o, theirs: t };
      }
    }
  }
  return undefined;
}

/** This agent's persistent node id (created once in the state directory). */
export function loadBootId(stateDir: string): string {
  const f = path.join(stateDir, 'node-id');
  try {
    const v = fs.readFileSync(f, 'utf8').trim();
    if (v) return v;
  } catch {
    /* first start */
  }
  const id = crypto.randomUUID();
  fs.writeFileSync(f, id + '\n', { mode: 0o600 });
  return id;
}

export class NodeRegistry {
  private readonly reflector: Reflector;
  private readonly nodes = new Map<string, NodeRecord>();
  /** Nodes that were in the cluster since this agent started and are gone (lease expired). */
  private readonly gone = new Map<string, { record: NodeRecord; at: string }>();
  private readonly listeners: ((name: string, now: NodeRecord | undefined, before: NodeRecord | undefined) => void)[] = [];
  private record?: NodeRecord;

  constructor(
    private readonly kv: Kvstore,
    private readonly keys: LeasedKeys,
    readonly self: string,
    private readonly log: Logger,
  ) {
    this.reflector = new Reflector(kv, NODES, log.child({ component: 'nodes' }));
    this.reflector.subscribe((evs) => this.onEvents(evs));
  }

  /** Called for every change of a node (now undefined: it is gone). */
  onChange(fn: (name: string, now: NodeRecord | undefined, before: NodeRecord | undefined) => void): void {
    this.listeners.push(fn);
  }

  async start(timeoutMs?: number): Promise<void> {
    await this.reflector.start(timeoutMs);
  }

  stop(): void {
    this.reflector.stop();
  }

  get watchEvents(): number {
    return this.reflector.stats.events;
  }

  get(name: string): NodeRecord | undefined {
    return this.nodes.get(name);
  }

  all(): NodeRecord[] {
    return [...this.nodes.values()];
  }

  remote(): NodeRecord[] {
    return this.all().filter((n) => n.name !== this.self);
  }

  view(): NodeView[] {
    const out: NodeView[] = [];
    for (const n of this.nodes.values()) out.push({ ...n, alive: true, self: n.name === this.self });
    for (const [name, g] of this.gone) if (!this.nodes.has(name)) out.push({ ...g.record, alive: false, lastSeen: g.at, self: false });
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  private onEvents(evs: ReflectorEvent[]): void {
    for (const ev of evs) {
      const name = unescapeSegment(ev.key);
      const before = this.nodes.get(name);
      let now: NodeRecord | undefined;
      if (ev.type === 'put') {
        try {
          now = JSON.parse(ev.value!) as NodeRecord;
          for (const c of now.podCIDRs) parseCidr(c);
        } catch (e) {
          this.log.error('node record is not valid; ignored', { node: name, error: e });
          continue;
        }
        this.nodes.set(name, now);
        this.gone.delete(name);
        if (!before) this.log.info('node joined', { node: name, address: internalIp(now), podCIDRs: now.podCIDRs });
      } else {
        this.nodes.delete(name);
        if (before) this.gone.set(name, { record: before, at: new Date().toISOString() });
        this.log.info('node left (its lease expired or was revoked)', { node: name });
        if (name === this.self && this.record) {
          // Our own record vanished (lease lost during an outage): write it again.
          this.keys.set(nodeKey(this.self), JSON.stringify(this.record));
        }
      }
      if (JSON.stringify(before) === JSON.stringify(now)) continue;
      for (const l of this.listeners) l(name, now, before);
    }
  }

  /**
   * Register this node: refused if another live agent holds the name, or if
   * a pod CIDR overlaps another node's. The record is written in the same
   * transaction that checks, under this agent's lease.
   */
  async register(rec: NodeRecord): Promise<void> {
    for (const c of rec.podCIDRs) {
      const p = parseCidr(c, 'pod-cidr');
      if (p.prefixLen === 0 || p.prefixLen > bitsOf(p.addr.family)) throw new NodeRegistrationError(`pod-cidr: "${c}" is not a usable CIDR`, 'pod-cidr');
    }
    const key = nodeKey(rec.name);
    for (let attempt = 0; attempt < 20; attempt++) {
      const lease = await this.keys.grant();
      const [listing, reg] = await Promise.all([this.kv.list(NODES), this.kv.get(NODE_REGISTRY)]);
      const others: NodeRecord[] = [];
      for (const item of listing.kvs) {
        try {
          others.push(JSON.parse(item.value) as NodeRecord);
        } catch {
          /* ignored as in the watch */
        }
      }
      const same = others.find((o) => o.name === rec.name);
      if (same && same.bootId !== rec.bootId) {
        throw new NodeRegistrationError(
          `node-name: "${rec.name}" is already registered by another live agent (underlay ${internalIp(same) ?? '?'}, started ${same.startedAt}); pick another --node-name or stop that agent`,
          'node-name',
        );
      }
      const clash = findOverlap(rec.podCIDRs, others, rec.name);
      if (clash) {
        throw new NodeRegistrationError(
          `pod-cidr: ${clash.mine} of node "${rec.name}" overlaps ${clash.theirs} of node "${clash.other.name}" (underlay ${internalIp(clash.other) ?? '?'}); every node needs its own pod CIDR`,
          'pod-cidr',
        );
      }
      const value = JSON.stringify(rec);
      const r = await this.kv.txn(
        [reg ? { key: NODE_REGISTRY, target: 'mod', op: '==', value: reg.modRevision } : { key: NODE_REGISTRY, target: 'create', op: '==', value: 0 }],
        [
          { type: 'put', key: NODE_REGISTRY, value: rec.name },
          { type: 'put', key, value, lease },
        ],
      );
      if (r.succeeded) {
        this.record = rec;
        this.keys.adopt(key, value, lease);
        await this.reflector.waitForRevision(r.revision, 10_000);
        this.log.info('node registered', { node: rec.name, podCIDRs: rec.podCIDRs, address: internalIp(rec), lease });
        return;
      }
      await new Promise((res) => setTimeout(res, 20 * (attempt + 1) + Math.random() * 50));
    }
    throw new NodeRegistrationError(`node-name: could not register "${rec.name}": other nodes kept registering at the same time`, 'node-name');
  }

  /** Update this node's health in its record (written only when it changes). */
  setHealth(status: 'ok' | 'degraded', problems: string[]): void {
    if (!this.record) return;
    if (this.record.health.status === status && JSON.stringify(this.record.health.problems) === JSON.stringify(problems)) return;
    this.record = { ...this.record, health: { status, problems, since: new Date().toISOString() } };
    this.keys.set(nodeKey(this.self), JSON.stringify(this.record));
  }

  /** The pod CIDRs the operator allocated (cluster pool), and the router address in them. */
  setPodCidrs(podCIDRs: string[], routerIp: string): void {
    if (!this.record) return;
    const addresses = [...this.record.addresses.filter((a) => a.type !== 'RouterIP'), { type: 'RouterIP' as const, ip: routerIp }];
    this.record = { ...this.record, podCIDRs, addresses };
    this.keys.set(nodeKey(this.self), JSON.stringify(this.record));
  }

  get ownRecord(): NodeRecord | undefined {
    return this.record;
  }
}

