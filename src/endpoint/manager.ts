/**
 * Endpoint manager: creates, restores, checks and deletes endpoints.
 *
 * Creation is synchronous: when create() returns, the endpoint's veth, address,
 * routes, programs, links and map entries are in place (the CNI result is sent
 * only then). Each step registers its inverse; a failure undoes what was done.
 * Records are persisted atomically under <state-dir>/endpoints/<id>.json after
 * the datapath is ready, so a restart restores exactly the endpoints that exist.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AgentConfig } from '../agent/config';
import { hostVethName } from '../agent/config';
import { Datapath, EndpointConfig, EndpointConflict, endpointKey } from '../datapath/datapath';
import { Undo } from '../datapath/reconciler';
import { Netns, NetnsError } from '../netlink';
import { IdentityAllocator, ReservedIdentity } from '../identity/identity';
import { Ipam, IpamError } from '../ipam/ipam';
import { formatIp, parseIp, parseMac, IpAddr } from '../util/ip';
import { mkdirp, readJson, writeJsonAtomic } from '../util/fsutil';
import type { Logger } from '../util/log';
import { ENDPOINT_F_HOST, MB_MAX_ENDPOINTS } from '../datapath/constants';
import type { EndpointInfo } from '../datapath/datapath';
import { policyState } from '../datapath/policymap';
import type { TableState } from '../datapath/reconciler';
import type { IpCache } from '../ipcache/ipcache';
import type { PolicyEngine } from '../policy/engine';
import type { ComputedPolicy, NamedPort } from '../policy/mapstate';

/** The policy epoch after `e` (1..65535; 0 means "never cached" in conntrack entries). */
export function nextEpoch(e: number): number {
  return e >= 0xffff || e < 1 ? 1 : e + 1;
}

/**
 * Policy-map slots kept ready for the next endpoint ids (see
 * Datapath.ensurePolicySlot): installing one waits for an RCU grace period
 * (~13 ms here), installing many in one batch costs the same, so a burst of
 * up to this many ADDs waits for none and the slots are refilled together.
 */
const PREWARM_SLOTS = 16;

export type EndpointState = 'ready' | 'restoring' | 'not-ready' | 'disconnecting';

export interface Endpoint {
  id: number;
  containerId: string;
  ifname: string;
  netns: string;
  namespace: string;
  podName?: string;
  podUid?: string;
  labels: string[];
  identity: number;
  ipv4: string;
  mac: string;
  hostIfname: string;
  hostIfindex: number;
  hostMac: string;
  mtu: number;
  state: EndpointState;
  problems?: string[];
  createdAt: string;
  /** Container ports by name (from the Pod object), for named ports in policy. */
  namedPorts: Record<string, NamedPort[]>;
  /** Policy enforcement per direction and the policy revision this endpoint has reached. */
  policy: { ingress: boolean; egress: boolean; revision: number; entries: number; error?: string; addressRules?: boolean; epoch?: number };
}

/** Where an endpoint's security labels and named ports come from (Pod and Namespace objects). */
export interface PodSource {
  podInfo(namespace: string, podName?: string): { labels: string[]; namedPorts: Record<string, NamedPort[]> };
}

export interface CreateRequest {
  containerId: string;
  ifname: string;
  netns: string;
  args?: Record<string, string>;
  mtu?: number;
}

export class EndpointError extends Error {
  /** `field`: the request field at fault (netns, ifname, ...), for callers that map it to their own names. */
  constructor(message: string, readonly kind: 'conflict' | 'invalid' | 'not-found' | 'internal' | 'exhausted', readonly field?: string) {
    super(message);
  }
}

export function attachmentKey(containerId: string, ifname: string): string {
  return `${containerId}/${ifname}`;
}

export class EndpointManager {
  private readonly byId = new Map<number, Endpoint>();
  /** ids and attachments of creations in flight */
  private readonly reservedIds = new Set<number>();
  private readonly inFlight = new Set<string>();
  /** DELs in flight by attachment (a second DEL of the same attachment waits for the first). */
  private readonly deleting = new Map<string, Promise<{ deleted: boolean; errors: string[] }>>();
  private readonly dir: string;
  /** Policy map states by computation: endpoints with the same identity share one (see policyStateOf). */
  private readonly policyStates = new WeakMap<ComputedPolicy, TableState>();
  readonly createDurationsMs: number[] = [];
  readonly regenerationDurationsMs: number[] = [];
  /** Observers of durations (metrics). */
  onCreated?: (ms: number) => void;
  onRegenerated?: (ms: number) => void;
  /** Called after endpoints appear, disappear or change identity (services derive backends from them). */
  onEndpointsChanged?: () => void;

  constructor(
    private readonly cfg: AgentConfig,
    private readonly log: Logger,
    private readonly dp: Datapath,
    readonly ipam: Ipam,
    readonly identities: IdentityAllocator,
    readonly policy: PolicyEngine,
    private readonly pods: PodSource,
    private readonly ipcache: IpCache,
  ) {
    this.dir = path.join(cfg.stateDir, 'endpoints');
    mkdirp(this.dir);
  }

  list(): Endpoint[] {
    return [...this.byId.values()].sort((a, b) => a.id - b.id);
  }

  get(id: number): Endpoint | undefined {
    return this.byId.get(id);
  }

  findByAttachment(containerId: string, ifname: string): Endpoint | undefined {
    for (const ep of this.byId.values()) if (ep.containerId === containerId && ep.ifname === ifname) return ep;
    return undefined;
  }

  /** Node addresses into the ipcache (identity host) and the endpoints map (HOST flag). */
  syncHostEntries(): void {
    const router = this.ipam.router;
    const addrs = [router, ...this.dp.hostAddresses()];
    for (const a of addrs) {
      this.ipcache.upsert(a, 'host', { identity: ReservedIdentity.host });
      this.dp.endpoints.upsert(endpointKey(a), {
        ifindex: 0,
        ep_id: 0,
        pad: 0,
        flags: ENDPOINT_F_HOST,
        sec_id: ReservedIdentity.host,
        mac: Buffer.alloc(6),
        node_mac: Buffer.alloc(6),
      } as unknown as EndpointInfo);
    }
  }

  /** An address that is no longer the node's (a Gateway's, given back): its host entries go. */
  forgetHostAddress(ip: string): void {
    const a = parseIp(ip, 'address');
    this.ipcache.delete(a, 'host');
    this.dp.endpoints.delete(endpointKey(a));
  }

  /** Restore endpoints from disk; their kernel state (veths, pinned links and maps) is reused, not re-created. */
  async restore(): Promise<void> {
    for (const f of fs.readdirSync(this.dir)) {
      if (!/^\d+\.json$/.test(f)) continue;
      const ep = readJson<Endpoint>(path.join(this.dir, f));
      if (!ep) continue;
      const ident = this.identities.restore(ep.identity, ep.labels);
      if (ident.id !== ep.identity) {
        this.log.warn('restored endpoint identity changed', { endpoint: ep.id, old: ep.identity, new: ident.id });
        ep.identity = ident.id;
      }
      try {
        this.ipam.reserve(ep.ipv4, attachmentKey(ep.containerId, ep.ifname));
      } catch (e) {
        this.log.error('restore: address conflict', { endpoint: ep.id, error: e });
      }
      ep.namedPorts ??= {};
      ep.policy ??= { ingress: false, egress: false, revision: 0, entries: 0 };
      // Continue after the kernel's epoch: verdicts cached before the restart are rechecked once.
      ep.policy.epoch = nextEpoch(this.dp.kernelPolicyEpoch(ep.id) ?? ep.policy.epoch ?? 0);
      const problems = this.dp.restoreEndpoint(this.config(ep));
      if (!problems.length) problems.push(...this.dp.checkEndpoint(ep.id, ep.hostIfname).filter((p) => !p.startsWith('mb_')));
      ep.state = problems.length ? 'not-ready' : 'ready';
      ep.problems = problems.length ? problems : undefined;
      if (problems.length) this.log.warn('restored endpoint is not intact', { endpoint: ep.id, problems });
      this.byId.set(ep.id, ep);
      this.desire(ep);
    }
    this.identities.pruneUnreferenced();
    this.dp.prewarmPolicySlots(this.nextFreeIds(PREWARM_SLOTS));
    this.log.info('restored endpoints', { count: this.byId.size });
    await this.reclaimInterrupted();
  }

  /**
   * An ADD the agent died in left an address allocated (IPAM is written first)
   * and no endpoint record (written last): release such addresses, and the
   * veth that ADD may have created. Addresses of restored endpoints stay.
   */
  private async reclaimInterrupted(): Promise<void> {
    const live = new Set([...this.byId.values()].map((ep) => attachmentKey(ep.containerId, ep.ifname)));
    for (const a of this.ipam.list()) {
      if (a.owner === 'router' || live.has(a.owner)) continue;
      this.ipam.release(a.ip);
      const slash = a.owner.lastIndexOf('/');
      const veth = slash > 0 ? hostVethName(this.cfg, a.owner.slice(0, slash), a.owner.slice(slash + 1)) : undefined;
      const errors = veth && this.dp.linkByName(veth) ? (await this.dp.deleteEndpoint(0, veth)).filter((x) => !x.includes('mb_call_policy')) : [];
      this.log.warn('reclaimed the address of an interrupted ADD (no endpoint was created)', { owner: a.owner, ipv4: a.ip, veth, errors: errors.length ? errors : undefined });
    }
  }

  /** What the shared programs need to know about the endpoint. */
  private config(ep: Endpoint, identity = ep.identity): EndpointConfig {
    return {
      id: ep.id,
      identity,
      ipv4: parseIp(ep.ipv4),
      hostIfindex: ep.hostIfindex,
      hostMac: parseMac(ep.hostMac),
      podMac: parseMac(ep.mac),
      addressRules: ep.policy.addressRules,
      policyEpoch: ep.policy.epoch ?? 1,
    };
  }

  /**
   * The endpoint's next policy epoch (1..65535). On wrap-around its conntrack
   * entries are flushed: none may keep a verdict cached under a reused epoch.
   */
  private bumpEpoch(ep: Endpoint): number {
    const cur = ep.policy.epoch ?? 0;
    const next = nextEpoch(cur);
    if (cur > 0 && next === 1) {
      this.dp.flushConntrackOf(parseIp(ep.ipv4)).then(
        (n) => this.log.info('policy epoch wrapped: conntrack entries of the endpoint flushed', { endpoint: ep.id, entries: n }),
        (e) => this.log.error('flushing conntrack after a policy epoch wrap failed', { endpoint: ep.id, error: e }),
      );
    }
    return next;
  }

  private desire(ep: Endpoint): void {
    const ip = parseIp(ep.ipv4);
    this.dp.endpoints.upsert(endpointKey(ip), {
      ifindex: ep.hostIfindex,
      ep_id: ep.id,
      pad: 0,
      flags: 0,
      sec_id: ep.identity,
      mac: parseMac(ep.mac),
      node_mac: parseMac(ep.hostMac),
    } as unknown as EndpointInfo);
    this.ipcache.upsert(ip, 'endpoint', { identity: ep.identity, namespace: ep.namespace, pod: ep.podName });
  }

  private undesire(ep: Endpoint): void {
    const ip = parseIp(ep.ipv4);
    this.dp.endpoints.delete(endpointKey(ip));
    this.ipcache.delete(ip, 'endpoint');
  }

  /** The ids allocateId would hand out next (for preparing their policy-map slots). */
  nextFreeIds(n: number): number[] {
    const out: number[] = [];
    for (let id = 1; id < MB_MAX_ENDPOINTS && out.length < n; id++) if (!this.byId.has(id) && !this.reservedIds.has(id)) out.push(id);
    return out;
  }

  private allocateId(): number {
    for (let id = 1; id < MB_MAX_ENDPOINTS; id++) {
      if (this.byId.has(id) || this.reservedIds.has(id)) continue;
      this.reservedIds.add(id);
      return id;
    }
    throw new EndpointError(`endpoint ids 1..${MB_MAX_ENDPOINTS - 1} are exhausted`, 'exhausted');
  }

  /**
   * Create an endpoint. Returns when its veth, addresses, routes, policy map,
   * configuration, tail-call slot and link are in place. Creations run
   * concurrently (ids and addresses are reserved up front); the identity is
   * awaited, so a cluster-wide allocator can take its time.
   */
  async create(req: CreateRequest): Promise<Endpoint> {
    const t0 = process.hrtime.bigint();
    const owner = attachmentKey(req.containerId, req.ifname);
    if (this.findByAttachment(req.containerId, req.ifname) || this.inFlight.has(owner) || this.deleting.has(owner)) {
      throw new EndpointError(`an endpoint for container ${req.containerId} interface ${req.ifname} already exists`, 'conflict');
    }
    try {
      Netns.open(req.netns).close();
    } catch (e) {
      if (e instanceof NetnsError) throw new EndpointError(`netns: ${e.message}`, 'invalid', 'netns');
      throw e;
    }
    const args = req.args ?? {};
    const namespace = args.K8S_POD_NAMESPACE || 'default';
    const pod = this.pods.podInfo(namespace, args.K8S_POD_NAME || undefined);
    const undo = new Undo();
    const log = this.log.child({ containerId: req.containerId, ifname: req.ifname });
    this.inFlight.add(owner);
    let id = 0;
    try {
      const ip: IpAddr = this.ipam.allocate(owner);
      undo.push(`release ${formatIp(ip)}`, () => void this.ipam.release(formatIp(ip)));
      id = this.allocateId();
      // The identity (maybe from the cluster) and the endpoint's policy-map slot
      // (a grace-period wait on a worker thread unless prepared) come in parallel.
      const [ident] = await Promise.all([this.identities.acquire(pod.labels), this.dp.ensurePolicySlot(id)]);
      undo.push(`release identity ${ident.id}`, () => this.identities.release(ident.id));
      const hostIfname = hostVethName(this.cfg, req.containerId, req.ifname);
      const mtu = req.mtu ?? this.cfg.mtu;
      // The policy is computed first and written before the link is attached:
      // an endpoint never sends a packet without its policy in place.
      const revision = this.policy.revision;
      const computed = this.policy.compute({ identity: ident.id, labels: ident.labels, namedPorts: pod.namedPorts });
      const state = this.policyStateOf(computed);
      if (state.size > this.cfg.policyMapMaxEntries) {
        throw new PolicyMapFullError(`policy needs ${state.size} map entries; this node allows ${this.cfg.policyMapMaxEntries} per endpoint (--policy-map-max-entries)`, state.size, this.cfg.policyMapMaxEntries);
      }
      const res = this.dp.createEndpoint(
        { id, identity: ident.id, ipv4: ip, hostIfname, podIfname: req.ifname, netnsPath: req.netns, mtu, addressRules: computed.addressRules },
        this.ipam.router,
        undo,
        state,
      );
      const ep: Endpoint = {
        id,
        containerId: req.containerId,
        ifname: req.ifname,
        netns: req.netns,
        namespace,
        podName: args.K8S_POD_NAME || undefined,
        podUid: args.K8S_POD_UID || undefined,
        labels: ident.labels,
        identity: ident.id,
        ipv4: formatIp(ip),
        mac: res.podMac,
        hostIfname,
        hostIfindex: res.hostIfindex,
        hostMac: res.hostMac,
        mtu,
        state: 'ready',
        createdAt: new Date().toISOString(),
        namedPorts: pod.namedPorts,
        policy: { ingress: computed.ingress.enforced, egress: computed.egress.enforced, revision, entries: state.size, addressRules: computed.addressRules, epoch: 1 },
      };
      this.desire(ep);
      undo.push('remove map entries', () => {
        this.undesire(ep);
        this.dp.endpoints.flush();
        this.dp.ipcache.flush();
      });
      this.dp.endpoints.flush();
      this.dp.ipcache.flush();
      writeJsonAtomic(path.join(this.dir, `${id}.json`), ep, { durable: false });
      this.byId.set(id, ep);
      undo.clear();
      this.dp.prewarmPolicySlots(this.nextFreeIds(PREWARM_SLOTS));
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      this.createDurationsMs.push(ms);
      this.onCreated?.(ms);
      if (this.createDurationsMs.length > 10000) this.createDurationsMs.splice(0, 5000);
      this.onEndpointsChanged?.();
      log.info('endpoint created', { endpoint: id, ipv4: ep.ipv4, identity: ep.identity, hostIfname, durationMs: Math.round(ms * 100) / 100 });
      return ep;
    } catch (e) {
      const undoErrors = undo.run();
      if (undoErrors.length) log.error('undo after failed create left problems', { undoErrors });
      log.warn('endpoint create failed', { error: e });
      if (e instanceof EndpointError) throw e;
      if (e instanceof EndpointConflict) throw new EndpointError(e.message, 'conflict');
      if (e instanceof IpamError) throw new EndpointError(e.message, e.code === 'exhausted' ? 'exhausted' : 'internal');
      throw new EndpointError((e as Error).message, 'internal');
    } finally {
      this.inFlight.delete(owner);
      if (id) this.reservedIds.delete(id);
    }
  }

  /**
   * The policy map state of a computation, encoded once: the endpoints that
   * share an identity and named ports (hence one memoised computation) adopt
   * the same state rather than each keeping a copy of it.
   */
  private policyStateOf(computed: ComputedPolicy): TableState {
    let st = this.policyStates.get(computed);
    if (!st) {
      st = policyState(computed.entries.values());
      this.policyStates.set(computed, st);
    }
    return st;
  }

  /** Pods on other nodes (cluster mode): their named ports count too. */
  remotePeers?: () => Iterable<{ identity: number; namedPorts?: Record<string, NamedPort[]> }>;

  /** Named ports of pods by identity (local and, in cluster mode, remote): egress named ports resolve on the peer. */
  private updatePeerPorts(): void {
    const byId = new Map<number, Record<string, NamedPort[]>>();
    for (const ep of [...this.byId.values(), ...(this.remotePeers?.() ?? [])]) {
      const cur = byId.get(ep.identity) ?? {};
      for (const [name, ports] of Object.entries(ep.namedPorts ?? {})) {
        const list = (cur[name] ??= []);
        for (const p of ports) if (!list.some((x) => x.port === p.port && x.protocol === p.protocol)) list.push(p);
      }
      byId.set(ep.identity, cur);
    }
    this.policy.setPeerPorts(byId);
  }

  /**
   * Bring one endpoint's policy map to the current policy by diff. On failure
   * (map full, say) the endpoint fails closed: its policy map is emptied, which
   * drops everything but replies of tracked connections, and the error is kept.
   */
  regenerate(ep: Endpoint): boolean {
    const table = this.dp.policyTable(ep.id);
    if (!table) return false;
    const before = durable(ep);
    try {
      return this.regenerateInner(ep, table);
    } finally {
      // Only what a restart needs is written; revision and entry counts are recomputed then.
      if (durable(ep) !== before) this.persist(ep);
    }
  }

  private regenerateInner(ep: Endpoint, table: NonNullable<ReturnType<Datapath['policyTable']>>): boolean {
    const revision = this.policy.revision;
    const computed = this.policy.compute({ identity: ep.identity, labels: ep.labels, namedPorts: ep.namedPorts ?? {} });
    const state = this.policyStateOf(computed);
    try {
      if (state.size > this.cfg.policyMapMaxEntries) {
        throw new PolicyMapFullError(`policy needs ${state.size} map entries; this node allows ${this.cfg.policyMapMaxEntries} per endpoint (--policy-map-max-entries)`, state.size, this.cfg.policyMapMaxEntries);
      }
      const diff = table.adoptState(state);
      table.flush();
      // The entries first, then the configuration: address-block rules appear before the switch that
      // makes the datapath use them (and go after it); a new epoch makes conntrack recheck cached verdicts.
      const changed = diff.upserts + diff.deletes > 0;
      let epoch = ep.policy.epoch ?? 1;
      if (changed || !!computed.addressRules !== !!ep.policy.addressRules) {
        if (changed) epoch = this.bumpEpoch(ep);
        this.dp.setEndpointConfig({ ...this.config(ep), addressRules: computed.addressRules, policyEpoch: epoch });
      }
      ep.policy = { ingress: computed.ingress.enforced, egress: computed.egress.enforced, revision, entries: state.size, addressRules: computed.addressRules, epoch };
      if (ep.state === 'not-ready' && ep.problems?.every((p) => p.startsWith('policy'))) {
        ep.state = 'ready';
        ep.problems = undefined;
      }
      return true;
    } catch (e) {
      const msg = `policy of endpoint ${ep.id} could not be applied (${state.size} entries, revision ${revision}): ${(e as Error).message}`;
      this.log.error('policy regeneration failed; endpoint fails closed', { endpoint: ep.id, error: msg });
      try {
        table.clearAll();
        const epoch = this.bumpEpoch(ep);
        this.dp.setEndpointConfig({ ...this.config(ep), policyEpoch: epoch });
        ep.policy = { ...ep.policy, epoch };
      } catch (e2) {
        this.log.error('could not clear policy map', { endpoint: ep.id, error: e2 });
      }
      ep.state = 'not-ready';
      ep.problems = [`policy: ${msg}`];
      ep.policy = { ...ep.policy, error: msg };
      return false;
    }
  }

  /** Regenerate every endpoint. */
  regenerateAll(): { endpoints: number; failed: number; ms: number; revision: number } {
    const t0 = process.hrtime.bigint();
    this.updatePeerPorts();
    let failed = 0;
    for (const ep of this.byId.values()) {
      const e0 = process.hrtime.bigint();
      if (!this.regenerate(ep)) failed++;
      const ms = Number(process.hrtime.bigint() - e0) / 1e6;
      this.regenerationDurationsMs.push(ms);
      this.onRegenerated?.(ms);
    }
    if (this.regenerationDurationsMs.length > 20000) this.regenerationDurationsMs.splice(0, 10000);
    this.identities.flush();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    return { endpoints: this.byId.size, failed, ms, revision: this.policy.revision };
  }

  /** The lowest policy revision every endpoint enforces (-1 if one failed to apply its policy). */
  enforcedRevision(): number {
    let min = this.policy.revision;
    for (const e of this.byId.values()) min = Math.min(min, e.policy.error ? -1 : e.policy.revision);
    return min;
  }

  private persist(ep: Endpoint): void {
    writeJsonAtomic(path.join(this.dir, `${ep.id}.json`), ep, { durable: false });
  }

  /**
   * Re-derive the security labels of endpoints from the Pod and Namespace
   * objects; an endpoint whose labels changed gets its new identity, which is
   * one configuration write (the programs are shared; nothing is reloaded).
   * Returns the number of endpoints whose identity changed.
   */
  async refreshIdentities(): Promise<number> {
    let changed = 0;
    for (const ep of [...this.byId.values()]) {
      const pod = this.pods.podInfo(ep.namespace, ep.podName);
      const portsChanged = JSON.stringify(pod.namedPorts) !== JSON.stringify(ep.namedPorts ?? {});
      if (portsChanged) ep.namedPorts = pod.namedPorts;
      if (pod.labels.join(',') === ep.labels.join(',')) {
        if (portsChanged) this.persist(ep);
        continue;
      }
      const next = await this.identities.acquire(pod.labels);
      if (!this.byId.has(ep.id)) {
        this.identities.release(next.id); // deleted meanwhile
        continue;
      }
      try {
        this.dp.setEndpointConfig(this.config(ep, next.id));
      } catch (e) {
        this.identities.release(next.id);
        this.log.error('identity change failed', { endpoint: ep.id, error: e });
        continue;
      }
      const old = ep.identity;
      ep.identity = next.id;
      ep.labels = next.labels;
      this.desire(ep);
      this.identities.release(old);
      this.log.info('endpoint identity changed', { endpoint: ep.id, from: old, to: next.id });
      this.persist(ep);
      changed++;
    }
    if (changed) {
      this.dp.endpoints.flush();
      this.dp.ipcache.flush();
      this.onEndpointsChanged?.();
    }
    return changed;
  }

  /**
   * Delete by attachment. Idempotent: a missing endpoint is not an error.
   * Addresses are released even if the netns is gone. The kernel's wait while
   * the veth goes away happens off the event loop; meanwhile an ADD of the
   * same attachment is refused (conflict) and a second DEL waits for this one.
   */
  delete(containerId: string, ifname: string): Promise<{ deleted: boolean; errors: string[] }> {
    const owner = attachmentKey(containerId, ifname);
    const running = this.deleting.get(owner);
    if (running) return running;
    const p = this.deleteNow(containerId, ifname).finally(() => this.deleting.delete(owner));
    this.deleting.set(owner, p);
    return p;
  }

  private async deleteNow(containerId: string, ifname: string): Promise<{ deleted: boolean; errors: string[] }> {
    const owner = attachmentKey(containerId, ifname);
    const ep = this.findByAttachment(containerId, ifname);
    const errors: string[] = [];
    if (ep) {
      ep.state = 'disconnecting';
      errors.push(...(await this.dp.deleteEndpoint(ep.id, ep.hostIfname, ep.hostIfindex)));
      this.undesire(ep);
      try {
        this.dp.endpoints.flush();
        this.dp.ipcache.flush();
      } catch (e) {
        errors.push((e as Error).message);
      }
      this.identities.release(ep.identity);
      fs.rmSync(path.join(this.dir, `${ep.id}.json`), { force: true });
      this.byId.delete(ep.id);
      this.onEndpointsChanged?.();
      this.log.info('endpoint deleted', { endpoint: ep.id, containerId, ifname, errors: errors.length ? errors : undefined });
    } else {
      // A failed ADD may have left a veth behind under the name this attachment would use.
      const name = hostVethName(this.cfg, containerId, ifname);
      if (this.dp.linkByName(name)) errors.push(...(await this.dp.deleteEndpoint(0, name)));
    }
    this.ipam.releaseOwner(owner);
    return { deleted: !!ep, errors };
  }

  /** Verify what ADD created still exists. */
  check(containerId: string, ifname: string, netns?: string): string[] {
    const ep = this.findByAttachment(containerId, ifname);
    if (!ep) return [`no endpoint for container ${containerId} interface ${ifname}`];
    const problems = this.dp.checkEndpoint(ep.id, ep.hostIfname);
    if (netns && netns !== ep.netns) problems.push(`netns ${netns} differs from the endpoint's ${ep.netns}`);
    if (!this.ipam.ownedBy(attachmentKey(containerId, ifname))) problems.push(`address ${ep.ipv4} is not reserved for the attachment`);
    problems.push(...this.dp.checkPodSide(ep.netns, ifname, ep.ipv4, formatIp(this.ipam.router)));
    return problems;
  }

  /** Remove endpoints, addresses and veths of attachments not in the valid list. */
  async gc(valid: { containerId: string; ifname: string }[]): Promise<{ removed: string[]; errors: string[] }> {
    const keep = new Set(valid.map((v) => attachmentKey(v.containerId, v.ifname)));
    const removed: string[] = [];
    const errors: string[] = [];
    for (const ep of this.list()) {
      const key = attachmentKey(ep.containerId, ep.ifname);
      if (keep.has(key)) continue;
      const r = await this.delete(ep.containerId, ep.ifname);
      removed.push(key);
      errors.push(...r.errors);
    }
    for (const a of this.ipam.list()) {
      if (a.owner === 'router' || keep.has(a.owner)) continue;
      this.ipam.release(a.ip);
      removed.push(`${a.owner} (address ${a.ip})`);
    }
    return { removed, errors };
  }
}

/** The fields of an endpoint record that a restart depends on (policy results are recomputed on start). */
function durable(ep: Endpoint): string {
  return JSON.stringify([ep.state, ep.problems, ep.identity, ep.labels, ep.namedPorts]);
}

/** An endpoint's policy needs more entries than its policy map may hold on this node. */
export class PolicyMapFullError extends Error {
  constructor(
    message: string,
    readonly entries: number,
    readonly limit: number,
  ) {
    super(message);
  }
}
