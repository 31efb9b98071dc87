/**
 * The Gateway listener (kind 'http-gateway'): a plain HTTP/1.1 listener on a
 * Gateway's address and port. Each request is routed with the listener's
 * table (ProxyConfig.gateways, evaluated by src/gateway/match.ts), which the
 * agent replaces without touching the listener: a request in flight keeps the
 * entry it was routed with, the next request sees the new table, and no
 * connection is closed by a route change.
 *
 *   no entry              404 "route not found"
 *   RequestRedirect       the status code (default 302) with Location
 *   backend by weight     weight 0 gets nothing; an unresolved backendRef (or
 *                         every weight 0) gets 500 for its share; a Service
 *                         without ready endpoints 503
 *   forwarded             RequestHeaderModifier and URLRewrite applied,
 *                         X-Forwarded-For / X-Forwarded-Proto added, on a
 *                         keep-alive pool per backend; the response gets
 *                         ResponseHeaderModifier
 *
 * Upstream connections come from the agent's ingress address
 * (`sourceAddress`, IP_TRANSPARENT, MARK_FROM_PROXY): the ipcache gives that
 * address the reserved identity `ingress`, so the backends' policy sees the
 * traffic as `fromEntities: [ingress]`, and the datapath steers the backends'
 * replies back to these sockets as it does for the L7 policy proxy's.
 * Every request and response is an L7 record with `route`.
 */
import * as http from 'node:http';
import * as net from 'node:net';
import { Pool, type buildConnector, type Dispatcher } from 'undici';
import type { GatewayTable, RouteBackend, RouteEntry } from '../gateway/model';
import { hostOnly, modifyHeaders, modifyPath, pickBackend, redirectLocation, route, splitTarget, type GatewayRequest } from '../gateway/match';
import type { ListenerConfig } from './config';
import { MARK_FROM_PROXY } from './constants';
import type { ListenerContext } from './http';
import type { Peer } from './identity';
import { sockets } from './sockets';

/** Hop-by-hop headers (RFC 9110 7.6.1), never forwarded; Transfer-Encoding is kept (Node re-frames the body). */
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'proxy-authenticate', 'proxy-authorization']);

function stripHop(raw: string[]): string[] {
  const extra = new Set<string>();
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i].toLowerCase() === 'connection') for (const t of raw[i + 1].split(',')) extra.add(t.trim().toLowerCase());
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const n = raw[i].toLowerCase();
    if (!HOP.has(n) && !extra.has(n)) out.push(raw[i], raw[i + 1]);
  }
  return out;
}

const CONNECT_TIMEOUT_MS = 5000;
/** No response head within this long: 504 (the reference proxy's default route timeout; undici's headersTimeout). */
const RESPONSE_TIMEOUT_MS = 15_000;

export class GatewayUpstreamError extends Error {
  constructor(
    message: string,
    readonly kind: 'connect-timeout' | 'response-timeout',
  ) {
    super(message);
  }
}

const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

export class HttpGatewayListener {
  private server?: http.Server;
  /** Keep-alive connection pools, one per backend endpoint (undici). */
  private readonly pools = new Map<string, Pool>();
  private readonly peers = new WeakMap<net.Socket, Peer>();
  private open = 0;
  state: 'starting' | 'listening' | 'error' | 'closed' = 'starting';
  error?: string;

  constructor(
    readonly cfg: ListenerConfig,
    private readonly ctx: ListenerContext,
  ) {}

  /** The pool of one backend endpoint; its connections come from the ingress address, marked so the datapath does not redirect them and steers the replies back. */
  private pool(ip: string, port: number): Pool {
    const key = `${ip}:${port}`;
    let p = this.pools.get(key);
    if (p) return p;
    const source = this.cfg.sourceAddress!;
    const connect: buildConnector.connector = (_opts, cb) => {
      let s: net.Socket;
      try {
        const fd = sockets().sockBound(source, 0, MARK_FROM_PROXY, true);
        s = new net.Socket({ fd, readable: true, writable: true, manualStart: true } as net.SocketConstructorOpts);
      } catch (e) {
        cb(e as Error, null);
        return;
      }
      s.setNoDelay(true);
      // A backend whose policy drops the connection must not hold the request forever.
      const t = setTimeout(() => s.destroy(new GatewayUpstreamError(`connect to ${key} timed out after ${CONNECT_TIMEOUT_MS} ms`, 'connect-timeout')), CONNECT_TIMEOUT_MS);
      const fail = (e: Error) => {
        clearTimeout(t);
        cb(e, null);
      };
      s.once('error', fail);
      s.once('connect', () => {
        clearTimeout(t);
        s.off('error', fail);
        cb(null, s);
      });
      s.connect({ host: ip, port });
    };
    p = new Pool(`http://${key}`, { connect, keepAliveTimeout: 30_000, keepAliveMaxTimeout: 60_000, headersTimeout: RESPONSE_TIMEOUT_MS, bodyTimeout: 0 });
    this.pools.set(key, p);
    return p;
  }

  get connections(): number {
    return this.open;
  }

  async start(): Promise<void> {
    const server = http.createServer({ noDelay: true, keepAlive: true, requestTimeout: 0 }, (req, res) => this.onRequest(req, res));
    server.keepAliveTimeout = 60_000;
    server.on('connection', (s: net.Socket) => {
      this.open++;
      this.ctx.counters.connections++;
      s.once('close', () => {
        this.open--;
        this.ctx.counters.connections--;
      });
    });
    server.on('clientError', (_e, s) => {
      if (s.writable) s.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      else s.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => {
        this.state = 'error';
        this.error = e.message;
        reject(e);
      });
      server.listen({ host: this.cfg.address, port: this.cfg.port, backlog: 4096 }, () => resolve());
    });
    server.on('error', (e) => {
      this.state = 'error';
      this.error = e.message;
      this.ctx.log.error('gateway listener failed', { listener: this.cfg.name, error: e });
    });
    this.server = server;
    this.state = 'listening';
  }

  private peerOf(s: net.Socket): Peer {
    let p = this.peers.get(s);
    if (!p) {
      try {
        p = this.ctx.peer((s.remoteAddress ?? '').replace(/^::ffff:/, ''), s.remotePort ?? 0);
      } catch {
        p = { ip: (s.remoteAddress ?? '').replace(/^::ffff:/, ''), port: s.remotePort ?? 0, identity: 0 } as Peer;
      }
      this.peers.set(s, p);
    }
    return p;
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const started = process.hrtime.bigint();
    const table: GatewayTable | undefined = this.ctx.gateway(this.cfg.name);
    const src = this.peerOf(req.socket);
    const hostHeader = req.headers.host ?? '';
    const host = hostOnly(hostHeader) || this.cfg.address;
    const gr: GatewayRequest = {
      method: req.method ?? 'GET',
      target: req.url ?? '/',
      host: hostHeader,
      headers: new Map(Object.entries(req.headers).map(([k, v]) => [k, Array.isArray(v) ? v : [v ?? '']])),
    };
    const self = { ip: this.cfg.address, port: this.cfg.port, identity: 0 } as Peer;
    const httpInfo = { method: gr.method, url: `http://${hostHeader || this.cfg.address}${gr.target}`, protocol: `HTTP/${req.httpVersion}`, ...(hostHeader ? { host: hostHeader } : {}) };
    const gateway = table?.gateway ?? this.cfg.name;
    const done = (code: number, verdict: 'forwarded' | 'error', entry?: RouteEntry, backend?: string, dst: Peer = self) => {
      if (verdict === 'forwarded') this.ctx.counters.requests.forwarded++;
      else this.ctx.counters.requests.error++;
      const r = { gateway, route: entry?.route ?? '', ...(backend ? { backend } : {}) };
      this.ctx.record({ time: Date.now(), kind: 'response', direction: 'ingress', verdict, src: dst, dst: src, http: { ...httpInfo, code, latencyNs: Number(process.hrtime.bigint() - started) }, route: r });
    };
    const reply = (code: number, body: string, headers: Record<string, string> = {}, entry?: RouteEntry, backend?: string) => {
      req.resume();
      this.ctx.record({ time: Date.now(), kind: 'request', direction: 'ingress', verdict: code < 400 ? 'forwarded' : 'error', src, dst: self, http: httpInfo, route: { gateway, route: entry?.route ?? '', ...(backend ? { backend } : {}) } });
      res.writeHead(code, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), ...headers });
      res.end(body);
      done(code, code < 400 ? 'forwarded' : 'error', entry, backend);
    };
    const entry = table && route(table, gr);
    if (!entry) return reply(404, 'route not found\n');
    const redirect = entry.filters.find((f) => f.type === 'RequestRedirect')?.requestRedirect;
    if (redirect) return reply(redirect.statusCode ?? 302, '', { location: redirectLocation(redirect, entry.match, gr, this.cfg.port) }, entry);
    const backend: RouteBackend | undefined = pickBackend(entry.backends, Math.random());
    if (!backend) return reply(500, 'no backend\n', {}, entry);
    if (backend.error) return reply(500, 'backend not resolved\n', {}, entry, backend.name);
    if (!backend.endpoints.length) return reply(503, 'no healthy upstream\n', {}, entry, backend.name);
    const ep = backend.endpoints[backend.endpoints.length === 1 ? 0 : Math.floor(Math.random() * backend.endpoints.length)];
    let dst: Peer;
    try {
      dst = this.ctx.peer(ep.ip, ep.port);
    } catch {
      dst = { ip: ep.ip, port: ep.port, identity: 0 } as Peer;
    }

    // The upstream request: hop-by-hop headers removed, filters applied, X-Forwarded-*.
    let raw = stripHop(req.rawHeaders);
    const rewrite = entry.filters.find((f) => f.type === 'URLRewrite')?.urlRewrite;
    for (const f of entry.filters) if (f.type === 'RequestHeaderModifier') raw = modifyHeaders(raw, f.requestHeaderModifier);
    let target = gr.target;
    if (rewrite?.path) {
      const { path, query } = splitTarget(gr.target);
      target = modifyPath(rewrite.path, entry.match, path) + (query ? `?${query}` : '');
    }
    if (rewrite?.hostname) raw = modifyHeaders(raw, { set: [{ name: 'Host', value: rewrite.hostname }] });
    const xff = req.headers['x-forwarded-for'];
    raw = modifyHeaders(raw, { set: [{ name: 'X-Forwarded-For', value: xff ? `${xff}, ${src.ip}` : src.ip }, { name: 'X-Forwarded-Proto', value: 'http' }] });
    if (!raw.some((n, i) => i % 2 === 0 && n.toLowerCase() === 'host')) raw.push('Host', host);
    const responseMod = entry.filters.filter((f) => f.type === 'ResponseHeaderModifier').map((f) => f.responseHeaderModifier);
    this.ctx.record({ time: Date.now(), kind: 'request', direction: 'ingress', verdict: 'forwarded', src, dst, http: httpInfo, route: { gateway, route: entry.route, backend: backend.name } });

    const hasBody = req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined;
    // undici frames the body itself and refuses these.
    raw = modifyHeaders(raw, { remove: ['transfer-encoding', 'expect'] });
    const pool = this.pool(ep.ip, ep.port);
    let status = 0;
    const send = (retry: boolean) => {
      pool
        .stream({ method: gr.method as Dispatcher.HttpMethod, path: target, headers: raw, body: hasBody ? req : undefined, opaque: res }, ({ statusCode, headers }) => {
          status = statusCode;
          let out: string[] = [];
          for (const [k, v] of Object.entries(headers)) {
            if (v === undefined) continue;
            for (const x of Array.isArray(v) ? v : [v]) out.push(k, x);
          }
          out = stripHop(out);
          for (const m of responseMod) out = modifyHeaders(out, m);
          res.writeHead(statusCode, out);
          return res;
        })
        .then(
          () => done(status, 'forwarded', entry, backend.name, dst),
          (e: NodeJS.ErrnoException) => {
            if (status) {
              res.destroy();
              return;
            }
            const timedOut = e?.code === 'UND_ERR_HEADERS_TIMEOUT';
            // A kept-alive connection the server closed just as it was reused: once more on a new one.
            if (retry && !timedOut && !(e instanceof GatewayUpstreamError) && !hasBody && IDEMPOTENT.has(gr.method)) return send(false);
            this.ctx.log.debug('upstream failed', { listener: this.cfg.name, backend: `${ep.ip}:${ep.port}`, error: e });
            if (res.headersSent) return res.destroy();
            const code = timedOut ? 504 : 503;
            const body = timedOut ? 'upstream request timeout\n' : 'upstream unavailable\n';
            res.writeHead(code, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
            res.end(body);
            done(code, 'error', entry, backend.name, dst);
          },
        );
    };
    send(true);
  }

  async close(): Promise<void> {
    this.state = 'closed';
    const srv = this.server;
    for (const p of this.pools.values()) void p.destroy().catch(() => {});
    this.pools.clear();
    if (!srv) return;
    const closed = new Promise<void>((r) => srv.close(() => r()));
    srv.closeAllConnections();
    await closed;
  }
}
