/**
 * L7 HTTP policy end to end: the real agent, plugin and proxy, pods in network
 * namespaces, curl and a small Node server (test/helpers/httpd.ts), real
 * redirection by the datapath (bpf_sk_assign) to bin/membrane-proxy.
 *
 * Pods: client (app=client), other (app=other), server (app=server, HTTP on
 * 8080, 8081 and 9090). Policies are applied per test and removed after it.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { TestNode } from '../helpers/node';
import { REPO, inNs, sleep, tryRun } from '../helpers/sys';

const HTTPD = path.join(REPO, 'dist/test/helpers/httpd.js');
const HTTPC = path.join(REPO, 'dist/test/helpers/httpc.js');

const cnp = (name: string, spec: unknown) => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name, namespace: 'default' }, spec });
const pod = (name: string, labels: Record<string, string>) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels } });
const http = (rules: unknown[], port = '8080') => ({ ports: [{ port, protocol: 'TCP' }], rules: { http: rules } });

interface CurlResult {
  code: number;
  body: string;
  /** connections curl opened for this transfer (0: reused a kept-alive one) */
  connects: number;
}

/** curl from a pod; several URLs in one call share a keep-alive connection. */
function curl(ns: string, urls: string[], args: string[] = []): CurlResult[] {
  const fmt = '\n%{http_code} %{num_connects}\n';
  const r = inNs(ns, 'curl', ['-s', '--max-time', '5', '-w', fmt, ...args, ...urls.flatMap((u) => [u])], 20_000);
  const out: CurlResult[] = [];
  const re = /([\s\S]*?)\n(\d{3}) (\d+)\n/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(r.stdout))) out.push({ body: m[1], code: Number(m[2]), connects: Number(m[3]) });
  return out;
}

function serverSaw(body: string): { method: string; url: string; remote: string; headers: string[]; bodyBytes: number } {
  return JSON.parse(body);
}

describe('L7 HTTP policy through the proxy', () => {
  const node = new TestNode('l7');
  let client: ReturnType<TestNode['addPod']>;
  let other: ReturnType<TestNode['addPod']>;
  let server: ReturnType<TestNode['addPod']>;
  const applied: { kind: string; metadata: { name: string; namespace?: string } }[] = [];

  const policy = (...objs: ReturnType<typeof cnp>[]) => {
    node.apply(objs);
    for (const o of objs) if (!applied.some((a) => a.metadata.name === o.metadata.name)) applied.push(o);
  };
  const proxyStatus = () => node.cliJson(['status']).proxy;
  /** L7 flows (observe --type l7), waiting (bounded) until at least `want` match: records reach the agent in batches. */
  const l7Flows = async (args: string[], want: number): Promise<any[]> => {
    let flows: any[] = [];
    for (let i = 0; i < 50; i++) {
      const r = node.cli(['observe', '--type', 'l7', '--last', '100000', ...args, '-o', 'json']);
      assert.equal(r.code, 0, r.stderr);
      flows = r.stdout.trim() ? r.stdout.trim().split('\n').map((l) => JSON.parse(l)) : [];
      if (flows.length >= want) break;
      await sleep(100);
    }
    return flows;
  };
  const handled = () => {
    const r = proxyStatus().requests;
    return r.forwarded + r.denied + r.error;
  };

  /** Start test/helpers/httpd in a namespace; stopped by node.cleanup(). */
  const httpd = async (ns: string, ports: string[]) => {
    const p = node.own(spawn('ip', ['netns', 'exec', ns, process.execPath, HTTPD, ...ports], { stdio: ['ignore', 'pipe', 'inherit'] }));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`httpd in ${ns} did not start`)), 10_000);
      p.stdout!.once('data', () => {
        clearTimeout(t);
        resolve();
      });
    });
  };

  before(async () => {
    await node.start({ world: true });
    node.apply([pod('client', { app: 'client' }), pod('other', { app: 'other' }), pod('server', { app: 'server' })]);
    client = node.addPod('client');
    other = node.addPod('other');
    server = node.addPod('server');
    await httpd(server.ns, ['8080', '8081', '9090']);
    await httpd(node.worldNs!, ['8080']);
  });
  afterEach(() => {
    if (applied.length) node.delete(applied.splice(0));
  });
  after(async () => {
    await node.cleanup();
  });

  it('egress: allowed requests are forwarded unchanged, others get 403 "Access denied" and the keep-alive connection stays usable; each request and response is a flow', async () => {
    policy(cnp('client-egress', { endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ toEndpoints: [{ matchLabels: { app: 'server' } }], toPorts: [http([{ method: 'GET', path: '/public/.*' }])] }] }));
    const base = `http://${server.ip}:8080`;
    const r = curl(client.ns, [`${base}/public/a?x=1`, `${base}/private`, `${base}/public/b`]);
    assert.equal(r.length, 3, JSON.stringify(r));
    assert.equal(r[0].code, 200);
    const saw = serverSaw(r[0].body);
    assert.equal(saw.url, '/public/a?x=1');
    assert.equal(saw.remote.split(':')[0], client.ip, 'the server sees the client pod address');
    assert.equal(r[1].code, 403);
    assert.equal(r[1].body, 'Access denied\n');
    assert.equal(r[2].code, 200);
    assert.equal(r[1].connects + r[2].connects, 0, 'the 403 and the next request reuse the first connection');
    const post = curl(client.ns, [`${base}/public/a`], ['-X', 'POST', '-d', 'x=1']);
    assert.equal(post[0].code, 403, 'method rule');

    // Every request and response is an L7 flow with both pods, method, URL, status and verdict.
    const reqs = await l7Flows(['--from-pod', 'default/client', '--to-pod', 'default/server'], 4);
    const byUrl = (u: string, method = 'GET') => reqs.find((f) => f.l7.type === 'REQUEST' && f.l7.http.url === `${base}${u}` && f.l7.http.method === method);
    const ok = byUrl('/public/a?x=1');
    assert.ok(ok, JSON.stringify(reqs.map((f) => [f.l7.type, f.l7.http.method, f.l7.http.url])));
    assert.equal(ok.verdict, 'FORWARDED');
    assert.equal(ok.traffic_direction, 'EGRESS');
    assert.equal(ok.l7.http.protocol, 'HTTP/1.1');
    assert.equal(ok.source.pod_name, 'client');
    assert.equal(ok.destination.pod_name, 'server');
    assert.deepEqual(ok.egress_allowed_by, [{ kind: 'CiliumNetworkPolicy', namespace: 'default', name: 'client-egress' }]);
    assert.equal(byUrl('/private')?.verdict, 'DROPPED');
    assert.equal(byUrl('/public/a', 'POST')?.verdict, 'DROPPED');
    const denied = await l7Flows(['--http-status', '403', '--from-pod', 'default/server'], 2);
    assert.ok(denied.length >= 2 && denied.every((f) => f.l7.type === 'RESPONSE' && f.l7.http.code === 403 && f.verdict === 'DROPPED' && f.destination.pod_name === 'client'), JSON.stringify(denied));
    assert.deepEqual(denied[0].egress_denied_by, [{ kind: 'CiliumNetworkPolicy', namespace: 'default', name: 'client-egress' }]);
    const answered = await l7Flows(['--http-status', '200', '--from-pod', 'default/server', '--http-path', '/public/.*'], 2);
    assert.ok(answered.length >= 2 && answered.every((f) => f.verdict === 'FORWARDED' && f.l7.latency_ns > 0));
    assert.deepEqual((await l7Flows(['--http-method', 'POST'], 2)).map((f) => f.l7.type).sort(), ['REQUEST', 'RESPONSE'], 'the POST and its 403');
  });

  it('egress to the world: the proxy speaks with the pod address and its replies come back to it', () => {
    policy(cnp('client-egress', { endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ toCIDR: ['192.0.2.0/24'], toPorts: [http([{ method: 'GET', path: '/api/.*' }])] }] }));
    const before = handled();
    const r = curl(client.ns, ['http://192.0.2.10:8080/api/v1', 'http://192.0.2.10:8080/admin', 'http://192.0.2.11:8080/api/v2']);
    assert.deepEqual(r.map((x) => x.code), [200, 403, 200], JSON.stringify(r));
    assert.equal(serverSaw(r[0].body).remote.split(':')[0], client.ip, 'the world server sees the pod address');
    assert.equal(handled(), before + 3);
  });

  it('through a Service ClusterIP: the rules of the backend port apply and the client sees the ClusterIP answer', () => {
    const svc = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'default' }, spec: { selector: { app: 'server' }, ports: [{ port: 80, targetPort: 8080 }] } };
    node.apply([svc]);
    applied.push(svc);
    policy(cnp('client-egress', { endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ toEndpoints: [{ matchLabels: { app: 'server' } }], toPorts: [http([{ method: 'GET', path: '/svc/.*' }])] }] }));
    const vip = node.cliJson(['service', 'list']).find((f: any) => f.service === 'default/web' && f.type === 'ClusterIP').frontend.split(':')[0];
    const before = handled();
    const r = curl(client.ns, [`http://${vip}/svc/a`, `http://${vip}/other`]);
    assert.deepEqual(r.map((x) => x.code), [200, 403], JSON.stringify(r));
    assert.equal(serverSaw(r[0].body).remote.split(':')[0], client.ip);
    assert.equal(handled(), before + 2);
  });

  it('ingress: host, required headers and headerMatches decide; a mismatch action rewrites the forwarded request', async () => {
    policy(
      cnp('server-ingress', {
        endpointSelector: { matchLabels: { app: 'server' } },
        ingress: [
          {
            fromEndpoints: [{ matchLabels: { app: 'other' } }],
            toPorts: [
              http([
                { method: 'GET', path: '/h', host: 'api\\.example(:8080)?' },
                { method: 'GET', path: '/t', headers: ['X-Token', 'X-Mode: read'] },
                { method: 'GET', path: '/m', headerMatches: [{ name: 'X-Tenant', value: 'a' }] },
                { method: 'PUT', path: '/r', headerMatches: [{ name: 'X-Env', value: 'prod', mismatch: 'REPLACE' }] },
              ]),
            ],
          },
        ],
      }),
    );
    const u = (p: string) => `http://${server.ip}:8080${p}`;
    const code = (p: string, ...h: string[]) => curl(other.ns, [u(p)], h.flatMap((x) => ['-H', x]))[0]?.code;
    assert.equal(code('/h', 'Host: api.example'), 200);
    assert.equal(code('/h', 'Host: evil.example'), 403);
    assert.equal(code('/t', 'X-Token: 1', 'X-Mode: read'), 200);
    assert.equal(code('/t', 'X-Mode: read'), 403, 'X-Token must be present');
    assert.equal(code('/t', 'X-Token: 1', 'X-Mode: write'), 403, 'X-Mode must have the value');
    assert.equal(code('/m', 'X-Tenant: a'), 200);
    assert.equal(code('/m', 'X-Tenant: b'), 403);
    const r = curl(other.ns, [u('/r')], ['-X', 'PUT', '-H', 'X-Env: dev', '-d', 'abc']);
    assert.equal(r[0].code, 200);
    const saw = serverSaw(r[0].body);
    const env = saw.headers.findIndex((h, i) => i % 2 === 0 && h.toLowerCase() === 'x-env');
    assert.equal(saw.headers[env + 1], 'prod', 'REPLACE set the header the server sees');
    assert.equal(saw.bodyBytes, 3);
    const flows = await l7Flows(['--from-pod', 'default/other', '--to-pod', 'default/server', '--http-path', '/h'], 2);
    const evil = flows.find((f) => f.l7.http.host === 'evil.example');
    assert.ok(evil, JSON.stringify(flows));
    assert.equal(evil.traffic_direction, 'INGRESS');
    assert.equal(evil.verdict, 'DROPPED');
    assert.deepEqual(evil.ingress_denied_by, [{ kind: 'CiliumNetworkPolicy', namespace: 'default', name: 'server-ingress' }]);
    assert.equal(curl(client.ns, [u('/h')], ['-H', 'Host: api.example'])[0]?.code, 0, 'client is not allowed at L3/L4: no connection');
  });

  it('pipelined requests are answered in order (a denied one in the middle); chunked bodies pass; upgrades are refused', () => {
    policy(cnp('server-ingress', { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [http([{ path: '/ok.*' }])] }] }));
    const reqs = [
      'GET /ok/1 HTTP/1.1\r\nHost: s\r\n\r\n',
      'POST /denied HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello',
      'POST /ok/chunked HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n',
      'GET /ok/3 HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n',
    ];
    const r = inNs(client.ns, process.execPath, [HTTPC, 'raw', server.ip, '8080', Buffer.from(reqs.join('')).toString('base64')], 20_000);
    const statuses = [...r.stdout.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
    assert.deepEqual(statuses, [200, 403, 200, 200], r.stdout);
    assert.match(r.stdout, /Transfer-Encoding: chunked/i, 'the chunked response passed through');
    assert.match(r.stdout, /"url":"\/ok\/chunked"[^}]*"bodyBytes":7/, 'the chunked request body arrived whole');
    assert.ok(r.stdout.indexOf('"/ok/1"') < r.stdout.indexOf('Access denied') && r.stdout.indexOf('Access denied') < r.stdout.indexOf('"/ok/3"'), 'responses in request order');
    const ws = inNs(client.ns, 'curl', ['-s', '-i', '--max-time', '5', '-H', 'Connection: Upgrade', '-H', 'Upgrade: websocket', `http://${server.ip}:8080/ok/ws`]);
    assert.match(ws.stdout, /^HTTP\/1\.1 403 Forbidden/);
  });

  it('an edited L7 rule applies to the next request of an open keep-alive connection', async () => {
    const allowPath = (p: string) => cnp('server-ingress', { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [http([{ path: p }])] }] });
    policy(allowPath('/a.*'));
    const lines: { i: number; t: number; status?: number; lport?: number; error?: string }[] = [];
    const p = spawn('ip', ['netns', 'exec', client.ns, process.execPath, HTTPC, 'stream', server.ip, '8080', '/a', '40', '100'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    p.stdout!.on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        lines.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
    });
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    try {
      for (let i = 0; i < 100 && lines.length < 5; i++) await sleep(100);
      const editing = Date.now();
      node.apply([allowPath('/b.*')]);
      const edited = Date.now();
      await exited;
      assert.equal(lines.length, 40);
      const before = lines.filter((l) => l.t < editing);
      const after = lines.filter((l) => l.t > edited);
      assert.ok(before.length >= 5 && before.every((l) => l.status === 200), JSON.stringify(before));
      assert.ok(after.length > 0 && after.every((l) => l.status === 403), JSON.stringify(after));
      const flip = lines.findIndex((l) => l.status === 403);
      assert.ok(lines.slice(flip).every((l) => l.status === 403), 'once denied, denied');
      assert.equal(new Set(lines.map((l) => l.lport)).size, 1, 'one connection throughout');
    } finally {
      p.kill('SIGKILL');
    }
  });

  it('removing the last L7 rule on a port: new flows are no longer redirected, an open connection keeps working', async () => {
    const l7 = cnp('server-ingress', { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [http([{ path: '/x' }])] }] });
    const l4 = cnp('server-ingress', { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] });
    policy(l7);
    const serverEp = node.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'server');
    const entries = () => node.cliJson(['bpf', 'policy', 'get', String(serverEp.id)]).entries.filter((e: any) => e.direction === 'Ingress' && e.port === '8080');
    assert.ok(entries().every((e: any) => e.proxyPort > 0), 'redirected while the L7 rule exists');
    const stream = spawn('ip', ['netns', 'exec', client.ns, process.execPath, HTTPC, 'stream', server.ip, '8080', '/y', '30', '100'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    stream.stdout!.on('data', (d) => (out += d));
    const exited = new Promise<void>((r) => stream.once('exit', () => r()));
    try {
      while (!out.includes('\n')) await sleep(50);
      node.apply([l4]);
      assert.ok(entries().length > 0 && entries().every((e: any) => !e.proxyPort), 'no proxy port once the last L7 rule is gone');
      await exited;
      const before = handled();
      assert.equal(curl(client.ns, [`http://${server.ip}:8080/y`])[0].code, 200);
      assert.equal(handled(), before, 'a new flow does not touch the proxy');
      const ls = out.trim().split('\n').map((l) => JSON.parse(l));
      assert.equal(ls.length, 30);
      assert.equal(ls[0].status, 403, 'denied while the L7 rule stood');
      assert.equal(ls[ls.length - 1].status, 200, 'the open connection, still through the proxy, is now allowed');
      assert.ok(ls.every((l) => !l.error), JSON.stringify(ls.filter((l) => l.error)));
    } finally {
      stream.kill('SIGKILL');
    }
  });

  it('flows without L7 rules never touch the proxy', () => {
    policy(
      cnp('server-ingress', {
        endpointSelector: { matchLabels: { app: 'server' } },
        ingress: [
          { fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [http([{ path: '/.*' }]), { ports: [{ port: '9090', protocol: 'TCP' }] }] },
          { fromEndpoints: [{ matchLabels: { app: 'other' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] },
        ],
      }),
    );
    assert.equal(curl(client.ns, [`http://${server.ip}:8080/warm`])[0].code, 200);
    const before = handled();
    const a = curl(client.ns, [`http://${server.ip}:9090/direct`]);
    const b = curl(other.ns, [`http://${server.ip}:8080/direct`]);
    assert.equal(a[0].code, 200);
    assert.equal(b[0].code, 200);
    assert.equal(serverSaw(a[0].body).remote.split(':')[0], client.ip);
    assert.equal(handled(), before, 'no request went through the proxy');
    assert.equal(curl(client.ns, [`http://${server.ip}:8080/again`])[0].code, 200);
    assert.equal(handled(), before + 1, 'while the L7 port does');
  });

  it('egress and ingress L7 rules on one flow: one pass through the proxy enforces both', () => {
    policy(
      cnp('client-egress', { endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ toEndpoints: [{ matchLabels: { app: 'server' } }], toPorts: [http([{ path: '/(both|egress-only).*' }])] }] }),
      cnp('server-ingress', { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [http([{ path: '/(both|ingress-only).*' }])] }] }),
    );
    const u = (p: string) => `http://${server.ip}:8080${p}`;
    const before = handled();
    const r = curl(client.ns, [u('/both'), u('/egress-only'), u('/ingress-only'), u('/neither')]);
    assert.deepEqual(r.map((x) => x.code), [200, 403, 403, 403]);
    assert.equal(serverSaw(r[0].body).remote.split(':')[0], client.ip);
    assert.equal(handled(), before + 4, 'each request handled once');
  });

  it('status shows the proxy, bpf policy get the proxy port, policy trace the redirect and the HTTP verdict', () => {
    policy(cnp('server-ingress', { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [http([{ method: 'GET', path: '/public/.*' }])] }] }));
    const st = proxyStatus();
    assert.equal(st.state, 'running');
    assert.ok(st.pid > 0);
    assert.deepEqual(st.listeners.map((l: any) => [l.name, l.state]).sort(), [['http-egress', 'listening'], ['http-ingress', 'listening']]);
    const text = node.cli(['status']).stdout;
    assert.match(text, /L7 proxy: +running \(pid \d+/);
    const ingressPort = st.listeners.find((l: any) => l.name === 'http-ingress').port;
    const serverEp = node.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'server');
    assert.match(node.cli(['bpf', 'policy', 'get', String(serverEp.id)]).stdout, new RegExp(`8080/TCP\\s+${ingressPort}\\b`));
    const t = node.cli(['policy', 'trace', '--src', 'default/client', '--dst', 'default/server', '--dport', '8080', '--http-method', 'GET', '--http-path', '/private']).stdout;
    assert.match(t, new RegExp(`redirected to the L7 proxy \\(listener http-ingress, port ${ingressPort}\\); HTTP rules: GET /public/\\.\\* \\[CiliumNetworkPolicy/default/server-ingress\\]`));
    assert.match(t, /HTTP GET \/private: DENIED \(403\) by CiliumNetworkPolicy\/default\/server-ingress/);
    assert.match(t, /Final verdict: DENIED/);
    const ok = node.cliJson(['policy', 'trace', '--src', 'default/client', '--dst', 'default/server', '--dport', '8080', '--http-method', 'GET', '--http-path', '/public/x']);
    assert.equal(ok.verdict, 'ALLOWED');
    assert.equal(ok.ingress.redirect.proxyPort, ingressPort);
  });

  it('the agent killed (-9) during a stream of requests: no request fails, and the restarted agent adopts the running proxy', async () => {
    policy(cnp('server-ingress', { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [http([{ path: '/s.*' }])] }] }));
    const pid = proxyStatus().pid;
    const runs = [
      spawn('ip', ['netns', 'exec', client.ns, process.execPath, HTTPC, 'stream', server.ip, '8080', '/s/keepalive', '40', '100'], { stdio: ['ignore', 'pipe', 'inherit'] }),
      spawn('ip', ['netns', 'exec', client.ns, process.execPath, HTTPC, 'stream', server.ip, '8080', '/s/fresh', '40', '100', 'fresh'], { stdio: ['ignore', 'pipe', 'inherit'] }),
    ];
    const outs = runs.map((p) => {
      const o = { text: '' };
      p.stdout!.on('data', (d) => (o.text += d));
      return o;
    });
    const exited = Promise.all(runs.map((p) => new Promise<void>((r) => p.once('exit', () => r()))));
    try {
      while (outs.some((o) => o.text.split('\n').length < 5)) await sleep(50);
      await node.stopAgent('SIGKILL');
      await sleep(800);
      await node.startAgent();
      await exited;
      for (const o of outs) {
        const ls = o.text.trim().split('\n').map((l) => JSON.parse(l));
        assert.equal(ls.length, 40);
        assert.deepEqual(ls.filter((l) => l.status !== 200), [], 'every request succeeded');
      }
      const st = proxyStatus();
      assert.equal(st.pid, pid, 'the same proxy process');
      assert.equal(st.adopted, true);
      assert.equal(st.restarts, 0);
    } finally {
      runs.forEach((p) => p.kill('SIGKILL'));
    }
  });

  it('a proxy crash fails closed (drop 178, the server never reached) until the agent restarts it', async () => {
    policy(cnp('server-ingress', { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [http([{ path: '/c.*' }])] }] }));
    assert.equal(curl(client.ns, [`http://${server.ip}:8080/c/1`])[0].code, 200);
    const before = node.cliJson(['status']).proxy;
    const drops = node.metric(178, 'ingress');
    // Freeze the agent so the restart cannot race the check, then kill the proxy.
    process.kill(node.agent!.pid!, 'SIGSTOP');
    try {
      process.kill(before.pid, 'SIGKILL');
      await sleep(300);
      const r = inNs(client.ns, 'curl', ['-s', '--max-time', '2', '-o', '/dev/null', '-w', '%{http_code}', `http://${server.ip}:8080/c/2`], 10_000);
      // A bypass would reach the server, which answers every request with 200.
      assert.equal(r.stdout, '000', 'no answer at all: neither the proxy nor the server');
    } finally {
      process.kill(node.agent!.pid!, 'SIGCONT');
    }
    assert.ok(node.metric(178, 'ingress') > drops, 'dropped with DROP_PROXY_LOOKUP_FAILED');
    let after: any;
    for (let i = 0; i < 100; i++) {
      after = proxyStatus();
      if (after.state === 'running' && after.pid !== before.pid && after.listeners.length === 2) break;
      await sleep(100);
    }
    assert.notEqual(after.pid, before.pid);
    assert.equal(after.restarts, before.restarts + 1);
    assert.match(after.lastExit?.reason ?? '', /SIGKILL|gone/);
    assert.equal(after.lastExit.pid, before.pid);
    assert.equal(curl(client.ns, [`http://${server.ip}:8080/c/3`])[0].code, 200, 'served again, with the same rules');
    assert.equal(curl(client.ns, [`http://${server.ip}:8080/other`])[0].code, 403);
  });
});
