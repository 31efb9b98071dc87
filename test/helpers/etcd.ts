/**
 * A real etcd (Debian's etcd-server) for tests and the lab: its own data
 * directory, started on loopback with free ports or inside a network namespace
 * on given addresses, stopped (and restarted with the same data) on demand,
 * removed by cleanup() even after failures.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { REPO, sleep, tryRun } from './sys';

export const ETCD_BIN = '/usr/bin/etcd';

/** A TCP port nobody listens on right now (on 127.0.0.1 of this namespace). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export interface EtcdOptions {
  name: string;
  dataDir: string;
  /** Run inside this network namespace (nsenter --net); default: the caller's. */
  netns?: string;
  /** Client listen addresses (host:port); the first is advertised. */
  clientAddrs: string[];
  peerAddr: string;
  logFile: string;
  /** Keep this many revisions (--auto-compaction-mode=revision); none by default. */
  autoCompactRevisions?: number;
}

export class EtcdServer {
  private proc?: ChildProcess;
  private logFd?: number;
  pid?: number;

  constructor(readonly opts: EtcdOptions) {}

  /** Loopback etcd with free ports under `dir`. */
  static async onLoopback(prefix: string, dir: string): Promise<EtcdServer> {
    const client = await freePort();
    const peer = await freePort();
    fs.mkdirSync(path.join(REPO, 'test-artifacts'), { recursive: true });
    return new EtcdServer({
      name: prefix,
      dataDir: path.join(dir, 'etcd'),
      clientAddrs: [`127.0.0.1:${client}`],
      peerAddr: `127.0.0.1:${peer}`,
      logFile: path.join(REPO, 'test-artifacts', `${prefix}-etcd.log`),
    });
  }

  get endpoint(): string {
    return `http://${this.opts.clientAddrs[0]}`;
  }

  get endpoints(): string[] {
    return this.opts.clientAddrs.map((a) => `http://${a}`);
  }

  get running(): boolean {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  args(): string[] {
    const o = this.opts;
    const clients = o.clientAddrs.map((a) => `http://${a}`).join(',');
    return [
      '--name', o.name,
      '--data-dir', o.dataDir,
      '--listen-client-urls', clients,
      '--advertise-client-urls', `http://${o.clientAddrs[0]}`,
      '--listen-peer-urls', `http://${o.peerAddr}`,
      '--initial-advertise-peer-urls', `http://${o.peerAddr}`,
      '--initial-cluster', `${o.name}=http://${o.peerAddr}`,
      '--log-level', 'warn',
      '--logger', 'zap',
      ...(o.autoCompactRevisions ? ['--auto-compaction-mode', 'revision', '--auto-compaction-retention', String(o.autoCompactRevisions)] : []),
    ];
  }

  /** Start (or start again with the same data) and wait until it answers. */
  async start(opts: { detached?: boolean } = {}): Promise<void> {
    if (this.running) return;
    fs.mkdirSync(path.dirname(this.opts.logFile), { recursive: true });
    this.logFd = fs.openSync(this.opts.logFile, 'a');
    const cmd = this.opts.netns ? 'nsenter' : ETCD_BIN;
    const args = this.opts.netns ? [`--net=/run/netns/${this.opts.netns}`, '--', ETCD_BIN, ...this.args()] : this.args();
    this.proc = spawn(cmd, args, { stdio: ['ignore', this.logFd, this.logFd], detached: !!opts.detached });
    if (opts.detached) this.proc.unref();
    this.pid = this.proc.pid;
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`etcd exited (${this.proc.exitCode ?? this.proc.signalCode}); see ${this.opts.logFile}`);
      if (this.healthy()) return;
      await sleep(100);
    }
    throw new Error(`etcd did not become healthy in 20 s; see ${this.opts.logFile}`);
  }

  healthy(): boolean {
    return this.ctl(['--dial-timeout=1s', '--command-timeout=2s', 'endpoint', 'health'], 5000).code === 0;
  }

  /** etcdctl against this server (inside its namespace when it has one). */
  ctl(args: string[], timeoutMs = 20_000): { code: number; stdout: string; stderr: string } {
    const base = this.opts.netns ? ['nsenter', `--net=/run/netns/${this.opts.netns}`, '--', 'etcdctl'] : ['etcdctl'];
    return tryRun(base[0], [...base.slice(1), '--endpoints', this.endpoint, ...args], { env: { ...process.env, ETCDCTL_API: '3' }, timeoutMs });
  }

  /** Stop (SIGTERM, then SIGKILL after 10 s); the data directory stays for a restart. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.proc;
    if (!p || !this.running) return;
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill(signal);
    let t: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((r) => (t = setTimeout(r, 10_000)))]);
    clearTimeout(t);
    if (this.running) {
      p.kill('SIGKILL');
      await exited;
    }
    if (this.logFd !== undefined) fs.closeSync(this.logFd);
    this.logFd = undefined;
  }

  async cleanup(): Promise<void> {
    await this.stop('SIGKILL').catch(() => undefined);
    fs.rmSync(this.opts.dataDir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy on loopback that a test can cut (every connection dropped, new
 * ones refused) and restore: a network partition between a client and etcd
 * while etcd itself keeps running.
 */
export class TcpProxy {
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private cut = false;
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async start(): Promise<void> {
    this.server = net.createServer((c) => {
      if (this.cut) {
        c.destroy();
        return;
      }
      const u = net.connect(this.target.port, this.target.host);
      this.sockets.add(c);
      this.sockets.add(u);
      const drop = () => {
        c.destroy();
        u.destroy();
        this.sockets.delete(c);
        this.sockets.delete(u);
      };
      c.on('error', drop).on('close', drop);
      u.on('error', drop).on('close', drop);
      c.pipe(u);
      u.pipe(c);
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Drop every connection and refuse new ones. */
  partition(): void {
    this.cut = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  heal(): void {
    this.cut = false;
  }

  async close(): Promise<void> {
    this.partition();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
