/**
 * Datapath event records as the programs write them into mb_events (struct
 * drop_event, trace_event, policy_verdict_event, encoded with the codecs
 * generated from BTF), and batches of them laid out as RingBufBatchReader
 * delivers them, to feed the monitor without a kernel.
 */
import * as gen from '../../src/datapath/maps.gen';
import { EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, METRIC_DIR_EGRESS, METRIC_DIR_INGRESS } from '../../src/datapath/constants';
import { RINGBUF_BATCH_HDR } from '../../src/bpf/ringbuf';
import { ethernet, ip4, ipv4, tcp, udp } from './packet';

export function tcpFrame(src: string, dst: string, sport: number, dport: number, flags = 0x02): Buffer {
  const s = ip4(src);
  const d = ip4(dst);
  return ethernet({ dst: Buffer.alloc(6, 1), src: Buffer.alloc(6, 2), type: 0x0800, payload: ipv4({ src: s, dst: d, proto: 6, payload: tcp({ sport, dport, flags, src: s, dst: d }) }) });
}

export function udpFrame(src: string, dst: string, sport: number, dport: number): Buffer {
  const s = ip4(src);
  const d = ip4(dst);
  return ethernet({ dst: Buffer.alloc(6, 1), src: Buffer.alloc(6, 2), type: 0x0800, payload: ipv4({ src: s, dst: d, proto: 17, payload: udp({ sport, dport, src: s, dst: d, payload: Buffer.alloc(8) }) }) });
}

const hdr = (type: number, subtype: number, source: number, hash: number) => ({ type, subtype, source, hash });

export function dropRecord(o: { reason: number; source: number; srcLabel: number; dstLabel: number; dstId: number; ifindex?: number; frame: Buffer; hash?: number }): Buffer {
  return gen.dropEventCodec.encode({
    hdr: hdr(EVENT_DROP, o.reason, o.source, o.hash ?? 0xabc),
    src_label: o.srcLabel,
    dst_label: o.dstLabel,
    dst_id: o.dstId,
    line: 1,
    file: 1,
    ext_error: 0,
    ifindex: o.ifindex ?? 9,
    orig_len: o.frame.length,
    cap_len: Math.min(128, o.frame.length),
    data: o.frame.subarray(0, 128),
  });
}

export function traceRecord(o: { point: number; source: number; srcLabel: number; dstLabel: number; dstId: number; ctState?: number; ifindex?: number; frame: Buffer; hash?: number }): Buffer {
  return gen.traceEventCodec.encode({
    hdr: hdr(EVENT_TRACE, o.point, o.source, o.hash ?? 0xdef),
    src_label: o.srcLabel,
    dst_label: o.dstLabel,
    dst_id: o.dstId,
    ct_state: o.ctState ?? 0,
    ifindex: o.ifindex ?? 9,
    orig_len: o.frame.length,
    cap_len: Math.min(128, o.frame.length),
    data: o.frame.subarray(0, 128),
  });
}

export function verdictRecord(o: { source: number; remoteLabel: number; allowed: boolean; egress: boolean; dport: number; proto: number; frame: Buffer; matchType?: number }): Buffer {
  return gen.policyVerdictEventCodec.encode({
    hdr: hdr(EVENT_POLICY_VERDICT, 0, o.source, 0x123),
    remote_label: o.remoteLabel,
    verdict: o.allowed ? 0 : 1,
    drop_reason: o.allowed ? 0 : 133,
    dir: o.egress ? METRIC_DIR_EGRESS : METRIC_DIR_INGRESS,
    match_type: o.matchType ?? 2,
    dst_port: o.dport,
    proto: o.proto,
    audited: 0,
    ifindex: 9,
    orig_len: o.frame.length,
    cap_len: Math.min(128, o.frame.length),
    data: o.frame.subarray(0, 128),
  });
}

/** Records laid out as one batch of RingBufBatchReader: u32 length, u32 flags, bytes padded to 8. */
export function packBatch(records: Buffer[], into?: Buffer): Buffer {
  const size = records.reduce((t, r) => t + RINGBUF_BATCH_HDR + ((r.length + 7) & ~7), 0);
  const b = into ?? Buffer.alloc(size);
  let o = 0;
  for (const r of records) {
    b.writeUInt32LE(r.length, o);
    b.writeUInt32LE(0, o + 4);
    r.copy(b, o + RINGBUF_BATCH_HDR);
    o += RINGBUF_BATCH_HDR + ((r.length + 7) & ~7);
  }
  return b;
}
