/**
 * The proxy process (bin/membrane-proxy): its listeners, the L7 tables they
 * decide with, the control socket the agent talks to, and the record queue.
 *
 * It runs on its own: started by the agent (detached), it keeps serving when
 * the agent stops or is killed, and starts with the configuration it last
 * applied (<dir>/config.json, written atomically) so that an agent that is
 * down cannot leave redirected flows without a proxy after a proxy restart.
 * Only one proxy serves a directory: the control socket is the lock.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { L7Table } from '../policy/l7';
import { mkdirp, readJson, writeJsonAtomic } from '../util/fsutil';
import type { Logger } from '../util/log';
import { parseConfig, ProxyConfig, ListenerConfig } from './config';
import { AgentMessage, FqdnLearn, LineChannel, ProxyMessage, ProxyStatus } from './control';
import type { DnsListenerContext } from './dns';
import { Listener, LISTENER_FACTORIES } from './listeners';
import { DatapathView } from './identity';
import { selfCheck } from './llhttp';
import { socketServing } from '../util/unixsock';
import { L7Record, RecordQueue } from './records';

export interface ProxyOptions {
  /** The proxy's directory: control.sock, config.json, proxy.pid. */
  dir: string;
  bpfRoot: string;
  log: Logger;
  /** Records kept for the agent at most (the oldest are dropped beyond). */
  recordCapacity?: number;
}

/** Stop writing records to the agent while this much is unsent on the socket. */
const RECORD_BACKLOG_BYTES = 1 << 20;
const RECORD_BATCH = 500;

export function controlSocketPath(dir: string): string {
  return path.join(dir, 'control.sock');
}

export class Proxy {
  private config?: ProxyConfig;
  private readonly compiled = new Map<string, { json: string; ingress: L7Table; egress: L7Table }>();
  private endpointPolicy = new Map<number, string>();
  private readonly listeners = new Map<string, Listener>();
  private control?: net.Server;
  private agent?: LineChannel<AgentMessage, ProxyMessage>;
  private readonly queue: RecordQueue;
  private configWaiters: (() => void)[] = [];
  private flushTimer?: NodeJS.Timeout;
  private statusTimer?: NodeJS.Timeout;
  private applying: Promise<void> = Promise.resolve();
  private readonly startedAt = new Date().toISOString();
  readonly counters = { connections: 0, requests: { forwarded: 0, denied: 0, error: 0 } };
  readonly dnsCounters = { queries: 0, denied: 0, forwarded: 0, errors: 0, learnLate: 0, learnNoAgent: 0 };
  private learnSeq = 0;
  private readonly learnWaiters = new Map<number, () => void>();
  /** Learned answers not yet acknowledged by an agent (sent again to the next agent that connects). */
  private learnBacklog = new Map<number, FqdnLearn>();
  /** name|ip -> when the agent's copy expires (ms): answers whose addresses the agent has are released at once. */
  private readonly known = new Map<string, number>();

  private constructor(
    private readonly opts: ProxyOptions,
    private readonly view: DatapathView,
  ) {
    this.queue = new RecordQueue(opts.recordCapacity ?? 20_000);
  }

  get log(): Logger {
    return this.opts.log;
  }

  static async start(opts: ProxyOptions): Promise<Proxy> {
    selfCheck();
    mkdirp(opts.dir);
    const sock = controlSocketPath(opts.dir);
    if (await socketServing(sock)) throw new Error(`${sock}: another proxy already serves ${opts.dir}`);
    const proxy = new Proxy(opts, new DatapathView(opts.bpfRoot));
    const saved = readJson<unknown>(path.join(opts.dir, 'config.json'));
    if (saved !== undefined) {
      try {
        await proxy.apply(parseConfig(saved), false);
        opts.log.info('serving with the last configuration', { generation: proxy.config?.generation });
      } catch (e) {
        opts.log.error('the saved configuration could not be applied; waiting for the agent', { error: e });
      }
    }
    await proxy.listenControl(sock);
    writeJsonAtomic(path.join(opts.dir, 'proxy.pid'), { pid: process.pid, startedAt: proxy.startedAt });
    proxy.flushTimer = setInterval(() => proxy.flushRecords(), 50);
    proxy.statusTimer = setInterval(() => proxy.agent?.send({ type: 'status', status: proxy.status() }), 5000);
    opts.log.info('proxy ready', { dir: opts.dir, pid: process.pid });
    return proxy;
  }

  /**
   * Hand an answer's addresses to the agent and wait (bounded) until it says
   * they are in the maps. Addresses the agent acknowledged less than half
   * their TTL ago are not sent again (no wait). With no agent the answer
   * is released at once and the addresses are kept for the next agent.
   */
  private learn(endpoint: number, name: string, addresses: { ip: string; ttl: number }[]): Promise<'acked' | 'late' | 'no-agent' | 'known'> {
    const now = Date.now();
    // Told the agent recently (within half the TTL): nothing to send, nothing to wait for.
    if (addresses.every((a) => (this.known.get(`${endpoint}|${name}|${a.ip}`) ?? 0) > now)) return Promise.resolve('known');
    const seq = ++this.learnSeq;
    const msg: FqdnLearn = { type: 'fqdn', seq, endpoint, name, addresses, time: now };
    this.learnBacklog.set(seq, msg);
    if (this.learnBacklog.size > 10_000) this.learnBacklog.delete(this.learnBacklog.keys().next().value!);
    const ch = this.agent;
    if (!ch || ch.closed) return Promise.resolve('no-agent');
    ch.send(msg);
    const maxDelay = this.config?.dns?.maxDelayMs ?? 100;
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.learnWaiters.delete(seq);
        resolve('late');
      }, maxDelay);
      this.learnWaiters.set(seq, () => {
        clearTimeout(t);
        resolve('acked');
      });
    });
  }

  private onLearnAck(seq: number): void {
    const m = this.learnBacklog.get(seq);
    if (m) {
      this.learnBacklog.delete(seq);
      for (const a of m.addresses) {
        const k = `${m.endpoint}|${m.name}|${a.ip}`;
        // The agent keeps an address at least for its TTL (plus its minimum TTL): half of it is a safe local estimate.
        this.known.set(k, Math.max(this.known.get(k) ?? 0, m.time + (a.ttl * 1000) / 2));
      }
      if (this.known.size > 100_000) this.known.clear();
    }
    const w = this.learnWaiters.get(seq);
    if (w) {
      this.learnWaiters.delete(seq);
      w();
    }
  }

  private listenerContext(): DnsListenerContext {
    return {
      fqdn: {
        selectors: () => this.config?.dns?.selectors ?? [],
        learn: (ep, name, addrs) => this.learn(ep, name, addrs),
        rejectRcode: () => this.config?.dns?.rejectRcode ?? 'REFUSED',
      },
      dnsCounters: this.dnsCounters,
      log: this.log,
      peer: (ip, port) => this.view.peer(ip, port),
      table: (id, egress) => {
        const key = this.endpointPolicy.get(id);
        if (key === undefined) return undefined;
        const t = this.compiled.get(key);
        return t ? (egress ? t.egress : t.ingress) : undefined;
      },
      nextConfig: (ms) =>
        new Promise<void>((resolve) => {
          const t = setTimeout(done, ms);
          function done() {
            clearTimeout(t);
            resolve();
          }
          this.configWaiters.push(done);
        }),
      record: (r: L7Record) => this.queue.push(r),
      gateway: (name) => this.config?.gateways?.[name],
      counters: this.counters,
    };
  }

  /** Apply a configuration: tables first (so no request meets a listener without them), then listeners; then keep it on disk. */
  apply(config: ProxyConfig, persist = true): Promise<void> {
    const run = async () => {
      const next = new Map<string, { json: string; ingress: L7Table; egress: L7Table }>();
      for (const [key, t] of Object.entries(config.policies)) {
        const json = JSON.stringify(t);
        const cur = this.compiled.get(key);
        next.set(key, cur && cur.json === json ? cur : { json, ingress: new L7Table(t.ingress, false), egress: new L7Table(t.egress, true) });
      }
      this.compiled.clear();
      for (const [k, v] of next) this.compiled.set(k, v);
      this.endpointPolicy = new Map(config.endpoints.map((e) => [e.id, e.policy]));
      this.config = config;
      const waiters = this.configWaiters;
      this.configWaiters = [];
      for (const w of waiters) w();
      const problems = await this.reconcileListeners(config.listeners);
      if (persist) writeJsonAtomic(path.join(this.opts.dir, 'config.json'), config);
      if (problems.length) throw new Error(problems.join('; '));
    };
    const p = this.applying.then(run, run);
    this.applying = p.catch(() => {});
    return p;
  }

  private async reconcileListeners(want: ListenerConfig[]): Promise<string[]> {
    const problems: string[] = [];
    const byName = new Map(want.map((l) => [l.name, l]));
    for (const [name, l] of this.listeners) {
      const w = byName.get(name);
      if (!w || JSON.stringify(w) !== JSON.stringify(l.cfg)) {
        await l.close();
        this.listeners.delete(name);
        this.log.info('listener closed', { listener: name });
      }
    }
    for (const w of want) {
      const cur = this.listeners.get(w.name);
      if (cur && cur.state === 'listening') continue;
      if (cur) await cur.close();
      const l = LISTENER_FACTORIES[w.kind](w, this.listenerContext());
      this.listeners.set(w.name, l);
      try {
        await l.start();
        this.log.info('listening', { listener: w.name, address: w.address, port: w.port, transparent: w.transparent });
      } catch (e) {
        problems.push(`listener ${w.name} on ${w.address}:${w.port}: ${(e as Error).message}`);
        this.log.error('listener could not start', { listener: w.name, port: w.port, error: e });
      }
    }
    return problems;
  }

  private async listenControl(sock: string): Promise<void> {
    try {
      fs.unlinkSync(sock);
    } catch {
      /* not there */
    }
    const server = net.createServer((s) => this.onAgent(s));
    const old = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(sock, () => resolve());
      });
    } finally {
      process.umask(old);
    }
    fs.chmodSync(sock, 0o600);
    this.control = server;
  }

  private onAgent(s: net.Socket): void {
    this.agent?.close();
    const ch = new LineChannel<AgentMessage, ProxyMessage>(
      s,
      (m) => this.onAgentMessage(ch, m),
      (e) => this.log.warn('control channel problem', { error: e }),
    );
    s.on('error', () => {});
    s.on('close', () => {
      if (this.agent === ch) this.agent = undefined;
    });
    this.agent = ch;
    ch.send({ type: 'hello', status: this.status() });
    // Answers learned while no agent listened (or not acknowledged): the new agent learns them now.
    for (const m of this.learnBacklog.values()) ch.send(m);
    this.log.info('agent connected');
  }

  private onAgentMessage(ch: LineChannel<AgentMessage, ProxyMessage>, m: AgentMessage): void {
    if (m.type === 'fqdn-ack') {
      this.onLearnAck(m.seq);
      return;
    }
    if (m.type === 'status') {
      ch.send({ type: 'status', status: this.status() });
      return;
    }
    if (m.type !== 'config') return;
    let config: ProxyConfig;
    try {
      config = parseConfig(m.config);
    } catch (e) {
      this.log.error('configuration rejected', { error: e });
      ch.send({ type: 'applied', generation: -1, status: this.status(), error: (e as Error).message });
      return;
    }
    this.apply(config).then(
      () => {
        this.log.info('configuration applied', { generation: config.generation, endpoints: config.endpoints.length, listeners: config.listeners.length });
        ch.send({ type: 'applied', generation: config.generation, status: this.status() });
      },
      (e) => {
        this.log.error('configuration applied with problems', { generation: config.generation, error: e });
        ch.send({ type: 'applied', generation: config.generation, status: this.status(), error: (e as Error).message });
      },
    );
  }

  private flushRecords(): void {
    const ch = this.agent;
    if (!ch || ch.closed) return;
    while (this.queue.length && ch.backlog < RECORD_BACKLOG_BYTES) {
      const dropped = this.queue.dropped;
      ch.send({ type: 'records', records: this.queue.take(RECORD_BATCH), dropped });
    }
  }

  status(): ProxyStatus {
    return {
      pid: process.pid,
      startedAt: this.startedAt,
      generation: this.config?.generation ?? null,
      listeners: [...this.listeners.values()].map((l) => ({
        name: l.cfg.name,
        kind: l.cfg.kind,
        port: l.cfg.port,
        direction: l.cfg.direction,
        state: l.state,
        error: l.error,
        connections: l.connections,
      })),
      connections: this.counters.connections,
      requests: { ...this.counters.requests },
      records: { queued: this.queue.length, dropped: this.queue.dropped, delivered: this.queue.delivered },
      dns: { ...this.dnsCounters },
      rssBytes: process.memoryUsage.rss(),
    };
  }

  async stop(): Promise<void> {
    clearInterval(this.flushTimer);
    clearInterval(this.statusTimer);
    this.agent?.close();
    this.control?.close();
    for (const l of this.listeners.values()) await l.close();
    this.view.close();
    try {
      fs.unlinkSync(path.join(this.opts.dir, 'proxy.pid'));
    } catch {
      /* gone */
    }
  }
}

