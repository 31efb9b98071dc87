import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseAgentArgs } from '../../src/agent/config';
import { parseEndpoints } from '../../src/kvstore/kvstore';
import { escapeSegment, identityLabelsKey, identityRefKey, parseResourceKey, resourceKey, unescapeSegment } from '../../src/kvstore/keys';
import { NodeRecord, cidrsOverlap, findOverlap } from '../../src/node/registry';
import { parseCidr } from '../../src/util/ip';
import { IdentityAllocator, IdentityPendingError, ClusterIdentityBackend } from '../../src/identity/identity';

const node = (name: string, cidrs: string[]): NodeRecord => ({
  name,
  bootId: name,
  addresses: [{ type: 'InternalIP', ip: '198.18.0.1' }],
  podCIDRs: cidrs,
  tunnel: { type: 'vxlan', port: 8472 },
  health: { status: 'ok', problems: [], since: '' },
  version: '0',
  startedAt: '',
});

describe('cluster mode: configuration', () => {
  it('--kvstore-endpoints turns cluster mode on with a prefix per cluster name', () => {
    const c = parseAgentArgs(['--kvstore-endpoints', 'http://127.0.0.1:2379,http://127.0.0.2:2379', '--cluster-name', 'east']);
    assert.ok(c !== 'help');
    assert.deepEqual(c.cluster, { endpoints: ['http://127.0.0.1:2379', 'http://127.0.0.2:2379'], prefix: 'membrane/east/', leaseTtl: 20 });
    const d = parseAgentArgs([]);
    assert.ok(d !== 'help');
    assert.equal(d.cluster, undefined, 'embedded store by default');
  });

  it('names the field and value of bad cluster settings', () => {
    assert.throws(() => parseAgentArgs(['--kvstore-endpoints', 'etcd:2379']), /kvstore-endpoints: "etcd:2379"/);
    assert.throws(() => parseAgentArgs(['--kvstore-endpoints', 'ftp://h:1']), /kvstore-endpoints: "ftp:\/\/h:1" must use http or https/);
    assert.throws(() => parseAgentArgs(['--kvstore-endpoints', 'http://h:1', '--kvstore-lease-ttl', '1']), /kvstore-lease-ttl: "1"/);
    assert.throws(() => parseAgentArgs(['--kvstore-endpoints', 'http://h:1', '--kvstore-prefix', '/abs']), /kvstore-prefix: "\/abs"/);
    assert.throws(() => parseAgentArgs(['--kvstore-lease-ttl', '5']), /kvstore-lease-ttl: only meaningful with --kvstore-endpoints/);
    assert.throws(() => parseAgentArgs(['--node-ip', '10.0.0']), /node-ip: "10.0.0"/);
    assert.throws(() => parseAgentArgs(['--cluster-name', 'Bad_Name']), /cluster-name: "Bad_Name"/);
    assert.throws(() => parseEndpoints(''), /names no endpoint/);
  });
});

describe('cluster mode: key layout', () => {
  it('escapes key segments reversibly and keeps resource keys parseable', () => {
    assert.equal(escapeSegment('a/b%c'), 'a%2Fb%25c');
    assert.equal(unescapeSegment(escapeSegment('a/b%c%2F')), 'a/b%c%2F');
    const k = resourceKey('Pod', 'default', 'web');
    assert.equal(k, 'resources/v1/Pod/default/web');
    assert.deepEqual(parseResourceKey(k.slice('resources/v1/'.length)), { kind: 'Pod', namespace: 'default', name: 'web' });
    assert.deepEqual(parseResourceKey(resourceKey('CiliumClusterwideNetworkPolicy', undefined, 'x').slice('resources/v1/'.length)), { kind: 'CiliumClusterwideNetworkPolicy', namespace: undefined, name: 'x' });
  });

  it('one key per label set, one reference key per identity and node', () => {
    assert.equal(identityLabelsKey(['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default']), 'identities/v1/labels/k8s:app=web;k8s:io.kubernetes.pod.namespace=default');
    assert.equal(identityLabelsKey(['k8s:a/b=c']), 'identities/v1/labels/k8s:a%2Fb=c');
    assert.equal(identityRefKey(300, 'n1'), 'identities/v1/refs/300/n1');
  });
});

describe('cluster mode: pod CIDR overlap', () => {
  it('detects containment in both directions, ignores the node itself and other families', () => {
    assert.equal(cidrsOverlap(parseCidr('10.0.0.0/16'), parseCidr('10.0.5.0/24')), true);
    assert.equal(cidrsOverlap(parseCidr('10.0.5.0/24'), parseCidr('10.0.0.0/16')), true);
    assert.equal(cidrsOverlap(parseCidr('10.0.5.0/24'), parseCidr('10.0.6.0/24')), false);
    assert.equal(cidrsOverlap(parseCidr('10.0.5.0/24'), parseCidr('fd00::/64')), false);
    const others = [node('n1', ['10.1.0.0/24']), node('n2', ['10.2.0.0/16'])];
    assert.equal(findOverlap(['10.3.0.0/24'], others, 'n3'), undefined);
    const clash = findOverlap(['10.2.7.0/24'], others, 'n3');
    assert.equal(clash?.other.name, 'n2');
    assert.equal(clash?.theirs, '10.2.0.0/16');
    assert.equal(findOverlap(['10.1.0.0/24'], others, 'n1'), undefined, 'a node does not overlap itself');
  });
});

describe('cluster mode: identities from a cluster backend', () => {
  function fakeBackend() {
    const ids = new Map<number, string[]>();
    const refs = new Set<number>();
    const listeners: ((id: number, labels: string[] | undefined) => void)[] = [];
    let next = 1000;
    const b: ClusterIdentityBackend & { refs: Set<number>; add(id: number, labels: string[] | undefined): void } = {
      refs,
      all: () => [...ids].map(([id, labels]) => ({ id, labels })),
      onChange: (fn) => void listeners.push(fn),
      lookup: (c) => [...ids].find(([, l]) => l.join(',') === c.join(','))?.[0],
      allocate: async (c) => {
        const id = next++;
        b.add(id, c);
        return id;
      },
      ensure: async (id) => id,
      ref: (id) => void refs.add(id),
      unref: (id) => void refs.delete(id),
      add(id, labels) {
        if (labels) ids.set(id, labels);
        else ids.delete(id);
        for (const l of listeners) l(id, labels);
      },
    };
    return b;
  }

  it('knows every cluster identity, allocates new label sets asynchronously, keeps CIDR identities local', async () => {
    const alloc = new IdentityAllocator();
    const be = fakeBackend();
    be.add(700, ['k8s:app=remote']);
    const seen: number[] = [];
    alloc.onChange((ev) => ev.type === 'add' && seen.push(ev.identity.id));
    alloc.attachCluster(be);
    assert.deepEqual(alloc.get(700)?.labels, ['k8s:app=remote'], 'a remote pod identity is known without a local reference');
    assert.deepEqual(seen, [700]);
    assert.throws(() => alloc.acquireSync(['k8s:app=new']), IdentityPendingError);
    const a = await alloc.acquire(['k8s:app=new']);
    assert.equal(a.id, 1000);
    assert.ok(be.refs.has(1000), 'this node references what it uses');
    const known = await alloc.acquire(['k8s:app=remote']);
    assert.equal(known.id, 700);
    const cidr = alloc.acquireLocal(['cidr:10.0.0.0/8']);
    assert.ok(cidr.id > 0xffffff, 'local identities carry the scope bit');
    assert.ok(!be.refs.has(cidr.id), 'and never reach the cluster');
    alloc.release(700);
    assert.ok(!be.refs.has(700));
    assert.ok(alloc.get(700), 'a cluster identity stays known when this node stops using it');
    be.add(700, undefined);
    assert.equal(alloc.get(700), undefined, 'and goes when the cluster collects it');
  });
});
