/**
 * The agent: wires the node's parts together and serves the API.
 * Start: open the pinned maps and the shared endpoint programs -> host devices
 * and host program -> restore endpoints from disk (reusing their pinned links
 * and maps) -> resync every map -> serve. Stop (SIGTERM/SIGINT) closes the API
 * and leaves every pod's datapath in place; so does kill -9, since nothing a
 * pod needs lives in the process.
 *
 * Logic lives in the parts (datapath, endpoint, identity, ipcache, policy,
 * service, monitor); this file only connects them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as http from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { AgentConfig } from './config';
import { assertSocketFree, buildApi, listenUnix, waitForPodCidr } from './api';
import { ApiRequests, VERSION, agentStatus } from './status';
import { ChangePipeline } from './changes';
import { Datapath, pruneSharedPrograms } from '../datapath/datapath';
import { ConntrackGc } from '../datapath/ctgc';
import { EndpointManager } from '../endpoint/manager';
import { storePodSource } from '../endpoint/podsource';
import { IdentityAllocator } from '../identity/identity';
import { IpCache } from '../ipcache/ipcache';
import { AddressBlocks } from '../ipcache/ipblock';
import { Ipam } from '../ipam/ipam';
import { PolicyEngine } from '../policy/engine';
import { PolicyTracer } from '../policy/trace';
import { POLICY_KINDS, policyReports } from '../policy/status';
import { EmbeddedStore } from '../store/embedded';
import { validateResources } from '../store/kinds';
import type { ResourceRef, Store } from '../store/types';
import { ClusterNode, connectCluster } from '../node/cluster';
import { overlayDevice, podMtu, startOverlay } from '../overlay/overlay';
import { cidrContains, formatIp, parseCidr, parseIp } from '../util/ip';
import { Monitor } from '../monitor/monitor';
import { RelayServer, readRelayToken } from '../monitor/relay';
import { AgentMetrics, serveMetricsTcp } from '../monitor/metrics';
import type { FlowSource } from '../monitor/context';
import { ServiceManager } from '../service/manager';
import { ServiceSync } from '../service/sync';
import { ProxyManager } from '../proxy/manager';
import { GatewayManager } from '../gateway/manager';
import { ReservedIdentity } from '../identity/identity';
import { FqdnManager } from '../fqdn/manager';
import { repoRoot } from './config';
import { ensurePrivateDir, mkdirp } from '../util/fsutil';
import type { Logger } from '../util/log';


export class Agent {
  readonly endpoints: EndpointManager;
  readonly store: Store;
  readonly identities: IdentityAllocator;
  readonly ipcache: IpCache;
  readonly policy: PolicyEngine;
  readonly tracer: PolicyTracer;
  readonly monitor: Monitor;
  readonly metrics: AgentMetrics;
  readonly services: ServiceSync;
  readonly changes: ChangePipeline;
  readonly proxy: ProxyManager;
  readonly gateways: GatewayManager;
  readonly fqdn: FqdnManager;
  private metricsServer?: http.Server;
  /** The cluster's relay token (--relay-token-file): to serve flows to other nodes and ask them. */
  relayToken?: string;
  private relay?: RelayServer;
  private api?: FastifyInstance;
  readonly ctGc: ConntrackGc;
  readonly startedAt = Date.now();
  readonly apiRequests = new ApiRequests();

  private constructor(
    readonly cfg: AgentConfig,
    readonly log: Logger,
    readonly dp: Datapath,
    readonly cluster?: ClusterNode,
  ) {
    const ipam = new Ipam(cfg.podCidr, cfg.stateDir);
    this.ctGc = new ConntrackGc(dp.maps.ct, log);
    this.store = cluster ? cluster.store : new EmbeddedStore(cfg.stateDir);
    this.identities = new IdentityAllocator(cfg.stateDir);
    this.ipcache = new IpCache(dp.ipcache);
    this.policy = new PolicyEngine(
      this.identities,
      (prefix, id) => (id === undefined ? this.ipcache.delete(prefix, 'cidr') : this.ipcache.upsert(prefix, 'cidr', { identity: id })),
      cfg.policyEnforcement,
    );
    const blocks = new AddressBlocks(dp.ipblock);
    this.policy.repo.onAddressBlock = (prefix, id) => blocks.set(prefix, id);
    this.proxy = new ProxyManager({ stateDir: cfg.stateDir, bpfRoot: cfg.bpfRoot, nodeName: cfg.nodeName, log: log.child({ component: 'proxy' }), proxyBin: path.join(repoRoot(), 'bin/membrane-proxy'), logLevel: cfg.logLevel, dnsRejectRcode: cfg.fqdn.rejectRcode, dnsMaxDelayMs: cfg.fqdn.maxDelayMs });
    this.policy.proxyPorts = (egress, kind) => this.proxy.portFor(egress, kind);
    // L7 flow records from the proxy become flows.
    this.proxy.onRecord = (r) => this.monitor.ingestL7(r);
    this.endpoints = new EndpointManager(cfg, log, dp, ipam, this.identities, this.policy, storePodSource(this.store), this.ipcache);
    this.tracer = new PolicyTracer(this.policy, this.identities, this.endpoints);
    this.services = new ServiceSync(new ServiceManager(cfg.serviceCidr, cfg.stateDir, cfg.lbAlgorithm), this.store, dp, log.child({ component: 'services' }));
    this.policy.repo.serviceResolver = (peer) => this.services.resolvePeer(peer);
    this.gateways = new GatewayManager({ stateDir: cfg.stateDir, pool: cfg.gatewayAddressPool, hostDevice: cfg.hostDevice, log: log.child({ component: 'gateway' }) }, this.store);
    // The proxy's upstreams to Gateway backends come from the ingress address: reserved identity ingress.
    this.ipcache.upsert(this.gateways.ingressAddress, 'gateway', { identity: ReservedIdentity.ingress });
    this.gateways.onAddressesChanged = (removed) => {
      for (const a of removed) this.endpoints.forgetHostAddress(a);
      this.endpoints.syncHostEntries();
      dp.endpoints.flush();
      dp.ipcache.flush();
    };
    const flowSource: FlowSource = {
      nodeName: cfg.nodeName,
      endpoints: () => this.endpoints.list(),
      remoteEndpoints: cluster ? () => cluster.remotePods().map((p) => ({ ip: p.ip, identity: p.identity, namespace: p.namespace, podName: p.pod, node: p.node })) : undefined,
      identityLabels: (id) => this.identities.get(id)?.labels ?? (id === 0 ? [] : [`reserved:unknown-${id}`]),
      linkNames: () => dp.linkNames(),
    };
    this.monitor = new Monitor(dp.maps.events, dp.maps.eventsLost, { set: (c) => dp.setMonitorConfig(c) }, flowSource, log.child({ component: 'monitor' }), {
      bufferSize: cfg.flowsBuffer,
      memoryBytes: cfg.flowsMemory,
      aggregation: cfg.monitorAggregation === 'off' ? 'medium' : cfg.monitorAggregation,
      reportInterval: cfg.monitorReportInterval,
      observe: cfg.monitorAggregation !== 'off',
    });
    this.metrics = new AgentMetrics({
      datapath: dp.maps.metrics,
      endpointsByState: () => {
        const out: Record<string, number> = { ready: 0, 'not-ready': 0, restoring: 0, disconnecting: 0 };
        for (const e of this.endpoints.list()) out[e.state] = (out[e.state] ?? 0) + 1;
        return out;
      },
      identities: () => {
        const all = this.identities.list();
        return { reserved: all.filter((i) => i.reserved).length, local: all.filter((i) => i.local).length, cluster: all.filter((i) => !i.reserved && !i.local).length };
      },
      policyRevision: () => this.policy.revision,
      monitor: this.monitor,
      fqdn: () => ({ ...this.fqdn.status(), responseDelayExceeded: this.proxy.status().dns?.learnLate ?? 0 }),
    });
    this.fqdn = new FqdnManager({
      stateDir: cfg.stateDir,
      settings: cfg.fqdn,
      identities: this.identities,
      ipcache: this.ipcache,
      repo: this.policy.repo,
      proxy: this.proxy,
      ct: dp.maps.ct,
      regenerate: () => {
        this.changes.mark({ regen: true });
        return this.changes.flush();
      },
      log: log.child({ component: 'fqdn' }),
    });
    this.changes = new ChangePipeline(
      {
        policyEvent: (ev) => {
          const o = ev.object;
          try {
            if (ev.type === 'DELETED') this.policy.repo.delete(o);
            else this.policy.repo.upsert(o);
          } catch (e) {
            this.policy.repo.loadFailed(o, e);
            this.log.error('policy could not be loaded into the repository', { policy: `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`, error: e });
          }
          return true;
        },
        servicePeersChanged: () => this.policy.repo.refreshServicePeers() > 0,
        refreshIdentities: () => this.endpoints.refreshIdentities(),
        flushIpcache: () => {
          dp.ipcache.flush();
          dp.ipblock.flush();
        },
        syncProxy: () => this.proxy.sync(this.endpoints.list(), this.policy),
        regenerateAll: () => this.endpoints.regenerateAll(),
        syncServices: () => this.syncServices(),
        syncGateways: () => {
          const g = this.gateways.sync(this.services.frontends);
          this.proxy.setGateways(g.listeners, g.gateways);
        },
        done: () => {
          this.identities.flush();
          cluster?.publishPolicyReports(this.policyReports());
        },
        enforcedRevision: () => this.endpoints.enforcedRevision(),
      },
      log,
    );
    // A new or removed identity can change what existing selectors select: every
    // endpoint whose policy names such a selector must see it. (The selector
    // cache, registered first, has already been updated when this runs.)
    let selections = this.policy.cache.version;
    this.identities.onChange(() => {
      if (this.policy.cache.version === selections) return;
      selections = this.policy.cache.version;
      this.changes.mark({ regen: true });
    });
    this.endpoints.onEndpointsChanged = () => {
      this.changes.mark({ services: true });
      cluster?.publishEndpoints(this.endpoints.list().map((e) => ({ ip: e.ipv4, identity: e.identity, namespace: e.namespace, podName: e.podName, namedPorts: e.namedPorts })));
    };
    this.endpoints.onCreated = (ms) => this.metrics.endpointCreate.observe(ms / 1000);
    this.endpoints.onRegenerated = (ms) => this.metrics.regeneration.observe(ms / 1000);
    dp.reconciler.beforeResync = () => {
      this.endpoints.syncHostEntries();
      this.gateways.recheck();
      this.changes.mark({ gateways: true });
    };
    dp.reconciler.onDrift = (table, r) => this.metrics.driftRepaired.inc({ map: table }, r.updated + r.removed);
  }

  /** What this node enforces of each policy (cluster mode: reported to the operator). */
  policyReports() {
    return policyReports({
      objects: POLICY_KINDS.flatMap((k) => this.store.list(k)),
      loaded: this.policy.repo.loaded(),
      loadErrors: this.policy.repo.loadErrors,
      endpoints: this.endpoints.list(),
      revision: this.policy.revision,
    });
  }

  private syncServices(): void {
    // Backends of selector Services: this node's pods and, in cluster mode, every other node's.
    const all = [
      ...this.endpoints.list().map((ep) => ({ ip: ep.ipv4, namespace: ep.namespace, podName: ep.podName, namedPorts: ep.namedPorts })),
      ...(this.cluster?.remotePods().map((p) => ({ ip: p.ip, namespace: p.namespace, podName: p.pod, namedPorts: p.namedPorts })) ?? []),
    ];
    const pods = all.map((p) => ({
      ip: p.ip,
      namespace: p.namespace,
      podName: p.podName,
      podLabels: (p.podName ? this.store.get({ kind: 'Pod', namespace: p.namespace, name: p.podName })?.metadata.labels : undefined) ?? {},
      namedPorts: p.namedPorts ?? {},
    }));
    const router = this.routerAddress();
    const nodeAddresses = this.dp
      .hostAddresses()
      .map((a) => formatIp(a))
      .filter((a) => !a.startsWith('127.') && a !== router);
    const podCidr = parseCidr(this.cfg.podCidr);
    this.services.sync(pods, nodeAddresses, (ip) => cidrContains(podCidr, parseIp(ip)));
  }

  /** Validate every object, then store them all (nothing is applied if any is invalid); answers once the kernel reflects it. */
  async apply(objects: unknown[]) {
    const valid = validateResources(objects, { serviceCidr: this.cfg.serviceCidr });
    const results = await this.store.apply(valid);
    await this.changes.flush();
    await this.proxy.settled(5000);
    return { results, policyRevision: this.policy.revision };
  }

  async deleteResources(refs: ResourceRef[]) {
    const results = await this.store.delete(refs);
    await this.changes.flush();
    await this.proxy.settled(5000);
    return { results, policyRevision: this.policy.revision };
  }

  static async start(cfg: AgentConfig, log: Logger): Promise<Agent> {
    const wider = ensurePrivateDir(cfg.stateDir);
    if (wider !== undefined) log.warn('state directory was accessible to others: mode tightened to 0700', { stateDir: cfg.stateDir, was: wider.toString(8) });
    mkdirp(path.dirname(cfg.socket));
    await assertSocketFree(cfg.socket);
    const relayToken = cfg.relayTokenFile ? readRelayToken(cfg.relayTokenFile) : undefined;
    const cluster = cfg.cluster ? await connectCluster(cfg, VERSION, log) : undefined;
    if (cluster && cfg.podCidrFromPool) cfg = { ...cfg, podCidr: await waitForPodCidr(cfg, cluster) };
    if (cluster) cfg = { ...cfg, mtu: podMtu(cfg, cluster.underlay!, log) };
    const dp = Datapath.open(cfg, log);
    const agent = new Agent(cfg, log, dp, cluster);
    if (cluster) agent.identities.attachCluster(cluster.identities);
    dp.setupNode(agent.endpoints.ipam.router);
    await agent.proxy.restore();
    if (cluster) {
      startOverlay({ dp, nodes: cluster.nodes, device: overlayDevice(cfg), underlayMtu: cluster.underlay!.mtu, podMtu: cfg.mtu, routerIp: agent.routerAddress(), resyncMs: cfg.resyncInterval * 1000, log: log.child({ component: 'overlay' }) });
    }
    for (const p of dp.attachDevices()) log.error('NodePort device not set up', { problem: p });
    if (cfg.socketLbCgroup) dp.attachSocketLb(cfg.socketLbCgroup);
    for (const kind of ['CiliumClusterwideNetworkPolicy', 'CiliumNetworkPolicy', 'NetworkPolicy']) {
      for (const o of agent.store.list(kind)) {
        try {
          agent.policy.repo.upsert(o);
        } catch (e) {
          agent.policy.repo.loadFailed(o, e);
          log.error('stored policy could not be loaded', { policy: `${kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`, error: e });
        }
      }
    }
    // Addresses learned from DNS answers in the previous run: in the maps again before any regeneration.
    agent.fqdn.restore();
    await agent.endpoints.restore();
    agent.endpoints.syncHostEntries();
    if (cluster) {
      cluster.onChanged = (what) => agent.changes.mark({ ipcache: what.ipcache, services: what.pods, regen: what.peerPorts });
      agent.endpoints.remotePeers = () => cluster.remotePods();
      cluster.reportHealth(() => [
        ...agent.endpoints.list().filter((e) => e.state !== 'ready').map((e) => `endpoint ${e.id} ${e.state}`),
        ...agent.endpoints.list().filter((e) => e.policy.error).map((e) => `endpoint ${e.id}: ${e.policy.error}`),
      ]);
      cluster.attachIpcache(agent.ipcache);
      agent.endpoints.onEndpointsChanged?.();
    }
    agent.store.watch((ev) => agent.changes.onStoreEvent(ev));
    agent.changes.mark({ refresh: true, regen: true, services: true, ipcache: true });
    await agent.changes.flush();
    const repaired = dp.reconciler.resyncAll();
    const pruned = pruneSharedPrograms(cfg.bpfRoot, { fromContainer: dp.sharedProgramIds.fromContainer });
    log.info('maps resynced', { repaired, prunedProgramVersions: pruned });
    agent.monitor.start();
    agent.api = buildApi(agent);
    await listenUnix(agent.api, cfg.socket);
    agent.relayToken = relayToken;
    if (cfg.relayAddress && relayToken) {
      agent.relay = new RelayServer(agent.monitor, relayToken, log.child({ component: 'relay' }), cfg.flowsStreamTimeout * 1000);
      await agent.relay.listen(cfg.relayAddress);
    }
    if (cfg.metricsAddress) agent.metricsServer = await serveMetricsTcp(cfg.metricsAddress, agent.metrics, log);
    dp.reconciler.start(cfg.resyncInterval * 1000);
    agent.ctGc.start(15_000);
    agent.fqdn.start();
    log.info('agent ready', { socket: cfg.socket, podCidr: cfg.podCidr, router: agent.routerAddress(), bpfRoot: cfg.bpfRoot, node: cfg.nodeName });
    return agent;
  }

  routerAddress(): string {
    return formatIp(this.endpoints.ipam.router);
  }

  recordApiLatency(method: string, route: string, status: number, ms: number): void {
    this.metrics.apiLatency.observe({ method, route, status: String(status) }, ms / 1000);
    this.apiRequests.record(method, route, status, ms);
  }

  status() {
    return agentStatus(this);
  }

  async stop(): Promise<void> {
    this.ctGc.stop();
    this.fqdn.stop();
    this.proxy.close();
    this.monitor.stop();
    this.metricsServer?.close();
    this.relay?.close();
    this.identities.flush();
    await this.api?.close();
    this.cluster?.close();
    try {
      fs.unlinkSync(this.cfg.socket);
    } catch {
      /* gone */
    }
    this.dp.close();
    this.log.info('agent stopped; endpoints keep their datapath');
  }
}
