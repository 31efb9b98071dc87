/**
 * Datapath events from the mb_events ring buffer: decoding of the records the
 * programs emit (struct drop_event, trace_event, policy_verdict_event in
 * bpf/include/maps.h, at the offsets generated from their BTF) into typed events.
 */
import * as gen from '../datapath/maps.gen';
import { EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, METRIC_DIR_EGRESS, METRIC_DIR_INGRESS } from '../datapath/constants';

export const OBSERVATION_POINTS = [
  'TO_ENDPOINT',
  'TO_PROXY',
  'TO_HOST',
  'TO_STACK',
  'TO_OVERLAY',
  'FROM_ENDPOINT',
  'FROM_PROXY',
  'FROM_HOST',
  'FROM_STACK',
  'FROM_OVERLAY',
  'FROM_NETWORK',
  'TO_NETWORK',
] as const;

/** The short names the monitor prints (as in the reference system's monitor). */
export const OBSERVATION_SHORT = ['to-endpoint', 'to-proxy', 'to-host', 'to-stack', 'to-overlay', 'from-endpoint', 'from-proxy', 'from-host', 'from-stack', 'from-overlay', 'from-network', 'to-network'];

export const CT_STATES: Record<number, string> = { 0: 'new', 1: 'established', 2: 'reply', 3: 'related', 255: 'untracked' };
export const MATCH_TYPES: Record<number, string> = { 0: 'none', 1: 'L3-Only', 2: 'L3-L4', 3: 'L4-Only', 4: 'all' };

interface Common {
  /** Reception time, ms since the epoch. */
  time: number;
  source: number; // endpoint id of the program that emitted it
  hash: number;
  ifindex: number;
  origLen: number;
  data: Buffer;
}

export interface DropEvent extends Common {
  type: 'drop';
  reason: number;
  srcLabel: number;
  dstLabel: number;
  dstId: number;
  line: number;
  file: number;
  direction: 'INGRESS' | 'EGRESS' | 'TRAFFIC_DIRECTION_UNKNOWN';
}

export interface TraceEvent extends Common {
  type: 'trace';
  obsPoint: number;
  srcLabel: number;
  dstLabel: number;
  dstId: number;
  ctState: number;
}

export interface PolicyVerdictEvent extends Common {
  type: 'policy-verdict';
  remoteLabel: number;
  allowed: boolean;
  dropReason: number;
  direction: 'INGRESS' | 'EGRESS';
  matchType: number;
  dstPort: number;
  proto: number;
  audited: boolean;
}

export type MonitorEvent = DropEvent | TraceEvent | PolicyVerdictEvent;

const OFF = gen.FIELD_OFFSETS;

/** The captured packet of a record whose data starts at `dataOff`: a copy, or a view of `rec` (no copy). */
function capture(rec: Buffer, dataOff: number, capLenOff: number, copy: boolean): Buffer {
  const end = Math.min(dataOff + rec.readUInt16LE(capLenOff), rec.length);
  const v = rec.subarray(dataOff, Math.max(dataOff, end));
  return copy ? Buffer.from(v) : v;
}

/**
 * Decode one ring buffer record (fields read in place at their BTF offsets);
 * undefined for a record of an unknown type or too short. With copy false,
 * `data` is a view of `rec`: valid only as long as `rec` is.
 */
export function decodeEvent(rec: Buffer, now = Date.now(), copy = true): MonitorEvent | undefined {
  if (rec.length < 8) return undefined;
  const type = rec[0];
  const source = rec.readUInt16LE(OFF.event_hdr.source);
  const hash = rec.readUInt32LE(OFF.event_hdr.hash);
  if (type === EVENT_DROP && rec.length >= gen.STRUCT_SIZES.drop_event) {
    const o = OFF.drop_event;
    const dstId = rec.readUInt16LE(o.dst_id);
    const direction = source !== 0 && source === dstId ? 'INGRESS' : source !== 0 ? 'EGRESS' : 'INGRESS';
    return {
      type: 'drop',
      time: now,
      reason: rec[OFF.event_hdr.subtype],
      source,
      hash,
      srcLabel: rec.readUInt32LE(o.src_label),
      dstLabel: rec.readUInt32LE(o.dst_label),
      dstId,
      line: rec.readUInt16LE(o.line),
      file: rec[o.file],
      ifindex: rec.readUInt32LE(o.ifindex),
      origLen: rec.readUInt32LE(o.orig_len),
      data: capture(rec, o.data, o.cap_len, copy),
      direction,
    };
  }
  if (type === EVENT_TRACE && rec.length >= gen.STRUCT_SIZES.trace_event) {
    const o = OFF.trace_event;
    return {
      type: 'trace',
      time: now,
      obsPoint: rec[OFF.event_hdr.subtype],
      source,
      hash,
      srcLabel: rec.readUInt32LE(o.src_label),
      dstLabel: rec.readUInt32LE(o.dst_label),
      dstId: rec.readUInt16LE(o.dst_id),
      ctState: rec[o.ct_state],
      ifindex: rec.readUInt32LE(o.ifindex),
      origLen: rec.readUInt32LE(o.orig_len),
      data: capture(rec, o.data, o.cap_len, copy),
    };
  }
  if (type === EVENT_POLICY_VERDICT && rec.length >= gen.STRUCT_SIZES.policy_verdict_event) {
    const o = OFF.policy_verdict_event;
    const dir = rec[o.dir];
    return {
      type: 'policy-verdict',
      time: now,
      source,
      hash,
      remoteLabel: rec.readUInt32LE(o.remote_label),
      allowed: rec[o.verdict] === 0,
      dropReason: rec[o.drop_reason],
      direction: dir === METRIC_DIR_EGRESS ? 'EGRESS' : dir === METRIC_DIR_INGRESS ? 'INGRESS' : 'INGRESS',
      matchType: rec[o.match_type],
      dstPort: rec.readUInt16LE(o.dst_port),
      proto: rec[o.proto],
      audited: rec[o.audited] !== 0,
      ifindex: rec.readUInt32LE(o.ifindex),
      origLen: rec.readUInt32LE(o.orig_len),
      data: capture(rec, o.data, o.cap_len, copy),
    };
  }
  return undefined;
}
