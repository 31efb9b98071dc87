/**
 * A test node: a network namespace with its own agent (own state dir, bpf root,
 * socket), entered with nsenter so bpffs stays visible. Pods are further
 * namespaces attached through the real CNI plugin binary, exactly as a runtime
 * calls it. cleanup() removes everything even after failures.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { NETKIT, REPO, netnsAdd, netnsDel, runPrefix, sh, sleep, tryRun } from './sys';

export interface CniCall {
  command: 'ADD' | 'DEL' | 'CHECK' | 'STATUS' | 'GC' | 'VERSION';
  containerId?: string;
  netns?: string;
  ifname?: string;
  args?: string;
  conf?: Record<string, unknown>;
  rawStdin?: string;
  env?: Record<string, string | undefined>;
}

export interface CniOutcome {
  code: number;
  stdout: string;
  json: any;
  stderr: string;
}

export const CNI_BIN = path.join(REPO, 'bin/membrane-cni');
export const CLI_BIN = path.join(REPO, 'bin/membrane');
export const AGENT_BIN = path.join(REPO, 'bin/membrane-agent');

export class TestNode {
  readonly prefix: string;
  readonly nodeNs: string;
  readonly dir: string;
  readonly stateDir: string;
  readonly bpfRoot: string;
  readonly socket: string;
  readonly podCidr: string;
  agent?: ChildProcess;
  private readonly pods: string[] = [];
  private readonly procs: ChildProcess[] = [];
  private logFd?: number;
  /** The namespace standing in for the world outside the node (192.0.2.0/24), when asked for. */
  worldNs?: string;
  readonly agentArgs: string[] = [];
  /** Resource limits for the agent process (prlimit), e.g. { nofile: 300 }. */
  agentLimits: { nofile?: number } = {};

  /** --node-name of the agent (the prefix unless given). */
  readonly nodeName: string;
  /** Start the agent in its own session so it outlives this process (the lab). */
  detached = false;

  constructor(tag = 'n', podCidr = '10.200.0.0/24', opts: { prefix?: string; nodeName?: string } = {}) {
    this.prefix = opts.prefix ?? runPrefix(tag);
    this.nodeName = opts.nodeName ?? this.prefix;
    this.nodeNs = `${this.prefix}-node`;
    this.dir = fs.mkdtempSync(`/tmp/${this.prefix}-`);
    this.stateDir = path.join(this.dir, 'state');
    this.bpfRoot = `/sys/fs/bpf/${this.prefix}`;
    this.socket = path.join(this.dir, 'agent.sock');
    this.podCidr = podCidr;
  }

  get conf(): Record<string, unknown> {
    return { cniVersion: '1.1.0', name: 'membrane', type: 'membrane-cni', socket: this.socket };
  }

  async start(opts: { world?: boolean; agentArgs?: string[]; limits?: { nofile?: number } } = {}): Promise<void> {
    if (!fs.existsSync(`/run/netns/${this.nodeNs}`)) netnsAdd(this.nodeNs);
    if (opts.world) this.addWorld();
    this.agentArgs.push(...(opts.agentArgs ?? []));
    if (opts.limits) this.agentLimits = opts.limits;
    await this.startAgent();
  }

  /**
   * A namespace outside the node, reached through it: node 192.0.2.1/24 <-> world
   * 192.0.2.10/24 and 192.0.2.11/24, the world routing the pod CIDR via the node.
   */
  addWorld(): void {
    this.worldNs = `${this.prefix}-world`;
    netnsAdd(this.worldNs);
    this.pods.push(this.worldNs);
    sh('ip', ['-n', this.nodeNs, 'link', 'add', 'wld0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.worldNs]);
    sh('ip', ['-n', this.nodeNs, 'addr', 'add', '192.0.2.1/24', 'dev', 'wld0']);
    sh('ip', ['-n', this.nodeNs, 'link', 'set', 'wld0', 'up']);
    sh('ip', ['-n', this.worldNs, 'addr', 'add', '192.0.2.10/24', 'dev', 'eth0']);
    sh('ip', ['-n', this.worldNs, 'addr', 'add', '192.0.2.11/24', 'dev', 'eth0']);
    sh('ip', ['-n', this.worldNs, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', this.worldNs, 'route', 'add', this.podCidr, 'via', '192.0.2.1']);
  }

  /** Stop this process (by its pid) in cleanup(). */
  own<T extends ChildProcess>(p: T): T {
    this.procs.push(p);
    return p;
  }

  /** Start netkit echo servers in a namespace ("tcp:80,udp:80"); stopped by cleanup(). */
  serve(ns: string, spec: string): Promise<void> {
    const p = spawn('ip', ['netns', 'exec', ns, process.execPath, NETKIT, 'serve', spec], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.procs.push(p);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`servers ${spec} in ${ns} did not start`)), 10_000);
      p.stdout!.once('data', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** Probe several targets at once from a namespace; each bounded by timeoutMs. */
  probe(ns: string, targets: { ip: string; port: number; proto: 'tcp' | 'udp' }[], timeoutMs = 1500): boolean[] {
    const r = tryRun('ip', ['netns', 'exec', ns, process.execPath, NETKIT, 'probe', JSON.stringify(targets), String(timeoutMs)], { timeoutMs: timeoutMs + 10_000 });
    if (r.code !== 0) throw new Error(`probe from ${ns} failed: ${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  tcp(ns: string, ip: string, port: number, timeoutMs = 1500): boolean {
    return this.probe(ns, [{ ip, port, proto: 'tcp' }], timeoutMs)[0];
  }

  /** Apply objects through the CLI (`membrane apply -f`) and wait until every endpoint enforces them. */
  apply(objects: unknown[], opts: { wait?: boolean } = {}): number {
    const f = path.join(this.dir, `apply-${Date.now()}-${Math.random().toString(36).slice(2)}.json`);
    fs.writeFileSync(f, JSON.stringify({ apiVersion: 'v1', kind: 'List', items: objects }));
    const r = this.cli(['apply', '-f', f, '-o', 'json']);
    fs.rmSync(f, { force: true });
    if (r.code !== 0) throw new Error(`membrane apply failed: ${r.stderr}`);
    const rev = JSON.parse(r.stdout).policyRevision as number;
    if (opts.wait !== false) this.waitPolicy(rev);
    return rev;
  }

  delete(objects: { kind: string; metadata: { name: string; namespace?: string } }[]): void {
    const f = path.join(this.dir, `delete-${Date.now()}.json`);
    fs.writeFileSync(f, JSON.stringify({ apiVersion: 'v1', kind: 'List', items: objects }));
    const r = this.cli(['delete', '-f', f, '-o', 'json']);
    fs.rmSync(f, { force: true });
    if (r.code !== 0) throw new Error(`membrane delete failed: ${r.stderr}`);
    const rev = JSON.parse(r.stdout).policyRevision as number;
    this.waitPolicy(rev);
  }

  waitPolicy(rev: number): void {
    const w = this.cli(['policy', 'wait', String(rev), '--timeout', '20']);
    if (w.code !== 0) throw new Error(`policy wait ${rev}: ${w.stderr}`);
  }

  /**
   * Start the agent and wait for its API. Without a pod CIDR (cluster pool),
   * also wait until the operator's allocation arrived, unless `waitForCidr` is false.
   */
  async startAgent(opts: { waitForCidr?: boolean } = {}): Promise<void> {
    fs.mkdirSync(path.join(REPO, 'test-artifacts'), { recursive: true });
    this.logFd = fs.openSync(path.join(REPO, 'test-artifacts', `${this.prefix}-agent.log`), 'a');
    this.agent = spawn(
      'nsenter',
      [
        `--net=/run/netns/${this.nodeNs}`,
        '--',
        ...(this.agentLimits.nofile ? ['prlimit', `--nofile=${this.agentLimits.nofile}:${this.agentLimits.nofile}`, '--'] : []),
        process.execPath,
        AGENT_BIN,
        ...this.agentFlags(),
      ],
      { stdio: ['ignore', this.logFd, this.logFd], detached: this.detached },
    );
    if (this.detached) this.agent.unref();
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (this.agent.exitCode !== null) throw new Error(`agent exited with ${this.agent.exitCode}; see test-artifacts/${this.prefix}-agent.log:\n${this.agentLog()}`);
      if (fs.existsSync(this.socket)) {
        const st = this.cli(['status', '-o', 'json']);
        if (st.code === 0 && (this.podCidr || opts.waitForCidr === false || JSON.parse(st.stdout).state !== 'waiting-for-pod-cidr')) return;
      }
      await sleep(100);
    }
    throw new Error(`agent did not become ready in 20 s:\n${this.agentLog()}`);
  }

  /** The agent's flags (the same for `membrane-agent --cleanup`). */
  agentFlags(): string[] {
    return ['--state-dir', this.stateDir, '--bpf-root', this.bpfRoot, '--socket', this.socket, ...(this.podCidr ? ['--pod-cidr', this.podCidr] : []), '--node-name', this.nodeName, ...this.agentArgs];
  }

  /** `membrane-agent --cleanup` with the node's flags, in the node's namespace. */
  agentCleanup() {
    return tryRun('nsenter', [`--net=/run/netns/${this.nodeNs}`, '--', process.execPath, AGENT_BIN, ...this.agentFlags(), '--cleanup'], { timeoutMs: 60_000 });
  }

  agentLog(): string {
    try {
      return fs.readFileSync(path.join(REPO, 'test-artifacts', `${this.prefix}-agent.log`), 'utf8').split('\n').slice(-30).join('\n');
    } catch {
      return '';
    }
  }

  async stopAgent(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const a = this.agent;
    if (!a || a.exitCode !== null || a.signalCode !== null) return;
    const exited = new Promise<void>((r) => a.once('exit', () => r()));
    a.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((r) => (timer = setTimeout(r, 10_000)))]);
    clearTimeout(timer);
    if (this.logFd !== undefined) fs.closeSync(this.logFd);
    this.logFd = undefined;
  }

  cni(call: CniCall): CniOutcome {
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      CNI_COMMAND: call.command,
      CNI_PATH: path.dirname(CNI_BIN),
      ...(call.containerId !== undefined ? { CNI_CONTAINERID: call.containerId } : {}),
      ...(call.netns !== undefined ? { CNI_NETNS: call.netns } : {}),
      ...(call.ifname !== undefined ? { CNI_IFNAME: call.ifname } : {}),
      ...(call.args !== undefined ? { CNI_ARGS: call.args } : {}),
    };
    for (const [k, v] of Object.entries(call.env ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    const stdin = call.rawStdin ?? JSON.stringify(call.conf ?? this.conf);
    // The plugin runs in the node's namespace, as the runtime would run it on that node.
    const r = tryRun('nsenter', [`--net=/run/netns/${this.nodeNs}`, '--', CNI_BIN], { input: stdin, env });
    let json: any;
    try {
      json = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
    } catch {
      json = undefined;
    }
    return { code: r.code, stdout: r.stdout, json, stderr: r.stderr };
  }

  cli(args: string[]): { code: number; stdout: string; stderr: string } {
    return tryRun(process.execPath, [CLI_BIN, '--socket', this.socket, ...args]);
  }

  /** Call the agent's REST API directly on its socket (what the plugin and CLI do). */
  api(method: string, urlPath: string, body?: unknown): Promise<{ status: number; json: any }> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request(
        { socketPath: this.socket, agent: false, method, path: urlPath, headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {} },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let json: any;
            try {
              json = text ? JSON.parse(text) : undefined;
            } catch {
              json = text;
            }
            resolve({ status: res.statusCode ?? 0, json });
          });
        },
      );
      req.setTimeout(30_000, () => req.destroy(new Error(`${method} ${urlPath}: no answer in 30 s`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  cliJson(args: string[]): any {
    const r = this.cli([...args, '-o', 'json']);
    if (r.code !== 0) throw new Error(`membrane ${args.join(' ')} failed: ${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  /** Create a pod netns and attach it with CNI ADD; returns its name, path, address and the result. */
  addPod(name: string, opts: { args?: string; ifname?: string } = {}) {
    const ns = `${this.prefix}-${name}`;
    const nsPath = netnsAdd(ns);
    this.pods.push(ns);
    const containerId = `${this.prefix}-${name}-cid`;
    const r = this.cni({ command: 'ADD', containerId, netns: nsPath, ifname: opts.ifname ?? 'eth0', args: opts.args ?? `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${name}` });
    if (r.code !== 0) throw new Error(`CNI ADD for ${name} failed: ${r.stdout} ${r.stderr}\n${this.agentLog()}`);
    const ip = String(r.json.ips[0].address).split('/')[0];
    return { ns, nsPath, containerId, ip, result: r.json };
  }

  /** A bare netns for a pod (no ADD), tracked for cleanup. */
  podNs(name: string): { ns: string; nsPath: string } {
    const ns = `${this.prefix}-${name}`;
    const nsPath = netnsAdd(ns);
    this.pods.push(ns);
    return { ns, nsPath };
  }

  nodeExec(cmd: string, args: string[]) {
    return tryRun('ip', ['netns', 'exec', this.nodeNs, cmd, ...args]);
  }

  /** Packets counted in the kernel's metrics map for a drop reason (0 = forwarded) and direction. */
  metric(reason: number, direction?: 'ingress' | 'egress'): number {
    const rows: any[] = this.cliJson(['bpf', 'metrics', 'list']);
    return rows.filter((r) => r.reason === reason && (!direction || r.direction === direction)).reduce((s, r) => s + r.packets, 0);
  }

  /** The L7 proxy the agent started for this node (it outlives the agent by design), if any. */
  proxyPid(): number | undefined {
    try {
      const pid = JSON.parse(fs.readFileSync(path.join(this.stateDir, 'proxy', 'proxy.pid'), 'utf8')).pid;
      if (typeof pid !== 'number' || pid <= 0) return undefined;
      // Only this node's proxy: the pid must still run membrane-proxy on this node's directory.
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      return cmd.includes('membrane-proxy') && cmd.includes(this.stateDir) ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Stop everything and remove the node with `membrane-agent --cleanup` (the
   * way users remove a node; it stops the node's L7 proxy too); the namespaces
   * and the test's directory go last, whatever happened. A failed cleanup
   * fails the test after that.
   */
  async cleanup(): Promise<void> {
    for (const p of this.procs) p.kill('SIGKILL');
    await this.stopAgent('SIGKILL').catch(() => {});
    try {
      fs.copyFileSync(path.join(this.stateDir, 'proxy', 'proxy.log'), path.join(REPO, 'test-artifacts', `${this.prefix}-proxy.log`));
    } catch {
      /* no proxy ran */
    }
    const proxy = this.proxyPid();
    const r = fs.existsSync(`/run/netns/${this.nodeNs}`) ? this.agentCleanup() : undefined;
    if (proxy && fs.existsSync(`/proc/${proxy}`)) {
      // --cleanup could not stop it: do not leave it running.
      try {
        process.kill(proxy, 'SIGKILL');
      } catch {
        /* gone meanwhile */
      }
    }
    for (const ns of this.pods) netnsDel(ns);
    netnsDel(this.nodeNs);
    tryRun('rm', ['-rf', this.bpfRoot]);
    fs.rmSync(this.dir, { recursive: true, force: true });
    if (r && r.code !== 0) throw new Error(`membrane-agent --cleanup exited with ${r.code}: ${r.stderr}`);
  }
}

export function hasCmd(cmd: string): boolean {
  return tryRun('sh', ['-c', `command -v ${cmd}`]).code === 0;
}

export { sh };
