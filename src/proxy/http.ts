/**
 * The HTTP policy listener: serves flows the datapath redirected to it.
 *
 * A redirected connection arrives on a transparent listener, so the accepted
 * socket's local address is the original destination and its remote address
 * the original client. Both ends' identities and endpoints come from the
 * datapath's maps (identity.ts). Each request is decided with the L7 tables of
 * the endpoint whose redirect led here (the client's egress rules on the
 * egress listener, the server's ingress rules on the ingress listener); on the
 * egress listener a local server's ingress rules are enforced too, and the
 * upstream packets carry MARK_FROM_PROXY so the datapath does not redirect
 * them a second time.
 *
 *   allowed  forwarded unchanged (the bytes as received; only the header
 *            actions of a matching headerMatches rule rewrite the head) on
 *            the connection's own upstream connection, bound to the client's
 *            address (IP_TRANSPARENT) so the server sees the original client
 *   denied   403 "Access denied\n"; the connection stays usable
 *   upgrade  (WebSocket, h2c) and CONNECT are refused with 403 and the
 *            connection is closed, as the reference proxy does without an
 *            upgrade configuration
 *
 * The HTTP/1 work (keep-alive, pipelining, chunked bodies, the byte-exact
 * forwarding) is http1.ts, with Node's own parser (llhttp.ts).
 */
import * as net from 'node:net';
import { headerMap, HttpRequestView, L7Decision, L7Table } from '../policy/l7';
import type { Logger } from '../util/log';
import type { ListenerConfig } from './config';
import { MARK_FROM_PROXY } from './constants';
import { Http1Connection, Outcome, RequestHead } from './http1';
import type { Peer } from './identity';
import type { L7Record } from './records';
import type { GatewayTable } from '../gateway/model';
import { sockets } from './sockets';

export { ACCESS_DENIED_BODY } from './http1';

/** What a listener needs from the proxy around it. */
export interface ListenerContext {
  log: Logger;
  /** Identity and endpoint of an address, from the datapath's maps. */
  peer(ip: string, port: number): Peer;
  /** An endpoint's L7 table for a direction; undefined when the configuration does not know the endpoint. */
  table(endpointId: number, egress: boolean): L7Table | undefined;
  /** Resolves at the next configuration, or after ms. */
  nextConfig(ms: number): Promise<void>;
  record(r: L7Record): void;
  /** An http-gateway listener's routes (ProxyConfig.gateways), read at every request. */
  gateway(listener: string): GatewayTable | undefined;
  counters: { connections: number; requests: { forwarded: number; denied: number; error: number } };
}

interface Conn {
  src: Peer;
  dst: Peer;
}

/** How long a request waits for the configuration of an endpoint the proxy does not know yet. */
const UNKNOWN_ENDPOINT_WAIT_MS = 1500;

type Decision = L7Decision & { direction: 'ingress' | 'egress' };

/** The policy a record names: the first deciding rule that is a policy ("Kind/namespace/name" or "Kind/name"). */
function policyOf(d: L7Decision | undefined): string | undefined {
  return d?.policies.find((p) => /^[A-Za-z]+\/[^\s,]+$/.test(p));
}

export class HttpPolicyListener {
  private server?: net.Server;
  private readonly open = new Set<net.Socket>();
  state: 'starting' | 'listening' | 'error' | 'closed' = 'starting';
  error?: string;

  constructor(
    readonly cfg: ListenerConfig,
    private readonly ctx: ListenerContext,
  ) {}

  get egress(): boolean {
    return this.cfg.direction === 'egress';
  }

  async start(): Promise<void> {
    let fd: number;
    try {
      // Marked: the datapath assigns redirected flows only to the proxy's own sockets.
      fd = sockets().sockListen(this.cfg.address, this.cfg.port, 4096, this.cfg.transparent, MARK_FROM_PROXY);
    } catch (e) {
      this.state = 'error';
      this.error = (e as Error).message;
      throw e;
    }
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (s) => this.onConnection(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (e) => {
      this.state = 'error';
      this.error = e.message;
      this.ctx.log.error('listener failed', { listener: this.cfg.name, error: e });
    });
    this.server = server;
    this.state = 'listening';
  }

  private onConnection(s: net.Socket): void {
    const localIp = s.localAddress ?? '';
    const localPort = s.localPort ?? 0;
    // Only redirected flows: a connection made to the listener's own address is refused.
    if (localPort === this.cfg.port && (localIp === this.cfg.address || localIp === `::ffff:${this.cfg.address}`)) {
      s.destroy();
      return;
    }
    let conn: Conn;
    try {
      conn = { src: this.ctx.peer(s.remoteAddress ?? '', s.remotePort ?? 0), dst: this.ctx.peer(localIp, localPort) };
    } catch (e) {
      this.ctx.log.error('cannot identify a redirected connection; closing it', { listener: this.cfg.name, error: e });
      s.destroy();
      return;
    }
    this.open.add(s);
    this.ctx.counters.connections++;
    s.on('close', () => {
      this.open.delete(s);
      this.ctx.counters.connections--;
    });
    type Info = { started: bigint; decision?: Decision; http: NonNullable<L7Record['http']> };
    const info = (h: RequestHead & { info?: Info }): Info => {
      if (!h.info) {
        const host = hostOf(h.headers);
        h.info = {
          started: process.hrtime.bigint(),
          http: { method: h.method, url: `http://${host ?? `${conn.dst.ip}:${conn.dst.port}`}${h.url}`, protocol: `HTTP/${h.versionMajor}.${h.versionMinor}`, ...(host ? { host } : {}) },
        };
      }
      return h.info;
    };
    const direction = this.egress ? 'egress' : 'ingress';
    new Http1Connection(s, {
      decide: (h) => {
        const i = info(h);
        let headers: Map<string, string[]> | undefined;
        const view: HttpRequestView = {
          method: h.method,
          path: h.url,
          // Built only when a rule looks at headers (host, headers, headerMatches).
          get headers() {
            return (headers ??= headerMap(h.headers));
          },
        };
        const done = (d: Decision): Outcome => {
          i.decision = d;
          const logged = d.actions.filter((a) => a.action === 'LOG');
          this.ctx.record({
            time: Date.now(), kind: 'request', direction: d.direction, verdict: d.allowed ? 'forwarded' : 'denied', policy: policyOf(d),
            src: conn.src, dst: conn.dst,
            http: logged.length ? { ...i.http, headers: Object.fromEntries(logged.map((a) => [a.name, `mismatch: ${view.headers.get(a.name.toLowerCase())?.join(',') ?? '(absent)'}`])) } : i.http,
          });
          return { allowed: d.allowed, actions: d.actions };
        };
        const d = this.decideNow(conn, view);
        if (d) return done(d);
        return this.decideLater(conn, view).then(done);
      },
      openUpstream: () => this.upstream(conn.src, conn.dst),
      onResponse: (h, code, verdict, note) => {
        if (note) this.ctx.log.debug('upstream failed', { listener: this.cfg.name, note });
        const i = info(h);
        const d = i.decision;
        if (verdict === 'forwarded') this.ctx.counters.requests.forwarded++;
        else if (verdict === 'denied') this.ctx.counters.requests.denied++;
        else this.ctx.counters.requests.error++;
        this.ctx.record({
          time: Date.now(), kind: 'response', direction: d?.direction ?? direction, verdict,
          policy: policyOf(d),
          // A response goes from the server to the client.
          src: conn.dst, dst: conn.src,
          http: { ...i.http, code, latencyNs: Number(process.hrtime.bigint() - i.started) },
        });
      },
      onRefused: (h, what) => {
        this.ctx.counters.requests.error++;
        this.ctx.record({
          time: Date.now(), kind: 'response', direction, verdict: 'error',
          src: conn.dst, dst: conn.src, http: { ...info(h).http, code: 403 },
        });
      },
      onError: (what, e) => this.ctx.log.debug(what, { listener: this.cfg.name, src: `${conn.src.ip}:${conn.src.port}`, dst: `${conn.dst.ip}:${conn.dst.port}`, ...(e ? { error: e } : {}) }),
    });
  }

  /** A connection to the server, from the client's address, marked so the datapath lets it through. */
  private upstream(src: Peer, dst: Peer): net.Socket {
    const fd = sockets().sockBound(src.ip, 0, MARK_FROM_PROXY, true);
    const s = new net.Socket({ fd, readable: true, writable: true, manualStart: true } as net.SocketConstructorOpts);
    s.setNoDelay(true);
    s.connect({ host: dst.ip, port: dst.port });
    return s;
  }

  /** The enforcing sides of a connection: the redirecting endpoint's rules, and on egress a local server's ingress rules. */
  private sides(conn: Conn): { endpoint: number; egress: boolean; remote: Peer }[] {
    const sides: { endpoint: number; egress: boolean; remote: Peer }[] = [];
    if (this.egress) {
      if (conn.src.endpointId) sides.push({ endpoint: conn.src.endpointId, egress: true, remote: conn.dst });
      // A local server's ingress rules: enforced here, the upstream is not redirected again.
      if (conn.dst.endpointId) sides.push({ endpoint: conn.dst.endpointId, egress: false, remote: conn.src });
    } else if (conn.dst.endpointId) {
      sides.push({ endpoint: conn.dst.endpointId, egress: false, remote: conn.src });
    }
    return sides;
  }

  /** The decision, or undefined when an endpoint's configuration is not known yet. */
  private decideNow(conn: Conn, view: HttpRequestView, final = false): Decision | undefined {
    const sides = this.sides(conn);
    const direction = this.egress ? 'egress' : 'ingress';
    if (sides.length === 0) return { allowed: false, policies: ['no local endpoint on the redirected connection'], actions: [], direction };
    const actions: L7Decision['actions'] = [];
    let last: L7Decision | undefined;
    for (const side of sides) {
      const table = this.ctx.table(side.endpoint, side.egress);
      const dir = side.egress ? 'egress' : 'ingress';
      if (!table) {
        if (!final) return undefined;
        return { allowed: false, policies: [`no policy known for endpoint ${side.endpoint}`], actions: [], direction: dir };
      }
      const d = table.decide(side.remote.identity, conn.dst.port, view);
      if (!d.allowed) return { ...d, direction: dir };
      actions.push(...d.actions);
      if (!d.unrestricted || !last) last = d;
    }
    return { ...last!, actions, direction };
  }

  private async decideLater(conn: Conn, view: HttpRequestView): Promise<Decision> {
    await this.ctx.nextConfig(UNKNOWN_ENDPOINT_WAIT_MS);
    return this.decideNow(conn, view, true)!;
  }

  get connections(): number {
    return this.open.size;
  }

  async close(): Promise<void> {
    this.state = 'closed';
    const srv = this.server;
    if (!srv) return;
    const closed = new Promise<void>((r) => srv.close(() => r()));
    for (const s of this.open) s.destroy();
    await closed;
  }
}

function hostOf(raw: string[]): string | undefined {
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i].length === 4 && raw[i].toLowerCase() === 'host') return raw[i + 1];
  return undefined;
}
