/**
 * One client connection of a Gateway listener: HTTP/1.x exchanges, one at a
 * time (pipelined requests are answered in order), each either answered by
 * the proxy (404, 500, 503, 504, redirects) or forwarded to the backend
 * endpoint its route chose, over an upstream connection of this client
 * connection to that endpoint (kept alive; one per endpoint in use).
 *
 * Request heads are parsed (llhttp.ts: Node's own parser) and rewritten
 * (filters, X-Forwarded-*, hop-by-hop headers removed); bodies are forwarded
 * as received (Content-Length or chunked, delimited and validated as in
 * http1.ts). Response heads are forwarded as received, or rebuilt when a
 * ResponseHeaderModifier applies; response bodies as received. A request
 * without body that fails on a reused upstream connection before any
 * response byte is retried once on a new one.
 */
import type * as net from 'node:net';
import { ChunkedScanner, HeadInfo, Http1Parser } from './llhttp';

/** What the listener decided for a request. */
export type GatewayDecision =
  | { kind: 'reply'; code: number; headers?: [string, string][]; body: string }
  | {
      kind: 'forward';
      /** The endpoint ("ip:port") and a connection to it: new, or an idle one from the listener's pool (reused). */
      upstream: string;
      connect(fresh?: boolean): { socket: net.Socket; reused: boolean };
      /** The request head to send (request line, headers, blank line). */
      head: string;
      /** Rewrites the response head's headers (ResponseHeaderModifier), when one applies. */
      responseHeaders?: (raw: string[]) => string[];
    };

export interface GatewayHooks {
  decide(h: HeadInfo): GatewayDecision;
  /** The final outcome of a request: the status sent to the client (0: failed after the head). */
  onDone(h: HeadInfo, code: number, verdict: 'forwarded' | 'error'): void;
  onError(what: string, e?: unknown): void;
  /** An idle upstream connection this client connection no longer needs (for the listener's pool). */
  release?(upstream: string, socket: net.Socket): void;
}

interface Upstream {
  key: string;
  socket: net.Socket;
  parser: Http1Parser;
  dead: boolean;
  used: boolean;
  /** Response head bytes while the head is incomplete (only when it is rewritten). */
  head: Buffer[];
  headLen: number;
}

interface Exchange {
  head: HeadInfo;
  decision: GatewayDecision;
  body: 'none' | 'length' | 'chunked';
  left: number;
  scanner?: ChunkedScanner;
  bodyDone: boolean;
  responseDone: boolean;
  responseStarted: boolean;
  finalSeen: boolean;
  responseKeepAlive: boolean;
  up?: Upstream;
  reused: boolean;
  retried: boolean;
  code: number;
  timer?: NodeJS.Timeout;
}

const CRLF2 = Buffer.from('\r\n\r\n');
const MAX_BUFFERED = 1 << 20;
const MAX_RESPONSE_HEAD = 64 * 1024;
const REASON: Record<number, string> = { 301: 'Moved Permanently', 302: 'Found', 303: 'See Other', 307: 'Temporary Redirect', 308: 'Permanent Redirect', 400: 'Bad Request', 404: 'Not Found', 431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 503: 'Service Unavailable', 504: 'Gateway Timeout' };

export class GatewayConnection {
  private buf: Buffer = Buffer.alloc(0);
  private headParts: Buffer[] = [];
  private pendingHead?: HeadInfo;
  private cur?: Exchange;
  private readonly ups = new Map<string, Upstream>();
  private readonly reqParser: Http1Parser;
  private closed = false;
  private clientEnded = false;
  private closeAfter = false;
  private paused = new Set<'upstream' | 'buffer'>();

  constructor(
    private readonly client: net.Socket,
    private readonly hooks: GatewayHooks,
    private readonly responseTimeoutMs: number,
  ) {
    this.reqParser = new Http1Parser('request', {
      onHead: (h) => {
        this.pendingHead = h;
        return 'pause';
      },
      onMessageComplete: () => {},
    });
    client.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      if (this.buf.length > MAX_BUFFERED) this.pause('buffer');
      this.pump();
    });
    client.on('end', () => {
      this.clientEnded = true;
      this.pump();
    });
    client.on('error', () => {});
    client.on('close', () => this.shutdown());
    client.on('drain', () => {
      for (const u of this.ups.values()) u.socket.resume();
    });
  }

  private pause(why: 'upstream' | 'buffer'): void {
    if (this.paused.size === 0) this.client.pause();
    this.paused.add(why);
  }

  private resume(why: 'upstream' | 'buffer'): void {
    if (!this.paused.delete(why)) return;
    if (this.paused.size === 0 && !this.closed) this.client.resume();
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.cur?.timer) clearTimeout(this.cur.timer);
    this.releaseUpstreams();
    this.reqParser.close();
    if (!this.client.destroyed) this.client.destroy();
  }

  /** Idle upstream connections go back to the listener's pool; the others are closed. */
  private releaseUpstreams(): void {
    for (const u of this.ups.values()) {
      const busy = this.cur !== undefined && this.cur.up === u && !this.cur.responseDone;
      u.parser.close();
      if (this.hooks.release && !busy && !u.dead && !u.socket.connecting && !u.socket.destroyed && u.head.length === 0) {
        for (const ev of ['data', 'end', 'error', 'close', 'drain']) u.socket.removeAllListeners(ev);
        this.hooks.release(u.key, u.socket);
      } else u.socket.destroy();
    }
    this.ups.clear();
  }

  private pump(): void {
    if (this.buf.length < MAX_BUFFERED / 2) this.resume('buffer');
    while (!this.closed) {
      const x = this.cur;
      if (!x) {
        if (this.buf.length === 0) {
          if (this.clientEnded) this.endClient();
          return;
        }
        if (!this.readHead()) return;
        continue;
      }
      if (!x.bodyDone) {
        if (this.buf.length === 0) return;
        if (!this.readBody(x)) return;
        continue;
      }
      if (x.responseDone) {
        this.cur = undefined;
        if (this.closeAfter) {
          this.endClient();
          return;
        }
        continue;
      }
      return;
    }
  }

  private endClient(): void {
    if (this.closed) return;
    this.client.end();
  }

  private readHead(): boolean {
    const r = this.reqParser.execute(this.buf);
    if (r.kind === 'consumed') {
      this.headParts.push(this.buf);
      this.buf = Buffer.alloc(0);
      return false;
    }
    if (r.kind === 'error') {
      this.hooks.onError(`bad request from client: ${r.code} ${r.reason}`);
      this.reply(r.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400, [], '', true);
      return false;
    }
    this.headParts = [];
    this.buf = this.buf.subarray(r.n);
    const h = this.pendingHead!;
    this.pendingHead = undefined;
    if (h.upgrade) {
      // Upgrades (WebSocket, h2c) and CONNECT are not proxied by Gateway listeners.
      this.hooks.onDone(h, 400, 'error');
      this.reply(400, [], 'upgrades are not supported\n', true);
      return false;
    }
    const te = headerValue(h.headers, 'transfer-encoding');
    const cl = headerValue(h.headers, 'content-length');
    const x: Exchange = {
      head: h,
      decision: { kind: 'reply', code: 500, body: '' },
      body: te !== undefined ? 'chunked' : cl !== undefined && Number(cl) > 0 ? 'length' : 'none',
      left: cl !== undefined ? Number(cl) : 0,
      bodyDone: false,
      responseDone: false,
      responseStarted: false,
      finalSeen: false,
      responseKeepAlive: true,
      reused: false,
      retried: false,
      code: 0,
    };
    if (x.body === 'chunked') x.scanner = new ChunkedScanner();
    if (x.body === 'none') x.bodyDone = true;
    if (!h.shouldKeepAlive) this.closeAfter = true;
    this.cur = x;
    try {
      x.decision = this.hooks.decide(h);
    } catch (e) {
      this.hooks.onError('routing failed', e);
      x.decision = { kind: 'reply', code: 500, body: 'routing failed\n' };
    }
    const d = x.decision;
    if (d.kind === 'reply') {
      x.responseDone = true;
      this.hooks.onDone(h, d.code, d.code < 400 ? 'forwarded' : 'error');
      // A client waiting for 100-continue will not send the body it announced: close after the reply.
      const expect = headerValue(h.headers, 'expect');
      const close = x.body !== 'none' && expect !== undefined && expect.toLowerCase() === '100-continue';
      this.reply(d.code, d.headers ?? [], d.body, close || this.closeAfter);
      return true;
    }
    this.send(x, d);
    return true;
  }

  private send(x: Exchange, d: Extract<GatewayDecision, { kind: 'forward' }>): void {
    // A retry goes on a new connection, never another pooled one.
    const up = this.upstream(d, x.retried);
    x.up = up;
    x.reused = up.used;
    up.used = true;
    if (!up.socket.write(d.head, 'latin1')) this.pause('upstream');
    if (x.timer) clearTimeout(x.timer);
    x.timer = setTimeout(() => {
      if (x.finalSeen || x.responseDone) return;
      this.failUpstream(up, x, 504, 'no response in time');
    }, this.responseTimeoutMs);
  }

  private readBody(x: Exchange): boolean {
    let n: number;
    if (x.body === 'length') {
      n = Math.min(x.left, this.buf.length);
      x.left -= n;
      if (x.left === 0) x.bodyDone = true;
    } else {
      n = x.scanner!.scan(this.buf);
      if (n < 0) {
        this.hooks.onError('malformed chunked request body');
        this.shutdown();
        return false;
      }
      if (x.scanner!.done) x.bodyDone = true;
    }
    const part = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    const r = this.reqParser.execute(part);
    if (r.kind === 'error') {
      this.hooks.onError(`bad request body: ${r.code} ${r.reason}`);
      this.shutdown();
      return false;
    }
    const up = x.up;
    if (x.decision.kind === 'forward' && up && !up.dead && !x.responseDone) {
      if (!up.socket.write(part)) this.pause('upstream');
    }
    return true;
  }

  private upstream(d: Extract<GatewayDecision, { kind: 'forward' }>, fresh = false): Upstream {
    const cur = this.ups.get(d.upstream);
    if (cur && !cur.dead) return cur;
    const { socket, reused } = d.connect(fresh);
    const up: Upstream = {
      key: d.upstream,
      socket,
      dead: false,
      // A pooled connection may have been closed by the backend meanwhile: a bodyless request failing on it is retried.
      used: reused,
      head: [],
      headLen: 0,
      parser: new Http1Parser('response', {
        onHead: (h) => this.onResponseHead(h),
        onMessageComplete: () => this.onResponseComplete(up),
      }),
    };
    socket.on('data', (b: Buffer) => this.onUpstreamData(up, b));
    socket.on('end', () => this.onUpstreamEnd(up));
    socket.on('error', (e) => this.onUpstreamFailure(up, e));
    socket.on('close', () => this.onUpstreamFailure(up));
    socket.on('drain', () => this.resume('upstream'));
    this.ups.set(d.upstream, up);
    return up;
  }

  private onResponseHead(h: HeadInfo): 'continue' | 'skip-body' {
    const x = this.cur;
    if (!x) return 'continue';
    if (h.statusCode >= 100 && h.statusCode < 200 && h.statusCode !== 101) return 'continue';
    x.finalSeen = true;
    x.code = h.statusCode;
    x.responseKeepAlive = h.shouldKeepAlive;
    return x.head.method === 'HEAD' || h.statusCode === 204 || h.statusCode === 304 ? 'skip-body' : 'continue';
  }

  private onResponseComplete(up: Upstream): void {
    const x = this.cur;
    if (!x || x.up !== up || !x.finalSeen || x.responseDone) return;
    x.responseDone = true;
    if (x.timer) clearTimeout(x.timer);
    this.hooks.onDone(x.head, x.code, 'forwarded');
    if (!x.responseKeepAlive) {
      up.dead = true;
      up.socket.end();
      this.ups.delete(up.key);
    }
  }

  private onUpstreamData(up: Upstream, d: Buffer): void {
    if (this.closed) return;
    const x = this.cur;
    if (!x || x.up !== up || x.responseDone) {
      this.hooks.onError('data from a backend with no request outstanding; closing that upstream connection');
      this.dropUpstream(up);
      return;
    }
    const rewrite = x.decision.kind === 'forward' ? x.decision.responseHeaders : undefined;
    let out = d;
    if (rewrite && !x.responseStarted) {
      // Hold the response head until it is complete, then send it rebuilt.
      up.head.push(d);
      up.headLen += d.length;
      const all = up.head.length === 1 ? d : Buffer.concat(up.head);
      const end = all.indexOf(CRLF2);
      if (end < 0) {
        if (up.headLen > MAX_RESPONSE_HEAD) this.failUpstream(up, x, 503, 'response head too large');
        return;
      }
      up.head = [];
      up.headLen = 0;
      const r = up.parser.execute(all);
      if (r.kind === 'error') {
        this.hooks.onError(`bad response from backend: ${r.code} ${r.reason}`);
        this.failUpstream(up, x, 503, 'bad response');
        return;
      }
      x.responseStarted = true;
      const headText = all.subarray(0, end).toString('latin1');
      const lines = headText.split('\r\n');
      const raw: string[] = [];
      for (const l of lines.slice(1)) {
        const c = l.indexOf(':');
        if (c > 0) raw.push(l.slice(0, c), l.slice(c + 1).trim());
      }
      const headers = x.finalSeen ? rewrite(raw) : raw;
      let head = lines[0] + '\r\n';
      for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
      out = Buffer.concat([Buffer.from(head + '\r\n', 'latin1'), all.subarray(end + 4)]);
      if (!x.finalSeen) x.responseStarted = false; // an interim (1xx) head: the final one is rewritten too
    } else {
      const r = up.parser.execute(d);
      if (r.kind === 'error') {
        this.hooks.onError(`bad response from backend: ${r.code} ${r.reason}`);
        this.failUpstream(up, x, 503, 'bad response');
        return;
      }
      x.responseStarted = true;
    }
    if (!this.client.write(out)) up.socket.pause();
    if (x.responseDone) this.pump();
  }

  private onUpstreamEnd(up: Upstream): void {
    const x = this.cur;
    const mine = x && x.up === up;
    if (mine && !x.responseDone && x.responseStarted) up.parser.finish(); // a close-delimited body ends here
    up.dead = true;
    if (this.ups.get(up.key) === up) this.ups.delete(up.key);
    if (mine && !x.responseDone) this.failUpstream(up, x, 503, 'connection closed');
    else if (mine) this.pump();
  }

  private onUpstreamFailure(up: Upstream, e?: Error): void {
    up.dead = true;
    if (this.ups.get(up.key) === up) this.ups.delete(up.key);
    if (this.closed) return;
    const x = this.cur;
    if (x && x.up === up && !x.responseDone) this.failUpstream(up, x, 503, (e as NodeJS.ErrnoException | undefined)?.code ?? 'connection closed');
  }

  private dropUpstream(up: Upstream): void {
    up.dead = true;
    up.socket.destroy();
    up.parser.close();
    if (this.ups.get(up.key) === up) this.ups.delete(up.key);
  }

  private failUpstream(up: Upstream, x: Exchange, code: number, reason: string): void {
    this.dropUpstream(up);
    if (x.responseDone) return;
    if (x.responseStarted) {
      x.responseDone = true;
      if (x.timer) clearTimeout(x.timer);
      this.hooks.onDone(x.head, 0, 'error');
      this.shutdown();
      return;
    }
    const d = x.decision;
    if (code === 503 && d.kind === 'forward' && x.reused && !x.retried && x.body === 'none') {
      x.retried = true;
      this.send(x, d);
      return;
    }
    x.responseDone = true;
    if (x.timer) clearTimeout(x.timer);
    this.hooks.onDone(x.head, code, 'error');
    this.hooks.onError('upstream failed', reason);
    this.reply(code, [], code === 504 ? 'upstream request timeout\n' : `upstream unavailable: ${reason}\n`, this.closeAfter || !x.bodyDone);
    this.pump();
  }

  /** A response the proxy makes itself; closes the connection after it when asked. */
  private reply(code: number, headers: [string, string][], body: string, close: boolean): void {
    if (this.closed) return;
    let head = `HTTP/1.1 ${code} ${REASON[code] ?? ''}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n`;
    if (!headers.some(([k]) => k.toLowerCase() === 'content-type')) head += 'content-type: text/plain\r\n';
    for (const [k, v] of headers) head += `${k}: ${v}\r\n`;
    if (close) head += 'connection: close\r\n';
    this.client.write(head + '\r\n' + body);
    if (close) {
      this.closeAfter = true;
      this.buf = Buffer.alloc(0);
      this.cur = undefined;
      this.client.end();
      this.closed = true;
      this.releaseUpstreams();
      this.reqParser.close();
    }
  }
}

export function headerValue(raw: string[], lname: string): string | undefined {
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i].length === lname.length && raw[i].toLowerCase() === lname) return raw[i + 1];
  return undefined;
}
