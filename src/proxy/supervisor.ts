/**
 * The agent's side of the proxy process: start it (detached, so it outlives
 * the agent), or adopt the one already serving the directory after an agent
 * restart; keep a control connection to it; send it the configuration the
 * agent wants; restart it with backoff when it dies (counted and logged); and
 * hand the L7 records it streams to the agent.
 *
 * Liveness is the control connection: when it closes the supervisor tries to
 * reconnect; a proxy that no longer accepts is restarted. The proxy's pid
 * (from its hello) is shown in status; the supervisor never kills a proxy
 * it did not start, and does not stop the proxy when the agent stops.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { mkdirp } from '../util/fsutil';
import type { Logger } from '../util/log';
import type { ProxyConfig } from './config';
import { AgentMessage, FqdnLearn, LineChannel, ProxyMessage, ProxyStatus } from './control';
import { controlSocketPath } from './proxy';
import type { L7Record } from './records';

export interface SupervisorOptions {
  dir: string;
  bpfRoot: string;
  log: Logger;
  /** The proxy executable (bin/membrane-proxy). */
  proxyBin: string;
  logLevel?: string;
  /** How long a starting proxy may take to accept on its control socket. */
  startTimeoutMs?: number;
}

export type ProxyState = 'stopped' | 'starting' | 'running' | 'restarting';

const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000, 16000, 30000];
/** A proxy that ran this long resets the backoff. */
const STABLE_MS = 60_000;

export class ProxySupervisor {
  state: ProxyState = 'stopped';
  pid?: number;
  adopted = false;
  restarts = 0;
  lastExit?: { at: string; reason: string; pid?: number };
  lastError?: string;
  lastStatus?: ProxyStatus;
  appliedGeneration?: number;
  recordsDropped = 0;
  onRecords?: (records: L7Record[]) => void;
  /** Addresses of an allowed DNS answer: acknowledged to the proxy when the returned promise settles (the maps have them). */
  onFqdn?: (m: FqdnLearn) => Promise<void>;

  private ch?: LineChannel<ProxyMessage, AgentMessage>;
  private child?: ChildProcess;
  private desired?: ProxyConfig;
  private starting?: Promise<void>;
  private backoff = 0;
  private runningSince = 0;
  private retryTimer?: NodeJS.Timeout;
  private closed = false;
  private appliedWaiters: { generation: number; resolve: (ok: boolean) => void }[] = [];
  private statusWaiters: (() => void)[] = [];

  constructor(private readonly opts: SupervisorOptions) {}

  private get sock(): string {
    return controlSocketPath(this.opts.dir);
  }

  /** Connect to the running proxy, or start one. Resolves once connected (or rejects after the start timeout). */
  ensureRunning(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('proxy supervisor is closed'));
    if (this.state === 'running' && this.ch && !this.ch.closed) return Promise.resolve();
    if (this.starting) return this.starting;
    this.state = this.state === 'restarting' ? 'restarting' : 'starting';
    this.starting = this.connectOrStart().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async connectOrStart(): Promise<void> {
    mkdirp(this.opts.dir);
    const existing = await connectUnix(this.sock);
    if (existing) {
      this.attach(existing, true);
      return;
    }
    this.spawnProxy();
    const deadline = Date.now() + (this.opts.startTimeoutMs ?? 15_000);
    while (Date.now() < deadline && !this.closed) {
      if (this.child && this.child.exitCode !== null) break;
      const s = await connectUnix(this.sock);
      if (s) {
        this.attach(s, false);
        return;
      }
      await sleep(50);
    }
    const why = this.child && this.child.exitCode !== null ? `exited with ${this.child.exitCode}` : 'did not accept on its control socket in time';
    this.lastError = `proxy ${why} (log: ${path.join(this.opts.dir, 'proxy.log')})`;
    this.state = 'restarting';
    this.scheduleRestart(this.lastError);
    throw new Error(this.lastError);
  }

  private spawnProxy(): void {
    const logFile = path.join(this.opts.dir, 'proxy.log');
    const fd = fs.openSync(logFile, 'a', 0o600);
    try {
      const args = [this.opts.proxyBin, '--dir', this.opts.dir, '--bpf-root', this.opts.bpfRoot];
      if (this.opts.logLevel) args.push('--log-level', this.opts.logLevel);
      const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', fd, fd] });
      child.unref();
      this.child = child;
      this.opts.log.info('proxy started', { pid: child.pid, log: logFile });
      child.on('exit', (code, signal) => {
        if (this.child === child) this.child = undefined;
        const reason = signal ? `killed by ${signal}` : `exited with ${code}`;
        this.lastExit = { at: new Date().toISOString(), reason, pid: child.pid };
        this.opts.log.warn('proxy process ended', { pid: child.pid, reason });
      });
      child.on('error', (e) => {
        this.lastError = `spawn ${this.opts.proxyBin}: ${e.message}`;
        this.opts.log.error('proxy could not be started', { error: e });
      });
    } finally {
      fs.closeSync(fd);
    }
  }

  private attach(s: net.Socket, adopted: boolean): void {
    const ch = new LineChannel<ProxyMessage, AgentMessage>(
      s,
      (m) => this.onMessage(m),
      (e) => this.opts.log.warn('proxy control channel problem', { error: e }),
    );
    s.on('error', () => {});
    s.on('close', () => this.onDisconnect(ch));
    this.ch = ch;
    this.adopted = adopted;
    this.state = 'running';
    this.runningSince = Date.now();
    this.lastError = undefined;
    if (this.desired) ch.send({ type: 'config', config: this.desired });
  }

  private onMessage(m: ProxyMessage): void {
    switch (m.type) {
      case 'hello':
        this.pid = m.status.pid;
        this.lastStatus = m.status;
        this.opts.log.info(this.adopted ? 'adopted the running proxy' : 'proxy connected', { pid: m.status.pid, generation: m.status.generation });
        break;
      case 'applied':
        this.lastStatus = m.status;
        if (m.error) {
          this.lastError = m.error;
          this.opts.log.error('proxy reports a configuration problem', { generation: m.generation, error: m.error });
        }
        if (m.generation >= 0) this.appliedGeneration = m.generation;
        this.appliedWaiters = this.appliedWaiters.filter((w) => {
          if (m.generation >= w.generation) {
            w.resolve(!m.error);
            return false;
          }
          return true;
        });
        break;
      case 'status': {
        this.lastStatus = m.status;
        const ws = this.statusWaiters;
        this.statusWaiters = [];
        for (const w of ws) w();
        break;
      }
      case 'fqdn': {
        const ch = this.ch;
        const ack = () => ch?.send({ type: 'fqdn-ack', seq: m.seq });
        if (!this.onFqdn) {
          ack();
          break;
        }
        this.onFqdn(m).then(ack, (e) => {
          this.opts.log.error('addresses of a DNS answer could not be learned', { name: m.name, error: e });
          ack();
        });
        break;
      }
      case 'records':
        this.recordsDropped = m.dropped;
        try {
          this.onRecords?.(m.records);
        } catch (e) {
          this.opts.log.error('L7 records could not be ingested', { error: e });
        }
        break;
    }
  }

  private onDisconnect(ch: LineChannel<ProxyMessage, AgentMessage>): void {
    if (this.ch !== ch || this.closed) return;
    this.ch = undefined;
    this.state = 'restarting';
    this.opts.log.warn('proxy control connection lost', { pid: this.pid });
    // A proxy that still accepts is only reconnected; one that does not is restarted.
    setTimeout(() => {
      if (this.closed) return;
      connectUnix(this.sock).then((s) => {
        if (this.closed) return void s?.destroy();
        if (s) {
          this.attach(s, true);
          return;
        }
        // Not our child (adopted after an agent restart): its exit status is unknown.
        if (this.lastExit?.pid !== this.pid) this.lastExit = { at: new Date().toISOString(), reason: 'gone (its control socket closed)', pid: this.pid };
        this.scheduleRestart(this.lastExit?.reason ?? "gone");
      });
    }, 100);
  }

  private scheduleRestart(reason: string): void {
    if (this.closed || this.retryTimer) return;
    if (this.runningSince && Date.now() - this.runningSince > STABLE_MS) this.backoff = 0;
    const delay = BACKOFF_MS[Math.min(this.backoff, BACKOFF_MS.length - 1)];
    this.backoff++;
    this.state = 'restarting';
    this.opts.log.warn('restarting the proxy', { reason, inMs: delay, restarts: this.restarts + 1 });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.restarts++;
      this.ensureRunning().catch(() => {
        /* scheduled again by connectOrStart */
      });
    }, delay);
    this.retryTimer.unref();
  }

  /** Ask the running proxy for fresh counters; resolves when they arrive or after timeoutMs. */
  refreshStatus(timeoutMs: number): Promise<void> {
    if (!this.ch || this.ch.closed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const t = setTimeout(done, timeoutMs);
      const self = this;
      function done() {
        clearTimeout(t);
        self.statusWaiters = self.statusWaiters.filter((w) => w !== done);
        resolve();
      }
      this.statusWaiters.push(done);
      this.ch!.send({ type: 'status' });
    });
  }

  /** The configuration the proxy should have; sent now when connected, else on (re)connect. */
  configure(config: ProxyConfig): void {
    this.desired = config;
    this.ch?.send({ type: 'config', config });
  }

  /** Resolves true once the proxy applied `generation` (false on timeout or a reported problem). */
  waitApplied(generation: number, timeoutMs: number): Promise<boolean> {
    if ((this.appliedGeneration ?? -1) >= generation) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = { generation, resolve };
      this.appliedWaiters.push(w);
      setTimeout(() => {
        const i = this.appliedWaiters.indexOf(w);
        if (i >= 0) {
          this.appliedWaiters.splice(i, 1);
          resolve(false);
        }
      }, timeoutMs).unref();
    });
  }

  status() {
    return {
      state: this.state,
      pid: this.pid ?? null,
      adopted: this.adopted,
      restarts: this.restarts,
      lastExit: this.lastExit ?? null,
      lastError: this.lastError ?? null,
      generation: { desired: this.desired?.generation ?? null, applied: this.appliedGeneration ?? null },
      listeners: this.lastStatus?.listeners ?? [],
      connections: this.lastStatus?.connections ?? 0,
      requests: this.lastStatus?.requests ?? { forwarded: 0, denied: 0, error: 0 },
      recordsDropped: this.recordsDropped,
      rssBytes: this.lastStatus?.rssBytes ?? null,
      dns: this.lastStatus?.dns ?? null,
    };
  }

  /** Stop supervising (the agent stops); the proxy keeps running. */
  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.ch?.close();
    this.ch = undefined;
  }
}

function connectUnix(sock: string): Promise<net.Socket | undefined> {
  if (!fs.existsSync(sock)) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => {
      c.removeAllListeners('error');
      resolve(c);
    });
    c.once('error', () => resolve(undefined));
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
