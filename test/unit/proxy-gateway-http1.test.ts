/**
 * The Gateway listener's HTTP/1 engine (src/proxy/gateway-http1.ts) between
 * real loopback TCP sockets: a client, the engine, and raw backends that
 * record the exact bytes they receive. No root, no datapath: the Gateway end
 * to end is test/e2e/gateway.test.ts.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { GatewayConnection, GatewayDecision, GatewayHooks } from '../../src/proxy/gateway-http1';
import type { HeadInfo } from '../../src/proxy/llhttp';

async function listen(onConn: (s: net.Socket) => void): Promise<{ port: number; close: () => void }> {
  const srv = net.createServer(onConn);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return { port: (srv.address() as net.AddressInfo).port, close: () => srv.close() };
}

/** A backend that answers every request (a request ends at the blank line; bodies are counted by Content-Length) with `answer(requestText)`, in chunks of `split` bytes. */
async function backend(answer: (req: string) => string, split = 0) {
  const seen: string[] = [];
  let conns = 0;
  const b = await listen((s) => {
    conns++;
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const cl = Number(/content-length: *(\d+)/i.exec(buf.slice(0, end))?.[1] ?? 0);
        const chunked = /transfer-encoding: *chunked/i.test(buf.slice(0, end));
        let total = end + 4 + cl;
        if (chunked) {
          const z = buf.indexOf('0\r\n\r\n', end + 4);
          if (z < 0) return;
          total = z + 5;
        }
        if (buf.length < total) return;
        const req = buf.slice(0, total);
        buf = buf.slice(total);
        seen.push(req);
        const out = Buffer.from(answer(req), 'latin1');
        if (!split) s.write(out);
        else for (let i = 0; i < out.length; i += split) s.write(out.subarray(i, i + split));
      }
    });
    s.on('error', () => {});
  });
  return { ...b, seen, get conns() { return conns; } };
}

const ok = (body: string, extra = '') => `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nx-backend: yes\r\n${extra}\r\n${body}`;

async function gateway(decide: (h: HeadInfo) => GatewayDecision) {
  const done: [string, number, string][] = [];
  const hooks: GatewayHooks = { decide, onDone: (h, code, v) => done.push([h.url, code, v]), onError: () => {} };
  const g = await listen((s) => new GatewayConnection(s, hooks, 2000));
  return { ...g, done };
}

function forward(port: number, h: HeadInfo, extra: Partial<Extract<GatewayDecision, { kind: 'forward' }>> = {}): GatewayDecision {
  let head = `${h.method} ${h.url} HTTP/1.1\r\n`;
  for (let i = 0; i + 1 < h.headers.length; i += 2) head += `${h.headers[i]}: ${h.headers[i + 1]}\r\n`;
  return { kind: 'forward', upstream: `127.0.0.1:${port}`, connect: () => ({ socket: net.connect(port, '127.0.0.1'), reused: false }), head: head + 'X-Forwarded-For: 127.0.0.1\r\n\r\n', ...extra };
}

/** Send raw bytes, collect the answer until `until` holds (or the connection closes). */
function exchange(port: number, data: string, until: (s: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => c.write(data));
    let out = '';
    const t = setTimeout(() => {
      c.destroy();
      reject(new Error(`timeout; got ${JSON.stringify(out)}`));
    }, 5000);
    const finish = () => {
      clearTimeout(t);
      c.destroy();
      resolve(out);
    };
    c.on('data', (d) => {
      out += d.toString('latin1');
      if (until(out)) finish();
    });
    c.on('end', finish);
    c.on('error', reject);
  });
}

const count = (s: string, re: RegExp) => (s.match(re) ?? []).length;

describe('Gateway HTTP/1 engine', () => {
  it('local replies and forwarded requests share one keep-alive client connection, answered in order (pipelined)', async () => {
    const b = await backend((req) => ok(req.split(' ')[1]));
    const g = await gateway((h) => (h.url === '/missing' ? { kind: 'reply', code: 404, body: 'route not found\n' } : forward(b.port, h)));
    const out = await exchange(g.port, 'GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /missing HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n', (s) => count(s, /HTTP\/1\.1 /g) === 3 && s.endsWith('/b'));
    assert.deepEqual(out.match(/HTTP\/1\.1 \d+/g), ['HTTP/1.1 200', 'HTTP/1.1 404', 'HTTP/1.1 200']);
    assert.ok(out.indexOf('/a') < out.indexOf('route not found') && out.indexOf('route not found') < out.lastIndexOf('/b'));
    assert.equal(b.conns, 1, 'one upstream connection, kept alive');
    assert.match(b.seen[0], /^GET \/a HTTP\/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n$/);
    assert.deepEqual(g.done, [['/a', 200, 'forwarded'], ['/missing', 404, 'error'], ['/b', 200, 'forwarded']]);
    g.close();
    b.close();
  });

  it('request bodies (Content-Length and chunked) are forwarded as received', async () => {
    const b = await backend(() => ok('done'));
    const g = await gateway((h) => forward(b.port, h));
    const body = 'x'.repeat(70_000);
    await exchange(g.port, `POST /cl HTTP/1.1\r\nHost: h\r\nContent-Length: ${body.length}\r\n\r\n${body}`, (s) => s.endsWith('done'));
    const chunked = '5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n';
    await exchange(g.port, `POST /ch HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n${chunked}`, (s) => s.endsWith('done'));
    assert.ok(b.seen[0].endsWith(`\r\n\r\n${body}`));
    assert.ok(b.seen[1].endsWith(`\r\n\r\n${chunked}`));
    g.close();
    b.close();
  });

  it('a ResponseHeaderModifier rebuilds the response head, even when it arrives in pieces; the body is untouched', async () => {
    const b = await backend(() => ok('payload', 'x-drop: 1\r\n'), 7);
    const g = await gateway((h) => forward(b.port, h, { responseHeaders: (raw) => [...raw.filter((_, i) => !(i % 2 === 0 && raw[i] === 'x-drop') && !(i % 2 === 1 && raw[i - 1] === 'x-drop')), 'x-added', 'yes'] }));
    const out = await exchange(g.port, 'GET /r HTTP/1.1\r\nHost: h\r\n\r\n', (s) => s.endsWith('payload'));
    assert.match(out, /^HTTP\/1\.1 200 OK\r\ncontent-length: 7\r\nx-backend: yes\r\nx-added: yes\r\n\r\npayload$/);
    g.close();
    b.close();
  });

  it('a backend that closed its kept-alive connection gets the next request on a new one; one that never answers is a 504; one that refuses is a 503', async () => {
    let n = 0;
    const flaky = await listen((s) => {
      n++;
      s.once('data', () => {
        if (n === 1) s.end(ok('first'));
        else s.end(ok('second'));
      });
      s.on('error', () => {});
    });
    const g = await gateway((h) => forward(flaky.port, h));
    // Two requests on one client connection, the second after the backend closed the first upstream connection.
    const out = await new Promise<string>((resolve, reject) => {
      const c = net.connect(g.port, '127.0.0.1', () => c.write('GET /1 HTTP/1.1\r\nHost: h\r\n\r\n'));
      let got = '';
      const t = setTimeout(() => reject(new Error(`timeout: ${got}`)), 5000);
      c.on('data', (d) => {
        got += d;
        if (got.endsWith('first')) setTimeout(() => c.write('GET /2 HTTP/1.1\r\nHost: h\r\n\r\n'), 50);
        if (got.endsWith('second')) {
          clearTimeout(t);
          c.destroy();
          resolve(got);
        }
      });
    });
    assert.deepEqual(out.match(/HTTP\/1\.1 \d+/g), ['HTTP/1.1 200', 'HTTP/1.1 200']);
    assert.equal(n, 2);
    const silent = await listen((s) => s.on('error', () => {}));
    const g2 = await gateway((h) => forward(silent.port, h));
    const timedOut = await exchange(g2.port, 'GET /slow HTTP/1.1\r\nHost: h\r\n\r\n', (s) => s.includes('timeout'));
    assert.match(timedOut, /^HTTP\/1\.1 504/);
    const closedPort = silent.port;
    silent.close();
    const g3 = await gateway((h) => forward(closedPort, h));
    assert.match(await exchange(g3.port, 'GET /x HTTP/1.1\r\nHost: h\r\n\r\n', (s) => s.includes('unavailable')), /^HTTP\/1\.1 503/);
    for (const x of [g, g2, g3, flaky]) x.close();
  });

  it('an idle upstream connection is handed back when its client connection ends, and serves the next client', async () => {
    const b = await backend((req) => ok(req.split(' ')[1]));
    const pool: net.Socket[] = [];
    const hooks: GatewayHooks = {
      decide: (h) => ({ ...(forward(b.port, h) as Extract<GatewayDecision, { kind: 'forward' }>), connect: () => (pool.length ? { socket: pool.pop()!, reused: true } : { socket: net.connect(b.port, '127.0.0.1'), reused: false }) }),
      onDone: () => {},
      onError: () => {},
      release: (_k, s) => pool.push(s),
    };
    const g = await listen((s) => new GatewayConnection(s, hooks, 2000));
    assert.ok((await exchange(g.port, 'GET /one HTTP/1.1\r\nHost: h\r\n\r\n', (s) => s.endsWith('/one'))).endsWith('/one'));
    for (let i = 0; i < 50 && !pool.length; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(pool.length, 1, 'released when the client connection closed');
    assert.ok((await exchange(g.port, 'GET /two HTTP/1.1\r\nHost: h\r\n\r\n', (s) => s.endsWith('/two'))).endsWith('/two'));
    assert.equal(b.conns, 1, 'the second client used the pooled connection');
    for (let i = 0; i < 50 && !pool.length; i++) await new Promise((r) => setTimeout(r, 10));
    for (const s of pool.splice(0)) s.destroy();
    g.close();
    b.close();
  });

  it('upgrades are refused with 400 and the connection closed', async () => {
    const g = await gateway(() => ({ kind: 'reply', code: 500, body: '' }));
    const out = await exchange(g.port, 'GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', () => false);
    assert.match(out, /^HTTP\/1\.1 400/);
    assert.match(out, /connection: close/);
    g.close();
  });
});
