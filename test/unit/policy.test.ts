import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IdentityAllocator } from '../../src/identity/identity';
import { podSecurityLabels } from '../../src/identity/labels';
import { PolicyEngine } from '../../src/policy/engine';
import { covers, lookupVerdict, portRangeToPrefixes, PolicyEntry } from '../../src/policy/mapstate';
import { LabelSet, matches } from '../../src/policy/selector';
import { PolicyValidationError, translatePolicy } from '../../src/policy/translate';

const TCP = 6;
const UDP = 17;
const ICMP = 1;

function world() {
  const ids = new IdentityAllocator();
  const cidrs = new Map<string, number>();
  const engine = new PolicyEngine(ids, (p, id) => (id === undefined ? cidrs.delete(p) : cidrs.set(p, id)));
  const pod = (ns: string, labels: Record<string, string>, nsLabels: Record<string, string> = {}, sa?: string) =>
    ids.acquireSync(podSecurityLabels({ namespace: ns, podLabels: labels, namespaceLabels: { 'kubernetes.io/metadata.name': ns, ...nsLabels }, serviceAccount: sa }));
  let n = 0;
  const apply = (o: any) => engine.repo.upsert({ ...o, metadata: { name: `p${n++}`, ...o.metadata } });
  const verdict = (subject: { id: number; labels: string[] }, remote: number, dir: 'ingress' | 'egress', proto: number, port: number, namedPorts = {}) =>
    lookupVerdict(engine.compute({ identity: subject.id, labels: subject.labels, namedPorts }).entries, remote, dir === 'egress', proto, port);
  return { ids, engine, pod, apply, verdict, cidrs };
}

const cnp = (ns: string, spec: any) => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { namespace: ns }, spec });
const knp = (ns: string, spec: any) => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { namespace: ns }, spec });

describe('selectors', () => {
  it('match labels and expressions (In, NotIn, Exists, DoesNotExist) with optional sources', () => {
    const l = new LabelSet(['k8s:app=web', 'k8s:tier=front', 'k8s:io.kubernetes.pod.namespace=x']);
    const sel = (requirements: any[]) => ({ requirements });
    assert.ok(matches(sel([{ key: 'app', operator: 'In', values: ['web', 'api'] }]), l));
    assert.ok(matches(sel([{ key: 'app', source: 'k8s', operator: 'In', values: ['web'] }]), l));
    assert.ok(!matches(sel([{ key: 'app', source: 'reserved', operator: 'In', values: ['web'] }]), l));
    assert.ok(matches(sel([{ key: 'app', operator: 'NotIn', values: ['db'] }]), l));
    assert.ok(matches(sel([{ key: 'missing', operator: 'NotIn', values: ['db'] }]), l), 'NotIn holds when the key is absent');
    assert.ok(matches(sel([{ key: 'tier', operator: 'Exists', values: [] }]), l));
    assert.ok(matches(sel([{ key: 'other', operator: 'DoesNotExist', values: [] }]), l));
    assert.ok(!matches(sel([{ key: 'tier', operator: 'DoesNotExist', values: [] }]), l));
    assert.ok(matches(sel([]), l), 'empty selector matches everything');
  });
});

describe('policy translation', () => {
  it('rejects invalid policies naming every field and value', () => {
    try {
      translatePolicy(
        cnp('x', {
          endpointSelector: { matchExpressions: [{ key: 'a', operator: 'Near', values: [] }] },
          ingress: [{ fromEntities: ['moon'], toPorts: [{ ports: [{ port: '99999', protocol: 'TCP' }, { port: '80', protocol: 'XTP' }] }] }],
          egress: [{ toCIDRSet: [{ cidr: '10.0.0.0/8', except: ['11.0.0.0/16'] }], bogus: 1 }],
        }) as any,
      );
      assert.fail('should throw');
    } catch (e) {
      assert.ok(e instanceof PolicyValidationError);
      const all = e.problems.join('\n');
      assert.match(all, /spec\.endpointSelector\.matchExpressions\[0\]\.operator: "Near"/);
      assert.match(all, /spec\.ingress\[0\]\.fromEntities\[0\]: "moon"/);
      assert.match(all, /spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: port "99999"/);
      assert.match(all, /spec\.ingress\[0\]\.toPorts\[0\]\.ports\[1\]\.protocol: "XTP"/);
      assert.match(all, /spec\.egress\[0\]\.toCIDRSet\[0\]\.except\[0\]: "11\.0\.0\.0\/16" is not inside 10\.0\.0\.0\/8/);
      assert.match(all, /spec\.egress\[0\]\.bogus: unknown field/);
    }
  });

  it('scopes CNP selectors to the namespace unless they name one; CCNP does not', () => {
    const [r] = translatePolicy({ ...cnp('x', { endpointSelector: {}, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'a' } }, { matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'y' } }] }] }), metadata: { name: 'n', namespace: 'x' } } as any);
    assert.deepEqual(r.subject.requirements.map((q) => `${q.key}=${q.values}`), ['io.kubernetes.pod.namespace=x']);
    assert.equal(r.ingress[0].peers.selectors[0].requirements.length, 2);
    assert.deepEqual(r.ingress[0].peers.selectors[1].requirements.map((q) => q.values[0]), ['y']);
    const [c] = translatePolicy({ apiVersion: 'cilium.io/v2', kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'c' }, spec: { endpointSelector: {}, ingress: [{}] } } as any);
    assert.equal(c.subject.requirements.length, 0);
  });
});

describe('policy semantics (map state)', () => {
  it('CNP ingress: [{}] enables default deny and allows nothing; KNP ingress: [{}] allows everything', () => {
    const w = world();
    const a = w.pod('x', { app: 'a' });
    const b = w.pod('x', { app: 'b' });
    w.apply(cnp('x', { endpointSelector: { matchLabels: { app: 'a' } }, ingress: [{}] }));
    assert.equal(w.verdict(a, b.id, 'ingress', TCP, 80).reason, 133);
    assert.equal(w.verdict(a, 1, 'ingress', TCP, 80).allowed, true, 'the host may always reach local pods');
    assert.equal(w.verdict(a, b.id, 'egress', TCP, 80).allowed, true, 'egress not enforced');
    const w2 = world();
    const a2 = w2.pod('x', { app: 'a' });
    const b2 = w2.pod('y', { app: 'b' });
    w2.apply(knp('x', { podSelector: { matchLabels: { app: 'a' } }, ingress: [{}] }));
    assert.equal(w2.verdict(a2, b2.id, 'ingress', UDP, 53).allowed, true);
    assert.equal(w2.verdict(a2, 2, 'ingress', TCP, 1).allowed, true, 'even from the world');
  });

  it('KNP policyTypes: Ingress with no rules denies all ingress; egress rules alone enforce egress', () => {
    const w = world();
    const a = w.pod('x', { app: 'a' });
    const b = w.pod('x', { app: 'b' });
    w.apply(knp('x', { podSelector: {}, policyTypes: ['Ingress'] }));
    assert.equal(w.verdict(a, b.id, 'ingress', TCP, 80).reason, 133);
    assert.equal(w.verdict(a, b.id, 'egress', TCP, 80).allowed, true);
    w.apply(knp('x', { podSelector: { matchLabels: { app: 'b' } }, egress: [{ to: [{ podSelector: { matchLabels: { app: 'a' } } }], ports: [{ port: 80 }] }] }));
    assert.equal(w.verdict(b, a.id, 'egress', TCP, 80).allowed, true);
    assert.equal(w.verdict(b, a.id, 'egress', UDP, 80).reason, 133, 'KNP ports default to TCP');
    assert.equal(w.verdict(b, a.id, 'egress', TCP, 81).reason, 133);
  });

  it('KNP policyTypes default as in Kubernetes: Egress only for a non-empty egress list; [] and null like omitted', () => {
    const enforced = (spec: any) => {
      const [r] = translatePolicy({ ...knp('x', spec), metadata: { name: 'n', namespace: 'x' } } as any);
      return `${r.defaultDeny.ingress ? 'I' : ''}${r.defaultDeny.egress ? 'E' : ''}`;
    };
    const to = [{ to: [{ podSelector: {} }] }];
    assert.equal(enforced({ podSelector: {} }), 'I');
    assert.equal(enforced({ podSelector: {}, egress: [] }), 'I');
    assert.equal(enforced({ podSelector: {}, egress: null }), 'I');
    assert.equal(enforced({ podSelector: {}, egress: to }), 'IE');
    assert.equal(enforced({ podSelector: {}, policyTypes: [] }), 'I');
    assert.equal(enforced({ podSelector: {}, policyTypes: null }), 'I');
    assert.equal(enforced({ podSelector: {}, policyTypes: [], egress: to }), 'IE');
    assert.equal(enforced({ podSelector: {}, policyTypes: ['Egress'] }), 'E');
    assert.equal(enforced({ podSelector: {}, policyTypes: ['Egress'], egress: [] }), 'E');
    assert.throws(() => enforced({ podSelector: {}, policyTypes: ['Ingress', 'Ingress'] }), /policyTypes\[1\]: "Ingress" is listed twice/);
  });

  it('KNP namespaceSelector, podSelector and both together', () => {
    const w = world();
    const target = w.pod('x', { app: 't' });
    const yA = w.pod('y', { app: 'a' }, { team: 'blue' });
    const yB = w.pod('y', { app: 'b' }, { team: 'blue' });
    const zA = w.pod('z', { app: 'a' }, { team: 'red' });
    const xA = w.pod('x', { app: 'a' });
    w.apply(knp('x', { podSelector: { matchLabels: { app: 't' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'blue' } }, podSelector: { matchLabels: { app: 'a' } } }] }] }));
    assert.equal(w.verdict(target, yA.id, 'ingress', TCP, 80).allowed, true);
    assert.equal(w.verdict(target, yB.id, 'ingress', TCP, 80).allowed, false);
    assert.equal(w.verdict(target, zA.id, 'ingress', TCP, 80).allowed, false);
    assert.equal(w.verdict(target, xA.id, 'ingress', TCP, 80).allowed, false);
    w.apply(knp('x', { podSelector: { matchLabels: { app: 't' } }, ingress: [{ from: [{ podSelector: {} }] }] }));
    assert.equal(w.verdict(target, xA.id, 'ingress', TCP, 80).allowed, true, 'podSelector alone: same namespace');
    assert.equal(w.verdict(target, zA.id, 'ingress', TCP, 80).allowed, false);
    w.apply(knp('x', { podSelector: { matchLabels: { app: 't' } }, ingress: [{ from: [{ namespaceSelector: {} }] }] }));
    assert.equal(w.verdict(target, zA.id, 'ingress', TCP, 80).allowed, true, 'namespaceSelector {}: every namespace');
    assert.equal(w.verdict(target, 2, 'ingress', TCP, 80).allowed, false, 'but not the world');
  });

  it('deny wins over allow, across identities and within one identity', () => {
    const w = world();
    const echo = w.pod('x', { kind: 'echo' });
    const client = w.pod('x', { kind: 'client', other: 'client' });
    const client2 = w.pod('x', { kind: 'client' });
    w.apply(cnp('x', { endpointSelector: {}, ingress: [{ fromEntities: ['all'] }] }));
    w.apply(cnp('x', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingressDeny: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }] }] }));
    assert.equal(w.verdict(echo, client.id, 'ingress', TCP, 8080).reason, 181);
    assert.equal(w.verdict(echo, client2.id, 'ingress', TCP, 8080).allowed, true);
    // same identity: an allow on one port under a deny on all ports must not be installed
    w.apply(cnp('x', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingress: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] }));
    assert.equal(w.verdict(echo, client.id, 'ingress', TCP, 8080).reason, 181);
    const entries = [...w.engine.compute({ identity: echo.id, labels: echo.labels, namedPorts: {} }).entries.values()];
    assert.ok(!entries.some((e) => e.identity === client.id && !e.deny), 'no allow entry for the denied identity');
  });

  it('a deny-only policy still turns default deny on (connectivity scenario 15)', () => {
    const w = world();
    const c = w.pod('x', { kind: 'client' });
    w.apply(cnp('x', { endpointSelector: { matchLabels: { kind: 'client' } }, egressDeny: [{ toCIDRSet: [{ cidr: '192.0.2.0/24', except: ['192.0.2.10/32'] }] }] }));
    const in24 = w.cidrs.get('192.0.2.0/24')!;
    const ex = w.cidrs.get('192.0.2.10/32')!;
    assert.ok(in24 && ex, 'CIDR identities allocated for the prefix and its except');
    assert.equal(w.verdict(c, in24, 'egress', TCP, 80).reason, 181);
    assert.equal(w.verdict(c, ex, 'egress', TCP, 80).reason, 133);
  });

  it('CIDR rules select prefixes inside them (not excepts) and never pods; /0 also selects the world', () => {
    const w = world();
    const c = w.pod('x', { kind: 'client' });
    w.apply(cnp('x', { endpointSelector: {}, egress: [{ toCIDRSet: [{ cidr: '192.0.2.0/24', except: ['192.0.2.11/32'] }] }] }));
    w.apply(cnp('x', { endpointSelector: { matchLabels: { none: 'x' } }, egress: [{ toCIDR: ['192.0.2.10/32'] }] }));
    assert.equal(w.verdict(c, w.cidrs.get('192.0.2.10/32')!, 'egress', TCP, 80).allowed, true, '/32 inside the /24 is selected');
    assert.equal(w.verdict(c, w.cidrs.get('192.0.2.11/32')!, 'egress', TCP, 80).allowed, false);
    assert.equal(w.verdict(c, 2, 'egress', TCP, 80).allowed, false, 'world is not in 192.0.2.0/24');
    assert.equal(w.verdict(c, c.id, 'egress', TCP, 80).allowed, false, 'pods are never CIDR peers');
    const w2 = world();
    const c2 = w2.pod('x', { kind: 'client' });
    w2.apply(cnp('x', { endpointSelector: {}, egress: [{ toCIDR: ['0.0.0.0/0'] }] }));
    assert.equal(w2.verdict(c2, 2, 'egress', TCP, 80).allowed, true);
  });

  it('KNP ipBlock matches by address (pods included): address-block identities, except carved out, the endpoint switched to address lookups', () => {
    const w = world();
    const blocks = new Map<string, number>();
    w.engine.repo.onAddressBlock = (p, id) => (id === undefined ? blocks.delete(p) : blocks.set(p, id));
    const c = w.pod('x', { kind: 'client' });
    const server = w.pod('x', { kind: 'server' });
    w.apply(knp('x', { podSelector: { matchLabels: { kind: 'client' } }, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '10.200.0.0/24', except: ['10.200.0.7/32'] } }] }] }));
    assert.deepEqual([...blocks.keys()].sort(), ['10.200.0.0/24', '10.200.0.7/32']);
    assert.equal(w.cidrs.size, 0, 'no CIDR (ipcache) identities: ipBlocks live in mb_ipblock');
    const computed = w.engine.compute({ identity: c.id, labels: c.labels, namedPorts: {} });
    assert.equal(computed.addressRules, true);
    const inBlock = w.engine.repo.addressBlockIdentity('10.200.0.9')!;
    const excepted = w.engine.repo.addressBlockIdentity('10.200.0.7')!;
    assert.equal(inBlock, blocks.get('10.200.0.0/24'));
    assert.equal(excepted, blocks.get('10.200.0.7/32'), 'longest prefix');
    assert.equal(lookupVerdict(computed.entries, server.id, true, TCP, 80, inBlock).allowed, true, 'a pod inside the block, by its address');
    assert.equal(lookupVerdict(computed.entries, server.id, true, TCP, 80, excepted).allowed, false, 'the except');
    assert.equal(lookupVerdict(computed.entries, server.id, true, TCP, 80).allowed, false, 'not by its identity');
    assert.equal(w.engine.repo.addressBlockIdentity('10.201.0.1'), undefined);
  });

  it('entities: cluster, host, world, all', () => {
    const w = world();
    const c = w.pod('x', { kind: 'client' });
    const other = w.pod('y', { kind: 'echo' });
    w.apply(cnp('x', { endpointSelector: {}, egress: [{ toEntities: ['cluster'] }] }));
    assert.equal(w.verdict(c, other.id, 'egress', TCP, 80).allowed, true);
    assert.equal(w.verdict(c, 1, 'egress', TCP, 80).allowed, true, 'host is in the cluster');
    assert.equal(w.verdict(c, 2, 'egress', TCP, 80).allowed, false);
    w.apply(cnp('x', { endpointSelector: {}, egress: [{ toEntities: ['world'], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] }));
    assert.equal(w.verdict(c, 2, 'egress', TCP, 80).allowed, true);
    assert.equal(w.verdict(c, 2, 'egress', TCP, 443).allowed, false);
  });

  it('port ranges become prefixes; protocol ANY covers TCP, UDP and SCTP; ICMP types', () => {
    assert.deepEqual(portRangeToPrefixes(8080, 8087), [[8080, 13]]);
    assert.deepEqual(portRangeToPrefixes(80, 81), [[80, 15]]);
    assert.deepEqual(portRangeToPrefixes(1, 3), [[1, 16], [2, 15]]);
    const all = portRangeToPrefixes(1000, 2000);
    for (let p = 990; p < 2010; p++) {
      const hit = all.some(([v, bits]) => covers({ identity: 0, egress: false, protocol: 6, port: v, prefixLen: 48 + bits, deny: false, derivedFrom: [] } as PolicyEntry, { identity: 0, egress: false, protocol: 6, port: p, prefixLen: 64, deny: false, derivedFrom: [] }));
      assert.equal(hit, p >= 1000 && p <= 2000, `port ${p}`);
    }
    const w = world();
    const e = w.pod('x', { kind: 'echo' });
    const c = w.pod('x', { kind: 'client' });
    w.apply(cnp('x', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingress: [{ fromEndpoints: [{}], toPorts: [{ ports: [{ port: '8080', endPort: 8087 }] }] }, { fromEndpoints: [{}], icmps: [{ fields: [{ type: 8 }] }] }] }));
    assert.equal(w.verdict(e, c.id, 'ingress', TCP, 8083).allowed, true);
    assert.equal(w.verdict(e, c.id, 'ingress', UDP, 8087).allowed, true);
    assert.equal(w.verdict(e, c.id, 'ingress', TCP, 8088).allowed, false);
    assert.equal(w.verdict(e, c.id, 'ingress', ICMP, 8).allowed, true);
    assert.equal(w.verdict(e, c.id, 'ingress', ICMP, 13).allowed, false);
  });

  it('named ports resolve on the destination pod', () => {
    const w = world();
    const e = w.pod('x', { kind: 'echo' });
    const c = w.pod('x', { kind: 'client' });
    w.apply(cnp('x', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingress: [{ fromEndpoints: [{}], toPorts: [{ ports: [{ port: 'http-8080', protocol: 'TCP' }] }] }] }));
    const np = { 'http-8080': [{ port: 8080, protocol: 'TCP' as const }] };
    assert.equal(w.verdict(e, c.id, 'ingress', TCP, 8080, np).allowed, true);
    assert.equal(w.verdict(e, c.id, 'ingress', TCP, 8080, {}).allowed, false, 'unresolved name allows nothing');
  });

  it('enableDefaultDeny false makes a rule purely additive; enforcement modes always and never', () => {
    const w = world();
    const a = w.pod('x', { app: 'a' });
    const b = w.pod('x', { app: 'b' });
    w.apply(cnp('x', { endpointSelector: {}, enableDefaultDeny: { ingress: false }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'b' } }] }] }));
    assert.equal(w.verdict(a, 2, 'ingress', TCP, 80).allowed, true);
    w.engine.mode = 'always';
    w.engine.repo.revision++;
    assert.equal(w.verdict(b, a.id, 'egress', TCP, 80).allowed, false);
    w.engine.mode = 'never';
    w.engine.repo.revision++;
    w.apply(cnp('x', { endpointSelector: {}, ingressDeny: [{ fromEntities: ['all'] }] }));
    assert.equal(w.verdict(a, b.id, 'ingress', TCP, 80).allowed, true);
  });

  it('toServices selects the service\'s backends (selector services by pods, others by addresses)', () => {
    const w = world();
    const c = w.pod('x', { kind: 'client' });
    const web = w.pod('x', { app: 'web' });
    const other = w.pod('x', { app: 'other' });
    w.engine.repo.serviceResolver = (peer) =>
      peer.name === 'web'
        ? { selectors: [{ requirements: [{ key: 'app', source: 'k8s', operator: 'In', values: ['web'] }, { key: 'io.kubernetes.pod.namespace', source: 'k8s', operator: 'In', values: [peer.namespace] }] }], cidrs: [] }
        : peer.name === 'ext'
          ? { selectors: [], cidrs: ['192.0.2.50/32'] }
          : { selectors: [], cidrs: [] };
    w.apply(cnp('x', { endpointSelector: { matchLabels: { kind: 'client' } }, egress: [{ toServices: [{ k8sService: { serviceName: 'web' } }, { k8sService: { serviceName: 'ext', namespace: 'x' } }] }] }));
    assert.equal(w.verdict(c, web.id, 'egress', TCP, 80).allowed, true);
    assert.equal(w.verdict(c, other.id, 'egress', TCP, 80).allowed, false);
    assert.equal(w.verdict(c, w.cidrs.get('192.0.2.50/32')!, 'egress', TCP, 80).allowed, true);
    assert.throws(() => translatePolicy({ ...cnp('x', { endpointSelector: {}, egress: [{ toServices: [{ k8sService: {} }] }] }), metadata: { name: 'n', namespace: 'x' } } as any), /toServices\[0\]\.k8sService\.serviceName: is required/);
  });

  it('selections follow identities as they come and go', () => {
    const w = world();
    const e = w.pod('x', { kind: 'echo' });
    w.apply(cnp('x', { endpointSelector: { matchLabels: { kind: 'echo' } }, ingress: [{ fromEndpoints: [{ matchLabels: { other: 'client' } }] }] }));
    const late = w.pod('x', { other: 'client' });
    assert.equal(w.verdict(e, late.id, 'ingress', TCP, 80).allowed, true, 'an identity created after the rule is selected');
    w.ids.release(late.id);
    assert.equal(w.verdict(e, late.id, 'ingress', TCP, 80).allowed, false);
  });
});
