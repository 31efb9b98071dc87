/**
 * Cluster benchmark, on the lab (three node namespaces on an underlay bridge,
 * etcd, one agent per node).
 *
 *   node dist/bench/cluster.js [--quick] [--rounds N] [--pods N]
 *
 * 1. Cross-node pod-to-pod: TCP request/response (sockperf ping-pong, both
 *    ends pinned to CPU 0) and one-stream throughput (iperf3), Membrane's
 *    overlay (eBPF, VXLAN collect-metadata) against a plain kernel VXLAN
 *    baseline between the same two node namespaces (routed pods, a
 *    point-to-point VXLAN device on UDP 4789, routes, no BPF), interleaved.
 *    Target: ratio >= 0.95.
 * 2. Identity propagation: a new Pod applied on node A (REST API, as
 *    `membrane apply` does) and attached there (CNI ADD) until node B's kernel
 *    ipcache map holds its address with its identity (read from B's pinned
 *    map); p50/p99 over N pods (200; --quick 50). Target p99 <= 500 ms.
 * 3. Policy change to enforced on every node: a policy applied on node 1
 *    until every node's kernel policy map of its target pod holds the new
 *    entry. Target <= 1 s.
 * 4. Cost per pod in the cluster: etcd keys (by kind), watch events received
 *    by each agent, agent memory (RSS) per pod.
 * Prints figures and ratios; never asserts timings.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BpfMap } from '../src/bpf';
import * as gen from '../src/datapath/maps.gen';
import { Lab } from '../test/helpers/lab';
import type { TestNode } from '../test/helpers/node';
import { hasCmd } from '../test/helpers/node';
import { netnsAdd, netnsDel, ping, sh } from '../test/helpers/sys';
import { argValue, background, fmt, hasArg, median, mustRoot, onCleanup, percentile, run, runBench, sleep, spread, table } from './lib';

const RR_PORT = 11111;
const TP_PORT = 5201;
const TARGET = 0.95;

interface System {
  name: string;
  client: string;
  server: string;
  serverIp: string;
}

/** Plain kernel VXLAN between the two node namespaces: routed pods, a p2p VXLAN device on 4789, routes. */
function buildBaseline(lab: Lab): System {
  const pods: { ns: string; node: TestNode; nodeIp: string; peerIp: string; pod: string; gw: string; cidr: string; vx: string; peerVx: string }[] = [
    { ns: `${lab.prefix}-ba`, node: lab.nodes[0], nodeIp: '198.18.0.1', peerIp: '198.18.0.2', pod: '10.99.1.2', gw: '10.99.1.1', cidr: '10.99.1.0/24', vx: '172.31.255.1', peerVx: '172.31.255.2' },
    { ns: `${lab.prefix}-bb`, node: lab.nodes[1], nodeIp: '198.18.0.2', peerIp: '198.18.0.1', pod: '10.99.2.2', gw: '10.99.2.1', cidr: '10.99.2.0/24', vx: '172.31.255.2', peerVx: '172.31.255.1' },
  ];
  for (const [i, p] of pods.entries()) {
    const other = pods[1 - i];
    const n = p.node.nodeNs;
    netnsAdd(p.ns);
    onCleanup(`netns ${p.ns}`, () => netnsDel(p.ns));
    const ip = (...a: string[]) => sh('ip', ['-n', n, ...a]);
    ip('link', 'add', 'vxb', 'mtu', '1450', 'type', 'vxlan', 'id', '42', 'dstport', '4789', 'local', p.nodeIp, 'remote', p.peerIp, 'dev', 'eth0');
    ip('addr', 'add', `${p.vx}/30`, 'dev', 'vxb');
    ip('link', 'set', 'vxb', 'up');
    ip('link', 'add', 'bveth', 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', '1450', 'netns', p.ns);
    ip('addr', 'add', `${p.gw}/32`, 'dev', 'bveth');
    ip('link', 'set', 'bveth', 'up');
    ip('route', 'add', `${p.pod}/32`, 'dev', 'bveth');
    ip('route', 'add', other.cidr, 'via', other.vx, 'dev', 'vxb');
    sh('ip', ['-n', p.ns, 'addr', 'add', `${p.pod}/32`, 'dev', 'eth0']);
    sh('ip', ['-n', p.ns, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', p.ns, 'route', 'add', `${p.gw}/32`, 'dev', 'eth0', 'scope', 'link']);
    sh('ip', ['-n', p.ns, 'route', 'add', 'default', 'via', p.gw, 'dev', 'eth0', 'onlink']);
    void other.peerVx;
  }
  return { name: 'baseline', client: pods[0].ns, server: pods[1].ns, serverIp: pods[1].pod };
}

async function waitListening(ns: string, port: number): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const r = await run('ip', ['netns', 'exec', ns, 'ss', '-Htln', `sport = :${port}`], { timeoutMs: 5000 });
    if (r.stdout.trim()) return;
    await sleep(100);
  }
  throw new Error(`nothing listens on port ${port} in ${ns} after 5 s`);
}

async function startServers(s: System): Promise<void> {
  background('ip', ['netns', 'exec', s.server, 'taskset', '-c', '0', 'sockperf', 'sr', '--tcp', '-i', s.serverIp, '-p', String(RR_PORT)]);
  background('ip', ['netns', 'exec', s.server, 'iperf3', '-s', '-B', s.serverIp, '-p', String(TP_PORT)]);
  await waitListening(s.server, RR_PORT);
  await waitListening(s.server, TP_PORT);
}

async function measureRR(s: System, seconds: number): Promise<{ tps: number; p50us: number }> {
  const r = await run('ip', ['netns', 'exec', s.client, 'taskset', '-c', '0', 'sockperf', 'pp', '--tcp', '-i', s.serverIp, '-p', String(RR_PORT), '-t', String(seconds), '--full-rtt'], { timeoutMs: (seconds + 20) * 1000 });
  const out = r.stdout + r.stderr;
  const valid = /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)/.exec(out);
  const p50 = /percentile 50\.000 =\s*([\d.]+)/.exec(out);
  if (r.code !== 0 || !valid || !p50) throw new Error(`sockperf pp (${s.name}) failed:\n${out.slice(-1500)}`);
  return { tps: Number(valid[3]) / Number(valid[1]), p50us: Number(p50[1]) };
}

async function measureTP(s: System, seconds: number): Promise<number> {
  let last = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const r = await run('ip', ['netns', 'exec', s.client, 'iperf3', '-c', s.serverIp, '-p', String(TP_PORT), '-t', String(seconds), '-J'], { timeoutMs: (seconds + 20) * 1000 });
    try {
      const bps = JSON.parse(r.stdout)?.end?.sum_received?.bits_per_second;
      if (r.code === 0 && typeof bps === 'number') return bps / 1e9;
      last = r.stdout.slice(-500);
    } catch {
      last = r.stdout + r.stderr;
    }
    await sleep(500);
  }
  throw new Error(`iperf3 (${s.name}) failed: ${last}`);
}

/** The kernel ipcache map of a node, opened from its pins. */
function ipcacheOf(n: TestNode): BpfMap<gen.IpcacheKey, gen.IpcacheValue> {
  const m = BpfMap.fromPin(path.join(n.bpfRoot, 'mb_ipcache'), 'mb_ipcache').withCodecs(gen.ipcacheKeyCodec, gen.ipcacheValueCodec);
  onCleanup('close ipcache map', () => m.close());
  return m;
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

const ip4 = (s: string) => Buffer.concat([Buffer.from(s.split('.').map(Number)), Buffer.alloc(12)]);

async function main(): Promise<void> {
  mustRoot();
  for (const c of ['sockperf', 'iperf3', 'taskset', 'ss', 'etcd']) if (!hasCmd(c)) throw new Error(`${c} is not installed (bash scripts/setup.sh --test)`);
  const quick = hasArg('--quick');
  const rounds = argValue('--rounds', quick ? 2 : 3, 1, 20);
  const podCount = argValue('--pods', quick ? 50 : 200, 1, 1000);
  const rrSec = quick ? 1 : 3;
  const tpSec = quick ? 2 : 5;
  console.log(`cluster: kernel ${os.release()}, ${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);

  const t0 = Date.now();
  const lab = new Lab({ nodes: 3, leaseTtl: 20 });
  onCleanup('lab', () => lab.cleanup());
  await lab.up();
  const [n1, n2, n3] = lab.nodes;
  console.log(`lab of 3 nodes up in ${((Date.now() - t0) / 1000).toFixed(1)} s (prefix ${lab.prefix})`);

  // ---- 1. cross-node datapath vs plain kernel VXLAN
  const a = lab.addPod(0, 'rr-client', { app: 'rr-client' });
  const b = lab.addPod(1, 'rr-server', { app: 'rr-server' });
  const mem: System = { name: 'membrane', client: a.ns, server: b.ns, serverIp: b.ip };
  const base = buildBaseline(lab);
  for (const s of [base, mem]) {
    if (!ping(s.client, s.serverIp)) throw new Error(`${s.name}: no connectivity to ${s.serverIp}`);
    await startServers(s);
  }
  for (const s of [base, mem]) await measureRR(s, 1); // warm-up
  const rr: Record<string, { tps: number; p50us: number }[]> = { baseline: [], membrane: [] };
  const tp: Record<string, number[]> = { baseline: [], membrane: [] };
  for (let i = 1; i <= rounds; i++) {
    for (const s of [base, mem]) {
      const x = await measureRR(s, rrSec);
      rr[s.name].push(x);
      console.log(`  round ${i}  RR  ${s.name.padEnd(8)} ${fmt(x.tps, 0).padStart(8)} tps  p50 ${fmt(x.p50us, 2)} us`);
    }
    for (const s of [base, mem]) {
      const g = await measureTP(s, tpSec);
      tp[s.name].push(g);
      console.log(`  round ${i}  TP  ${s.name.padEnd(8)} ${fmt(g, 2).padStart(8)} Gbit/s`);
    }
  }

  // ---- 2. identity propagation: apply + attach on n1 until n3's kernel ipcache holds the pod
  const rssBefore = lab.nodes.map((n) => rssKiB(n.agent!.pid!));
  const keysBefore = countKeys(lab);
  const statusBefore = lab.nodes.map((n) => n.cliJson(['status']).cluster.watchEvents as number);
  const remote = ipcacheOf(n3);
  const prop: number[] = [];
  for (let i = 0; i < podCount; i++) {
    const name = `prop-${i}`;
    const t = process.hrtime.bigint();
    const r = await n1.api('POST', '/v1/apply', { objects: [{ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels: { app: 'prop', idx: `p${i % 20}` } } }] });
    if (r.status !== 200) throw new Error(`apply ${name}: ${JSON.stringify(r.json)}`);
    const { ns, nsPath } = n1.podNs(name);
    void ns;
    const add = await n1.api('PUT', '/v1/endpoint', { containerId: `${n1.prefix}-${name}`, ifname: 'eth0', netns: nsPath, args: { K8S_POD_NAMESPACE: 'default', K8S_POD_NAME: name } });
    if (add.status !== 201) throw new Error(`add ${name}: ${JSON.stringify(add.json)}`);
    const key = { prefixlen: 64, family: 4, pad: Buffer.alloc(3), addr: ip4(add.json.endpoint.ipv4) } as gen.IpcacheKey;
    const want = add.json.endpoint.identity;
    const deadline = Date.now() + 10_000;
    for (;;) {
      const v = remote.lookup(key);
      if (v && v.sec_id === want) break;
      if (Date.now() > deadline) throw new Error(`${name} never reached node 3's ipcache`);
      await sleep(1);
    }
    prop.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  await sleep(1000);
  const keysAfter = countKeys(lab);
  const rssAfter = lab.nodes.map((n) => rssKiB(n.agent!.pid!));
  const statusAfter = lab.nodes.map((n) => n.cliJson(['status']).cluster.watchEvents as number);

  // ---- 3. policy change to enforced on every node
  const targets = await Promise.all(lab.nodes.map(async (n, i) => lab.addPod(i, `pol-${i}`, { app: 'pol-target' })));
  const maps = lab.nodes.map((n, i) => {
    const ep = n.cliJson(['endpoint', 'list']).find((e: any) => e.podName === targets[i].name);
    const m = BpfMap.fromPin(path.join(n.bpfRoot, 'endpoints', String(ep.id), 'policy'), 'policy').withCodecs(gen.policyKeyCodec, gen.policyValueCodec);
    onCleanup('close policy map', () => m.close());
    return m;
  });
  const peerId = n2.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'rr-server').identity as number;
  const enforce: number[] = [];
  for (let i = 0; i < (quick ? 3 : 6); i++) {
    const port = 7000 + i;
    const t = process.hrtime.bigint();
    const r = await n1.api('POST', '/v1/apply', {
      objects: [
        {
          apiVersion: 'cilium.io/v2',
          kind: 'CiliumNetworkPolicy',
          metadata: { name: 'pol-bench', namespace: 'default' },
          spec: { endpointSelector: { matchLabels: { app: 'pol-target' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'rr-server' } }], toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }] }] },
        },
      ],
    });
    if (r.status !== 200) throw new Error(`policy apply: ${JSON.stringify(r.json)}`);
    const done = new Set<number>();
    const deadline = Date.now() + 15_000;
    while (done.size < maps.length) {
      maps.forEach((m, j) => {
        if (done.has(j)) return;
        for (const [k] of m.entries()) if (k.sec_id === peerId && k.egress === 0 && k.dport === port) done.add(j);
      });
      if (Date.now() > deadline) throw new Error('policy not enforced everywhere in 15 s');
      if (done.size < maps.length) await sleep(2);
    }
    enforce.push(Number(process.hrtime.bigint() - t) / 1e6);
  }

  // ---- report
  const tps = (n: string) => rr[n].map((x) => x.tps);
  const lat = (n: string) => rr[n].map((x) => x.p50us);
  const rTps = median(tps('membrane')) / median(tps('baseline'));
  const rLat = median(lat('membrane')) / median(lat('baseline'));
  const rTp = median(tp.membrane) / median(tp.baseline);
  const v = (ok: boolean) => (ok ? 'meets' : 'BELOW');
  const p99 = percentile(prop, 99);
  console.log('');
  console.log(
    table([
      ['metric', 'baseline: kernel VXLAN + routes', 'membrane: eBPF overlay', 'ratio M/B', 'target', ''],
      ['cross-node TCP RR same-CPU (tps)', spread(tps('baseline'), 0), spread(tps('membrane'), 0), fmt(rTps, 3), `>= ${TARGET}`, v(rTps >= TARGET)],
      ['cross-node TCP RR p50 (us)', spread(lat('baseline'), 2), spread(lat('membrane'), 2), fmt(rLat, 3), '(lower is better)', ''],
      ['cross-node TCP 1 stream (Gbit/s)', spread(tp.baseline, 2), spread(tp.membrane, 2), fmt(rTp, 3), `>= ${TARGET}`, v(rTp >= TARGET)],
    ]),
  );
  console.log('');
  console.log(
    table([
      ['metric', 'p50', 'p99', 'max', 'target', ''],
      [`identity propagation: apply+attach on n1 -> n3 kernel ipcache (${prop.length} pods, ms)`, fmt(percentile(prop, 50), 1), fmt(p99, 1), fmt(Math.max(...prop), 1), 'p99 <= 500', v(p99 <= 500)],
      [`policy apply on n1 -> enforced on all 3 nodes (${enforce.length} changes, ms)`, fmt(percentile(enforce, 50), 1), fmt(percentile(enforce, 99), 1), fmt(Math.max(...enforce), 1), '<= 1000', v(Math.max(...enforce) <= 1000)],
    ]),
  );
  console.log('');
  const slow = prop.map((ms, i) => ({ ms, i })).sort((x, y) => y.ms - x.ms).slice(0, 3);
  console.log(`slowest propagations: ${slow.map((x) => `pod ${x.i} ${fmt(x.ms, 1)} ms`).join(', ')}`);
  const perPod = (a: number, b: number) => fmt((b - a) / podCount, 2);
  console.log(`per pod in the cluster (${podCount} pods added on n1):`);
  for (const [k, after] of Object.entries(keysAfter)) console.log(`  etcd keys ${k.padEnd(12)} ${String(keysBefore[k] ?? 0).padStart(6)} -> ${String(after).padStart(6)}  (${perPod(keysBefore[k] ?? 0, after)} per pod)`);
  lab.nodes.forEach((n, i) => console.log(`  ${n.nodeName}: watch events ${statusBefore[i]} -> ${statusAfter[i]} (${perPod(statusBefore[i], statusAfter[i])} per pod); agent RSS ${fmt(rssBefore[i] / 1024, 1)} -> ${fmt(rssAfter[i] / 1024, 1)} MiB (${perPod(rssBefore[i], rssAfter[i])} KiB per pod)`));
  console.log(`load at the end: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} (the machine is shared: compare ratios, not absolute figures)`);
}

/** Keys of the lab's cluster in etcd, by top-level kind. */
function countKeys(lab: Lab): Record<string, number> {
  const r = lab.etcd.ctl(['get', '--prefix', '--keys-only', `${lab.prefix}/`]);
  const out: Record<string, number> = {};
  for (const k of r.stdout.split('\n').filter(Boolean)) {
    const parts = k.slice(lab.prefix.length + 1).split('/');
    const kind = parts[0] === 'identities' ? `identities/${parts[2]}` : parts[0];
    out[kind] = (out[kind] ?? 0) + 1;
  }
  return out;
}

runBench('cluster', main);
