/**
 * `membrane ui` end to end: a node with three pods in namespace "shop" (web,
 * client, rogue) and a policy that lets only app=client reach app=web on TCP
 * 8080, real traffic between them, the UI server started as a user starts it
 * (`membrane ui --socket S --port N`), and Debian's Chromium driven by
 * playwright-core reading the page: the map's workloads and edges (and that the
 * canvas is drawn), the denied edge, the flow table and its verdict filter, and
 * live updates without a reload. Screenshots are left in
 * test-artifacts/ui-service-map.png (and -dropped.png: the verdict filter).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { BrowserContext, Page, chromium } from 'playwright-core';
import { CLI_BIN, TestNode } from '../helpers/node';
import { REPO, sleep } from '../helpers/sys';

const CHROMIUM = '/usr/bin/chromium';
const NS = 'shop';
const SCREENSHOT = path.join(REPO, 'test-artifacts', 'ui-service-map.png');

const pod = (name: string) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: NS, labels: { app: name } }, spec: { containers: [{ name: 'c' }] } });
const policy = {
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name: 'web-from-client', namespace: NS },
  spec: {
    endpointSelector: { matchLabels: { app: 'web' } },
    ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }],
  },
};

interface GraphState {
  namespaces: string[];
  nodes: { id: string; label: string; kind: string; namespace?: string; classes: string[] }[];
  edges: { id: string; source: string; target: string; verdict: string; classes: string[]; color: string; forwarded: number; dropped: number; ports: string[] }[];
  flows: number;
  connection: string;
}

interface Row {
  verdict: string;
  source: string;
  destination: string;
  cells: string[];
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Start `membrane ui` and wait for the URL it prints. */
function startUi(socket: string, port: number): Promise<{ proc: ChildProcess; url: string; output: () => string }> {
  const proc = spawn(process.execPath, [CLI_BIN, '--socket', socket, 'ui', '--port', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`membrane ui printed no URL in 15 s:\n${out}`)), 15_000);
    const check = () => {
      const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(out);
      if (m) {
        clearTimeout(t);
        resolve({ proc, url: m[0], output: () => out });
      }
    };
    proc.stdout!.on('data', check);
    proc.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`membrane ui exited with ${code}:\n${out}`));
    });
  });
}

function httpGet(url: string, opts: { method?: string; host?: string } = {}): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.host ? { host: opts.host } : {} }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const graph = (page: Page): Promise<GraphState> => page.evaluate(() => (globalThis as any).__membraneGraph());

const rows = (page: Page): Promise<Row[]> =>
  page.evaluate(() =>
    [...(globalThis as any).document.querySelectorAll('#flows tbody tr')].map((tr: any) => ({
      verdict: tr.dataset.verdict,
      source: tr.dataset.source,
      destination: tr.dataset.destination,
      cells: [...tr.cells].map((c: any) => c.textContent),
    })),
  );

/** Poll the page until check() holds; the last state is in the failure message. */
async function waitFor<T>(what: string, get: () => Promise<T>, check: (v: T) => boolean, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  while (Date.now() < deadline) {
    last = await get();
    if (check(last)) return last;
    await sleep(200);
  }
  assert.fail(`timed out waiting for ${what}; last state:\n${JSON.stringify(last, null, 1).slice(0, 4000)}`);
}

const edge = (g: GraphState, src: string, dst: string) => g.edges.find((e) => e.source === `${NS}/${src}` && e.target === `${NS}/${dst}`);

describe('membrane ui: the live service map', { skip: fs.existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (scripts/setup.sh --test installs Debian's chromium)` }, () => {
  const node = new TestNode('ui');
  const ip: Record<string, string> = {};
  const nsOf: Record<string, string> = {};
  let ui: { proc: ChildProcess; url: string; output: () => string } | undefined;
  let userDataDir: string | undefined;
  let context: BrowserContext | undefined;
  let page: Page;
  const pageErrors: string[] = [];

  before(async () => {
    await node.start();
    node.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } }, pod('web'), pod('client'), pod('rogue')]);
    for (const name of ['web', 'client', 'rogue']) {
      const r = node.addPod(name, { args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${NS};K8S_POD_NAME=${name}` });
      ip[name] = r.ip;
      nsOf[name] = r.ns;
    }
    node.apply([policy]);
    await node.serve(nsOf.web, 'tcp:8080');
    await node.serve(nsOf.client, 'tcp:9090');
    // Traffic before the page exists: the page must show it from the agent's flow history.
    assert.deepEqual(node.probe(nsOf.client, [{ ip: ip.web, port: 8080, proto: 'tcp' }]), [true], 'client -> web:8080 is allowed');
    assert.deepEqual(node.probe(nsOf.rogue, [{ ip: ip.web, port: 8080, proto: 'tcp' }], 800), [false], 'rogue -> web:8080 is dropped');

    ui = await startUi(node.socket, await freePort());
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-ui-chromium-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1440, height: 900 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(`console: ${m.text()} (${m.location().url})`);
    });
    await page.goto(ui.url);
  });

  after(async () => {
    await context?.close().catch(() => {});
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
    if (ui && ui.proc.exitCode === null && ui.proc.signalCode === null) {
      const exited = new Promise((r) => ui!.proc.once('exit', r));
      ui.proc.kill('SIGTERM');
      await Promise.race([exited, sleep(5_000)]);
      if (ui.proc.exitCode === null && ui.proc.signalCode === null) ui.proc.kill('SIGKILL');
    }
    await node.cleanup();
  });

  it('serves the page and a read-only API proxy on 127.0.0.1 only', async () => {
    assert.match(ui!.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const index = await httpGet(ui!.url);
    assert.equal(index.status, 200);
    assert.match(index.type, /text\/html/);
    const status = await httpGet(`${ui!.url}api/status`);
    assert.equal(status.status, 200);
    assert.equal(JSON.parse(status.body).node, node.prefix, 'GET /api/status is the agent\'s /v1/status');
    assert.equal((await httpGet(`${ui!.url}api/apply`, { method: 'POST' })).status, 405, 'nothing but GET reaches the agent');
    assert.equal((await httpGet(`${ui!.url}api/status`, { host: 'evil.example:80' })).status, 421, 'a foreign Host header (DNS rebinding) is refused');
    // Listening on 127.0.0.1 only: not on ::1, not on the machine's other addresses.
    const port = Number(new URL(ui!.url).port);
    const others = Object.values(os.networkInterfaces()).flat().filter((a) => a && !a.internal && a.family === 'IPv4').map((a) => a!.address);
    for (const addr of ['::1', ...others.slice(0, 2)]) {
      await assert.rejects(
        new Promise((resolve, reject) => {
          const s = net.connect(port, addr, () => resolve(s.destroy()));
          s.on('error', reject);
        }),
        `not listening on ${addr}`,
      );
    }
  });

  it('draws the three workloads in their namespace and the edges between them; rogue -> web is denied', async () => {
    const g = await waitFor(
      'the map to show client -> web (forwarded) and rogue -> web (dropped)',
      () => graph(page),
      (g) => ['web', 'client', 'rogue'].every((n) => g.nodes.some((x) => x.id === `${NS}/${n}`)) && edge(g, 'client', 'web')?.verdict === 'forwarded' && edge(g, 'rogue', 'web')?.verdict === 'dropped',
    );
    assert.equal(g.connection, 'live');
    assert.ok(g.namespaces.includes(NS), 'workloads are grouped in a namespace box');
    for (const n of ['web', 'client', 'rogue']) {
      const x = g.nodes.find((y) => y.id === `${NS}/${n}`)!;
      assert.equal(x.label, n, `${n} is named by its app label`);
      assert.equal(x.namespace, NS);
      assert.equal(x.kind, 'workload');
    }
    const allowed = edge(g, 'client', 'web')!;
    const denied = edge(g, 'rogue', 'web')!;
    assert.ok(allowed.classes.includes('forwarded') && allowed.forwarded > 0 && allowed.dropped === 0, JSON.stringify(allowed));
    assert.ok(denied.classes.includes('dropped') && denied.dropped > 0 && denied.forwarded === 0, JSON.stringify(denied));
    assert.deepEqual(allowed.ports, ['8080/TCP']);
    assert.ok(denied.ports.includes('8080/TCP'));
    assert.equal(allowed.color, 'rgb(31,157,85)', 'forwarded edges are green');
    assert.equal(denied.color, 'rgb(214,69,69)', 'dropped edges are red');
    assert.ok(!edge(g, 'web', 'client'), 'replies count on the request edge (no web -> client edge)');

    // The graph is really drawn: cytoscape's canvases hold a good number of painted pixels.
    const painted: number = await page.evaluate(() => {
      const doc = (globalThis as any).document;
      let n = 0;
      for (const c of doc.querySelectorAll('#graph canvas')) {
        if (!c.width || !c.height) continue;
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
      }
      return n;
    });
    assert.ok(painted > 2000, `the graph canvas is drawn (${painted} painted pixels)`);
  });

  it('lists the flows in the table, and the verdict filter shows only dropped flows on map and table', async () => {
    const all = await waitFor('forwarded and dropped rows', () => rows(page), (r) => r.some((x) => x.verdict === 'FORWARDED') && r.some((x) => x.verdict === 'DROPPED'));
    const drop = all.find((r) => r.verdict === 'DROPPED' && r.source === `${NS}/rogue`)!;
    assert.ok(drop, 'rogue -> web is in the table');
    assert.equal(drop.destination, `${NS}/web`);
    assert.match(drop.cells[1], /shop\/rogue/);
    assert.match(drop.cells[2], new RegExp(`shop/web.*${ip.web.replace(/\./g, '\\.')}`));
    assert.equal(drop.cells[3], '8080/TCP');
    assert.match(drop.cells[5], /133/, 'the drop reason names 133 (policy denied)');
    assert.match(drop.cells[6], /SYN/, 'TCP flags');
    assert.equal(drop.cells[7], 'ingress');

    await page.selectOption('#f-verdict', 'DROPPED');
    const dropped = await waitFor('only dropped rows', () => rows(page), (r) => r.length > 0 && r.every((x) => x.verdict === 'DROPPED'));
    assert.ok(dropped.some((r) => r.source === `${NS}/rogue` && r.destination === `${NS}/web`));
    assert.match(page.url(), /verdict=DROPPED/, 'filters live in the URL');
    const g = await waitFor('the map to follow the filter', () => graph(page), (g) => !edge(g, 'client', 'web'));
    assert.equal(edge(g, 'rogue', 'web')?.verdict, 'dropped');
    assert.ok(g.edges.every((e) => e.verdict === 'dropped'), 'only dropped edges under verdict=DROPPED');
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-dropped.png') });

    // Free text narrows further; clearing restores everything.
    await page.selectOption('#f-verdict', '');
    await page.fill('#f-text', 'rogue');
    await waitFor('rows about rogue only', () => rows(page), (r) => r.length > 0 && r.every((x) => x.source === `${NS}/rogue` || x.destination === `${NS}/rogue`));
    await page.click('#clear');
    await waitFor('all rows back', () => rows(page), (r) => r.some((x) => x.verdict === 'FORWARDED') && r.some((x) => x.verdict === 'DROPPED'));
  });

  it('shows new traffic live, without a reload: a new edge and an edge turning mixed', async () => {
    const before = (await graph(page)).flows;
    // rogue -> client:9090 is allowed (client has no ingress policy); client -> web:9999 is not (only 8080).
    assert.deepEqual(node.probe(nsOf.rogue, [{ ip: ip.client, port: 9090, proto: 'tcp' }]), [true]);
    assert.deepEqual(node.probe(nsOf.client, [{ ip: ip.web, port: 9999, proto: 'tcp' }], 800), [false]);
    const g = await waitFor(
      'rogue -> client (forwarded) and client -> web (mixed)',
      () => graph(page),
      (g) => edge(g, 'rogue', 'client')?.verdict === 'forwarded' && edge(g, 'client', 'web')?.verdict === 'mixed',
    );
    assert.ok(g.flows > before, `more flows than at load (${before} -> ${g.flows})`);
    assert.equal(edge(g, 'client', 'web')!.color, 'rgb(224,142,11)', 'mixed edges are amber');
    assert.deepEqual(edge(g, 'client', 'web')!.ports, ['8080/TCP', '9999/TCP']);
    const r = await waitFor('the new flows in the table', () => rows(page), (r) => r.some((x) => x.cells[3] === '9090/TCP') && r.some((x) => x.cells[3] === '9999/TCP' && x.verdict === 'DROPPED'));
    assert.ok(r.length > 0);
    await page.click('#fit');
    await sleep(300);
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });
    assert.ok(fs.statSync(SCREENSHOT).size > 10_000, 'screenshot written');
    assert.deepEqual(pageErrors, [], 'no errors in the page');
  });
});
