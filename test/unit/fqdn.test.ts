import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IdentityAllocator } from '../../src/identity/identity';
import { podSecurityLabels } from '../../src/identity/labels';
import { PolicyEngine } from '../../src/policy/engine';
import { decideDns, L7Table } from '../../src/policy/l7';
import { lookupVerdict } from '../../src/policy/mapstate';
import { PolicyValidationError, translatePolicy } from '../../src/policy/translate';
import { canonicalName, patternRegExp, selectorMatches } from '../../src/fqdn/pattern';

const TCP = 6;
const UDP = 17;

const cnp = (spec: any, name = 'dns') => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { namespace: 'x', name }, spec });

function problems(o: any): string {
  try {
    translatePolicy(o);
  } catch (e) {
    assert.ok(e instanceof PolicyValidationError);
    return e.problems.join('\n');
  }
  assert.fail('should have been rejected');
}

describe('DNS names and patterns (reference semantics)', () => {
  it('matchName: whole name, any case, trailing dot implied', () => {
    assert.ok(selectorMatches({ matchName: 'api.example.com' }, 'API.Example.com.'));
    assert.ok(selectorMatches({ matchName: 'api.example.com.' }, 'api.example.com'));
    assert.ok(!selectorMatches({ matchName: 'api.example.com' }, 'x.api.example.com'));
    assert.ok(!selectorMatches({ matchName: 'example.com' }, 'api.example.com'));
    assert.equal(canonicalName('A.b'), 'a.b.');
  });
  it('matchPattern: * matches within one label (also empty), a bare * matches every name', () => {
    const p = (pat: string, name: string) => selectorMatches({ matchPattern: pat }, name);
    assert.ok(p('*.example.com', 'a.example.com'));
    assert.ok(p('*.example.com', 'A-b_c.EXAMPLE.com.'));
    assert.ok(!p('*.example.com', 'example.com'));
    assert.ok(!p('*.example.com', 'a.b.example.com'));
    assert.ok(p('api*.example.com', 'api.example.com'));
    assert.ok(p('api*.example.com', 'api-v2.example.com'));
    assert.ok(!p('api*.example.com', 'web.example.com'));
    assert.ok(p('*.*.example.com', 'a.b.example.com'));
    assert.ok(p('*', 'anything.at.all'));
    assert.ok(p('*', 'com'));
    assert.ok(p('*', '.'));
    assert.ok(!p('*', 'a..b'));
    assert.ok(!p('a.example.com', 'aXexample.com'), 'a dot is a dot, not any character');
    assert.equal(patternRegExp('*.example.com').source, '^[-a-z0-9_]*\\.example\\.com\\.$');
  });
});

describe('DNS rules and toFQDNs translation', () => {
  it('accepts rules.dns on egress ports (ANY -> UDP and TCP) and toFQDNs with toPorts', () => {
    const rules = translatePolicy(
      cnp({
        endpointSelector: {},
        egress: [
          { toEntities: ['world'], toPorts: [{ ports: [{ port: '53', protocol: 'ANY' }], rules: { dns: [{ matchName: 'api.example.com' }, { matchPattern: '*.example.org' }] } }] },
          { toFQDNs: [{ matchName: 'api.example.com' }, { matchPattern: '*.example.org' }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] },
          { toFQDNs: [{ matchPattern: '*' }] },
        ],
      }) as any,
    );
    const [dns, fq, all] = rules[0].egress;
    assert.deepEqual(dns.ports!.map((p) => p.protocol), ['UDP', 'TCP']);
    assert.deepEqual(dns.ports![0].l7, { http: [], dns: [{ matchName: 'api.example.com' }, { matchPattern: '*.example.org' }] });
    assert.deepEqual(fq.peers.fqdns, [{ matchName: 'api.example.com' }, { matchPattern: '*.example.org' }]);
    assert.equal(fq.peers.any, undefined, 'toFQDNs is a peer: the rule does not allow every peer');
    assert.equal(fq.ports![0].port, 8080);
    assert.deepEqual(all.peers.fqdns, [{ matchPattern: '*' }]);
  });

  it('rejects bad names and patterns, both or neither of matchName/matchPattern, mixing peers, deny and ingress use, naming field and value', () => {
    const all = problems(
      cnp({
        endpointSelector: {},
        egress: [
          { toFQDNs: [{ matchName: 'bad name!' }, { matchPattern: 'a.(b).com' }, { matchName: 'a.com', matchPattern: '*.a.com' }, {}, { matchName: 'x', other: 1 }] },
          { toFQDNs: [{ matchName: 'a.com' }], toEndpoints: [{}], toCIDR: ['1.2.3.4'] },
          { toEntities: ['world'], toPorts: [{ ports: [{ port: '53', protocol: 'SCTP' }], rules: { dns: [{ matchPattern: 'a..b' }, { matchName: 'ok.com' }] } }] },
          { toEntities: ['world'], toPorts: [{ ports: [{ port: '53' }], rules: { dns: [{ matchName: 'a' }], http: [{}] } }] },
          { toEntities: ['world'], toPorts: [{ ports: [{ port: '0' }], rules: { dns: [{ matchName: 'a' }] } }] },
        ],
        egressDeny: [{ toFQDNs: [{ matchName: 'a.com' }] }],
        ingress: [{ toFQDNs: [{ matchName: 'a.com' }] }, { toPorts: [{ ports: [{ port: '53' }], rules: { dns: [{ matchName: 'a' }] } }] }],
      }),
    );
    assert.match(all, /egress\[0\]\.toFQDNs\[0\]\.matchName: "bad name!" is not a DNS name/);
    assert.match(all, /egress\[0\]\.toFQDNs\[1\]\.matchPattern: "a\.\(b\)\.com" is not a DNS name pattern/);
    assert.match(all, /egress\[0\]\.toFQDNs\[2\]: takes only one of matchName and matchPattern/);
    assert.match(all, /egress\[0\]\.toFQDNs\[3\]: needs matchName or matchPattern/);
    assert.match(all, /egress\[0\]\.toFQDNs\[4\]\.other: unknown field/);
    assert.match(all, /egress\[1\]\.toFQDNs: cannot be combined with toEndpoints, toCIDR/);
    assert.match(all, /egress\[2\]\.toPorts\[0\]\.ports\[0\]\.protocol: "SCTP": DNS rules apply to UDP and TCP ports only/);
    assert.match(all, /egress\[2\]\.toPorts\[0\]\.rules\.dns\[0\]\.matchPattern: "a\.\.b" has an empty label/);
    assert.match(all, /egress\[3\]\.toPorts\[0\]\.rules: a toPorts entry takes HTTP or DNS rules, not both/);
    assert.match(all, /egress\[4\]\.toPorts\[0\]\.ports\[0\]\.port: DNS rules need a port/);
    assert.match(all, /egressDeny\[0\]\.toFQDNs: toFQDNs cannot be used in deny rules/);
    assert.match(all, /ingress\[0\]\.toFQDNs: toFQDNs is an egress peer/);
    assert.match(all, /ingress\[1\]\.toPorts\[0\]\.rules\.dns: DNS rules apply to egress only/);
  });
});

describe('DNS redirect entries, toFQDNs selections and DNS decisions', () => {
  function world() {
    const ids = new IdentityAllocator();
    const engine = new PolicyEngine(ids, () => {});
    engine.proxyPorts = (egress, kind) => (kind === 'dns' ? 15053 : egress ? 15002 : 15001);
    const pod = ids.acquireSync(podSecurityLabels({ namespace: 'x', podLabels: { app: 'c' }, namespaceLabels: {} }));
    return { ids, engine, pod };
  }

  it('a DNS rule makes UDP and TCP 53 redirect entries to the DNS listener; the proxy allows matching names only', () => {
    const w = world();
    w.engine.repo.upsert(
      cnp({
        endpointSelector: { matchLabels: { app: 'c' } },
        egress: [{ toEntities: ['world'], toPorts: [{ ports: [{ port: '53', protocol: 'ANY' }], rules: { dns: [{ matchPattern: '*.example.com' }] } }] }],
      }) as any,
    );
    const c = w.engine.compute({ identity: w.pod.id, labels: w.pod.labels, namedPorts: {} });
    for (const proto of [UDP, TCP]) {
      const v = lookupVerdict(c.entries, 2, true, proto, 53);
      assert.ok(v.allowed);
      assert.equal(v.entry!.proxyPort, 15053);
    }
    const t = new L7Table(c.l7, true);
    assert.equal(decideDns(t, 2, 53, UDP, 'a.example.com.').allowed, true);
    assert.deepEqual(decideDns(t, 2, 53, TCP, 'a.example.com').policies, ['CiliumNetworkPolicy/x/dns']);
    const denied = decideDns(t, 2, 53, UDP, 'evil.example.org.');
    assert.equal(denied.allowed, false);
    assert.deepEqual(denied.policies, ['CiliumNetworkPolicy/x/dns']);
  });

  it('toFQDNs selects the identities the FQDN cache has for matching names; the selectors in use are listed', () => {
    const w = world();
    let changes = 0;
    w.engine.repo.onFqdnSelectors = () => changes++;
    const learned = new Map<string, number[]>();
    w.engine.repo.fqdnIdentities = (sel) => learned.get(sel.matchName ?? sel.matchPattern!) ?? [];
    w.engine.repo.upsert(
      cnp({ endpointSelector: { matchLabels: { app: 'c' } }, egress: [{ toFQDNs: [{ matchName: 'api.example.com' }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] }) as any,
    );
    assert.equal(changes, 1);
    assert.deepEqual(w.engine.repo.fqdnSelectors(), [{ matchName: 'api.example.com' }]);
    let c = w.engine.compute({ identity: w.pod.id, labels: w.pod.labels, namedPorts: {} });
    assert.equal(lookupVerdict(c.entries, 300, true, TCP, 8080).allowed, false, 'nothing learned: nothing allowed');
    learned.set('api.example.com', [300]);
    w.engine.repo.revision++;
    c = w.engine.compute({ identity: w.pod.id, labels: w.pod.labels, namedPorts: {} });
    assert.equal(lookupVerdict(c.entries, 300, true, TCP, 8080).allowed, true);
    assert.equal(lookupVerdict(c.entries, 300, true, TCP, 8081).allowed, false);
    w.engine.repo.delete({ kind: 'CiliumNetworkPolicy', metadata: { namespace: 'x', name: 'dns' } });
    assert.deepEqual(w.engine.repo.fqdnSelectors(), []);
    assert.equal(changes, 2);
  });
});
