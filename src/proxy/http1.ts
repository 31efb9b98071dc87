/**
 * One proxied HTTP/1.x connection: the bytes of every allowed request and of
 * every response are forwarded exactly as received; the parser (llhttp.ts)
 * only tells where messages begin and end and what their heads say.
 *
 * Exchanges are sequential: a request's head is parsed and decided, its body
 * forwarded (allowed) or discarded (denied), and the next request is taken
 * only when this one is answered. Pipelined requests therefore get their
 * responses in order, and a denied request's 403 lands exactly where its
 * response belongs. The upstream connection (one per client connection, from
 * the client's address) is opened on the first allowed request, kept alive,
 * and re-opened when the server closes it; a response that says
 * `Connection: close` closes the client connection after it, as the server
 * asked. A request without body that fails on a reused upstream connection
 * before any response byte is retried once on a new connection; otherwise a
 * failure before the response head is a 503 and the connection stays usable.
 */
import type * as net from 'node:net';
import { applyHeaderActions, HeaderAction } from '../policy/l7';
import { ChunkedScanner, HeadInfo, Http1Parser } from './llhttp';

export const ACCESS_DENIED_BODY = 'Access denied\n';

export interface RequestHead extends HeadInfo {
  raw: Buffer;
}

export interface Outcome {
  allowed: boolean;
  actions: HeaderAction[];
}

export interface ExchangeHooks {
  /** Decide a request (sync when the answer is at hand). */
  decide(h: RequestHead): Outcome | Promise<Outcome>;
  /** A new upstream connection (connecting). */
  openUpstream(): net.Socket;
  /** A response: the final response head (code), a local reply (403, 503), or a failure after the head (code 0). */
  onResponse(h: RequestHead, code: number, verdict: 'forwarded' | 'denied' | 'error', note?: string): void;
  /** Upgrade and CONNECT requests are refused. */
  onRefused(h: RequestHead, what: string): void;
  onError(what: string, e?: unknown): void;
}

interface Exchange {
  head: RequestHead;
  decided: boolean;
  allowed: boolean;
  body: 'none' | 'length' | 'chunked';
  left: number;
  scanner?: ChunkedScanner;
  bodyDone: boolean;
  responseDone: boolean;
  responseStarted: boolean;
  finalSeen: boolean;
  responseKeepAlive: boolean;
  /** The head as sent upstream (kept for one retry). */
  sent?: Buffer;
  reused: boolean;
  retried: boolean;
}

interface Upstream {
  socket: net.Socket;
  parser: Http1Parser;
  dead: boolean;
  used: boolean;
}

const CRLF2 = Buffer.from('\r\n\r\n');
/** Client bytes buffered ahead of the exchange in progress before the client is paused. */
const MAX_BUFFERED = 1 << 20;

export class Http1Connection {
  private buf: Buffer = Buffer.alloc(0);
  private headParts: Buffer[] = [];
  private pendingHead?: HeadInfo;
  private cur?: Exchange;
  private up?: Upstream;
  private readonly reqParser: Http1Parser;
  private waiting = false;
  private closed = false;
  /** Why the client socket is paused; it resumes when nothing is left. */
  private readonly pausedFor = new Set<'decision' | 'upstream' | 'buffer'>();
  private clientEnded = false;
  private closeAfter = false;

  constructor(
    private readonly client: net.Socket,
    private readonly hooks: ExchangeHooks,
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
      if (this.buf.length > MAX_BUFFERED) this.pauseClient('buffer');
      this.pump();
    });
    client.on('end', () => {
      this.clientEnded = true;
      this.pump();
    });
    client.on('error', () => {});
    client.on('close', () => this.shutdown());
    client.on('drain', () => this.up?.socket.resume());
  }

  private pauseClient(why: 'decision' | 'upstream' | 'buffer'): void {
    if (this.pausedFor.size === 0) this.client.pause();
    this.pausedFor.add(why);
  }

  private resumeClient(why: 'decision' | 'upstream' | 'buffer'): void {
    if (!this.pausedFor.delete(why)) return;
    if (this.pausedFor.size === 0 && !this.closed) this.client.resume();
  }

  private shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    this.up?.socket.destroy();
    this.up?.parser.close();
    this.up = undefined;
    this.reqParser.close();
    if (!this.client.destroyed) this.client.destroy();
  }

  private pump(): void {
    if (this.buf.length < MAX_BUFFERED / 2) this.resumeClient('buffer');
    while (!this.closed && !this.waiting) {
      if (!this.cur) {
        if (this.buf.length === 0) {
          if (this.clientEnded) this.endClient();
          return;
        }
        if (!this.readHead()) return;
        continue;
      }
      const x = this.cur;
      if (!x.decided) return;
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
      return; // waiting for the response
    }
  }

  private endClient(): void {
    if (this.closed) return;
    this.client.end();
    this.up?.socket.end();
  }

  /** Parse (the rest of) a request head; false when more bytes are needed or the connection ended. */
  private readHead(): boolean {
    const r = this.reqParser.execute(this.buf);
    if (r.kind === 'consumed') {
      this.headParts.push(this.buf);
      this.buf = Buffer.alloc(0);
      return false;
    }
    if (r.kind === 'error') {
      this.hooks.onError(`bad request from client: ${r.code} ${r.reason}`);
      const code = r.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
      this.localReply(code, '', true);
      return false;
    }
    const raw = Buffer.concat([...this.headParts, this.buf.subarray(0, r.n)]);
    this.headParts = [];
    this.buf = this.buf.subarray(r.n);
    const h = this.pendingHead!;
    this.pendingHead = undefined;
    const head = h as RequestHead;
    head.raw = raw;
    if (h.upgrade) {
      this.hooks.onRefused(head, h.method === 'CONNECT' ? 'CONNECT' : 'upgrade');
      this.localReply('403 Forbidden', '', true);
      return false;
    }
    const te = headerValue(h.headers, 'transfer-encoding');
    const cl = headerValue(h.headers, 'content-length');
    const x: Exchange = {
      head,
      decided: false,
      allowed: false,
      body: te !== undefined ? 'chunked' : cl !== undefined && Number(cl) > 0 ? 'length' : 'none',
      left: cl !== undefined ? Number(cl) : 0,
      bodyDone: false,
      responseDone: false,
      responseStarted: false,
      finalSeen: false,
      responseKeepAlive: true,
      reused: false,
      retried: false,
    };
    if (x.body === 'chunked') x.scanner = new ChunkedScanner();
    if (x.body === 'none') x.bodyDone = true;
    if (!h.shouldKeepAlive) this.closeAfter = true;
    this.cur = x;
    const d = this.hooks.decide(head);
    if (d instanceof Promise) {
      this.waiting = true;
      this.pauseClient('decision');
      d.then(
        (o) => {
          this.waiting = false;
          this.resumeClient('decision');
          this.decided(x, o);
          this.pump();
        },
        (e) => {
          this.hooks.onError('request decision failed', e);
          this.shutdown();
        },
      );
      return false;
    }
    this.decided(x, d);
    return true;
  }

  private decided(x: Exchange, o: Outcome): void {
    if (this.closed) return;
    x.decided = true;
    x.allowed = o.allowed;
    if (!o.allowed) {
      // A client waiting for 100-continue will not send the body it announced: close after the reply.
      const expect = headerValue(x.head.headers, 'expect');
      const close = x.body !== 'none' && expect !== undefined && expect.toLowerCase() === '100-continue';
      x.responseDone = true;
      this.hooks.onResponse(x.head, 403, 'denied');
      this.localReply('403 Forbidden', ACCESS_DENIED_BODY, close || this.closeAfter);
      return;
    }
    const head = o.actions.some((a) => a.action !== 'LOG') ? rebuildHead(x.head, o.actions) : x.head.raw;
    x.sent = head;
    this.sendUpstream(x, head);
  }

  private sendUpstream(x: Exchange, head: Buffer): void {
    const up = this.upstream();
    x.reused = up.used;
    up.used = true;
    if (!up.socket.write(head)) this.pauseClient('upstream');
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
    if (x.allowed && this.up && !this.up.dead) {
      if (!this.up.socket.write(part)) this.pauseClient('upstream');
    }
    return true;
  }

  private upstream(): Upstream {
    if (this.up && !this.up.dead) return this.up;
    const socket = this.hooks.openUpstream();
    const up: Upstream = {
      socket,
      dead: false,
      used: false,
      parser: new Http1Parser('response', {
        onHead: (h) => this.onResponseHead(h),
        onMessageComplete: () => this.onResponseComplete(),
      }),
    };
    socket.on('data', (d: Buffer) => this.onUpstreamData(up, d));
    socket.on('end', () => this.onUpstreamEnd(up));
    socket.on('error', (e) => this.onUpstreamFailure(up, e));
    socket.on('close', () => this.onUpstreamFailure(up));
    socket.on('drain', () => this.resumeClient('upstream'));
    this.up = up;
    return up;
  }

  private onResponseHead(h: HeadInfo): 'continue' | 'skip-body' {
    const x = this.cur;
    if (!x) return 'continue';
    if (h.statusCode >= 100 && h.statusCode < 200 && h.statusCode !== 101) return 'continue';
    x.finalSeen = true;
    x.responseKeepAlive = h.shouldKeepAlive;
    this.hooks.onResponse(x.head, h.statusCode, 'forwarded');
    return x.head.method === 'HEAD' ? 'skip-body' : 'continue';
  }

  private onResponseComplete(): void {
    const x = this.cur;
    if (!x || !x.finalSeen || x.responseDone) return;
    x.responseDone = true;
    if (!x.responseKeepAlive) {
      // The server closes: so does the client connection, after this response.
      this.closeAfter = true;
      if (this.up) {
        this.up.dead = true;
        this.up.socket.end();
      }
    }
  }

  private onUpstreamData(up: Upstream, d: Buffer): void {
    if (up !== this.up || this.closed) return;
    const x = this.cur;
    if (!x || !x.allowed || x.responseDone) {
      this.hooks.onError('data from the server with no request outstanding; closing the upstream connection');
      up.dead = true;
      up.socket.destroy();
      return;
    }
    const r = up.parser.execute(d);
    if (r.kind === 'error') {
      this.hooks.onError(`bad response from server: ${r.code} ${r.reason}`);
      this.failUpstream(up, x);
      return;
    }
    x.responseStarted = true;
    if (!this.client.write(d)) up.socket.pause();
    if (x.responseDone) this.pump();
  }

  private onUpstreamEnd(up: Upstream): void {
    if (up !== this.up) return;
    const x = this.cur;
    if (x && x.allowed && !x.responseDone && x.responseStarted) up.parser.finish(); // a close-delimited body ends here
    up.dead = true;
    if (x && x.allowed && !x.responseDone) this.failUpstream(up, x);
    else if (x?.responseDone) this.pump();
  }

  private onUpstreamFailure(up: Upstream, e?: Error): void {
    if (up !== this.up || this.closed) return;
    up.dead = true;
    const x = this.cur;
    if (x && x.allowed && !x.responseDone) this.failUpstream(up, x, e);
  }

  private failUpstream(up: Upstream, x: Exchange, e?: Error): void {
    up.dead = true;
    up.socket.destroy();
    up.parser.close();
    if (this.up === up) this.up = undefined;
    if (x.responseStarted) {
      // Part of the response went out: the client connection cannot be repaired.
      this.hooks.onResponse(x.head, 0, 'error', 'upstream reset after the response head');
      this.shutdown();
      return;
    }
    if (x.reused && !x.retried && x.body === 'none' && x.sent) {
      x.retried = true;
      this.sendUpstream(x, x.sent);
      return;
    }
    const reason = (e as NodeJS.ErrnoException | undefined)?.code ?? 'connection closed';
    x.allowed = false; // the rest of the body, if any, is discarded
    x.responseDone = true;
    this.hooks.onResponse(x.head, 503, 'error', reason);
    this.localReply('503 Service Unavailable', `upstream connect error or disconnect/reset before headers. reset reason: ${reason}\n`, this.closeAfter);
    this.pump();
  }

  /** A response the proxy makes itself; closes the connection after it when asked. */
  private localReply(status: string, body: string, close: boolean): void {
    if (this.closed) return;
    const head = `HTTP/1.1 ${status}\r\ncontent-length: ${Buffer.byteLength(body)}\r\ncontent-type: text/plain\r\n${close ? 'connection: close\r\n' : ''}\r\n`;
    this.client.write(head + body);
    if (close) {
      this.closeAfter = true;
      this.buf = Buffer.alloc(0);
      this.cur = undefined;
      this.client.end();
      this.closed = true;
      this.up?.socket.destroy();
      this.up = undefined;
      this.reqParser.close();
    }
  }
}

function headerValue(raw: string[], lname: string): string | undefined {
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i].length === lname.length && raw[i].toLowerCase() === lname) return raw[i + 1];
  return undefined;
}

/** The request line as received, headers with the actions applied. */
function rebuildHead(h: RequestHead, actions: HeaderAction[]): Buffer {
  const lineEnd = h.raw.indexOf('\r\n');
  const line = h.raw.subarray(0, lineEnd < 0 ? h.raw.indexOf(CRLF2) : lineEnd).toString('latin1');
  const headers = applyHeaderActions(h.headers, actions);
  let out = line + '\r\n';
  for (let i = 0; i + 1 < headers.length; i += 2) out += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return Buffer.from(out + '\r\n', 'latin1');
}
