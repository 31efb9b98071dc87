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
import { EndpointManager } from '../endpoint/manager';
import { IdentityAllocator } from '../identity/identity';
import { Ipam } from '../ipam/ipam';
import { formatIp, ipFromBytes, formatMac } from '../util/ip';
import { mkdirp } from '../util/fsutil';
import type { Logger } from '../util/log';

const VERSION = '0.1.0';

export class Agent {
  readonly endpoints: EndpointManager;
  private api?: FastifyInstance;
  private resyncTimer?: NodeJS.Timeout;
  private readonly startedAt = Date.now();
  private readonly apiLatency = new Map<string, { count: number; sumMs: number }>();

  private constructor(readonly cfg: AgentConfig, readonly log: Logger, readonly dp: Datapath) {
    const ipam = new Ipam(cfg.podCidr, cfg.stateDir);
    const identities = new IdentityAllocator(cfg.stateDir);
    this.endpoints = new EndpointManager(cfg, log, dp, ipam, identities);
  }

  static async start(cfg: AgentConfig, log: Logger): Promise<Agent> {
    mkdirp(cfg.stateDir);
    mkdirp(path.dirname(cfg.socket));
    await assertSocketFree(cfg.socket);
    const dp = Datapath.open(cfg, log);
    const agent = new Agent(cfg, log, dp);
    dp.setupNode(agent.endpoints.ipam.router);
    agent.endpoints.restore();
    agent.endpoints.syncHostEntries();
    const r1 = dp.endpoints.resync();
    const r2 = dp.ipcache.resync();
    log.info('maps resynced', { endpoints: r1, ipcache: r2 });
    await agent.listen();
    agent.resyncTimer = setInterval(() => agent.periodicResync(), 30_000);
    agent.resyncTimer.unref();
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

  private periodicResync(): void {
    try {
      this.endpoints.syncHostEntries();
      this.dp.endpoints.resync();
      this.dp.ipcache.resync();
    } catch (e) {
      this.log.error('periodic resync failed', { error: e });
    }
  }

  routerAddress(): string {
    return formatIp(this.endpoints.ipam.router);
  }

  recordApiLatency(method: string, route: string, status: number, ms: number): void {
    const key = `${method} ${route} ${status}`;
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
      ipam: { allocated: this.endpoints.ipam.list().length - 1 },
      maps: [this.dp.endpoints.status(), this.dp.ipcache.status()],
      endpointCreateMs: { count: d.length, p50: pct(50), p99: pct(99) },
      apiRequests: Object.fromEntries([...this.apiLatency].map(([k, v]) => [k, { count: v.count, meanMs: Math.round((v.sumMs / v.count) * 100) / 100 }])),
    };
  }

  mapNames(): string[] {
    return ['mb_endpoints', 'mb_ipcache', 'mb_metrics', 'mb_ct', 'mb_node'];
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
          })),
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
