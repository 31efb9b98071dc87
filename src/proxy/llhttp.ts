/**
 * Node's own HTTP/1 parser (llhttp, the one behind node:http), used directly so
 * the proxy can forward the bytes it received unchanged and only needs the
 * parser's verdict and message boundaries. Reached through node:_http_common,
 * the module node:http itself uses; everything that depends on its calling
 * convention is in this file, and selfCheck() runs at proxy start so a Node
 * version with another convention fails there, loudly.
 *
 * Boundaries: returning HPE_PAUSED from on_headers_complete stops execute()
 * right after the head (it returns an error with code HPE_PAUSED and
 * bytesParsed = the head's end); resume() continues. Bodies are delimited by
 * the caller (Content-Length, or ChunkedScanner) and still run through the
 * parser, which validates them (strict mode: no lenient flags).
 */
// eslint-disable-next-line @typescript-eslint/no-var-requires
const common = require('_http_common') as { HTTPParser: any; methods: string[] };

const { HTTPParser, methods } = common;
const HPE_PAUSED = 21;

export interface HeadInfo {
  versionMajor: number;
  versionMinor: number;
  /** Raw header name/value pairs, flat (as IncomingMessage.rawHeaders). */
  headers: string[];
  method: string;
  url: string;
  statusCode: number;
  statusMessage: string;
  upgrade: boolean;
  shouldKeepAlive: boolean;
}

export interface ParserEvents {
  /** Return 'pause' to stop right after the head, 'skip-body' for a response without body (HEAD). */
  onHead(h: HeadInfo): 'pause' | 'skip-body' | 'continue';
  onMessageComplete(): void;
}

export type ExecResult = { kind: 'consumed'; n: number } | { kind: 'paused'; n: number } | { kind: 'error'; code: string; reason: string; n: number };

export class Http1Parser {
  private readonly p: any;
  private pendingHeaders: string[] = [];
  /** An upgrade head paused in this execute (Node reports no error for upgrades: the count is the head's end). */
  private pausedUpgrade = false;

  constructor(type: 'request' | 'response', events: ParserEvents, maxHeaderSize = 16384) {
    const p = new HTTPParser();
    p.initialize(type === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, maxHeaderSize, 0);
    p[HTTPParser.kOnHeaders] = (headers: string[]) => {
      for (const h of headers) this.pendingHeaders.push(h);
    };
    p[HTTPParser.kOnHeadersComplete] = (
      versionMajor: number, versionMinor: number, headers: string[] | undefined, method: number, url: string | undefined,
      statusCode: number, statusMessage: string | undefined, upgrade: boolean, shouldKeepAlive: boolean,
    ) => {
      let all = headers ?? [];
      if (this.pendingHeaders.length) {
        all = [...this.pendingHeaders, ...all];
        this.pendingHeaders = [];
      }
      const r = events.onHead({
        versionMajor, versionMinor, headers: all, method: methods[method] ?? '', url: url ?? '', statusCode, statusMessage: statusMessage ?? '', upgrade, shouldKeepAlive,
      });
      if (r === 'pause' && upgrade) this.pausedUpgrade = true;
      return r === 'pause' ? HPE_PAUSED : r === 'skip-body' ? 1 : 0;
    };
    p[HTTPParser.kOnBody] = () => {};
    p[HTTPParser.kOnMessageComplete] = () => events.onMessageComplete();
    p[HTTPParser.kOnExecute] = () => {};
    this.p = p;
  }

  execute(b: Buffer): ExecResult {
    if (b.length === 0) return { kind: 'consumed', n: 0 };
    this.pausedUpgrade = false;
    const r = this.p.execute(b);
    if (typeof r === 'number') {
      if (this.pausedUpgrade) return { kind: 'paused', n: r };
      return { kind: 'consumed', n: r };
    }
    if (r instanceof Error) {
      const e = r as Error & { code?: string; reason?: string; bytesParsed?: number };
      if (e.code === 'HPE_PAUSED') {
        this.p.resume();
        return { kind: 'paused', n: e.bytesParsed ?? 0 };
      }
      return { kind: 'error', code: e.code ?? 'HPE_UNKNOWN', reason: e.reason ?? e.message, n: e.bytesParsed ?? 0 };
    }
    return { kind: 'consumed', n: b.length };
  }

  /** End of stream (a close-delimited response completes here). */
  finish(): ExecResult | undefined {
    const r = this.p.finish();
    if (r instanceof Error) {
      const e = r as Error & { code?: string; reason?: string };
      return { kind: 'error', code: e.code ?? 'HPE_UNKNOWN', reason: e.reason ?? e.message, n: 0 };
    }
    return undefined;
  }

  close(): void {
    try {
      this.p.close?.();
    } catch {
      /* already closed */
    }
  }
}

/**
 * Where a chunked body ends: size lines (hex, extensions), data, CRLFs, the
 * last chunk and trailers up to the empty line. It only delimits; the parser
 * validates the same bytes.
 */
export class ChunkedScanner {
  private state: 'size' | 'ext' | 'size-lf' | 'data' | 'data-cr' | 'data-lf' | 'trailer-start' | 'trailer' | 'trailer-lf' | 'end-lf' | 'done' = 'size';
  private size = 0;
  private left = 0;
  private digits = 0;

  get done(): boolean {
    return this.state === 'done';
  }

  /** Bytes of b (from the start) that belong to the body; stops at its end. -1: malformed. */
  scan(b: Buffer): number {
    let i = 0;
    while (i < b.length && this.state !== 'done') {
      const c = b[i];
      switch (this.state) {
        case 'size': {
          const v = hex(c);
          if (v >= 0) {
            if (++this.digits > 16) return -1;
            this.size = this.size * 16 + v;
            i++;
          } else if (c === 0x3b /* ; */ || c === 0x20 || c === 0x09) {
            this.state = 'ext';
            i++;
          } else if (c === 0x0d) {
            this.state = 'size-lf';
            i++;
          } else return -1;
          break;
        }
        case 'ext':
          if (c === 0x0d) this.state = 'size-lf';
          i++;
          break;
        case 'size-lf':
          if (c !== 0x0a || this.digits === 0) return -1;
          i++;
          if (this.size === 0) this.state = 'trailer-start';
          else {
            this.left = this.size;
            this.state = 'data';
          }
          break;
        case 'data': {
          const n = Math.min(this.left, b.length - i);
          i += n;
          this.left -= n;
          if (this.left === 0) this.state = 'data-cr';
          break;
        }
        case 'data-cr':
          if (c !== 0x0d) return -1;
          this.state = 'data-lf';
          i++;
          break;
        case 'data-lf':
          if (c !== 0x0a) return -1;
          this.size = 0;
          this.digits = 0;
          this.state = 'size';
          i++;
          break;
        case 'trailer-start':
          this.state = c === 0x0d ? 'end-lf' : 'trailer';
          i++;
          break;
        case 'trailer':
          if (c === 0x0d) this.state = 'trailer-lf';
          i++;
          break;
        case 'trailer-lf':
          if (c !== 0x0a) return -1;
          this.state = 'trailer-start';
          i++;
          break;
        case 'end-lf':
          if (c !== 0x0a) return -1;
          this.state = 'done';
          i++;
          break;
      }
    }
    return i;
  }
}

function hex(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/** Fails when node:_http_common no longer behaves as this module expects. */
export function selfCheck(): void {
  let head: HeadInfo | undefined;
  let done = 0;
  const p = new Http1Parser('request', { onHead: (h) => ((head = h), 'pause'), onMessageComplete: () => done++ });
  const msg = Buffer.from('POST /x?y=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n');
  const r = p.execute(msg);
  const headEnd = msg.indexOf('\r\n\r\n') + 4;
  if (r.kind !== 'paused' || r.n !== headEnd || head?.method !== 'POST' || head.url !== '/x?y=1' || head.headers[1] !== 'h') {
    throw new Error(`node:_http_common's parser does not behave as the proxy expects (Node ${process.version})`);
  }
  const body = msg.subarray(headEnd);
  const s = new ChunkedScanner();
  const n = s.scan(body);
  const r2 = p.execute(body);
  if (!s.done || n !== body.length || r2.kind !== 'consumed' || done !== 1) {
    throw new Error(`node:_http_common's parser does not report message completion as the proxy expects (Node ${process.version})`);
  }
  p.close();
}
