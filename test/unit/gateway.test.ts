import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { validateResources, ResourceValidationError } from '../../src/store/kinds';
import { hostnameScore, modifyHeaders, modifyPath, pickBackend, prefixMatches, redirectLocation, route, type GatewayRequest } from '../../src/gateway/match';
import { intersectHostnames, translateGateways, type GatewayInputs } from '../../src/gateway/translate';
import type { Resource } from '../../src/store/types';
import type { RouteMatch } from '../../src/gateway/model';
import { l7Summary } from '../../src/monitor/flow';
import { ConfigError, parseConfig } from '../../src/proxy/config';
import { parseAgentArgs } from '../../src/agent/config';
import { l7Text } from '../../ui/model';

const V1 = 'gateway.networking.k8s.io/v1';
let seq = 0;
const meta = (name: string, namespace?: string, extra: Record<string, unknown> = {}) => ({
  name,
  ...(namespace ? { namespace } : {}),
  generation: 1,
  creationTimestamp: `2026-01-01T00:00:${String(seq++).padStart(2, '0')}Z`,
  ...extra,
});
const gwClass: Resource = { apiVersion: V1, kind: 'GatewayClass', metadata: meta('membrane'), spec: { controllerName: 'membrane.io/gateway-controller' } };
const gateway = (listeners: unknown[], name = 'gw', ns = 'infra'): Resource => ({ apiVersion: V1, kind: 'Gateway', metadata: meta(name, ns), spec: { gatewayClassName: 'membrane', listeners } });
const httpRoute = (name: string, ns: string, spec: Record<string, unknown>, created?: string): Resource => ({
  apiVersion: V1,
  kind: 'HTTPRoute',
  metadata: { ...meta(name, ns), ...(created ? { creationTimestamp: created } : {}) },
  spec: { parentRefs: [{ name: 'gw', namespace: 'infra' }], ...spec },
});
const svc = (name: string, ns: string): Resource => ({ apiVersion: 'v1', kind: 'Service', metadata: meta(name, ns), spec: { ports: [{ port: 80 }] } });

function inputs(objs: Resource[], over: Partial<GatewayInputs> = {}): GatewayInputs {
  const of = (k: string) => objs.filter((o) => o.kind === k);
  return {
    classes: of('GatewayClass'),
    gateways: of('Gateway'),
    routes: of('HTTPRoute'),
    grants: of('ReferenceGrant'),
    namespaces: of('Namespace'),
    services: of('Service'),
    endpoints: (ns, name, port) => (port === 80 ? [{ ip: `10.0.0.${name.length}`, port: 8080 }] : undefined),
    address: () => '10.199.0.1',
    ...over,
  };
}

const req = (target: string, o: Partial<GatewayRequest> & { hdr?: Record<string, string> } = {}): GatewayRequest => ({
  method: o.method ?? 'GET',
  target,
  host: o.host ?? 'example.com',
  headers: new Map(Object.entries(o.hdr ?? {}).map(([k, v]) => [k.toLowerCase(), [v]])),
});

function served(objs: Resource[], r: GatewayRequest, port = 80): string | undefined {
  const t = translateGateways(inputs(objs)).tables.find((x) => x.port === port);
  const e = t && route(t, r);
  return e ? `${e.route}#${e.rule}` : undefined;
}

describe('Gateway API: resources', () => {
  it('accepts the four kinds, v1 and v1beta1', () => {
    const out = validateResources([
      gwClass,
      gateway([{ name: 'http', port: 80, protocol: 'HTTP', hostname: '*.example.com', allowedRoutes: { namespaces: { from: 'All' } } }]),
      httpRoute('r', 'app', { hostnames: ['a.example.com'], rules: [{ matches: [{ path: { type: 'Exact', value: '/x' }, headers: [{ name: 'X-A', value: '1' }], queryParams: [{ name: 'q', value: 'v' }], method: 'GET' }], filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplaceFullPath', replaceFullPath: '/y' } } }], backendRefs: [{ name: 's', port: 80, weight: 3 }] }] }),
      httpRoute('r2', 'app', { rules: [{ filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/v2' } } }], backendRefs: [{ name: 's', port: 80 }] }, { filters: [{ type: 'RequestRedirect', requestRedirect: { scheme: 'https' } }], backendRefs: [{ name: 's', port: 80 }] }] }),
      { apiVersion: 'gateway.networking.k8s.io/v1beta1', kind: 'ReferenceGrant', metadata: { name: 'g', namespace: 'b' }, spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'app' }], to: [{ group: '', kind: 'Service' }] } },
    ]);
    assert.equal(out.length, 5, 'no matches is PathPrefix "/" (ReplacePrefixMatch allowed); a redirect rule may name backends (unused)');
  });

  it('names the field and value of every problem', () => {
    try {
      validateResources([
        gateway([{ name: 'http', port: 70000, protocol: 'HTTPS' }]),
        httpRoute('r', 'app', {
          hostnames: ['Bad_Host'],
          rules: [
            {
              matches: [{ path: { type: 'RegularExpression', value: '/.*' }, method: 'FETCH' }, { path: { type: 'Exact', value: '/e' } }],
              filters: [{ type: 'RequestRedirect', requestRedirect: { statusCode: 200, path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/p' } } }, { type: 'RequestMirror' }],
              backendRefs: [{ name: 's', weight: -1 }],
            },
          ],
        }),
        { apiVersion: 'gateway.networking.k8s.io/v2', kind: 'GatewayClass', metadata: { name: 'c' }, spec: { controllerName: 'x' } },
        { apiVersion: V1, kind: 'GatewayClass', metadata: { name: 'd' }, spec: { controllerName: 'x' } },
      ]);
      assert.fail('accepted');
    } catch (e) {
      assert.ok(e instanceof ResourceValidationError);
      const all = e.problems.join('\n');
      for (const want of [
        'Gateway/infra/gw: spec.listeners[0].port: 70000 must be a port number 1-65535',
        'Gateway/infra/gw: spec.listeners[0].protocol: "HTTPS" is not supported (only HTTP)',
        'HTTPRoute/app/r: spec.hostnames[0]: "Bad_Host" is not a hostname',
        'HTTPRoute/app/r: spec.rules[0].matches[0].path.type: not supported: RegularExpression',
        'HTTPRoute/app/r: spec.rules[0].matches[0].method: "FETCH" is not one of',
        'HTTPRoute/app/r: spec.rules[0].filters[0].requestRedirect.statusCode: 200 is not one of 301, 302, 303, 307, 308',
        'HTTPRoute/app/r: spec.rules[0].filters[1].type: not supported: RequestMirror',
        'HTTPRoute/app/r: spec.rules[0].filters[0].requestRedirect.path.type: ReplacePrefixMatch needs a rule whose every match is a PathPrefix match',
        'HTTPRoute/app/r: spec.rules[0].backendRefs[0].port: is required',
        'HTTPRoute/app/r: spec.rules[0].backendRefs[0].weight: -1 must be an integer 0-1000000',
        'GatewayClass/c: apiVersion: "gateway.networking.k8s.io/v2" must be gateway.networking.k8s.io/v1 or gateway.networking.k8s.io/v1beta1',
        'GatewayClass/d: spec.controllerName: "x" is not a domain-prefixed path',
      ]) assert.ok(all.includes(want), `missing: ${want}\nin:\n${all}`);
    }
  });
});

describe('Gateway API: matching (specification cases)', () => {
  it('PathPrefix matches whole segments, a trailing slash of the prefix is ignored', () => {
    assert.ok(prefixMatches('/abc', '/abc'));
    assert.ok(prefixMatches('/abc', '/abc/'));
    assert.ok(prefixMatches('/abc', '/abc/def'));
    assert.ok(!prefixMatches('/abc', '/abcd'));
    assert.ok(prefixMatches('/abc/', '/abc'));
    assert.ok(prefixMatches('/abc/', '/abc/x'));
    assert.ok(prefixMatches('/', '/anything'));
  });

  it('hostnames: exact, wildcards (one or more labels, never the bare suffix)', () => {
    assert.ok(hostnameScore('foo.example.com', 'foo.example.com') > 0);
    assert.ok(hostnameScore('*.example.com', 'foo.example.com') > 0);
    assert.ok(hostnameScore('*.example.com', 'a.b.example.com') > 0);
    assert.equal(hostnameScore('*.example.com', 'example.com'), -1);
    assert.equal(hostnameScore('foo.example.com', 'bar.example.com'), -1);
    assert.deepEqual(intersectHostnames('*.example.com', ['foo.example.com', 'foo.other.com']), ['foo.example.com']);
    assert.deepEqual(intersectHostnames('foo.example.com', ['*.example.com']), ['foo.example.com']);
    assert.deepEqual(intersectHostnames('*.example.com', ['*.a.example.com']), ['*.a.example.com']);
    assert.deepEqual(intersectHostnames('*.a.example.com', ['*.example.com']), ['*.a.example.com']);
    assert.equal(intersectHostnames('foo.example.com', ['bar.example.com']), undefined);
    assert.deepEqual(intersectHostnames(undefined, []), []);
  });

  it('Exact, headers (case-insensitive names), query parameters and method; matches of a rule are alternatives', () => {
    const objs = [
      gwClass,
      gateway([{ name: 'http', port: 80, protocol: 'HTTP', allowedRoutes: { namespaces: { from: 'All' } } }]),
      svc('s', 'app'),
      httpRoute('r', 'app', {
        rules: [
          { matches: [{ path: { type: 'Exact', value: '/exact' } }], backendRefs: [{ name: 's', port: 80 }] },
          { matches: [{ path: { value: '/h' }, headers: [{ name: 'X-Version', value: 'v2' }] }, { path: { value: '/h' }, queryParams: [{ name: 'v', value: '2' }] }], backendRefs: [{ name: 's', port: 80 }] },
          { matches: [{ path: { value: '/m' }, method: 'POST' }], backendRefs: [{ name: 's', port: 80 }] },
        ],
      }),
    ];
    assert.equal(served(objs, req('/exact')), 'app/r#0');
    assert.equal(served(objs, req('/exact/')), undefined);
    assert.equal(served(objs, req('/exact?x=1')), 'app/r#0');
    assert.equal(served(objs, req('/h', { hdr: { 'x-VERSION': 'v2' } })), 'app/r#1');
    assert.equal(served(objs, req('/h', { hdr: { 'x-version': 'V2' } })), undefined, 'values are exact');
    assert.equal(served(objs, req('/h/x?a=b&v=2')), 'app/r#1');
    assert.equal(served(objs, req('/h?v=3')), undefined);
    assert.equal(served(objs, req('/m', { method: 'POST' })), 'app/r#2');
    assert.equal(served(objs, req('/m', { method: 'GET' })), undefined);
  });

  it('precedence: Exact, longest prefix, method, most headers, most query params, oldest route, name, rule order', () => {
    const objs = [
      gwClass,
      gateway([{ name: 'http', port: 80, protocol: 'HTTP', allowedRoutes: { namespaces: { from: 'All' } } }]),
      svc('s', 'app'),
      httpRoute('newer', 'app', { rules: [{ matches: [{ path: { value: '/a' } }], backendRefs: [{ name: 's', port: 80 }] }] }, '2026-02-01T00:00:00Z'),
      httpRoute('older', 'app', {
        rules: [
          { matches: [{ path: { value: '/a' } }], backendRefs: [{ name: 's', port: 80 }] },
          { matches: [{ path: { value: '/a/b' } }], backendRefs: [{ name: 's', port: 80 }] },
          { matches: [{ path: { type: 'Exact', value: '/a/b' } }], backendRefs: [{ name: 's', port: 80 }] },
          { matches: [{ path: { value: '/a' }, method: 'PUT' }], backendRefs: [{ name: 's', port: 80 }] },
          { matches: [{ path: { value: '/a' }, method: 'PUT', headers: [{ name: 'x', value: '1' }] }], backendRefs: [{ name: 's', port: 80 }] },
          { matches: [{ path: { value: '/a' }, method: 'PUT', headers: [{ name: 'x', value: '1' }], queryParams: [{ name: 'q', value: '1' }] }], backendRefs: [{ name: 's', port: 80 }] },
          { matches: [{ path: { value: '/a' } }], backendRefs: [{ name: 's', port: 80 }] },
        ],
      }, '2026-01-15T00:00:00Z'),
      httpRoute('aaa', 'app', { rules: [{ matches: [{ path: { value: '/z' } }], backendRefs: [{ name: 's', port: 80 }] }] }, '2026-03-01T00:00:00Z'),
      httpRoute('bbb', 'app', { rules: [{ matches: [{ path: { value: '/z' } }], backendRefs: [{ name: 's', port: 80 }] }] }, '2026-03-01T00:00:00Z'),
    ];
    assert.equal(served(objs, req('/a/b')), 'app/older#2', 'Exact first');
    assert.equal(served(objs, req('/a/b/c')), 'app/older#1', 'longest prefix');
    assert.equal(served(objs, req('/a', { method: 'PUT' })), 'app/older#3', 'method');
    assert.equal(served(objs, req('/a', { method: 'PUT', hdr: { x: '1' } })), 'app/older#4', 'more headers');
    assert.equal(served(objs, req('/a?q=1', { method: 'PUT', hdr: { x: '1' } })), 'app/older#5', 'more query params');
    assert.equal(served(objs, req('/a')), 'app/older#0', 'oldest route, then the first rule');
    assert.equal(served(objs, req('/z')), 'app/aaa#0', 'same age: alphabetical');
    assert.equal(served(objs, req('/nothing')), undefined, '404');
  });

  it('hostnames: the most specific listener and route hostname win; no hostname match is a 404', () => {
    const objs = [
      gwClass,
      gateway([
        { name: 'wild', port: 80, protocol: 'HTTP', hostname: '*.example.com', allowedRoutes: { namespaces: { from: 'All' } } },
        { name: 'foo', port: 80, protocol: 'HTTP', hostname: 'foo.example.com', allowedRoutes: { namespaces: { from: 'All' } } },
      ]),
      svc('s', 'app'),
      httpRoute('any', 'app', { rules: [{ backendRefs: [{ name: 's', port: 80 }] }] }),
      httpRoute('bar', 'app', { hostnames: ['bar.example.com'], rules: [{ matches: [{ path: { value: '/' } }], backendRefs: [{ name: 's', port: 80 }] }] }),
    ];
    const t = translateGateways(inputs(objs)).tables[0];
    const who = (host: string) => {
      const e = route(t, req('/x', { host }));
      return e && `${e.route}@${e.listener}`;
    };
    assert.equal(who('foo.example.com'), 'app/any@foo');
    assert.equal(who('bar.example.com:80'), 'app/bar@wild');
    assert.equal(who('baz.example.com'), 'app/any@wild');
    assert.equal(who('example.com'), undefined);
    assert.equal(who('other.org'), undefined);
  });

  it('weighted backends: weight 0 gets nothing, all zero gets none', () => {
    const bs = [
      { name: 'a', weight: 1, endpoints: [] },
      { name: 'z', weight: 0, endpoints: [] },
      { name: 'b', weight: 3, endpoints: [] },
    ];
    const counts: Record<string, number> = {};
    for (let i = 0; i < 1000; i++) {
      const b = pickBackend(bs, i / 1000)!;
      counts[b.name] = (counts[b.name] ?? 0) + 1;
    }
    assert.deepEqual(counts, { a: 250, b: 750 });
    assert.equal(pickBackend([{ name: 'z', weight: 0, endpoints: [] }], 0.5), undefined);
  });

  it('URLRewrite / RequestRedirect path modifiers, as the specification tabulates ReplacePrefixMatch', () => {
    const m = (prefix: string): RouteMatch => ({ path: { type: 'PathPrefix', value: prefix }, headers: [], queryParams: [] });
    const cases: [string, string, string, string][] = [
      ['/foo/bar', '/foo', '/xyz', '/xyz/bar'],
      ['/foo/bar', '/foo', '/xyz/', '/xyz/bar'],
      ['/foo/bar', '/foo/', '/xyz', '/xyz/bar'],
      ['/foo/bar', '/foo/', '/xyz/', '/xyz/bar'],
      ['/foo', '/foo', '/xyz', '/xyz'],
      ['/foo/', '/foo', '/xyz', '/xyz/'],
      ['/foo/bar', '/foo', '', '/bar'],
      ['/foo/', '/foo', '', '/'],
      ['/foo', '/foo', '', '/'],
      ['/foo/', '/foo', '/', '/'],
      ['/foo', '/foo', '/', '/'],
    ];
    for (const [path, prefix, repl, want] of cases) assert.equal(modifyPath({ type: 'ReplacePrefixMatch', replacePrefixMatch: repl }, m(prefix), path), want, `${path} ${prefix} -> ${repl}`);
    assert.equal(modifyPath({ type: 'ReplaceFullPath', replaceFullPath: '/full' }, m('/foo'), '/foo/bar'), '/full');
  });

  it('RequestRedirect Location: scheme, hostname, port (well-known ports omitted), path; the query is kept', () => {
    const m: RouteMatch = { path: { type: 'PathPrefix', value: '/old' }, headers: [], queryParams: [] };
    const r = req('/old/x?q=1', { host: 'a.example.com:8080' });
    assert.equal(redirectLocation({ scheme: 'https' }, m, r, 8080), 'https://a.example.com/old/x?q=1');
    assert.equal(redirectLocation({ hostname: 'b.example.com' }, m, r, 8080), 'http://b.example.com:8080/old/x?q=1');
    assert.equal(redirectLocation({ hostname: 'b.example.com' }, m, r, 80), 'http://b.example.com/old/x?q=1');
    assert.equal(redirectLocation({ port: 9090 }, m, r, 80), 'http://a.example.com:9090/old/x?q=1');
    assert.equal(redirectLocation({ path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/new' } }, m, r, 80), 'http://a.example.com/new/x?q=1');
    assert.equal(redirectLocation({ scheme: 'https', port: 8443, path: { type: 'ReplaceFullPath', replaceFullPath: '/p' } }, m, r, 80), 'https://a.example.com:8443/p?q=1');
  });

  it('header modifiers: set replaces, add appends, remove drops (names case-insensitive)', () => {
    const raw = ['Host', 'h', 'X-A', '1', 'x-b', '2', 'X-C', '3'];
    assert.deepEqual(modifyHeaders(raw, { set: [{ name: 'x-a', value: 'one' }], add: [{ name: 'X-B', value: 'two' }, { name: 'X-New', value: 'n' }], remove: ['x-c'] }), [
      'Host', 'h', 'x-b', '2,two', 'x-a', 'one', 'X-New', 'n',
    ]);
  });
});

describe('Gateway API: attachment, references and status', () => {
  const base = [gwClass, { apiVersion: 'v1', kind: 'Namespace', metadata: meta('app', undefined, { labels: { team: 'a' } }) } as Resource, svc('s', 'app'), svc('s', 'other')];

  it('GatewayClass Accepted; Gateway Accepted/Programmed with its address, listener conditions and attached routes', () => {
    const objs = [...base, gateway([{ name: 'http', port: 80, protocol: 'HTTP', allowedRoutes: { namespaces: { from: 'All' } } }, { name: 'alt', port: 8080, protocol: 'HTTP' }]), httpRoute('r', 'app', { rules: [{ backendRefs: [{ name: 's', port: 80 }] }] })];
    const t = translateGateways(inputs(objs));
    const st = (k: string) => t.status.find((s) => s.kind === k)!.status as any;
    assert.deepEqual(st('GatewayClass').conditions.map((c: any) => [c.type, c.status]), [['Accepted', 'True']]);
    const g = st('Gateway');
    assert.deepEqual(g.addresses, [{ type: 'IPAddress', value: '10.199.0.1' }]);
    assert.deepEqual(g.conditions.map((c: any) => [c.type, c.status, c.reason]), [['Accepted', 'True', 'Accepted'], ['Programmed', 'True', 'Programmed']]);
    assert.deepEqual(g.listeners.map((l: any) => [l.name, l.attachedRoutes]), [['http', 1], ['alt', 0]]);
    assert.deepEqual(g.listeners[0].conditions.map((c: any) => c.type), ['Accepted', 'Programmed', 'ResolvedRefs', 'Conflicted']);
    assert.deepEqual(t.tables.map((x) => x.port), [80, 8080]);
    const noAddr = translateGateways(inputs(objs, { address: () => ({ reason: 'AddressNotAssigned', message: 'pool exhausted' }) }));
    const g2 = noAddr.status.find((s) => s.kind === 'Gateway')!.status as any;
    assert.deepEqual(g2.conditions[1].reason, 'AddressNotAssigned');
    assert.equal(noAddr.tables.length, 0);
    // Another controller's class: nothing.
    const other = translateGateways(inputs([{ ...gwClass, spec: { controllerName: 'example.com/other' } }, ...objs.slice(1)]));
    assert.equal(other.status.length, 0);
  });

  it('HTTPRoute parents: Accepted, NotAllowedByListeners, NoMatchingListenerHostname, NoMatchingParent', () => {
    const gw = gateway([
      { name: 'same', port: 80, protocol: 'HTTP', hostname: 'x.example.com' },
      { name: 'sel', port: 81, protocol: 'HTTP', allowedRoutes: { namespaces: { from: 'Selector', selector: { matchLabels: { team: 'a' } } } } },
    ]);
    const parent = (r: Resource, ref: Record<string, unknown>) => ({ ...r, spec: { ...r.spec, parentRefs: [{ name: 'gw', namespace: 'infra', ...ref }] } });
    const r = httpRoute('r', 'app', { rules: [{ backendRefs: [{ name: 's', port: 80 }] }] });
    const reason = (objs: Resource[]) => ((translateGateways(inputs(objs)).status.find((s) => s.kind === 'HTTPRoute')!.status as any).parents[0].conditions[0] as any).reason;
    assert.equal(reason([...base, gw, parent(r, { sectionName: 'same' })]), 'NotAllowedByListeners');
    assert.equal(reason([...base, gw, parent(r, { sectionName: 'sel' })]), 'Accepted');
    assert.equal(reason([...base, gw, parent({ ...r, metadata: { ...r.metadata, namespace: 'other' } }, { sectionName: 'sel' })]), 'NotAllowedByListeners');
    assert.equal(reason([...base, gw, parent(r, { sectionName: 'nope' })]), 'NoMatchingParent');
    const inInfra = { ...r, metadata: { ...r.metadata, namespace: 'infra' }, spec: { ...r.spec, hostnames: ['y.example.com'], rules: [] } };
    assert.equal(reason([...base, gw, parent(inInfra, { sectionName: 'same' })]), 'NoMatchingListenerHostname');
  });

  it('ResolvedRefs: BackendNotFound, RefNotPermitted until a ReferenceGrant, InvalidKind; unresolved backends are kept for their 500 share', () => {
    const gw = gateway([{ name: 'http', port: 80, protocol: 'HTTP', allowedRoutes: { namespaces: { from: 'All' } } }]);
    const resolved = (objs: Resource[]) => {
      const t = translateGateways(inputs(objs));
      const c = (t.status.find((s) => s.kind === 'HTTPRoute')!.status as any).parents[0].conditions[1];
      return { reason: c.reason, backends: t.tables[0].entries[0].backends };
    };
    const r = (refs: unknown[]) => httpRoute('r', 'app', { rules: [{ backendRefs: refs }] });
    assert.equal(resolved([...base, gw, r([{ name: 's', port: 80 }])]).reason, 'ResolvedRefs');
    const nf = resolved([...base, gw, r([{ name: 'missing', port: 80, weight: 1 }, { name: 's', port: 80, weight: 1 }])]);
    assert.equal(nf.reason, 'BackendNotFound');
    assert.ok(nf.backends[0].error && !nf.backends[1].error);
    assert.equal(resolved([...base, gw, r([{ name: 's', port: 81 }])]).reason, 'BackendNotFound');
    assert.equal(resolved([...base, gw, r([{ name: 's', namespace: 'other', port: 80 }])]).reason, 'RefNotPermitted');
    const grant: Resource = { apiVersion: V1, kind: 'ReferenceGrant', metadata: meta('g', 'other'), spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'app' }], to: [{ group: '', kind: 'Service', name: 's' }] } };
    assert.equal(resolved([...base, gw, grant, r([{ name: 's', namespace: 'other', port: 80 }])]).reason, 'ResolvedRefs');
    assert.equal(resolved([...base, gw, r([{ group: 'example.com', kind: 'Bucket', name: 'b' }])]).reason, 'InvalidKind');
  });
});

describe('Gateway API: flows', () => {
  it('an L7 record through a Gateway names its route and backend in the summary (observe) and the UI', () => {
    const r = {
      time: 0, kind: 'response' as const, direction: 'ingress' as const, verdict: 'forwarded' as const,
      src: { ip: '10.0.0.5', port: 8080, identity: 300 }, dst: { ip: '192.0.2.10', port: 40000, identity: 2 },
      http: { method: 'GET', url: 'http://gw/x', protocol: 'HTTP/1.1', code: 200, latencyNs: 2e6 },
      route: { gateway: 'default/web', route: 'default/r', backend: 'default/svc:80' },
    };
    assert.equal(l7Summary(r), 'HTTP/1.1 200 2ms (GET http://gw/x) via Gateway default/web route default/r -> default/svc:80');
    assert.equal(l7Text({ l7: { type: 'RESPONSE', http: r.http, route: r.route } } as any), 'GET /x 200 via default/web default/r -> default/svc:80');
  });
});

describe('Gateway API: proxy configuration', () => {
  it('an http-gateway listener needs its source address and its routes under gateways', () => {
    const base = { version: 1, generation: 1, node: 'n', policies: {}, endpoints: [] };
    const l = { name: 'gw-1', kind: 'http-gateway', address: '10.199.0.2', port: 80, protocol: 'tcp', transparent: false, sourceAddress: '10.199.0.1' };
    const table = { gateway: 'default/web', address: '10.199.0.2', port: 80, entries: [] };
    assert.ok(parseConfig({ ...base, listeners: [l, { ...l, name: 'gw-2', address: '10.199.0.3' }], gateways: { 'gw-1': table, 'gw-2': table } }));
    try {
      parseConfig({ ...base, listeners: [{ ...l, sourceAddress: 'x' }, { ...l, name: 'gw-2' }], gateways: { 'gw-1': { ...table, entries: [{}] } } });
      assert.fail('accepted');
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      const all = e.problems.join('\n');
      for (const f of ['listeners[0].sourceAddress: "x" is not an IPv4 address', 'gateways.gw-1.entries[0]: must be', 'listeners[1].port: 10.199.0.2:80 is used twice', 'gateways.gw-2: must be']) assert.ok(all.includes(f), `${f} in:\n${all}`);
    }
  });
});

describe('Gateway API: agent flag', () => {
  it('--gateway-address-pool: 10.199.0.0/24 by default, a bad or IPv6 pool is refused naming the flag', () => {
    assert.equal((parseAgentArgs([]) as { gatewayAddressPool: string }).gatewayAddressPool, '10.199.0.0/24');
    assert.equal((parseAgentArgs(["--gateway-address-pool", "172.31.7.0/28"]) as { gatewayAddressPool: string }).gatewayAddressPool, '172.31.7.0/28');
    assert.throws(() => parseAgentArgs(['--gateway-address-pool', '10.0.0.0/99']), /gateway-address-pool/);
    assert.throws(() => parseAgentArgs(['--gateway-address-pool', 'fd00::/64']), /gateway-address-pool: "fd00::\/64" must be IPv4/);
  });
});
