/**
 * The agent: owns the node's datapath and endpoints and serves the API.
 * Start: open/create pinned maps -> host devices and host program -> restore
 * endpoints from disk (reusing their pinned links and maps) -> resync maps ->
 * serve. Stop (SIGTERM/SIGINT) closes the API and leaves every pod's datapath
 * in place; so does kill -9, since nothing a pod needs lives in the process.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { AgentConfig } from './config';
import { buildApi } from './api';
import { Datapath } from '../datapath/datapath';
import { dropReasonText, metricDirName } from '../datapath/constants';
import { gcConntrack } from '../datapath/ctgc';
import { Endpoint, EndpointManager, PodSource } from '../endpoint/manager';
import { IdentityAllocator } from '../identity/identity';
import { podSecurityLabels } from '../identity/labels';
import { Ipam } from '../ipam/ipam';
import { PolicyEngine } from '../policy/engine';
import { lookupVerdict, NamedPort } from '../policy/mapstate';
import { isPolicyKind } from '../policy/translate';
import { EmbeddedStore } from '../store/embedded';
import { validateResources } from '../store/kinds';
import type { Resource, ResourceRef, WatchEvent } from '../store/types';
import { formatIp, ipFromBytes, formatMac, parseCidr } from '../util/ip';
import * as http from 'node:http';
import { Monitor } from '../monitor/monitor';
import { AgentMetrics } from '../monitor/metrics';
import type { EndpointInfoLite, Enricher } from '../monitor/flow';
import { Frontend, LocalPod, ServiceManager, lbEntries } from '../service/manager';
import { LabelSet, matches as matchesSelector } from '../policy/selector';
import { ipcacheKey } from '../datapath/datapath';
import { ReservedIdentity } from '../identity/identity';
import { mkdirp } from '../util/fsutil';
import type { Logger } from '../util/log';

const VERSION = '0.1.0';

export class Agent {
  readonly endpoints: EndpointManager;
  readonly store: EmbeddedStore;
  readonly identities: IdentityAllocator;
  readonly policy: PolicyEngine;
  readonly monitor: Monitor;
  readonly metrics: AgentMetrics;
  private metricsServer?: http.Server;
  private api?: FastifyInstance;
  readonly services: ServiceManager;
  frontends: Frontend[] = [];
  serviceErrors: string[] = [];
  private pendingServices = true;
  private pendingRefresh = false;
  private pendingRegen = false;
  private flushScheduled = false;
  private revisionWaiters: { revision: number; resolve: () => void }[] = [];
  private resyncTimer?: NodeJS.Timeout;
  private ctGcTimer?: NodeJS.Timeout;
  lastCtGc?: { at: string; scanned: number; deleted: number };
  private readonly startedAt = Date.now();
  private readonly apiLatency = new Map<string, { count: number; sumMs: number }>();

  private constructor(readonly cfg: AgentConfig, readonly log: Logger, readonly dp: Datapath) {
    const ipam = new Ipam(cfg.podCidr, cfg.stateDir);
    this.store = new EmbeddedStore(cfg.stateDir);
    this.identities = new IdentityAllocator(cfg.stateDir);
    this.policy = new PolicyEngine(this.identities, (prefix, id) => this.cidrIdentity(prefix, id), cfg.policyEnforcement);
    this.endpoints = new EndpointManager(cfg, log, dp, ipam, this.identities, this.policy, this.podSource());
    this.monitor = new Monitor(dp.maps.events, dp.maps.eventsLost, dp.maps.monitor, this.enricher(), log.child({ component: 'monitor' }), {
      bufferSize: cfg.flowsBuffer,
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
      monitor: () => ({
        flows: this.monitor.counters.flows,
        stored: this.monitor.stored,
        lost: this.monitor.lostEvents(),
        undecodable: this.monitor.counters.undecodable,
        events: this.monitor.counters.events,
        verdicts: this.monitor.counters.verdicts,
      }),
    });
    // A new or removed identity can change what existing selectors select: every
    // endpoint whose policy names such a selector must see it. (The selector
    // cache, registered first, has already been updated when this runs.)
    let selections = this.policy.cache.version;
    this.identities.onChange(() => {
      if (this.policy.cache.version === selections) return;
      selections = this.policy.cache.version;
      this.pendingRegen = true;
      this.scheduleFlush();
    });
    this.services = new ServiceManager(cfg.serviceCidr, cfg.stateDir, cfg.lbAlgorithm);
    this.policy.repo.serviceResolver = (peer) => this.resolveServicePeer(peer);
    this.endpoints.onEndpointsChanged = () => {
      this.pendingServices = true;
      this.scheduleFlush();
    };
    this.endpoints.onCreated = (ms) => this.metrics.endpointCreate.observe(ms / 1000);
    this.endpoints.onRegenerated = (ms) => this.metrics.regeneration.observe(ms / 1000);
  }

  /** Flow enrichment: endpoints by address and id, identity labels, interface names (cached briefly). */
  private enricher(): Enricher {
    let byIp = new Map<string, EndpointInfoLite>();
    let byId = new Map<number, EndpointInfoLite>();
    let links = new Map<number, string>();
    let epAt = 0;
    let linkAt = 0;
    const refresh = () => {
      if (Date.now() - epAt < 500) return;
      epAt = Date.now();
      byIp = new Map();
      byId = new Map();
      for (const e of this.endpoints.list()) {
        const lite = { id: e.id, identity: e.identity, namespace: e.namespace, podName: e.podName, labels: e.labels };
        byIp.set(e.ipv4, lite);
        byId.set(e.id, lite);
      }
    };
    return {
      nodeName: this.cfg.nodeName,
      endpointByIp: (ip) => (refresh(), byIp.get(ip)),
      endpointById: (id) => (refresh(), byId.get(id)),
      identityLabels: (id) => this.identities.get(id)?.labels ?? (id === 0 ? [] : [`reserved:unknown-${id}`]),
      ifName: (ifindex) => {
        if (!links.has(ifindex) && Date.now() - linkAt > 1000) {
          linkAt = Date.now();
          try {
            links = this.dp.linkNames();
          } catch {
            /* best effort */
          }
        }
        return links.get(ifindex);
      },
    };
  }

  /** Security labels and named ports of a pod, from its Pod and Namespace objects, exactly as in a cluster. */
  private podSource(): PodSource {
    return {
      podInfo: (namespace, podName) => {
        const ns = this.store.get({ kind: 'Namespace', name: namespace });
        const nsLabels = { ...(ns?.metadata.labels ?? {}), 'kubernetes.io/metadata.name': namespace };
        const pod = podName ? this.store.get({ kind: 'Pod', namespace, name: podName }) : undefined;
        const namedPorts: Record<string, NamedPort[]> = {};
        for (const c of pod?.spec?.containers ?? []) {
          for (const p of c.ports ?? []) {
            if (!p.name) continue;
            (namedPorts[p.name] ??= []).push({ port: p.containerPort, protocol: p.protocol ?? 'TCP' });
          }
        }
        const labels = podSecurityLabels({
          namespace,
          podLabels: pod?.metadata.labels,
          namespaceLabels: nsLabels,
          serviceAccount: pod ? (pod.spec?.serviceAccountName ?? 'default') : undefined,
        });
        return { labels, namedPorts };
      },
    };
  }

  /** CIDR identities from policy become ipcache entries (prefix -> identity). */
  private cidrIdentity(prefix: string, id: number | undefined): void {
    const c = parseCidr(prefix);
    const key = ipcacheKey(c.addr, c.prefixLen);
    if (id === undefined) this.dp.ipcache.delete(key);
    else this.dp.ipcache.upsert(key, { sec_id: id, tunnel_family: 0, flags: 0, pad: 0, tunnel_addr: Buffer.alloc(16) });
    this.pendingMapFlush = true;
  }
  private pendingMapFlush = false;

  /** Store changes: policies into the repository; pods and namespaces may change identities. */
  private onStoreEvent(ev: WatchEvent): void {
    const o = ev.object;
    if (isPolicyKind(o.kind)) {
      try {
        if (ev.type === 'DELETED') this.policy.repo.delete(o);
        else this.policy.repo.upsert(o);
      } catch (e) {
        this.log.error('policy could not be loaded into the repository', { policy: `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`, error: e });
      }
      this.pendingRegen = true;
    } else if (o.kind === 'Pod' || o.kind === 'Namespace') {
      this.pendingRefresh = true;
      this.pendingServices = true;
    } else if (o.kind === 'Service' || o.kind === 'EndpointSlice') {
      this.pendingServices = true;
      try {
        if (this.policy.repo.refreshServicePeers() > 0) this.pendingRegen = true;
      } catch (e) {
        this.log.error('re-resolving toServices failed', { error: e });
      }
    }
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flushChanges();
    });
  }

  /** Apply what changed: identities first, then maps, then every endpoint's policy. */
  flushChanges(): void {
    try {
      if (this.pendingRefresh) {
        this.pendingRefresh = false;
        if (this.endpoints.refreshIdentities() > 0) this.pendingRegen = true;
      }
      if (this.pendingMapFlush) {
        this.pendingMapFlush = false;
        this.dp.ipcache.flush();
      }
      if (this.pendingRegen) {
        this.pendingRegen = false;
        const r = this.endpoints.regenerateAll();
        this.log.info('endpoints regenerated', r);
      }
      if (this.pendingServices) {
        this.pendingServices = false;
        this.syncServices();
      }
    } catch (e) {
      this.log.error('applying changes failed', { error: e });
    }
    this.identities.flush();
    this.wakeRevisionWaiters();
  }

  /**
   * toServices: a service with a selector stands for the pods it selects (a
   * selector, so new backends are picked up by the selector cache); one without
   * stands for the addresses in its EndpointSlices.
   */
  private resolveServicePeer(peer: import('../policy/types').ServicePeer): { selectors: import('../policy/types').Selector[]; cidrs: string[] } {
    const services = peer.name
      ? [this.store.get({ kind: 'Service', namespace: peer.namespace, name: peer.name })].filter((x): x is Resource => !!x)
      : this.store.list('Service', peer.namespace).filter((svc) => {
          const labels = new LabelSet(Object.entries(svc.metadata.labels ?? {}).map(([k, v]) => `k8s:${k}=${v}`));
          return peer.selector ? matchesSelector(peer.selector, labels) : true;
        });
    const selectors: import('../policy/types').Selector[] = [];
    const cidrs: string[] = [];
    for (const svc of services) {
      const sel: Record<string, string> | undefined = svc.spec?.selector;
      const ns = svc.metadata.namespace ?? 'default';
      if (sel && Object.keys(sel).length) {
        selectors.push({
          requirements: [
            ...Object.entries(sel).map(([key, v]) => ({ key, source: 'k8s', operator: 'In' as const, values: [v] })),
            { key: 'io.kubernetes.pod.namespace', source: 'k8s', operator: 'In' as const, values: [ns] },
          ],
        });
      } else {
        for (const sl of this.store.list('EndpointSlice', ns)) {
          if (sl.metadata.labels?.['kubernetes.io/service-name'] !== svc.metadata.name) continue;
          for (const e of (sl as any).endpoints ?? []) for (const a of e.addresses ?? []) cidrs.push(`${a}/32`);
        }
      }
    }
    return { selectors, cidrs };
  }

  /** Services -> frontends and backends -> the load-balancing maps (backends first, frontends last). */
  private syncServices(): void {
    const pods: LocalPod[] = this.endpoints.list().map((ep) => ({
      ip: ep.ipv4,
      namespace: ep.namespace,
      podName: ep.podName,
      podLabels: (ep.podName ? this.store.get({ kind: 'Pod', namespace: ep.namespace, name: ep.podName })?.metadata.labels : undefined) ?? {},
      namedPorts: ep.namedPorts ?? {},
    }));
    const nodeAddresses = this.dp.hostAddresses().map((a) => formatIp(a)).filter((a) => !a.startsWith('127.') && a !== this.routerAddress());
    const { frontends, errors } = this.services.compute(this.store.list('Service'), this.store.list('EndpointSlice'), pods, nodeAddresses);
    const e = lbEntries(frontends);
    this.dp.lbBackends.replaceAll(e.backends);
    this.dp.lbRevnat.replaceAll(e.revnat);
    this.dp.lbServices.replaceAll(e.services);
    this.dp.lbBackends.flush();
    this.dp.lbRevnat.flush();
    this.dp.lbServices.flush();
    this.frontends = frontends;
    if (errors.join() !== this.serviceErrors.join()) for (const err of errors) this.log.error('service could not be set up', { error: err });
    this.serviceErrors = errors;
  }

  private wakeRevisionWaiters(): void {
    const reached = this.minEndpointRevision();
    this.revisionWaiters = this.revisionWaiters.filter((w) => {
      if (w.revision <= reached) {
        w.resolve();
        return false;
      }
      return true;
    });
  }

  private minEndpointRevision(): number {
    const eps = this.endpoints.list();
    if (!eps.length) return this.policy.revision;
    return Math.min(...eps.map((e) => (e.policy.error ? -1 : e.policy.revision)));
  }

  /** Resolve when every endpoint has reached `revision` (false on timeout). */
  waitForRevision(revision: number, timeoutMs: number): Promise<boolean> {
    if (this.minEndpointRevision() >= revision) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = { revision, resolve: () => resolve(true) };
      this.revisionWaiters.push(w);
      setTimeout(() => {
        const i = this.revisionWaiters.indexOf(w);
        if (i >= 0) {
          this.revisionWaiters.splice(i, 1);
          resolve(false);
        }
      }, timeoutMs).unref();
    });
  }

  /** Validate every object, then store them all (nothing is applied if any is invalid). */
  apply(objects: unknown[]) {
    const valid = validateResources(objects);
    const results = this.store.apply(valid);
    // A local store: make the kernel reflect the change before answering.
    this.flushChanges();
    return { results, policyRevision: this.policy.revision };
  }

  /** The kernel's policy map of an endpoint, decoded with identity labels (bpf policy get). */
  endpointPolicy(id: number) {
    const ep = this.endpoints.get(id);
    if (!ep) return undefined;
    const map = this.dp.openPolicyMap(id);
    try {
      const protoName: Record<number, string> = { 0: 'ANY', 1: 'ICMP', 6: 'TCP', 17: 'UDP', 58: 'ICMPv6', 132: 'SCTP' };
      const rows = [...map.entries()].map(([k, v]) => {
        const portBits = Math.max(0, k.prefixlen - 48);
        const span = portBits >= 16 ? 1 : 2 ** (16 - portBits);
        const port = k.prefixlen <= 48 ? 'ANY' : span > 1 ? `${k.dport}-${k.dport + span - 1}` : String(k.dport);
        return {
          verdict: v.flags & 1 ? 'Deny' : 'Allow',
          direction: k.egress ? 'Egress' : 'Ingress',
          identity: k.sec_id,
          labels: k.sec_id === 0 ? ['ANY'] : this.identities.get(k.sec_id)?.labels ?? ['(unknown)'],
          protocol: k.prefixlen <= 40 ? 'ANY' : protoName[k.protocol] ?? String(k.protocol),
          port: k.prefixlen <= 40 ? 'ANY' : k.protocol === 1 || k.protocol === 58 ? `type ${k.dport}` : port,
          prefixLen: k.prefixlen,
          proxyPort: v.proxy_port,
          packets: Number(v.packets),
          bytes: Number(v.bytes),
        };
      });
      rows.sort((a, b) => a.direction.localeCompare(b.direction) || a.identity - b.identity || a.prefixLen - b.prefixLen);
      return { endpoint: id, identity: ep.identity, revision: ep.policy.revision, entries: rows };
    } finally {
      map.close();
    }
  }

  /** Resolve "--src/--dst": an endpoint id, a pod "ns/name" or "name", or labels "k=v,k2=v2". */
  private resolveSubject(spec: string): { identity: number; labels: string[]; endpoint?: Endpoint; release?: () => void; describe: string } {
    const eps = this.endpoints.list();
    if (/^\d+$/.test(spec)) {
      const ep = this.endpoints.get(Number(spec));
      if (!ep) throw new Error(`endpoint ${spec} not found`);
      return { identity: ep.identity, labels: ep.labels, endpoint: ep, describe: `endpoint ${ep.id}` };
    }
    if (!spec.includes('=')) {
      const [ns, name] = spec.includes('/') ? spec.split('/', 2) : ['default', spec];
      const ep = eps.find((e) => e.namespace === ns && e.podName === name);
      if (!ep) throw new Error(`no endpoint for pod ${ns}/${name}`);
      return { identity: ep.identity, labels: ep.labels, endpoint: ep, describe: `pod ${ns}/${name} (endpoint ${ep.id})` };
    }
    const labels = spec.split(',').map((l) => l.trim()).filter(Boolean).map((l) => (/^[a-z0-9-]+:/.test(l) && !l.startsWith('http') ? l : `k8s:${l}`));
    if (!labels.some((l) => l.startsWith('k8s:io.kubernetes.pod.namespace=')) && !labels.some((l) => l.startsWith('reserved:') || l.startsWith('cidr:'))) {
      labels.push('k8s:io.kubernetes.pod.namespace=default');
    }
    if (labels.length === 1 && labels[0].startsWith('reserved:')) {
      const name = labels[0].slice('reserved:'.length) as keyof typeof ReservedIdentity;
      if (ReservedIdentity[name] !== undefined) return { identity: ReservedIdentity[name], labels, describe: labels[0] };
    }
    const ident = this.identities.acquire(labels);
    return { identity: ident.id, labels: ident.labels, release: () => this.identities.release(ident.id), describe: `labels ${ident.labels.join(' ')}` };
  }

  /** Explain the verdict for src -> dst:port/proto: the egress side of src, then the ingress side of dst. */
  trace(q: { src: string; dst: string; dport: number; protocol: string }) {
    const proto = { TCP: 6, UDP: 17, SCTP: 132, ICMP: 1, ANY: 0 }[q.protocol.toUpperCase()];
    if (proto === undefined) throw new Error(`protocol: "${q.protocol}" is not TCP, UDP, SCTP or ICMP`);
    const src = this.resolveSubject(q.src);
    const dst = this.resolveSubject(q.dst);
    try {
      const side = (who: typeof src, remote: number, egress: boolean) => {
        if (who.identity < 256 || (who.identity & (1 << 24)) !== 0) return { enforced: false, verdict: 'ALLOWED', reason: 'not a managed endpoint: no policy applies here' };
        const computed = this.policy.compute({ identity: who.identity, labels: who.labels, namedPorts: who.endpoint?.namedPorts ?? {} });
        const v = lookupVerdict(computed.entries, remote, egress, proto, q.dport);
        return {
          enforced: computed[egress ? 'egress' : 'ingress'].enforced,
          verdict: v.allowed ? 'ALLOWED' : 'DENIED',
          dropReason: v.reason || undefined,
          reason: v.entry
            ? `${v.entry.deny ? 'denied' : 'allowed'} by ${v.entry.derivedFrom.join(', ')} (identity ${v.entry.identity === 0 ? 'ANY' : v.entry.identity}, prefix ${v.entry.prefixLen})`
            : 'no rule allows it: default deny',
        };
      };
      const egress = side(src, dst.identity, true);
      const ingress = side(dst, src.identity, false);
      const allowed = egress.verdict === 'ALLOWED' && ingress.verdict === 'ALLOWED';
      return {
        source: { describe: src.describe, identity: src.identity, labels: src.labels },
        destination: { describe: dst.describe, identity: dst.identity, labels: dst.labels },
        port: q.dport,
        protocol: q.protocol.toUpperCase(),
        policyRevision: this.policy.revision,
        egress,
        ingress,
        verdict: allowed ? 'ALLOWED' : 'DENIED',
      };
    } finally {
      src.release?.();
      dst.release?.();
    }
  }

  deleteResources(refs: ResourceRef[]) {
    const results = this.store.delete(refs);
    this.flushChanges();
    return { results, policyRevision: this.policy.revision };
  }

  static async start(cfg: AgentConfig, log: Logger): Promise<Agent> {
    mkdirp(cfg.stateDir);
    mkdirp(path.dirname(cfg.socket));
    await assertSocketFree(cfg.socket);
    const dp = Datapath.open(cfg, log);
    const agent = new Agent(cfg, log, dp);
    dp.setupNode(agent.endpoints.ipam.router);
    for (const p of dp.attachDevices()) log.error('NodePort device not set up', { problem: p });
    if (cfg.socketLbCgroup) dp.attachSocketLb(cfg.socketLbCgroup);
    for (const kind of ['CiliumClusterwideNetworkPolicy', 'CiliumNetworkPolicy', 'NetworkPolicy']) {
      for (const o of agent.store.list(kind)) {
        try {
          agent.policy.repo.upsert(o);
        } catch (e) {
          log.error('stored policy could not be loaded', { policy: `${kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`, error: e });
        }
      }
    }
    agent.endpoints.restore();
    agent.endpoints.syncHostEntries();
    agent.store.watch((ev) => agent.onStoreEvent(ev));
    agent.pendingRefresh = true;
    agent.pendingRegen = true;
    agent.pendingServices = true;
    agent.flushChanges();
    const r1 = dp.endpoints.resync();
    const r2 = dp.ipcache.resync();
    dp.lbBackends.resync();
    dp.lbRevnat.resync();
    dp.lbServices.resync();
    log.info('maps resynced', { endpoints: r1, ipcache: r2 });
    agent.monitor.start();
    await agent.listen();
    if (cfg.metricsAddress) await agent.listenMetrics(cfg.metricsAddress);
    agent.resyncTimer = setInterval(() => agent.periodicResync(), 30_000);
    agent.resyncTimer.unref();
    agent.ctGcTimer = setInterval(() => agent.runCtGc(), 15_000);
    agent.ctGcTimer.unref();
    log.info('agent ready', { socket: cfg.socket, podCidr: cfg.podCidr, router: agent.routerAddress(), bpfRoot: cfg.bpfRoot, node: cfg.nodeName });
    return agent;
  }

  private async listen(): Promise<void> {
    this.api = buildApi(this);
    try {
      fs.unlinkSync(this.cfg.socket);
    } catch {
      /* not there */
    }
    const old = process.umask(0o177); // the socket is created owner-only: no window with wider access
    try {
      await this.api.listen({ path: this.cfg.socket });
    } finally {
      process.umask(old);
    }
    fs.chmodSync(this.cfg.socket, 0o600);
  }

  /** Prometheus on TCP, only when asked for (--metrics-address). */
  private listenMetrics(address: string): Promise<void> {
    const i = address.lastIndexOf(':');
    const host = address.slice(0, i);
    const port = Number(address.slice(i + 1));
    this.metricsServer = http.createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('only GET /metrics is served here\n');
        return;
      }
      this.metrics.text().then(
        (t) => res.writeHead(200, { 'content-type': this.metrics.contentType }).end(t),
        (e) => res.writeHead(500, { 'content-type': 'text/plain' }).end(String(e)),
      );
    });
    return new Promise((resolve, reject) => {
      this.metricsServer!.once('error', (e) => reject(new Error(`metrics-address ${address}: ${e.message}`)));
      this.metricsServer!.listen(port, host, () => {
        this.log.info('serving Prometheus metrics', { address });
        resolve();
      });
    });
  }

  private periodicResync(): void {
    try {
      this.endpoints.syncHostEntries();
      this.dp.endpoints.resync();
      this.dp.ipcache.resync();
    } catch (e) {
      this.log.error('periodic resync failed', { error: e });
    }
  }

  /** Remove conntrack entries (all, or only service entries). */
  flushConntrack(onlyServices: boolean): number {
    let n = 0;
    for (const [k] of [...this.dp.maps.ct.entries()]) {
      if (onlyServices && (k.flags & 4) === 0) continue;
      if (this.dp.maps.ct.delete(k)) n++;
    }
    return n;
  }

  runCtGc(): void {
    try {
      const r = gcConntrack(this.dp.maps.ct);
      this.lastCtGc = { at: new Date().toISOString(), ...r };
      if (r.deleted) this.log.debug('conntrack gc', r);
    } catch (e) {
      this.log.error('conntrack gc failed', { error: e });
    }
  }

  routerAddress(): string {
    return formatIp(this.endpoints.ipam.router);
  }

  recordApiLatency(method: string, route: string, status: number, ms: number): void {
    const key = `${method} ${route} ${status}`;
    this.metrics.apiLatency.observe({ method, route, status: String(status) }, ms / 1000);
    const cur = this.apiLatency.get(key) ?? { count: 0, sumMs: 0 };
    cur.count++;
    cur.sumMs += ms;
    this.apiLatency.set(key, cur);
  }

  status() {
    const eps = this.endpoints.list();
    const d = [...this.endpoints.createDurationsMs].sort((a, b) => a - b);
    const pct = (p: number) => (d.length ? Math.round(d[Math.min(d.length - 1, Math.floor((p / 100) * d.length))] * 100) / 100 : null);
    return {
      version: VERSION,
      node: this.cfg.nodeName,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      podCidr: this.cfg.podCidr,
      router: this.routerAddress(),
      devices: { host: this.cfg.hostDevice, net: this.cfg.netDevice },
      bpfRoot: this.cfg.bpfRoot,
      stateDir: this.cfg.stateDir,
      endpoints: {
        total: eps.length,
        ready: eps.filter((e) => e.state === 'ready').length,
        notReady: eps.filter((e) => e.state !== 'ready').map((e) => ({ id: e.id, state: e.state, problems: e.problems })),
      },
      identities: this.endpoints.identities.list().length,
      policy: {
        revision: this.policy.revision,
        enforcement: this.cfg.policyEnforcement,
        policies: this.policy.repo.objects().length,
        rules: this.policy.repo.rules().length,
        endpointsBehind: eps.filter((e) => e.policy.revision < this.policy.revision).length,
        failures: eps.filter((e) => e.policy.error).map((e) => ({ id: e.id, error: e.policy.error })),
      },
      ipam: { allocated: this.endpoints.ipam.list().length - 1 },
      maps: [this.dp.endpoints.status(), this.dp.ipcache.status()],
      conntrackGc: this.lastCtGc,
      services: {
        serviceCidr: this.cfg.serviceCidr,
        frontends: this.frontends.length,
        lbAlgorithm: this.cfg.lbAlgorithm,
        nodePortDevices: this.cfg.devices,
        socketLbCgroup: this.cfg.socketLbCgroup ?? null,
        errors: this.serviceErrors,
      },
      monitor: {
        aggregation: this.cfg.monitorAggregation,
        flowsStored: this.monitor.stored,
        flowsBuffer: this.cfg.flowsBuffer,
        flowsSeen: this.monitor.counters.flows,
        events: this.monitor.counters.events,
        lostEvents: this.monitor.lostEvents(),
        metricsAddress: this.cfg.metricsAddress ?? null,
      },
      endpointCreateMs: { count: d.length, p50: pct(50), p99: pct(99) },
      apiRequests: Object.fromEntries([...this.apiLatency].map(([k, v]) => [k, { count: v.count, meanMs: Math.round((v.sumMs / v.count) * 100) / 100 }])),
    };
  }

  mapNames(): string[] {
    return ['mb_endpoints', 'mb_ipcache', 'mb_metrics', 'mb_ct', 'mb_node', 'mb_lb_services', 'mb_lb_backends', 'mb_lb_revnat', 'mb_lb_affinity'];
  }

  /** Read a map from the kernel and decode it for display. */
  dumpMap(name: string): { name: string; entries: unknown[] } | undefined {
    const m = this.dp.maps;
    switch (name) {
      case 'mb_endpoints':
        return {
          name,
          entries: [...m.endpoints.entries()].map(([k, v]) => ({
            address: formatIp(ipFromBytes(k.family === 6 ? 6 : 4, k.addr)),
            endpointId: v.ep_id,
            flags: v.flags & 1 ? ['host'] : [],
            identity: v.sec_id,
            ifindex: v.ifindex,
            mac: formatMac(v.mac),
            nodeMac: formatMac(v.node_mac),
          })),
        };
      case 'mb_ipcache':
        return {
          name,
          entries: [...m.ipcache.entries()].map(([k, v]) => ({
            prefix: `${formatIp(ipFromBytes(k.family === 6 ? 6 : 4, k.addr))}/${k.prefixlen - 32}`,
            identity: v.sec_id,
            tunnelEndpoint: v.flags & 1 ? formatIp(ipFromBytes(v.tunnel_family === 6 ? 6 : 4, v.tunnel_addr)) : undefined,
          })),
        };
      case 'mb_metrics':
        return {
          name,
          entries: [...m.metrics.entriesPerCpu()].map(([k, vs]) => ({
            reason: k.reason,
            description: dropReasonText(k.reason),
            direction: metricDirName(k.dir),
            packets: vs.reduce((s, v) => s + Number(v.count), 0),
            bytes: vs.reduce((s, v) => s + Number(v.bytes), 0),
          })),
        };
      case 'mb_ct':
        return {
          name,
          entries: [...m.ct.entries()].map(([k, v]) => ({
            family: k.family,
            source: `${formatIp(ipFromBytes(k.family === 6 ? 6 : 4, k.saddr))}:${k.sport}`,
            destination: `${formatIp(ipFromBytes(k.family === 6 ? 6 : 4, k.daddr))}:${k.dport}`,
            nexthdr: k.nexthdr,
            flags: k.flags,
            lifetime: v.lifetime,
            txPackets: Number(v.tx_packets),
            rxPackets: Number(v.rx_packets),
            srcIdentity: v.src_sec_id,
            service: (k.flags & 4) !== 0,
            backendId: (k.flags & 4) !== 0 ? v.backend_id : undefined,
            revNatIndex: v.rev_nat_index || undefined,
          })),
        };
      case 'mb_lb_services':
        return {
          name,
          entries: [...m.lbServices.entries()].map(([k, v]) => ({
            frontend: `${formatIp(ipFromBytes(4, k.addr))}:${k.dport}/${{ 6: 'TCP', 17: 'UDP', 132: 'SCTP' }[k.proto] ?? k.proto}`,
            slot: k.slot,
            ...(k.slot === 0
              ? { count: v.count, revNatIndex: v.rev_nat_index, flags: v.flags, affinityTimeout: v.flags & 2 ? v.backend_id : undefined }
              : { backendId: v.backend_id }),
          })),
        };
      case 'mb_lb_backends':
        return {
          name,
          entries: [...m.lbBackends.entries()].map(([k, v]) => ({
            id: k,
            backend: `${formatIp(ipFromBytes(4, v.addr))}:${v.port}/${{ 6: 'TCP', 17: 'UDP', 132: 'SCTP' }[v.proto] ?? v.proto}`,
            state: v.flags === 1 ? 'terminating' : 'active',
          })),
        };
      case 'mb_lb_revnat':
        return { name, entries: [...m.lbRevnat.entries()].map(([k, v]) => ({ index: k, frontend: `${formatIp(ipFromBytes(4, v.addr))}:${v.port}` })) };
      case 'mb_lb_affinity':
        return {
          name,
          entries: [...m.lbAffinity.entries()].map(([k, v]) => ({ client: formatIp(ipFromBytes(4, k.client)), revNatIndex: k.rev_nat_index, backendId: v.backend_id, lastUsed: v.last_used })),
        };
      case 'mb_node': {
        const v = m.node.lookup(0);
        return { name, entries: v ? [{ ...v, host_mac: formatMac(v.host_mac), net_mac: formatMac(v.net_mac) }] : [] };
      }
      default:
        return undefined;
    }
  }

  async stop(): Promise<void> {
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    if (this.ctGcTimer) clearInterval(this.ctGcTimer);
    this.monitor.stop();
    this.metricsServer?.close();
    this.identities.flush();
    await this.api?.close();
    try {
      fs.unlinkSync(this.cfg.socket);
    } catch {
      /* gone */
    }
    this.dp.close();
    this.log.info('agent stopped; endpoints keep their datapath');
  }
}

/** Refuse to start when another agent already answers on the socket. */
async function assertSocketFree(sock: string): Promise<void> {
  if (!fs.existsSync(sock)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`socket ${sock}: another agent is already serving on it`);
}
