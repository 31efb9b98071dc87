/**
 * The UI's data model with L7 flows: the table's L7 text, and map edges that
 * carry L7 requests (and those the proxy denied) apart from the L4 verdict.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Flow, buildGraph, connectionOutcomes, l7Text, viewFlow } from '../../ui/model';

const ep = (pod: string, app: string) => ({ identity: 300, namespace: 'shop', pod_name: pod, labels: [`k8s:app=${app}`] });
const base = (o: Partial<Flow>): Flow => ({
  time: '2026-11-22T07:00:00.000Z',
  verdict: 'FORWARDED',
  IP: { source: '10.0.0.9', destination: '10.0.0.2' },
  l4: { TCP: { source_port: 41000, destination_port: 8080 } },
  source: ep('client-1', 'client'),
  destination: ep('web-1', 'web'),
  ...o,
});

describe('ui model: L7 flows', () => {
  it('shows method, path and status; DNS query, type, rcode and answers', () => {
    assert.equal(l7Text(base({ l7: { type: 'RESPONSE', http: { method: 'GET', url: 'http://web/api/items?x=1', code: 403 } } })), 'GET /api/items?x=1 403');
    assert.equal(l7Text(base({ l7: { type: 'REQUEST', http: { method: 'POST', url: '/admin' } } })), 'POST /admin');
    assert.equal(l7Text(base({ l7: { type: 'RESPONSE', dns: { query: 'api.example.com.', qtypes: ['A'], rcode: 'NoError', ips: ['192.0.2.7'] } } })), 'DNS api.example.com. A NoError 192.0.2.7');
    assert.equal(l7Text(base({})), '');
  });

  it('an edge with L7 requests counts them and the denied ones, without turning the allowed connection red', () => {
    const flows = [
      base({ trace_observation_point: 'TO_ENDPOINT' }),
      base({ verdict: 'FORWARDED', l7: { type: 'REQUEST', http: { method: 'GET', url: '/public' } } }),
      base({ verdict: 'DROPPED', l7: { type: 'REQUEST', http: { method: 'POST', url: '/admin' } } }),
      base({ verdict: 'DROPPED', is_reply: true, IP: { source: '10.0.0.2', destination: '10.0.0.9' }, l4: { TCP: { source_port: 8080, destination_port: 41000 } }, source: ep('web-1', 'web'), destination: ep('client-1', 'client'), l7: { type: 'RESPONSE', http: { method: 'POST', url: '/admin', code: 403 } } }),
    ].map((f) => viewFlow(f));
    const outcomes = connectionOutcomes(flows);
    assert.equal([...outcomes.values()].some((d) => d), false, 'an L7 denial is not a dropped connection');
    const g = buildGraph(flows, []);
    assert.equal(g.edges.length, 1);
    const e = g.edges[0];
    assert.equal(e.source, 'shop/client');
    assert.equal(e.target, 'shop/web');
    assert.equal(e.verdict, 'forwarded');
    assert.equal(e.l7, 3);
    assert.equal(e.l7Denied, 2);
    assert.deepEqual(e.l7Kinds, ['GET', 'POST']);
  });
});

describe('ui model: cluster nodes', () => {
  it('workloads carry the nodes they run on; an edge between pods of different nodes is cross-node', () => {
    const local = (pod: string, app: string) => ({ ID: 7, identity: 301, namespace: 'shop', pod_name: pod, labels: [`k8s:app=${app}`] });
    const remote = (pod: string, app: string, node: string) => ({ identity: 302, namespace: 'shop', pod_name: pod, labels: [`k8s:app=${app}`], node_name: node });
    const g = buildGraph(
      [
        base({ node_name: 'n1', source: local('client-1', 'client'), destination: remote('web-1', 'web', 'n3') }),
        base({ node_name: 'n1', IP: { source: '10.0.0.9', destination: '10.0.0.3' }, source: local('client-1', 'client'), destination: { ...local('db-1', 'db'), ID: 8 } }),
      ].map((f) => viewFlow(f)),
      [],
    );
    const byId = new Map(g.nodes.map((n) => [n.id, n]));
    assert.deepEqual(byId.get('shop/web')!.clusterNodes, ['n3']);
    assert.deepEqual(byId.get('shop/client')!.clusterNodes, ['n1']);
    const cross = g.edges.find((e) => e.target === 'shop/web')!;
    const same = g.edges.find((e) => e.target === 'shop/db')!;
    assert.equal(cross.crossNode, true);
    assert.equal(same.crossNode, false);
  });
});
