/**
 * The proxy's HTTP/1 engine (src/proxy/http1.ts) between real loopback TCP
 * sockets: a client socket, the engine, and a raw "server" that records the
 * exact bytes it receives. No root, no datapath: the listener and the
 * redirection are tested end to end in test/e2e/l7-proxy.test.ts.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { ExchangeHooks, Http1Connection, Outcome, RequestHead } from '../../src/proxy/http1';
import { ChunkedScanner } from '../../src/proxy/llhttp';

type Handler = (req: string, sock: net.Socket) => void;

/** A raw HTTP server: calls handler with each complete request text (Content-Length or chunked framed by the test). */
async function rawServer(onData: (sock: net.Socket, chunk: Buffer, all: () => Buffer) => void): Promise<{ port: number; received: Buffer[]; close: () => void; conns: number }> {
  const received: Buffer[] = [];
  const state = { conns: 0 };
  const srv = net.createServer((s) => {
    state.conns++;
    let all = Buffer.alloc(0);
    s.on('data', (d) => {
      received.push(d);
      all = Buffer.concat([all, d]);
      onData(s, d, () => all);
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return {
    port: (srv.address() as net.AddressInfo).port,
    received,
    close: () => srv.close(),
    get conns() {
      return state.conns;
    },
  };
}

/** The engine behind a loopback listener; returns the port to connect to and what the hooks saw. */
async function proxyTo(upstreamPort: number, decide: (h: RequestHead) => Outcome | Promise<Outcome>) {
  const seen = { responses: [] as [string, number, string][], refused: [] as string[], upstreams: 0 };
  const hooks: ExchangeHooks = {
    decide,
    openUpstream: () => {
      seen.upstreams++;
      return net.connect(upstreamPort, '127.0.0.1');
    },
    onResponse: (h, code, verdict) => seen.responses.push([`${h.method} ${h.url}`, code, verdict]),
    onRefused: (h, what) => seen.refused.push(`${what} ${h.url}`),
    onError: () => {},
  };
  const srv = net.createServer({ allowHalfOpen: true }, (s) => new Http1Connection(s, hooks));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return { port: (srv.address() as net.AddressInfo).port, seen, close: () => srv.close() };
}

/** Send raw bytes, collect everything until the server closes or `until` matches. */
function exchange(port: number, data: string | Buffer, until?: (s: string) => boolean, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => c.write(data));
    let out = '';
    const t = setTimeout(() => {
      c.destroy();
      reject(new Error(`timed out; got: ${JSON.stringify(out)}`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(t);
      c.destroy();
      resolve(out);
    };
    c.on('data', (d) => {
      out += d.toString('latin1');
      if (until?.(out)) done();
    });
    c.on('end', done);
    c.on('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
  });
}

const allow = (): Outcome => ({ allowed: true, actions: [] });
const byPath = (h: RequestHead): Outcome => ({ allowed: h.url.startsWith('/ok'), actions: [] });
const count = (s: string, sub: string) => s.split(sub).length - 1;

/** Answers each request (by its request line) with a Content-Length response echoing the line. */
function echoResponder() {
  return (s: net.Socket, _d: Buffer, all: () => Buffer) => {
    // Requests in these tests are bodiless or Content-Length framed; answer each complete one once.
    const text = all().toString('latin1');
    const st = s as net.Socket & { answered?: number };
    const heads = text.split('\r\n\r\n').length - 1;
    while ((st.answered ?? 0) < heads) {
      const idx = st.answered ?? 0;
      const line = text.split('\r\n\r\n')[idx].split('\r\n').find((l) => /^[A-Z]+ \//.test(l)) ?? '?';
      const body = `echo ${line}\n`;
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      st.answered = idx + 1;
    }
  };
}

describe('proxy HTTP/1 engine', () => {
  const cleanup: (() => void)[] = [];
  after(() => cleanup.forEach((f) => f()));

  it('forwards allowed requests byte for byte and answers denied ones with 403 "Access denied", in pipeline order', async () => {
    const up = await rawServer(echoResponder());
    const px = await proxyTo(up.port, byPath);
    cleanup.push(up.close, px.close);
    const reqs = ['GET /ok/1 HTTP/1.1\r\nHost: a\r\nX-Odd:   spaced  \r\nx-case: Keep\r\n\r\n', 'GET /no HTTP/1.1\r\nHost: a\r\n\r\n', 'GET /ok/3 HTTP/1.1\r\nHost: a\r\n\r\n'];
    const out = await exchange(px.port, reqs.join(''), (s) => count(s, 'HTTP/1.1 ') === 3);
    const parts = out.split('HTTP/1.1 ').slice(1);
    assert.match(parts[0], /^200 OK[\s\S]*echo GET \/ok\/1 HTTP\/1.1/);
    assert.match(parts[1], /^403 Forbidden\r\ncontent-length: 14\r\ncontent-type: text\/plain\r\n\r\nAccess denied\n$/);
    assert.match(parts[2], /^200 OK[\s\S]*echo GET \/ok\/3/);
    assert.equal(Buffer.concat(up.received).toString('latin1'), reqs[0] + reqs[2], 'the server got exactly the allowed requests, unchanged');
    assert.deepEqual(px.seen.responses, [['GET /ok/1', 200, 'forwarded'], ['GET /no', 403, 'denied'], ['GET /ok/3', 200, 'forwarded']]);
    assert.equal(px.seen.upstreams, 1, 'one upstream connection, kept alive');
  });

  it('discards a denied request body and forwards a chunked one exactly; chunked responses pass through', async () => {
    const up = await rawServer((s, _d, all) => {
      const t = all().toString('latin1');
      if (t.endsWith('Trailer: x\r\n\r\n') && !(s as any).done) {
        (s as any).done = true;
        s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
        setTimeout(() => s.write('6\r\n world\r\n0\r\n\r\n'), 10);
      }
    });
    const px = await proxyTo(up.port, byPath);
    cleanup.push(up.close, px.close);
    const denied = 'POST /no HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nsecret body';
    const chunked = 'POST /ok/c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n';
    const out = await exchange(px.port, denied + chunked, (s) => s.endsWith('0\r\n\r\n'));
    assert.match(out, /^HTTP\/1.1 403 Forbidden[\s\S]*Access denied\nHTTP\/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n$/);
    assert.equal(Buffer.concat(up.received).toString('latin1'), chunked);
  });

  it('refuses upgrades and CONNECT with 403 and closes; never forwards them', async () => {
    const up = await rawServer(echoResponder());
    const px = await proxyTo(up.port, allow);
    cleanup.push(up.close, px.close);
    const ws = await exchange(px.port, 'GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n');
    assert.match(ws, /^HTTP\/1.1 403 Forbidden\r\n[\s\S]*connection: close\r\n\r\n$/);
    const ct = await exchange(px.port, 'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n');
    assert.match(ct, /^HTTP\/1.1 403 Forbidden/);
    assert.deepEqual(px.seen.refused, ['upgrade /chat', 'CONNECT a:443']);
    assert.equal(up.received.length, 0);
  });

  it('header actions rewrite only the head; the request line stays as sent', async () => {
    const up = await rawServer(echoResponder());
    const px = await proxyTo(up.port, () => ({ allowed: true, actions: [{ action: 'REPLACE', name: 'X-Env', value: 'prod' }, { action: 'DELETE', name: 'X-Drop' }] }));
    cleanup.push(up.close, px.close);
    await exchange(px.port, 'GET /x?a=1 HTTP/1.1\r\nHost: a\r\nX-Drop: 1\r\nX-Env: dev\r\n\r\n', (s) => s.includes('echo'));
    assert.equal(Buffer.concat(up.received).toString('latin1'), 'GET /x?a=1 HTTP/1.1\r\nHost: a\r\nX-Env: prod\r\n\r\n');
  });

  it('503 when the server cannot be reached, and the connection stays usable', async () => {
    const dead = await rawServer(() => {});
    dead.close();
    await new Promise((r) => setTimeout(r, 50));
    const px = await proxyTo(dead.port, allow);
    cleanup.push(px.close);
    const out = await exchange(px.port, 'GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n', (s) => count(s, 'HTTP/1.1 503') === 2);
    assert.equal(count(out, 'HTTP/1.1 503 Service Unavailable'), 2);
    assert.match(out, /upstream connect error or disconnect\/reset before headers/);
  });

  it('a server closing an idle keep-alive connection: the next request opens a new one (retried once if it raced)', async () => {
    const up = await rawServer((s, _d, all) => {
      if (all().includes('\r\n\r\n')) {
        s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
    const px = await proxyTo(up.port, allow);
    cleanup.push(up.close, px.close);
    const c = net.connect(px.port, '127.0.0.1');
    const got: string[] = [];
    c.on('data', (d) => got.push(d.toString()));
    await new Promise<void>((r) => c.once('connect', () => r()));
    c.write('GET /1 HTTP/1.1\r\nHost: a\r\n\r\n');
    await waitFor(() => got.join('').includes('ok'));
    await new Promise((r) => setTimeout(r, 50));
    c.write('GET /2 HTTP/1.1\r\nHost: a\r\n\r\n');
    await waitFor(() => count(got.join(''), 'HTTP/1.1 200') === 2);
    c.destroy();
    assert.equal(up.conns, 2);
  });

  it('a response with Connection: close closes the client connection after it', async () => {
    const up = await rawServer((s) => s.write('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye'));
    const px = await proxyTo(up.port, allow);
    cleanup.push(up.close, px.close);
    const out = await exchange(px.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n');
    assert.match(out, /Connection: close[\s\S]*bye$/);
  });

  it('HEAD responses have no body; 100 Continue passes through before the final response', async () => {
    const up = await rawServer((s, _d, all) => {
      const t = all().toString();
      if (t.startsWith('HEAD') && !(s as any).h) {
        (s as any).h = 1;
        s.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n');
      }
      if (t.includes('POST') && !(s as any).p) {
        (s as any).p = 1;
        s.write('HTTP/1.1 100 Continue\r\n\r\n');
      }
      if (t.endsWith('abc') && !(s as any).b) {
        (s as any).b = 1;
        s.write('HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n');
      }
    });
    const px = await proxyTo(up.port, allow);
    cleanup.push(up.close, px.close);
    const out = await exchange(px.port, 'HEAD / HTTP/1.1\r\nHost: a\r\n\r\nPOST /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc', (s) => s.includes('201'));
    assert.match(out, /^HTTP\/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP\/1.1 100 Continue\r\n\r\nHTTP\/1.1 201 Created/);
    assert.deepEqual(px.seen.responses.map((r) => r[1]), [200, 201]);
  });

  it('a decision that waits (unknown endpoint) holds the pipeline, then answers in order', async () => {
    const up = await rawServer(echoResponder());
    let first = true;
    const px = await proxyTo(up.port, (h) => {
      if (first) {
        first = false;
        return new Promise((r) => setTimeout(() => r(byPath(h)), 100));
      }
      return byPath(h);
    });
    cleanup.push(up.close, px.close);
    const out = await exchange(px.port, 'GET /no HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n', (s) => s.includes('echo'));
    assert.match(out, /^HTTP\/1.1 403[\s\S]*HTTP\/1.1 200 OK/);
  });

  it('malformed requests get 400 and the connection closes', async () => {
    const up = await rawServer(echoResponder());
    const px = await proxyTo(up.port, allow);
    cleanup.push(up.close, px.close);
    const out = await exchange(px.port, 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n');
    assert.match(out, /^HTTP\/1.1 400 Bad Request/);
    assert.equal(up.received.length, 0, 'a request smuggling attempt never reaches the server');
  });
});

describe('chunked body scanner', () => {
  it('finds the end of a chunked body across splits, with extensions and trailers', () => {
    const body = Buffer.from('4;x=y\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nA: b\r\nC: d\r\n\r\nNEXT');
    for (let split = 1; split < body.length; split += 3) {
      const s = new ChunkedScanner();
      const a = s.scan(body.subarray(0, split));
      const b = s.done ? 0 : s.scan(body.subarray(split));
      assert.equal(s.done, true, `split at ${split}`);
      assert.equal(a + b, body.length - 4, `split at ${split}`);
    }
    assert.equal(new ChunkedScanner().scan(Buffer.from('zz\r\n')), -1);
  });
});

async function waitFor(f: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
