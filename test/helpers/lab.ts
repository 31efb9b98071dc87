/**
 * The multi-node lab: N nodes on one machine, each a network namespace with
 * its own agent (TestNode: own state dir, bpf root, socket), joined by an
 * underlay bridge, with etcd on the underlay. One implementation, used by the
 * cluster tests and driven by scripts/lab.sh (through lab-cli.ts).
 *
 *   <prefix>-ul        the underlay: bridge br0 198.18.0.254/24, etcd on :2379
 *   <prefix>n<i>-node  node i: eth0 198.18.0.<i>/24 (default route via .254),
 *                      agent --node-name n<i> --pod-cidr 10.210.<i>.0/24 (or, with
 *                      `operator.pool`, no --pod-cidr: the operator allocates one)
 *   operators          bin/membrane-operator in the underlay namespace (startOperator)
 *   <prefix>-ext       a host outside the cluster on the underlay (198.18.0.200)
 *
 * 198.18.0.0/15 is the benchmarking range: nothing outside these namespaces
 * is ever addressed. Everything carries the lab's prefix and is removed by
 * cleanup() (or `down` from a saved state) even after failures.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EtcdServer } from './etcd';
import { CNI_BIN, TestNode } from './node';
import { NETKIT, REPO, netnsAdd, netnsDel, runPrefix, sh, sleep, tryRun } from './sys';

export const UNDERLAY_GW = '198.18.0.254';
export const EXT_IP = '198.18.0.200';

export interface LabOptions {
  nodes: number;
  prefix?: string;
  /** Lease TTL of the agents (seconds). */
  leaseTtl?: number;
  /** Extra agent flags for every node. */
  agentArgs?: string[];
  /** Processes outlive this one (scripts/lab.sh up). */
  detached?: boolean;
  /** Underlay MTU (default 1500). */
  mtu?: number;
  /**
   * Start the operator (bin/membrane-operator) before the agents, with these
   * extra flags. With `pool`, the agents get no --pod-cidr: the operator's
   * cluster pool allocates them.
   */
  operator?: { args?: string[]; pool?: { cidr: string; maskSize: number } };
  /** Extra agent flags for node i (0-based). */
  nodeArgs?: Record<number, string[]>;
  /** Every agent serves its flows to the others (--relay-address <node ip>:4244, a shared token file). */
  relay?: boolean;
}

export interface LabPod {
  name: string;
  namespace: string;
  node: number;
  ns: string;
  nsPath: string;
  containerId: string;
  ip: string;
}

export interface LabState {
  prefix: string;
  underlayNs: string;
  extNs: string;
  dir: string;
  etcd: { pid?: number; dataDir: string; endpoint: string };
  nodes: { name: string; prefix: string; nodeNs: string; socket: string; stateDir: string; bpfRoot: string; dir: string; podCidr: string; ip: string; pid?: number }[];
  pods: LabPod[];
  pids: number[];
}

export class Lab {
  readonly prefix: string;
  readonly underlayNs: string;
  readonly extNs: string;
  readonly dir: string;
  readonly etcd: EtcdServer;
  readonly nodes: TestNode[] = [];
  readonly pods: LabPod[] = [];
  private readonly procs: ChildProcess[] = [];
  readonly extraPids: number[] = [];

  constructor(readonly opts: LabOptions) {
    if (opts.nodes < 1 || opts.nodes > 50) throw new Error(`nodes: ${opts.nodes} must be 1..50`);
    this.prefix = opts.prefix ?? runPrefix('lab');
    this.underlayNs = `${this.prefix}-ul`;
    this.extNs = `${this.prefix}-ext`;
    this.dir = fs.mkdtempSync(`/tmp/${this.prefix}-`);
    fs.mkdirSync(path.join(REPO, 'test-artifacts'), { recursive: true });
    this.etcd = new EtcdServer({
      name: 'etcd',
      dataDir: path.join(this.dir, 'etcd'),
      netns: this.underlayNs,
      clientAddrs: [`${UNDERLAY_GW}:2379`, '127.0.0.1:2379'],
      peerAddr: '127.0.0.1:2380',
      logFile: path.join(REPO, 'test-artifacts', `${this.prefix}-etcd.log`),
    });
  }

  get endpoint(): string {
    return `http://${UNDERLAY_GW}:2379`;
  }

  nodeIp(i: number): string {
    return `198.18.0.${i + 1}`;
  }

  podCidr(i: number): string {
    return `10.210.${i + 1}.0/24`;
  }

  /** Underlay, etcd, and every node with its agent. */
  async up(): Promise<void> {
    const mtu = this.opts.mtu ?? 1500;
    netnsAdd(this.underlayNs);
    const ul = (args: string[]) => sh('ip', ['-n', this.underlayNs, ...args]);
    ul(['link', 'add', 'br0', 'type', 'bridge']);
    ul(['link', 'set', 'br0', 'mtu', String(mtu), 'up']);
    ul(['addr', 'add', `${UNDERLAY_GW}/24`, 'dev', 'br0']);
    tryRun('ip', ['netns', 'exec', this.underlayNs, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=0']);
    await this.etcd.start({ detached: this.opts.detached });
    this.attachHost(this.extNs, 'ext', EXT_IP, mtu);
    if (this.opts.operator) await this.startOperator();
    for (let i = 0; i < this.opts.nodes; i++) this.nodes.push(this.makeNode(i, mtu));
    await Promise.all(this.nodes.map((n) => n.startAgent()));
  }

  readonly operators: ChildProcess[] = [];
  private operatorSeq = 0;

  /** The operator's flags for this lab (--kvstore-* and, with a pool, the --cluster-pool-* flags). */
  operatorFlags(id: string): string[] {
    const o = this.opts.operator ?? {};
    return [
      '--kvstore-endpoints', this.endpoint,
      '--kvstore-prefix', `${this.prefix}/`,
      '--id', id,
      ...(o.pool ? ['--cluster-pool-ipv4-cidr', o.pool.cidr, '--cluster-pool-ipv4-mask-size', String(o.pool.maskSize)] : []),
      ...(o.args ?? []),
    ];
  }

  /**
   * Start an operator (in the underlay namespace, where etcd is); resolves
   * once it logged that it started. Its log: test-artifacts/<prefix>-<id>.log.
   */
  async startOperator(id = `op${++this.operatorSeq}`): Promise<{ proc: ChildProcess; id: string; log: string }> {
    const log = path.join(REPO, 'test-artifacts', `${this.prefix}-${id}.log`);
    const fd = fs.openSync(log, 'a');
    const proc = spawn('nsenter', [`--net=/run/netns/${this.underlayNs}`, '--', process.execPath, path.join(REPO, 'bin/membrane-operator'), ...this.operatorFlags(id)], { stdio: ['ignore', fd, fd], detached: !!this.opts.detached });
    fs.closeSync(fd);
    this.operators.push(proc);
    if (this.opts.detached) proc.unref();
    if (proc.pid) this.extraPids.push(proc.pid);
    await this.until(`operator ${id} to start`, () => {
      if (proc.exitCode !== null) throw new Error(`operator ${id} exited with ${proc.exitCode}: ${fs.readFileSync(log, 'utf8').slice(-2000)}`);
      return fs.readFileSync(log, 'utf8').includes('"operator started"');
    }, 20_000);
    return { proc, id, log };
  }

  /** The cluster's relay token (created once, mode 0600). */
  relayTokenFile(): string {
    const f = path.join(this.dir, 'relay-token');
    if (!fs.existsSync(f)) fs.writeFileSync(f, crypto.randomBytes(24).toString('hex') + '\n', { mode: 0o600 });
    return f;
  }

  /** The lab cluster's keys under `rel` (relative to its prefix), read with etcdctl in the underlay namespace. */
  etcdKeys(rel: string): { key: string; value: string; modRevision: number }[] {
    const r = tryRun('ip', ['netns', 'exec', this.underlayNs, 'etcdctl', '--endpoints', 'http://127.0.0.1:2379', 'get', '--prefix', `${this.prefix}/${rel}`, '-w', 'json'], { timeoutMs: 10_000 });
    if (r.code !== 0) throw new Error(`etcdctl get ${rel}: ${r.stderr}`);
    const out = JSON.parse(r.stdout) as { kvs?: { key: string; value: string; mod_revision: number }[] };
    return (out.kvs ?? []).map((k) => ({
      key: Buffer.from(k.key, 'base64').toString().slice(this.prefix.length + 1),
      value: Buffer.from(k.value, 'base64').toString(),
      modRevision: Number(k.mod_revision),
    }));
  }

  /** A namespace with one uplink on the underlay bridge. */
  private attachHost(ns: string, tag: string, ip: string, mtu: number): void {
    if (!fs.existsSync(`/run/netns/${ns}`)) netnsAdd(ns);
    sh('ip', ['-n', this.underlayNs, 'link', 'add', `ul-${tag}`, 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', String(mtu), 'netns', ns]);
    sh('ip', ['-n', this.underlayNs, 'link', 'set', `ul-${tag}`, 'master', 'br0', 'up']);
    sh('ip', ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', UNDERLAY_GW]);
  }

  /** Another node on the underlay (not started): index i decides its name, address and (unless given) pod CIDR. */
  extraNode(i: number, podCidr?: string): TestNode {
    const n = this.makeNode(i, this.opts.mtu ?? 1500, podCidr);
    this.extras.push(n);
    return n;
  }
  private readonly extras: TestNode[] = [];

  private makeNode(i: number, mtu: number, podCidr?: string): TestNode {
    const name = `n${i + 1}`;
    const n = new TestNode('lab', podCidr ?? (this.opts.operator?.pool ? '' : this.podCidr(i)), { prefix: `${this.prefix}${name}`, nodeName: name });
    n.detached = !!this.opts.detached;
    this.attachHost(n.nodeNs, name, this.nodeIp(i), mtu);
    n.agentArgs.push(
      '--kvstore-endpoints', this.endpoint,
      '--kvstore-prefix', `${this.prefix}/`,
      '--kvstore-lease-ttl', String(this.opts.leaseTtl ?? 20),
      ...(this.opts.agentArgs ?? []),
      ...(this.opts.nodeArgs?.[i] ?? []),
      ...(this.opts.relay ? ['--relay-address', `${this.nodeIp(i)}:4244`, '--relay-token-file', this.relayTokenFile()] : []),
    );
    return n;
  }

  node(name: string | number): TestNode {
    const n = typeof name === 'number' ? this.nodes[name] : this.nodes.find((x) => x.nodeName === name);
    if (!n) throw new Error(`no lab node ${name}`);
    return n;
  }

  /** A Pod object (applied through node `node`'s CLI) and its pod attached there with the CNI plugin. */
  addPod(node: number, name: string, labels: Record<string, string>, opts: { namespace?: string; ports?: { name: string; containerPort: number; protocol?: string }[]; apply?: boolean } = {}): LabPod {
    const n = this.nodes[node];
    const namespace = opts.namespace ?? 'default';
    if (opts.apply !== false) {
      n.apply(
        [
          {
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { name, namespace, labels },
            spec: { containers: [{ name: 'c', ports: opts.ports ?? [] }] },
          },
        ],
        { wait: false },
      );
    }
    const p = n.addPod(name, { args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=${name}` });
    const pod: LabPod = { name, namespace, node, ns: p.ns, nsPath: p.nsPath, containerId: p.containerId, ip: p.ip };
    this.pods.push(pod);
    return pod;
  }

  /** As addPod, with the CNI ADD run asynchronously (several nodes attaching at the same moment). */
  async addPodAsync(node: number, name: string, opts: { namespace?: string } = {}): Promise<LabPod> {
    const n = this.nodes[node];
    const namespace = opts.namespace ?? 'default';
    const { ns, nsPath } = n.podNs(name);
    const containerId = `${n.prefix}-${name}-cid`;
    const env = {
      PATH: process.env.PATH,
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: containerId,
      CNI_NETNS: nsPath,
      CNI_IFNAME: 'eth0',
      CNI_PATH: path.dirname(CNI_BIN),
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=${name}`,
    };
    const out = await new Promise<string>((resolve, reject) => {
      const p = spawn('nsenter', [`--net=/run/netns/${n.nodeNs}`, '--', CNI_BIN], { env, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d) => (stdout += d));
      p.stderr.on('data', (d) => (stderr += d));
      const t = setTimeout(() => p.kill('SIGKILL'), 60_000);
      p.on('exit', (code) => {
        clearTimeout(t);
        if (code === 0) resolve(stdout);
        else reject(new Error(`CNI ADD ${name} on ${n.nodeName} failed (${code}): ${stdout} ${stderr}`));
      });
      p.stdin.end(JSON.stringify(n.conf));
    });
    const ip = String(JSON.parse(out).ips[0].address).split('/')[0];
    const pod: LabPod = { name, namespace, node, ns, nsPath, containerId, ip };
    this.pods.push(pod);
    return pod;
  }

  pod(name: string): LabPod {
    const p = this.pods.find((x) => x.name === name);
    if (!p) throw new Error(`no lab pod ${name}`);
    return p;
  }

  /** Echo servers in a pod (or any namespace): "tcp:8080,udp:53"; with `ident`, servers that answer with that name. */
  async serve(ns: string, spec: string, ident?: string): Promise<void> {
    const args = ident ? ['ident', ident, spec] : ['serve', spec];
    const p = spawn('ip', ['netns', 'exec', ns, process.execPath, NETKIT, ...args], { stdio: ['ignore', 'pipe', 'ignore'], detached: !!this.opts.detached });
    this.procs.push(p);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`servers ${spec} in ${ns} did not start`)), 10_000);
      p.stdout!.once('data', () => {
        clearTimeout(t);
        resolve();
      });
    });
    if (this.opts.detached) {
      p.stdout!.destroy();
      p.unref();
    }
  }

  /** Probe from a namespace: one boolean per target, each bounded by timeoutMs. */
  probe(ns: string, targets: { ip: string; port: number; proto: 'tcp' | 'udp' }[], timeoutMs = 1500): boolean[] {
    return this.nodes[0].probe(ns, targets, timeoutMs);
  }

  tcp(ns: string, ip: string, port: number, timeoutMs = 1500): boolean {
    return this.probe(ns, [{ ip, port, proto: 'tcp' }], timeoutMs)[0];
  }

  /** From a namespace: COUNT new TCP/UDP flows to host:port; the names of the ident servers that answered. */
  who(ns: string, proto: 'tcp' | 'udp', host: string, port: number, count: number, timeoutMs = 1500): string[] {
    const r = tryRun('ip', ['netns', 'exec', ns, process.execPath, NETKIT, 'who', proto, host, String(port), String(count), String(timeoutMs)], { timeoutMs: 120_000 });
    if (r.code !== 0) throw new Error(`who from ${ns}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  /** Ping from a namespace (bounded). */
  ping(ns: string, ip: string, extra: string[] = []): boolean {
    return tryRun('ip', ['netns', 'exec', ns, 'ping', '-c', '1', '-W', '1', ...extra, ip], { timeoutMs: 10_000 }).code === 0;
  }

  /** One UDP datagram with exactly these bytes, from a namespace. */
  udpSend(ns: string, host: string, port: number, payload: Buffer): void {
    const r = tryRun('ip', ['netns', 'exec', ns, process.execPath, NETKIT, 'udp-send', host, String(port), payload.toString('hex')]);
    if (r.code !== 0) throw new Error(`udp-send from ${ns}: ${r.stderr}`);
  }

  /** Wait until `fn` holds (bounded). */
  async until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 20_000, stepMs = 100): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (await fn()) return;
      await sleep(stepMs);
    }
    throw new Error(`lab: timed out after ${timeoutMs} ms waiting for ${what}`);
  }

  /** What `down` needs to remove everything later (scripts/lab.sh). */
  state(): LabState {
    return {
      prefix: this.prefix,
      underlayNs: this.underlayNs,
      extNs: this.extNs,
      dir: this.dir,
      etcd: { pid: this.etcd.pid, dataDir: this.etcd.opts.dataDir, endpoint: this.endpoint },
      nodes: this.nodes.map((n, i) => ({
        name: n.nodeName,
        prefix: n.prefix,
        nodeNs: n.nodeNs,
        socket: n.socket,
        stateDir: n.stateDir,
        bpfRoot: n.bpfRoot,
        dir: n.dir,
        podCidr: n.podCidr || allocatedCidr(n),
        ip: this.nodeIp(i),
        pid: n.agent?.pid,
      })),
      pods: this.pods,
      pids: [...this.procs.map((p) => p.pid!).filter(Boolean), ...this.extraPids],
    };
  }

  async cleanup(): Promise<void> {
    for (const p of [...this.procs, ...this.operators]) p.kill('SIGKILL');
    await Promise.all([...this.nodes, ...this.extras].map((n) => n.cleanup().catch(() => undefined)));
    await this.etcd.cleanup().catch(() => undefined);
    removeByPrefix(this.prefix);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The pod CIDR the operator allocated to a node (cluster pool), as its agent reports it. */
function allocatedCidr(n: TestNode): string {
  if (!n.agent) return '';
  const r = n.cli(['status', '-o', 'json']);
  try {
    return r.code === 0 ? (JSON.parse(r.stdout).podCidr ?? '') : '';
  } catch {
    return '';
  }
}

/** Is `pid` a process whose command line names `prefix` (so it is ours to kill)? */
function ownedBy(pid: number, prefix: string): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(prefix);
  } catch {
    return false;
  }
}

/** Remove everything a lab with this prefix may have left: processes, namespaces, pins, directories. */
export function removeByPrefix(prefix: string, pids: number[] = []): string[] {
  const removed: string[] = [];
  if (!/^[a-z0-9]{6,}$/.test(prefix)) throw new Error(`refusing to remove by prefix "${prefix}"`);
  // Our processes: the saved pids, and any process whose command line names the prefix (agents, etcd, servers).
  const candidates = new Set<number>(pids);
  for (const d of fs.readdirSync('/proc')) if (/^\d+$/.test(d) && Number(d) !== process.pid) candidates.add(Number(d));
  for (const pid of candidates) {
    if (!ownedBy(pid, prefix)) continue;
    try {
      process.kill(pid, 'SIGKILL');
      removed.push(`process ${pid}`);
    } catch {
      /* gone */
    }
  }
  const netns = tryRun('ip', ['netns', 'list']).stdout.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(prefix));
  // Pods first, then nodes (their devices go with them), then the underlay.
  netns.sort((a, b) => Number(a.endsWith('-ul')) - Number(b.endsWith('-ul')));
  for (const ns of netns) {
    netnsDel(ns);
    removed.push(`netns ${ns}`);
  }
  for (const d of fs.readdirSync('/sys/fs/bpf')) {
    if (!d.startsWith(prefix)) continue;
    fs.rmSync(path.join('/sys/fs/bpf', d), { recursive: true, force: true });
    removed.push(`/sys/fs/bpf/${d}`);
  }
  for (const d of fs.readdirSync('/tmp')) {
    if (!d.startsWith(prefix)) continue;
    fs.rmSync(path.join('/tmp', d), { recursive: true, force: true });
    removed.push(`/tmp/${d}`);
  }
  return removed;
}
