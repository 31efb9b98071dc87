/**
 * A TestNode whose agent runs in the HOST network namespace (no nsenter).
 *
 * Needed for runtimes that run in the host netns and call the plugin there
 * (podman): the agent must live in the netns where the host side of each pod
 * veth should be. Everything the agent creates is still unique to this run:
 * --state-dir/--socket under a per-run temp dir, --bpf-root /sys/fs/bpf/<prefix>,
 * a random pod CIDR that overlaps no existing route or address, and host device
 * names derived from those (mbh_xxxxxx/mbn_xxxxxx). cleanup() removes the
 * device pair (and with it the pod CIDR route), any pod veth left behind, the
 * pins and the dirs, and restores net.ipv4.ip_forward if the agent changed it.
 */
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AGENT_BIN, TestNode } from '../../helpers/node';
import { REPO, sleep, tryRun } from '../../helpers/sys';

type V4Prefix = { net: number; len: number };

function ipToInt(s: string): number {
  return s.split('.').reduce((a, o) => ((a << 8) | Number(o)) >>> 0, 0);
}

function mask(len: number): number {
  return len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
}

function overlaps(a: V4Prefix, b: V4Prefix): boolean {
  const len = Math.min(a.len, b.len);
  return ((a.net & mask(len)) >>> 0) === ((b.net & mask(len)) >>> 0);
}

/** Every IPv4 prefix the host's routing tables and addresses mention (default routes excluded). */
function hostPrefixes(): V4Prefix[] {
  const text = tryRun('ip', ['-4', '-o', 'route', 'show', 'table', 'all']).stdout + '\n' + tryRun('ip', ['-4', '-o', 'addr', 'show']).stdout;
  const out: V4Prefix[] = [];
  for (const m of text.matchAll(/\b(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?\b/g)) {
    const len = m[2] === undefined ? 32 : Number(m[2]);
    if (len === 0) continue;
    out.push({ net: ipToInt(m[1]), len });
  }
  return out;
}

/** A random 10.2xx.y.0/24 that no host route or address overlaps. */
export function pickPodCidr(): string {
  const used = hostPrefixes();
  for (let i = 0; i < 200; i++) {
    const b = 200 + crypto.randomInt(50);
    const c = crypto.randomInt(256);
    const cand = { net: ipToInt(`10.${b}.${c}.0`), len: 24 };
    if (!used.some((u) => overlaps(u, cand))) return `10.${b}.${c}.0/24`;
  }
  throw new Error('no free 10.2xx.y.0/24 pod CIDR found in the host routing table');
}

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';

export class HostNetnsNode extends TestNode {
  private hostLogFd?: number;
  private ipForwardBefore?: string;
  /** The agent's host device pair (from `membrane status`, or derived from the flags as the agent does). */
  devices: { host: string; net: string };

  /** A /24 of its own for ClusterIPs: the agent routes it in the host namespace. */
  readonly serviceCidr: string;

  constructor(tag = 'h') {
    super(tag, pickPodCidr());
    let svc = pickPodCidr();
    while (svc === this.podCidr) svc = pickPodCidr();
    this.serviceCidr = svc;
    const instance = crypto.createHash('sha256').update(`${path.resolve(this.bpfRoot)}\0${path.resolve(this.stateDir)}`).digest('hex').slice(0, 6);
    this.devices = { host: `mbh_${instance}`, net: `mbn_${instance}` };
  }

  get logPath(): string {
    return path.join(REPO, 'test-artifacts', `${this.prefix}-agent.log`);
  }

  override async start(): Promise<void> {
    try {
      this.ipForwardBefore = fs.readFileSync(IP_FORWARD, 'utf8').trim();
    } catch {
      this.ipForwardBefore = undefined;
    }
    await this.startAgent();
    const st = this.cliJson(['status']);
    if (st.devices?.host && st.devices?.net) this.devices = { host: st.devices.host, net: st.devices.net };
  }

  override async startAgent(): Promise<void> {
    fs.mkdirSync(path.join(REPO, 'test-artifacts'), { recursive: true });
    if (this.hostLogFd !== undefined) fs.closeSync(this.hostLogFd);
    this.hostLogFd = fs.openSync(this.logPath, 'a');
    this.agent = spawn(
      process.execPath,
      [AGENT_BIN, '--state-dir', this.stateDir, '--bpf-root', this.bpfRoot, '--socket', this.socket, '--pod-cidr', this.podCidr, '--service-cidr', this.serviceCidr, '--node-name', this.prefix],
      { stdio: ['ignore', this.hostLogFd, this.hostLogFd] },
    );
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (this.agent.exitCode !== null) throw new Error(`agent exited with ${this.agent.exitCode}; see ${this.logPath}:\n${this.agentLog()}`);
      if (fs.existsSync(this.socket) && this.cli(['status']).code === 0) return;
      await sleep(100);
    }
    throw new Error(`agent did not become ready in 20 s:\n${this.agentLog()}`);
  }

  /** Like TestNode.stopAgent, but the bounded wait leaves no timer behind (which would keep the test process alive). */
  override async stopAgent(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const a = this.agent;
    if (a && a.exitCode === null && a.signalCode === null) {
      let timer: NodeJS.Timeout | undefined;
      const exited = new Promise<void>((r) => a.once('exit', () => r()));
      a.kill(signal);
      await Promise.race([exited, new Promise<void>((r) => (timer = setTimeout(r, 10_000)))]);
      clearTimeout(timer);
    }
    if (this.hostLogFd !== undefined) fs.closeSync(this.hostLogFd);
    this.hostLogFd = undefined;
  }

  /** Commands "on the node" are commands in the host netns here. */
  override nodeExec(cmd: string, args: string[]) {
    return tryRun(cmd, args, { timeoutMs: 15_000 });
  }

  /** Host-side veths of endpoints recorded in the state dir (what DEL should have removed). */
  recordedHostVeths(): string[] {
    const dir = path.join(this.stateDir, 'endpoints');
    const out: string[] = [];
    try {
      for (const f of fs.readdirSync(dir)) {
        try {
          const ep = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
          if (typeof ep.hostIfname === 'string' && /^lxc[0-9a-f]{12}$/.test(ep.hostIfname)) out.push(ep.hostIfname);
        } catch {
          /* partial file */
        }
      }
    } catch {
      /* no state dir */
    }
    return out;
  }

  override async cleanup(): Promise<void> {
    await this.stopAgent('SIGKILL').catch(() => {});
    // Pod veths DEL did not remove (e.g. after a failure), then the host device pair:
    // deleting one side of a veth removes its peer and the pod CIDR route on it.
    for (const ifname of this.recordedHostVeths()) tryRun('ip', ['link', 'del', ifname]);
    if (tryRun('ip', ['link', 'show', this.devices.host]).code === 0) tryRun('ip', ['link', 'del', this.devices.host]);
    if (tryRun('ip', ['link', 'show', this.devices.net]).code === 0) tryRun('ip', ['link', 'del', this.devices.net]);
    tryRun('rm', ['-rf', this.bpfRoot]);
    fs.rmSync(this.dir, { recursive: true, force: true });
    if (this.ipForwardBefore === '0') {
      // Only if no other Membrane agent still uses the host netns as its node.
      const others = tryRun('ip', ['-o', 'link', 'show']).stdout.split('\n').some((l) => /\bmbh_[0-9a-f]{6}\b|\bmb_host\b/.test(l));
      if (!others) fs.writeFileSync(IP_FORWARD, '0');
    }
  }
}
