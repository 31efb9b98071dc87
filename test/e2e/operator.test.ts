/**
 * The operator in the lab (real etcd, real agents, real traffic), one fault
 * after another:
 *  - cluster pool: agents without --pod-cidr get distinct CIDRs from the pool;
 *  - two operators: one acts, the other waits; kill -9 of the leader and the
 *    other takes over (and acts: it allocates the next node's CIDR);
 *  - the operator killed (-9) or stopped: traffic and pod creation unaffected;
 *    restarted, it reallocates nothing; an agent restarted keeps its CIDR;
 *  - policy status: enforced on every node; a policy too large for one node's
 *    map (--policy-map-max-entries) names that node and the error; fixing it
 *    turns the condition back;
 *  - pool exhausted: an error in the waiting node's status and the operator's log;
 *  - a node removed: its CIDR returns to the pool only after the grace period
 *    (the waiting node then gets it); its identities are collected only when
 *    no other node references them.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { Lab, LabPod } from '../helpers/lab';
import { sleep, tryRun } from '../helpers/sys';
import type { TestNode } from '../helpers/node';
import { ChildProcess, spawn } from 'node:child_process';
import { CLI_BIN } from '../helpers/node';
import * as http from 'node:http';
import { startUiServer } from '../../src/ui/server';

const POOL = { cidr: '10.220.0.0/22', maskSize: 24 }; // 4 node CIDRs
const NODE_GC_GRACE = 8;

const cnp = (name: string, ports: number[]) => ({
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name, namespace: 'default' },
  spec: { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: ports.map((p) => ({ port: String(p), protocol: 'TCP' })) }] }] },
});

describe('operator', { timeout: 300_000 }, () => {
  const lab = new Lab({
    nodes: 3,
    leaseTtl: 4,
    operator: { pool: POOL, args: ['--leader-lease-ttl', '3', '--node-gc-grace', String(NODE_GC_GRACE), '--identity-gc-grace', '2', '--identity-gc-interval', '0.5'] },
    nodeArgs: { 2: ['--policy-map-max-entries', '24'] },
    relay: true,
  });
  let n1: TestNode;
  let n2: TestNode;
  let n3: TestNode;
  let client: LabPod;
  let server: LabPod;
  let solo: LabPod;
  const extra: TestNode[] = [];
  let leaderProc: ChildProcess;
  let leaderLog: string;

  const leader = () => {
    const kv = lab.etcdKeys('operator/v1/leader')[0];
    return kv ? (JSON.parse(kv.value) as { id: string }).id : undefined;
  };
  const status = (n: TestNode, name: string) => n.cliJson(['get', 'cnp', name])?.status;
  /** `membrane status -o json`, undefined while the agent is (re)starting. */
  const agentStatus = (n: TestNode) => {
    const r = n.cli(['status', '-o', 'json']);
    return r.code === 0 ? JSON.parse(r.stdout) : undefined;
  };
  const enforced = (n: TestNode, name: string) => status(n, name)?.conditions?.find((c: any) => c.type === 'Enforced');
  const ipam = () => new Map(lab.etcdKeys('ipam/v1/').map((k) => [k.key, k]));

  before(async () => {
    await lab.up();
    [n1, n2, n3] = lab.nodes;
    leaderProc = lab.operators[0];
    leaderLog = `test-artifacts/${lab.prefix}-op1.log`;
    client = lab.addPod(0, 'client', { app: 'client' });
    solo = lab.addPod(1, 'solo', { app: 'solo' });
    lab.addPod(1, 'client2', { app: 'client' });
    server = lab.addPod(2, 'server', { app: 'server' });
    await lab.serve(server.ns, 'tcp:8080', 'server');
  });
  after(async () => {
    await lab.cleanup();
  });

  it('cluster pool: every agent without --pod-cidr gets its own CIDR from the pool, and pods talk across nodes', async () => {
    const cidrs = lab.nodes.map((n) => {
      const st = n.cliJson(['status']);
      assert.equal(st.podCidrSource, 'cluster-pool');
      assert.match(n.cli(['status']).stdout, /allocated by the operator \(cluster pool\)/);
      return st.podCidr as string;
    });
    assert.equal(new Set(cidrs).size, 3, `distinct CIDRs: ${cidrs}`);
    for (const c of cidrs) assert.match(c, /^10\.220\.[0-3]\.0\/24$/);
    assert.ok(server.ip.startsWith(cidrs[2].split('.').slice(0, 3).join('.')), `server ${server.ip} in n3's ${cidrs[2]}`);
    await lab.until('pods known across nodes', () => lab.tcp(client.ns, server.ip, 8080), 20_000, 500);
    assert.equal(lab.tcp(solo.ns, server.ip, 8080), true);
  });

  it('two operators: one acts, the other waits; kill -9 of the leader and the other takes over', async () => {
    assert.equal(leader(), 'op1');
    assert.match(n2.cli(['status']).stdout, /Operator: +op1 acts/);
    const op2 = await lab.startOperator('op2');
    await lab.until('op2 to see that op1 leads', () => fs.readFileSync(op2.log, 'utf8').includes('another operator leads'));
    assert.equal(leader(), 'op1', 'the first operator still leads');
    assert.ok(!fs.readFileSync(op2.log, 'utf8').includes('elected leader'));
    leaderProc.kill('SIGKILL');
    await lab.until('op2 to take over', () => leader() === 'op2', 20_000, 200);
    await lab.until('op2 to say it acts', () => fs.readFileSync(op2.log, 'utf8').includes('elected leader'));
    leaderProc = op2.proc;
    leaderLog = op2.log;
    // The new leader acts: a new node gets the next CIDR from it.
    const n4 = lab.extraNode(3);
    extra.push(n4);
    await n4.startAgent();
    const c4 = n4.cliJson(['status']).podCidr;
    assert.match(c4, /^10\.220\.[0-3]\.0\/24$/);
    assert.match(fs.readFileSync(op2.log, 'utf8'), new RegExp(`pod CIDR allocated.*"node":"n4"`));
  });

  it('the operator killed with -9: traffic and pod creation unaffected; restarted, it reallocates nothing', async () => {
    const before = ipam();
    leaderProc.kill('SIGKILL');
    await sleep(500);
    assert.equal(lab.tcp(client.ns, server.ip, 8080), true, 'traffic across nodes without an operator');
    const late = lab.addPod(0, 'late', { app: 'client' });
    await lab.until('a pod created without an operator reaches the server across nodes', () => lab.tcp(late.ns, server.ip, 8080), 20_000, 500);
    const op3 = await lab.startOperator('op3');
    await lab.until('op3 to lead', () => leader() === 'op3', 20_000, 200);
    leaderProc = op3.proc;
    leaderLog = op3.log;
    await sleep(1000);
    const afterRestart = ipam();
    assert.deepEqual([...afterRestart.keys()].sort(), [...before.keys()].sort());
    for (const [k, v] of before) assert.equal(afterRestart.get(k)!.modRevision, v.modRevision, `${k} was not rewritten`);
    assert.ok(!fs.readFileSync(op3.log, 'utf8').includes('pod CIDR allocated'), 'the restarted operator allocated nothing');
    // Stopped (SIGTERM): it gives the lead up at once (lease revoked); the next one takes over and reallocates nothing.
    op3.proc.kill('SIGTERM');
    await lab.until('op3 to give the lead up', () => leader() === undefined, 10_000, 100);
    assert.equal(lab.tcp(client.ns, server.ip, 8080), true, 'traffic with the operator stopped');
    const op4 = await lab.startOperator('op4');
    await lab.until('op4 to lead', () => leader() === 'op4', 20_000, 200);
    leaderProc = op4.proc;
    leaderLog = op4.log;
    await sleep(500);
    for (const [k, v] of before) assert.equal(ipam().get(k)!.modRevision, v.modRevision, `${k} was not rewritten by op4`);
    // An agent restarted takes its allocation again at once (its pods keep their addresses and traffic).
    const cidr1 = n1.cliJson(['status']).podCidr;
    await n1.stopAgent();
    await n1.startAgent();
    assert.equal(n1.cliJson(['status']).podCidr, cidr1);
    assert.equal(ipam().get('ipam/v1/nodes/n1')!.modRevision, before.get('ipam/v1/nodes/n1')!.modRevision);
    await lab.until('traffic after the agent restart', () => lab.tcp(client.ns, server.ip, 8080), 10_000, 200);
  });

  it('policy status: enforced everywhere; too large for one node\'s map names that node; fixing it turns the condition back', async () => {
    n1.apply([cnp('server-ingress', [8080])], { wait: false });
    await lab.until('server-ingress enforced on every node', () => enforced(n1, 'server-ingress')?.status === 'True', 20_000, 100);
    const st = status(n2, 'server-ingress');
    assert.deepEqual(st.nodes, { total: 4, enforcing: 4, failed: 0, pending: 0 });
    assert.equal(st.conditions.find((c: any) => c.type === 'Valid').status, 'True');
    const yaml = n3.cli(['get', 'cnp', 'server-ingress', '-o', 'yaml']).stdout;
    assert.match(yaml, /status:/);
    assert.match(yaml, /type: Enforced/);
    assert.equal(lab.tcp(client.ns, server.ip, 8080), true);
    assert.equal(lab.tcp(solo.ns, server.ip, 8080), false, 'the policy is in force');

    // Cluster-scoped policies get their status too.
    n2.apply([{ apiVersion: 'cilium.io/v2', kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'server-ccnp' }, spec: cnp('x', [8080]).spec }], { wait: false });
    await lab.until('the CCNP enforced on every node', () => n3.cliJson(['get', 'ccnp', 'server-ccnp'])?.status?.conditions?.some((c: any) => c.type === 'Enforced' && c.status === 'True'), 20_000, 100);

    const ports = Array.from({ length: 40 }, (_, i) => 9000 + i);
    n1.apply([cnp('server-big', ports)], { wait: false });
    await lab.until('server-big failed on n3', () => enforced(n1, 'server-big')?.status === 'False', 20_000, 100);
    const big = status(n1, 'server-big');
    assert.equal(big.nodes.failed, 1);
    assert.equal(big.failedNodes[0].node, 'n3');
    assert.match(big.failedNodes[0].error, /default\/server.*policy-map-max-entries/);
    assert.match(enforced(n1, 'server-big').message, /n3: /);
    assert.match(n2.cli(['get', 'cnp']).stdout, /server-big .*True +False \(3\/4\)/);

    n1.apply([cnp('server-big', [9000])], { wait: false });
    await lab.until('server-big enforced after the fix', () => enforced(n1, 'server-big')?.status === 'True', 20_000, 100);
    await lab.until('traffic allowed again', () => lab.tcp(client.ns, server.ip, 8080), 10_000, 200);
  });

  it('the cluster-wide view: flows name remote pods; observe --node and --all-nodes ask other nodes (with the relay token only)', async () => {
    // solo (n2) -> server (n3) is denied by server-ingress: n3 sees the drop of a remote pod.
    assert.equal(lab.tcp(solo.ns, server.ip, 8080), false);
    const drops = n1.cli(['observe', '--node', 'n3', '--verdict', 'DROPPED', '--from-pod', 'default/solo', '--last', '5', '-o', 'json']);
    assert.equal(drops.code, 0, drops.stderr);
    const flows = drops.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.ok(flows.length > 0, 'n1 shows n3\'s drops');
    const f = flows[flows.length - 1];
    assert.equal(f.node_name, 'n3');
    assert.equal(f.source.pod_name, 'solo');
    assert.equal(f.source.namespace, 'default');
    assert.equal(f.source.node_name, 'n2', 'the remote pod is named with its node');
    assert.ok(f.source.labels.includes('k8s:app=solo'));
    assert.ok(f.source.identity > 255);
    // Every node, merged by time.
    assert.equal(lab.tcp(client.ns, server.ip, 8080), true);
    const all = n1.cli(['observe', '--all-nodes', '--to-pod', 'default/server', '--last', '200', '-o', 'json']);
    assert.equal(all.code, 0, all.stderr);
    const merged = all.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const nodesSeen = new Set(merged.map((x) => x.node_name));
    assert.ok(nodesSeen.has('n1') && nodesSeen.has('n3'), `flows of n1 (egress) and n3 (ingress): ${[...nodesSeen]}`);
    for (let i = 1; i < merged.length; i++) assert.ok(merged[i - 1].time <= merged[i].time, 'merged by time');
    const compact = n1.cli(['observe', '--all-nodes', '--to-pod', 'default/server', '--last', '3']).stdout;
    assert.match(compact, /^n[13]: /m);
    // --follow across nodes: every node's stream, lines as they arrive.
    const follow = spawn(process.execPath, [CLI_BIN, '--socket', n1.socket, 'observe', '--all-nodes', '--follow', '--to-pod', 'default/server', '-o', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let followed = '';
      follow.stdout!.on('data', (d) => (followed += d));
      await sleep(700);
      await lab.until('followed flows of n1 and n3', () => {
        lab.tcp(client.ns, server.ip, 8080);
        const ns = new Set(followed.split('\n').filter(Boolean).map((l) => JSON.parse(l).node_name));
        return ns.has('n1') && ns.has('n3');
      }, 15_000, 300);
    } finally {
      follow.kill('SIGINT');
    }
    // The UI with --all-nodes streams every node's flows (n3's included) from n1's agent.
    const ui = await startUiServer({ socket: n1.socket, port: 0, allNodes: true });
    try {
      const events = await new Promise<string>((resolve, reject) => {
        let text = '';
        const r = http.get({ host: '127.0.0.1', port: ui.port, path: '/api/flows/stream?to_pod=default%2Fserver&last=50' }, (res) => {
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
        });
        r.on('error', reject);
        setTimeout(() => {
          r.destroy();
          resolve(text);
        }, 2500);
      });
      const uiFlows = events.split('\n').filter((l) => l.startsWith('data: {"time"')).map((l) => JSON.parse(l.slice(6)));
      assert.ok(uiFlows.some((x) => x.node_name === 'n3') && uiFlows.some((x) => x.node_name === 'n1'), 'the UI stream carries the flows of n1 and n3');
    } finally {
      await ui.close();
    }
    // Unknown node: a clear error; no token: refused.
    const bad = n1.cli(['observe', '--node', 'nope']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /node: "nope" is not a node of the cluster/);
    const anon = tryRun('ip', ['netns', 'exec', lab.extNs, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', `http://${lab.nodeIp(2)}:4244/v1/flows`]);
    assert.equal(anon.stdout, '401', 'the relay refuses callers without the token');
  });

  it('pool exhausted: the waiting node and the operator say so; a removed node\'s CIDR returns only after the grace period; identities go only when unreferenced', async () => {
    // Four CIDRs, four nodes: a fifth waits, and says why.
    const n5 = lab.extraNode(4);
    extra.push(n5);
    await n5.startAgent({ waitForCidr: false });
    await lab.until('n5 to report the exhausted pool', () => /exhausted/.test(agentStatus(n5)?.cluster?.ipam?.error ?? ''), 20_000, 200);
    const text = n5.cli(['status']).stdout;
    assert.match(text, /waiting for its pod CIDR from the operator/);
    assert.match(text, /IPAM error: .*10\.220\.0\.0\/22 .*exhausted/);
    assert.match(fs.readFileSync(leaderLog, 'utf8'), /"level":"error".*the cluster pool is exhausted.*"node":"n5"/);
    assert.equal(n5.cli(['endpoint', 'list']).code !== 0, true, 'a waiting agent serves nothing but its status');
    await lab.until('n5 degraded in the node list, with the error', () => {
      const n = n1.cliJson(['node', 'list']).find((x: any) => x.name === 'n5');
      return n?.health === 'degraded' && /exhausted/.test(n.problems.join(' '));
    }, 10_000, 200);
    const add = n5.cni({ command: 'ADD', containerId: `${n5.prefix}-early`, netns: '/proc/self/ns/net', ifname: 'eth0' });
    assert.equal(add.code, 11, `CNI ADD while waiting: try again later (${add.stdout})`);

    const soloId = n2.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'solo').identity;
    const clientId = n1.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'client').identity;
    const x = n2.cliJson(['status']).podCidr;
    await n2.stopAgent('SIGKILL');
    await lab.until('n2 gone from etcd (lease expired)', () => lab.etcdKeys('nodes/v1/n2').length === 0, 20_000, 200);
    await lab.until('n2 marked orphaned', () => !!JSON.parse(ipam().get('ipam/v1/nodes/n2')?.value ?? '{}').orphanedSince, 10_000, 100);
    const held = ipam();
    assert.equal(held.get(`ipam/v1/cidrs/${x.replace('/', '%2F')}`)?.value, 'n2', 'the CIDR is still held during the grace period');
    assert.equal(n5.cliJson(['status']).state, 'waiting-for-pod-cidr');

    await lab.until('n2\'s own identity collected', () => lab.etcdKeys(`identities/v1/id/${soloId}`).length === 0, 20_000, 200);
    assert.equal(lab.etcdKeys(`identities/v1/id/${clientId}`).length, 1, 'an identity another node references stays');

    await lab.until('n5 to get n2\'s CIDR after the grace period', () => agentStatus(n5)?.podCidr === x, 30_000, 200);
    assert.equal(ipam().get('ipam/v1/nodes/n2'), undefined);
    assert.equal(ipam().get(`ipam/v1/cidrs/${x.replace('/', '%2F')}`)?.value, 'n5');
    assert.match(fs.readFileSync(leaderLog, 'utf8'), /node garbage-collected: its pod CIDR returned to the pool.*"node":"n2"/);
    assert.equal(lab.tcp(client.ns, server.ip, 8080), true, 'traffic unaffected throughout');

    // A node back within the grace period keeps its CIDR.
    const n4 = extra[0];
    const c4 = n4.cliJson(['status']).podCidr;
    await n4.stopAgent('SIGKILL');
    await lab.until('n4 gone and its CIDR held', () => !!JSON.parse(ipam().get('ipam/v1/nodes/n4')?.value ?? '{}').orphanedSince, 20_000, 200);
    await n4.startAgent();
    assert.equal(n4.cliJson(['status']).podCidr, c4);
    await lab.until('n4\'s allocation no longer orphaned', () => !JSON.parse(ipam().get('ipam/v1/nodes/n4')?.value ?? '{}').orphanedSince, 10_000, 100);
    await sleep(NODE_GC_GRACE * 1000);
    assert.equal(ipam().get(`ipam/v1/cidrs/${c4.replace('/', '%2F')}`)?.value, 'n4', 'still n4\'s after the grace period');
  });
});
