/**
 * Operator benchmark.
 *
 *   node dist/bench/operator.js [--quick] [--rounds N] [--stale N]
 *
 * 1. Policy status: on a 3-node lab with the operator (cluster pool, one pod
 *    per node selected by the policy), a CiliumNetworkPolicy applied on node 1
 *    (POST /v1/apply, as `membrane apply`) until its status (written by the
 *    operator from every node's report) says Enforced=True on every node,
 *    observed by a watch on etcd. Reference in the same run: the apply call
 *    itself (answered once node 1 enforces it). Target: p50 <= 1 s.
 * 2. Identity GC throughput: 10,000 stale identities (master key and
 *    label-set index, no reference) plus 100 referenced ones in a loopback
 *    etcd; one GC pass (grace 0) until all stale ones are gone (the referenced
 *    ones must stay). Node GC throughput: 10,000 orphaned pod CIDR
 *    allocations past their grace period released. Reference: writing the
 *    same objects (batched transactions of 64 puts).
 * Prints figures; never asserts timings.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { AgentClient } from '../src/agent/client';
import { Kvstore, Reflector, TxnOp } from '../src/kvstore';
import { IDENTITY_IDS, IPAM_NODES, NODES, POLICY_STATUS, identityIdKey, identityLabelsKey, identityRefKey, ipamCidrKey, ipamNodeKey } from '../src/kvstore/keys';
import { IdentityGc } from '../src/operator/identitygc';
import { ClusterPoolIpam } from '../src/operator/ipam';
import { CidrPool } from '../src/operator/pool';
import { makeLogger, setLogLevel } from '../src/util/log';
import { EtcdServer } from '../test/helpers/etcd';
import { Lab } from '../test/helpers/lab';
import { REPO, runPrefix } from '../test/helpers/sys';
import { argValue, fmt, hasArg, median, mustRoot, onCleanup, percentile, reportRow, runBench, table } from './lib';

const log = makeLogger({ bench: 'operator' });

const cnp = (name: string, port: number) => ({
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name, namespace: 'default' },
  spec: { endpointSelector: { matchLabels: { app: 'web' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'web' } }], toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }] }] },
});

/** Run inside the lab's underlay namespace (where etcd answers on 127.0.0.1): apply, then watch the status. */
async function probe(socket: string, prefix: string, rounds: number): Promise<void> {
  setLogLevel('error');
  const kv = new Kvstore({ endpoints: ['http://127.0.0.1:2379'], prefix, log });
  const status = new Reflector(kv, POLICY_STATUS, log);
  await status.start();
  const client = new AgentClient(socket);
  const applyMs: number[] = [];
  const enforcedMs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const name = `bench-${i}`;
    const key = `CiliumNetworkPolicy/default/${name}`;
    const done = new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name}: not enforced on every node within 20 s`)), 20_000);
      const check = () => {
        const v = status.get(key);
        if (!v) return;
        const s = JSON.parse(v.value) as { conditions: { type: string; status: string }[] };
        if (s.conditions.some((c) => c.type === 'Enforced' && c.status === 'True')) {
          clearTimeout(timer);
          unsub();
          resolve(performance.now());
        }
      };
      const unsub = status.subscribe(check);
    });
    const t0 = performance.now();
    await client.request('POST', '/v1/apply', { objects: [cnp(name, 10000 + i)] });
    applyMs.push(performance.now() - t0);
    enforcedMs.push((await done) - t0);
  }
  status.stop();
  kv.close();
  process.stdout.write(JSON.stringify({ applyMs, enforcedMs }) + '\n');
}

async function policyStatusLatency(rounds: number): Promise<void> {
  const lab = new Lab({ nodes: 3, leaseTtl: 10, operator: { pool: { cidr: '10.221.0.0/16', maskSize: 24 } } });
  onCleanup('lab', () => lab.cleanup());
  await lab.up();
  for (let i = 0; i < 3; i++) lab.addPod(i, `web${i + 1}`, { app: 'web' });
  const r = spawnSync('ip', ['netns', 'exec', lab.underlayNs, process.execPath, path.join(REPO, 'dist/bench/operator.js'), '--probe', lab.nodes[0].socket, `${lab.prefix}/`, String(rounds)], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) throw new Error(`probe failed (${r.status}): ${r.stderr}`);
  const { applyMs, enforcedMs } = JSON.parse(r.stdout.trim().split('\n').pop()!) as { applyMs: number[]; enforcedMs: number[] };
  console.log(`\n1. Policy applied on n1 until its status says Enforced on all 3 nodes (${rounds} policies)`);
  console.log(
    table([
      ['', 'p50 ms', 'p90 ms', 'max ms'],
      ['apply answered (n1 enforces)', fmt(median(applyMs)), fmt(percentile(applyMs, 90)), fmt(Math.max(...applyMs))],
      ['status Enforced on every node', fmt(median(enforcedMs)), fmt(percentile(enforcedMs, 90)), fmt(Math.max(...enforcedMs))],
    ]),
  );
  reportRow({
    row: 'Policy apply to status enforced on every node (3-node lab), p50',
    figure: median(enforcedMs),
    unit: 'ms',
    reference: { what: 'apply answered (node 1 enforces)', value: median(applyMs), unit: 'ms' },
    target: { on: 'figure', op: '<=', value: 1000 },
    note: `p90 ${fmt(percentile(enforcedMs, 90))} ms, ${rounds} policies`,
  });
}

async function putAll(kv: Kvstore, ops: TxnOp[]): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < ops.length; i += 64) await kv.txn([], ops.slice(i, i + 64));
  return performance.now() - t0;
}

async function gcThroughput(stale: number): Promise<void> {
  const prefix = runPrefix('opb');
  const dir = fs.mkdtempSync(`/tmp/${prefix}-`);
  onCleanup('dir', () => fs.rmSync(dir, { recursive: true, force: true }));
  const etcd = await EtcdServer.onLoopback(prefix, dir);
  onCleanup('etcd', () => etcd.cleanup());
  await etcd.start();
  setLogLevel('warn');
  const kv = new Kvstore({ endpoints: [etcd.endpoint], prefix: `${prefix}/`, log });
  onCleanup('kv', () => kv.close());

  // Identities: `stale` unreferenced, 100 referenced by a node.
  const ops: TxnOp[] = [];
  for (let i = 0; i < stale + 100; i++) {
    const id = 256 + i;
    const labels = [`k8s:app=bench-${i}`, 'k8s:io.kubernetes.pod.namespace=default'];
    ops.push({ type: 'put', key: identityIdKey(id), value: JSON.stringify({ labels }) }, { type: 'put', key: identityLabelsKey(labels), value: String(id) });
    if (i >= stale) ops.push({ type: 'put', key: identityRefKey(id, 'n1'), value: '' });
  }
  const writeIdMs = await putAll(kv, ops);
  const gc = new IdentityGc(kv, 0, 3_600_000, log);
  await gc.start();
  const t0 = performance.now();
  gc.setActive(true);
  let collected = 0;
  while (collected < stale) {
    const n = await gc.run();
    if (!n) break;
    collected += n;
  }
  const gcMs = performance.now() - t0;
  gc.stop();
  const left = await kv.count(IDENTITY_IDS);
  if (collected !== stale || left !== 100) throw new Error(`identity gc: collected ${collected} of ${stale}, ${left} left (100 referenced must stay)`);

  // Node GC: `stale` orphaned allocations past their grace period.
  const pool = new CidrPool('10.0.0.0/8', 24);
  const nops: TxnOp[] = [];
  const past = new Date(Date.now() - 3_600_000).toISOString();
  for (let i = 0; i < stale; i++) {
    const cidr = pool.at(i);
    nops.push({ type: 'put', key: ipamNodeKey(`node-${i}`), value: JSON.stringify({ podCIDRs: [cidr], pool: pool.text, orphanedSince: past }) }, { type: 'put', key: ipamCidrKey(cidr), value: `node-${i}` });
  }
  const writeNodeMs = await putAll(kv, nops);
  const nodes = new Reflector(kv, NODES, log);
  await nodes.start();
  const ipam = new ClusterPoolIpam(kv, nodes, pool, 0, log);
  await ipam.start();
  const t1 = performance.now();
  ipam.setActive(true);
  const deadline = Date.now() + 600_000;
  while (ipam.stats.released < stale && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const nodeMs = performance.now() - t1;
  ipam.stop();
  nodes.stop();
  const nodeLeft = await kv.count(IPAM_NODES);
  if (ipam.stats.released !== stale || nodeLeft !== 0) throw new Error(`node gc: released ${ipam.stats.released} of ${stale}, ${nodeLeft} left`);

  const idRate = stale / (gcMs / 1000);
  const nodeRate = stale / (nodeMs / 1000);
  console.log(`\n2. Garbage collection, ${stale} stale objects (loopback etcd)`);
  console.log(
    table([
      ['', 'time s', 'objects/s', 'writing them: objects/s'],
      ['identities (id + index, 100 referenced kept)', fmt(gcMs / 1000, 2), fmt(idRate, 0), fmt((stale + 100) / (writeIdMs / 1000), 0)],
      ['nodes (orphaned pod CIDR allocations)', fmt(nodeMs / 1000, 2), fmt(nodeRate, 0), fmt(stale / (writeNodeMs / 1000), 0)],
    ]),
  );
  reportRow({ row: `Identity GC throughput, ${stale} stale identities`, figure: idRate, unit: 'objects/s', reference: { what: 'writing them (64 puts per txn)', value: (stale + 100) / (writeIdMs / 1000), unit: 'objects/s' } });
  reportRow({ row: `Node GC throughput, ${stale} orphaned allocations`, figure: nodeRate, unit: 'objects/s', reference: { what: 'writing them (64 puts per txn)', value: stale / (writeNodeMs / 1000), unit: 'objects/s' } });
}

if (process.argv[2] === '--probe') {
  void probe(process.argv[3], process.argv[4], Number(process.argv[5])).then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`${(e as Error).stack}\n`);
      process.exit(1);
    },
  );
} else {
  runBench('operator', async () => {
    mustRoot();
    const quick = hasArg('--quick');
    const rounds = argValue('--rounds', quick ? 10 : 30, 1, 1000);
    const stale = argValue('--stale', 10_000, 100, 60_000);
    await gcThroughput(stale);
    await policyStatusLatency(rounds);
  });
}
