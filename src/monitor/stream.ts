/**
 * Streaming readers of the flow store: `GET /v1/flows` (stored flows, and with
 * follow=1 every new one), `GET /v1/monitor` (the raw event stream) and, through
 * them, the browser UI.
 *
 * A reader is a cursor into the store, not a queue: it pulls records from its
 * cursor and writes them while the socket takes them (write() returning false
 * stops it until 'drain'), with bounded work per turn of the event loop. So a
 * client's backlog is bounded by the store itself and costs nothing per
 * client. When a client falls behind by more than the store holds, the records
 * it missed are dropped for it, counted (per stream kind), and the client is
 * told how many in the stream ({"lost_events": ...}) before the next record it
 * gets. A client that takes nothing for `stallMs` while records are being
 * dropped for it is disconnected (and logged).
 */
import type * as http from 'node:http';
import type { Logger } from '../util/log';
import type { FlowQuery } from './filter';
import { matchFlow } from './filter';
import type { Flow } from './flow';
import type { Monitor, StoreReader, StoredEvent } from './monitor';
import { OBSERVATION_SHORT } from './events';

/** Work per turn of the event loop for one reader, at most. */
const SLICE_MS = 4;
/** Bytes gathered before a write. */
const WRITE_CHUNK = 32 * 1024;

export type StreamKind = 'flows' | 'monitor';

export interface StreamOptions {
  kind: StreamKind;
  /** First record to send. */
  start: number;
  /** Stop (and end the response) at this record; undefined: follow forever. */
  end?: number;
  /** The NDJSON line of record `seq` (without newline), or undefined to skip it. */
  render(seq: number): string | undefined;
  /** Disconnect a client that took nothing for this long while records were dropped for it. */
  stallMs: number;
  log: Logger;
  nodeName: string;
}

/** The record telling a client how many records it missed (the reference system's LostEvent shape). */
export function lostEventsLine(n: number, nodeName: string): string {
  return JSON.stringify({ lost_events: { source: 'CLIENT_TOO_SLOW', num_events_lost: n }, node_name: nodeName, time: new Date().toISOString() });
}

export class StoreStream implements StoreReader {
  private cursor: number;
  private waiting = false;
  private scheduled = false;
  private closed = false;
  private pendingLost = 0;
  private behindSince?: number;
  /** Records dropped for this client so far. */
  dropped = 0;
  sent = 0;

  constructor(
    private readonly monitor: Monitor,
    private readonly res: http.ServerResponse,
    private readonly opts: StreamOptions,
  ) {
    this.cursor = opts.start;
    if (res.destroyed) {
      // The client went away before the stream started (e.g. during the scan for `last`).
      this.closed = true;
      return;
    }
    res.on('close', () => this.close());
    res.on('error', () => this.close());
    monitor.addReader(this);
    this.schedule();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  onAppend(): void {
    if (this.closed) return;
    this.checkDrops();
    if (!this.waiting) this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => this.pump());
  }

  /** Records overwritten before this client took them are dropped for it. */
  private checkDrops(): void {
    const oldest = this.monitor.store.oldest;
    if (this.cursor >= oldest) return;
    const n = oldest - this.cursor;
    this.cursor = oldest;
    this.pendingLost += n;
    this.dropped += n;
    this.monitor.streamCounters(this.opts.kind).dropped += n;
    if (!this.waiting) return;
    const now = Date.now();
    this.behindSince ??= now;
    if (now - this.behindSince >= this.opts.stallMs) {
      this.opts.log.warn('stream client stayed behind: disconnected', { stream: this.opts.kind, droppedForClient: this.dropped, sent: this.sent, behindMs: now - this.behindSince });
      this.monitor.streamCounters(this.opts.kind).disconnected++;
      this.res.destroy();
      this.close();
    }
  }

  private pump(): void {
    this.scheduled = false;
    if (this.closed || this.waiting) return;
    this.checkDrops();
    if (this.closed) return;
    const t0 = performance.now();
    const limit = () => (this.opts.end !== undefined ? Math.min(this.opts.end, this.monitor.store.head) : this.monitor.store.head);
    let out = '';
    let n = 0;
    const flush = (): boolean => {
      if (!out) return true;
      const ok = this.res.write(out);
      out = '';
      if (!ok) {
        this.waiting = true;
        this.res.once('drain', () => {
          this.waiting = false;
          this.behindSince = undefined;
          this.schedule();
        });
      }
      return ok;
    };
    let end = limit();
    while (this.cursor < end) {
      if (this.pendingLost) {
        out += lostEventsLine(this.pendingLost, this.opts.nodeName) + '\n';
        this.pendingLost = 0;
      }
      const line = this.opts.render(this.cursor++);
      if (line !== undefined) {
        out += line + '\n';
        this.sent++;
      }
      if (out.length >= WRITE_CHUNK && !flush()) return;
      if ((++n & 31) === 0) {
        if (performance.now() - t0 >= SLICE_MS) {
          if (flush()) this.schedule();
          return;
        }
        end = limit();
      }
    }
    if (this.pendingLost && this.opts.end === undefined) {
      out += lostEventsLine(this.pendingLost, this.opts.nodeName) + '\n';
      this.pendingLost = 0;
    }
    if (!flush()) return;
    if (this.opts.end !== undefined && this.cursor >= this.opts.end) {
      if (this.pendingLost) this.res.write(lostEventsLine(this.pendingLost, this.opts.nodeName) + '\n');
      this.close();
      this.res.end();
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.monitor.removeReader(this);
  }
}

function inWindow(t: number, q: FlowQuery): boolean {
  return (q.since === undefined || t >= q.since) && (q.until === undefined || t <= q.until);
}

/** Does the stored record `seq` match the query? Returns the flow when it does. */
export function matchingFlow(m: Monitor, seq: number, q: FlowQuery): Flow | undefined {
  if (!m.store.has(seq)) return undefined;
  if ((q.since !== undefined || q.until !== undefined) && !inWindow(m.timeAt(seq), q)) return undefined;
  const f = m.flowAt(seq);
  return f && matchFlow(f, q.filters) ? f : undefined;
}

/**
 * Where to start for the last `n` matching flows: scans back from the newest,
 * a slice per turn of the event loop.
 */
export async function startForLast(m: Monitor, q: FlowQuery, n: number): Promise<number> {
  let seq = m.store.head;
  let found = 0;
  const plain = !q.filters.length && q.since === undefined && q.until === undefined;
  if (plain) return Math.max(m.store.oldest, seq - n);
  while (found < n && seq > m.store.oldest) {
    const t0 = performance.now();
    while (found < n && seq > m.store.oldest && performance.now() - t0 < SLICE_MS) {
      for (let k = 0; k < 32 && found < n && seq > m.store.oldest; k++) if (matchingFlow(m, --seq, q)) found++;
    }
    if (found < n && seq > m.store.oldest) await new Promise((r) => setImmediate(r));
  }
  return Math.max(seq, m.store.oldest);
}

/** Serve a flow query as NDJSON on a hijacked response: stored flows, then (follow) new ones. */
export async function serveFlows(m: Monitor, res: http.ServerResponse, q: FlowQuery, opts: { stallMs: number; log: Logger }): Promise<StoreStream> {
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  const head = m.store.head;
  const start = q.last !== undefined ? await startForLast(m, q, q.last) : m.store.oldest;
  return new StoreStream(m, res, {
    kind: 'flows',
    start,
    end: q.follow ? undefined : head,
    render: (seq) => {
      const f = matchingFlow(m, seq, q);
      return f ? JSON.stringify(f) : undefined;
    },
    stallMs: opts.stallMs,
    log: opts.log,
    nodeName: m.contexts.nodeName,
  });
}

/** Event types of the monitor stream (`membrane monitor -t`). */
export const MONITOR_TYPES = ['drop', 'trace', 'policy-verdict', 'l7'];

export interface MonitorQuery {
  types: string[];
  relatedTo?: number;
}

/** The JSON of a monitor event: its fields, the capture in hex, the observation point's short name. */
function eventJson(ev: StoredEvent): Record<string, unknown> {
  if (ev.type === 'l7') return { ...ev };
  const { data, ...rest } = ev;
  return { ...rest, data: data.toString('hex'), point: ev.type === 'trace' ? OBSERVATION_SHORT[ev.obsPoint] : undefined };
}

/** Serve the live event stream ({event, flow} per line) on a hijacked response. */
export function serveMonitor(m: Monitor, res: http.ServerResponse, q: MonitorQuery, opts: { stallMs: number; log: Logger }): StoreStream {
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  return new StoreStream(m, res, {
    kind: 'monitor',
    start: m.store.head,
    render: (seq) => {
      const ev = m.eventAt(seq);
      if (!ev || (q.types.length && !q.types.includes(ev.type))) return undefined;
      const flow = m.flowAt(seq);
      if (!flow) return undefined;
      if (q.relatedTo !== undefined) {
        const source = ev.type === 'l7' ? undefined : ev.source;
        if (source !== q.relatedTo && flow.source.ID !== q.relatedTo && flow.destination.ID !== q.relatedTo) return undefined;
      }
      return JSON.stringify({ event: eventJson(ev), flow });
    },
    stallMs: opts.stallMs,
    log: opts.log,
    nodeName: m.contexts.nodeName,
  });
}
