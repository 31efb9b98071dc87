/**
 * Datapath events from the mb_events ring buffer: decoding of the records the
 * programs emit (struct drop_event, trace_event, policy_verdict_event in
 * bpf/include/maps.h) into typed events.
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

function capture(data: Buffer, capLen: number): Buffer {
  return Buffer.from(data.subarray(0, Math.min(capLen, data.length)));
}

/** Decode one ring buffer record; undefined for a record of an unknown type. */
export function decodeEvent(rec: Buffer, now = Date.now()): MonitorEvent | undefined {
  if (rec.length < 8) return undefined;
  const type = rec[0];
  if (type === EVENT_DROP && rec.length >= gen.STRUCT_SIZES.drop_event) {
    const e = gen.dropEventCodec.decode(rec);
    const direction = e.hdr.source !== 0 && e.hdr.source === e.dst_id ? 'INGRESS' : e.hdr.source !== 0 ? 'EGRESS' : 'INGRESS';
    return {
      type: 'drop',
      time: now,
      reason: e.hdr.subtype,
      source: e.hdr.source,
      hash: e.hdr.hash,
      srcLabel: e.src_label,
      dstLabel: e.dst_label,
      dstId: e.dst_id,
      line: e.line,
      file: e.file,
      ifindex: e.ifindex,
      origLen: e.orig_len,
      data: capture(e.data, e.cap_len),
      direction,
    };
  }
  if (type === EVENT_TRACE && rec.length >= gen.STRUCT_SIZES.trace_event) {
    const e = gen.traceEventCodec.decode(rec);
    return {
      type: 'trace',
      time: now,
      obsPoint: e.hdr.subtype,
      source: e.hdr.source,
      hash: e.hdr.hash,
      srcLabel: e.src_label,
      dstLabel: e.dst_label,
      dstId: e.dst_id,
      ctState: e.ct_state,
      ifindex: e.ifindex,
      origLen: e.orig_len,
      data: capture(e.data, e.cap_len),
    };
  }
  if (type === EVENT_POLICY_VERDICT && rec.length >= gen.STRUCT_SIZES.policy_verdict_event) {
    const e = gen.policyVerdictEventCodec.decode(rec);
    return {
      type: 'policy-verdict',
      time: now,
      source: e.hdr.source,
      hash: e.hdr.hash,
      remoteLabel: e.remote_label,
      allowed: e.verdict === 0,
      dropReason: e.drop_reason,
      direction: e.dir === METRIC_DIR_EGRESS ? 'EGRESS' : e.dir === METRIC_DIR_INGRESS ? 'INGRESS' : 'INGRESS',
      matchType: e.match_type,
      dstPort: e.dst_port,
      proto: e.proto,
      audited: e.audited !== 0,
      ifindex: e.ifindex,
      origLen: e.orig_len,
      data: capture(e.data, e.cap_len),
    };
  }
  return undefined;
}
