import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IdentityAllocator } from '../../src/identity/identity';
import { podSecurityLabels } from '../../src/identity/labels';
import { PolicyEngine } from '../../src/policy/engine';
import { applyHeaderActions, headerMap, HttpRequestView, L7Table } from '../../src/policy/l7';
import { lookupVerdict } from '../../src/policy/mapstate';
import { PolicyValidationError, translatePolicy } from '../../src/policy/translate';

const TCP = 6;

function world() {
  const ids = new IdentityAllocator();
  const engine = new PolicyEngine(ids, () => {});
  engine.proxyPorts = (egress) => (egress ? 15002 : 15001);
  const pod = (ns: string, labels: Record<string, string>) =>
    ids.acquireSync(podSecurityLabels({ namespace: ns, podLabels: labels, namespaceLabels: { 'kubernetes.io/metadata.name': ns } }));
  let n = 0;
  const apply = (o: any) => engine.repo.upsert({ ...o, metadata: { name: `p${n++}`, ...o.metadata } });
  const compute = (s: { id: number; labels: string[] }) => engine.compute({ identity: s.id, labels: s.labels, namedPorts: {} });
  return { ids, engine, pod, apply, compute };
}

const cnp = (ns: string, spec: any, name?: string) => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { namespace: ns, ...(name ? { name } : {}) }, spec });

function req(method: string, path: string, headers: Record<string, string | string[]> = {}): HttpRequestView {
  const raw: string[] = [];
  for (const [k, v] of Object.entries(headers)) for (const x of Array.isArray(v) ? v : [v]) raw.push(k, x);
  return { method, path, headers: headerMap(raw) };
}

function problems(o: any): string {
  try {
    translatePolicy(o);
  } catch (e) {
    assert.ok(e instanceof PolicyValidationError);
    return e.problems.join('\n');
  }
  assert.fail('should have been rejected');
}

describe('L7 policy translation', () => {
  it('accepts http rules in CNP and CCNP, ingress and egress, and attaches them to the toPorts ports (TCP)', () => {
    const rules = translatePolicy(
      cnp('x', {
        endpointSelector: { matchLabels: { app: 'api' } },
        ingress: [
          {
            fromEndpoints: [{ matchLabels: { app: 'web' } }],
            toPorts: [
              { ports: [{ port: '80', protocol: 'TCP' }, { port: 8080 }], rules: { http: [{ method: 'GET', path: '/api/.*' }, { method: 'POST', path: '/submit', headers: ['X-Token'] }] } },
              { ports: [{ port: '9090' }] },
            ],
          },
        ],
        egress: [{ toEndpoints: [{}], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }], rules: { http: [{ host: 'api\\.example\\.com', headerMatches: [{ name: 'X-Env', value: 'prod', mismatch: 'REPLACE' }] }] } }] }],
      }, 'l7') as any,
    );
    const ports = rules[0].ingress[0].ports!;
    assert.equal(ports.length, 3);
    assert.deepEqual(ports[0].l7?.http.map((r) => r.method), ['GET', 'POST']);
    assert.equal(ports[1].protocol, 'TCP', 'an L7 rule on protocol ANY applies to TCP');
    assert.equal(ports[2].l7, undefined);
    assert.deepEqual(rules[0].egress[0].ports![0].l7?.http[0].headerMatches, [{ name: 'X-Env', value: 'prod', mismatch: 'REPLACE' }]);
    const ccnp = translatePolicy({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumClusterwideNetworkPolicy',
      metadata: { name: 'c' },
      spec: { endpointSelector: {}, egress: [{ toEntities: ['world'], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }], rules: { http: [{}] } }] }] },
    } as any);
    assert.deepEqual(ccnp[0].egress[0].ports![0].l7, { http: [{}] });
  });

  it('rejects other L7 protocols, bad regular expressions, L7 on UDP or without a port, and L7 in deny rules, naming field and value', () => {
    const all = problems(
      cnp('x', {
        endpointSelector: {},
        ingress: [
          { toPorts: [{ ports: [{ port: '9092', protocol: 'TCP' }], rules: { kafka: [{ topic: 't' }] } }] },
          { toPorts: [{ ports: [{ port: '53', protocol: 'UDP' }], rules: { dns: [{ matchName: 'x' }] } }] },
          { toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }], rules: { http: [{ path: '/a(' }, { method: 7 }, { headers: ['bad(name): x'] }] } }] },
          { toPorts: [{ ports: [{ port: '80', protocol: 'UDP' }], rules: { http: [{ method: 'GET' }] } }] },
          { toPorts: [{ rules: { http: [{ method: 'GET' }] } }] },
          { toPorts: [{ ports: [{ port: '80' }], rules: { http: [{ headerMatches: [{ name: 'X', mismatch: 'SHOUT' }, { name: 'Y', secret: { name: 's' } }] }], l7proto: 'r2d2' } }] },
        ],
        ingressDeny: [{ toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }], rules: { http: [{}] } }] }],
      }, 'l7'),
    );
    assert.match(all, /ingress\[0\]\.toPorts\[0\]\.rules\.kafka: Kafka rules are not supported/);
    assert.match(all, /ingress\[1\]\.toPorts\[0\]\.rules\.dns: DNS rules apply to egress only/);
    assert.match(all, /ingress\[2\]\.toPorts\[0\]\.rules\.http\[0\]\.path: "\/a\(" is not a valid regular expression/);
    assert.match(all, /ingress\[2\]\.toPorts\[0\]\.rules\.http\[1\]\.method: must be a regular expression string, got 7/);
    assert.match(all, /ingress\[2\]\.toPorts\[0\]\.rules\.http\[2\]\.headers\[0\]: "bad\(name\): x"/);
    assert.match(all, /ingress\[3\]\.toPorts\[0\]\.ports\[0\]\.protocol: "UDP": HTTP rules apply to TCP ports only/);
    assert.match(all, /ingress\[4\]\.toPorts\[0\]\.rules: L7 rules need a port/);
    assert.match(all, /ingress\[5\]\.toPorts\[0\]\.rules\.http\[0\]\.headerMatches\[0\]\.mismatch: "SHOUT" is not one of LOG, ADD, DELETE, REPLACE/);
    assert.match(all, /ingress\[5\]\.toPorts\[0\]\.rules\.http\[0\]\.headerMatches\[1\]\.secret: header values from secrets are not supported/);
    assert.match(all, /ingress\[5\]\.toPorts\[0\]\.rules\.l7proto: generic L7 protocols are not supported/);
    assert.match(all, /ingressDeny\[0\]\.toPorts\[0\]\.rules: deny rules cannot carry L7 rules/);
  });
});

describe('L7 map state', () => {
  it('a port with L7 rules is a redirect entry; the same port without L7 rules for the same peer allows every request', () => {
    const w = world();
    const api = w.pod('x', { app: 'api' });
    const web = w.pod('x', { app: 'web' });
    const other = w.pod('x', { app: 'other' });
    w.apply(
      cnp('x', {
        endpointSelector: { matchLabels: { app: 'api' } },
        ingress: [
          { fromEndpoints: [{ matchLabels: { app: 'web' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }], rules: { http: [{ method: 'GET', path: '/public/.*' }] } }] },
          { fromEndpoints: [{ matchLabels: { app: 'other' } }], toPorts: [{ ports: [{ port: '81', protocol: 'TCP' }] }] },
        ],
      }),
    );
    const c = w.compute(api);
    const v = lookupVerdict(c.entries, web.id, false, TCP, 80);
    assert.ok(v.allowed && v.entry?.redirect, 'web -> api:80 is redirected');
    assert.equal(v.entry?.proxyPort, 15001, 'to the ingress listener');
    assert.ok(!lookupVerdict(c.entries, other.id, false, TCP, 81).entry?.redirect, 'a port without L7 rules is not redirected');
    assert.equal(lookupVerdict(c.entries, web.id, false, TCP, 81).allowed, false, 'L7 rules still need the L3/L4 part');
    const table = new L7Table(c.l7, false);
    assert.equal(table.decide(web.id, 80, req('GET', '/public/a')).allowed, true);
    const denied = table.decide(web.id, 80, req('POST', '/public/a'));
    assert.equal(denied.allowed, false);
    assert.deepEqual(denied.policies, ['CiliumNetworkPolicy/x/p0']);
    assert.equal(table.decide(web.id, 80, req('GET', '/public')).allowed, false, 'the path regex matches the whole path');
    assert.equal(new L7Table(c.l7, true).size, 0, 'nothing on egress');

    // Another rule allowing web on port 80 without L7 rules: every request passes (rules are alternatives).
    w.apply(cnp('x', { endpointSelector: { matchLabels: { app: 'api' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'web' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] }));
    const c2 = w.compute(api);
    assert.ok(lookupVerdict(c2.entries, web.id, false, TCP, 80).entry?.redirect, 'still redirected (visibility)');
    const d2 = new L7Table(c2.l7, false).decide(web.id, 80, req('DELETE', '/x'));
    assert.equal(d2.allowed, true);
    assert.deepEqual(d2.policies, ['CiliumNetworkPolicy/x/p1']);
  });

  it('a wildcard L7 rule and an identity-specific L4 rule: the L4 rule wins in the datapath and in the proxy', () => {
    const w = world();
    const api = w.pod('x', { app: 'api' });
    const web = w.pod('x', { app: 'web' });
    const admin = w.pod('x', { app: 'admin' });
    w.apply(
      cnp('x', {
        endpointSelector: { matchLabels: { app: 'api' } },
        ingress: [
          { toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }], rules: { http: [{ method: 'GET' }] } }] },
          { fromEndpoints: [{ matchLabels: { app: 'admin' } }] },
        ],
      }),
    );
    const c = w.compute(api);
    assert.ok(lookupVerdict(c.entries, web.id, false, TCP, 80).entry?.redirect);
    assert.ok(!lookupVerdict(c.entries, admin.id, false, TCP, 80).entry?.redirect, 'admin is allowed at L3: not redirected');
    const t = new L7Table(c.l7, false);
    assert.equal(t.decide(web.id, 80, req('POST', '/')).allowed, false);
    assert.equal(t.decide(admin.id, 80, req('POST', '/')).allowed, true, 'the proxy agrees (when it sees admin traffic, e.g. from an egress redirect)');
    assert.equal(t.decide(web.id, 9999, req('POST', '/')).unrestricted, true, 'no entry covers another port');
  });

  it('without the proxy ports an endpoint with L7 rules cannot get a policy (it fails closed)', () => {
    const w = world();
    const api = w.pod('x', { app: 'api' });
    w.engine.proxyPorts = undefined;
    w.apply(cnp('x', { endpointSelector: { matchLabels: { app: 'api' } }, ingress: [{ toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }], rules: { http: [{}] } }] }] }));
    assert.throws(() => w.compute(api), /L7 rules .* need the proxy/);
  });

  it('deny rules remove redirect entries; removing the L7 rule removes the redirect', () => {
    const w = world();
    const api = w.pod('x', { app: 'api' });
    const web = w.pod('x', { app: 'web' });
    w.apply({ ...cnp('x', { endpointSelector: { matchLabels: { app: 'api' } }, ingress: [{ toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }], rules: { http: [{}] } }] }] }), metadata: { name: 'a', namespace: 'x' } });
    assert.ok(lookupVerdict(w.compute(api).entries, web.id, false, TCP, 80).entry?.redirect);
    w.apply({ ...cnp('x', { endpointSelector: { matchLabels: { app: 'api' } }, ingressDeny: [{ fromEndpoints: [{ matchLabels: { app: 'web' } }] }] }), metadata: { name: 'd', namespace: 'x' } });
    const v = lookupVerdict(w.compute(api).entries, web.id, false, TCP, 80);
    assert.equal(v.allowed, false);
    w.engine.repo.delete({ kind: 'CiliumNetworkPolicy', metadata: { namespace: 'x', name: 'd' } });
    w.apply({ ...cnp('x', { endpointSelector: { matchLabels: { app: 'api' } }, ingress: [{ toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] }), metadata: { name: 'a', namespace: 'x' } });
    const c = w.compute(api);
    assert.ok(!lookupVerdict(c.entries, web.id, false, TCP, 80).entry?.redirect);
    assert.deepEqual(c.l7, []);
  });
});

describe('L7 request decisions', () => {
  const w = world();
  const api = w.pod('x', { app: 'api' });
  const web = w.pod('x', { app: 'web' });
  w.apply(
    cnp('x', {
      endpointSelector: { matchLabels: { app: 'web' } },
      egress: [
        {
          toEndpoints: [{ matchLabels: { app: 'api' } }],
          toPorts: [
            {
              ports: [{ port: '8080', protocol: 'TCP' }],
              rules: {
                http: [
                  { method: 'GET|HEAD', path: '/api/v[0-9]+/.*', host: 'api(\\.x)?(:8080)?' },
                  { method: 'PUT', headers: ['X-Token', 'X-Mode: write'] },
                  { method: 'PATCH', headerMatches: [{ name: 'X-Tenant', value: 'a' }] },
                  { method: 'POST', headerMatches: [{ name: 'X-Env', value: 'prod', mismatch: 'REPLACE' }, { name: 'X-Debug', mismatch: 'LOG' }] },
                  { method: 'DELETE', headerMatches: [{ name: 'X-Drop', value: 'no', mismatch: 'DELETE' }, { name: 'X-Add', value: '1', mismatch: 'ADD' }] },
                ],
              },
            },
          ],
        },
      ],
    }),
  );
  const t = new L7Table(w.compute(web).l7, true);

  it('method, path and host are whole-value regular expressions', () => {
    assert.equal(t.decide(api.id, 8080, req('GET', '/api/v1/items?x=1', { Host: 'api' })).allowed, true);
    assert.equal(t.decide(api.id, 8080, req('HEAD', '/api/v22/', { Host: 'api.x:8080' })).allowed, true);
    assert.equal(t.decide(api.id, 8080, req('GETX', '/api/v1/a', { Host: 'api' })).allowed, false);
    assert.equal(t.decide(api.id, 8080, req('GET', '/api/vX/a', { Host: 'api' })).allowed, false);
    assert.equal(t.decide(api.id, 8080, req('GET', '/api/v1/a', { Host: 'evil' })).allowed, false);
    assert.equal(t.decide(api.id, 8080, req('GET', '/api/v1/a')).allowed, false, 'no Host header');
  });

  it('headers must be present (with the exact value when one is given)', () => {
    assert.equal(t.decide(api.id, 8080, req('PUT', '/', { 'x-token': 'abc', 'X-Mode': 'write' })).allowed, true);
    assert.equal(t.decide(api.id, 8080, req('PUT', '/', { 'x-token': 'abc', 'X-Mode': 'read' })).allowed, false);
    assert.equal(t.decide(api.id, 8080, req('PUT', '/', { 'X-Mode': 'write' })).allowed, false);
  });

  it('headerMatches without an action deny on mismatch; with actions the request passes and is changed', () => {
    assert.equal(t.decide(api.id, 8080, req('PATCH', '/', { 'X-Tenant': 'a' })).allowed, true);
    assert.equal(t.decide(api.id, 8080, req('PATCH', '/', { 'X-Tenant': 'b' })).allowed, false);
    const post = t.decide(api.id, 8080, req('POST', '/', { 'X-Env': 'dev' }));
    assert.equal(post.allowed, true);
    assert.deepEqual(post.actions.map((a) => a.action), ['REPLACE', 'LOG']);
    assert.deepEqual(applyHeaderActions(['Host', 'api', 'X-Env', 'dev'], post.actions), ['Host', 'api', 'X-Env', 'prod']);
    const clean = t.decide(api.id, 8080, req('POST', '/', { 'X-Env': 'prod', 'X-Debug': '1' }));
    assert.deepEqual(clean.actions, [], 'a clean match needs no action');
    const del = t.decide(api.id, 8080, req('DELETE', '/', { 'X-Drop': 'yes' }));
    assert.deepEqual(applyHeaderActions(['X-Drop', 'yes', 'Host', 'h'], del.actions), ['Host', 'h', 'X-Add', '1']);
  });

  it('another identity or port is not covered by these entries', () => {
    assert.equal(t.decide(web.id, 8080, req('POST', '/')).unrestricted, true);
    assert.equal(t.decide(api.id, 8081, req('POST', '/')).unrestricted, true);
  });
});
