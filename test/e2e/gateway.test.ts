/**
 * Gateway API end to end: the real agent, plugin and proxy; echo backends
 * (test/helpers/httpd.ts, answering with the pod's name, path, host, method
 * and headers as JSON) in pod namespaces behind Services; curl and a
 * keep-alive load client from a world namespace outside the node and from a
 * pod, to the address the agent gave the Gateway from its default pool.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import YAML from 'yaml';
import { TestNode } from '../helpers/node';
import { REPO, inNs, sh, sleep } from '../helpers/sys';

const HTTPD = path.join(REPO, 'dist/test/helpers/httpd.js');
const LOAD = path.join(REPO, 'dist/test/helpers/httpload.js');
const V1 = 'gateway.networking.k8s.io/v1';

const pod = (name: string, namespace: string, labels: Record<string, string>) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace, labels } });
const service = (name: string, namespace: string, app: string) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace }, spec: { selector: { app }, ports: [{ port: 80, targetPort: 8080 }] } });
const httpRoute = (name: string, spec: Record<string, unknown>, namespace = 'default') => ({
  apiVersion: V1,
  kind: 'HTTPRoute',
  metadata: { name, namespace },
  spec: { parentRefs: [{ name: 'web', namespace: 'default' }], ...spec },
});
const to = (name: string, extra: Record<string, unknown> = {}) => ({ name, port: 80, ...extra });

interface Echo {
  pod?: string;
  method: string;
  url: string;
  host: string;
  remote: string;
  headers: string[];
}
interface Answer {
  code: number;
  body: string;
  headers: Record<string, string>;
  echo?: Echo;
}

/** curl from a namespace; the response head is parsed too. */
function curl(ns: string, url: string, args: string[] = []): Answer {
  const r = inNs(ns, 'curl', ['-s', '--max-time', '10', '-D', '-', ...args, url], 20_000);
  const text = r.stdout;
  const split = text.indexOf('\r\n\r\n');
  const head = split >= 0 ? text.slice(0, split) : text;
  const body = split >= 0 ? text.slice(split + 4) : '';
  const lines = head.split('\r\n');
  const code = Number(lines[0]?.split(' ')[1] ?? 0);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const c = l.indexOf(':');
    if (c > 0) headers[l.slice(0, c).toLowerCase()] = l.slice(c + 1).trim();
  }
  let echo: Echo | undefined;
  try {
    echo = JSON.parse(body);
  } catch {
    /* not an echo */
  }
  return { code, body, headers, echo };
}

const header = (e: Echo | undefined, name: string): string | undefined => {
  if (!e) return undefined;
  for (let i = 0; i + 1 < e.headers.length; i += 2) if (e.headers[i].toLowerCase() === name.toLowerCase()) return e.headers[i + 1];
  return undefined;
};

describe('Gateway API: Gateway and HTTPRoute through the proxy', () => {
  const node = new TestNode('gw');
  let gw = '';
  let client: ReturnType<TestNode['addPod']>;
  let a: ReturnType<TestNode['addPod']>;
  let b: ReturnType<TestNode['addPod']>;
  let c: ReturnType<TestNode['addPod']>;
  const applied: { kind: string; metadata: { name: string; namespace?: string } }[] = [];
  const apply = (...objs: { kind: string; metadata: { name: string; namespace?: string } }[]) => {
    node.apply(objs);
    for (const o of objs) if (!applied.some((x) => x.kind === o.kind && x.metadata.name === o.metadata.name && x.metadata.namespace === o.metadata.namespace)) applied.push(o);
  };
  const world = () => node.worldNs!;
  const get = (kind: string, name: string, ns?: string) => {
    const r = node.cli(['get', kind, name, ...(ns ? ['-n', ns] : []), '-o', 'yaml']);
    assert.equal(r.code, 0, r.stderr);
    return YAML.parse(r.stdout);
  };
  const httpd = async (ns: string, name: string) => {
    const p = node.own(spawn('ip', ['netns', 'exec', ns, 'env', `HTTPD_NAME=${name}`, process.execPath, HTTPD, '8080'], { stdio: ['ignore', 'pipe', 'inherit'] }));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`httpd in ${ns} did not start`)), 10_000);
      p.stdout!.once('data', () => {
        clearTimeout(t);
        resolve();
      });
    });
  };
  const load = (ns: string, url: string, args: string[]) => JSON.parse(inNs(ns, process.execPath, [LOAD, url, ...args], 60_000).stdout);

  before(async () => {
    await node.start({ world: true });
    node.apply([
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'other', labels: { team: 'other' } } },
      pod('client', 'default', { app: 'client' }),
      pod('echo-a', 'default', { app: 'echo-a' }),
      pod('echo-b', 'default', { app: 'echo-b' }),
      pod('echo-c', 'other', { app: 'echo-c' }),
      service('svc-a', 'default', 'echo-a'),
      service('svc-b', 'default', 'echo-b'),
      service('svc-c', 'other', 'echo-c'),
    ]);
    client = node.addPod('client');
    a = node.addPod('echo-a');
    b = node.addPod('echo-b');
    c = node.addPod('echo-c', { args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=other;K8S_POD_NAME=echo-c' });
    await Promise.all([httpd(a.ns, 'echo-a'), httpd(b.ns, 'echo-b'), httpd(c.ns, 'echo-c')]);
    node.apply([
      { apiVersion: V1, kind: 'GatewayClass', metadata: { name: 'membrane' }, spec: { controllerName: 'membrane.io/gateway-controller' } },
      {
        apiVersion: V1,
        kind: 'Gateway',
        metadata: { name: 'web', namespace: 'default' },
        spec: {
          gatewayClassName: 'membrane',
          listeners: [
            { name: 'http', port: 80, protocol: 'HTTP', allowedRoutes: { namespaces: { from: 'All' } } },
            { name: 'same', port: 8000, protocol: 'HTTP', hostname: '*.example.com' },
          ],
        },
      },
    ]);
    const st = get('gateway', 'web');
    gw = st.status?.addresses?.[0]?.value;
    assert.ok(gw, `the Gateway has an address: ${JSON.stringify(st.status)}`);
    // The world reaches the Gateway pool through the node.
    sh('ip', ['-n', world(), 'route', 'add', '10.199.0.0/24', 'via', '192.0.2.1']);
  });
  afterEach(() => {
    if (applied.length) node.delete(applied.splice(0).reverse());
  });
  after(async () => {
    await node.cleanup();
  });

  it('status: GatewayClass Accepted, Gateway Accepted and Programmed with its address from the default pool and listener conditions', () => {
    const gc = get('gatewayclass', 'membrane');
    assert.deepEqual(gc.status.conditions.map((x: any) => [x.type, x.status]), [['Accepted', 'True']]);
    const g = get('gateway', 'web');
    assert.match(g.status.addresses[0].value, /^10\.199\.0\.\d+$/);
    assert.deepEqual(g.status.conditions.map((x: any) => [x.type, x.status, x.reason]), [['Accepted', 'True', 'Accepted'], ['Programmed', 'True', 'Programmed']]);
    assert.deepEqual(g.status.listeners.map((l: any) => [l.name, l.attachedRoutes, l.conditions.find((x: any) => x.type === 'Programmed').status]), [['http', 0, 'True'], ['same', 0, 'True']]);
    assert.equal(curl(world(), `http://${gw}/`).code, 404, 'no route: 404');
    // spec.addresses: honoured inside the pool, AddressNotUsable outside it.
    const other = (name: string, value: string) => ({ apiVersion: V1, kind: 'Gateway', metadata: { name, namespace: 'default' }, spec: { gatewayClassName: 'membrane', addresses: [{ type: 'IPAddress', value }], listeners: [{ name: 'http', port: 80, protocol: 'HTTP' }] } });
    apply(other('pinned', '10.199.0.77'), other('outside', '192.0.2.99'));
    const pinned = get('gateway', 'pinned').status;
    assert.deepEqual(pinned.addresses, [{ type: 'IPAddress', value: '10.199.0.77' }]);
    assert.equal(curl(world(), 'http://10.199.0.77/').code, 404, 'the pinned address serves');
    const outside = get('gateway', 'outside').status.conditions.find((x: any) => x.type === 'Programmed');
    assert.deepEqual([outside.status, outside.reason], ['False', 'AddressNotUsable']);
    assert.match(node.cli(['get', 'gateway']).stdout, /pinned\s+membrane\s+10\.199\.0\.77\s+True/);
    assert.match(node.cli(['status']).stdout, /Gateways: +2 \(pool 10\.199\.0\.0\/24, upstreams from 10\.199\.0\.1\)/);
    // A deleted Gateway gives its address back: off the device and out of the ipcache.
    assert.ok(node.nodeExec('ip', ['-4', 'addr']).stdout.includes('10.199.0.77/32'));
    node.delete([applied.splice(applied.findIndex((o) => o.metadata.name === 'pinned'), 1)[0]]);
    assert.ok(!node.nodeExec('ip', ['-4', 'addr']).stdout.includes('10.199.0.77'), 'off the host device');
    assert.ok(!node.cli(['bpf', 'ipcache', 'list']).stdout.includes('10.199.0.77'), 'out of the ipcache');
  });

  it('matching from the world: path Exact and PathPrefix on segments, headers, query parameters, method; X-Forwarded-For keeps the client; the backend sees the ingress address', () => {
    apply(
      httpRoute('match', {
        rules: [
          { matches: [{ path: { type: 'Exact', value: '/exact' } }], backendRefs: [to('svc-a')] },
          { matches: [{ path: { type: 'PathPrefix', value: '/pre' } }], backendRefs: [to('svc-b')] },
          { matches: [{ path: { value: '/h' }, headers: [{ name: 'X-Version', value: 'v2' }] }, { path: { value: '/h' }, queryParams: [{ name: 'v', value: '2' }] }], backendRefs: [to('svc-b')] },
          { matches: [{ path: { value: '/h' } }], backendRefs: [to('svc-a')] },
          { matches: [{ path: { value: '/m' }, method: 'POST' }], backendRefs: [to('svc-b')] },
        ],
      }),
    );
    const r = curl(world(), `http://${gw}/exact`);
    assert.equal(r.code, 200, r.body);
    assert.equal(r.echo?.pod, 'echo-a');
    assert.equal(r.echo?.method, 'GET');
    assert.equal(header(r.echo, 'x-forwarded-for'), '192.0.2.10', 'the client address in X-Forwarded-For');
    assert.equal(r.echo?.remote.split(':')[0], '10.199.0.1', 'upstreams come from the ingress address');
    assert.equal(curl(world(), `http://${gw}/exact/more`).code, 404, 'Exact is exact');
    assert.equal(curl(world(), `http://${gw}/pre`).echo?.pod, 'echo-b');
    assert.equal(curl(world(), `http://${gw}/pre/x?y=1`).echo?.url, '/pre/x?y=1');
    assert.equal(curl(world(), `http://${gw}/prefix`).code, 404, 'PathPrefix on whole segments');
    assert.equal(curl(world(), `http://${gw}/h`, ['-H', 'x-VERSION: v2']).echo?.pod, 'echo-b', 'header names ignore case');
    assert.equal(curl(world(), `http://${gw}/h?v=2`).echo?.pod, 'echo-b', 'the matches of a rule are alternatives');
    assert.equal(curl(world(), `http://${gw}/h`).echo?.pod, 'echo-a');
    assert.equal(curl(world(), `http://${gw}/m`, ['-X', 'POST', '-d', 'x=1']).echo?.method, 'POST');
    assert.equal(curl(world(), `http://${gw}/m`).code, 404, 'method');
    assert.equal(get('httproute', 'match').status.parents[0].conditions.find((x: any) => x.type === 'Accepted').status, 'True');
    assert.equal(get('gateway', 'web').status.listeners[0].attachedRoutes, 1);
  });

  it('from a pod, with hostnames: wildcards on the listener, the most specific route hostname wins', () => {
    apply(
      httpRoute('wild', { parentRefs: [{ name: 'web', sectionName: 'same' }], hostnames: ['*.example.com'], rules: [{ backendRefs: [to('svc-a')] }] }),
      httpRoute('exact', { parentRefs: [{ name: 'web', sectionName: 'same' }], hostnames: ['foo.example.com'], rules: [{ backendRefs: [to('svc-b')] }] }),
    );
    const at = (host: string) => curl(client.ns, `http://${gw}:8000/`, ['-H', `Host: ${host}`]);
    assert.equal(at('bar.example.com').echo?.pod, 'echo-a');
    assert.equal(at('foo.example.com').echo?.pod, 'echo-b');
    assert.equal(at('foo.example.com').echo?.host, 'foo.example.com');
    assert.equal(at('example.com').code, 404, 'a wildcard needs a label');
    assert.equal(header(at('bar.example.com').echo, 'x-forwarded-for'), client.ip);
  });

  it('weighted backendRefs: 3:1 split, weight 0 gets nothing', () => {
    apply(httpRoute('weights', { rules: [{ backendRefs: [to('svc-a', { weight: 3 }), to('svc-b', { weight: 1 }), to('svc-c', { weight: 0, namespace: 'other' })] }] }));
    const r = load(world(), `http://${gw}/w`, ['--requests', '400', '--connections', '8']);
    assert.equal(r.errors, 0, JSON.stringify(r));
    assert.equal(r.codes['200'], 400);
    assert.ok(!r.pods['echo-c'], 'weight 0');
    assert.ok(r.pods['echo-a'] > 230 && r.pods['echo-a'] < 370, `3:1 (${JSON.stringify(r.pods)})`);
  });

  it('filters: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite', () => {
    apply(
      httpRoute('filters', {
        rules: [
          {
            matches: [{ path: { value: '/hdr' } }],
            filters: [
              { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'X-Set', value: 'set' }], add: [{ name: 'X-Add', value: 'added' }], remove: ['X-Remove'] } },
              { type: 'ResponseHeaderModifier', responseHeaderModifier: { set: [{ name: 'X-Resp', value: 'r' }], remove: ['content-type'] } },
            ],
            backendRefs: [to('svc-a')],
          },
          { matches: [{ path: { value: '/old' } }], filters: [{ type: 'RequestRedirect', requestRedirect: { scheme: 'https', hostname: 'new.example.com', path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/new' }, statusCode: 301 } }] },
          { matches: [{ path: { value: '/moved' } }], filters: [{ type: 'RequestRedirect', requestRedirect: { port: 8080 } }] },
          { matches: [{ path: { value: '/api' } }], filters: [{ type: 'URLRewrite', urlRewrite: { hostname: 'internal.svc', path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/v2' } } }], backendRefs: [to('svc-b')] },
          { matches: [{ path: { value: '/full' } }], filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplaceFullPath', replaceFullPath: '/replaced' } } }], backendRefs: [to('svc-b')] },
        ],
      }),
    );
    const h = curl(world(), `http://${gw}/hdr`, ['-H', 'X-Set: client', '-H', 'X-Add: mine', '-H', 'X-Remove: gone']);
    assert.equal(h.code, 200, h.body);
    assert.equal(header(h.echo, 'x-set'), 'set');
    assert.equal(header(h.echo, 'x-add'), 'mine,added');
    assert.equal(header(h.echo, 'x-remove'), undefined);
    assert.equal(h.headers['x-resp'], 'r');
    assert.equal(h.headers['content-type'], undefined);
    const r = curl(world(), `http://${gw}/old/page?q=1`);
    assert.equal(r.code, 301);
    assert.equal(r.headers.location, 'https://new.example.com/new/page?q=1');
    const m = curl(world(), `http://${gw}/moved`, ['-H', 'Host: site.example.com']);
    assert.equal(m.code, 302);
    assert.equal(m.headers.location, 'http://site.example.com:8080/moved');
    const u = curl(world(), `http://${gw}/api/items?x=1`);
    assert.equal(u.echo?.url, '/v2/items?x=1');
    assert.equal(u.echo?.host, 'internal.svc');
    assert.equal(curl(world(), `http://${gw}/full/x`).echo?.url, '/replaced');
  });

  it('ResolvedRefs: a missing backend gets 500 for its share (BackendNotFound); cross-namespace needs a ReferenceGrant (RefNotPermitted)', async () => {
    apply(httpRoute('broken', { rules: [{ backendRefs: [to('svc-a', { weight: 1 }), to('missing', { weight: 1 })] }] }));
    const r = load(world(), `http://${gw}/`, ['--requests', '200', '--connections', '4']);
    assert.equal(r.codes['200'] + r.codes['500'], 200, JSON.stringify(r));
    assert.ok(r.codes['500'] > 50 && r.codes['200'] > 50, JSON.stringify(r.codes));
    const rc = get('httproute', 'broken').status.parents[0].conditions.find((x: any) => x.type === 'ResolvedRefs');
    assert.deepEqual([rc.status, rc.reason], ['False', 'BackendNotFound']);

    apply(httpRoute('cross', { rules: [{ matches: [{ path: { value: '/cross' } }], backendRefs: [to('svc-c', { namespace: 'other' })] }] }));
    assert.equal(curl(world(), `http://${gw}/cross`).code, 500, 'not permitted: 500');
    const rn = get('httproute', 'cross').status.parents[0].conditions.find((x: any) => x.type === 'ResolvedRefs');
    assert.deepEqual([rn.status, rn.reason], ['False', 'RefNotPermitted']);
    apply({
      apiVersion: 'gateway.networking.k8s.io/v1beta1',
      kind: 'ReferenceGrant',
      metadata: { name: 'allow-default', namespace: 'other' },
      spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'default' }], to: [{ group: '', kind: 'Service' }] },
    } as any);
    assert.equal(curl(world(), `http://${gw}/cross`).echo?.pod, 'echo-c');
    assert.equal(get('httproute', 'cross').status.parents[0].conditions.find((x: any) => x.type === 'ResolvedRefs').status, 'True');
  });

  it('Accepted: NotAllowedByListeners (allowedRoutes Same), NoMatchingParent, NoMatchingListenerHostname', () => {
    apply(httpRoute('outsider', { parentRefs: [{ name: 'web', namespace: 'default', sectionName: 'same' }], rules: [{ backendRefs: [to('svc-c')] }] }, 'other'));
    const acc = get('httproute', 'outsider', 'other').status.parents[0].conditions.find((x: any) => x.type === 'Accepted');
    assert.deepEqual([acc.status, acc.reason], ['False', 'NotAllowedByListeners']);
    apply(httpRoute('nowhere', { parentRefs: [{ name: 'web', sectionName: 'nope' }], rules: [{ backendRefs: [to('svc-a')] }] }));
    assert.equal(get('httproute', 'nowhere').status.parents[0].conditions.find((x: any) => x.type === 'Accepted').reason, 'NoMatchingParent');
    apply(httpRoute('elsewhere', { parentRefs: [{ name: 'web', sectionName: 'same' }], hostnames: ['other.org'], rules: [{ backendRefs: [to('svc-a')] }] }));
    assert.equal(get('httproute', 'elsewhere').status.parents[0].conditions.find((x: any) => x.type === 'Accepted').reason, 'NoMatchingListenerHostname');
    assert.match(node.cli(['get', 'httproute']).stdout, /elsewhere\s+other\.org\s+web\/same:NoMatchingListenerHostname/);
  });

  it('policy: Gateway traffic carries the reserved ingress identity (fromEntities: [ingress] allows it, a policy without it denies it)', () => {
    apply(httpRoute('pol', { rules: [{ backendRefs: [to('svc-a')] }] }));
    apply({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'a-from-ingress', namespace: 'default' },
      spec: { endpointSelector: { matchLabels: { app: 'echo-a' } }, ingress: [{ fromEntities: ['ingress'], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] },
    } as any);
    assert.equal(curl(world(), `http://${gw}/`).echo?.pod, 'echo-a', 'ingress allowed');
    assert.ok(!node.tcp(client.ns, a.ip, 8080), 'a pod is not ingress');
    apply({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'a-from-ingress', namespace: 'default' },
      spec: { endpointSelector: { matchLabels: { app: 'echo-a' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }] }] },
    } as any);
    // A new upstream connection cannot connect (503); a kept-alive one gets no answer (504 after the route timeout).
    assert.ok([503, 504].includes(curl(world(), `http://${gw}/`, ['--max-time', '25']).code), 'denied by policy');
    assert.ok(node.tcp(client.ns, a.ip, 8080));
  });

  it('a route update during a load of keep-alive requests drops none, and requests through the Gateway are L7 flows with the route', async () => {
    apply(httpRoute('live', { rules: [{ backendRefs: [to('svc-a')] }] }));
    const p = new Promise<any>((resolve, reject) => {
      const ch = spawn('ip', ['netns', 'exec', world(), process.execPath, LOAD, `http://${gw}/slow?ms=20`, '--seconds', '4', '--connections', '10'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      ch.stdout.on('data', (d) => (out += d));
      ch.on('exit', () => {
        try {
          resolve(JSON.parse(out));
        } catch (e) {
          reject(e);
        }
      });
    });
    await sleep(1500);
    apply(httpRoute('live', { rules: [{ backendRefs: [to('svc-b')] }] }));
    const r = await p;
    assert.equal(r.errors, 0, JSON.stringify(r));
    assert.deepEqual(Object.keys(r.codes), ['200'], JSON.stringify(r.codes));
    assert.ok(r.pods['echo-a'] > 0 && r.pods['echo-b'] > 0, `both before and after the update: ${JSON.stringify(r.pods)}`);

    let flows: any[] = [];
    for (let i = 0; i < 50 && !flows.length; i++) {
      const o = node.cli(['observe', '--type', 'l7', '--last', '200', '--http-path', '/slow', '-o', 'json']);
      flows = o.stdout.trim() ? o.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((f) => f.l7?.type === 'RESPONSE' && f.l7?.route) : [];
      if (!flows.length) await sleep(100);
    }
    const f = flows.find((x) => x.l7.route.backend === 'default/svc-b:80');
    assert.ok(f, JSON.stringify(flows.slice(0, 2)));
    assert.equal(f.l7.route.gateway, 'default/web');
    assert.equal(f.l7.route.route, 'default/live');
    assert.equal(f.l7.http.code, 200);
    assert.ok(f.l7.latency_ns > 0);
    assert.equal(f.source.pod_name, 'echo-b');
  });

  it('the Gateway keeps serving while the agent is down (kill -9), after its restart (same address), and again after a proxy crash', async () => {
    apply(httpRoute('keep', { rules: [{ backendRefs: [to('svc-a')] }] }));
    assert.equal(curl(world(), `http://${gw}/`).echo?.pod, 'echo-a');
    await node.stopAgent('SIGKILL');
    assert.equal(curl(world(), `http://${gw}/`).echo?.pod, 'echo-a', 'the proxy serves without the agent');
    await node.startAgent();
    assert.equal(get('gateway', 'web').status.addresses[0].value, gw, 'the address is kept');
    assert.equal(curl(world(), `http://${gw}/`).echo?.pod, 'echo-a');
    const pid = node.proxyPid();
    assert.ok(pid);
    process.kill(pid, 'SIGKILL');
    let code = 0;
    for (let i = 0; i < 100 && code !== 200; i++) {
      await sleep(100);
      code = curl(world(), `http://${gw}/`, ['--max-time', '2']).code;
    }
    assert.equal(code, 200, 'served again by the restarted proxy');
  });

  it('bodies and framing: chunked request and response bodies, a large response, HEAD, pipelined requests on one connection', () => {
    apply(httpRoute('bodies', { rules: [{ backendRefs: [to('svc-a')] }] }));
    const post = curl(world(), `http://${gw}/upload`, ['-H', 'Transfer-Encoding: chunked', '--data-binary', 'x'.repeat(5000)]);
    assert.equal(post.code, 200, post.body);
    assert.equal((post.echo as any).bodyBytes, 5000, 'the chunked body arrived whole');
    const chunked = curl(world(), `http://${gw}/chunked`);
    assert.equal(chunked.headers['transfer-encoding'], 'chunked');
    assert.equal(chunked.echo?.pod, 'echo-a');
    const big = inNs(world(), 'curl', ['-s', '-o', '/dev/null', '-w', '%{http_code} %{size_download}', `http://${gw}/big?n=300000`]);
    assert.equal(big.stdout, '200 300000');
    const head = inNs(world(), 'curl', ['-s', '-I', `http://${gw}/x`]);
    assert.match(head.stdout, /^HTTP\/1.1 200/);
    // Three requests in one write (pipelined), three answers in order.
    const pipe = inNs(world(), process.execPath, ['-e', `
      const s = require('net').connect(80, '${gw}', () => s.write('GET /p1 HTTP/1.1\\r\\nHost: h\\r\\n\\r\\nGET /nothing-here HTTP/1.1\\r\\nHost: h\\r\\n\\r\\nGET /p3 HTTP/1.1\\r\\nHost: h\\r\\nConnection: close\\r\\n\\r\\n'));
      let out = ''; s.on('data', (d) => (out += d)); s.on('end', () => process.stdout.write(JSON.stringify(out.match(/HTTP\\/1.1 \\d+|"url":"[^"]*"/g))));
    `], 20_000);
    assert.deepEqual(JSON.parse(pipe.stdout), ['HTTP/1.1 200', '"url":"/p1"', 'HTTP/1.1 200', '"url":"/nothing-here"', 'HTTP/1.1 200', '"url":"/p3"']);
  });
});
