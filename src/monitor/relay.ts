/**
 * The cluster-wide flow view (cluster mode): `membrane observe --node NAME`
 * and `--all-nodes` ask the local agent, which asks every node's agent and
 * merges the answers by time — the relay of the reference system, without a
 * separate process.
 *
 * Secure by default: an agent serves its flows to other nodes only when
 * started with --relay-address HOST:PORT, and only to callers presenting the
 * cluster's relay token (--relay-token-file, a file only its owner may read;
 * compared in constant time). The peer listener serves one read-only route,
 * GET /v1/flows, with the same filters as the local API (and follow: the
 * streams of every node are passed on as their lines arrive). Each
 * node advertises its relay address in its node record; a node without one
 * is reported as unreachable, never silently skipped.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { Logger } from '../util/log';
import { FILTER_FIELDS, FilterError, parseFlowQuery } from './filter';
import type { Monitor } from './monitor';
import { serveFlows } from './stream';

export class RelayConfigError extends Error {
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}

/** The relay token from its file: at least 16 characters, readable by its owner only. */
export function readRelayToken(file: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw new RelayConfigError(`relay-token-file: cannot read "${file}": ${(e as Error).message}`, 'relay-token-file');
  }
  if (st.mode & 0o077) throw new RelayConfigError(`relay-token-file: "${file}" is accessible to others (mode ${(st.mode & 0o777).toString(8)}); make it 0600`, 'relay-token-file');
  const token = fs.readFileSync(file, 'utf8').trim();
  if (token.length < 16) throw new RelayConfigError(`relay-token-file: "${file}" holds a token of ${token.length} characters; at least 16 are needed`, 'relay-token-file');
  return token;
}

const ALLOWED = new Set(['last', 'since', 'until', 'follow', ...FILTER_FIELDS.flatMap((f) => [f, `not.${f}`])]);

function tokenOk(header: string | undefined, token: string): boolean {
  const m = /^Bearer (.+)$/.exec(header ?? '');
  if (!m) return false;
  const a = crypto.createHash('sha256').update(m[1]).digest();
  const b = crypto.createHash('sha256').update(token).digest();
  return crypto.timingSafeEqual(a, b);
}

/** This node's flows for other nodes' agents (GET /v1/flows with the relay token). */
export class RelayServer {
  private server?: http.Server;
  readonly stats = { requests: 0, refused: 0 };

  constructor(
    private readonly monitor: Monitor,
    private readonly token: string,
    private readonly log: Logger,
    private readonly stallMs = 30_000,
  ) {}

  async listen(address: string): Promise<void> {
    const cut = address.lastIndexOf(':');
    const host = address.slice(0, cut);
    const port = Number(address.slice(cut + 1));
    this.server = http.createServer((req, res) => void this.handle(req, res));
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 30_000;
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => resolve());
    });
    this.log.info('relay: serving this node\'s flows to the cluster\'s agents', { address });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const url = new URL(req.url ?? '/', 'http://relay');
    if (req.method !== 'GET' || url.pathname !== '/v1/flows') return send(404, { error: `${req.method} ${url.pathname}: not served by the relay`, kind: 'not-found' });
    if (!tokenOk(req.headers.authorization, this.token)) {
      this.stats.refused++;
      this.log.warn('relay: request refused (no or wrong relay token)', { from: req.socket.remoteAddress });
      return send(401, { error: 'relay token required', kind: 'unauthorized' });
    }
    for (const k of url.searchParams.keys()) if (!ALLOWED.has(k)) return send(400, { error: `${k}: not a flow filter the relay serves`, kind: 'invalid', field: k });
    let q;
    try {
      q = parseFlowQuery(url.searchParams);
    } catch (e) {
      if (e instanceof FilterError) return send(400, { error: e.message, kind: 'invalid' });
      throw e;
    }
    this.stats.requests++;
    await serveFlows(this.monitor, res, q, { stallMs: this.stallMs, log: this.log });
  }

  close(): void {
    this.server?.close();
    this.server?.closeAllConnections();
  }
}

export interface RelayTarget {
  node: string;
  /** This node: asked on its own Unix socket. */
  socket?: string;
  /** Another node: its relay address (host:port); undefined if it serves none. */
  address?: string;
}

/** NDJSON lines of GET `path` from a Unix socket or a relay address (bounded). */
function fetchLines(t: RelayTarget, path: string, token: string | undefined, timeoutMs: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    let opts: http.RequestOptions;
    if (t.socket) opts = { socketPath: t.socket, path, method: 'GET' };
    else {
      const cut = t.address!.lastIndexOf(':');
      opts = { host: t.address!.slice(0, cut).replace(/^\[|\]$/g, ''), port: Number(t.address!.slice(cut + 1)), path, method: 'GET', headers: token ? { authorization: `Bearer ${token}` } : {} };
    }
    const req = http.request(opts, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => {
        if (res.statusCode !== 200) {
          let msg = body;
          try {
            msg = (JSON.parse(body) as { error?: string }).error ?? body;
          } catch {
            /* not JSON */
          }
          reject(new Error(`HTTP ${res.statusCode}: ${msg}`));
          return;
        }
        resolve(body.split('\n').filter(Boolean));
      });
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Ask every target for its flows (same filters) and merge them by time; with
 * `last`, the last N of the merged stream. Nodes that could not be asked are
 * returned as errors, naming the node.
 */
export async function relayFlows(targets: RelayTarget[], query: URLSearchParams, opts: { token?: string; timeoutMs?: number }): Promise<{ flows: { time: string }[]; errors: { node: string; error: string }[] }> {
  const path = `/v1/flows?${query}`;
  const errors: { node: string; error: string }[] = [];
  const lists = await Promise.all(
    targets.map(async (t) => {
      if (!t.socket && !t.address) {
        errors.push({ node: t.node, error: 'the node serves no relay (its agent has no --relay-address)' });
        return [];
      }
      if (!t.socket && !opts.token) {
        errors.push({ node: t.node, error: 'this agent has no relay token (--relay-token-file) to ask other nodes with' });
        return [];
      }
      try {
        const lines = await fetchLines(t, path, t.socket ? undefined : opts.token, opts.timeoutMs ?? 10_000);
        return lines.map((l) => JSON.parse(l) as { time: string; lost_events?: number }).filter((f) => f.time && f.lost_events === undefined);
      } catch (e) {
        errors.push({ node: t.node, error: (e as Error).message });
        return [];
      }
    }),
  );
  const flows = lists.flat().sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
  const last = query.get('last');
  return { flows: last !== null ? flows.slice(Math.max(0, flows.length - Number(last))) : flows, errors };
}

/** A node name `--node` asked for that the cluster does not know. */
export class UnknownNodeError extends Error {
  constructor(readonly node: string, known: string[]) {
    super(`node: "${node}" is not a node of the cluster (known: ${known.join(', ') || 'none'})`);
  }
}

/** Whom to ask: `wanted` nodes (or 'all'), this node on its own socket, the others at their relay address. */
export function relayTargets(nodes: { name: string; relay?: { address: string } }[], self: string, socket: string, wanted: string[] | 'all'): RelayTarget[] {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  if (!byName.has(self)) byName.set(self, { name: self });
  const names = wanted === 'all' ? [...byName.keys()].sort() : [...new Set(wanted)];
  return names.map((name) => {
    const n = byName.get(name);
    if (!n) throw new UnknownNodeError(name, [...byName.keys()].sort());
    return name === self ? { node: name, socket } : { node: name, address: n.relay?.address };
  });
}

/**
 * Follow the flows of every target: each node's stream is passed on line by
 * line as it arrives (so lines of different nodes interleave in arrival
 * order); nodes that cannot be asked are `node_error` lines. Ends when every
 * stream ended; the client going away ends every stream.
 */
export function relayFollow(targets: RelayTarget[], query: URLSearchParams, res: http.ServerResponse, opts: { token?: string }): void {
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  const path = `/v1/flows?${query}`;
  const reqs: http.ClientRequest[] = [];
  let open = targets.length;
  const done = () => {
    if (--open === 0 && !res.writableEnded) res.end();
  };
  const nodeError = (node: string, error: string) => {
    if (!res.writableEnded) res.write(JSON.stringify({ node_error: { node, error } }) + '\n');
  };
  for (const t of targets) {
    if (!t.socket && (!t.address || !opts.token)) {
      nodeError(t.node, !t.address ? 'the node serves no relay (its agent has no --relay-address)' : 'this agent has no relay token (--relay-token-file) to ask other nodes with');
      done();
      continue;
    }
    let o: http.RequestOptions;
    if (t.socket) o = { socketPath: t.socket, path, method: 'GET' };
    else {
      const cut = t.address!.lastIndexOf(':');
      o = { host: t.address!.slice(0, cut).replace(/^\[|\]$/g, ''), port: Number(t.address!.slice(cut + 1)), path, method: 'GET', headers: { authorization: `Bearer ${opts.token}` } };
    }
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      done();
    };
    const r = http.request(o, (up) => {
      if (up.statusCode !== 200) {
        let body = '';
        up.on('data', (d) => (body += d));
        up.on('end', () => {
          nodeError(t.node, `HTTP ${up.statusCode}: ${body.slice(0, 300)}`);
          end();
        });
        return;
      }
      let buf = '';
      up.setEncoding('utf8');
      up.on('data', (chunk: string) => {
        buf += chunk;
        const cut = buf.lastIndexOf('\n');
        if (cut < 0) return;
        const lines = buf.slice(0, cut + 1);
        buf = buf.slice(cut + 1);
        if (!res.writableEnded && !res.write(lines)) {
          up.pause();
          res.once('drain', () => up.resume());
        }
      });
      up.on('end', end);
      up.on('error', end);
    });
    r.on('error', (e) => {
      nodeError(t.node, e.message);
      end();
    });
    r.end();
    reqs.push(r);
  }
  res.on('close', () => {
    for (const r of reqs) r.destroy();
  });
}
