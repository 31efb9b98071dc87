/**
 * What flow observation costs: the datapath's trace / policy-verdict events
 * and the agent reading and enriching them.
 *
 *   node dist/bench/observe-cost.js [--quick] [--rounds N] [--flood-sec S] [--cpu-prof]
 *
 * 0. The monitor alone, in this process: batches of trace records fed to a
 *    Monitor as the ring buffer reader hands them over (events/s on one core
 *    without the kernel), the cost of reading a flow back, bytes per stored flow.
 *
 * Three TestNodes in the same run, each with two pods (a -> b), differing only
 * in the agent's --monitor-aggregation:
 *   off     drop events only (no trace, no policy-verdict events)   = OFF
 *   medium  the default: new flows, TCP flag changes, first replies = ON
 *   none    a trace event for every packet at every observation point (context)
 * Every agent is pinned to CPU 1 (taskset -a); traffic runs on CPU 0.
 *
 * 1. Pod-to-pod, interleaved rounds off / medium / none, median:
 *    - TCP RR: sockperf ping-pong --tcp, client and server pinned to CPU 0;
 *    - TCP CRR: many short connections (connect, 1-byte request, 1-byte
 *      reply, close; a small C client/server compiled at run time into the
 *      run's temp dir), client and server pinned to CPU 0; every connection
 *      is a new flow, so this is where aggregation saves least.
 *    Ratios ON/OFF (target: overhead <= 5 %, i.e. ratio >= 0.95; the
 *    reference system documents 1-15 %) and none/OFF, and per variant the
 *    events the agent received (GET /v1/status .monitor, the counters behind
 *    membrane_events_total), kernel-lost events and the agent's CPU use.
 * 2. Agent ingest capacity on one core: on the `none` node, a UDP flood of
 *    64-byte datagrams (the same C helper; sender and sink on CPU 0) at a few
 *    offered rates and at the maximum; every packet gives two trace events
 *    (FROM_ENDPOINT on the client's host veth, TO_ENDPOINT before
 *    bpf_redirect_peer). Events/s received by the agent, events lost by the
 *    kernel (ring buffer full: mb_events_lost read with bpftool, compared with
 *    the agent's membrane_flows_lost_total{where="kernel"}), agent CPU %
 *    (/proc/<pid>/stat utime+stime) and the state of its CPU (/proc/stat),
 *    CPU us per event, and the latency of GET /v1/healthz (every 20 ms: p50,
 *    p99, max) and GET /v1/status during the flood (the event loop is shared
 *    with the API). The same maximum flood on the off and medium nodes gives
 *    the datapath's own cost of emitting events. At the end, issue 15's row:
 *    events ingested/s at the maximum flood (>= 200,000), lost at 100,000
 *    events/s offered (0), API p99 during the flood (<= 20 ms), meets/misses.
 * --cpu-prof: the none agent is started with bench/policy-scale-hook (profiler
 * only) and one more, uncounted, maximum flood is run with the V8 sampling
 * profiler on; self and inclusive time per function are printed.
 * Prints figures and ratios; never asserts timings.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { TestNode, hasCmd } from '../test/helpers/node';
import { REPO, ping, runPrefix, sh, tryRun } from '../test/helpers/sys';
import { argValue, background, fmt, hasArg, median, mustRoot, onCleanup, reportRow, run, runBench, sleep, spread, table } from './lib';
import { Monitor } from '../src/monitor/monitor';
import type { SourceEndpoint } from '../src/monitor/context';
import { makeLogger } from '../src/util/log';
import { packBatch, traceRecord, udpFrame } from '../test/helpers/events';

const RR_PORT = 11111;
const CRR_PORT = 11200; // .. CRR_PORT + CRR_PORTS - 1
const CRR_PORTS = 16;
const UDP_PORT = 11113;
const TARGET = 0.95; // ON/OFF ratio: overhead <= 5 %
const quick = hasArg('--quick');
const cpuProf = hasArg('--cpu-prof');

// ---------------------------------------------------------------- the systems

type Agg = 'off' | 'medium' | 'none';

interface Sys {
  agg: Agg;
  label: string;
  node: TestNode;
  pid: number;
  client: string;
  server: string;
  clientIp: string;
  serverIp: string;
}

/** One GET to the agent API over its Unix socket, bounded; with its latency. */
function apiGet(socket: string, p: string, timeoutMs = 30_000): Promise<{ json: any; ms: number }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'GET', path: p, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        if (res.statusCode !== 200) return reject(new Error(`GET ${p}: HTTP ${res.statusCode}: ${text.slice(0, 300)}`));
        let json: any = text;
        try {
          json = JSON.parse(text);
        } catch {
          /* text (metrics) */
        }
        resolve({ json, ms });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${p}: timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

interface Counters {
  trace: number;
  verdict: number;
  drop: number;
  flows: number;
  lost: number; // the kernel's mb_events_lost, summed over CPUs, read with bpftool (NaN without bpftool)
  agentLost: number; // what the agent reports for it (status .monitor.lostEvents = membrane_flows_lost_total{where="kernel"})
  lostInAgent: number; // events the agent itself lost: its staging ring was full, or a record was undecodable (membrane_flows_lost_total{where="agent"})
}

/** mb_events_lost[0] summed over CPUs, read from the pinned map with bpftool (independently of the agent). */
async function kernelLost(s: Sys): Promise<number> {
  if (!haveBpftool) return NaN;
  const r = await run('bpftool', ['-j', 'map', 'dump', 'pinned', `${s.node.bpfRoot}/mb_events_lost`], { timeoutMs: 10_000 });
  if (r.code !== 0) return NaN;
  const e = JSON.parse(r.stdout)[0];
  if (e?.formatted?.values) return e.formatted.values.reduce((t: number, v: any) => t + Number(v.value), 0);
  // Without BTF: raw little-endian bytes per CPU.
  return (e?.values ?? []).reduce((t: number, v: any) => t + Number(Buffer.from(v.value.map((x: string) => parseInt(x, 16))).readBigUInt64LE(0)), 0);
}

/** The agent's monitor counters (the figures behind membrane_events_total / _flows_seen_total) and the kernel's lost counter. */
async function counters(s: Sys): Promise<Counters> {
  const m = (await apiGet(s.node.socket, '/v1/status')).json.monitor;
  const lost = await kernelLost(s);
  return { trace: m.events.trace ?? 0, verdict: m.events['policy-verdict'] ?? 0, drop: m.events.drop ?? 0, flows: m.flowsSeen, lost: Number.isNaN(lost) ? m.lostEvents : lost, agentLost: m.lostEvents, lostInAgent: m.agentLost ?? m.undecodable ?? 0 };
}

function diff(a: Counters, b: Counters): Counters {
  return { trace: b.trace - a.trace, verdict: b.verdict - a.verdict, drop: b.drop - a.drop, flows: b.flows - a.flows, lost: b.lost - a.lost, agentLost: b.agentLost - a.agentLost, lostInAgent: b.lostInAgent - a.lostInAgent };
}

const eventsOf = (c: Counters) => c.trace + c.verdict + c.drop;

const haveBpftool = hasCmd('bpftool');
const CLK_TCK = Number(tryRun('getconf', ['CLK_TCK']).stdout.trim()) || 100;

/** CPU seconds (user + system) the process has used so far, all threads. */
function cpuSec(pid: number): number {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime (14), stime (15)
}

const AGENT_CPU = 1;

/** Time a CPU spent per state so far (/proc/stat, clock ticks). */
function cpuStat(cpu: number): Record<string, number> {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith(`cpu${cpu} `));
  if (!line) return {};
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  return { user: v[0] + v[1], system: v[2], idle: v[3] + v[4], irq: v[5], softirq: v[6], steal: v[7] ?? 0 };
}

/** The agent's pid: nsenter execs the agent, so the child's pid is the agent's. Checked against its cmdline. */
function agentPid(node: TestNode): number {
  const pid = node.agent?.pid;
  if (!pid) throw new Error('agent has no pid');
  const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  if (!cmd.some((a) => /membrane-agent$/.test(a))) throw new Error(`pid ${pid} is not the agent: ${cmd.join(' ')}`);
  return pid;
}

/** Packets counted on a pod's eth0. */
async function linkStats(ns: string): Promise<{ tx: number; rx: number }> {
  const r = await run('ip', ['-n', ns, '-j', '-s', 'link', 'show', 'eth0'], { timeoutMs: 5000 });
  if (r.code !== 0) throw new Error(`ip -s link in ${ns}: ${r.stderr}`);
  const st = JSON.parse(r.stdout)[0].stats64;
  return { tx: st.tx.packets, rx: st.rx.packets };
}

async function waitListening(ns: string, port: number, udp = false): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const r = await run('ip', ['netns', 'exec', ns, 'ss', udp ? '-Huln' : '-Htln', `sport = :${port}`], { timeoutMs: 5000 });
    if (r.stdout.trim()) return;
    await sleep(100);
  }
  throw new Error(`nothing listens on port ${port} in ${ns} after 5 s`);
}

// ---------------------------------------------------------------- CRR client/server

const CRR_C = String.raw`
/* Traffic generators of bench/observe-cost.ts.
 * crr server IP PORT PORTS          TCP, on PORT .. PORT+PORTS-1: accept, read the request, write 1 byte, wait for
 *                                    the client's FIN, close
 * crr client IP PORT SECONDS WARMUP PORTS
 *                                    TCP_CRR as netperf: per transaction socket, connect (server ports in turn),
 *                                    write 1 byte, read 1 byte, close; prints connections, seconds (after the
 *                                    warm-up), errors
 * crr sink IP PORT                   UDP: receive and discard
 * crr udp IP PORT SECONDS RATE       UDP: 64-byte datagrams at RATE per second (0 = as fast as possible);
 *                                    prints sent, seconds, errors */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
	if (argc < 4) { fprintf(stderr, "usage: crr server|client|sink|udp IP PORT [...]\n"); return 2; }
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
	if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
	char b[2048];
	memset(b, 'x', 64);
	int ports = argc > 6 ? atoi(argv[6]) : (argc > 4 && !strcmp(argv[1], "server") ? atoi(argv[4]) : 1), base = atoi(argv[3]);
	if (ports < 1) ports = 1;
	if (!strcmp(argv[1], "server")) {
		/* One process per port (PORT .. PORT+PORTS-1), so that the client's tuples rarely repeat. */
		for (int i = 1; i < ports; i++)
			if (fork() == 0) { /* dies with the parent, which the bench kills by pid */
				prctl(PR_SET_PDEATHSIG, SIGKILL);
				if (getppid() == 1) return 0;
				a.sin_port = htons(base + i);
				break;
			}
		int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(ls, (void *)&a, sizeof a) || listen(ls, 1024)) { perror("bind/listen"); return 1; }
		for (;;) {
			int c = accept(ls, NULL, NULL);
			if (c < 0) continue;
			if (read(c, b, sizeof b) > 0 && write(c, b, 1) == 1)
				while (read(c, b, sizeof b) > 0) ;
			close(c);
		}
	}
	if (!strcmp(argv[1], "sink")) {
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		if (bind(s, (void *)&a, sizeof a)) { perror("bind"); return 1; }
		for (;;) recv(s, b, sizeof b, 0);
	}
	double secs = argc > 4 ? atof(argv[4]) : 3;
	long n = 0, err = 0;
	if (!strcmp(argv[1], "udp")) {
		double rate = argc > 5 ? atof(argv[5]) : 0, t0 = now(), end = t0 + secs, t;
		int s = socket(AF_INET, SOCK_DGRAM, 0);
		if (s < 0 || connect(s, (void *)&a, sizeof a)) { perror("udp socket"); return 1; }
		while ((t = now()) < end) {
			long due = rate > 0 ? (long)((t - t0) * rate) + 1 : n + 64;
			if (n >= due) { struct timespec d = { 0, 20000 }; nanosleep(&d, NULL); continue; }
			while (n < due) {
				if (send(s, b, 64, 0) == 64) n++;
				else { err++; break; }
			}
		}
		printf("sent=%ld seconds=%.4f errors=%ld\n", n, now() - t0, err);
		return 0;
	}
	double warm = argc > 5 ? atof(argv[5]) : 0.4;
	double t0 = now(), start = t0 + warm, end = start + secs, t;
	for (long i = 0; (t = now()) < end; i++) {
		a.sin_port = htons(base + i % ports);
		int s = socket(AF_INET, SOCK_STREAM, 0), ok = 0;
		if (s >= 0 && !connect(s, (void *)&a, sizeof a) && write(s, "x", 1) == 1 && read(s, b, 1) == 1) ok = 1;
		if (s >= 0) close(s);
		if (t < start) continue;
		if (ok) n++; else { err++; if (err > 1000) break; usleep(1000); }
	}
	printf("connections=%ld seconds=%.4f errors=%ld\n", n, now() - start, err);
	return err > 1000;
}
`;

function buildCrr(dir: string): string {
  const src = path.join(dir, 'crr.c');
  const bin = path.join(dir, 'crr');
  fs.writeFileSync(src, CRR_C);
  sh('cc', ['-O2', '-o', bin, src]);
  return bin;
}

// ---------------------------------------------------------------- setup

async function buildSystem(agg: Agg, label: string, tag: string, env: Record<string, string> = {}): Promise<Sys> {
  const node = new TestNode(tag);
  onCleanup(`TestNode ${node.prefix}`, () => node.cleanup());
  // Extra environment for this agent only (the profiler hook): set around its start, restored after.
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    await node.start({ agentArgs: ['--monitor-aggregation', agg] });
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  const a = node.addPod('a');
  const b = node.addPod('b');
  const pid = agentPid(node);
  return { agg, label, node, pid, client: a.ns, server: b.ns, clientIp: a.ip, serverIp: b.ip };
}

async function startServers(s: Sys, crr: string): Promise<void> {
  const inNs = (...args: string[]) => ['netns', 'exec', s.server, 'taskset', '-c', '0', ...args];
  background('ip', inNs('sockperf', 'sr', '--tcp', '-i', s.serverIp, '-p', String(RR_PORT)));
  background('ip', inNs(crr, 'server', s.serverIp, String(CRR_PORT), String(CRR_PORTS)));
  background('ip', inNs(crr, 'sink', s.serverIp, String(UDP_PORT)));
  await waitListening(s.server, RR_PORT);
  await waitListening(s.server, CRR_PORT);
  await waitListening(s.server, CRR_PORT + CRR_PORTS - 1);
  await waitListening(s.server, UDP_PORT, true);
  // Many short connections from one client: the whole port range, TIME_WAIT reuse (as a load generator would).
  sh('ip', ['netns', 'exec', s.client, 'sysctl', '-qw', 'net.ipv4.ip_local_port_range=1024 65535']);
  sh('ip', ['netns', 'exec', s.client, 'sysctl', '-qw', 'net.ipv4.tcp_tw_reuse=1']);
}

// ---------------------------------------------------------------- measurements

interface Obs {
  events: Counters;
  cpu: number; // agent CPU seconds
  wall: number; // seconds between the two counter reads
}

/** Run fn with the agent's counters and CPU read before and after. */
async function observed<T>(s: Sys, fn: () => Promise<T>): Promise<{ r: T; o: Obs }> {
  const c0 = await counters(s);
  const cpu0 = cpuSec(s.pid);
  const t0 = Date.now();
  const r = await fn();
  const c1 = await counters(s); // answered once the agent has drained what it could
  return { r, o: { events: diff(c0, c1), cpu: cpuSec(s.pid) - cpu0, wall: (Date.now() - t0) / 1000 } };
}

interface RR {
  tps: number;
  p50us: number;
  total: number; // replies received over the whole run, warm-up included
  activeSec: number; // the whole run (warm-up included), as sockperf reports it
}

/** sockperf pp, retried twice if it fails (a connection that got no reply on this shared machine). */
async function measureRR(s: Sys, seconds: number): Promise<RR> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await measureRROnce(s, seconds);
    } catch (e) {
      if (attempt >= 3) throw e;
      process.stderr.write(`observe-cost: RR on ${s.agg} failed (attempt ${attempt}), retrying: ${(e as Error).message.split('\n').slice(-3).join(' ')}\n`);
      await sleep(500);
    }
  }
}

async function measureRROnce(s: Sys, seconds: number): Promise<RR> {
  const args = ['netns', 'exec', s.client, 'taskset', '-c', '0', 'sockperf', 'pp', '--tcp', '-i', s.serverIp, '-p', String(RR_PORT), '-t', String(seconds), '--full-rtt'];
  const r = await run('ip', args, { timeoutMs: (seconds + 30) * 1000 });
  const out = r.stdout + r.stderr;
  const valid = /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)/.exec(out);
  const total = /\[Total Run\] RunTime=([\d.]+) sec; Warm up time=(\d+) msec; SentMessages=\d+; ReceivedMessages=(\d+)/.exec(out);
  const p50 = /percentile 50\.000 =\s*([\d.]+)/.exec(out);
  if (r.code !== 0 || !valid || !p50) throw new Error(`sockperf pp (${s.agg}) failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}):\n${out.slice(-2000)}`);
  const tps = Number(valid[3]) / Number(valid[1]);
  return {
    tps,
    p50us: Number(p50[1]),
    total: total ? Number(total[3]) : Math.round(tps * (seconds + 0.4)),
    activeSec: total ? Number(total[1]) + Number(total[2]) / 1000 : seconds + 0.4,
  };
}

interface CRR {
  cps: number;
  total: number; // connections over the whole run, warm-up included (approx.)
  activeSec: number;
  errors: number;
}

async function measureCRR(s: Sys, crr: string, seconds: number): Promise<CRR> {
  const warm = 0.4;
  const r = await run('ip', ['netns', 'exec', s.client, 'taskset', '-c', '0', crr, 'client', s.serverIp, String(CRR_PORT), String(seconds), String(warm), String(CRR_PORTS)], {
    timeoutMs: (seconds + 30) * 1000,
  });
  const m = /connections=(\d+) seconds=([\d.]+) errors=(\d+)/.exec(r.stdout);
  if (r.code !== 0 || !m) throw new Error(`crr client (${s.agg}) failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}): ${r.stdout} ${r.stderr}`);
  const cps = Number(m[1]) / Number(m[2]);
  return { cps, total: Math.round(cps * (Number(m[2]) + warm)), activeSec: Number(m[2]) + warm, errors: Number(m[3]) };
}

interface Flood {
  agg: Agg;
  offered: string;
  secs: number; // sender wall time
  txPkts: number; // client eth0
  rxPkts: number; // server eth0
  ev: Counters;
  expected: number; // events the datapath should have emitted (2 per packet with `none`)
  cpuSteady: number; // agent CPU share over the middle of the flood (1 = one whole core)
  cpu1: Record<string, number>; // CPU 1 (the agent's) over the same interval, shares of its time (/proc/stat)
  cpuAll: number; // agent CPU seconds from start to drained
  drainSec: number; // from sender exit to the agent answering /v1/status
  healthMs: number[]; // GET /v1/healthz latencies during the flood
  statusMs: number[]; // GET /v1/status latencies during the flood
  rate: number | 'max'; // offered datagrams/s
}

/** A UDP flood of 64-byte datagrams from a to b (sender and sink on CPU 0) for `seconds`, at `mps` per second or as fast as possible. */
async function flood(s: Sys, crr: string, mps: number | 'max', seconds: number): Promise<Flood> {
  const c0 = await counters(s);
  const l0 = await Promise.all([linkStats(s.client), linkStats(s.server)]);
  const cpu0 = cpuSec(s.pid);
  const sender = run('ip', ['netns', 'exec', s.client, 'taskset', '-c', '0', crr, 'udp', s.serverIp, String(UDP_PORT), String(seconds), String(mps === 'max' ? 0 : mps)], {
    timeoutMs: (seconds + 30) * 1000,
  });
  let senderDone = false;
  void sender.then(() => (senderDone = true));
  // Steady state: from 0.5 s in to 0.5 s before the end.
  await sleep(500);
  const a0 = cpuSec(s.pid);
  const k0 = cpuStat(AGENT_CPU);
  const ta = Date.now();
  // The API during the flood: GET /v1/healthz every 20 ms, GET /v1/status every 250 ms (it reads maps and counters).
  const healthMs: number[] = [];
  const statusMs: number[] = [];
  const poll = async (p: string, into: number[], everyMs: number) => {
    while (!senderDone && into.length < 5000) {
      try {
        into.push((await apiGet(s.node.socket, p, (seconds + 20) * 1000)).ms);
      } catch {
        into.push(NaN);
      }
      await sleep(everyMs);
    }
  };
  const health = Promise.all([poll('/v1/healthz', healthMs, 20), poll('/v1/status', statusMs, 250)]);
  await sleep(Math.max(500, (seconds - 1) * 1000));
  const cpuSteady = (cpuSec(s.pid) - a0) / ((Date.now() - ta) / 1000);
  const k1 = cpuStat(AGENT_CPU);
  const kt = Object.values(k1).reduce((t, x) => t + x, 0) - Object.values(k0).reduce((t, x) => t + x, 0);
  const cpu1 = Object.fromEntries(Object.keys(k1).map((k) => [k, (k1[k] - k0[k]) / (kt || 1)]));
  const sr = await sender;
  const t1 = process.hrtime.bigint();
  const m = /sent=(\d+) seconds=([\d.]+) errors=(\d+)/.exec(sr.stdout);
  if (sr.code !== 0 || !m) throw new Error(`udp sender (${s.agg}) failed (exit ${sr.code}${sr.timedOut ? ', timed out' : ''}): ${sr.stdout} ${sr.stderr}`);
  await health;
  const c1 = await counters(s); // answered once the agent has drained the ring buffer
  const t2 = process.hrtime.bigint();
  const cpuAll = cpuSec(s.pid) - cpu0;
  const l1 = await Promise.all([linkStats(s.client), linkStats(s.server)]);
  const ev = diff(c0, c1);
  const txPkts = l1[0].tx - l0[0].tx;
  const rxPkts = l1[1].rx - l0[1].rx;
  return {
    agg: s.agg,
    offered: mps === 'max' ? 'max' : `${fmt(mps / 1000, 0)}k`,
    secs: Number(m[2]),
    txPkts,
    rxPkts,
    ev,
    expected: s.agg === 'none' ? 2 * txPkts : NaN,
    cpuSteady,
    cpu1,
    cpuAll,
    drainSec: Number(t2 - t1) / 1e9,
    healthMs,
    statusMs,
    rate: mps,
  };
}

/** The p-th percentile (nearest rank). */
function pct(xs: number[], p: number): number {
  const v = [...xs].sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.max(0, Math.ceil((p / 100) * v.length) - 1))];
}

// ---------------------------------------------------------------- 0. the monitor alone

/**
 * The agent's ingestion path without the kernel: batches of datapath records (as the
 * ring buffer reader hands them over) fed to a Monitor in this process, and the
 * bytes each stored flow costs.
 */
function monitorAlone(): { eventsPerSec: number; nsPerEvent: number; readUsPerFlow: number; bytesPerFlow: number } {
  const eps: SourceEndpoint[] = [];
  for (let i = 0; i < 300; i++) eps.push({ id: i + 1, identity: 256 + (i % 60), namespace: `ns${i % 7}`, podName: `pod-${i}`, ipv4: `10.1.${i >> 8}.${i & 255}`, labels: [`k8s:app=app${i % 60}`, `k8s:io.kubernetes.pod.namespace=ns${i % 7}`] });
  const source = { nodeName: 'bench', endpoints: () => eps, identityLabels: (id: number) => [`k8s:id=${id}`], linkNames: () => new Map<number, string>() };
  const m = new Monitor(undefined, undefined, undefined, source, makeLogger({ bench: 'observe-cost' }), { bufferSize: 65536, memoryBytes: 64 * 2 ** 20, aggregation: 'none', reportInterval: 5, observe: true });
  const recs: Buffer[] = [];
  for (let i = 0; i < 4096; i++) {
    const a = eps[i % 300];
    const b = eps[(i * 7 + 3) % 300];
    const frame = udpFrame(a.ipv4!, b.ipv4!, 1024 + i, UDP_PORT);
    recs.push(traceRecord({ point: i % 2 ? 5 : 0, source: a.id, srcLabel: a.identity, dstLabel: b.identity, dstId: i % 2 ? 0 : b.id, frame }));
  }
  const batch = packBatch(recs);
  for (let i = 0; i < 32; i++) m.ingestBatch(batch, 4096); // warm-up, and the store full
  const rounds = quick ? 100 : 400;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) m.ingestBatch(batch, 4096);
  const ns = Number(process.hrtime.bigint() - t0) / (rounds * 4096);
  const t1 = process.hrtime.bigint();
  let n = 0;
  for (let seq = m.store.oldest; seq < m.store.head && n < 20000; seq++, n++) JSON.stringify(m.flowAt(seq));
  const readUs = Number(process.hrtime.bigint() - t1) / 1000 / n;
  return { eventsPerSec: 1e9 / ns, nsPerEvent: ns, readUsPerFlow: readUs, bytesPerFlow: m.memory().bytes / m.stored };
}

// ---------------------------------------------------------------- --cpu-prof

function logLines(node: TestNode, from: number): any[] {
  const f = path.join(REPO, 'test-artifacts', `${node.prefix}-agent.log`);
  const buf = fs.readFileSync(f);
  return buf
    .subarray(from)
    .toString('utf8')
    .split('\n')
    .flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return [];
      }
    });
}

/** Toggle the hook's profiler with SIGUSR2 and wait (bounded) for its log line. */
async function profiler(s: Sys, want: 'started' | 'stopped'): Promise<void> {
  const f = path.join(REPO, 'test-artifacts', `${s.node.prefix}-agent.log`);
  const off = fs.statSync(f).size;
  process.kill(s.pid, 'SIGUSR2');
  for (let i = 0; i < 300; i++) {
    if (logLines(s.node, off).some((l) => l.msg === `bench profiler ${want}`)) return;
    await sleep(100);
  }
  throw new Error(`the agent's profiler was not ${want} after 30 s`);
}

/** Self time per function, and inclusive time of the project's functions, over the whole profile. */
function profileSummary(file: string, wallSec: number, top = 16): string {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8'));
  const byId = new Map<number, any>();
  for (const n of prof.nodes) byId.set(n.id, n);
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n: any) => {
    const cf = n.callFrame;
    const url = String(cf.url || '').replace(/^file:\/\//, '').replace(REPO + '/', '');
    return `${cf.functionName || '(anonymous)'} ${url ? `${url}:${cf.lineNumber + 1}` : ''}`.trim();
  };
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const dt = prof.timeDeltas[i + 1] ?? 0;
    total += dt;
    const node = byId.get(prof.samples[i]);
    const k = name(node);
    self.set(k, (self.get(k) ?? 0) + dt);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const kk = name(byId.get(id));
      if (seen.has(kk)) continue;
      seen.add(kk);
      incl.set(kk, (incl.get(kk) ?? 0) + dt);
    }
  }
  if (!total) return 'no profile samples';
  const rows: string[][] = [['function (self time)', 'ms', '%']];
  for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) rows.push([k, fmt(v / 1000, 1), fmt((100 * v) / total, 1)]);
  const rows2: string[][] = [['function (inclusive, dist/src only)', 'ms', '%']];
  for (const [k, v] of [...incl].filter(([k]) => /dist\/src\//.test(k)).sort((a, b) => b[1] - a[1]).slice(0, top)) rows2.push([k, fmt(v / 1000, 1), fmt((100 * v) / total, 1)]);
  return `${fmt(total / 1000, 0)} ms of samples over ${fmt(wallSec, 1)} s\n${table(rows)}\n\n${table(rows2)}`;
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  mustRoot();
  for (const c of ['sockperf', 'taskset', 'ss', 'cc', 'getconf']) if (!hasCmd(c)) throw new Error(`${c} is not installed (bash scripts/setup.sh --test)`);
  const rounds = argValue('--rounds', quick ? 2 : 5, 1, 20);
  const rrSec = quick ? 1 : 3;
  const floodSec = argValue('--flood-sec', quick ? 3 : 5, 2, 60);
  // Datagrams/s; every datagram is 2 events with `none`: 50k/s offers the 100,000 events/s of the "0 lost" target.
  const rates: (number | 'max')[] = quick ? [50_000, 'max'] : [10_000, 25_000, 50_000, 100_000, 'max'];

  console.log(`observe-cost: kernel ${os.release()}, ${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log('three nodes, two pods each, differing only in --monitor-aggregation: off (drop events only) = OFF, medium (default) = ON, none (every packet traced)');
  console.log(`every agent pinned to CPU 1 (taskset -a); traffic client and server pinned to CPU 0`);
  console.log(`RR: sockperf ping-pong --tcp, 14-byte messages; CRR: connect + 1-byte request + 1-byte reply + close per transaction (C, compiled now)`);
  console.log(`${rrSec} s per run (0.4 s warm-up excluded), ${rounds} rounds interleaved off/medium/none after one uncounted warm-up; median [min-max]\n`);

  console.log('== 0. the monitor alone (this process, one core): batches of 4,096 trace records as the ring buffer reader hands them over');
  const alone = monitorAlone();
  console.log(
    `  ingest ${fmt(alone.eventsPerSec, 0)} events/s (${fmt(alone.nsPerEvent, 0)} ns per event); reading a stored flow back (built + JSON) ${fmt(alone.readUsPerFlow, 2)} us; ${fmt(alone.bytesPerFlow, 0)} bytes per stored flow by the store's accounting (65,536 flows, 300 pods)\n`,
  );

  const t0 = Date.now();
  const tmp = fs.mkdtempSync(`/tmp/${runPrefix('oc')}-`);
  onCleanup(`remove ${tmp}`, () => fs.rmSync(tmp, { recursive: true, force: true }));
  const crr = buildCrr(tmp);

  const systems: Sys[] = [];
  systems.push(await buildSystem('off', 'OFF (off)', 'oco'));
  systems.push(await buildSystem('medium', 'ON (medium)', 'ocm'));
  let profDir: string | undefined;
  const profEnv: Record<string, string> = {};
  if (cpuProf) {
    // bench/policy-scale-hook, profiler only: SIGUSR2 starts / stops the V8 sampling profiler in that agent.
    profDir = path.join(tmp, 'prof');
    fs.mkdirSync(profDir);
    profEnv.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --require ${path.join(__dirname, 'policy-scale-hook.js')}`.trim();
    profEnv.MB_BENCH_CPU_PROF_DIR = profDir;
    profEnv.MB_BENCH_NO_TIMERS = '1';
  }
  systems.push(await buildSystem('none', 'none', 'ocn', profEnv));
  for (const s of systems) {
    const pin = tryRun('taskset', ['-a', '-p', '-c', String(AGENT_CPU), String(s.pid)]);
    if (pin.code !== 0) throw new Error(`taskset on agent ${s.pid}: ${pin.stderr}`);
    if (!ping(s.client, s.serverIp)) throw new Error(`${s.agg}: ${s.client} cannot ping ${s.serverIp}`);
    await startServers(s, crr);
  }
  for (const s of systems) {
    const st = (await apiGet(s.node.socket, '/v1/status')).json.monitor;
    if (st.aggregation !== s.agg) throw new Error(`${s.node.prefix}: agent reports aggregation ${st.aggregation}, expected ${s.agg}`);
  }
  console.log(`set up in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${systems.map((s) => `${s.agg} node ${s.node.nodeNs} (agent pid ${s.pid}) ${s.clientIp} -> ${s.serverIp}`).join('; ')}\n`);

  // ------------------------------------------------------------ 1. RR and CRR
  console.log('== 1. pod-to-pod with observation off / on (medium) / every packet (none)');
  for (const s of systems) {
    await measureRR(s, 1);
    await measureCRR(s, crr, 1);
  }
  const rr: Record<Agg, RR[]> = { off: [], medium: [], none: [] };
  const cr: Record<Agg, CRR[]> = { off: [], medium: [], none: [] };
  const rrObs: Record<Agg, Obs[]> = { off: [], medium: [], none: [] };
  const crObs: Record<Agg, Obs[]> = { off: [], medium: [], none: [] };
  for (let i = 1; i <= rounds; i++) {
    for (const s of systems) {
      const { r, o } = await observed(s, () => measureRR(s, rrSec));
      rr[s.agg].push(r);
      rrObs[s.agg].push(o);
      console.log(
        `  round ${i}  RR   ${s.agg.padEnd(6)}  ${fmt(r.tps, 0).padStart(8)} tps  p50 ${fmt(r.p50us, 2)} us   events ${eventsOf(o.events).toLocaleString('en-US')} lost ${o.events.lost.toLocaleString('en-US')}  agent CPU ${fmt((100 * o.cpu) / r.activeSec, 1)} %`,
      );
    }
    for (const s of systems) {
      const { r, o } = await observed(s, () => measureCRR(s, crr, rrSec));
      cr[s.agg].push(r);
      crObs[s.agg].push(o);
      console.log(
        `  round ${i}  CRR  ${s.agg.padEnd(6)}  ${fmt(r.cps, 0).padStart(8)} conn/s${r.errors ? ` (${r.errors} errors)` : ''}   events ${eventsOf(o.events).toLocaleString('en-US')} lost ${o.events.lost.toLocaleString('en-US')}  agent CPU ${fmt((100 * o.cpu) / r.activeSec, 1)} %`,
      );
    }
  }

  const med = (xs: number[]) => median(xs);
  const tps = (a: Agg) => rr[a].map((x) => x.tps);
  const lat = (a: Agg) => rr[a].map((x) => x.p50us);
  const cps = (a: Agg) => cr[a].map((x) => x.cps);
  const ratio = (f: (a: Agg) => number[], a: Agg) => med(f(a)) / med(f('off'));
  const verdict = (r: number) => (r >= TARGET ? 'meets' : 'BELOW');
  console.log('');
  console.log(
    table([
      ['metric', 'OFF: off', 'ON: medium', 'none', 'ON/OFF', 'none/OFF', 'target ON/OFF', ''],
      ['TCP RR same-CPU (transactions/s)', spread(tps('off'), 0), spread(tps('medium'), 0), spread(tps('none'), 0), fmt(ratio(tps, 'medium'), 3), fmt(ratio(tps, 'none'), 3), `>= ${TARGET}`, verdict(ratio(tps, 'medium'))],
      ['TCP RR p50 round trip (us)', spread(lat('off'), 2), spread(lat('medium'), 2), spread(lat('none'), 2), fmt(ratio(lat, 'medium'), 3), fmt(ratio(lat, 'none'), 3), '(lower is better)', ''],
      ['TCP CRR same-CPU (connections/s)', spread(cps('off'), 0), spread(cps('medium'), 0), spread(cps('none'), 0), fmt(ratio(cps, 'medium'), 3), fmt(ratio(cps, 'none'), 3), `>= ${TARGET}`, verdict(ratio(cps, 'medium'))],
    ]),
  );

  // What the agents received during those runs.
  const evRow = (name: string, a: Agg, obs: Obs[], units: number[], secs: number[], unit: string) => {
    const sum = (f: (o: Obs) => number) => obs.reduce((t, o) => t + f(o), 0);
    const ev = sum((o) => eventsOf(o.events));
    const lost = sum((o) => o.events.lost);
    const wall = secs.reduce((t, x) => t + x, 0);
    const n = units.reduce((t, x) => t + x, 0);
    return [
      name,
      a,
      ev.toLocaleString('en-US'),
      `${sum((o) => o.events.trace).toLocaleString('en-US')} / ${sum((o) => o.events.verdict).toLocaleString('en-US')} / ${sum((o) => o.events.drop).toLocaleString('en-US')}`,
      fmt(ev / wall, 0),
      fmt(ev / n, 3) + ` per ${unit}`,
      fmt((ev + lost) / n, 3),
      `${lost.toLocaleString('en-US')} (${fmt((100 * lost) / (ev + lost || 1), 1)} %)`,
      fmt((100 * sum((o) => o.cpu)) / wall, 1),
    ];
  };
  console.log('');
  console.log(`events received by each agent over the counted runs (GET /v1/status .monitor = membrane_events_total; lost = the kernel's mb_events_lost${haveBpftool ? ', read with bpftool' : ' as the agent reports it'}):`);
  const rows = [['runs', 'aggregation', 'events received', 'trace / verdict / drop', 'events/s', 'received per unit', 'emitted per unit', 'lost (kernel)', 'agent CPU %']];
  for (const a of ['off', 'medium', 'none'] as Agg[]) rows.push(evRow('RR', a, rrObs[a], rr[a].map((x) => x.total), rr[a].map((x) => x.activeSec), 'transaction'));
  for (const a of ['off', 'medium', 'none'] as Agg[]) rows.push(evRow('CRR', a, crObs[a], cr[a].map((x) => x.total), cr[a].map((x) => x.activeSec), 'connection'));
  console.log(table(rows));
  console.log('(events/s and CPU % over the runs\' active time, warm-up included; emitted = received + lost; 100 % = one core)');

  // ------------------------------------------------------------ 2. ingest capacity
  console.log('');
  console.log(`== 2. events the agent ingests on one core: UDP flood, 64-byte datagrams, ${floodSec} s per rate; agent on CPU 1, traffic on CPU 0`);
  const none = systems.find((s) => s.agg === 'none')!;
  const floods: Flood[] = [];
  for (const mps of rates) {
    const f = await flood(none, crr, mps, floodSec);
    floods.push(f);
    console.log(`  none    offered ${f.offered.padEnd(4)}  sent ${fmt(f.txPkts / f.secs, 0).padStart(8)} pkt/s  events ${eventsOf(f.ev).toLocaleString('en-US')} lost ${f.ev.lost.toLocaleString('en-US')}  CPU ${fmt(100 * f.cpuSteady, 0)} %`);
  }
  for (const s of systems.filter((x) => x.agg !== 'none')) {
    const f = await flood(s, crr, 'max', floodSec);
    floods.push(f);
    console.log(`  ${s.agg.padEnd(6)}  offered max   sent ${fmt(f.txPkts / f.secs, 0).padStart(8)} pkt/s  events ${eventsOf(f.ev).toLocaleString('en-US')} lost ${f.ev.lost.toLocaleString('en-US')}  CPU ${fmt(100 * f.cpuSteady, 1)} %`);
  }
  console.log('');
  const frows = [
    ['node', 'offered msg/s', 'sent pkt/s', 'delivered pkt/s', 'events offered/s', 'events ingested/s', 'ingested/offered', 'lost/s (kernel)', 'lost/s (agent)', 'lost %', 'agent CPU % (steady)', 'CPU 1 user/sys/softirq/idle/steal %', 'CPU us/event', 'drain s', '/v1/healthz ms p50 / p99 / max', '/v1/status ms p99'],
  ];
  for (const f of floods) {
    const recv = eventsOf(f.ev);
    const lostPct = (100 * (f.ev.lost + f.ev.lostInAgent)) / (recv + f.ev.lost + f.ev.lostInAgent || 1);
    const hs = f.healthMs.filter(Number.isFinite);
    const ss = f.statusMs.filter(Number.isFinite);
    frows.push([
      f.agg,
      f.offered,
      fmt(f.txPkts / f.secs, 0),
      fmt(f.rxPkts / f.secs, 0),
      fmt(f.expected / f.secs, 0),
      fmt(recv / f.secs, 0),
      Number.isFinite(f.expected) ? fmt(recv / (f.expected || 1), 3) : '-',
      fmt(f.ev.lost / f.secs, 0),
      fmt(f.ev.lostInAgent / f.secs, 0),
      fmt(lostPct, 1),
      fmt(100 * f.cpuSteady, 1),
      ['user', 'system', 'softirq', 'idle', 'steal'].map((k) => fmt(100 * (f.cpu1[k] ?? NaN), 0)).join('/'),
      recv >= 1000 ? fmt((1e6 * f.cpuAll) / recv, 2) : "-",
      fmt(f.drainSec, 2),
      hs.length ? `${fmt(median(hs), 1)} / ${fmt(pct(hs, 99), 1)} / ${fmt(Math.max(...hs), 1)}${hs.length < f.healthMs.length ? ` (${f.healthMs.length - hs.length} failed)` : ''} n=${hs.length}` : 'none answered during the flood',
      ss.length ? `${fmt(pct(ss, 99), 1)} n=${ss.length}` : '-',
    ]);
  }
  console.log(table(frows));
  const maxNone = floods.find((f) => f.agg === 'none' && f.offered === 'max')!;
  const maxOff = floods.find((f) => f.agg === 'off')!;
  const maxMed = floods.find((f) => f.agg === 'medium')!;
  const capacity = Math.max(...floods.filter((f) => f.agg === 'none').map((f) => eventsOf(f.ev) / f.secs));
  console.log('');
  console.log(`agent ingest: up to ${fmt(capacity, 0)} events/s received on one core (best of the rates above); at the maximum flood ${fmt(eventsOf(maxNone.ev) / maxNone.secs, 0)} events/s received, ${fmt((100 * maxNone.ev.lost) / (eventsOf(maxNone.ev) + maxNone.ev.lost || 1), 1)} % lost in the kernel, agent CPU ${fmt(100 * maxNone.cpuSteady, 0)} %`);
  console.log(
    `datapath cost of emitting every packet: max sender rate with none ${fmt(maxNone.txPkts / maxNone.secs, 0)} pkt/s vs off ${fmt(maxOff.txPkts / maxOff.secs, 0)} (ratio ${fmt(maxNone.txPkts / maxNone.secs / (maxOff.txPkts / maxOff.secs), 3)}), medium ${fmt(maxMed.txPkts / maxMed.secs, 0)} (ratio ${fmt(maxMed.txPkts / maxMed.secs / (maxOff.txPkts / maxOff.secs), 3)})`,
  );
  console.log('(expected = 2 events per packet sent with none: FROM_ENDPOINT + TO_ENDPOINT; lost % = lost (kernel + agent) / (received + lost); CPU us/event = agent CPU from the flood start until it had drained / events received)');
  if (haveBpftool) {
    const all = [...floods, ...Object.values(rrObs).flat().map((o) => ({ ev: o.events })), ...Object.values(crObs).flat().map((o) => ({ ev: o.events }))];
    const k = all.reduce((t, f) => t + f.ev.lost, 0);
    const a = all.reduce((t, f) => t + f.ev.agentLost, 0);
    console.log(
      `lost events over every measured run: kernel mb_events_lost (bpftool) ${k.toLocaleString('en-US')}, the agent's membrane_flows_lost_total{where="kernel"} ${a.toLocaleString('en-US')} (ratio ${fmt(a / (k || 1), 3)}${Math.abs(a - k) > 0.01 * k ? ': the agent\'s figure is wrong' : ''})`,
    );
  }

  if (cpuProf && profDir) {
    // One more maximum flood, not counted above (the profiler's SIGPROF costs the agent time), profiled.
    await profiler(none, 'started');
    const tp0 = Date.now();
    const f = await flood(none, crr, 'max', floodSec);
    await profiler(none, 'stopped');
    const files = fs.readdirSync(profDir).filter((x) => x.endsWith('.cpuprofile'));
    console.log('');
    if (!files.length) console.log('--cpu-prof: no profile written');
    else {
      const dest = path.join(REPO, 'test-artifacts', `${none.node.prefix}-agent.cpuprofile`);
      fs.copyFileSync(path.join(profDir, files[0]), dest);
      console.log(
        `--cpu-prof: V8 profile of the none agent during one more maximum flood (${fmt(eventsOf(f.ev) / f.secs, 0)} events/s received with the profiler on, ${fmt((100 * f.ev.lost) / (eventsOf(f.ev) + f.ev.lost || 1), 1)} % lost; ${path.relative(REPO, dest)}):`,
      );
      console.log(profileSummary(dest, (Date.now() - tp0) / 1000));
    }
  }

  // Issue 15's row "flow events the agent ingests", measured in this run.
  const at100k = floods.find((f) => f.agg === 'none' && f.rate === 50_000);
  const apiP99 = pct(maxNone.healthMs.filter(Number.isFinite), 99);
  const meets = (ok: boolean) => (ok ? 'meets' : 'MISSES');
  console.log('');
  console.log(
    table([
      ['flow ingestion (none node, agent on one core)', 'measured', 'reference in this run', 'target', ''],
      ['events ingested/s at the maximum flood', fmt(capacity, 0), `offered ${fmt(maxNone.expected / maxNone.secs, 0)}/s`, '>= 200,000', meets(capacity >= 200_000)],
      [
        'events lost at 100,000/s offered (kernel + agent)',
        at100k ? `${(at100k.ev.lost + at100k.ev.lostInAgent).toLocaleString('en-US')} of ${at100k.expected.toLocaleString('en-US')}` : 'not run',
        at100k ? `ingested/offered ${fmt(eventsOf(at100k.ev) / (at100k.expected || 1), 3)}` : '',
        '0',
        at100k ? meets(at100k.ev.lost + at100k.ev.lostInAgent === 0) : '',
      ],
      ['GET /v1/healthz p99 during the maximum flood (ms)', fmt(apiP99, 1), `p50 ${fmt(median(maxNone.healthMs.filter(Number.isFinite)), 1)}`, '<= 20', meets(apiP99 <= 20)],
      ['monitor alone: events/s on one core (no kernel)', fmt(alone.eventsPerSec, 0), '', '', ''],
      ['bytes per stored flow', fmt(alone.bytesPerFlow, 0), 'was ~7 KiB', '<= 1,024', meets(alone.bytesPerFlow <= 1024)],
    ]),
  );
  // The same, for bench/run-all.sh's summary.
  const ingestRow = 'flow events the agent ingests on one core';
  reportRow({ row: ingestRow, figure: capacity, unit: 'events/s', reference: { what: 'offered', value: maxNone.expected / maxNone.secs }, target: { on: 'figure', op: '>=', value: 200_000 } });
  if (at100k) reportRow({ row: `${ingestRow}: events lost at 100,000/s offered`, figure: at100k.ev.lost + at100k.ev.lostInAgent, unit: 'events', reference: { what: 'offered', value: at100k.expected }, target: { on: 'figure', op: '<=', value: 0 } });
  reportRow({ row: `${ingestRow}: API p99 during the maximum flood`, figure: apiP99, unit: 'ms', target: { on: 'figure', op: '<=', value: 20 } });

  // Cross-check from Prometheus metrics of the none node.
  const metrics: string = (await apiGet(none.node.socket, '/v1/metrics')).json;
  const lines = metrics.split('\n').filter((l) => /^membrane_(events_total|flows_seen_total|flows_lost_total|flows_stored)/.test(l));
  console.log('');
  console.log(`none node /v1/metrics at the end (whole run): ${lines.join('; ')}`);
  console.log(`load at the end: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} (the machine is shared: compare ratios, not absolute figures)`);
  console.log(`agent logs: ${systems.map((s) => `test-artifacts/${s.node.prefix}-agent.log`).join(', ')}`);
}

runBench('observe-cost', main);
