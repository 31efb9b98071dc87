/**
 * BpfProgram (an owned program fd), BPF_PROG_TEST_RUN and a struct __sk_buff
 * builder for tc program test contexts.
 */
import * as path from 'node:path';
import { bpfUsageError, wrap } from './errors';
import { ProgInfo, TestRunResult, native } from './native';

export class BpfProgram {
  private closed = false;

  /** Takes ownership of fd. */
  constructor(
    private readonly fdValue: number,
    readonly name: string,
  ) {}

  /** Open a pinned program. */
  static fromPin(pinPath: string, name?: string): BpfProgram {
    const nm = name ?? path.basename(pinPath);
    const fd = wrap({ op: 'open pinned program', program: nm, path: pinPath }, () => native().objGet(pinPath));
    return new BpfProgram(fd, nm);
  }

  get fd(): number {
    if (this.closed) throw bpfUsageError({ op: 'use', program: this.name }, 'program fd is closed', 'EBADF', 9);
    return this.fdValue;
  }

  info(): ProgInfo {
    return wrap({ op: 'program info', program: this.name }, () => native().progInfo(this.fd));
  }

  pin(pinPath: string): void {
    wrap({ op: 'pin', program: this.name, path: pinPath }, () => native().objPin(this.fd, pinPath));
  }

  /** Idempotent. Attached links and pins keep the program alive. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native().close(this.fdValue);
  }
}

export interface TestRunOpts {
  /** packet, starting at the Ethernet header for tc programs */
  data: Buffer;
  /** program context, e.g. skbCtx({...}) for tc programs */
  ctx?: Buffer;
  repeat?: number;
  /** output packet buffer size (default data.length + 512) */
  dataSizeOut?: number;
  /** output ctx size (default ctx.length) */
  ctxSizeOut?: number;
}

export type { TestRunResult };

/** BPF_PROG_TEST_RUN. For tc programs, retval is the TC_ACT_* verdict. */
export function testRun(prog: BpfProgram | number, opts: TestRunOpts): TestRunResult {
  const fd = typeof prog === 'number' ? prog : prog.fd;
  const name = typeof prog === 'number' ? `fd ${prog}` : prog.name;
  return wrap({ op: 'test run', program: name }, () => native().progTestRun(fd, opts));
}

/** Offsets in struct __sk_buff (include/uapi/linux/bpf.h). */
export const SKB_OFF = {
  len: 0,
  pkt_type: 4,
  mark: 8,
  queue_mapping: 12,
  protocol: 16,
  vlan_present: 20,
  vlan_tci: 24,
  vlan_proto: 28,
  priority: 32,
  ingress_ifindex: 36,
  ifindex: 40,
  tc_index: 44,
  cb: 48, // __u32 cb[5]
  hash: 68,
  tc_classid: 72,
  data: 76,
  data_end: 80,
  napi_id: 84,
  tstamp: 152,
  wire_len: 160,
  gso_segs: 164,
  gso_size: 176,
} as const;
/** sizeof(struct __sk_buff) */
export const SKB_CTX_SIZE = 192;

export interface SkbCtxFields {
  /** device the packet is on (must exist in the caller's netns); 0 = loopback */
  ifindex?: number;
  ingressIfindex?: number;
  mark?: number;
  priority?: number;
  /** up to 5 u32 control-block words */
  cb?: number[];
  tstamp?: bigint;
}

/**
 * A struct __sk_buff for progTestRun's ctx. The kernel accepts only mark,
 * priority, ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_* as input;
 * everything else must be zero.
 */
export function skbCtx(f: SkbCtxFields = {}): Buffer {
  const b = Buffer.alloc(SKB_CTX_SIZE);
  if (f.mark !== undefined) b.writeUInt32LE(f.mark >>> 0, SKB_OFF.mark);
  if (f.priority !== undefined) b.writeUInt32LE(f.priority >>> 0, SKB_OFF.priority);
  if (f.ingressIfindex !== undefined) b.writeUInt32LE(f.ingressIfindex, SKB_OFF.ingress_ifindex);
  if (f.ifindex !== undefined) b.writeUInt32LE(f.ifindex, SKB_OFF.ifindex);
  if (f.cb) {
    if (f.cb.length > 5) throw new RangeError(`skbCtx: cb has 5 words, got ${f.cb.length}`);
    f.cb.forEach((v, i) => b.writeUInt32LE(v >>> 0, SKB_OFF.cb + 4 * i));
  }
  if (f.tstamp !== undefined) b.writeBigUInt64LE(f.tstamp, SKB_OFF.tstamp);
  return b;
}

/** Read fields back from a ctx returned by testRun. */
export function parseSkbCtx(b: Buffer): { len: number; mark: number; priority: number; ifindex: number; ingressIfindex: number; cb: number[]; tcIndex: number } {
  return {
    len: b.readUInt32LE(SKB_OFF.len),
    mark: b.readUInt32LE(SKB_OFF.mark),
    priority: b.readUInt32LE(SKB_OFF.priority),
    ifindex: b.readUInt32LE(SKB_OFF.ifindex),
    ingressIfindex: b.readUInt32LE(SKB_OFF.ingress_ifindex),
    tcIndex: b.readUInt32LE(SKB_OFF.tc_index),
    cb: [0, 1, 2, 3, 4].map((i) => b.readUInt32LE(SKB_OFF.cb + 4 * i)),
  };
}
