/**
 * A test node: a network namespace with its own agent (own state dir, bpf root,
 * socket), entered with nsenter so bpffs stays visible. Pods are further
 * namespaces attached through the real CNI plugin binary, exactly as a runtime
 * calls it. cleanup() removes everything even after failures.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO, netnsAdd, netnsDel, runPrefix, sh, sleep, tryRun } from './sys';

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
  private logFd?: number;

  constructor(tag = 'n', podCidr = '10.200.0.0/24') {
    this.prefix = runPrefix(tag);
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

  async start(): Promise<void> {
    if (!fs.existsSync(`/run/netns/${this.nodeNs}`)) netnsAdd(this.nodeNs);
    await this.startAgent();
  }

  async startAgent(): Promise<void> {
    fs.mkdirSync(path.join(REPO, 'test-artifacts'), { recursive: true });
    this.logFd = fs.openSync(path.join(REPO, 'test-artifacts', `${this.prefix}-agent.log`), 'a');
    this.agent = spawn(
      'nsenter',
      [
        `--net=/run/netns/${this.nodeNs}`,
        '--',
        process.execPath,
        AGENT_BIN,
        '--state-dir', this.stateDir,
        '--bpf-root', this.bpfRoot,
        '--socket', this.socket,
        '--pod-cidr', this.podCidr,
        '--node-name', this.prefix,
      ],
      { stdio: ['ignore', this.logFd, this.logFd] },
    );
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (this.agent.exitCode !== null) throw new Error(`agent exited with ${this.agent.exitCode}; see test-artifacts/${this.prefix}-agent.log:\n${this.agentLog()}`);
      if (fs.existsSync(this.socket) && this.cli(['status']).code === 0) return;
      await sleep(100);
    }
    throw new Error(`agent did not become ready in 20 s:\n${this.agentLog()}`);
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
    await Promise.race([exited, sleep(10_000)]);
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

  async cleanup(): Promise<void> {
    await this.stopAgent('SIGKILL').catch(() => {});
    for (const ns of this.pods) netnsDel(ns);
    netnsDel(this.nodeNs); // takes the host device pair and every veth with it
    tryRun('rm', ['-rf', this.bpfRoot]);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export function hasCmd(cmd: string): boolean {
  return tryRun('sh', ['-c', `command -v ${cmd}`]).code === 0;
}

export { sh };
