/**
 * Same-node pod-to-pod datapath benchmark.
 *
 *   node dist/bench/pod-to-pod.js [--quick] [--rounds N]
 *
 * Three systems are built in the same run and measured interleaved
 * (plain, baseline, membrane, plain, ...; N rounds, median reported):
 *   plain     model A of the performance anchors: two pod namespaces joined by
 *             one veth pair, /32 addresses, no routing, no BPF: the physical
 *             limit on this machine (issue 15's reference)
 *   baseline  model C of the performance anchors: two pod namespaces, each with
 *             a veth to a router namespace; /32 addresses and routes, IP
 *             forwarding in the router, no BPF.
 *   membrane  a TestNode (agent in its own netns) with two pods attached by the
 *             real CNI plugin; traffic goes through tcx on the host veth, tail
 *             call into the destination endpoint, bpf_redirect_peer.
 * Metrics: TCP request/response (sockperf ping-pong, client and server pinned
 * to CPU 0) transactions/s and p50 round trip; one-stream TCP throughput
 * (iperf3). Prints figures and ratios; never asserts timings.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BpfProgram } from '../src/bpf';
import { TestNode, hasCmd } from '../test/helpers/node';
import { netnsAdd, netnsDel, ping, runPrefix, sh } from '../test/helpers/sys';
import { argValue, background, fmt, hasArg, median, mustRoot, onCleanup, reportRow, run, runBench, sleep, spread, table } from './lib';

const RR_PORT = 11111;
const TP_PORT = 5201;
const TARGET = 0.95;
/** Issue 15: Membrane's RR against the plain veth pair. */
const ROW_RR = 'pod-to-pod TCP RR vs a plain veth pair between two namespaces (no routing)';

interface System {
  name: string;
  label: string;
  client: string; // netns of the client pod
  server: string; // netns of the server pod
  serverIp: string;
  clientIp: string;
  forwarderNs: string; // the namespace in between (router / node), for the forwarding counter
}

interface Sample {
  tps: number;
  p50us: number;
}

/** Model C: pod A <-veth-> router netns <-veth-> pod B, /32 routes, no BPF. */
function buildBaseline(): System {
  const prefix = runPrefix('bc');
  const r = `${prefix}-r`;
  const a = `${prefix}-a`;
  const b = `${prefix}-b`;
  for (const ns of [r, a, b]) {
    netnsAdd(ns);
    onCleanup(`delete netns ${ns}`, () => netnsDel(ns));
  }
  const router = '10.201.0.1';
  const pods: [string, string, string][] = [
    [a, 'ra', '10.201.0.2'],
    [b, 'rb', '10.201.0.3'],
  ];
  const ip = (...args: string[]) => sh('ip', args);
  sh('ip', ['netns', 'exec', r, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  for (const [ns, hostIf, addr] of pods) {
    ip('link', 'add', 'name', hostIf, 'netns', r, 'mtu', '1500', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns, 'mtu', '1500');
    // Same shape as a Membrane endpoint: IPv6 off on both ends, /32 on the pod, router address on-link.
    sh('ip', ['netns', 'exec', r, 'sysctl', '-qw', `net.ipv6.conf.${hostIf}.disable_ipv6=1`]);
    sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.eth0.disable_ipv6=1']);
    ip('-n', r, 'addr', 'add', `${router}/32`, 'dev', hostIf);
    ip('-n', r, 'link', 'set', hostIf, 'up');
    ip('-n', r, 'route', 'add', `${addr}/32`, 'dev', hostIf);
    ip('-n', ns, 'addr', 'add', `${addr}/32`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'route', 'add', `${router}/32`, 'dev', 'eth0', 'scope', 'link');
    ip('-n', ns, 'route', 'add', 'default', 'via', router, 'dev', 'eth0', 'onlink');
  }
  return { name: 'baseline', label: 'routed veth (model C)', client: a, server: b, clientIp: pods[0][2], serverIp: pods[1][2], forwarderNs: r };
}

/** Model A: pod A <-veth-> pod B, nothing in between (the physical limit). */
function buildPlain(): System {
  const prefix = runPrefix('bv');
  const a = `${prefix}-a`;
  const b = `${prefix}-b`;
  for (const ns of [a, b]) {
    netnsAdd(ns);
    onCleanup(`delete netns ${ns}`, () => netnsDel(ns));
  }
  const [ipA, ipB] = ['10.202.0.2', '10.202.0.3'];
  sh('ip', ['-n', a, 'link', 'add', 'eth0', 'mtu', '1500', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', b, 'mtu', '1500']);
  for (const [ns, mine, peer] of [[a, ipA, ipB], [b, ipB, ipA]]) {
    sh('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.eth0.disable_ipv6=1']);
    sh('ip', ['-n', ns, 'addr', 'add', `${mine}/32`, 'dev', 'eth0']);
    sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', ns, 'route', 'add', `${peer}/32`, 'dev', 'eth0', 'scope', 'link']);
  }
  return { name: 'plain', label: 'plain veth pair (model A)', client: a, server: b, clientIp: ipA, serverIp: ipB, forwarderNs: a };
}

async function buildMembrane(): Promise<{ sys: System; node: TestNode }> {
  const node = new TestNode('bp');
  onCleanup(`TestNode ${node.prefix}`, () => node.cleanup());
  await node.start();
  const a = node.addPod('a');
  const b = node.addPod('b');
  return {
    node,
    sys: { name: 'membrane', label: 'Membrane (eBPF)', client: a.ns, server: b.ns, clientIp: a.ip, serverIp: b.ip, forwarderNs: node.nodeNs },
  };
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

async function measureRR(s: System, seconds: number): Promise<Sample> {
  const args = ['netns', 'exec', s.client, 'taskset', '-c', '0', 'sockperf', 'pp', '--tcp', '-i', s.serverIp, '-p', String(RR_PORT), '-t', String(seconds), '--full-rtt'];
  const r = await run('ip', args, { timeoutMs: (seconds + 20) * 1000 });
  const out = r.stdout + r.stderr;
  const valid = /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)/.exec(out);
  const p50 = /percentile 50\.000 =\s*([\d.]+)/.exec(out);
  if (r.code !== 0 || !valid || !p50) throw new Error(`sockperf pp (${s.name}) failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}):\n${out.slice(-2000)}`);
  return { tps: Number(valid[3]) / Number(valid[1]), p50us: Number(p50[1]) };
}

async function measureTP(s: System, seconds: number): Promise<number> {
  let last = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const r = await run('ip', ['netns', 'exec', s.client, 'iperf3', '-c', s.serverIp, '-p', String(TP_PORT), '-t', String(seconds), '-J'], {
      timeoutMs: (seconds + 20) * 1000,
    });
    try {
      const j = JSON.parse(r.stdout);
      const bps = j?.end?.sum_received?.bits_per_second;
      if (r.code === 0 && typeof bps === 'number') return bps / 1e9;
      last = j?.error ?? r.stderr;
    } catch {
      last = r.stdout + r.stderr;
    }
    await sleep(500); // the server may still be finishing the previous test
  }
  throw new Error(`iperf3 (${s.name}) failed 3 times: ${last.slice(-1000)}`);
}

/**
 * Where Membrane's time per packet goes: one extra RR run with the kernel's
 * BPF run-time statistics on (they cost a clock read per run, so never during
 * the measured rounds). The entry program's run time includes its tail calls
 * (policy_ingress of the destination), so from_container's ns per run is the
 * whole eBPF cost of a pod-to-pod packet; the rest of the gap to the plain
 * veth pair is the kernel's (the host-side veth's receive path, the tc hook,
 * the redirect to the peer).
 */
async function profileBpf(node: TestNode, s: System, seconds: number): Promise<{ nsPerRun: number; runs: number; tps: number } | undefined> {
  const pins: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name === 'from_container') pins.push(p);
    }
  };
  try {
    walk(path.join(node.bpfRoot, 'programs'));
  } catch {
    return undefined;
  }
  if (pins.length !== 1) return undefined;
  const prog = BpfProgram.fromPin(pins[0]);
  const knob = '/proc/sys/kernel/bpf_stats_enabled';
  const was = fs.readFileSync(knob, 'utf8').trim();
  try {
    fs.writeFileSync(knob, '1');
    const a = prog.info();
    const x = await measureRR(s, seconds);
    const b = prog.info();
    const runs = b.runCount - a.runCount;
    return runs > 0 ? { nsPerRun: (b.runTimeNs - a.runTimeNs) / runs, runs, tps: x.tps } : undefined;
  } finally {
    fs.writeFileSync(knob, was);
    prog.close();
  }
}

/** IP datagrams forwarded by the kernel stack of a namespace (/proc/net/snmp Ip: ForwDatagrams). */
function forwarded(ns: string): number {
  const snmp = sh('ip', ['netns', 'exec', ns, 'cat', '/proc/net/snmp']).split('\n').filter((l) => l.startsWith('Ip:'));
  const keys = snmp[0].split(/\s+/);
  const vals = snmp[1].split(/\s+/);
  return Number(vals[keys.indexOf('ForwDatagrams')]);
}

async function main(): Promise<void> {
  mustRoot();
  for (const c of ['sockperf', 'iperf3', 'taskset', 'ss']) if (!hasCmd(c)) throw new Error(`${c} is not installed (bash scripts/setup.sh --test)`);
  const quick = hasArg('--quick');
  const rounds = argValue('--rounds', 3, 1, 20);
  const rrSec = quick ? 1 : 3;
  const tpSec = quick ? 2 : 5;

  console.log(`pod-to-pod: kernel ${os.release()}, ${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`RR: sockperf ping-pong --tcp, 14-byte messages, ${rrSec} s per run (0.4 s warm-up excluded), client and server pinned to CPU 0`);
  console.log(`Throughput: iperf3, one TCP stream, ${tpSec} s per run, unpinned`);
  console.log(`${rounds} rounds, interleaved plain/baseline/membrane; median [min-max]\n`);

  const t0 = Date.now();
  const plain = buildPlain();
  const base = buildBaseline();
  const { sys: mem, node } = await buildMembrane();
  const systems = [plain, base, mem];
  for (const s of systems) {
    if (!ping(s.client, s.serverIp)) throw new Error(`${s.name}: ${s.client} cannot ping ${s.serverIp}`);
    await startServers(s);
  }
  console.log(`set up in ${((Date.now() - t0) / 1000).toFixed(1)} s: baseline ${base.clientIp} -> ${base.serverIp} via ${base.forwarderNs}; membrane ${mem.clientIp} -> ${mem.serverIp} on node ${node.nodeNs}`);

  // Warm-up (not counted): connection setup paths, ARP/neighbour entries, page cache.
  for (const s of systems) await measureRR(s, 1);

  const fwdBefore = systems.map((s) => forwarded(s.forwarderNs));
  let bpfBefore = NaN;
  try {
    bpfBefore = node.metric(0);
  } catch {
    /* metrics are a diagnostic only */
  }

  const rr: Record<string, Sample[]> = { plain: [], baseline: [], membrane: [] };
  const tp: Record<string, number[]> = { plain: [], baseline: [], membrane: [] };
  for (let i = 1; i <= rounds; i++) {
    for (const s of systems) {
      const x = await measureRR(s, rrSec);
      rr[s.name].push(x);
      console.log(`  round ${i}  RR  ${s.name.padEnd(8)}  ${fmt(x.tps, 0).padStart(8)} tps  p50 ${fmt(x.p50us, 2)} us`);
    }
    for (const s of systems) {
      const g = await measureTP(s, tpSec);
      tp[s.name].push(g);
      console.log(`  round ${i}  TP  ${s.name.padEnd(8)}  ${fmt(g, 2).padStart(8)} Gbit/s`);
    }
  }
  const fwd = systems.map((s, i) => forwarded(s.forwarderNs) - fwdBefore[i]);
  // (plain has nothing in between: its "forwarder" is the client namespace itself, which forwards nothing)
  let bpfFwd = NaN;
  try {
    bpfFwd = node.metric(0) - bpfBefore;
  } catch {
    /* diagnostic only */
  }

  const tps = (n: string) => rr[n].map((x) => x.tps);
  const lat = (n: string) => rr[n].map((x) => x.p50us);
  const ratioTps = median(tps('membrane')) / median(tps('baseline'));
  const ratioLat = median(lat('membrane')) / median(lat('baseline'));
  const ratioTp = median(tp.membrane) / median(tp.baseline);
  const plainTps = median(tps('membrane')) / median(tps('plain'));
  const plainTp = median(tp.membrane) / median(tp.plain);
  const verdict = (r: number) => (r >= TARGET ? 'meets' : 'BELOW');

  console.log('');
  console.log(
    table([
      ['metric', `plain: ${plain.label}`, `baseline: ${base.label}`, `membrane: ${mem.label}`, 'M/plain', 'M/baseline', 'target', ''],
      ['TCP RR same-CPU (transactions/s)', spread(tps('plain'), 0), spread(tps('baseline'), 0), spread(tps('membrane'), 0), fmt(plainTps, 3), fmt(ratioTps, 3), `>= ${TARGET} of plain`, verdict(plainTps)],
      ['TCP RR p50 round trip (us)', spread(lat('plain'), 2), spread(lat('baseline'), 2), spread(lat('membrane'), 2), fmt(median(lat('membrane')) / median(lat('plain')), 3), fmt(ratioLat, 3), '(lower is better)', ''],
      ['TCP 1 stream (Gbit/s)', spread(tp.plain, 2), spread(tp.baseline, 2), spread(tp.membrane, 2), fmt(plainTp, 3), fmt(ratioTp, 3), `>= ${TARGET} of plain`, verdict(plainTp)],
    ]),
  );
  reportRow({
    row: ROW_RR,
    figure: median(tps('membrane')),
    unit: 'tps',
    reference: { what: 'plain veth pair', value: median(tps('plain')) },
    target: { on: 'ratio', op: '>=', value: TARGET },
    note: `routed veth baseline: ${fmt(median(tps('baseline')), 0)} tps (Membrane ${fmt(ratioTps, 3)}x of it)`,
  });
  const prof = await profileBpf(node, mem, rrSec).catch(() => undefined);
  if (prof) {
    // Two packets per transaction; the gap per packet to the plain pair, measured in the rounds above.
    const gapNs = ((1 / median(tps('membrane')) - 1 / median(tps('plain'))) * 1e9) / 2;
    console.log('');
    console.log(`profile (one extra RR run with kernel.bpf_stats_enabled=1): from_container + its tail calls ${fmt(prof.nsPerRun, 0)} ns per packet over ${prof.runs.toLocaleString('en-US')} runs;`);
    console.log(`  gap to the plain veth pair ${fmt(gapNs, 0)} ns per packet: eBPF ${fmt(prof.nsPerRun, 0)} ns, kernel (host-side veth receive, tc hook, redirect to the peer) ${fmt(Math.max(0, gapNs - prof.nsPerRun), 0)} ns`);
  }
  console.log('');
  console.log(`IP datagrams forwarded by the kernel stack in between during the measurement: baseline router ${fwd[1].toLocaleString('en-US')}, membrane node ${fwd[2].toLocaleString('en-US')}`);
  if (Number.isFinite(bpfFwd)) console.log(`packets counted as forwarded in Membrane's BPF metrics map: ${bpfFwd.toLocaleString('en-US')}`);
  console.log(`load at the end: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} (the machine is shared: compare ratios, not absolute figures)`);
  console.log(`agent log: test-artifacts/${node.prefix}-agent.log`);
  if (!fs.existsSync(`/run/netns/${mem.server}`)) console.log('warning: the membrane server pod namespace vanished during the run');
}

runBench('pod-to-pod', main);
