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
 *                         hop-by-hop headers removed, X-Forwarded-For /
 *                         X-Forwarded-Proto added; the response gets
 *                         ResponseHeaderModifier; a backend that does not
 *                         connect in 5 s is a 503, one that does not answer
 *                         in 15 s a 504
 *
 * The HTTP/1 work is gateway-http1.ts (Node's own parser, bodies forwarded as
 * received, an upstream connection per client connection and backend
 * endpoint, kept alive and handed to a shared pool of idle connections when
 * the client connection ends). Upstream connections come from the agent's ingress
 * address (`sourceAddress`, IP_TRANSPARENT, MARK_FROM_PROXY): the ipcache
 * gives that address the reserved identity `ingress`, so the backends' policy
 * sees the traffic as `fromEntities: [ingress]`, and the datapath steers the
 * backends' replies back to these sockets as it does for the L7 policy
 * proxy's. Every request and response is an L7 record with `route`.
 */
import * as net from 'node:net';
import type { RouteEntry } from '../gateway/model';
import { hostOnly, modifyHeaders, modifyPath, pickBackend, redirectLocation, route, splitTarget, type GatewayRequest } from '../gateway/match';
import type { ListenerConfig } from './config';
import { MARK_FROM_PROXY } from './constants';
import { GatewayConnection, GatewayDecision, headerValue } from './gateway-http1';
import type { ListenerContext } from './http';
import type { Peer } from './identity';
import type { HeadInfo } from './llhttp';
import { sockets } from './sockets';

/** Hop-by-hop headers (RFC 9110 7.6.1), never forwarded; Transfer-Encoding and Content-Length frame the body and stay. */
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'proxy-authenticate', 'proxy-authorization']);

function stripHop(raw: string[]): string[] {
  let extra: Set<string> | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i].length === 10 && raw[i].toLowerCase() === 'connection') for (const t of raw[i + 1].split(',')) (extra ??= new Set()).add(t.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const n = raw[i].toLowerCase();
    if (!HOP.has(n) && !extra?.has(n)) out.push(raw[i], raw[i + 1]);
  }
  return out;
}

const CONNECT_TIMEOUT_MS = 5000;
const PEER_TTL_MS = 1000;
const IDLE_PER_ENDPOINT = 256;
const IDLE_TIMEOUT_MS = 30_000;
/** No response head within this long: 504 (the reference proxy's default route timeout). */
const RESPONSE_TIMEOUT_MS = 15_000;

export class GatewayUpstreamError extends Error {
  constructor(
    message: string,
    readonly kind: 'connect-timeout',
  ) {
    super(message);
  }
}

export class HttpGatewayListener {
  private server?: net.Server;
  private readonly open = new Set<net.Socket>();
  private readonly peerCache = new Map<string, { peer: Peer; at: number }>();
  /** Idle upstream connections by backend endpoint, shared by the client connections. */
  private readonly idle = new Map<string, net.Socket[]>();
  state: 'starting' | 'listening' | 'error' | 'closed' = 'starting';
  error?: string;

  constructor(
    readonly cfg: ListenerConfig,
    private readonly ctx: ListenerContext,
  ) {}

  get connections(): number {
    return this.open.size;
  }

  async start(): Promise<void> {
    const server = net.createServer({ noDelay: true }, (s) => this.onConnection(s));
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

  /** A connection to a backend endpoint from the ingress address, marked so the datapath does not redirect it and steers the replies back. */
  private connect(ip: string, port: number): net.Socket {
    const fd = sockets().sockBound(this.cfg.sourceAddress!, 0, MARK_FROM_PROXY, true);
    const s = new net.Socket({ fd, readable: true, writable: true, manualStart: true } as net.SocketConstructorOpts);
    s.setNoDelay(true);
    // A backend whose policy drops the connection must not hold the request forever.
    const t = setTimeout(() => s.destroy(new GatewayUpstreamError(`connect to ${ip}:${port} timed out after ${CONNECT_TIMEOUT_MS} ms`, 'connect-timeout')), CONNECT_TIMEOUT_MS);
    s.once('connect', () => clearTimeout(t));
    s.once('close', () => clearTimeout(t));
    s.connect({ host: ip, port });
    return s;
  }

  /** An idle pooled connection to a backend endpoint, or a new one. */
  private acquire(ip: string, port: number): { socket: net.Socket; reused: boolean } {
    const list = this.idle.get(`${ip}:${port}`);
    while (list?.length) {
      const s = list.pop()!;
      if (s.destroyed || s.readyState !== 'open') continue;
      for (const ev of ['data', 'close', 'error', 'timeout']) s.removeAllListeners(ev);
      s.setTimeout(0);
      return { socket: s, reused: true };
    }
    return { socket: this.connect(ip, port), reused: false };
  }

  /** Keep an idle upstream connection for the next client connection (at most IDLE_PER_ENDPOINT per endpoint, IDLE_TIMEOUT_MS). */
  private release(key: string, s: net.Socket): void {
    let list = this.idle.get(key);
    if (!list) this.idle.set(key, (list = []));
    if (this.state !== 'listening' || list.length >= IDLE_PER_ENDPOINT) {
      s.destroy();
      return;
    }
    const l = list;
    const drop = () => {
      const i = l.indexOf(s);
      if (i >= 0) l.splice(i, 1);
      s.destroy();
    };
    s.on('data', drop); // an idle backend has nothing to say
    s.on('error', drop);
    s.on('close', drop);
    s.on('timeout', drop);
    s.setTimeout(IDLE_TIMEOUT_MS);
    s.resume();
    l.push(s);
  }

  private onConnection(s: net.Socket): void {
    this.open.add(s);
    this.ctx.counters.connections++;
    s.on('close', () => {
      this.open.delete(s);
      this.ctx.counters.connections--;
    });
    const remote = (s.remoteAddress ?? '').replace(/^::ffff:/, '');
    let src: Peer;
    try {
      src = this.ctx.peer(remote, s.remotePort ?? 0);
    } catch {
      src = { ip: remote, port: s.remotePort ?? 0, identity: 0 };
    }
    const self: Peer = { ip: this.cfg.address, port: this.cfg.port, identity: 0 };
    type Info = { started: bigint; http: { method: string; url: string; protocol: string; host?: string }; entry?: RouteEntry; backend?: string; dst: Peer };
    const infos = new WeakMap<HeadInfo, Info>();
    new GatewayConnection(
      s,
      {
        decide: (h) => {
          const table = this.ctx.gateway(this.cfg.name);
          const hostHeader = headerValue(h.headers, 'host') ?? '';
          const info: Info = {
            started: process.hrtime.bigint(),
            http: { method: h.method, url: `http://${hostHeader || this.cfg.address}${h.url}`, protocol: `HTTP/${h.versionMajor}.${h.versionMinor}`, ...(hostHeader ? { host: hostHeader } : {}) },
            dst: self,
          };
          infos.set(h, info);
          const gateway = table?.gateway ?? this.cfg.name;
          const d = this.decide(h, hostHeader, src, info);
          this.ctx.record({
            time: Date.now(), kind: 'request', direction: 'ingress', verdict: d.kind === 'reply' && d.code >= 400 ? 'error' : 'forwarded', src, dst: info.dst,
            http: info.http, route: { gateway, route: info.entry?.route ?? '', ...(info.backend ? { backend: info.backend } : {}) },
          });
          return d;
        },
        onDone: (h, code, verdict) => {
          const info = infos.get(h);
          if (verdict === 'forwarded') this.ctx.counters.requests.forwarded++;
          else this.ctx.counters.requests.error++;
          if (!info) return;
          const gateway = this.ctx.gateway(this.cfg.name)?.gateway ?? this.cfg.name;
          this.ctx.record({
            time: Date.now(), kind: 'response', direction: 'ingress', verdict, src: info.dst, dst: src,
            http: { ...info.http, code, latencyNs: Number(process.hrtime.bigint() - info.started) },
            route: { gateway, route: info.entry?.route ?? '', ...(info.backend ? { backend: info.backend } : {}) },
          });
        },
        onError: (what, e) => this.ctx.log.debug(what, { listener: this.cfg.name, client: `${src.ip}:${src.port}`, ...(e ? { error: e } : {}) }),
        release: (key, up) => this.release(key, up),
      },
      RESPONSE_TIMEOUT_MS,
    );
  }

  /** A backend endpoint's identity for records: from the datapath's maps, looked up at most every PEER_TTL_MS per endpoint (two map lookups per request otherwise). */
  private backendPeer(ip: string, port: number): Peer {
    const key = `${ip}:${port}`;
    const now = Date.now();
    const c = this.peerCache.get(key);
    if (c && now - c.at < PEER_TTL_MS) return c.peer;
    let peer: Peer;
    try {
      peer = this.ctx.peer(ip, port);
    } catch {
      peer = { ip, port, identity: 0 };
    }
    if (this.peerCache.size > 4096) this.peerCache.clear();
    this.peerCache.set(key, { peer, at: now });
    return peer;
  }

  /** Route one request: a local answer, or the head to send to the chosen backend endpoint. */
  private decide(h: HeadInfo, hostHeader: string, src: Peer, info: { entry?: RouteEntry; backend?: string; dst: Peer }): GatewayDecision {
    const table = this.ctx.gateway(this.cfg.name);
    let headers: Map<string, string[]> | undefined;
    const raw = h.headers;
    const gr: GatewayRequest = {
      method: h.method,
      target: h.url,
      host: hostHeader,
      // Built only when a match looks at headers.
      get headers() {
        if (!headers) {
          headers = new Map();
          for (let i = 0; i + 1 < raw.length; i += 2) {
            const k = raw[i].toLowerCase();
            const cur = headers.get(k);
            if (cur) cur.push(raw[i + 1]);
            else headers.set(k, [raw[i + 1]]);
          }
        }
        return headers;
      },
    };
    const entry = table && route(table, gr);
    if (!entry) return { kind: 'reply', code: 404, body: 'route not found\n' };
    info.entry = entry;
    const redirect = entry.filters.find((f) => f.type === 'RequestRedirect')?.requestRedirect;
    if (redirect) return { kind: 'reply', code: redirect.statusCode ?? 302, headers: [['location', redirectLocation(redirect, entry.match, gr, this.cfg.port)]], body: '' };
    const backend = pickBackend(entry.backends, Math.random());
    if (!backend) return { kind: 'reply', code: 500, body: 'no backend\n' };
    info.backend = backend.name;
    if (backend.error) return { kind: 'reply', code: 500, body: 'backend not resolved\n' };
    if (!backend.endpoints.length) return { kind: 'reply', code: 503, body: 'no healthy upstream\n' };
    const ep = backend.endpoints[backend.endpoints.length === 1 ? 0 : Math.floor(Math.random() * backend.endpoints.length)];
    info.dst = this.backendPeer(ep.ip, ep.port);

    // The upstream head: hop-by-hop headers removed, filters applied, X-Forwarded-*.
    let out = stripHop(raw);
    for (const f of entry.filters) if (f.type === 'RequestHeaderModifier') out = modifyHeaders(out, f.requestHeaderModifier);
    let target = h.url;
    const rewrite = entry.filters.find((f) => f.type === 'URLRewrite')?.urlRewrite;
    if (rewrite?.path) {
      const { path, query } = splitTarget(h.url);
      target = modifyPath(rewrite.path, entry.match, path) + (query ? `?${query}` : '');
    }
    if (rewrite?.hostname) out = modifyHeaders(out, { set: [{ name: 'Host', value: rewrite.hostname }] });
    const xff = headerValue(raw, 'x-forwarded-for');
    out = modifyHeaders(out, { set: [{ name: 'X-Forwarded-For', value: xff ? `${xff}, ${src.ip}` : src.ip }, { name: 'X-Forwarded-Proto', value: 'http' }] });
    if (!hostHeader) out.push('Host', hostOnly(this.cfg.address));
    let head = `${h.method} ${target} HTTP/1.1\r\n`;
    for (let i = 0; i + 1 < out.length; i += 2) head += `${out[i]}: ${out[i + 1]}\r\n`;
    head += '\r\n';
    const mods = entry.filters.filter((f) => f.type === 'ResponseHeaderModifier').map((f) => f.responseHeaderModifier);
    return {
      kind: 'forward',
      upstream: `${ep.ip}:${ep.port}`,
      connect: (fresh) => (fresh ? { socket: this.connect(ep.ip, ep.port), reused: false } : this.acquire(ep.ip, ep.port)),
      head,
      ...(mods.length
        ? {
            responseHeaders: (r: string[]) => {
              let x = r;
              for (const m of mods) x = modifyHeaders(x, m);
              return x;
            },
          }
        : {}),
    };
  }

  async close(): Promise<void> {
    this.state = 'closed';
    const srv = this.server;
    if (!srv) return;
    const closed = new Promise<void>((r) => srv.close(() => r()));
    for (const s of this.open) s.destroy();
    for (const list of this.idle.values()) for (const s of list.splice(0)) s.destroy();
    await closed;
  }
}
