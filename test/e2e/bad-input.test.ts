/**
 * Bad input through the agent's real API and CLI: every route checks its body,
 * query and parameters against a schema (nothing coerced or dropped), resources
 * are validated as Kubernetes does with bounded errors, and nothing is applied
 * or created when anything is wrong. Plain rule lists are imported with
 * `membrane policy import` and enforced on real traffic. The state directory is
 * made owner-only.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { TestNode } from '../helpers/node';

function api(socket: string, method: string, urlPath: string, body?: unknown, raw?: string): Promise<{ status: number; json: any; bytes: number }> {
  const payload = raw !== undefined ? Buffer.from(raw) : body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, method, path: urlPath, headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}, timeout: 60_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json: any;
        try {
          json = JSON.parse(text);
        } catch {
          json = text;
        }
        resolve({ status: res.statusCode ?? 0, json, bytes: text.length });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    if (payload) req.write(payload);
    req.end();
  });
}

describe('bad input gets a clear error and changes nothing', () => {
  const node = new TestNode('bad');

  before(async () => {
    // A state directory that others could enter: the agent makes it owner-only.
    fs.mkdirSync(node.stateDir, { recursive: true });
    fs.chmodSync(node.stateDir, 0o777);
    await node.start();
  });
  after(async () => {
    await node.cleanup();
  });

  const nothingCreated = () => {
    assert.deepEqual(node.cliJson(['endpoint', 'list']), []);
    assert.deepEqual((node.cliJson(['ipam', 'list']).allocations as any[]).filter((a) => a.owner !== 'router'), []);
  };

  it('the state directory is 0700 even when it existed with 0777', () => {
    assert.equal(fs.statSync(node.stateDir).mode & 0o777, 0o700);
  });

  it('endpoint bodies: wrong types are not coerced, unknown fields are not dropped; 400 names the field and value', async () => {
    const { nsPath } = node.podNs('p1');
    const good = { containerId: 'c1', ifname: 'eth0', netns: nsPath };
    const cases: [unknown, RegExp, string][] = [
      [{ ...good, mtu: '1400' }, /body\.mtu: must be integer, got "1400"/, 'mtu'],
      [{ ...good, containerId: 12345 }, /body\.containerId: must be string, got 12345/, 'containerId'],
      [{ ...good, extra: true }, /body\.extra: unknown field \(allowed: containerId, ifname, netns, args, mtu\)/, 'extra'],
      [{ ...good, args: { K8S_POD_NAME: 7 } }, /body\.args\.K8S_POD_NAME: must be string, got 7/, 'args'],
      [{ ...good, ifname: '..' }, /body\.ifname: must match pattern/, 'ifname'],
      [{ containerId: 'c1', netns: nsPath }, /body\.ifname: is required/, 'ifname'],
    ];
    for (const [body, re, field] of cases) {
      const r = await api(node.socket, 'PUT', '/v1/endpoint', body);
      assert.equal(r.status, 400, JSON.stringify(r.json));
      assert.match(r.json.error, re);
      assert.equal(r.json.field, field);
    }
    // A name the schema cannot judge (bytes, not characters) is refused by the agent too.
    const r = await api(node.socket, 'PUT', '/v1/endpoint', { ...good, ifname: 'é'.repeat(8) });
    assert.equal(r.status, 400);
    assert.match(r.json.error, /ifname: .* is 16 bytes long \(at most 15\)/);
    nothingCreated();
  });

  it('query strings and path parameters are checked too', async () => {
    let r = await api(node.socket, 'GET', '/v1/endpoint/abc');
    assert.equal(r.status, 400);
    assert.match(r.json.error, /params\.id: must match pattern/);
    r = await api(node.socket, 'GET', '/v1/flows?last=ten');
    assert.equal(r.status, 400);
    assert.match(r.json.error, /query\.last: must match pattern .*, got "ten"/);
    r = await api(node.socket, 'GET', '/v1/flows?bogus=1');
    assert.equal(r.status, 400);
    assert.match(r.json.error, /query\.bogus: unknown field/);
    r = await api(node.socket, 'GET', '/v1/status?verbose=1');
    assert.equal(r.status, 400);
    r = await api(node.socket, 'POST', '/v1/policy/trace', { src: 'a=b', dst: 'c=d', dport: '80' });
    assert.equal(r.status, 400);
    assert.match(r.json.error, /body\.dport: must be integer, got "80"/);
    r = await api(node.socket, 'POST', '/v1/delete', { refs: [{ kind: 'Pod', name: 'x', extra: 1 }] });
    assert.equal(r.status, 400);
    assert.match(r.json.error, /body\.refs\[0\]\.extra: unknown field/);
  });

  it('resources: invalid labels and a clusterIP outside --service-cidr are rejected at apply, and nothing is stored', async () => {
    const r = await api(node.socket, 'POST', '/v1/apply', {
      objects: [
        { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'fine' } },
        { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'fine', labels: { 'has space': 'x', app: 'bang!', n: 1, ['k'.repeat(64)]: 'v' } } },
        { apiVersion: 'v1', kind: 'Service', metadata: { name: 's', namespace: 'fine' }, spec: { clusterIP: '10.97.1.1', ports: [{ port: 80 }] } },
      ],
    });
    assert.equal(r.status, 400);
    const all = r.json.details.join('\n');
    assert.match(all, /Pod\/fine\/p: metadata\.labels: key "has space" is not a valid label key/);
    assert.match(all, /Pod\/fine\/p: metadata\.labels\.app: value "bang!" is not a valid label value/);
    assert.match(all, /Pod\/fine\/p: metadata\.labels\.n: value 1 is not a valid label value: must be a string/);
    assert.match(all, /name part must be no more than 63 characters/);
    assert.match(all, /Service\/fine\/s: spec\.clusterIP: "10\.97\.1\.1" is outside the service CIDR 10\.96\.0\.0\/16/);
    assert.deepEqual(node.cliJson(['get', 'ns']).items, []);
    assert.deepEqual(node.cliJson(['service', 'list']), []);
  });

  it('100,000 invalid objects: a short error (the first 100 problems and a count); 10,000-deep nesting: a clear error', async () => {
    const objects = Array.from({ length: 100_000 }, () => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', labels: { 'a b': '' } } }));
    let r = await api(node.socket, 'POST', '/v1/apply', { objects });
    assert.equal(r.status, 400);
    assert.equal(r.json.details.length, 100);
    assert.equal(r.json.total, 100_000);
    assert.ok(r.bytes < 64 * 1024, `error is ${r.bytes} bytes`);
    const deep = `{"objects":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"d"},"spec":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}]}`;
    r = await api(node.socket, 'POST', '/v1/apply', undefined, deep);
    assert.equal(r.status, 400);
    assert.match(r.json.error, /^body\.objects\[0\]\.spec(\.a)+: nested more than 100 levels deep$/);
    // The CLI's YAML parser, too.
    const f = path.join(node.dir, 'deep.yaml');
    fs.writeFileSync(f, `apiVersion: v1\nkind: Pod\nmetadata: {name: d}\nspec: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`);
    const c = node.cli(['apply', '-f', f]);
    assert.equal(c.code, 2, c.stderr);
    assert.match(c.stderr, /deep\.yaml: document 1 is nested too deeply/);
    assert.equal(node.cli(['status']).code, 0, 'the agent still serves');
    assert.deepEqual(node.cliJson(['get', 'pod']).items, []);
  });

  it('policy import takes the reference system\'s plain rule lists and enforces them; apply says to use it; unsupported fields are named', async () => {
    const rules = [
      {
        labels: [{ key: 'name', value: 'web-from-client', source: 'unspec' }],
        endpointSelector: { matchLabels: { app: 'web' } },
        ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }],
      },
    ];
    const f = path.join(node.dir, 'rules.json');
    fs.writeFileSync(f, JSON.stringify(rules, null, 2));
    let c = node.cli(['apply', '-f', f]);
    assert.equal(c.code, 2);
    assert.match(c.stderr, /list of plain policy rules .* `membrane policy import -f /);
    node.apply([
      { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'web', labels: { app: 'web' } } },
      { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'client', labels: { app: 'client' } } },
      { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'other', namespace: 'else', labels: { app: 'other' } } },
    ]);
    const web = node.addPod('web');
    const client = node.addPod('client');
    const other = node.addPod('other', { args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=else;K8S_POD_NAME=other' });
    await node.serve(web.ns, 'tcp:8080');
    assert.deepEqual([node.tcp(client.ns, web.ip, 8080), node.tcp(other.ns, web.ip, 8080)], [true, true], 'no policy yet');
    c = node.cli(['policy', 'import', '-f', f, '-o', 'json']);
    assert.equal(c.code, 0, c.stderr);
    const out = JSON.parse(c.stdout);
    assert.deepEqual(out.results.map((x: any) => `${x.kind}/${x.name} ${x.action}`), ['CiliumClusterwideNetworkPolicy/web-from-client created']);
    node.waitPolicy(out.policyRevision);
    assert.deepEqual([node.tcp(client.ns, web.ip, 8080), node.tcp(other.ns, web.ip, 8080)], [true, false], 'only app=client gets in');
    // Again: the same policy, unchanged.
    c = node.cli(['policy', 'import', '-f', f]);
    assert.match(c.stdout, /ciliumclusterwidenetworkpolicy\/web-from-client unchanged/);
    // Fields Membrane does not support yet are named, as "not supported".
    fs.writeFileSync(f, JSON.stringify([{ ...rules[0], ingress: [{ ...rules[0].ingress[0], auth: { type: 'spire' }, fromRequires: [{}] }] }]));
    c = node.cli(['policy', 'import', '-f', f]);
    assert.equal(c.code, 1);
    assert.match(c.stderr, /specs\[0\]\.ingress\[0\]\.auth: auth \(mutual authentication\) is not supported/);
    assert.match(c.stderr, /specs\[0\]\.ingress\[0\]\.fromRequires: fromRequires is deprecated and not supported/);
    assert.doesNotMatch(c.stderr, /unknown field/);
    node.delete([{ kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'web-from-client' } }]);
    for (const p of [web, client, other]) assert.equal(node.cni({ command: 'DEL', containerId: p.containerId, ifname: 'eth0' }).code, 0);
  });
});
