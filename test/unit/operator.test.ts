import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseAgentArgs } from '../../src/agent/config';
import { parseOperatorArgs } from '../../src/operator/config';
import { CidrPool, PoolExhaustedError } from '../../src/operator/pool';
import { aggregateStatus } from '../../src/operator/policystatus';
import { policyReports, PolicyReport } from '../../src/policy/status';
import { translatePolicy } from '../../src/policy/translate';
import { prefixEnd } from '../../src/kvstore/kvstore';
import type { Resource } from '../../src/store/types';
import { RelayConfigError, UnknownNodeError, readRelayToken, relayTargets } from '../../src/monitor/relay';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const cnp = (gen: number, spec: unknown = { endpointSelector: { matchLabels: { app: 'web' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }] }] }): Resource => ({
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name: 'p', namespace: 'default', generation: gen },
  spec,
});

describe('operator: cluster pool', () => {
  it('hands out CIDRs in order, skipping allocated ones and nodes\' own --pod-cidr', () => {
    const p = new CidrPool('10.220.0.0/22', 24);
    assert.equal(p.size, 4);
    assert.equal(p.next(new Set()), '10.220.0.0/24');
    assert.equal(p.next(new Set(['10.220.0.0/24'])), '10.220.1.0/24');
    assert.equal(p.next(new Set(['10.220.0.0/24']), ['10.220.1.0/25']), '10.220.2.0/24', 'a node\'s own CIDR inside the pool is never handed out');
    assert.ok(p.owns('10.220.3.0/24'));
    assert.ok(!p.owns('10.220.3.0/25'));
  });

  it('an exhausted pool is a typed error naming the pool and the counts', () => {
    const p = new CidrPool('10.220.0.0/23', 24);
    const used = new Set(['10.220.0.0/24', '10.220.1.0/24']);
    assert.throws(
      () => p.next(used),
      (e: unknown) => e instanceof PoolExhaustedError && e.allocated === 2 && e.size === 2 && /10\.220\.0\.0\/23 .* exhausted: 2 of 2/.test(e.message),
    );
  });

  it('flags: bad values name the flag and the value', () => {
    const ok = parseOperatorArgs(['--kvstore-endpoints', 'http://127.0.0.1:2379', '--cluster-pool-ipv4-cidr', '10.0.0.0/8', '--cluster-pool-ipv4-mask-size', '24']);
    assert.ok(ok !== 'help');
    assert.deepEqual(ok.pool, { cidr: '10.0.0.0/8', maskSize: 24 });
    assert.equal(ok.prefix, 'membrane/default/');
    assert.throws(() => parseOperatorArgs([]), /kvstore-endpoints: required/);
    assert.throws(() => parseOperatorArgs(['--kvstore-endpoints', 'http://h:1', '--cluster-pool-ipv4-cidr', '10.0.0.0/33']), /cluster-pool-ipv4-cidr: "10.0.0.0\/33"/);
    assert.throws(() => parseOperatorArgs(['--kvstore-endpoints', 'http://h:1', '--cluster-pool-ipv4-cidr', 'fd00::/64']), /cluster-pool-ipv4-cidr: "fd00::\/64" is not an IPv4 CIDR/);
    assert.throws(() => parseOperatorArgs(['--kvstore-endpoints', 'http://h:1', '--cluster-pool-ipv4-cidr', '10.0.0.0/16', '--cluster-pool-ipv4-mask-size', '8']), /cluster-pool-ipv4-mask-size: "8"/);
    assert.throws(() => parseOperatorArgs(['--kvstore-endpoints', 'http://h:1', '--cluster-pool-ipv4-mask-size', '24']), /only meaningful with --cluster-pool-ipv4-cidr/);
    assert.throws(() => parseOperatorArgs(['--kvstore-endpoints', 'http://h:1', '--node-gc-grace=-1']), /node-gc-grace: "-1"/);
    assert.throws(() => parseOperatorArgs(['--kvstore-endpoints', 'http://h:1', '--leader-lease-ttl', '1']), /leader-lease-ttl: "1"/);
  });

  it('an agent in cluster mode without --pod-cidr waits for the pool; without cluster mode the default stays', () => {
    const pool = parseAgentArgs(['--kvstore-endpoints', 'http://127.0.0.1:2379']);
    assert.ok(pool !== 'help');
    assert.equal(pool.podCidrFromPool, true);
    assert.equal(pool.podCidr, '');
    const own = parseAgentArgs(['--kvstore-endpoints', 'http://127.0.0.1:2379', '--pod-cidr', '10.1.2.0/24']);
    assert.ok(own !== 'help');
    assert.equal(own.podCidrFromPool, false);
    const single = parseAgentArgs([]);
    assert.ok(single !== 'help');
    assert.equal(single.podCidr, '10.200.0.0/24');
    assert.throws(() => parseAgentArgs(['--policy-map-max-entries', '0']), /policy-map-max-entries: "0"/);
  });

  it('the range end of a prefix is the next key after every key under it', () => {
    assert.deepEqual(prefixEnd(Buffer.from('refs/12/')), Buffer.from('refs/120'));
    assert.deepEqual(prefixEnd(Buffer.from([0x61, 0xff])), Buffer.from([0x62]));
  });
});

describe('operator: policy status', () => {
  const rep = (r: Partial<PolicyReport>): PolicyReport => ({ generation: 1, enforcing: true, revision: 3, endpoints: 1, ...r });

  it('Enforced is True only when every live node enforces the current generation', () => {
    const o = cnp(2);
    const s = aggregateStatus(o, ['n1', 'n2'], new Map([['n1', rep({ generation: 2 })], ['n2', rep({ generation: 1 })]]), undefined, 't0');
    assert.equal(s.conditions.find((c) => c.type === 'Valid')?.status, 'True');
    const e = s.conditions.find((c) => c.type === 'Enforced')!;
    assert.equal(e.status, 'Unknown');
    assert.deepEqual(s.pendingNodes, ['n2']);
    const s2 = aggregateStatus(o, ['n1', 'n2'], new Map([['n1', rep({ generation: 2 })], ['n2', rep({ generation: 2 })]]), s, 't1');
    assert.equal(s2.conditions.find((c) => c.type === 'Enforced')?.status, 'True');
    assert.deepEqual(s2.nodes, { total: 2, enforcing: 2, failed: 0, pending: 0 });
    assert.equal(s2.conditions.find((c) => c.type === 'Valid')?.lastTransitionTime, 't0', 'an unchanged condition keeps its transition time');
  });

  it('a node that failed is named with its error; fixing it turns the condition back', () => {
    const o = cnp(3);
    const s = aggregateStatus(o, ['n1', 'n2', 'n3'], new Map([['n1', rep({ generation: 3 })], ['n2', rep({ generation: 3 })], ['n3', rep({ generation: 3, enforcing: false, error: 'endpoint 7 (default/web): map full' })]]), undefined, 't0');
    const e = s.conditions.find((c) => c.type === 'Enforced')!;
    assert.equal(e.status, 'False');
    assert.match(e.message, /n3: endpoint 7 \(default\/web\): map full/);
    assert.deepEqual(s.failedNodes, [{ node: 'n3', error: 'endpoint 7 (default/web): map full' }]);
    const fixed = aggregateStatus(cnp(4), ['n1', 'n2', 'n3'], new Map(['n1', 'n2', 'n3'].map((n) => [n, rep({ generation: 4 })])), s, 't1');
    const e2 = fixed.conditions.find((c) => c.type === 'Enforced')!;
    assert.equal(e2.status, 'True');
    assert.equal(e2.lastTransitionTime, 't1');
  });

  it('a policy that does not translate is not Valid', () => {
    const bad = cnp(1, { endpointSelector: { matchLabels: { app: 'web' } }, ingress: [{ toPorts: [{ ports: [{ port: '80', protocol: 'GRE' }] }] }] });
    const s = aggregateStatus(bad, ['n1'], new Map(), undefined);
    assert.equal(s.conditions.find((c) => c.type === 'Valid')?.status, 'False');
  });

  it('a node reports per policy: enforced, failed on a selected endpoint, or not loaded', () => {
    const o = cnp(2);
    const rules = translatePolicy(o as Parameters<typeof translatePolicy>[0]);
    const other: Resource = { ...cnp(1), metadata: { name: 'q', namespace: 'default', generation: 5 } };
    const labels = ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default'];
    const reports = policyReports({
      objects: [o, other],
      loaded: new Map([['CiliumNetworkPolicy/default/p', { object: o, rules }]]),
      loadErrors: new Map([['CiliumNetworkPolicy/default/q', { generation: 5, error: 'bad port' }]]),
      endpoints: [
        { id: 1, labels, namespace: 'default', podName: 'web', policy: { revision: 9, error: 'policy needs 30 map entries' } },
        { id: 2, labels: ['k8s:app=db', 'k8s:io.kubernetes.pod.namespace=default'], namespace: 'default', podName: 'db', policy: { revision: 9 } },
      ],
      revision: 9,
    });
    const p = reports.get('CiliumNetworkPolicy/default/p')!;
    assert.equal(p.enforcing, false);
    assert.equal(p.endpoints, 1);
    assert.match(p.error!, /endpoint 1 \(default\/web\): policy needs 30 map entries/);
    assert.deepEqual(reports.get('CiliumNetworkPolicy/default/q'), { generation: 5, enforcing: false, error: 'not loaded: bad port', revision: 9, endpoints: 0 });
  });
});

describe('cluster-wide view: relay', () => {
  it('asks this node on its socket and the others at their relay address; an unknown node is a clear error', () => {
    const nodes = [{ name: 'n1' }, { name: 'n2', relay: { address: '198.18.0.2:4244' } }, { name: 'n3' }];
    assert.deepEqual(relayTargets(nodes, 'n1', '/run/m.sock', 'all'), [
      { node: 'n1', socket: '/run/m.sock' },
      { node: 'n2', address: '198.18.0.2:4244' },
      { node: 'n3', address: undefined },
    ]);
    assert.deepEqual(relayTargets(nodes, 'n1', '/run/m.sock', ['n2', 'n2']), [{ node: 'n2', address: '198.18.0.2:4244' }]);
    assert.throws(() => relayTargets(nodes, 'n1', '/s', ['n9']), (e: unknown) => e instanceof UnknownNodeError && /node: "n9" is not a node of the cluster \(known: n1, n2, n3\)/.test(e.message));
  });

  it('the token file must be private and long enough', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-relay-'));
    try {
      const f = path.join(dir, 'token');
      fs.writeFileSync(f, 'x'.repeat(32) + '\n', { mode: 0o644 });
      fs.chmodSync(f, 0o644);
      assert.throws(() => readRelayToken(f), (e: unknown) => e instanceof RelayConfigError && /accessible to others \(mode 644\)/.test(e.message));
      fs.chmodSync(f, 0o600);
      assert.equal(readRelayToken(f), 'x'.repeat(32));
      fs.writeFileSync(f, 'short');
      assert.throws(() => readRelayToken(f), /at least 16 are needed/);
      assert.throws(() => readRelayToken(path.join(dir, 'none')), /relay-token-file: cannot read/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('relay flags: only in cluster mode, HOST:PORT, with a token file', () => {
    assert.throws(() => parseAgentArgs(['--relay-address', '0.0.0.0:4244', '--relay-token-file', '/t']), /relay-address: only meaningful with --kvstore-endpoints/);
    assert.throws(() => parseAgentArgs(['--kvstore-endpoints', 'http://h:1', '--relay-address', '4244', '--relay-token-file', '/t']), /relay-address: "4244" must be HOST:PORT/);
    assert.throws(() => parseAgentArgs(['--kvstore-endpoints', 'http://h:1', '--relay-address', '0.0.0.0:4244']), /relay-token-file: required with --relay-address/);
    const ok = parseAgentArgs(['--kvstore-endpoints', 'http://h:1', '--relay-address', '[::]:4244', '--relay-token-file', '/t']);
    assert.ok(ok !== 'help');
    assert.equal(ok.relayAddress, '[::]:4244');
  });
});
