/**
 * bin/membrane-proxy as a process, without an agent: it serves with the
 * configuration it saved (so a proxy restarted while the agent is away still
 * enforces the last rules), validates what it is sent (every problem named),
 * keeps a new configuration across its own restart, guards its directory
 * (owner-only control socket, one proxy per directory) and refuses connections
 * the datapath did not redirect to it. Needs root (IP_TRANSPARENT, bpffs).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { LineChannel, ProxyMessage } from '../../src/proxy/control';
import { DatapathFixture } from '../helpers/datapath';
import { REPO } from '../helpers/sys';

const PROXY_BIN = path.join(REPO, 'bin/membrane-proxy');
const fx = new DatapathFixture('pxp');
let dir: string;
const procs: ChildProcess[] = [];

function config(generation: number, port: number) {
  return {
    version: 1,
    generation,
    node: 'test',
    listeners: [{ name: 'http-ingress', kind: 'http-policy', address: '127.0.0.1', port, protocol: 'tcp', transparent: true, direction: 'ingress' }],
    policies: { none: { ingress: [], egress: [] } },
    endpoints: [{ id: 1, policy: 'none' }],
  };
}

function startProxy(): { p: ChildProcess; out: () => string; exited: Promise<number | null> } {
  const p = spawn(process.execPath, [PROXY_BIN, '--dir', dir, '--bpf-root', fx.pinRoot], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(p);
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  p.stderr!.on('data', (d) => (out += d));
  return { p, out: () => out, exited: new Promise((r) => p.once('exit', (code) => r(code))) };
}

/** Connect to the proxy's control socket (waiting for it) and collect its messages. */
async function control(): Promise<{ ch: LineChannel<ProxyMessage, unknown>; msgs: ProxyMessage[]; next: (t: ProxyMessage['type']) => Promise<ProxyMessage> }> {
  const sock = path.join(dir, 'control.sock');
  for (let i = 0; i < 100; i++) {
    const s = await new Promise<net.Socket | undefined>((resolve) => {
      const c = net.connect(sock);
      c.once('connect', () => resolve(c));
      c.once('error', () => resolve(undefined));
    });
    if (s) {
      const msgs: ProxyMessage[] = [];
      const waiters: (() => void)[] = [];
      const ch = new LineChannel<ProxyMessage, unknown>(s, (m) => {
        msgs.push(m);
        waiters.splice(0).forEach((w) => w());
      }, () => {});
      const next = async (t: ProxyMessage['type']) => {
        for (;;) {
          const i = msgs.findIndex((m) => m.type === t);
          if (i >= 0) return msgs.splice(i, 1)[0];
          await new Promise<void>((r) => {
            waiters.push(r);
            setTimeout(r, 5000);
          });
        }
      };
      return { ch, msgs, next };
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('no control socket');
}

async function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await done;
}

describe('membrane-proxy process', () => {
  before(() => {
    fx.load();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbtpxp-'));
  });
  after(async () => {
    for (const p of procs) await stop(p);
    fx.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('serves with its saved configuration, guards its directory, refuses undirected connections', async () => {
    const port = 20000 + Math.floor(Math.random() * 9000);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config(7, port)));
    const a = startProxy();
    const { ch, next } = await control();
    const hello = await next('hello');
    assert.equal(hello.type === 'hello' && hello.status.generation, 7);
    assert.deepEqual(hello.type === 'hello' && hello.status.listeners.map((l) => [l.name, l.port, l.state]), [['http-ingress', port, 'listening']]);
    assert.equal(fs.statSync(path.join(dir, 'control.sock')).mode & 0o777, 0o600, 'owner-only control socket');
    assert.equal(JSON.parse(fs.readFileSync(path.join(dir, 'proxy.pid'), 'utf8')).pid, a.p.pid);
    // A second proxy on the same directory refuses to start.
    const b = startProxy();
    assert.equal(await b.exited, 1);
    assert.match(b.out(), /another proxy already serves/);
    // A connection made to the listener itself (not redirected) is closed at once.
    const closed = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
      let got = '';
      c.on('data', (d) => (got += d));
      c.on('close', () => resolve(got === ''));
      c.on('error', () => resolve(true));
      setTimeout(() => resolve(false), 5000);
    });
    assert.ok(closed, 'closed without an answer');
    ch.close();
    await stop(a.p);
  });

  it('names every problem of a bad configuration and keeps the one in force; a new one survives a restart', async () => {
    const a = startProxy();
    const { ch, next } = await control();
    await next('hello');
    ch.send({ type: 'config', config: { ...config(8, 70000), listeners: [{ name: 'Bad Name', kind: 'gopher', address: '127.0.0.1', port: 70000, protocol: 'udp', transparent: 'yes' }] } });
    const bad = await next('applied');
    assert.ok(bad.type === 'applied' && bad.generation === -1);
    const err = bad.type === 'applied' ? bad.error ?? '' : '';
    for (const f of ['listeners[0].name', 'listeners[0].kind', 'listeners[0].port', 'listeners[0].protocol', 'listeners[0].transparent']) assert.ok(err.includes(f), `${f} named in: ${err}`);
    assert.equal(bad.type === 'applied' && bad.status.generation, 7, 'the configuration in force is kept');
    const port = 20000 + Math.floor(Math.random() * 9000);
    ch.send({ type: 'config', config: config(9, port) });
    const ok = await next('applied');
    assert.ok(ok.type === 'applied' && !ok.error && ok.generation === 9);
    ch.close();
    await stop(a.p);
    const c = startProxy();
    const again = await control();
    const hello = await again.next('hello');
    assert.equal(hello.type === 'hello' && hello.status.generation, 9, 'restarted with the last configuration');
    assert.equal(hello.type === 'hello' && hello.status.listeners[0].port, port);
    again.ch.close();
    await stop(c.p);
  });
});
