/**
 * The agent's proxy manager: turns the policy of every local endpoint into the
 * proxy's configuration, owns the listener ports (the policy maps carry them,
 * so they are allocated once and kept in the state directory), sets up the
 * policy routing that delivers redirected packets to local sockets, and starts
 * the proxy (through the supervisor) the first time any endpoint needs it.
 *
 * Ordering: sync() runs before the endpoints' policy maps are written, and
 * writes the configuration to the proxy's control socket at once, so a
 * redirect never reaches a proxy that has not been told the rules first;
 * a request for an endpoint the proxy does not know yet waits briefly for the
 * configuration and is denied if none comes (fail closed).
 */
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { RtNetlink, getSysctl, setSysctl } from '../netlink';
import type { PolicyEngine } from '../policy/engine';
import type { ComputedPolicy, NamedPort } from '../policy/mapstate';
import { mkdirp, readJson, writeJsonAtomic } from '../util/fsutil';
import { socketServing } from '../util/unixsock';
import type { Logger } from '../util/log';
import { CONFIG_VERSION, DnsConfig, EndpointTables, ListenerConfig, ProxyConfig } from './config';
import type { FqdnLearn } from './control';
import type { GatewayTable } from '../gateway/model';
import { MARK_MASK, MARK_TO_PROXY, PROXY_PORT_MAX, PROXY_PORT_MIN, PROXY_ROUTE_TABLE, PROXY_RULE_PRIORITY } from './constants';
import type { L7Record } from './records';
import { ProxySupervisor } from './supervisor';

export interface ProxyEndpoint {
  id: number;
  identity: number;
  labels: string[];
  namedPorts?: Record<string, NamedPort[]>;
}

export interface ProxyManagerOptions {
  stateDir: string;
  bpfRoot: string;
  nodeName: string;
  log: Logger;
  proxyBin: string;
  logLevel?: string;
  /** The DNS proxy's answer to a denied query (--tofqdns-dns-reject-response-code). */
  dnsRejectRcode?: 'REFUSED' | 'NXDOMAIN';
  /** Longest hold of an answer while its addresses are learned (--tofqdns-proxy-response-max-delay, ms). */
  dnsMaxDelayMs?: number;
}

/** The listeners the L7 policy needs: one per direction, transparent, on loopback. */
const HTTP_LISTENERS = [
  { name: 'http-ingress', direction: 'ingress' as const },
  { name: 'http-egress', direction: 'egress' as const },
];

export class ProxyManager {
  readonly supervisor: ProxySupervisor;
  private ports: Record<string, number>;
  private generation = 0;
  private lastJson = '';
  private needed = false;
  private dnsNeeded = false;
  private nodeReady = false;
  private nodeError?: string;
  private policyPart?: { listeners: ListenerConfig[]; policies: Record<string, EndpointTables>; endpoints: { id: number; policy: string }[] };
  private gatewayPart: { listeners: ListenerConfig[]; gateways: Record<string, GatewayTable> } = { listeners: [], gateways: {} };
  readonly dir: string;

  constructor(private readonly opts: ProxyManagerOptions) {
    this.dir = path.join(opts.stateDir, 'proxy');
    mkdirp(this.dir);
    this.ports = readJson<Record<string, number>>(path.join(this.dir, 'ports.json')) ?? {};
    this.supervisor = new ProxySupervisor({ dir: this.dir, bpfRoot: opts.bpfRoot, log: opts.log.child({ component: 'proxy-supervisor' }), proxyBin: opts.proxyBin, logLevel: opts.logLevel });
  }

  /** Where the proxy's L7 records go, one by one (a record the receiver refuses is counted and logged, the rest still go). */
  set onRecord(fn: (r: L7Record) => void) {
    this.supervisor.onRecords = (records) => {
      for (const r of records) {
        try {
          fn(r);
        } catch (e) {
          if (this.recordsRefused++ % 1000 === 0) this.opts.log.error('an L7 record from the proxy was refused', { error: e, refused: this.recordsRefused });
        }
      }
    };
  }
  recordsRefused = 0;

  /** The toFQDNs selectors in force (set by the agent): the DNS proxy learns answers for the names they match. */
  fqdnSelectors: () => DnsConfig['selectors'] = () => [];

  /** Where the DNS proxy's learned answers go; the proxy releases the answer when the promise settles. */
  set onFqdn(fn: (m: FqdnLearn) => Promise<void>) {
    this.supervisor.onFqdn = fn;
  }

  /** The listener port the datapath redirects a direction's L7 flows (of a kind) to (allocated on first use). */
  portFor(egress: boolean, kind: 'http' | 'dns' = 'http'): number {
    const name = kind === 'dns' ? 'dns-egress' : egress ? 'http-egress' : 'http-ingress';
    let p = this.ports[name];
    if (!p) {
      const used = new Set(Object.values(this.ports));
      for (let tries = 0; tries < 1000 && !p; tries++) {
        const c = PROXY_PORT_MIN + crypto.randomInt(PROXY_PORT_MAX - PROXY_PORT_MIN + 1);
        if (!used.has(c)) p = c;
      }
      this.ports[name] = p;
      writeJsonAtomic(path.join(this.dir, 'ports.json'), this.ports);
    }
    return p;
  }

  /**
   * What the node needs before anything is redirected (idempotent; rtnetlink
   * and sysctls only):
   *  - packets the datapath marks MARK_TO_PROXY are delivered locally (to the
   *    socket it assigned): `ip rule fwmark MARK_TO_PROXY/MARK_MASK lookup T`
   *    with `local 0.0.0.0/0 dev lo table T`;
   *  - net.ipv4.tcp_early_demux=0: otherwise a packet from an external device
   *    to a pod address that one of the proxy's transparent sockets owns (the
   *    world answering the proxy on the pod's behalf, or a world client of a
   *    pod with ingress L7 rules) is matched to that socket before routing and
   *    then dropped by forwarding; without early demux it is forwarded to the
   *    pod's datapath, which hands it to the proxy;
   *  - reverse-path filtering no stricter than loose.
   */
  private trySetupNode(): void {
    try {
      this.setupNode();
    } catch (e) {
      // Redirected packets are then not delivered (fail closed); retried at the next change.
      this.nodeError = (e as Error).message;
      this.opts.log.error('node setup for the proxy failed', { error: e });
    }
  }

  private setupNode(): void {
    if (this.nodeReady) return;
    const nl = RtNetlink.open(null);
    try {
      const lo = nl.linkGet('lo');
      if (!lo) throw new Error('routing for the proxy: no loopback device in this network namespace');
      nl.routeAdd({ dst: '0.0.0.0/0', type: 'local', dev: lo.index, table: PROXY_ROUTE_TABLE, replace: true });
      nl.ruleEnsure({ priority: PROXY_RULE_PRIORITY, fwmark: MARK_TO_PROXY, fwmask: MARK_MASK, table: PROXY_ROUTE_TABLE });
    } finally {
      nl.close();
    }
    // Strict reverse-path filtering would drop redirected packets (their source is routed via the host device); loose is enough.
    try {
      if (getSysctl(null, 'net.ipv4.conf.all.rp_filter').trim() === '1') {
        setSysctl(null, 'net.ipv4.conf.all.rp_filter', '2');
        this.opts.log.info('net.ipv4.conf.all.rp_filter set from strict (1) to loose (2) for proxy redirection');
      }
    } catch {
      /* no such knob */
    }
    setSysctl(null, 'net.ipv4.tcp_early_demux', '0');
    this.nodeReady = true;
    this.nodeError = undefined;
  }

  /** Build the configuration from the endpoints' computed policies and send it if it changed; start the proxy when first needed. */
  sync(endpoints: ProxyEndpoint[], engine: PolicyEngine): void {
    const policies: Record<string, EndpointTables> = { none: { ingress: [], egress: [] } };
    const refs: { id: number; policy: string }[] = [];
    const keyOf = new Map<ComputedPolicy, string>();
    let any = false;
    let dns = false;
    for (const ep of endpoints) {
      let computed: ComputedPolicy;
      try {
        // Memoised per identity and revision: the endpoints' regeneration that follows reuses it.
        computed = engine.compute({ identity: ep.identity, labels: ep.labels, namedPorts: ep.namedPorts ?? {} });
      } catch {
        continue; // the endpoint's regeneration reports it and fails closed
      }
      const l7 = computed.l7;
      if (!l7.length) {
        refs.push({ id: ep.id, policy: 'none' });
        continue;
      }
      any = true;
      if (l7.some((e) => e.dns)) dns = true;
      let key = keyOf.get(computed);
      if (!key) {
        const tables: EndpointTables = { ingress: l7.filter((e) => !e.egress), egress: l7.filter((e) => e.egress) };
        key = crypto.createHash('sha256').update(JSON.stringify(tables)).digest('hex').slice(0, 16);
        keyOf.set(computed, key);
        policies[key] = tables;
      }
      refs.push({ id: ep.id, policy: key });
    }
    if (any) this.needed = true;
    if (dns) this.dnsNeeded = true;
    refs.sort((a, b) => a.id - b.id);
    this.policyPart = { listeners: [], policies, endpoints: refs };
    this.send();
  }

  /** The Gateway listeners and their routes (src/gateway); sent with the policy part. */
  setGateways(listeners: ListenerConfig[], gateways: Record<string, GatewayTable>): void {
    this.gatewayPart = { listeners, gateways };
    if (listeners.length) this.needed = true;
    this.send();
  }

  private send(): void {
    if (!this.needed) return;
    this.trySetupNode();
    const listeners: ListenerConfig[] = HTTP_LISTENERS.map((l) => ({
      name: l.name,
      kind: 'http-policy',
      address: '127.0.0.1',
      port: this.portFor(l.direction === 'egress'),
      protocol: 'tcp',
      transparent: true,
      direction: l.direction,
    }));
    // The DNS listener, once any endpoint has DNS rules (kept after: policy maps may still carry its port).
    if (this.dnsNeeded || this.ports['dns-egress']) {
      listeners.push({ name: 'dns-egress', kind: 'dns-policy', address: '127.0.0.1', port: this.portFor(true, 'dns'), protocol: 'udp+tcp', transparent: true, direction: 'egress' });
    }
    const policy = this.policyPart ?? { policies: { none: { ingress: [], egress: [] } }, endpoints: [] };
    const dnsConfig: DnsConfig = { selectors: this.fqdnSelectors(), rejectRcode: this.opts.dnsRejectRcode ?? 'REFUSED', maxDelayMs: this.opts.dnsMaxDelayMs ?? 100 };
    const body = { listeners: [...listeners, ...this.gatewayPart.listeners], policies: policy.policies, endpoints: policy.endpoints, gateways: this.gatewayPart.gateways, dns: dnsConfig };
    const json = JSON.stringify(body);
    if (json !== this.lastJson) {
      this.lastJson = json;
      this.generation++;
      const config: ProxyConfig = { version: CONFIG_VERSION, generation: this.generation, node: this.opts.nodeName, ...body };
      this.supervisor.configure(config);
    }
    this.supervisor.ensureRunning().catch((e) => this.opts.log.error('proxy not running', { error: e }));
  }

  /** Resolves when the proxy has applied the latest configuration (true), or false after timeoutMs. */
  settled(timeoutMs: number): Promise<boolean> {
    if (!this.needed) return Promise.resolve(true);
    return this.supervisor.waitApplied(this.generation, timeoutMs);
  }

  /** Start the proxy now if a previous run needed it (its configuration is on disk). */
  async restore(): Promise<void> {
    const saved = readJson<{ listeners?: unknown[] }>(path.join(this.dir, 'config.json'));
    if (saved || (await socketServing(path.join(this.dir, 'control.sock')))) {
      this.needed = true;
      this.trySetupNode();
      await this.supervisor.ensureRunning().catch((e) => this.opts.log.error('proxy not running', { error: e }));
    }
  }

  refreshStatus(timeoutMs: number): Promise<void> {
    return this.needed ? this.supervisor.refreshStatus(timeoutMs) : Promise.resolve();
  }

  status() {
    const st = this.supervisor.status();
    return { needed: this.needed, ports: this.ports, ...st, recordsRefused: this.recordsRefused, lastError: this.nodeError ?? st.lastError };
  }

  close(): void {
    this.supervisor.close();
  }
}

