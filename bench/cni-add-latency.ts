/**
 * CNI ADD latency benchmark, against the bridge plugin measured in the same run.
 *
 *   node dist/bench/cni-add-latency.js [--count N] [--parallel M] [--rounds R] [--breakdown]
 *
 * Two systems, each given pod namespaces created before the ADD and not timed
 * (a runtime has the sandbox before it calls the plugin):
 *   membrane   one TestNode (agent in its own netns); bin/membrane-cni
 *   bridge     the reference: Debian's containernetworking-plugins `bridge`
 *              with `host-local` IPAM (isGateway, no masquerading), in a
 *              namespace of its own standing for the node
 * Both plugins are executed the same way, as a runtime on that node executes
 * them: `nsenter --net=<node netns> -- <plugin>` with the config on stdin and
 * the CNI_* variables in a minimal environment ("nsenter alone" is printed
 * for reference). Measured:
 *   plugin exec   spawn until the process exits, with a valid result
 *   agent-side    the agent's own duration of the endpoint creation (the
 *                 "endpoint created" log line, the same figure as
 *                 status endpointCreateMs)
 * for N sequential ADDs of each system, interleaved (default 50), and R rounds
 * (default 3) of M ADDs started at once (default 10), membrane then bridge;
 * then every pod is DELeted. Context measured in the same run: `node -e 0`,
 * nsenter alone and the plugin's VERSION command. Reports the rows of
 * issue 15 (bench/lib.ts reportRow); never asserts.
 * --breakdown loads bench/agent-timing-hook into the bench's agent and prints
 * where the agent-side time of ADD and DEL goes (median per call path).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CNI_BIN, TestNode } from '../test/helpers/node';
import { REPO, netnsAdd, netnsDel } from '../test/helpers/sys';
import { argValue, fmt, hasArg, median, mustRoot, onCleanup, percentile, reportRow, run, runBench, table } from './lib';

const TARGET_AGENT_P50_MS = 10; // issue 15
const TARGET_SEQ_RATIO = 2; // plugin exec p50 <= 2x the bridge plugin's
const TARGET_PAR_RATIO = 3; // at the same parallelism
const CONTEXT_RUNS = 20;
const BRIDGE_DIR = '/usr/lib/cni';

interface Pod {
  name: string;
  nsPath: string;
  containerId: string;
}

type System = 'membrane' | 'bridge';

async function main(): Promise<void> {
  mustRoot();
  const count = argValue('--count', 50, 1, 500);
  const parallel = argValue('--parallel', 10, 1, 100);
  const rounds = argValue('--rounds', 3, 1, 20);
  const needed = count + parallel * rounds + 1;
  const cidr = needed <= 250 ? '10.200.0.0/24' : '10.200.0.0/22';
  const breakdown = hasArg('--breakdown');
  for (const p of ['bridge', 'host-local']) {
    if (!fs.existsSync(path.join(BRIDGE_DIR, p))) throw new Error(`${BRIDGE_DIR}/${p} is missing: install containernetworking-plugins (scripts/setup.sh --test)`);
  }

  const node = new TestNode('ca', cidr);
  onCleanup(`TestNode ${node.prefix}`, () => node.cleanup());
  const savedNodeOptions = process.env.NODE_OPTIONS;
  if (breakdown) process.env.NODE_OPTIONS = `${savedNodeOptions ?? ''} --require ${path.join(__dirname, 'agent-timing-hook.js')}`.trim();
  try {
    await node.start(); // the agent inherits NODE_OPTIONS; plugin execs below get a clean environment
  } finally {
    if (savedNodeOptions === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = savedNodeOptions;
  }
  const logFile = path.join(REPO, 'test-artifacts', `${node.prefix}-agent.log`);

  // The reference: the bridge plugin's node is a namespace of its own; its IPAM state lives in the node's dir.
  const bridgeNs = `${node.prefix}-br`;
  netnsAdd(bridgeNs);
  onCleanup(`netns ${bridgeNs}`, () => netnsDel(bridgeNs));
  const bridgeConf = JSON.stringify({
    cniVersion: '1.0.0',
    name: `${node.prefix}-bridge`,
    type: 'bridge',
    bridge: 'mbbr0',
    isGateway: true,
    ipMasq: false,
    ipam: { type: 'host-local', ranges: [[{ subnet: '10.201.0.0/16' }]], dataDir: path.join(node.dir, 'host-local') },
  });
  const conf: Record<System, string> = { membrane: JSON.stringify(node.conf), bridge: bridgeConf };
  const nsOf: Record<System, string> = { membrane: node.nodeNs, bridge: bridgeNs };
  const binOf: Record<System, string> = { membrane: CNI_BIN, bridge: path.join(BRIDGE_DIR, 'bridge') };

  console.log(`cni-add-latency: kernel ${os.release()}, ${os.cpus().length} CPUs, Node ${process.version}, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`node ${node.nodeNs}, pod CIDR ${cidr}; reference: ${BRIDGE_DIR}/bridge + host-local in ${bridgeNs}`);
  console.log(`${count} sequential ADDs of each (interleaved), ${rounds} rounds of ${parallel} ADDs at once of each, then DEL of every pod\n`);

  const baseEnv = (sys: System, command: string, pod?: Pod): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    CNI_COMMAND: command,
    CNI_PATH: sys === 'membrane' ? path.dirname(CNI_BIN) : BRIDGE_DIR,
    ...(pod
      ? {
          CNI_CONTAINERID: pod.containerId,
          CNI_NETNS: pod.nsPath,
          CNI_IFNAME: 'eth0',
          CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${pod.name}`,
        }
      : {}),
  });

  const exec = async (sys: System, command: 'ADD' | 'DEL' | 'VERSION', pod?: Pod): Promise<number> => {
    const r = await run('nsenter', [`--net=/run/netns/${nsOf[sys]}`, '--', binOf[sys]], { input: conf[sys], env: baseEnv(sys, command, pod), timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`${sys} CNI ${command}${pod ? ' ' + pod.name : ''} failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}): ${r.stdout} ${r.stderr}\n${sys === 'membrane' ? node.agentLog() : ''}`);
    if (command === 'ADD') {
      const res = JSON.parse(r.stdout);
      if (!res?.ips?.[0]?.address) throw new Error(`${sys} CNI ADD ${pod?.name}: no address in the result: ${r.stdout}`);
    }
    return r.ms;
  };

  const newPod = (name: string): Pod => {
    const { nsPath } = node.podNs(name);
    return { name, nsPath, containerId: `${node.prefix}-${name}-cid` };
  };

  // Context: what any Node program, nsenter and the plugin alone cost to start on this machine, now.
  const nodeStart: number[] = [];
  const nsenterAlone: number[] = [];
  for (let i = 0; i < CONTEXT_RUNS; i++) {
    const r = await run(process.execPath, ['-e', '0'], { env: baseEnv('membrane', 'VERSION'), timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`node -e 0 failed: ${r.stderr}`);
    nodeStart.push(r.ms);
    const n = await run('nsenter', [`--net=/run/netns/${node.nodeNs}`, '--', '/bin/true'], { env: baseEnv('membrane', 'VERSION'), timeoutMs: 30_000 });
    if (n.code !== 0) throw new Error(`nsenter failed: ${n.stderr}`);
    nsenterAlone.push(n.ms);
  }
  const versionExec: Record<System, number[]> = { membrane: [], bridge: [] };
  for (let i = 0; i < CONTEXT_RUNS; i++) for (const sys of ['membrane', 'bridge'] as System[]) versionExec[sys].push(await exec(sys, 'VERSION'));

  const pods: Record<System, Pod[]> = { membrane: [], bridge: [] };
  const add = async (sys: System, name: string): Promise<{ pod: Pod; ms: number }> => {
    const pod = newPod(`${sys === 'membrane' ? 'm' : 'b'}${name}`);
    pods[sys].push(pod);
    return { pod, ms: await exec(sys, 'ADD', pod) };
  };

  // The first ADD of each after start is reported on its own (cold caches), not in the figures.
  const coldM = await add('membrane', 'w0');
  const coldB = await add('bridge', 'w0');

  const seqExec: Record<System, number[]> = { membrane: [], bridge: [] };
  const seqPods: Pod[] = [];
  for (let i = 0; i < count; i++) {
    for (const sys of (i % 2 ? ['bridge', 'membrane'] : ['membrane', 'bridge']) as System[]) {
      const r = await add(sys, `s${i}`);
      seqExec[sys].push(r.ms);
      if (sys === 'membrane') seqPods.push(r.pod);
    }
  }
  const statusAfterSeq = node.cliJson(['status']);

  const parExec: Record<System, number[]> = { membrane: [], bridge: [] };
  const parWall: Record<System, number[]> = { membrane: [], bridge: [] };
  const parPods: Pod[] = [];
  for (let r = 0; r < rounds; r++) {
    for (const sys of ['membrane', 'bridge'] as System[]) {
      const batch = Array.from({ length: parallel }, (_, i) => newPod(`${sys === 'membrane' ? 'm' : 'b'}p${r}-${i}`));
      pods[sys].push(...batch);
      if (sys === 'membrane') parPods.push(...batch);
      const t0 = process.hrtime.bigint();
      parExec[sys].push(...(await Promise.all(batch.map((p) => exec(sys, 'ADD', p)))));
      parWall[sys].push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  }
  const status = node.cliJson(['status']);

  const delExec: Record<System, number[]> = { membrane: [], bridge: [] };
  for (const sys of ['membrane', 'bridge'] as System[]) for (const p of pods[sys]) delExec[sys].push(await exec(sys, 'DEL', p));
  const statusAfterDel = node.cliJson(['status']);

  // Agent-side durations, per container, from the agent's log (and the optional breakdown lines).
  const agentMs = new Map<string, number>();
  const breakdowns: { op: string; containerId: string; totalMs: number; paths: Record<string, { calls: number; ms: number }> }[] = [];
  for (const line of fs.readFileSync(logFile, 'utf8').split('\n')) {
    if (!line.includes('"endpoint created"') && !line.includes('"bench breakdown"')) continue;
    try {
      const j = JSON.parse(line);
      if (j.msg === 'bench breakdown') breakdowns.push(j);
      else if (typeof j.durationMs === 'number') agentMs.set(j.containerId, j.durationMs);
    } catch {
      /* not a JSON line */
    }
  }
  const agentOf = (ps: Pod[]) => ps.map((p) => agentMs.get(p.containerId)).filter((x): x is number => typeof x === 'number');
  const seqAgent = agentOf(seqPods);
  const parAgent = agentOf(parPods);
  if (seqAgent.length !== seqPods.length || parAgent.length !== parPods.length) {
    console.log(`note: agent-side durations found in the log for ${seqAgent.length}/${seqPods.length} sequential and ${parAgent.length}/${parPods.length} parallel pods`);
  }

  const row = (label: string, xs: number[], ref?: number[]): string[] => {
    const p50 = median(xs);
    return [label, String(xs.length), fmt(p50, 1), fmt(percentile(xs, 99), 1), fmt(Math.min(...xs), 1), fmt(Math.max(...xs), 1), ref ? fmt(p50 / median(ref), 2) : ''];
  };
  console.log(
    table([
      ['measurement (ms)', 'n', 'p50', 'p99', 'min', 'max', 'p50 / bridge'],
      row('node -e 0 (bare Node start, for context)', nodeStart),
      row('nsenter --net alone (part of every exec below)', nsenterAlone),
      row('membrane VERSION (plugin start, no agent call)', versionExec.membrane, versionExec.bridge),
      row('bridge VERSION', versionExec.bridge),
      row('membrane ADD sequential: plugin exec', seqExec.membrane, seqExec.bridge),
      row('bridge + host-local ADD sequential: plugin exec', seqExec.bridge),
      row('membrane ADD sequential: agent-side', seqAgent),
      row(`membrane ADD ${parallel} at once: plugin exec`, parExec.membrane, parExec.bridge),
      row(`bridge + host-local ADD ${parallel} at once: plugin exec`, parExec.bridge),
      row(`membrane ADD ${parallel} at once: agent-side`, parAgent),
      row('membrane DEL sequential: plugin exec', delExec.membrane, delExec.bridge),
      row('bridge + host-local DEL sequential: plugin exec', delExec.bridge),
    ]),
  );
  console.log('');
  console.log(`first ADD after start (cold, not in the figures above): membrane ${fmt(coldM.ms, 1)} ms plugin exec (${fmt(agentMs.get(coldM.pod.containerId) ?? NaN, 1)} ms agent-side), bridge ${fmt(coldB.ms, 1)} ms`);
  console.log(
    `${parallel} ADDs at once, wall time per batch: membrane ${parWall.membrane.map((x) => fmt(x, 1)).join(' / ')} ms, bridge ${parWall.bridge.map((x) => fmt(x, 1)).join(' / ')} ms`,
  );
  const sc = statusAfterSeq.endpointCreateMs;
  const st = status.endpointCreateMs;
  console.log(`agent status endpointCreateMs: after the sequential phase p50 ${sc.p50} / p99 ${sc.p99} ms (${sc.count} creates); after all ADDs p50 ${st.p50} / p99 ${st.p99} ms (${st.count} creates)`);
  const api = statusAfterDel.apiRequests ?? {};
  const apiLine = Object.entries(api)
    .filter(([k]) => /\/v1\/cni /.test(k + ' '))
    .map(([k, v]: [string, any]) => `${k}: mean ${v.meanMs} ms (n=${v.count})`)
    .join('; ');
  if (apiLine) console.log(`agent API handling time of the forwarded CNI calls (fastify, incl. body parsing): ${apiLine}`);
  console.log(
    `membrane plugin exec minus agent-side, sequential p50: ${fmt(median(seqExec.membrane) - median(seqAgent), 1)} ms (nsenter + the shim's start + socket round trip + HTTP handling); ` +
      `VERSION p50 ${fmt(median(versionExec.membrane), 1)} ms of it is nsenter + start-up alone`,
  );
  console.log(`endpoints left after DEL: ${statusAfterDel.endpoints.total}`);

  reportRow({
    row: 'CNI ADD, plugin exec p50, sequential',
    figure: median(seqExec.membrane),
    unit: 'ms',
    reference: { what: 'bridge + host-local', value: median(seqExec.bridge) },
    target: { on: 'ratio', op: '<=', value: TARGET_SEQ_RATIO },
  });
  reportRow({ row: 'CNI ADD, agent side p50', figure: median(seqAgent), unit: 'ms', target: { on: 'figure', op: '<=', value: TARGET_AGENT_P50_MS } });
  reportRow({
    row: `${parallel} ADDs at once, plugin exec p50`,
    figure: median(parExec.membrane),
    unit: 'ms',
    reference: { what: `bridge + host-local, ${parallel} at once`, value: median(parExec.bridge) },
    target: { on: 'ratio', op: '<=', value: TARGET_PAR_RATIO },
    note: `${rounds} rounds`,
  });

  if (breakdown) {
    const seqIds = new Set(seqPods.map((p) => p.containerId));
    printBreakdown('ADD (sequential pods)', breakdowns.filter((b) => b.op === 'create' && seqIds.has(b.containerId)));
    printBreakdown('DEL (all pods, sequential)', breakdowns.filter((b) => b.op === 'delete'));
  }
  console.log(`agent log: test-artifacts/${node.prefix}-agent.log`);
}

/** Median inclusive time per call path over the given operations, as an indented tree. */
function printBreakdown(title: string, ops: { totalMs: number; paths: Record<string, { calls: number; ms: number }> }[]): void {
  console.log('');
  if (!ops.length) {
    console.log(`${title}: no breakdown lines in the agent log (was the timing hook loaded?)`);
    return;
  }
  console.log(`where the agent-side time of ${title} goes: median over ${ops.length} operations, inclusive ms per call path (total ${fmt(median(ops.map((o) => o.totalMs)), 2)} ms)`);
  const order: string[] = [];
  for (const o of ops) for (const k of Object.keys(o.paths)) if (!order.includes(k)) order.push(k);
  // Children are recorded before their parents finish: sort so a parent precedes its children, keeping first-seen order otherwise.
  const byParent = new Map<string, string[]>();
  for (const k of order) {
    const parent = k.includes(' > ') ? k.slice(0, k.lastIndexOf(' > ')) : '';
    byParent.set(parent, [...(byParent.get(parent) ?? []), k]);
  }
  const rows: string[][] = [['call path', 'calls', 'ms', '% of total']];
  const total = median(ops.map((o) => o.totalMs));
  const visit = (parent: string, depth: number) => {
    for (const k of byParent.get(parent) ?? []) {
      const ms = median(ops.map((o) => o.paths[k]?.ms ?? 0));
      const calls = median(ops.map((o) => o.paths[k]?.calls ?? 0));
      if (ms >= 0.05 || depth <= 1) rows.push([`${'  '.repeat(depth)}${k.split(' > ').pop()}`, String(calls), fmt(ms, 2), fmt((100 * ms) / total, 0)]);
      if (depth < 4) visit(k, depth + 1);
    }
  };
  visit('', 0);
  console.log(table(rows));
}

runBench('cni-add-latency', main);
