/**
 * The agent's monitor: reads the datapath's ring buffer on the event loop,
 * decodes every event, keeps the last N flows (enriched) and fans events and
 * flows out to subscribers (membrane monitor / observe --follow, the UI).
 * Events the kernel could not queue are counted in mb_events_lost; nothing is
 * dropped silently on this side either (decode failures are counted).
 */
import type { BpfMap } from '../bpf';
import { RingBufReader } from '../bpf';
import * as gen from '../datapath/maps.gen';
import type { Logger } from '../util/log';
import { decodeEvent, MonitorEvent } from './events';
import { FlowQuery, matchFlow } from './filter';
import { Enricher, Flow, toFlow } from './flow';

export const AGGREGATION_LEVELS = { none: 0, low: 1, medium: 2, max: 3 } as const;
export type AggregationLevel = keyof typeof AGGREGATION_LEVELS;
const MONITOR_F_TRACE = 1;
const MONITOR_F_VERDICT = 2;

export interface MonitorOptions {
  bufferSize: number;
  aggregation: AggregationLevel;
  reportInterval: number;
  /** Emit trace and policy-verdict events at all (drops are always emitted). */
  observe: boolean;
}

export class Monitor {
  private readonly ring: (Flow | undefined)[];
  private head = 0;
  private count = 0;
  private reader?: RingBufReader;
  private readonly flowSubs = new Set<{ q: FlowQuery; fn: (f: Flow) => void }>();
  private readonly eventSubs = new Set<(e: MonitorEvent, f: Flow) => void>();
  readonly counters = { events: { drop: 0, trace: 0, 'policy-verdict': 0 } as Record<string, number>, flows: 0, undecodable: 0, verdicts: { allowed: 0, denied: 0 } };

  constructor(
    private readonly events: BpfMap,
    private readonly lost: BpfMap<number, bigint>,
    private readonly config: { set(c: gen.MonitorConfig): void },
    private readonly enricher: Enricher,
    private readonly log: Logger,
    readonly opts: MonitorOptions,
  ) {
    this.ring = new Array(opts.bufferSize);
  }

  /** Write the datapath's monitor configuration and start reading events. */
  start(): void {
    this.config.set({
      flags: this.opts.observe ? MONITOR_F_TRACE | MONITOR_F_VERDICT : 0,
      aggregation: AGGREGATION_LEVELS[this.opts.aggregation],
      report_interval: this.opts.reportInterval,
      pad: 0,
    });
    this.reader = new RingBufReader(this.events, (rec) => this.onRecord(rec), {
      onError: (e) => this.log.error('monitor: event handling failed', { error: e }),
    });
  }

  private onRecord(rec: Buffer): void {
    const ev = decodeEvent(rec);
    if (!ev) {
      this.counters.undecodable++;
      return;
    }
    this.counters.events[ev.type]++;
    if (ev.type === 'policy-verdict') this.counters.verdicts[ev.allowed ? 'allowed' : 'denied']++;
    const flow = toFlow(ev, this.enricher);
    this.ring[this.head] = flow;
    this.head = (this.head + 1) % this.ring.length;
    this.count = Math.min(this.count + 1, this.ring.length);
    this.counters.flows++;
    for (const s of this.eventSubs) s(ev, flow);
    for (const s of this.flowSubs) if (inWindow(flow, s.q) && matchFlow(flow, s.q.filters)) s.fn(flow);
  }

  /** Events the kernel could not put in the ring buffer (summed over CPUs). */
  lostEvents(): number {
    const v = this.lost.lookupPerCpu(0);
    return v ? v.reduce((s, x) => s + Number(x), 0) : 0;
  }

  /** Stored flows matching the query, oldest first (the last N when asked). */
  query(q: FlowQuery): Flow[] {
    const out: Flow[] = [];
    for (let i = 0; i < this.count; i++) {
      const f = this.ring[(this.head - this.count + i + this.ring.length) % this.ring.length]!;
      if (inWindow(f, q) && matchFlow(f, q.filters)) out.push(f);
    }
    return q.last !== undefined ? out.slice(Math.max(0, out.length - q.last)) : out;
  }

  subscribeFlows(q: FlowQuery, fn: (f: Flow) => void): () => void {
    const s = { q, fn };
    this.flowSubs.add(s);
    return () => this.flowSubs.delete(s);
  }

  subscribeEvents(fn: (e: MonitorEvent, f: Flow) => void): () => void {
    this.eventSubs.add(fn);
    return () => this.eventSubs.delete(fn);
  }

  get stored(): number {
    return this.count;
  }

  stop(): void {
    this.reader?.close();
    this.reader = undefined;
  }
}

function inWindow(f: Flow, q: FlowQuery): boolean {
  if (q.since === undefined && q.until === undefined) return true;
  const t = Date.parse(f.time);
  return (q.since === undefined || t >= q.since) && (q.until === undefined || t <= q.until);
}
