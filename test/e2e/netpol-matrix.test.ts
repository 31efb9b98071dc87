/**
 * Kubernetes NetworkPolicy semantics on the classic matrix: namespaces x, y, z,
 * pods a, b, c in each, servers on TCP and UDP ports 80 and 81. Each case
 * applies policies, probes every pod pair (all probes of one source run at
 * once, each bounded) and compares with the expectation written from the
 * Kubernetes API documentation. Covers updates, pod and namespace relabelling
 * and deletion.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { TestNode } from '../helpers/node';

const NSS = ['x', 'y', 'z'];
const PODS = ['a', 'b', 'c'];
type Proto = 'tcp' | 'udp';
type Peer = { ns: string; pod: string };
const np = (ns: string, name: string, spec: unknown) => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace: ns }, spec });

describe('Kubernetes NetworkPolicy matrix (x, y, z; a, b, c; TCP/UDP 80, 81)', () => {
  const node = new TestNode('np');
  const ip = new Map<string, string>();
  const netns = new Map<string, string>();
  const all: Peer[] = NSS.flatMap((ns) => PODS.map((pod) => ({ ns, pod })));
  const id = (p: Peer) => `${p.ns}/${p.pod}`;

  const podObj = (ns: string, pod: string, extra: Record<string, string> = {}) => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: pod, namespace: ns, labels: { pod, ...extra } },
    spec: { containers: [{ name: 'c', ports: [{ name: 'serve-80-tcp', containerPort: 80 }, { name: 'serve-81-udp', containerPort: 81, protocol: 'UDP' }] }] },
  });

  before(async () => {
    await node.start();
    node.apply([
      ...NSS.map((ns) => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: { ns } } })),
      ...all.map((p) => podObj(p.ns, p.pod)),
    ]);
    for (const p of all) {
      const r = node.addPod(`${p.ns}-${p.pod}`, { args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${p.ns};K8S_POD_NAME=${p.pod}` });
      ip.set(id(p), r.ip);
      netns.set(id(p), r.ns);
    }
    await Promise.all(all.map((p) => node.serve(netns.get(id(p))!, 'tcp:80,tcp:81,udp:80,udp:81')));
  });

  after(async () => {
    await node.cleanup();
  });

  /** Probe every pair on port/proto and compare with expect(from, to). */
  function matrix(port: number, proto: Proto, expect: (from: Peer, to: Peer) => boolean) {
    const wrong: string[] = [];
    for (const from of all) {
      const targets = all.map((to) => ({ ip: ip.get(id(to))!, port, proto }));
      const got = node.probe(netns.get(id(from))!, targets, 1000);
      all.forEach((to, i) => {
        const want = from === to ? true : expect(from, to); // a pod can always reach itself (it never leaves the pod)
        if (got[i] !== want) wrong.push(`${id(from)} -> ${id(to)} ${port}/${proto}: got ${got[i] ? 'OK' : 'blocked'}, want ${want ? 'OK' : 'blocked'}`);
      });
    }
    assert.deepEqual(wrong, [], `matrix ${port}/${proto} differs:\n${wrong.join('\n')}`);
  }

  function withPolicies(objs: any[], body: () => void) {
    node.apply(objs);
    try {
      body();
    } finally {
      node.delete(objs);
    }
  }

  const everything = () => true;

  it('no policy: every pod reaches every pod on every port', () => {
    matrix(80, 'tcp', everything);
    matrix(81, 'udp', everything);
  });

  it('default deny ingress in x: nothing reaches x, x still reaches out', () => {
    withPolicies([np('x', 'deny-all', { podSelector: {}, policyTypes: ['Ingress'] })], () => {
      matrix(80, 'tcp', (_f, t) => t.ns !== 'x');
      matrix(81, 'udp', (_f, t) => t.ns !== 'x');
    });
  });

  it('ingress: [{}] allows everything (unlike a CiliumNetworkPolicy)', () => {
    withPolicies([np('x', 'allow-all', { podSelector: {}, ingress: [{}] })], () => matrix(80, 'tcp', everything));
  });

  it('x/a accepts only pods of x (podSelector {}), on TCP 80 only', () => {
    withPolicies([np('x', 'a-from-x', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ podSelector: {} }], ports: [{ port: 80 }] }] })], () => {
      matrix(80, 'tcp', (f, t) => !(t.ns === 'x' && t.pod === 'a') || f.ns === 'x');
      matrix(81, 'tcp', (_f, t) => !(t.ns === 'x' && t.pod === 'a'));
      matrix(80, 'udp', (_f, t) => !(t.ns === 'x' && t.pod === 'a'));
    });
  });

  it('namespaceSelector alone, podSelector AND namespaceSelector, and two separate peers (OR)', () => {
    const isXA = (t: Peer) => t.ns === 'x' && t.pod === 'a';
    withPolicies([np('x', 'ns-y', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }] }] })], () =>
      matrix(80, 'tcp', (f, t) => !isXA(t) || f.ns === 'y'),
    );
    withPolicies([np('x', 'ns-y-and-b', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } }, podSelector: { matchLabels: { pod: 'b' } } }] }] })], () =>
      matrix(80, 'tcp', (f, t) => !isXA(t) || (f.ns === 'y' && f.pod === 'b')),
    );
    withPolicies([np('x', 'ns-y-or-b', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { ns: 'y' } } }, { podSelector: { matchLabels: { pod: 'b' } } }] }] })], () =>
      matrix(80, 'tcp', (f, t) => !isXA(t) || f.ns === 'y' || (f.ns === 'x' && f.pod === 'b')),
    );
  });

  it('matchExpressions, port ranges (endPort) and named ports', () => {
    const isXA = (t: Peer) => t.ns === 'x' && t.pod === 'a';
    withPolicies(
      [np('x', 'expr-range', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchExpressions: [{ key: 'ns', operator: 'NotIn', values: ['y'] }] } }], ports: [{ port: 80, endPort: 81, protocol: 'TCP' }] }] })],
      () => {
        matrix(81, 'tcp', (f, t) => !isXA(t) || f.ns !== 'y');
        matrix(80, 'udp', (_f, t) => !isXA(t));
      },
    );
    withPolicies([np('x', 'named', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ ports: [{ port: 'serve-81-udp', protocol: 'UDP' }] }] })], () => {
      matrix(81, 'udp', everything);
      matrix(80, 'tcp', (_f, t) => !isXA(t));
    });
  });

  it('egress: pods of y may only reach x on TCP 80', () => {
    withPolicies([np('y', 'egress-x', { podSelector: {}, policyTypes: ['Egress'], egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: 'x' } } }], ports: [{ port: 80, protocol: 'TCP' }] }] })], () => {
      matrix(80, 'tcp', (f, t) => f.ns !== 'y' || t.ns === 'x');
      matrix(81, 'udp', (f) => f.ns !== 'y');
    });
  });

  it('policyTypes defaulting: omitted, null or [] = Ingress, plus Egress only for a non-empty egress list', () => {
    // egress: [] and egress: null with policyTypes omitted isolate ingress only: y reaches out, nothing reaches y.
    for (const egress of [[], null]) {
      withPolicies([np('y', 'types-default', { podSelector: {}, egress })], () => matrix(80, 'tcp', (_f, t) => t.ns !== 'y'));
    }
    // policyTypes: [] and null default like an omitted field: ingress is isolated (only y/a gets in).
    for (const policyTypes of [[], null]) {
      withPolicies([np('y', 'types-empty', { podSelector: {}, policyTypes, ingress: [{ from: [{ podSelector: { matchLabels: { pod: 'a' } } }] }] })], () =>
        matrix(80, 'tcp', (f, t) => t.ns !== 'y' || (f.ns === 'y' && f.pod === 'a')),
      );
    }
    // A non-empty egress list adds Egress: y may only reach x (and nothing reaches y).
    for (const policyTypes of [undefined, []]) {
      withPolicies([np('y', 'types-egress', { podSelector: {}, ...(policyTypes === undefined ? {} : { policyTypes }), egress: [{ to: [{ namespaceSelector: { matchLabels: { ns: 'x' } } }] }] })], () =>
        matrix(80, 'tcp', (f, t) => t.ns !== 'y' && (f.ns !== 'y' || t.ns === 'x')),
      );
    }
  });

  it('updates, pod relabelling, namespace relabelling and deletion take effect', () => {
    const isXA = (t: Peer) => t.ns === 'x' && t.pod === 'a';
    const pol = np('x', 'from-team-blue', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: {}, podSelector: { matchLabels: { team: 'blue' } } }] }] });
    node.apply([pol]);
    try {
      matrix(80, 'tcp', (_f, t) => !isXA(t));
      // Relabel pod z/c: it gains team=blue and with it a new identity.
      node.apply([podObj('z', 'c', { team: 'blue' })]);
      node.waitPolicy(0);
      matrix(80, 'tcp', (f, t) => !isXA(t) || (f.ns === 'z' && f.pod === 'c'));
      // Update the policy: select the namespace label instead.
      const updated = np('x', 'from-team-blue', { podSelector: { matchLabels: { pod: 'a' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'blue' } } }] }] });
      node.apply([updated]);
      matrix(80, 'tcp', (_f, t) => !isXA(t));
      // Relabel namespace y: every pod of y changes identity and is now allowed.
      node.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'y', labels: { ns: 'y', team: 'blue' } } }]);
      matrix(80, 'tcp', (f, t) => !isXA(t) || f.ns === 'y');
    } finally {
      node.delete([pol]);
      node.apply([podObj('z', 'c'), { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'y', labels: { ns: 'y' } } }]);
    }
    matrix(80, 'tcp', everything);
  });
});
