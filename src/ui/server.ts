/**
 * `membrane ui`: a small HTTP server run by the CLI process, bound to 127.0.0.1
 * only. It serves the bundled front end (dist/ui, built by scripts/bundle-ui.js)
 * and forwards read-only API calls to the agent's Unix socket:
 *
 *   GET /api/<path>?<query>          -> agent GET /v1/<path>?<query>, streamed through
 *   GET /api/flows/stream?<filters>  -> agent GET /v1/flows?follow=1&last=N&<filters>,
 *                                       ndjson turned into server-sent events (one flow per event;
 *                                       the agent's lost_events records as `event: lost`);
 *                                       with --all-nodes (cluster mode), GET /v1/flows?all_nodes=1
 *                                       every second (new flows of every node, merged by time)
 *
 * The stream keeps the browser's backpressure: when the page does not keep up,
 * this server stops reading from the agent (which then drops flows for this
 * client, counts them and says so in the stream) instead of buffering.
 *
 * Only GET is forwarded, so a page in the browser can look but never change the
 * node. Requests whose Host header does not name this server are refused (a
 * DNS-rebinding page cannot use it to reach the agent).
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

export const DEFAULT_UI_PORT = 12000;
const HOST = '127.0.0.1';
/** Flows asked for when a stream opens, before following. */
const STREAM_BACKLOG = 2000;
const HEARTBEAT_MS = 15_000;

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

/** Where the bundled front end lives: dist/ui next to dist/src/ui/server.js. */
export function defaultStaticDir(): string {
  return path.resolve(__dirname, '..', '..', 'ui');
}

export interface UiServerOptions {
  socket: string;
  port?: number;
  staticDir?: string;
  /** Cluster mode: show the flows of every node (the agent asks them through the relay). */
  allNodes?: boolean;
}

const CLUSTER_POLL_MS = 1000;

/**
 * The cluster-wide flow stream: the agent's merged view of every node, asked
 * every second for what is new (since the last flow's time), de-duplicated by
 * flow id, as server-sent events like the local stream. Nodes that cannot be
 * asked come as `event: nodeerror`.
 */
function clusterFlowStream(socket: string, url: URL, req: http.IncomingMessage, res: http.ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  res.write('retry: 2000\n\nevent: ready\ndata: {}\n\n');
  let closed = false;
  let since: string | undefined;
  let seen = new Set<string>();
  let timer: NodeJS.Timeout | undefined;
  let current: http.ClientRequest | undefined;
  const poll = () => {
    const q = new URLSearchParams(url.searchParams);
    q.delete('follow');
    q.set('all_nodes', '1');
    if (since) {
      q.set('since', since);
      q.delete('last');
    } else if (!q.has('last')) q.set('last', String(STREAM_BACKLOG));
    current = http.request({ socketPath: socket, method: 'GET', path: `/v1/flows?${q}`, headers: { accept: 'application/x-ndjson' } }, (up) => {
      let text = '';
      up.setEncoding('utf8');
      up.on('data', (c: string) => (text += c));
      up.on('end', () => {
        if (closed) return;
        if ((up.statusCode ?? 500) >= 400) {
          res.write(`event: apierror\ndata: ${JSON.stringify({ status: up.statusCode, error: text.slice(0, 500) })}\n\n`);
          finish();
          return;
        }
        let out = '';
        const next = new Set<string>();
        for (const line of text.split('\n')) {
          if (!line.trim()) continue;
          if (line.startsWith('{"node_error"')) {
            out += `event: nodeerror\ndata: ${line}\n\n`;
            continue;
          }
          const f = JSON.parse(line) as { uuid?: string; time: string };
          const key = f.uuid ?? line;
          next.add(key);
          if (seen.has(key)) continue;
          out += `data: ${line}\n\n`;
          if (!since || f.time > since) since = f.time;
        }
        seen = next; // flows at or after `since` come again next time: only those need remembering
        if (out) res.write(out);
        timer = setTimeout(poll, CLUSTER_POLL_MS);
      });
    });
    current.on('error', (e: NodeJS.ErrnoException) => {
      const { body } = agentError(e, socket);
      res.write(`event: apierror\ndata: ${JSON.stringify({ status: 502, error: (body as { error: string }).error })}\n\n`);
      finish();
    });
    current.end();
  };
  const finish = () => {
    if (closed) return;
    closed = true;
    if (timer) clearTimeout(timer);
    current?.destroy();
    res.end();
  };
  req.on('close', finish);
  poll();
}

export interface UiServer {
  url: string;
  port: number;
  server: http.Server;
  close(): Promise<void>;
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

function agentError(e: NodeJS.ErrnoException, socket: string): { status: number; body: unknown } {
  const unreachable = e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'EACCES';
  return {
    status: 502,
    body: { error: unreachable ? `cannot reach the membrane agent at ${socket}: ${e.message}` : `agent request failed: ${e.message}`, kind: unreachable ? 'AgentUnreachable' : 'AgentError' },
  };
}

/** GET /api/<rest> -> agent GET /v1/<rest>, status, type and body passed through. */
function proxy(socket: string, apiPath: string, search: string, req: http.IncomingMessage, res: http.ServerResponse): void {
  const upstream = http.request({ socketPath: socket, method: 'GET', path: `/v1/${apiPath}${search}`, headers: { accept: 'application/json' } }, (up) => {
    res.writeHead(up.statusCode ?? 502, {
      'content-type': up.headers['content-type'] ?? 'application/octet-stream',
      'cache-control': 'no-store',
    });
    up.pipe(res);
  });
  upstream.on('error', (e: NodeJS.ErrnoException) => {
    if (res.headersSent) res.destroy();
    else {
      const { status, body } = agentError(e, socket);
      sendJson(res, status, body);
    }
  });
  req.on('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });
  upstream.end();
}

/**
 * The live flow stream as server-sent events. Each ndjson line of the agent's
 * follow stream becomes one `data:` event, after a `ready` event once the agent
 * answered. Upstream errors become an `apierror`
 * event ({status, error}) and the stream ends; the page decides whether to retry.
 */
function flowStream(socket: string, url: URL, req: http.IncomingMessage, res: http.ServerResponse): void {
  const q = new URLSearchParams(url.searchParams);
  q.set('follow', '1');
  if (!q.has('last')) q.set('last', String(STREAM_BACKLOG));
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  res.write('retry: 2000\n\n');
  let closed = false;
  const heartbeat = setInterval(() => res.write(': ping\n\n'), HEARTBEAT_MS);
  const finish = () => {
    if (closed) return;
    closed = true;
    clearInterval(heartbeat);
    upstream.destroy();
    res.end();
  };
  const fail = (status: number, error: string) => {
    if (closed) return;
    res.write(`event: apierror\ndata: ${JSON.stringify({ status, error })}\n\n`);
    finish();
  };
  const upstream = http.request({ socketPath: socket, method: 'GET', path: `/v1/flows?${q}`, headers: { accept: 'application/x-ndjson' } }, (up) => {
    up.setEncoding('utf8');
    if ((up.statusCode ?? 500) >= 400) {
      let text = '';
      up.on('data', (c: string) => (text += c));
      up.on('end', () => {
        let msg = `HTTP ${up.statusCode}`;
        try {
          const parsed = JSON.parse(text);
          if (parsed?.error) msg = String(parsed.error);
        } catch {
          if (text.trim()) msg = text.trim().slice(0, 500);
        }
        fail(up.statusCode ?? 500, msg);
      });
      return;
    }
    res.write('event: ready\ndata: {}\n\n');
    let buf = '';
    up.on('data', (chunk: string) => {
      buf += chunk;
      let out = '';
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        // A flow is one JSON object; SSE data must not contain newlines, and JSON.parse
        // rejects anything that is not a whole record.
        if (line) out += line.startsWith('{"lost_events"') ? `event: lost\ndata: ${line}\n\n` : `data: ${line}\n\n`;
      }
      // Backpressure: a page that does not keep up stops the agent stream (the agent drops for it).
      if (out && !res.write(out) && !closed) {
        up.pause();
        res.once('drain', () => up.resume());
      }
    });
    up.on('end', () => {
      if (buf.trim()) res.write(`data: ${buf.trim()}\n\n`);
      fail(0, 'the agent ended the flow stream');
    });
    up.on('error', () => fail(0, 'the flow stream from the agent broke'));
  });
  upstream.on('error', (e: NodeJS.ErrnoException) => {
    const { body } = agentError(e, socket);
    fail(502, (body as { error: string }).error);
  });
  req.on('close', finish);
  upstream.end();
}

function serveStatic(dir: string, pathname: string, res: http.ServerResponse): void {
  let rel: string;
  try {
    rel = decodeURIComponent(pathname);
  } catch {
    return sendJson(res, 400, { error: 'bad path' });
  }
  if (rel === '/' || rel === '') rel = '/index.html';
  const file = path.resolve(dir, '.' + rel);
  if (!file.startsWith(dir + path.sep)) return sendJson(res, 404, { error: 'not found' });
  fs.readFile(file, (err, data) => {
    if (err) {
      if (rel === '/index.html') return sendJson(res, 500, { error: `the UI is not built (${file} missing): run scripts/build.sh` });
      return sendJson(res, 404, { error: 'not found' });
    }
    res.writeHead(200, {
      'content-type': MIME[path.extname(file)] ?? 'application/octet-stream',
      'content-length': data.length,
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      ...(file.endsWith('.html') ? { 'content-security-policy': "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'" } : {}),
    });
    res.end(data);
  });
}

export function createUiServer(opts: UiServerOptions): http.Server {
  const staticDir = path.resolve(opts.staticDir ?? defaultStaticDir());
  const server = http.createServer((req, res) => {
    const port = (server.address() as { port: number } | null)?.port;
    const host = (req.headers.host ?? '').toLowerCase();
    if (host !== `127.0.0.1:${port}` && host !== `localhost:${port}`) return sendJson(res, 421, { error: `unexpected Host header "${host}"` });
    if (req.method !== 'GET' && req.method !== 'HEAD') return sendJson(res, 405, { error: 'the UI is read-only: only GET' });
    const url = new URL(req.url ?? '/', `http://${host}`);
    if (url.pathname === '/api/flows/stream') return opts.allNodes ? clusterFlowStream(opts.socket, url, req, res) : flowStream(opts.socket, url, req, res);
    if (url.pathname.startsWith('/api/')) {
      const rest = url.pathname.slice('/api/'.length);
      if (!rest || rest.split('/').some((s) => s === '..' || s === '.')) return sendJson(res, 400, { error: 'bad API path' });
      return proxy(opts.socket, rest, url.search, req, res);
    }
    serveStatic(staticDir, url.pathname, res);
  });
  return server;
}

/** Start the server on 127.0.0.1:port (0 picks a free port). */
export function startUiServer(opts: UiServerOptions): Promise<UiServer> {
  const server = createUiServer(opts);
  const port = opts.port ?? DEFAULT_UI_PORT;
  return new Promise((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EADDRINUSE') reject(new Error(`port ${port} on ${HOST} is in use: choose another with --port N`));
      else reject(e);
    });
    server.listen(port, HOST, () => {
      const actual = (server.address() as { port: number }).port;
      resolve({
        url: `http://${HOST}:${actual}/`,
        port: actual,
        server,
        close: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          }),
      });
    });
  });
}

export function parsePort(v: string | true | undefined): number {
  if (v === undefined) return DEFAULT_UI_PORT;
  const n = Number(v);
  if (typeof v !== 'string' || !/^\d+$/.test(v) || n > 65535) throw new Error(`--port: "${v === true ? '' : v}" is not a port number (0-65535)`);
  return n;
}

/**
 * The CLI command: check the agent answers, serve until SIGINT/SIGTERM. Prints
 * the URL at once; resolves with nothing more to print.
 */
export async function runUi(socket: string, port: string | true | undefined, out: NodeJS.WritableStream = process.stdout, allNodes = false): Promise<string> {
  let p: number;
  try {
    p = parsePort(port);
  } catch (e) {
    const { UsageError } = await import('../cli/main');
    throw new UsageError((e as Error).message);
  }
  // Fail early, with the CLI's usual message, if there is no agent to show.
  const { AgentClient } = await import('../agent/client');
  await new AgentClient(socket, 5_000).get('/v1/status');
  if (!fs.existsSync(path.join(defaultStaticDir(), 'index.html'))) throw new Error(`the UI is not built (${defaultStaticDir()}/index.html missing): run scripts/build.sh`);
  const ui = await startUiServer({ socket, port: p, allNodes });
  out.write(`Membrane UI: ${ui.url}\n(agent ${socket}${allNodes ? ', flows of every node' : ''}; serving on ${HOST} only; Ctrl-C to stop)\n`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      ui.close().then(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  return '';
}
