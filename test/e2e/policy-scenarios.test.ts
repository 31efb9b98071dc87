/**
 * The connectivity scenarios users check a CNI with (connectivity-scenarios.md,
 * 1-20: those that need no L7, no DNS and no second node), with real traffic
 * between pods, the host and a "world" namespace outside the node. Every
 * failing probe is also checked in the kernel's drop accounting: 133 (default
 * deny) or 181 (deny rule), in the direction where it was dropped.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { TestNode } from '../helpers/node';
import { ping } from '../helpers/sys';

const NS = 'membrane-test';
const cnp = (name: string, spec: unknown) => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name, namespace: NS }, spec });
const knp = (name: string, spec: unknown) => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name, namespace: NS }, spec });
const allowAll = cnp('allow-all', { endpointSelector: {}, ingress: [{ fromEntities: ['all'] }], egress: [{ toEntities: ['all'] }] });

function pod(name: string, labels: Record<string, string>, echo: boolean) {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: NS, labels: { name, ...labels } },
    spec: { serviceAccountName: name, containers: [{ name: 'c', ports: echo ? [{ name: 'http-8080', containerPort: 8080 }] : [] }] },
  };
}

describe('connectivity scenarios (policy enforced in eBPF)', () => {
  const node = new TestNode('sc');
  const ip: Record<string, string> = {};
  const nsOf: Record<string, string> = {};
  const WORLD1 = '192.0.2.10';
  const WORLD2 = '192.0.2.11';

  before(async () => {
    await node.start({ world: true });
    const pods = [
      pod('client', { kind: 'client' }, false),
      pod('client2', { kind: 'client', other: 'client' }, false),
      pod('echo-same-node', { kind: 'echo', other: 'echo' }, true),
      pod('echo-other', { kind: 'echo', first: 'echo' }, true),
    ];
    node.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } }, ...pods]);
    for (const p of pods) {
      const name = p.metadata.name;
      const r = node.addPod(name, { args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${NS};K8S_POD_NAME=${name}` });
      ip[name] = r.ip;
      nsOf[name] = r.ns;
      await node.serve(r.ns, 'tcp:8080');
    }
    await node.serve(node.worldNs!, 'tcp:80,tcp:443');
  });

  after(async () => {
    await node.cleanup();
  });

  /** Expect a probe to pass, or to fail with a drop counted for reason/direction. */
  function expectProbe(desc: string, probe: () => boolean, expect: 'ok' | { drop: 133 | 181; dir: 'ingress' | 'egress' }) {
    const before = expect === 'ok' ? 0 : node.metric(expect.drop, expect.dir);
    const ok = probe();
    if (expect === 'ok') {
      assert.equal(ok, true, `${desc}: expected to pass`);
      return;
    }
    assert.equal(ok, false, `${desc}: expected drop ${expect.drop} at ${expect.dir}`);
    const after = node.metric(expect.drop, expect.dir);
    assert.ok(after > before, `${desc}: drop reason ${expect.drop} (${expect.dir}) counted (before ${before}, after ${after})`);
  }
  const tcp = (from: string, to: string, port = 8080) => () => node.tcp(nsOf[from], ip[to] ?? to, port);
  const icmp = (from: string, to: string) => () => ping(nsOf[from], ip[to] ?? to, { count: 1 });

  async function withPolicies(objs: any[], body: () => void) {
    node.apply(objs);
    try {
      body();
    } finally {
      node.delete(objs);
    }
  }

  it('1 no-policies: pod-to-pod, pod-to-host, host-to-pod, pod-to-world all pass', () => {
    expectProbe('client -> echo', tcp('client', 'echo-same-node'), 'ok');
    expectProbe('client -> world', tcp('client', WORLD1, 80), 'ok');
    expectProbe('client -> host', icmp('client', '192.0.2.1'), 'ok');
    assert.equal(node.nodeExec('ping', ['-c', '1', '-W', '1', ip.client]).code, 0, 'host -> client');
    const eps: any[] = node.cliJson(['endpoint', 'list']);
    assert.ok(eps.every((e) => !e.policy.ingress && !e.policy.egress), 'no enforcement without policies');
  });

  it('2 client-ingress (CNP and NetworkPolicy): only other=client may reach kind=client', async () => {
    for (const pol of [
      cnp('client-ingress', { endpointSelector: { matchLabels: { kind: 'client' } }, ingress: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }] }] }),
      knp('client-ingress', { podSelector: { matchLabels: { kind: 'client' } }, ingress: [{ from: [{ podSelector: { matchLabels: { other: 'client' } } }] }] }),
    ]) {
      await withPolicies([pol], () => {
        expectProbe(`${pol.kind}: ping client2 -> client`, icmp('client2', 'client'), 'ok');
        expectProbe(`${pol.kind}: ping echo -> client`, icmp('echo-same-node', 'client'), { drop: 133, dir: 'ingress' });
      });
    }
  });

  it('3 echo-ingress: other=client reaches echo, client does not', async () => {
    await withPolicies([cnp('echo-ingress', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingress: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] })], () => {
      expectProbe('client2 -> echo', tcp('client2', 'echo-same-node'), 'ok');
      expectProbe('client -> echo', tcp('client', 'echo-same-node'), { drop: 133, dir: 'ingress' });
    });
  });

  it('4 client-egress: kind=client may reach kind=echo on 8080 only', async () => {
    await withPolicies([cnp('client-egress', { endpointSelector: { matchLabels: { kind: 'client' } }, egress: [{ toEndpoints: [{ matchLabels: { kind: 'echo' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] })], () => {
      expectProbe('client -> echo:8080', tcp('client', 'echo-same-node'), 'ok');
      expectProbe('client -> world:80', tcp('client', WORLD1, 80), { drop: 133, dir: 'egress' });
    });
  });

  it('5 client-egress-expression: only pods with an "other" label are selected', async () => {
    await withPolicies([cnp('client-egress-expr', { endpointSelector: { matchExpressions: [{ key: 'other', operator: 'Exists' }] }, egress: [{ toEndpoints: [{ matchLabels: { kind: 'echo' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] })], () => {
      expectProbe('client (not selected) -> world', tcp('client', WORLD1, 80), 'ok');
      expectProbe('client2 -> echo', tcp('client2', 'echo-same-node'), 'ok');
      expectProbe('client2 -> world', tcp('client2', WORLD1, 80), { drop: 133, dir: 'egress' });
    });
  });

  it('6 client-egress-to-echo-service-account', async () => {
    await withPolicies([cnp('client-egress-sa', { endpointSelector: { matchLabels: { kind: 'client' } }, egress: [{ toEndpoints: [{ matchLabels: { 'io.cilium.k8s.policy.serviceaccount': 'echo-same-node' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] })], () => {
      expectProbe('client -> echo-same-node', tcp('client', 'echo-same-node'), 'ok');
      expectProbe('client -> echo-other', tcp('client', 'echo-other'), { drop: 133, dir: 'egress' });
    });
  });

  it('7 all-ingress-deny: pod-to-pod dropped at ingress, pod-to-world still works (replies are not ingress-checked)', async () => {
    await withPolicies([cnp('all-ingress-deny', { endpointSelector: {}, ingress: [{}] })], () => {
      expectProbe('client -> echo', tcp('client', 'echo-same-node'), { drop: 133, dir: 'ingress' });
      expectProbe('client -> world', tcp('client', WORLD1, 80), 'ok');
    });
  });

  it('8 all-egress-deny: pod-to-pod dropped at egress', async () => {
    await withPolicies([cnp('all-egress-deny', { endpointSelector: {}, egress: [{}] })], () => {
      expectProbe('client -> echo', tcp('client', 'echo-same-node'), { drop: 133, dir: 'egress' });
    });
  });

  it('9 all-entities-deny: egressDeny to all drops pod-to-pod and pod-to-world with 181', async () => {
    await withPolicies([cnp('all-entities-deny', { endpointSelector: {}, egressDeny: [{ toEntities: ['all'] }] })], () => {
      expectProbe('client -> echo', tcp('client', 'echo-same-node'), { drop: 181, dir: 'egress' });
      expectProbe('client -> world', tcp('client', WORLD1, 80), { drop: 181, dir: 'egress' });
    });
  });

  it('10 cluster-entity: egress to the cluster reaches pods, not the world', async () => {
    await withPolicies([cnp('cluster-entity', { endpointSelector: { matchLabels: { kind: 'client' } }, egress: [{ toEntities: ['cluster'] }] })], () => {
      expectProbe('client -> echo', tcp('client', 'echo-same-node'), 'ok');
      expectProbe('client -> world', tcp('client', WORLD1, 80), { drop: 133, dir: 'egress' });
    });
  });

  it('11 host-entity egress and ingress', async () => {
    await withPolicies(
      [
        cnp('host-egress', { endpointSelector: { matchLabels: { kind: 'client' } }, egress: [{ toEntities: ['host', 'remote-node'] }] }),
        cnp('host-ingress', { endpointSelector: { matchLabels: { kind: 'client' } }, ingress: [{ fromEntities: ['host', 'remote-node'] }] }),
      ],
      () => {
        expectProbe('client -> host', icmp('client', '192.0.2.1'), 'ok');
        assert.equal(node.nodeExec('ping', ['-c', '1', '-W', '1', ip.client]).code, 0, 'host -> client');
        expectProbe('client -> echo (not host)', tcp('client', 'echo-same-node'), { drop: 133, dir: 'egress' });
      },
    );
  });

  it('12 to-entities-world on port 80 only', async () => {
    await withPolicies([cnp('to-world', { endpointSelector: { matchLabels: { kind: 'client' } }, egress: [{ toEntities: ['world'], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] })], () => {
      expectProbe('client -> world:80', tcp('client', WORLD1, 80), 'ok');
      expectProbe('client -> world:443', tcp('client', WORLD1, 443), { drop: 133, dir: 'egress' });
    });
  });

  it('13 to-cidr-external (CNP toCIDRSet and NetworkPolicy ipBlock) with except', async () => {
    for (const pol of [
      cnp('to-cidr', { endpointSelector: { matchLabels: { kind: 'client' } }, egress: [{ toCIDRSet: [{ cidr: '192.0.2.0/24', except: ['192.0.2.11/32'] }] }] }),
      knp('to-cidr', { podSelector: { matchLabels: { kind: 'client' } }, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '192.0.2.0/24', except: ['192.0.2.11/32'] } }] }] }),
    ]) {
      await withPolicies([pol], () => {
        expectProbe(`${pol.kind}: client -> .10`, tcp('client', WORLD1, 80), 'ok');
        expectProbe(`${pol.kind}: client -> .11`, tcp('client', WORLD2, 80), { drop: 133, dir: 'egress' });
      });
    }
  });

  const cidrDeny = cnp('cidr-deny', { endpointSelector: { matchLabels: { kind: 'client' } }, egressDeny: [{ toCIDRSet: [{ cidr: '192.0.2.0/24', except: ['192.0.2.10/32'] }] }] });

  it('14 client-egress-to-cidr-deny: allow-all + deny 192.0.2.0/24 except .10', async () => {
    await withPolicies([allowAll, cidrDeny], () => {
      expectProbe('client -> .11', tcp('client', WORLD2, 80), { drop: 181, dir: 'egress' });
      expectProbe('client -> .10', tcp('client', WORLD1, 80), 'ok');
    });
  });

  it('15 client-egress-to-cidr-deny-default: a deny-only policy still turns default deny on', async () => {
    await withPolicies([cidrDeny], () => {
      expectProbe('client -> .11', tcp('client', WORLD2, 80), { drop: 181, dir: 'egress' });
      expectProbe('client -> .10', tcp('client', WORLD1, 80), { drop: 133, dir: 'egress' });
    });
  });

  it('16 echo-ingress-from-other-client-deny', async () => {
    await withPolicies([allowAll, cnp('echo-deny', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingressDeny: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }] }] })], () => {
      expectProbe('client2 -> echo', tcp('client2', 'echo-same-node'), { drop: 181, dir: 'ingress' });
      expectProbe('client -> echo', tcp('client', 'echo-same-node'), 'ok');
    });
  });

  it('17 client-ingress-icmp: only ICMP echo requests from other=client', async () => {
    await withPolicies([cnp('client-icmp', { endpointSelector: { matchLabels: { kind: 'client' } }, ingress: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }], icmps: [{ fields: [{ type: 8, family: 'IPv4' }] }] }] })], () => {
      expectProbe('ping client2 -> client', icmp('client2', 'client'), 'ok');
      expectProbe('ping echo -> client', icmp('echo-same-node', 'client'), { drop: 133, dir: 'ingress' });
    });
  });

  it('18 client-ingress-from-other-client-icmp-deny', async () => {
    await withPolicies([allowAll, cnp('icmp-deny', { endpointSelector: { matchLabels: { kind: 'client' } }, ingressDeny: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }], icmps: [{ fields: [{ type: 'EchoRequest', family: 'IPv4' }] }] }] })], () => {
      expectProbe('ping client2 -> client', icmp('client2', 'client'), { drop: 181, dir: 'ingress' });
      expectProbe('client2 -> echo (TCP)', tcp('client2', 'echo-same-node'), 'ok');
    });
  });

  it('19 client-egress-to-echo-deny', async () => {
    await withPolicies([allowAll, cnp('echo-egress-deny', { endpointSelector: { matchLabels: { kind: 'client' } }, egressDeny: [{ toEndpoints: [{ matchLabels: { kind: 'echo' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] })], () => {
      expectProbe('client -> echo:8080', tcp('client', 'echo-same-node'), { drop: 181, dir: 'egress' });
      expectProbe('ping client -> client2', icmp('client', 'client2'), 'ok');
    });
  });

  it('20 client-ingress-to-echo-named-port-deny', async () => {
    await withPolicies([allowAll, cnp('named-deny', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingressDeny: [{ fromEndpoints: [{ matchLabels: { name: 'client' } }], toPorts: [{ ports: [{ port: 'http-8080', protocol: 'TCP' }] }] }] })], () => {
      expectProbe('client -> echo', tcp('client', 'echo-same-node'), { drop: 181, dir: 'ingress' });
      expectProbe('client2 -> echo', tcp('client2', 'echo-same-node'), 'ok');
    });
  });

  it('policy trace explains verdicts and bpf policy get shows the kernel entries', async () => {
    await withPolicies([cnp('echo-ingress', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingress: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] })], () => {
      const ok = node.cliJson(['policy', 'trace', '--src', `${NS}/client2`, '--dst', `${NS}/echo-same-node`, '--dport', '8080/TCP']);
      assert.equal(ok.verdict, 'ALLOWED');
      assert.match(ok.ingress.reason, /CiliumNetworkPolicy\/membrane-test\/echo-ingress/);
      const no = node.cliJson(['policy', 'trace', '--src', `${NS}/client`, '--dst', `${NS}/echo-same-node`, '--dport', '8080/TCP']);
      assert.equal(no.verdict, 'DENIED');
      assert.equal(no.ingress.dropReason, 133);
      const text = node.cli(['policy', 'trace', '--src', 'kind=client,other=client', '--dst', `${NS}/echo-same-node`, '--dport', '8080']);
      assert.match(text.stdout, /Final verdict/);
      const eps: any[] = node.cliJson(['endpoint', 'list']);
      const echo = eps.find((e) => e.podName === 'echo-same-node');
      assert.equal(echo.policy.ingress, true);
      assert.equal(echo.policy.egress, false);
      const bpf = node.cliJson(['bpf', 'policy', 'get', String(echo.id)]);
      const client2Identity = eps.find((e) => e.podName === 'client2').identity;
      const entry = bpf.entries.find((e: any) => e.identity === client2Identity && e.direction === 'Ingress');
      assert.ok(entry, 'an ingress entry for client2');
      assert.equal(entry.verdict, 'Allow');
      assert.equal(entry.port, '8080');
      assert.equal(entry.protocol, 'TCP');
      assert.ok(entry.labels.includes(`k8s:other=client`));
      node.tcp(nsOf.client2, ip['echo-same-node'], 8080);
      const after = node.cliJson(['bpf', 'policy', 'get', String(echo.id)]).entries.find((e: any) => e.identity === client2Identity && e.direction === 'Ingress');
      assert.ok(after.packets > 0, 'the entry counts packets');
    });
  });
});
