/**
 * Kubernetes NetworkPolicy ipBlock on addresses, pod and node addresses
 * included (the upstream e2e cases "egress to a server in a CIDR block",
 * "except clause", "IP in both CIDR and except"), in both directions and as
 * pods come and go; a CiliumNetworkPolicy toCIDR keeps its own semantics
 * (never matches a pod). Real traffic between pod namespaces.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { TestNode } from '../helpers/node';

const np = (name: string, spec: unknown) => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace: 'default' }, spec });
const pod = (name: string, labels: Record<string, string>) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels }, spec: { containers: [{ name: 'c' }] } });

describe('NetworkPolicy ipBlock selects pods and nodes by address', () => {
  const node = new TestNode('ipb');
  const p: Record<string, { ns: string; ip: string }> = {};

  before(async () => {
    await node.start();
    node.apply([pod('client', { role: 'client' }), pod('server', { role: 'server' }), pod('other', { role: 'server' })]);
    for (const n of ['client', 'server', 'other']) p[n] = node.addPod(n);
    await Promise.all(['server', 'other', 'client'].map((n) => node.serve(p[n].ns, 'tcp:80')));
  });

  after(() => node.cleanup());

  const reach = (from: string, to: string[]) => node.probe(p[from].ns, to.map((t) => ({ ip: p[t].ip, port: 80, proto: 'tcp' as const })), 1000);

  it('egress to a server in a CIDR block: the /32 of a pod allows it and nothing else', () => {
    const pol = np('egress-block', { podSelector: { matchLabels: { role: 'client' } }, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: `${p.server.ip}/32` } }] }] });
    node.apply([pol]);
    assert.deepEqual(reach('client', ['server', 'other']), [true, false]);
    const trace = node.cliJson(['policy', 'trace', '--src', 'client', '--dst', 'server', '--dport', '80']);
    assert.equal(trace.verdict, 'ALLOWED');
    assert.match(trace.egress.reason, /NetworkPolicy\/default\/egress-block/);
    node.delete([pol]);
  });

  it('except clause: the block minus the server', () => {
    const cidr = node.podCidr;
    const pol = np('egress-except', { podSelector: { matchLabels: { role: 'client' } }, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr, except: [`${p.server.ip}/32`] } }] }] });
    node.apply([pol]);
    assert.deepEqual(reach('client', ['server', 'other']), [false, true]);
    node.delete([pol]);
  });

  it('IP in both CIDR and except: another rule naming it still allows it', () => {
    const cidr = node.podCidr;
    const pol = np('egress-both', {
      podSelector: { matchLabels: { role: 'client' } },
      policyTypes: ['Egress'],
      egress: [{ to: [{ ipBlock: { cidr, except: [`${p.server.ip}/32`] } }] }, { to: [{ ipBlock: { cidr: `${p.server.ip}/32` } }] }],
    });
    node.apply([pol]);
    assert.deepEqual(reach('client', ['server', 'other']), [true, true]);
    node.delete([pol]);
  });

  it('ingress from a CIDR block, the node included; a pod that appears inside the block is selected', () => {
    const router = node.cliJson(['status']).router as string;
    const pol = np('ingress-block', {
      podSelector: { matchLabels: { role: 'server' } },
      policyTypes: ['Ingress'],
      ingress: [{ from: [{ ipBlock: { cidr: `${p.client.ip}/32` } }, { ipBlock: { cidr: `${router}/32` } }] }],
    });
    node.apply([pol]);
    assert.deepEqual(reach('client', ['server', 'other']), [true, true], 'client is in the block');
    assert.deepEqual(reach('other', ['server']), [false], 'other is not');
    assert.equal(node.tcp(node.nodeNs, p.server.ip, 80), true, 'the node (router address) is in the block');
    // A new pod at an address inside a block: widen the block to the pod CIDR minus "other", then attach a pod.
    const wide = np('ingress-block', { podSelector: { matchLabels: { role: 'server' } }, policyTypes: ['Ingress'], ingress: [{ from: [{ ipBlock: { cidr: node.podCidr, except: [`${p.other.ip}/32`] } }] }] });
    node.apply([wide]);
    node.apply([pod('late', { role: 'late' })]);
    const late = node.addPod('late');
    assert.deepEqual(node.probe(late.ns, [{ ip: p.server.ip, port: 80, proto: 'tcp' }], 1000), [true], 'a pod attached after the policy is selected by its address');
    assert.deepEqual(reach('other', ['server']), [false]);
    node.delete([wide]);
    assert.deepEqual(reach('other', ['server']), [true], 'policy gone: open again');
  });

  it('CiliumNetworkPolicy toCIDR keeps its semantics: a pod address is not selected', () => {
    const cnp = {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'cnp-cidr', namespace: 'default' },
      spec: { endpointSelector: { matchLabels: { role: 'client' } }, egress: [{ toCIDR: [`${p.server.ip}/32`] }] },
    };
    node.apply([cnp]);
    assert.deepEqual(reach('client', ['server']), [false]);
    node.delete([cnp]);
  });
});
