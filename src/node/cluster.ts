/**
 * This node's membership in a cluster (cluster mode, --kvstore-endpoints):
 * the etcd connection, the agent's lease and the keys on it, the shared
 * resource store, cluster-wide identities, the node registry and the pods of
 * every node (ipcache/v1/<ip>).
 *
 * What it produces for the rest of the agent:
 *   - `store`: the Store the agent reads resources from and writes them to;
 *   - `identities`: the backend of the identity allocator;
 *   - ipcache claims (through an IpcacheSink): every remote pod's /32 with its
 *     identity and the underlay address of its node, every remote node's pod
 *     CIDRs (identity world: an address nobody published is not trusted) and
 *     its addresses (identity remote-node), all pointing at that node's tunnel;
 *   - remote pods (for Service backends and named ports of peers).
 * What it takes: this node's endpoints (published under the lease).
 */
import { EtcdStore } from '../store/etcd';
import type { NamedPort } from '../policy/mapstate';
import { ClusterIdentities } from '../identity/cluster';
import { ReservedIdentity } from '../identity/identity';
import { Kvstore, LeasedKeys, Reflector, ReflectorEvent } from '../kvstore';
import { IPAM_NODES, IPCACHE, POLICY_REPORTS, POLICY_STATUS, escapeSegment, ipamNodeKey, ipcacheKey, policyReportKey, policyStatusKey } from '../kvstore/keys';
import type { PolicyReport } from '../policy/status';
import { ClusterServiceAllocations } from '../service/allocations';
import { readJson, writeJsonAtomic } from '../util/fsutil';
import { IpamAllocation, recordedPodCidr } from '../ipam/ipam';
import { formatIp, ipAtOffset, parseCidr, parseIp } from '../util/ip';
import { RtNetlink } from '../netlink';
import { Underlay, findUnderlay } from './address';
import { VXLAN_PORT } from '../overlay/overlay';
import type { Logger } from '../util/log';
import * as path from 'node:path';
import { NodeRecord, NodeRegistry, internalIp, loadBootId } from './registry';

export interface PodRecord {
  ip: string;
  identity: number;
  /** Name of the node hosting the pod. */
  node: string;
  /** That node's underlay address (the tunnel endpoint). */
  hostIp: string;
  namespace: string;
  pod?: string;
  /** Container ports by name: named ports of peers in egress rules. */
  namedPorts?: Record<string, NamedPort[]>;
}

export interface LocalEndpointView {
  ip: string;
  identity: number;
  namespace: string;
  podName?: string;
  namedPorts?: Record<string, NamedPort[]>;
}

/** Where cluster-learned addresses go (the ipcache's desired state; src/ipcache). */
export interface IpcacheSink {
  upsert(prefix: string, source: 'cluster-pod' | 'cluster-node' | 'cluster-cidr', entry: { identity: number; tunnelEndpoint?: string; node?: string; namespace?: string; pod?: string }): void;
  delete(prefix: string, source: 'cluster-pod' | 'cluster-node' | 'cluster-cidr'): void;
}

export interface ClusterNodeOptions {
  endpoints: string[];
  prefix: string;
  leaseTtl: number;
  nodeName: string;
  nodeIp: string;
  routerIp: string;
  podCidr: string;
  serviceCidr: string;
  stateDir: string;
  version: string;
  tunnelPort: number;
  /** The relay address to advertise (host 0.0.0.0 / :: becomes the node's underlay address). */
  relayAddress?: string;
}

interface LeaseFile {
  lease: string;
}

export class ClusterNode {
  readonly kv: Kvstore;
  readonly keys: LeasedKeys;
  readonly store: EtcdStore;
  readonly identities: ClusterIdentities;
  readonly nodes: NodeRegistry;
  readonly services: ClusterServiceAllocations;
  private readonly pods: Reflector;
  /** The acting operator (operator/v1/leader), for `membrane status`. */
  private readonly operator: Reflector;
  private readonly remote = new Map<string, PodRecord>();
  private sink?: IpcacheSink;
  /**
   * Called after cluster-learned state changed: `ipcache` (claims were made or
   * withdrawn: the ipcache table must be flushed), `pods` (remote pods changed:
   * services and named ports of peers follow them).
   */
  onChanged?: (what: { ipcache: boolean; pods: boolean; peerPorts?: boolean }) => void;
  private peerPortsSig = '';
  private readonly started = Date.now();

  private constructor(
    readonly opts: ClusterNodeOptions,
    private readonly log: Logger,
  ) {
    this.kv = new Kvstore({ endpoints: opts.endpoints, prefix: opts.prefix, log });
    this.keys = new LeasedKeys(this.kv, opts.leaseTtl, log.child({ component: 'lease' }));
    this.store = new EtcdStore(this.kv, log);
    this.services = new ClusterServiceAllocations(this.kv, opts.serviceCidr, log.child({ component: 'service-allocations' }));
    this.store.admission.push(this.services);
    this.identities = new ClusterIdentities(this.kv, this.keys, opts.nodeName, log);
    this.nodes = new NodeRegistry(this.kv, this.keys, opts.nodeName, log);
    this.pods = new Reflector(this.kv, IPCACHE, log.child({ component: 'pods' }));
    this.operator = new Reflector(this.kv, 'operator/v1/', log.child({ component: 'operator-watch' }));
    this.pods.subscribe((evs) => this.onPodEvents(evs));
    this.nodes.onChange((name, now, before) => this.onNodeChange(name, now, before));
    // The lease of the previous run goes once everything lives on the new one.
    const leaseFile = path.join(opts.stateDir, 'kvstore-lease.json');
    this.keys.adoptPreviousLease(readJson<LeaseFile>(leaseFile)?.lease);
    this.keys.onLease = (id) => writeJsonAtomic(leaseFile, { lease: id } satisfies LeaseFile);
  }

  /**
   * Connect: list and watch everything the node needs, then register the
   * node. Waits for etcd (logging while it waits): without the cluster's
   * resources the agent cannot know what to enforce, and the kernel keeps
   * enforcing what it had meanwhile.
   */
  /** The underlay device this node tunnels over (set by connectCluster). */
  underlay?: Underlay;

  static async connect(opts: ClusterNodeOptions, log: Logger): Promise<ClusterNode> {
    const c = new ClusterNode(opts, log.child({ component: 'cluster' }));
    const waiting = setInterval(() => log.warn('waiting for the cluster store', { endpoints: opts.endpoints, error: c.store.watchStats.lastError }), 5000);
    try {
      await Promise.all([c.store.start(), c.identities.start(), c.nodes.start(), c.services.start(), c.pods.start(), c.operator.start()]);
      if (!opts.podCidr) {
        // Cluster pool: a CIDR the operator allocated to this node before (a restart) is taken again at once.
        const a = await c.kv.get(ipamNodeKey(opts.nodeName));
        let alloc: IpamAllocation | undefined;
        try {
          alloc = a ? (JSON.parse(a.value) as IpamAllocation) : undefined;
        } catch {
          alloc = undefined;
        }
        if (alloc?.podCIDRs?.length) {
          opts = { ...opts, podCidr: alloc.podCIDRs[0], routerIp: formatIp(ipAtOffset(parseCidr(alloc.podCIDRs[0]), 1)) };
          c.ipamState = { mode: 'cluster-pool', waiting: false, since: new Date().toISOString(), podCIDRs: alloc.podCIDRs };
        }
      }
      await c.nodes.register({
        name: opts.nodeName,
        bootId: loadBootId(opts.stateDir),
        addresses: [{ type: 'InternalIP', ip: opts.nodeIp }, ...(opts.routerIp ? [{ type: 'RouterIP' as const, ip: opts.routerIp }] : [])],
        podCIDRs: opts.podCidr ? [opts.podCidr] : [],
        tunnel: { type: 'vxlan', port: opts.tunnelPort },
        health: { status: 'ok', problems: [], since: new Date().toISOString() },
        version: opts.version,
        startedAt: new Date().toISOString(),
        ...(opts.relayAddress ? { relay: { address: advertised(opts.relayAddress, opts.nodeIp) } } : {}),
        ...(!opts.podCidr && recordedPodCidr(opts.stateDir) ? { podCidrHint: recordedPodCidr(opts.stateDir) } : {}),
      });
    } catch (e) {
      c.close();
      throw e;
    } finally {
      clearInterval(waiting);
    }
    return c;
  }

  /** Cluster-pool IPAM: what this node waits for (membrane status shows it). */
  ipamState?: { mode: 'cluster-pool'; waiting: boolean; since: string; podCIDRs: string[]; error?: string };

  /**
   * Cluster pool (no --pod-cidr): wait for the operator to allocate this
   * node's pod CIDR (ipam/v1/nodes/<node>), logging while it waits and
   * whenever the operator reports an error (pool exhausted); then write it
   * into the node record. Resolves with the CIDR.
   */
  async waitForPodCidr(): Promise<string> {
    const own = this.nodes.ownRecord?.podCIDRs ?? [];
    if (own.length) return own[0];
    const key = escapeSegment(this.opts.nodeName);
    const watch = new Reflector(this.kv, IPAM_NODES, this.log.child({ component: 'ipam' }));
    this.ipamState = { mode: 'cluster-pool', waiting: true, since: new Date().toISOString(), podCIDRs: [] };
    const state = this.ipamState;
    let resolve!: (c: string) => void;
    const got = new Promise<string>((r) => (resolve = r));
    const check = () => {
      const v = watch.get(key);
      if (!v) return;
      let a: IpamAllocation;
      try {
        a = JSON.parse(v.value) as IpamAllocation;
      } catch {
        return;
      }
      if (a.podCIDRs?.length) {
        resolve(a.podCIDRs[0]);
        return;
      }
      if (a.error && a.error !== state.error) {
        state.error = a.error;
        this.nodes.setHealth('degraded', [`no pod CIDR: ${a.error}`]);
        this.log.error('the operator could not allocate this node a pod CIDR; still waiting', { node: this.opts.nodeName, error: a.error });
      }
    };
    watch.subscribe(check);
    const tick = setInterval(() => this.log.warn('waiting for the operator to allocate this node\'s pod CIDR (cluster pool; no --pod-cidr given)', { node: this.opts.nodeName, error: state.error }), 5000);
    try {
      await watch.start();
      check();
      const cidr = await got;
      const router = formatIp(ipAtOffset(parseCidr(cidr), 1));
      this.nodes.setPodCidrs([cidr], router);
      this.ipamState = { ...state, waiting: false, podCIDRs: [cidr], error: undefined };
      this.log.info('pod CIDR allocated by the operator', { node: this.opts.nodeName, podCIDR: cidr });
      return cidr;
    } finally {
      clearInterval(tick);
      watch.stop();
    }
  }

  /** Program cluster-learned addresses into the ipcache (now and on every change). */
  attachIpcache(sink: IpcacheSink): void {
    this.sink = sink;
    for (const n of this.nodes.remote()) this.programNode(n, undefined);
    for (const p of this.remote.values()) this.programPod(p, undefined);
  }

  /** Publish this node's endpoints (IP -> identity, namespace/pod, named ports) under the lease. */
  publishEndpoints(eps: LocalEndpointView[]): void {
    const want = new Map<string, string>();
    for (const ep of eps) {
      const rec: PodRecord = {
        ip: ep.ip,
        identity: ep.identity,
        node: this.opts.nodeName,
        hostIp: this.opts.nodeIp,
        namespace: ep.namespace,
        pod: ep.podName,
        namedPorts: ep.namedPorts && Object.keys(ep.namedPorts).length ? ep.namedPorts : undefined,
      };
      want.set(ipcacheKey(ep.ip), JSON.stringify(rec));
    }
    for (const k of this.keys.keys(IPCACHE)) if (!want.has(k)) this.keys.delete(k);
    for (const [k, v] of want) this.keys.set(k, v);
  }

  /** Publish what this node enforces of each policy (by "Kind/ns/name") under the lease. */
  publishPolicyReports(reports: Map<string, PolicyReport>): void {
    const want = new Map<string, string>();
    for (const [k, r] of reports) {
      const [kind, ns, ...rest] = k.split('/');
      want.set(policyReportKey(kind, ns || undefined, rest.join('/'), this.opts.nodeName), JSON.stringify(r));
    }
    for (const k of this.keys.keys(POLICY_REPORTS)) if (!want.has(k)) this.keys.delete(k);
    for (const [k, v] of want) this.keys.set(k, v);
  }

  /**
   * Objects of `kind` with the status the operator aggregated for them
   * (policies/v1/status/...): `membrane get cnp NAME -o yaml` shows it.
   * Objects without one are returned as they are.
   */
  async withPolicyStatus<T extends { kind: string; metadata: { namespace?: string; name: string }; status?: unknown }>(kind: string, objects: T[]): Promise<T[]> {
    if (!objects.length) return objects;
    const listing = await this.kv.list(`${POLICY_STATUS}${kind}/`);
    const byKey = new Map(listing.kvs.map((k) => [k.key, k.value]));
    return objects.map((o) => {
      const v = byKey.get(policyStatusKey(o.kind, o.metadata.namespace, o.metadata.name));
      if (!v) return o;
      try {
        return { ...o, status: JSON.parse(v) };
      } catch {
        return o;
      }
    });
  }

  remotePods(): PodRecord[] {
    return [...this.remote.values()];
  }

  private onPodEvents(evs: ReflectorEvent[]): void {
    let changed = false;
    for (const ev of evs) {
      const before = this.remote.get(ev.key);
      let now: PodRecord | undefined;
      if (ev.type === 'put') {
        try {
          now = JSON.parse(ev.value!) as PodRecord;
          parseIp(now.ip);
          parseIp(now.hostIp);
        } catch (e) {
          this.log.error('pod record is not valid; ignored', { key: ev.key, error: e });
          continue;
        }
        if (now.node === this.opts.nodeName) now = undefined; // ours: the endpoint table has it
      }
      if (now) this.remote.set(ev.key, now);
      else this.remote.delete(ev.key);
      if (!before && !now) continue;
      this.programPod(now, before);
      changed = true;
    }
    if (!changed) return;
    // Named ports of remote pods feed egress rules naming ports: regenerate only when they change.
    const sig = JSON.stringify(
      [...this.remote.values()]
        .filter((p) => p.namedPorts)
        .map((p) => [p.identity, p.namedPorts])
        .sort((a, b) => (a[0] as number) - (b[0] as number)),
    );
    const peerPorts = sig !== this.peerPortsSig;
    this.peerPortsSig = sig;
    this.onChanged?.({ ipcache: !!this.sink, pods: true, peerPorts });
  }

  private programPod(now: PodRecord | undefined, before: PodRecord | undefined): void {
    if (!this.sink) return;
    if (before && (!now || now.ip !== before.ip)) this.sink.delete(`${before.ip}/32`, 'cluster-pod');
    if (now) {
      this.sink.upsert(`${now.ip}/32`, 'cluster-pod', { identity: now.identity, tunnelEndpoint: now.hostIp, node: now.node, namespace: now.namespace, pod: now.pod });
    }
  }

  private onNodeChange(name: string, now: NodeRecord | undefined, before: NodeRecord | undefined): void {
    if (name === this.opts.nodeName) return;
    this.programNode(now, before);
    this.onChanged?.({ ipcache: !!this.sink, pods: false });
  }

  /** A remote node: its pod CIDRs and addresses point at its tunnel endpoint. */
  private programNode(now: NodeRecord | undefined, before: NodeRecord | undefined): void {
    if (!this.sink) return;
    const claims = (n: NodeRecord | undefined) => {
      const out = new Map<string, { source: 'cluster-node' | 'cluster-cidr'; identity: number; tunnel?: string }>();
      if (!n) return out;
      const tunnel = internalIp(n);
      if (!tunnel) return out;
      for (const c of n.podCIDRs) out.set(c, { source: 'cluster-cidr', identity: ReservedIdentity.world, tunnel });
      for (const a of n.addresses) out.set(`${a.ip}/32`, { source: 'cluster-node', identity: ReservedIdentity['remote-node'], tunnel });
      return out;
    };
    const old = claims(before);
    const cur = claims(now);
    for (const [prefix, c] of old) if (!cur.has(prefix) || cur.get(prefix)!.source !== c.source) this.sink.delete(prefix, c.source);
    for (const [prefix, c] of cur) this.sink.upsert(prefix, c.source, { identity: c.identity, tunnelEndpoint: c.tunnel, node: now!.name });
  }

  /**
   * Keep this node's health in its record: `check` returns the problems (none:
   * ok); written only when it changes.
   */
  reportHealth(check: () => string[], everyMs = 10_000): void {
    const run = () => {
      try {
        const problems = check();
        this.nodes.setHealth(problems.length ? 'degraded' : 'ok', problems.slice(0, 10));
      } catch (e) {
        this.log.warn('node health check failed', { error: e });
      }
    };
    run();
    this.healthTimer = setInterval(run, everyMs);
    this.healthTimer.unref();
  }
  private healthTimer?: NodeJS.Timeout;

  /** `membrane node list`: every node, alive or recently gone, with the identities it references. */
  async nodeList(): Promise<
    { name: string; addresses: { type: string; ip: string }[]; podCIDRs: string[]; identities: number | null; alive: boolean; self: boolean; health: string; problems: string[]; lastSeen?: string }[]
  > {
    let refs: Map<string, number> | undefined;
    try {
      refs = await this.identities.referencesPerNode();
    } catch {
      refs = undefined; // etcd unreachable: the rest comes from the watched cache
    }
    return this.nodes.view().map((n) => ({
      name: n.name,
      addresses: n.addresses,
      podCIDRs: n.podCIDRs,
      identities: refs ? (refs.get(n.name) ?? 0) : null,
      alive: n.alive,
      self: n.self,
      health: n.alive ? n.health.status : 'gone',
      problems: n.alive ? n.health.problems : [],
      lastSeen: n.lastSeen,
    }));
  }

  status() {
    const k = this.keys.status();
    const w = this.store.watchStats;
    return {
      mode: 'kvstore',
      ipam: this.ipamState ?? { mode: 'pod-cidr' },
      operator: this.operatorLeader(),
      endpoints: this.opts.endpoints,
      prefix: this.opts.prefix,
      node: this.opts.nodeName,
      nodeIp: this.opts.nodeIp,
      connected: w.connected && !k.lastError,
      revision: w.revision,
      lease: { id: k.leaseId ?? null, ttlSeconds: this.opts.leaseTtl, keys: k.desired, pending: k.pending, lastError: k.lastError ?? null, granted: k.leasesGranted },
      nodes: this.nodes.all().length,
      remotePods: this.remote.size,
      identities: this.identities.all().length,
      /** Changes received from etcd by every watch of this agent since it started. */
      watchEvents: w.events + this.identities.watchEvents + this.nodes.watchEvents + this.services.watchEvents + this.pods.stats.events,
      lastError: w.lastError ?? null,
      uptimeSeconds: Math.round((Date.now() - this.started) / 1000),
    };
  }

  private operatorLeader(): { id: string; since: string } | null {
    const v = this.operator.get('leader');
    if (!v) return null;
    try {
      const r = JSON.parse(v.value) as { id: string; since: string };
      return { id: r.id, since: r.since };
    } catch {
      return null;
    }
  }

  close(): void {
    if (this.healthTimer) clearInterval(this.healthTimer);
    this.operator.stop();
    this.store.stop();
    this.identities.stop();
    this.nodes.stop();
    this.services.stop();
    this.pods.stop();
    void this.keys.close();
    this.kv.close();
  }
}

/** Connect this agent to its cluster: underlay address, lease, watches, registration. */
export async function connectCluster(
  cfg: { cluster?: { endpoints: string[]; prefix: string; leaseTtl: number }; nodeName: string; nodeIp?: string; podCidr: string; serviceCidr: string; stateDir: string; relayAddress?: string },
  version: string,
  log: Logger,
): Promise<ClusterNode> {
  if (!cfg.cluster) throw new Error('cluster mode needs --kvstore-endpoints');
  const nl = RtNetlink.open(null);
  let underlay;
  try {
    underlay = findUnderlay(nl, cfg.nodeIp);
  } finally {
    nl.close();
  }
  const pod = cfg.podCidr ? parseCidr(cfg.podCidr, 'pod-cidr') : undefined;
  const node = await ClusterNode.connect(
    {
      ...cfg.cluster,
      nodeName: cfg.nodeName,
      nodeIp: underlay.ip,
      routerIp: pod ? formatIp(ipAtOffset(pod, 1)) : '',
      podCidr: cfg.podCidr,
      serviceCidr: cfg.serviceCidr,
      stateDir: cfg.stateDir,
      version,
      tunnelPort: VXLAN_PORT,
      relayAddress: cfg.relayAddress,
    },
    log,
  );
  node.underlay = underlay;
  return node;
}


/** The address other nodes reach a listener on: a wildcard host becomes the node's underlay address. */
function advertised(address: string, nodeIp: string): string {
  const cut = address.lastIndexOf(':');
  const host = address.slice(0, cut);
  if (host === '0.0.0.0' || host === '::' || host === '[::]') return `${nodeIp.includes(':') ? `[${nodeIp}]` : nodeIp}${address.slice(cut)}`;
  return address;
}
