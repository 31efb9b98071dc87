/**
 * CNI ADD latency benchmark.
 *
 *   node dist/bench/cni-add-latency.js [--count N] [--parallel M] [--breakdown]
 *
 * One TestNode (agent in its own netns). The pod namespaces are created before
 * each ADD and are not part of the timing (a runtime creates the sandbox netns
 * before it calls the plugin). Measured:
 *   plugin exec   spawn of bin/membrane-cni (the file, through its #! line, as a
 *                 runtime executes it) until the process exits, result on stdout
 *   agent-side    the agent's own duration of the endpoint creation (the
 *                 "endpoint created" log line, the same figure as the API
 *                 response's durationMs and status endpointCreateMs)
 * for N sequential ADDs (default 50) and M ADDs started at once (default 20),
 * then every pod is DELeted (timed too). Context measured in the same run:
 * `node -e 0` (bare Node start) and the plugin's VERSION command (plugin start
 * without any agent call). Prints figures beside the targets; never asserts.
 * --breakdown loads bench/agent-timing-hook into the bench's agent and prints
 * where the agent-side time of ADD and DEL goes (median per call path).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CNI_BIN, TestNode } from '../test/helpers/node';
import { REPO } from '../test/helpers/sys';
import { argValue, fmt, hasArg, median, mustRoot, onCleanup, percentile, run, runBench, table } from './lib';

const TARGET_AGENT_P50_MS = 15;
const TARGET_EXEC_P50_MS = 100;
const CONTEXT_RUNS = 20;

interface Pod {
  name: string;
  nsPath: string;
  containerId: string;
}

async function main(): Promise<void> {
  mustRoot();
  const count = argValue('--count', 50, 1, 500);
  const parallel = argValue('--parallel', 20, 1, 100);
  const needed = count + parallel + 1;
  const cidr = needed <= 250 ? '10.200.0.0/24' : '10.200.0.0/22';

  const breakdown = hasArg('--breakdown');

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
  const conf = JSON.stringify(node.conf);
  const logFile = path.join(REPO, 'test-artifacts', `${node.prefix}-agent.log`);

  console.log(`cni-add-latency: kernel ${os.release()}, ${os.cpus().length} CPUs, Node ${process.version}, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`node ${node.nodeNs}, pod CIDR ${cidr}; ${count} sequential ADDs, ${parallel} parallel ADDs, then DEL of every pod\n`);

  const baseEnv = (command: string, pod?: Pod): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    CNI_COMMAND: command,
    CNI_PATH: path.dirname(CNI_BIN),
    ...(pod
      ? {
          CNI_CONTAINERID: pod.containerId,
          CNI_NETNS: pod.nsPath,
          CNI_IFNAME: 'eth0',
          CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${pod.name}`,
        }
      : {}),
  });

  const exec = async (command: 'ADD' | 'DEL' | 'VERSION', pod?: Pod): Promise<number> => {
    const r = await run(CNI_BIN, [], { input: conf, env: baseEnv(command, pod), timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`CNI ${command}${pod ? ' ' + pod.name : ''} failed (exit ${r.code}${r.timedOut ? ', timed out' : ''}): ${r.stdout} ${r.stderr}\n${node.agentLog()}`);
    if (command === 'ADD') {
      const res = JSON.parse(r.stdout);
      if (!res?.ips?.[0]?.address) throw new Error(`CNI ADD ${pod?.name}: no address in the result: ${r.stdout}`);
    }
    return r.ms;
  };

  const newPod = (name: string): Pod => {
    const { nsPath } = node.podNs(name);
    return { name, nsPath, containerId: `${node.prefix}-${name}-cid` };
  };

  // Context: what any Node program and the plugin alone cost to start on this machine, now.
  // `node -e 0` with the same minimal environment the plugin gets, and with this process's environment
  // (variables such as NODE_EXTRA_CA_CERTS or NODE_OPTIONS make every Node start slower).
  const nodeStart: number[] = [];
  const nodeStartInherited: number[] = [];
  for (let i = 0; i < CONTEXT_RUNS; i++) {
    for (const [env, out] of [[baseEnv('VERSION'), nodeStart], [process.env, nodeStartInherited]] as const) {
      const r = await run(process.execPath, ['-e', '0'], { env, timeoutMs: 30_000 });
      if (r.code !== 0) throw new Error(`node -e 0 failed: ${r.stderr}`);
      out.push(r.ms);
    }
  }
  const nodeEnvVars = Object.keys(process.env).filter((k) => /^NODE_/.test(k));
  const versionExec: number[] = [];
  for (let i = 0; i < CONTEXT_RUNS; i++) versionExec.push(await exec('VERSION'));

  const pods: Pod[] = [];
  // The first ADD after agent start is reported on its own (cold caches), not in the sequential figures.
  const warm = newPod('w0');
  pods.push(warm);
  const coldMs = await exec('ADD', warm);

  const seqExec: number[] = [];
  const seqPods: Pod[] = [];
  for (let i = 0; i < count; i++) {
    const p = newPod(`s${i}`);
    pods.push(p);
    seqPods.push(p);
    seqExec.push(await exec('ADD', p));
  }
  const statusAfterSeq = node.cliJson(['status']);

  const parPods: Pod[] = [];
  for (let i = 0; i < parallel; i++) {
    const p = newPod(`p${i}`);
    pods.push(p);
    parPods.push(p);
  }
  const tPar = process.hrtime.bigint();
  const parExec = await Promise.all(parPods.map((p) => exec('ADD', p)));
  const parWallMs = Number(process.hrtime.bigint() - tPar) / 1e6;
  const status = node.cliJson(['status']);

  const delExec: number[] = [];
  for (const p of pods) delExec.push(await exec('DEL', p));
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

  const row = (label: string, xs: number[], target?: number): string[] => {
    const p50 = median(xs);
    return [
      label,
      String(xs.length),
      fmt(p50, 1),
      fmt(percentile(xs, 99), 1),
      fmt(Math.min(...xs), 1),
      fmt(Math.max(...xs), 1),
      target === undefined ? '' : `p50 <= ${target}`,
      target === undefined ? '' : p50 <= target ? 'meets' : 'MISSES',
    ];
  };
  console.log(
    table([
      ['measurement (ms)', 'n', 'p50', 'p99', 'min', 'max', 'target', ''],
      row('node -e 0, plugin env (bare Node start)', nodeStart),
      row(`node -e 0, bench env${nodeEnvVars.length ? ' (' + nodeEnvVars.join(',') + ')' : ''}`, nodeStartInherited),
      row('plugin exec, VERSION (start, no agent call)', versionExec),
      row(`ADD sequential: plugin exec`, seqExec, TARGET_EXEC_P50_MS),
      row(`ADD sequential: agent-side`, seqAgent, TARGET_AGENT_P50_MS),
      row(`ADD ${parallel} in parallel: plugin exec`, parExec, TARGET_EXEC_P50_MS),
      row(`ADD ${parallel} in parallel: agent-side`, parAgent, TARGET_AGENT_P50_MS),
      row('DEL sequential: plugin exec', delExec),
    ]),
  );
  console.log('');
  console.log(`first ADD after agent start (cold, not in the figures above): ${fmt(coldMs, 1)} ms plugin exec, ${fmt(agentMs.get(warm.containerId) ?? NaN, 1)} ms agent-side`);
  console.log(`${parallel} parallel ADDs: ${fmt(parWallMs, 1)} ms wall time for the batch (${fmt(parWallMs / parallel, 1)} ms per pod)`);
  const sc = statusAfterSeq.endpointCreateMs;
  const st = status.endpointCreateMs;
  console.log(`agent status endpointCreateMs: after the sequential phase p50 ${sc.p50} / p99 ${sc.p99} ms (${sc.count} creates); after all ADDs p50 ${st.p50} / p99 ${st.p99} ms (${st.count} creates)`);
  const api = statusAfterDel.apiRequests ?? {};
  const apiLine = Object.entries(api)
    .filter(([k]) => /\/v1\/endpoint /.test(k + ' '))
    .map(([k, v]: [string, any]) => `${k}: mean ${v.meanMs} ms (n=${v.count})`)
    .join('; ');
  if (apiLine) console.log(`agent API handling time (fastify, incl. body parsing): ${apiLine}`);
  const seqOverhead = median(seqExec) - median(seqAgent);
  console.log(`plugin exec minus agent-side, sequential p50: ${fmt(seqOverhead, 1)} ms (process start + module load + socket round trip); VERSION p50 ${fmt(median(versionExec), 1)} ms of it is start-up alone`);
  console.log(`endpoints left after DEL: ${statusAfterDel.endpoints.total}`);
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
