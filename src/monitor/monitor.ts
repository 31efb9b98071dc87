/**
 * The agent's monitor: reads the datapath's ring buffer in batches on the
 * event loop (bounded work per turn, so a flood never starves the API), keeps
 * every event as a compact record in the flow store (store.ts) with the
 * interned names of both ends (context.ts), takes L7 records from the proxies
 * (ingestL7), and lets readers (stream.ts: `observe --follow`, `monitor`, the
 * UI) pull flows and events from the store at their own pace. Flows are built
 * only when read (flow.ts).
 *
 * Events the kernel could not queue are counted in mb_events_lost; records the
 * agent cannot decode are counted; events a reader was too slow to take are
 * counted per stream kind and told to the reader.
 */
import * as crypto from 'node:crypto';
import type { BpfMap } from '../bpf';
import { RingBufBatchReader } from '../bpf';
import { EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, METRIC_DIR_EGRESS } from '../datapath/constants';
import * as gen from '../datapath/maps.gen';
import type { Logger } from '../util/log';
import { ContextTable, FlowSource } from './context';
import { decodeEvent, MonitorEvent } from './events';
import { Flow, eventFlow, l7Flow, traceDirection } from './flow';
import { EVENT_L7, L7Record, l7RecordBytes, validateL7Record } from './l7';
import { CHUNK, Chunk, FlowRing, RAW_BYTES, SLOT_BYTES } from './store';

export const AGGREGATION_LEVELS = { none: 0, low: 1, medium: 2, max: 3 } as const;
export type AggregationLevel = keyof typeof AGGREGATION_LEVELS;
const MONITOR_F_TRACE = 1;
const MONITOR_F_VERDICT = 2;

export interface MonitorOptions {
  /** At most this many flows are kept (--flows-buffer). */
  bufferSize: number;
  /** At most this many bytes for stored flows, everything included (--flows-memory). */
  memoryBytes: number;
  aggregation: AggregationLevel;
  reportInterval: number;
  /** Emit trace and policy-verdict events at all (drops are always emitted). */
  observe: boolean;
  /** Records read from the ring buffer per turn of the event loop at most. */
  batchRecords?: number;
  /** Bytes of the staging ring a reader thread drains the kernel ring into (0: read on the event loop). Default 16 MiB. */
  stagingBytes?: number;
}

/**
 * The staging ring between the reader thread and the event loop: ~90,000 records,
 * about 0.9 s at 100,000 events/s, so a loop stalled that long (a synchronous scan of
 * a large map, a full garbage collection) loses nothing.
 */
export const DEFAULT_STAGING_BYTES = 16 << 20;

/** An L7 record in the monitor's event stream. */
export interface L7Event extends L7Record {
  type: 'l7';
}

export type StoredEvent = MonitorEvent | L7Event;

/** Something that pulls from the store (stream.ts): told when records were appended. */
export interface StoreReader {
  onAppend(): void;
}

const OFF = gen.FIELD_OFFSETS;
const HDR_SOURCE = OFF.event_hdr.source;
const SIZE = gen.STRUCT_SIZES;

/** A u32 IPv4 address of a captured Ethernet/IPv4 frame at `d` (cap bytes), 0 if not IPv4. */
function ipv4At(b: Buffer, d: number, cap: number, which: 26 | 30): number {
  if (cap < 34 || b[d + 12] !== 0x08 || b[d + 13] !== 0x00) return 0;
  return b.readUInt32BE(d + which);
}

export class Monitor {
  readonly store: FlowRing;
  readonly contexts: ContextTable;
  private reader?: RingBufBatchReader;
  private readonly readers = new Set<StoreReader>();
  private readonly bootId = crypto.randomBytes(10).toString('hex');
  readonly counters = {
    events: { drop: 0, trace: 0, 'policy-verdict': 0, l7: 0 } as Record<string, number>,
    flows: 0,
    undecodable: 0,
    /** L7 records refused (bad shape). */
    l7Invalid: 0,
    /** Flows evicted before their time to stay within the memory bound. */
    evictedForMemory: 0,
    verdicts: { allowed: 0, denied: 0 },
    /** HTTP requests by method and verdict, responses by method, status and verdict, DNS by verdict (and rcode): keys joined with NUL. */
    l7: { httpRequests: new Map<string, number>(), httpResponses: new Map<string, number>(), dnsRequests: new Map<string, number>(), dnsResponses: new Map<string, number>() },
    /** Events dropped for readers too slow to take them, and readers disconnected for staying behind, by stream kind. */
    streams: {} as Record<string, { dropped: number; disconnected: number }>,
  };

  constructor(
    private readonly events: BpfMap | undefined,
    private readonly lost: BpfMap<number, bigint> | undefined,
    /** Where the datapath's monitor configuration goes (its desired-state table). */
    private readonly config: { set(c: gen.MonitorConfig): void } | undefined,
    source: FlowSource,
    private readonly log: Logger,
    readonly opts: MonitorOptions,
  ) {
    this.contexts = new ContextTable(source);
    this.store = new FlowRing({ count: opts.bufferSize, memory: opts.memoryBytes }, (c, i) => this.release(c, i), () => this.contexts.bytes);
  }

  /** Write the datapath's monitor configuration and start reading events. */
  start(): void {
    if (!this.config || !this.events) throw new Error('monitor: no datapath maps to read');
    this.config.set({
      flags: this.opts.observe ? MONITOR_F_TRACE | MONITOR_F_VERDICT : 0,
      aggregation: AGGREGATION_LEVELS[this.opts.aggregation],
      report_interval: this.opts.reportInterval,
      pad: 0,
    });
    const staging = this.opts.stagingBytes ?? DEFAULT_STAGING_BYTES;
    this.reader = new RingBufBatchReader(this.events, (buf, count) => this.ingestBatch(buf, count), {
      maxRecords: this.opts.batchRecords ?? 4096,
      stagingBytes: staging > 0 ? staging : undefined,
      onError: (e) => this.log.error('monitor: event handling failed', { error: e }),
    });
  }

  /** Drop a slot's references (before it is overwritten or evicted). */
  private release(c: Chunk, i: number): void {
    this.contexts.unref(c.src[i]);
    this.contexts.unref(c.dst[i]);
    this.contexts.unref(c.ifc[i]);
    c.src[i] = c.dst[i] = c.ifc[i] = 0;
    const o = c.objs?.[i];
    if (o !== undefined) {
      this.store.objBytes -= l7RecordBytes(o as L7Record);
      c.objs![i] = undefined;
    }
  }

  /**
   * Ingest a batch of ring buffer records laid out as RingBufBatchReader
   * delivers them (u32 length, u32 flags, record padded to 8). No object is
   * made per record: fields are read in place and the record is copied into
   * its slot.
   */
  ingestBatch(buf: Buffer, count: number): void {
    const now = Date.now();
    this.contexts.refresh(now);
    let o = 0;
    for (let k = 0; k < count; k++) {
      const len = buf.readUInt32LE(o);
      this.ingestRecord(buf, o + 8, len, now);
      o += 8 + ((len + 7) & ~7);
    }
    this.afterAppend();
  }

  private ingestRecord(b: Buffer, o: number, len: number, now: number): void {
    const type = len >= 8 ? b[o] : 0;
    let srcId = 0;
    let srcIp = 0;
    let srcLabel = 0;
    let dstId = 0;
    let dstIp = 0;
    let dstLabel = 0;
    let ifindex = 0;
    const ctx = this.contexts;
    if (type === EVENT_DROP && len >= SIZE.drop_event) {
      const d = o + OFF.drop_event.data;
      const cap = Math.min(b.readUInt16LE(o + OFF.drop_event.cap_len), len - OFF.drop_event.data);
      const source = b.readUInt16LE(o + HDR_SOURCE);
      dstId = b.readUInt16LE(o + OFF.drop_event.dst_id);
      // As events.ts: the event's own endpoint is the source on egress (source != dst_id).
      if (source !== 0 && source !== dstId) srcId = source;
      srcLabel = b.readUInt32LE(o + OFF.drop_event.src_label);
      dstLabel = b.readUInt32LE(o + OFF.drop_event.dst_label);
      srcIp = ipv4At(b, d, cap, 26);
      dstIp = ipv4At(b, d, cap, 30);
      ifindex = b.readUInt32LE(o + OFF.drop_event.ifindex);
      this.counters.events.drop++;
    } else if (type === EVENT_TRACE && len >= SIZE.trace_event) {
      const d = o + OFF.trace_event.data;
      const cap = Math.min(b.readUInt16LE(o + OFF.trace_event.cap_len), len - OFF.trace_event.data);
      if (traceDirection(b[o + 1]) === 'EGRESS') srcId = b.readUInt16LE(o + HDR_SOURCE);
      dstId = b.readUInt16LE(o + OFF.trace_event.dst_id);
      srcLabel = b.readUInt32LE(o + OFF.trace_event.src_label);
      dstLabel = b.readUInt32LE(o + OFF.trace_event.dst_label);
      srcIp = ipv4At(b, d, cap, 26);
      dstIp = ipv4At(b, d, cap, 30);
      ifindex = b.readUInt32LE(o + OFF.trace_event.ifindex);
      this.counters.events.trace++;
    } else if (type === EVENT_POLICY_VERDICT && len >= SIZE.policy_verdict_event) {
      const d = o + OFF.policy_verdict_event.data;
      const cap = Math.min(b.readUInt16LE(o + OFF.policy_verdict_event.cap_len), len - OFF.policy_verdict_event.data);
      const local = b.readUInt16LE(o + HDR_SOURCE);
      const remote = b.readUInt32LE(o + OFF.policy_verdict_event.remote_label);
      if (b[o + OFF.policy_verdict_event.dir] === METRIC_DIR_EGRESS) {
        srcId = local;
        dstIp = ipv4At(b, d, cap, 30);
        dstLabel = remote;
      } else {
        dstId = local;
        srcIp = ipv4At(b, d, cap, 26);
        srcLabel = remote;
      }
      ifindex = b.readUInt32LE(o + OFF.policy_verdict_event.ifindex);
      this.counters.events['policy-verdict']++;
      this.counters.verdicts[b[o + OFF.policy_verdict_event.verdict] === 0 ? 'allowed' : 'denied']++;
    } else {
      this.counters.undecodable++;
      return;
    }
    const seq = this.store.next();
    const c = this.store.chunkOf(seq);
    const i = this.store.indexOf(seq);
    c.time[i] = now;
    c.src[i] = ctx.endContext(srcId, srcIp, srcLabel, now);
    c.dst[i] = ctx.endContext(dstId, dstIp, dstLabel, now);
    c.ifc[i] = ctx.ifContext(ifindex, now);
    const n = len < RAW_BYTES ? len : RAW_BYTES;
    c.len[i] = n;
    b.copy(c.raw, i * RAW_BYTES, o, o + n);
    this.counters.flows++;
  }

  /**
   * Take an L7 access record from a proxy: checked (L7RecordError naming the
   * field otherwise), stored as a flow of type l7, counted in the L7 metrics,
   * and handed to readers.
   */
  ingestL7(input: L7Record | unknown): void {
    let r: L7Record;
    try {
      r = validateL7Record(input);
    } catch (e) {
      this.counters.l7Invalid++;
      throw e;
    }
    const now = Date.now();
    this.contexts.refresh(now);
    const seq = this.store.next();
    const c = this.store.chunkOf(seq);
    const i = this.store.indexOf(seq);
    c.time[i] = r.time;
    c.src[i] = this.contexts.endContextByIp(r.src.endpointId ?? 0, r.src.ip, r.src.identity, now);
    c.dst[i] = this.contexts.endContextByIp(r.dst.endpointId ?? 0, r.dst.ip, r.dst.identity, now);
    c.ifc[i] = 0;
    c.len[i] = 0;
    c.raw[i * RAW_BYTES] = EVENT_L7;
    (c.objs ??= new Array(c.slots))[i] = r;
    this.store.objBytes += l7RecordBytes(r);
    this.counters.events.l7++;
    this.counters.flows++;
    this.countL7(r);
    this.afterAppend();
  }

  private countL7(r: L7Record): void {
    const inc = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
    const l = this.counters.l7;
    if (r.http) {
      if (r.kind === 'request') inc(l.httpRequests, `${r.http.method}\0${r.verdict}`);
      else inc(l.httpResponses, `${r.http.method}\0${r.http.code ?? 0}\0${r.verdict}`);
    } else if (r.dns) {
      if (r.kind === 'request') inc(l.dnsRequests, r.verdict);
      else inc(l.dnsResponses, `${r.verdict}\0${r.dns.rcode ?? ''}`);
    }
  }

  private afterAppend(): void {
    const evicted = this.store.trim();
    if (evicted) this.counters.evictedForMemory += evicted;
    for (const r of this.readers) r.onAppend();
  }

  /** Is the record `seq` an L7 record? */
  private isL7(c: Chunk, i: number): boolean {
    return c.len[i] === 0 && c.raw[i * RAW_BYTES] === EVENT_L7;
  }

  /** The stored event `seq` (undefined when no longer stored). */
  eventAt(seq: number): StoredEvent | undefined {
    if (!this.store.has(seq)) return undefined;
    const c = this.store.chunkOf(seq);
    const i = this.store.indexOf(seq);
    if (this.isL7(c, i)) return { type: 'l7', ...(c.objs![i] as L7Record) };
    return decodeEvent(c.raw.subarray(i * RAW_BYTES, i * RAW_BYTES + c.len[i]), c.time[i]);
  }

  /** The flow `seq`, built now (undefined when no longer stored). */
  flowAt(seq: number): Flow | undefined {
    if (!this.store.has(seq)) return undefined;
    const c = this.store.chunkOf(seq);
    const i = this.store.indexOf(seq);
    const meta = {
      time: c.time[i],
      uuid: this.uuid(seq),
      nodeName: this.contexts.nodeName,
      src: this.contexts.get(c.src[i]),
      dst: this.contexts.get(c.dst[i]),
      ifName: this.contexts.get(c.ifc[i])?.ifName,
    };
    if (this.isL7(c, i)) return l7Flow(c.objs![i] as L7Record, meta);
    // The capture is only read while the flow is built: a view of the slot, no copy.
    const ev = decodeEvent(c.raw.subarray(i * RAW_BYTES, i * RAW_BYTES + c.len[i]), c.time[i], false);
    return ev ? eventFlow(ev, meta) : undefined;
  }

  /** Reception time (ms) of the record `seq`. */
  timeAt(seq: number): number {
    const c = this.store.chunkOf(seq);
    return c.time[this.store.indexOf(seq)];
  }

  /** A flow's id: this agent run's random prefix and the record's sequence number. */
  uuid(seq: number): string {
    const b = this.bootId;
    return `${b.slice(0, 8)}-${b.slice(8, 12)}-4${b.slice(13, 16)}-${((parseInt(b[16], 16) & 3) | 8).toString(16)}${b.slice(17, 20)}-${seq.toString(16).padStart(12, '0')}`;
  }

  addReader(r: StoreReader): void {
    this.readers.add(r);
  }

  removeReader(r: StoreReader): void {
    this.readers.delete(r);
  }

  get readerCount(): number {
    return this.readers.size;
  }

  /** Count events dropped for a slow reader of a stream kind (and disconnects). */
  streamCounters(kind: string): { dropped: number; disconnected: number } {
    return (this.counters.streams[kind] ??= { dropped: 0, disconnected: 0 });
  }

  /** Events lost in the agent: records it could not decode, and records its reader thread could not stage (the event loop was behind by more than the staging ring holds). */
  agentLost(): number {
    return this.counters.undecodable + (this.reader?.stats()?.dropped ?? 0);
  }

  /** Events the kernel could not put in the ring buffer (summed over CPUs). */
  lostEvents(): number {
    const v = this.lost?.lookupPerCpu(0);
    return v ? v.reduce((s, x) => s + Number(x), 0) : 0;
  }

  get stored(): number {
    return this.store.count;
  }

  /** What the store holds and may hold, in flows and bytes. */
  memory(): { capacity: number; stored: number; bytes: number; limitBytes: number; slotBytes: number; contexts: number; contextBytes: number; l7Bytes: number } {
    return {
      capacity: this.store.capacity,
      stored: this.store.count,
      bytes: this.store.bytes(),
      limitBytes: this.store.memory,
      slotBytes: SLOT_BYTES,
      contexts: this.contexts.size,
      contextBytes: this.contexts.bytes,
      l7Bytes: this.store.objBytes,
    };
  }

  /** The monitor's part of `membrane status`. */
  status() {
    const mem = this.memory();
    return {
      flowsStored: this.store.count,
      flowsBuffer: this.store.capacity,
      flowsSeen: this.counters.flows,
      events: this.counters.events,
      lostEvents: this.lostEvents(),
      agentLost: this.agentLost(),
      undecodable: this.counters.undecodable,
      l7Invalid: this.counters.l7Invalid,
      memory: { bytes: mem.bytes, limitBytes: mem.limitBytes, bytesPerFlow: mem.stored ? Math.round(mem.bytes / mem.stored) : null, contexts: mem.contexts, evictedForMemory: this.counters.evictedForMemory },
      streams: { clients: this.readers.size, ...this.counters.streams },
    };
  }

  stop(): void {
    this.reader?.close();
    this.reader = undefined;
  }
}

export { CHUNK };
