/**
 * Faults a cluster survives, with real traffic (the lab: two nodes, etcd):
 *  - etcd stopped for 60 s: an established flow and policy keep working on
 *    every node, nothing allowed is dropped, a pod whose identity is already
 *    known gets networking; when etcd returns every node converges without a
 *    restart;
 *  - an agent killed with -9: the other node's traffic is unaffected, the
 *    node's pods keep their datapath, and the restarted agent resyncs from
 *    etcd without changing any identity.
 * (Two agents allocating the same new label set at once: cluster.test.ts and
 * kvstore.test.ts.)
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import { Lab, LabPod } from '../helpers/lab';
import { NETKIT, sleep } from '../helpers/sys';
import type { TestNode } from '../helpers/node';

const DROP_POLICY = 133;

describe('cluster: faults', { timeout: 600_000 }, () => {
  const lab = new Lab({ nodes: 2, leaseTtl: 15 });
  let n1: TestNode;
  let n2: TestNode;
  let client: LabPod;
  let denied: LabPod;
  let server: LabPod;
  let local: LabPod;
  const procs: ChildProcess[] = [];

  before(async () => {
    await lab.up();
    [n1, n2] = lab.nodes;
    client = lab.addPod(0, 'client', { app: 'client' });
    denied = lab.addPod(0, 'denied', { app: 'denied' });
    local = lab.addPod(1, 'local', { app: 'local' });
    server = lab.addPod(1, 'server', { app: 'server' });
    for (const p of [server, local]) await lab.serve(p.ns, 'tcp:8080', p.name);
    n1.apply(
      [
        {
          apiVersion: 'cilium.io/v2',
          kind: 'CiliumNetworkPolicy',
          metadata: { name: 'server-from-client', namespace: 'default' },
          spec: { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] },
        },
        // A pod that will be attached during the outage, with the client's labels (a known identity).
        { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'late', namespace: 'default', labels: { app: 'client' } } },
      ],
      { wait: false },
    );
    await lab.until('the policy to be enforced on node 2 and every pod known everywhere', () => {
      const st = n2.cliJson(['status']);
      const prefixes = new Set(n1.cliJson(['bpf', 'ipcache', 'list']).map((e: any) => e.prefix));
      return st.policy.policies === 1 && st.policy.endpointsBehind === 0 && prefixes.has(`${server.ip}/32`) && n2.cli(['get', 'pod', 'late']).code === 0;
    });
    assert.deepEqual(lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]), [true]);
    assert.deepEqual(lab.probe(denied.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]), [false]);
  });
  after(async () => {
    for (const p of procs) p.kill('SIGKILL');
    await lab.cleanup();
  });

  it('etcd stopped for 60 s: flows and policy keep working, a pod with a known identity gets networking, every node converges when it returns', async () => {
    const pids = lab.nodes.map((n) => n.agent!.pid);
    // An established flow across nodes for the whole outage: a line every 20 ms, echoed.
    const stream = spawn('ip', ['netns', 'exec', client.ns, process.execPath, NETKIT, 'tcp-stream', server.ip, '8080', '75000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(stream);
    let last = [0, 0];
    let errors = '';
    stream.stdout!.on('data', (d) => {
      const lines = d.toString().trim().split('\n');
      last = lines[lines.length - 1].split(' ').map(Number);
    });
    stream.stderr!.on('data', (d) => (errors += d.toString()));
    const exited = new Promise<number>((r) => stream.on('exit', (c) => r(c ?? -1)));
    await sleep(2000);
    const t0 = Date.now();
    await lab.etcd.stop();
    const dropsBefore = n2.metric(DROP_POLICY, 'ingress');

    await sleep(5000);
    const mid = [...last];
    // Policy keeps working on both nodes: new flows allowed and denied as before.
    assert.deepEqual(lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }, { ip: local.ip, port: 8080, proto: 'tcp' }]), [true, true]);
    assert.deepEqual(lab.probe(denied.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]), [false]);
    assert.ok(n2.metric(DROP_POLICY, 'ingress') > dropsBefore, 'the denied flow was dropped by policy, not lost');
    // A pod whose identity is already known gets networking without etcd.
    const late = lab.addPod(0, 'late', {}, { apply: false });
    const lateEp = n1.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'late');
    const clientEp = n1.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'client');
    assert.equal(lateEp.identity, clientEp.identity, 'the known identity, without asking etcd');
    assert.equal(lab.tcp(late.ns, server.ip, 8080, 3000), true, 'the new pod reaches the server on the other node, allowed by policy');
    const st = n1.cliJson(['status']);
    assert.equal(st.cluster.connected, false, 'the agent knows etcd is gone');

    // The rest of the 60 s, with the stream flowing.
    await sleep(Math.max(0, 60_000 - (Date.now() - t0)));
    assert.ok(last[1] > mid[1] + 1000, `the established flow kept flowing during the outage (${mid[1]} -> ${last[1]} echoed)`);
    assert.deepEqual(lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]), [true]);

    await lab.etcd.start();
    // Every node converges, no restart: the late pod reaches node 2's ipcache, a new policy reaches node 1.
    await lab.until('node 2 to learn the pod attached during the outage', () => n2.cliJson(['bpf', 'ipcache', 'list']).some((e: any) => e.prefix === `${late.ip}/32` && e.identity === lateEp.identity), 30_000, 200);
    n2.apply(
      [
        {
          apiVersion: 'cilium.io/v2',
          kind: 'CiliumNetworkPolicy',
          metadata: { name: 'local-deny-client', namespace: 'default' },
          spec: { endpointSelector: { matchLabels: { app: 'local' } }, ingress: [{ fromEntities: ['all'] }], ingressDeny: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }] }] },
        },
      ],
      { wait: false },
    );
    await lab.until('node 1 to see the new policy', () => n1.cliJson(['status']).policy.policies === 2, 30_000);
    await lab.until('the new policy enforced across nodes', () => !lab.tcp(client.ns, local.ip, 8080, 1000), 30_000);
    for (const n of lab.nodes) await lab.until(`${n.nodeName} connected again`, () => n.cliJson(['status']).cluster.connected === true, 30_000);
    assert.deepEqual(lab.nodes.map((n) => n.agent!.pid), pids, 'no agent restarted');
    const code = await exited;
    assert.equal(errors, '', 'the stream never broke');
    assert.equal(code, 0);
    assert.ok(last[1] >= last[0] - 5, `every line sent was echoed (${last[0]} sent, ${last[1]} echoed)`);
  });

  it('an agent killed with -9: the other node is unaffected, its pods keep their datapath, it resyncs without changing any identity', async () => {
    const ids = (n: TestNode) => Object.fromEntries(n.cliJson(['endpoint', 'list']).map((e: any) => [e.podName, e.identity]));
    const before2 = ids(n2);
    const ipcache1 = JSON.stringify(n1.cliJson(['bpf', 'ipcache', 'list']));
    await n2.stopAgent('SIGKILL');
    // Node 2's pods keep their datapath and policy; node 1 keeps reaching them.
    assert.deepEqual(lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }, { ip: local.ip, port: 8080, proto: 'tcp' }]), [true, false]);
    assert.deepEqual(lab.probe(denied.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }, { ip: local.ip, port: 8080, proto: 'tcp' }]), [false, true]);
    assert.deepEqual(lab.probe(local.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]), [false], 'on node 2 itself too');
    assert.equal(JSON.stringify(n1.cliJson(['bpf', 'ipcache', 'list'])), ipcache1, 'node 1 is unaffected');
    await n2.startAgent();
    assert.deepEqual(ids(n2), before2, 'the same identities after the restart');
    await lab.until('node 2 registered again', () => n1.cliJson(['node', 'list']).find((x: any) => x.name === 'n2')?.alive === true);
    assert.deepEqual(lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]), [true]);
    assert.equal(JSON.stringify(n1.cliJson(['bpf', 'ipcache', 'list'])), ipcache1, 'node 1 saw nothing change');
  });
});
