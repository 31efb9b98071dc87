/**
 * Policy behaviours beyond single verdicts: bad input rejected whole, revoking
 * a policy cuts an established connection, relabelling a pod changes its
 * identity and policy within a second, an endpoint whose policy cannot be
 * installed fails closed and says so, and everything survives an agent restart.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TestNode } from '../helpers/node';
import { NETKIT, sleep } from '../helpers/sys';

const cnp = (name: string, spec: unknown) => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name, namespace: 'default' }, spec });
const pod = (name: string, labels: Record<string, string>) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels } });

describe('policy behaviour', () => {
  const node = new TestNode('pb');
  let a: ReturnType<TestNode['addPod']>;
  let b: ReturnType<TestNode['addPod']>;
  let c: ReturnType<TestNode['addPod']>;

  before(async () => {
    await node.start();
    node.apply([pod('a', { app: 'a' }), pod('b', { app: 'b' }), pod('c', { app: 'c' })]);
    a = node.addPod('a');
    b = node.addPod('b');
    c = node.addPod('c');
    await node.serve(b.ns, 'tcp:8080');
  });
  after(async () => {
    await node.cleanup();
  });

  it('an invalid policy is rejected with every problem named, and nothing of the batch is applied', () => {
    const dir = fs.mkdtempSync('/tmp/mbpol-');
    try {
      const f = path.join(dir, 'bad.yaml');
      fs.writeFileSync(
        f,
        [
          'apiVersion: cilium.io/v2',
          'kind: CiliumNetworkPolicy',
          'metadata: {name: good}',
          'spec: {endpointSelector: {matchLabels: {app: b}}, ingress: [{}]}',
          '---',
          'apiVersion: cilium.io/v2',
          'kind: CiliumNetworkPolicy',
          'metadata: {name: bad}',
          'spec:',
          '  endpointSelector: {matchLabels: {app: b}}',
          '  ingress:',
          '  - fromEndpoints: [{matchExpressions: [{key: app, operator: Sometimes}]}]',
          '    toPorts: [{ports: [{port: "70000"}]}]',
          '  egress:',
          '  - toEntities: [mars]',
        ].join('\n'),
      );
      const r = node.cli(['apply', '-f', f]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /spec\.ingress\[0\]\.fromEndpoints\[0\]\.matchExpressions\[0\]\.operator: "Sometimes"/);
      assert.match(r.stderr, /spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: port "70000"/);
      assert.match(r.stderr, /spec\.egress\[0\]\.toEntities\[0\]: "mars"/);
      assert.deepEqual(node.cliJson(['policy', 'get']).policies, [], 'not even the valid document was applied');
      assert.ok(node.tcp(a.ns, b.ip, 8080));
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('revoking the policy that allowed a flow stops the established connection (reason 133)', async () => {
    const allow = cnp('b-from-a', { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'a' } }] }] });
    const deny = cnp('b-from-c', { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'c' } }] }] });
    node.apply([allow]);
    const stream = spawn('ip', ['netns', 'exec', a.ns, process.execPath, NETKIT, 'tcp-stream', b.ip, '8080', '3000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    stream.stdout!.on('data', (d) => lines.push(...d.toString().trim().split('\n')));
    const done = new Promise<void>((r) => stream.once('exit', () => r()));
    try {
      await sleep(700);
      const echoedBefore = Number((lines.at(-1) ?? '0 0').split(' ')[1]);
      assert.ok(echoedBefore > 10, `the stream flows (${echoedBefore} echoed)`);
      const dropsBefore = node.metric(133, 'ingress');
      // Replace the allow with a policy that still enforces ingress but no longer allows a.
      node.apply([deny]);
      node.delete([allow]);
      await sleep(800);
      const at = Number((lines.at(-1) ?? '0 0').split(' ')[1]);
      await sleep(700);
      const later = Number((lines.at(-1) ?? '0 0').split(' ')[1]);
      assert.equal(later, at, `no more echoes after revocation (${at} -> ${later})`);
      assert.ok(node.metric(133, 'ingress') > dropsBefore, 'the established flow is dropped by policy');
    } finally {
      await done;
      node.delete([deny]);
    }
  });

  it('relabelling a pod changes its identity and the policy that applies to it within a second', () => {
    const pol = cnp('b-from-trusted', { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { trusted: 'yes' } }] }] });
    node.apply([pol]);
    try {
      const before = (node.cliJson(['endpoint', 'list']) as any[]).find((e) => e.podName === 'c');
      assert.equal(node.tcp(c.ns, b.ip, 8080, 800), false);
      const t0 = Date.now();
      node.apply([pod('c', { app: 'c', trusted: 'yes' })]);
      assert.ok(node.tcp(c.ns, b.ip, 8080, 1000), 'allowed right after the relabel');
      assert.ok(Date.now() - t0 < 2500);
      const after = (node.cliJson(['endpoint', 'list']) as any[]).find((e) => e.podName === 'c');
      assert.notEqual(after.identity, before.identity);
      assert.ok(after.labels.includes('k8s:trusted=yes'));
    } finally {
      node.delete([pol]);
      node.apply([pod('c', { app: 'c' })]);
    }
  });

  it('a pod attached after the policy that allows it is let in (existing endpoints learn new identities)', () => {
    const pol = cnp('b-from-late', { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'late' } }] }] });
    node.apply([pol]);
    try {
      node.apply([pod('late', { app: 'late' })]);
      const late = node.addPod('late');
      assert.ok(node.tcp(late.ns, b.ip, 8080, 2500), 'the new identity reached b\'s policy map');
      assert.equal(node.tcp(c.ns, b.ip, 8080, 800), false);
      const bId = (node.cliJson(['endpoint', 'list']) as any[]).find((e) => e.podName === 'b').id;
      const lateId = (node.cliJson(['endpoint', 'list']) as any[]).find((e) => e.podName === 'late').identity;
      assert.ok(node.cliJson(['bpf', 'policy', 'get', String(bId)]).entries.some((e: any) => e.identity === lateId && e.verdict === 'Allow'));
    } finally {
      node.delete([pol]);
    }
  });

  it('a policy too large for the endpoint map fails closed and is reported on the endpoint and in status', () => {
    const ports = Array.from({ length: 17000 }, (_, i) => ({ port: String(1 + i * 2), protocol: 'TCP' }));
    const huge = cnp('huge', { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'a' } }], toPorts: [{ ports }] }] });
    try {
      node.apply([huge], { wait: false });
      const ep = (node.cliJson(['endpoint', 'list']) as any[]).find((e) => e.podName === 'b');
      assert.equal(ep.state, 'not-ready');
      assert.match(ep.policy.error, /could not be applied/);
      const st = node.cliJson(['status']);
      assert.ok(st.policy.failures.some((f: any) => f.id === ep.id));
      assert.equal(node.tcp(a.ns, b.ip, 8080, 800), false, 'fails closed: nothing gets in');
      assert.equal(node.tcp(c.ns, b.ip, 8080, 800), false);
    } finally {
      node.delete([huge]);
    }
    const ep = (node.cliJson(['endpoint', 'list']) as any[]).find((e) => e.podName === 'b');
    assert.equal(ep.state, 'ready', 'recovers once the policy fits');
    assert.ok(node.tcp(a.ns, b.ip, 8080));
  });

  it('policies and enforcement survive an agent restart (kill -9)', async () => {
    const pol = cnp('b-only-a', { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'a' } }] }] });
    node.apply([pol]);
    try {
      const before = node.cliJson(['bpf', 'policy', 'get', String((node.cliJson(['endpoint', 'list']) as any[]).find((e) => e.podName === 'b').id)]);
      await node.stopAgent('SIGKILL');
      assert.equal(node.tcp(c.ns, b.ip, 8080, 800), false, 'still enforced while the agent is down');
      assert.ok(node.tcp(a.ns, b.ip, 8080), 'allowed traffic still flows while the agent is down');
      await node.startAgent();
      assert.equal(node.cliJson(['policy', 'get']).policies.length, 1);
      const after = node.cliJson(['bpf', 'policy', 'get', String(before.endpoint)]);
      const strip = (r: any) => r.entries.map((e: any) => `${e.verdict} ${e.direction} ${e.identity} ${e.port}/${e.protocol}`).sort();
      assert.deepEqual(strip(after), strip(before));
      assert.equal(node.tcp(c.ns, b.ip, 8080, 800), false);
    } finally {
      node.delete([pol]);
    }
  });
});
