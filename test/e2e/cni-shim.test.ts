/**
 * bin/membrane-cni is a small C program that forwards to the agent; what it
 * decides on its own (no agent needed) must agree with the agent's logic in
 * src/cni: VERSION, the JSON checks, the two fields it relies on (cniVersion,
 * socket), and what it says when the agent cannot be reached or does not
 * answer properly. Documents are generated (seeded, so every run checks the
 * same ones) and compared with JSON.parse-based expectations.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { CNI_BIN, TestNode } from '../helpers/node';
import { ping } from '../helpers/sys';
import { SUPPORTED_VERSIONS, versionAnswer } from '../../src/cni/plugin';

function shim(command: string | undefined, stdin: string | Buffer, env: Record<string, string> = {}) {
  const r = spawnSync(CNI_BIN, [], { input: stdin, env: { ...(command !== undefined ? { CNI_COMMAND: command } : {}), ...env }, timeout: 40_000, maxBuffer: 64 << 20 });
  const stdout = r.stdout?.toString('utf8') ?? '';
  let json: any;
  try {
    json = stdout.trim() ? JSON.parse(stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { code: r.status ?? -1, stdout, json };
}

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const STRINGS = ['', 'x', '1.1.0', '0.4.0', '9.9.9', 'a"b', 'back\\slash', 'tab\there', 'nl\nx', 'é', '\u2028', '/abs/path', 'rel/path', '\ud83d\ude00', '\ud800', 'x\udc00y', '/x\u0000y'];

function genValue(r: () => number, depth: number): unknown {
  const k = Math.floor(r() * (depth > 3 ? 5 : 8));
  switch (k) {
    case 0:
      return null;
    case 1:
      return r() < 0.5;
    case 2:
      return [0, -1, 1.5, 1e21, -0.0, 123456789][Math.floor(r() * 6)];
    case 3:
    case 4:
      return STRINGS[Math.floor(r() * STRINGS.length)];
    case 5:
    case 6: {
      const o: Record<string, unknown> = {};
      const n = Math.floor(r() * 4);
      for (let i = 0; i < n; i++) o[['cniVersion', 'socket', 'name', 'a', 'b'][Math.floor(r() * 5)]] = genValue(r, depth + 1);
      return o;
    }
    default:
      return Array.from({ length: Math.floor(r() * 3) }, () => genValue(r, depth + 1));
  }
}

/** A configuration-like document, sometimes reformatted, sometimes broken. */
function genDoc(r: () => number, socket: string): string {
  const o: Record<string, unknown> = {};
  if (r() < 0.85) o.cniVersion = r() < 0.7 ? SUPPORTED_VERSIONS[Math.floor(r() * SUPPORTED_VERSIONS.length)] : genValue(r, 1);
  o.name = 'n';
  if (r() < 0.3) o.nested = { cniVersion: 'nested-not-top', socket: 'rel' };
  if (r() < 0.8) o.socket = r() < 0.75 ? socket : genValue(r, 1);
  if (r() < 0.2) o.prevResult = genValue(r, 1);
  let text = r() < 0.5 ? JSON.stringify(o) : JSON.stringify(o, null, Math.floor(r() * 4));
  if (r() < 0.15) text = text.replace(/"cniVersion"/, '"cni\\u0056ersion"'); // the same key, escaped
  if (r() < 0.1) text = text.replace(/}$/, ',"cniVersion":"0.3.1"}'); // a duplicate: the last one counts
  const m = r();
  if (m < 0.06) text = text.slice(0, Math.floor(r() * text.length));
  else if (m < 0.12) {
    const at = Math.floor(r() * text.length);
    text = text.slice(0, at) + ['}', ',', '"', '\\', 'x', ' ', '\u0001', ']', '[', ':'][Math.floor(r() * 10)] + text.slice(at);
  } else if (m < 0.15) text = text.replace(/}$/, ',}');
  else if (m < 0.18) text = `${text} x`;
  else if (m < 0.2) text = ['[]', '"s"', '1', 'null', 'true', ' {} '][Math.floor(r() * 6)];
  return text;
}

/** What the shim must answer for ADD when nothing listens at the socket: the agent's checks, in the shim's order. */
function expectedUnreachable(text: string): { code: number; match?: RegExp } {
  let c: any;
  try {
    c = JSON.parse(text);
  } catch {
    return { code: 6 };
  }
  if (!c || typeof c !== 'object' || Array.isArray(c)) return { code: 6, match: /must be a JSON object/ };
  if (typeof c.cniVersion !== 'string' || c.cniVersion === '') return { code: 7, match: /cniVersion/ };
  if (!SUPPORTED_VERSIONS.includes(c.cniVersion)) return { code: 1, match: /not supported/ };
  if (c.socket !== undefined && (typeof c.socket !== 'string' || !c.socket.startsWith('/') || c.socket.includes('\0'))) return { code: 7, match: /"socket" must be an absolute path/ };
  return { code: 11, match: /cannot reach the membrane agent/ };
}

describe('the CNI shim (bin/membrane-cni) on its own', () => {
  let dir = '';
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbtshim-'));
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('answers VERSION exactly as the agent-side logic does, for generated and broken documents', () => {
    const r = rng(15);
    for (let i = 0; i < 300; i++) {
      const text = genDoc(r, '/x.sock');
      const out = shim('VERSION', text);
      assert.equal(out.code, 0, text);
      assert.equal(out.stdout, versionAnswer(text) + '\n', `VERSION of ${JSON.stringify(text)}`);
    }
  });

  it('checks the JSON, cniVersion and socket as the agent would, and names an unreachable agent (11, STATUS 50)', () => {
    const sock = path.join(dir, 'nobody-listens.sock');
    const r = rng(1500);
    const seen = new Set<number>();
    for (let i = 0; i < 400; i++) {
      const text = genDoc(r, sock);
      const want = expectedUnreachable(text);
      const out = shim('ADD', text, { CNI_CONTAINERID: 'c', CNI_NETNS: '/run/netns/x', CNI_IFNAME: 'eth0' });
      assert.equal(out.code, 1, text);
      assert.equal(out.json?.code, want.code, `${JSON.stringify(text)} -> ${out.stdout}`);
      if (want.match) assert.match(out.json.msg, want.match, text);
      seen.add(want.code);
    }
    assert.deepEqual([...seen].sort((a, b) => a - b), [1, 6, 7, 11], 'the generated documents cover every outcome');
    const st = shim('STATUS', JSON.stringify({ cniVersion: '1.1.0', name: 'n', socket: sock }));
    assert.equal(st.json.code, 50);
    assert.match(st.json.msg, /nobody-listens\.sock: connect ENOENT/);
    assert.equal(st.json.cniVersion, '1.1.0');
    // Errors about reaching the agent are written in the configuration's version.
    assert.equal(shim('DEL', JSON.stringify({ cniVersion: '0.4.0', name: 'n', socket: sock })).json.cniVersion, '0.4.0');
  });

  it('refuses a missing or unknown CNI_COMMAND, a socket path too long for a Unix socket, and an oversized configuration', () => {
    assert.match(shim(undefined, '{}').json.msg, /CNI_COMMAND is required/);
    const bad = shim('ADD\n', '{}');
    assert.equal(bad.json.code, 4);
    assert.equal(bad.json.msg, 'environment variable CNI_COMMAND: "ADD\\n" is not one of ADD, DEL, CHECK, STATUS, GC, VERSION');
    const long = shim('ADD', JSON.stringify({ cniVersion: '1.1.0', name: 'n', socket: '/' + 'x'.repeat(120) }));
    assert.equal(long.json.code, 7);
    assert.match(long.json.msg, /longer than the 107 bytes/);
    const huge = shim('ADD', JSON.stringify({ cniVersion: '1.1.0', name: 'n', pad: 'x'.repeat(5 << 20) }));
    assert.equal(huge.json.code, 6);
    assert.match(huge.json.msg, /larger than 4194304 bytes/);
  });

  it('reports an agent that closes the connection before answering (11) or does not speak CNI (102)', async () => {
    const serve = async (sockName: string, onConn: (c: net.Socket) => void) => {
      const p = path.join(dir, sockName);
      const srv = net.createServer(onConn);
      await new Promise<void>((res) => srv.listen(p, res));
      return { p, close: () => new Promise<void>((res) => srv.close(() => res())) };
    };
    const conf = (p: string) => JSON.stringify({ cniVersion: '1.1.0', name: 'n', socket: p });
    const env = { CNI_CONTAINERID: 'c', CNI_NETNS: '/run/netns/x', CNI_IFNAME: 'eth0' };
    const run = (p: string, command = 'ADD') =>
      new Promise<ReturnType<typeof shim>>((res) => {
        // Run the shim without blocking this event loop (the servers live here).
        const child = require('node:child_process').spawn(CNI_BIN, [], { env: { CNI_COMMAND: command, ...env } });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d));
        child.on('close', (code: number) => res({ code, stdout: out, json: JSON.parse(out) }));
        child.stdin.end(conf(p));
      });

    const drop = await serve('drop.sock', (c) => c.once('data', () => c.destroy()));
    try {
      const r = await run(drop.p);
      assert.equal(r.json.code, 11, r.stdout);
      assert.match(r.json.msg, /closed the connection before answering.*try again/);
      assert.equal((await run(drop.p, 'STATUS')).json.code, 50);
    } finally {
      await drop.close();
    }
    const old = await serve('old.sock', (c) =>
      c.once('data', () => {
        const body = JSON.stringify({ message: 'Route POST:/v1/cni not found', error: 'Not Found', statusCode: 404 });
        c.end(`HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
      }),
    );
    try {
      const r = await run(old.p);
      assert.equal(r.json.code, 102, r.stdout);
      assert.match(r.json.msg, /HTTP 404: Not Found; is the agent older than this plugin\?/);
    } finally {
      await old.close();
    }
    const half = await serve('half.sock', (c) => c.once('data', () => c.end('HTTP/1.1 200 OK\r\nmembrane-cni-exit-code: 0\r\ncontent-length: 100\r\n\r\n{"partial"')));
    try {
      const r = await run(half.p);
      assert.equal(r.json.code, 11, r.stdout);
    } finally {
      await half.close();
    }
  });
});

describe('ADDs and DELs at once', () => {
  const node = new TestNode('par');

  before(async () => {
    await node.start();
  });
  after(async () => {
    await node.cleanup();
  });

  /** The plugin as a runtime runs it, without blocking this process (many at once). */
  const cni = (command: string, pod: { containerId: string; nsPath?: string }) =>
    new Promise<{ code: number; stdout: string }>((resolve) => {
      const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, CNI_COMMAND: command, CNI_CONTAINERID: pod.containerId, CNI_IFNAME: 'eth0', CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default' };
      if (pod.nsPath) env.CNI_NETNS = pod.nsPath;
      const child = require('node:child_process').spawn('nsenter', [`--net=/run/netns/${node.nodeNs}`, '--', CNI_BIN], { env });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d));
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      child.on('close', (code: number | null) => {
        clearTimeout(timer);
        resolve({ code: code ?? -1, stdout: out });
      });
      child.stdin.end(JSON.stringify(node.conf));
    });

  it('20 ADDs at once (more than the slots kept ready) all attach, with distinct addresses and working routes; 25 DELs at once (5 twice) leave nothing', async () => {
    const pods = Array.from({ length: 20 }, (_, i) => ({ ...node.podNs(`p${i}`), containerId: `${node.prefix}-p${i}` }));
    const adds = await Promise.all(pods.map((p) => cni('ADD', p)));
    for (const a of adds) assert.equal(a.code, 0, a.stdout);
    const ips = adds.map((a) => String(JSON.parse(a.stdout).ips[0].address).split('/')[0]);
    assert.equal(new Set(ips).size, 20, `distinct addresses: ${ips}`);
    const eps: any[] = node.cliJson(['endpoint', 'list']);
    assert.equal(eps.length, 20);
    assert.ok(eps.every((e) => e.state === 'ready'), JSON.stringify(eps.map((e) => [e.id, e.state, e.problems])));
    assert.ok(ping(pods[0].ns, ips[19]), 'first pod reaches the last one');
    assert.ok(ping(pods[19].ns, ips[0]), 'and back');

    const dels = await Promise.all([...pods, ...pods.slice(0, 5)].map((p) => cni('DEL', { containerId: p.containerId })));
    for (const d of dels) assert.equal(d.code, 0, d.stdout);
    assert.deepEqual(node.cliJson(['endpoint', 'list']), []);
    assert.deepEqual((node.cliJson(['ipam', 'list']).allocations as any[]).filter((a) => a.owner !== 'router'), []);
    const links = JSON.parse(node.nodeExec('ip', ['-j', 'link', 'show']).stdout) as any[];
    assert.deepEqual(links.filter((l) => String(l.ifname).startsWith('lxc')), []);
    // The recycled ids and slots serve the next pods.
    const again = await cni('ADD', pods[3]);
    assert.equal(again.code, 0, again.stdout);
    assert.equal((await cni('DEL', pods[3])).code, 0);
  });
});
