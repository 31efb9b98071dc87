/**
 * Netlink wire format: nlmsghdr framing, netlink attributes (TLVs with 4-byte
 * alignment, nesting with NLA_F_NESTED) and the fixed rtnetlink headers
 * (ifinfomsg, ifaddrmsg, rtmsg, ndmsg). Pure functions over Buffers; no I/O.
 * Netlink integers are in host byte order except where noted (e.g. ports).
 */
import * as os from 'node:os';
import {
  IFADDRMSG_LEN, IFINFOMSG_LEN, NDMSG_LEN, NLA_F_NESTED, NLA_F_NET_BYTEORDER, NLA_HDRLEN, NLA_TYPE_MASK,
  NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_HDRLEN, NLMSGERR_ATTR_MISS_NEST, NLMSGERR_ATTR_MISS_TYPE,
  NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS, RTMSG_LEN,
} from './constants';

const LE = os.endianness() === 'LE';

export function align4(n: number): number {
  return (n + 3) & ~3;
}

// ---- host-order integer helpers ---------------------------------------------------------------

export function wU16(b: Buffer, v: number, off: number): void {
  if (LE) b.writeUInt16LE(v, off);
  else b.writeUInt16BE(v, off);
}
export function wU32(b: Buffer, v: number, off: number): void {
  if (LE) b.writeUInt32LE(v >>> 0, off);
  else b.writeUInt32BE(v >>> 0, off);
}
export function wI32(b: Buffer, v: number, off: number): void {
  if (LE) b.writeInt32LE(v, off);
  else b.writeInt32BE(v, off);
}
export function rU16(b: Buffer, off: number): number {
  return LE ? b.readUInt16LE(off) : b.readUInt16BE(off);
}
export function rU32(b: Buffer, off: number): number {
  return LE ? b.readUInt32LE(off) : b.readUInt32BE(off);
}
export function rI32(b: Buffer, off: number): number {
  return LE ? b.readInt32LE(off) : b.readInt32BE(off);
}

// ---- attributes: encoding ---------------------------------------------------------------------

/**
 * An attribute to encode. `value` is either the raw payload or a list of
 * nested attributes. For nests, `header` is an optional fixed struct placed
 * before the nested attributes (VETH_INFO_PEER carries an ifinfomsg there) and
 * `flagNested` (default true) sets NLA_F_NESTED in nla_type.
 */
export interface NlAttr {
  type: number;
  value: Buffer | NlAttr[];
  header?: Buffer;
  flagNested?: boolean;
}

export const attr = {
  bytes: (type: number, value: Buffer): NlAttr => ({ type, value }),
  u8: (type: number, v: number): NlAttr => ({ type, value: Buffer.from([v & 0xff]) }),
  u16: (type: number, v: number): NlAttr => {
    const b = Buffer.alloc(2);
    wU16(b, v, 0);
    return { type, value: b };
  },
  /** 16-bit value in network byte order (e.g. UDP ports). */
  be16: (type: number, v: number): NlAttr => {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v, 0);
    return { type, value: b };
  },
  u32: (type: number, v: number): NlAttr => {
    const b = Buffer.alloc(4);
    wU32(b, v, 0);
    return { type, value: b };
  },
  i32: (type: number, v: number): NlAttr => {
    const b = Buffer.alloc(4);
    wI32(b, v, 0);
    return { type, value: b };
  },
  /** NUL-terminated string (NLA_NUL_STRING / NLA_STRING both accept it). */
  str: (type: number, s: string): NlAttr => ({ type, value: Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]) }),
  flag: (type: number): NlAttr => ({ type, value: Buffer.alloc(0) }),
  nest: (type: number, attrs: NlAttr[], opts: { header?: Buffer; flagNested?: boolean } = {}): NlAttr => ({
    type,
    value: attrs,
    header: opts.header,
    flagNested: opts.flagNested,
  }),
};

export function attrsLength(attrs: NlAttr[]): number {
  let n = 0;
  for (const a of attrs) n += align4(NLA_HDRLEN + payloadLength(a));
  return n;
}

function payloadLength(a: NlAttr): number {
  if (Buffer.isBuffer(a.value)) return a.value.length;
  return (a.header ? align4(a.header.length) : 0) + attrsLength(a.value);
}

/** Encode attributes into `out` at `off`; returns the new offset. Padding bytes are zero. */
function writeAttrs(out: Buffer, off: number, attrs: NlAttr[]): number {
  for (const a of attrs) {
    if (a.type < 0 || a.type > NLA_TYPE_MASK) throw new RangeError(`netlink attribute type ${a.type} out of range`);
    const plen = payloadLength(a);
    const len = NLA_HDRLEN + plen;
    if (len > 0xffff) throw new RangeError(`netlink attribute ${a.type} too long (${len} bytes)`);
    const nested = !Buffer.isBuffer(a.value);
    wU16(out, len, off);
    wU16(out, a.type | (nested && a.flagNested !== false ? NLA_F_NESTED : 0), off + 2);
    let p = off + NLA_HDRLEN;
    if (Buffer.isBuffer(a.value)) {
      a.value.copy(out, p);
    } else {
      if (a.header) {
        a.header.copy(out, p);
        p += align4(a.header.length);
      }
      writeAttrs(out, p, a.value);
    }
    off += align4(len);
  }
  return off;
}

export function encodeAttrs(attrs: NlAttr[]): Buffer {
  const out = Buffer.alloc(attrsLength(attrs));
  writeAttrs(out, 0, attrs);
  return out;
}

// ---- messages: encoding -----------------------------------------------------------------------

export interface NlRequest {
  type: number;
  flags: number;
  seq: number;
  pid?: number;
  /** Fixed family header (ifinfomsg, rtmsg, ...), padded to 4 bytes. */
  header?: Buffer;
  attrs?: NlAttr[];
}

export function encodeMessage(req: NlRequest): Buffer {
  const hlen = req.header ? align4(req.header.length) : 0;
  const attrs = req.attrs ?? [];
  const len = NLMSG_HDRLEN + hlen + attrsLength(attrs);
  const out = Buffer.alloc(len);
  wU32(out, len, 0);
  wU16(out, req.type, 4);
  wU16(out, req.flags, 6);
  wU32(out, req.seq, 8);
  wU32(out, req.pid ?? 0, 12);
  if (req.header) req.header.copy(out, NLMSG_HDRLEN);
  writeAttrs(out, NLMSG_HDRLEN + hlen, attrs);
  return out;
}

// ---- messages: decoding -----------------------------------------------------------------------

export interface NlMsg {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  /** Everything after the 16-byte nlmsghdr (family header + attributes). */
  payload: Buffer;
}

/** Split one received datagram into its netlink messages. Throws on malformed framing. */
export function parseMessages(buf: Buffer): NlMsg[] {
  const out: NlMsg[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = rU32(buf, off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) {
      throw new Error(`malformed netlink message at offset ${off}: nlmsg_len ${len}, datagram ${buf.length} bytes`);
    }
    out.push({
      type: rU16(buf, off + 4),
      flags: rU16(buf, off + 6),
      seq: rU32(buf, off + 8),
      pid: rU32(buf, off + 12),
      payload: buf.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

// ---- attributes: decoding ---------------------------------------------------------------------

export interface RawAttr {
  /** Type with NLA_F_NESTED / NLA_F_NET_BYTEORDER masked off. */
  type: number;
  nested: boolean;
  netByteOrder: boolean;
  data: Buffer;
}

/** Parse a run of attributes. Truncated trailing bytes (< header) are ignored; bad lengths throw. */
export function parseAttrs(buf: Buffer): RawAttr[] {
  const out: RawAttr[] = [];
  let off = 0;
  while (off + NLA_HDRLEN <= buf.length) {
    const len = rU16(buf, off);
    const t = rU16(buf, off + 2);
    if (len < NLA_HDRLEN || off + len > buf.length) {
      throw new Error(`malformed netlink attribute at offset ${off}: nla_len ${len}, buffer ${buf.length} bytes`);
    }
    out.push({
      type: t & NLA_TYPE_MASK,
      nested: (t & NLA_F_NESTED) !== 0,
      netByteOrder: (t & NLA_F_NET_BYTEORDER) !== 0,
      data: buf.subarray(off + NLA_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

/** Typed accessors over a parsed attribute list (first occurrence wins for get()). */
export class Attrs {
  readonly list: RawAttr[];
  private readonly byType = new Map<number, Buffer>();

  constructor(buf: Buffer | RawAttr[]) {
    this.list = Buffer.isBuffer(buf) ? parseAttrs(buf) : buf;
    for (const a of this.list) if (!this.byType.has(a.type)) this.byType.set(a.type, a.data);
  }

  has(type: number): boolean {
    return this.byType.has(type);
  }
  get(type: number): Buffer | undefined {
    return this.byType.get(type);
  }
  all(type: number): Buffer[] {
    return this.list.filter((a) => a.type === type).map((a) => a.data);
  }
  u8(type: number): number | undefined {
    const b = this.get(type);
    return b && b.length >= 1 ? b[0] : undefined;
  }
  u16(type: number): number | undefined {
    const b = this.get(type);
    return b && b.length >= 2 ? rU16(b, 0) : undefined;
  }
  be16(type: number): number | undefined {
    const b = this.get(type);
    return b && b.length >= 2 ? b.readUInt16BE(0) : undefined;
  }
  u32(type: number): number | undefined {
    const b = this.get(type);
    return b && b.length >= 4 ? rU32(b, 0) : undefined;
  }
  i32(type: number): number | undefined {
    const b = this.get(type);
    return b && b.length >= 4 ? rI32(b, 0) : undefined;
  }
  /** String attribute, trailing NUL(s) stripped. */
  str(type: number): string | undefined {
    const b = this.get(type);
    if (!b) return undefined;
    const nul = b.indexOf(0);
    return b.toString('utf8', 0, nul >= 0 ? nul : b.length);
  }
  nested(type: number, headerLen = 0): Attrs | undefined {
    const b = this.get(type);
    return b ? new Attrs(b.subarray(Math.min(b.length, align4(headerLen)))) : undefined;
  }
}

// ---- NLMSG_ERROR ------------------------------------------------------------------------------

export interface NlErrorInfo {
  /** Positive errno; 0 for a plain ACK. */
  errno: number;
  /** Header of the request this answers. */
  origType: number;
  origSeq: number;
  /** Extended ACK (NETLINK_EXT_ACK) fields. */
  extAckMsg?: string;
  extAckOffset?: number;
  missingType?: number;
  missingNest?: number;
}

export function parseError(msg: NlMsg): NlErrorInfo {
  const p = msg.payload;
  if (p.length < 4) throw new Error(`truncated NLMSG_ERROR (${p.length} bytes)`);
  const err = rI32(p, 0);
  const info: NlErrorInfo = { errno: err === 0 ? 0 : -err, origType: 0, origSeq: 0 };
  if (p.length < 4 + NLMSG_HDRLEN) return info;
  const origLen = rU32(p, 4);
  info.origType = rU16(p, 8);
  info.origSeq = rU32(p, 12);
  let off = 4 + NLMSG_HDRLEN;
  if (!(msg.flags & NLM_F_CAPPED)) off = 4 + align4(origLen);
  if (msg.flags & NLM_F_ACK_TLVS && off < p.length) {
    const a = new Attrs(p.subarray(off));
    info.extAckMsg = a.str(NLMSGERR_ATTR_MSG);
    info.extAckOffset = a.u32(NLMSGERR_ATTR_OFFS);
    info.missingType = a.u32(NLMSGERR_ATTR_MISS_TYPE);
    info.missingNest = a.u32(NLMSGERR_ATTR_MISS_NEST);
  }
  return info;
}

/** Payload of NLMSG_DONE: an int error (0 or negative errno), when present. */
export function parseDoneErrno(msg: NlMsg): number {
  const e = msg.payload.length >= 4 ? rI32(msg.payload, 0) : 0;
  return e === 0 ? 0 : -e;
}

// ---- fixed rtnetlink headers ------------------------------------------------------------------

export interface IfInfoMsg {
  family: number;
  type: number; // ARPHRD_*
  index: number;
  flags: number;
  change: number;
}

export function encodeIfInfoMsg(m: Partial<IfInfoMsg> = {}): Buffer {
  const b = Buffer.alloc(IFINFOMSG_LEN);
  b[0] = m.family ?? 0;
  wU16(b, m.type ?? 0, 2);
  wI32(b, m.index ?? 0, 4);
  wU32(b, m.flags ?? 0, 8);
  wU32(b, m.change ?? 0, 12);
  return b;
}

export function decodeIfInfoMsg(p: Buffer): IfInfoMsg {
  if (p.length < IFINFOMSG_LEN) throw new Error(`truncated ifinfomsg (${p.length} bytes)`);
  return { family: p[0], type: rU16(p, 2), index: rI32(p, 4), flags: rU32(p, 8), change: rU32(p, 12) };
}

export interface IfAddrMsg {
  family: number;
  prefixLen: number;
  flags: number;
  scope: number;
  index: number;
}

export function encodeIfAddrMsg(m: Partial<IfAddrMsg> = {}): Buffer {
  const b = Buffer.alloc(IFADDRMSG_LEN);
  b[0] = m.family ?? 0;
  b[1] = m.prefixLen ?? 0;
  b[2] = m.flags ?? 0;
  b[3] = m.scope ?? 0;
  wU32(b, m.index ?? 0, 4);
  return b;
}

export function decodeIfAddrMsg(p: Buffer): IfAddrMsg {
  if (p.length < IFADDRMSG_LEN) throw new Error(`truncated ifaddrmsg (${p.length} bytes)`);
  return { family: p[0], prefixLen: p[1], flags: p[2], scope: p[3], index: rU32(p, 4) };
}

export interface RtMsg {
  family: number;
  dstLen: number;
  srcLen: number;
  tos: number;
  table: number;
  protocol: number;
  scope: number;
  type: number;
  flags: number;
}

export function encodeRtMsg(m: Partial<RtMsg> = {}): Buffer {
  const b = Buffer.alloc(RTMSG_LEN);
  b[0] = m.family ?? 0;
  b[1] = m.dstLen ?? 0;
  b[2] = m.srcLen ?? 0;
  b[3] = m.tos ?? 0;
  b[4] = m.table ?? 0;
  b[5] = m.protocol ?? 0;
  b[6] = m.scope ?? 0;
  b[7] = m.type ?? 0;
  wU32(b, m.flags ?? 0, 8);
  return b;
}

export function decodeRtMsg(p: Buffer): RtMsg {
  if (p.length < RTMSG_LEN) throw new Error(`truncated rtmsg (${p.length} bytes)`);
  return {
    family: p[0], dstLen: p[1], srcLen: p[2], tos: p[3], table: p[4],
    protocol: p[5], scope: p[6], type: p[7], flags: rU32(p, 8),
  };
}

/** struct fib_rule_hdr (same 12-byte shape as rtmsg: family, dst_len, src_len, tos, table, res1, res2, action, flags). */
export interface FibRuleHdr {
  family: number;
  dstLen: number;
  srcLen: number;
  tos: number;
  table: number;
  action: number;
  flags: number;
}

export function encodeFibRuleHdr(m: Partial<FibRuleHdr> = {}): Buffer {
  const b = Buffer.alloc(12);
  b[0] = m.family ?? 0;
  b[1] = m.dstLen ?? 0;
  b[2] = m.srcLen ?? 0;
  b[3] = m.tos ?? 0;
  b[4] = m.table ?? 0;
  b[7] = m.action ?? 0;
  wU32(b, m.flags ?? 0, 8);
  return b;
}

export function decodeFibRuleHdr(p: Buffer): FibRuleHdr {
  if (p.length < 12) throw new Error(`truncated fib_rule_hdr (${p.length} bytes)`);
  return { family: p[0], dstLen: p[1], srcLen: p[2], tos: p[3], table: p[4], action: p[7], flags: rU32(p, 8) };
}

export interface NdMsg {
  family: number;
  index: number;
  state: number;
  flags: number;
  type: number;
}

export function encodeNdMsg(m: Partial<NdMsg> = {}): Buffer {
  const b = Buffer.alloc(NDMSG_LEN);
  b[0] = m.family ?? 0;
  wI32(b, m.index ?? 0, 4);
  wU16(b, m.state ?? 0, 8);
  b[10] = m.flags ?? 0;
  b[11] = m.type ?? 0;
  return b;
}

export function decodeNdMsg(p: Buffer): NdMsg {
  if (p.length < NDMSG_LEN) throw new Error(`truncated ndmsg (${p.length} bytes)`);
  return { family: p[0], index: rI32(p, 4), state: rU16(p, 8), flags: p[10], type: p[11] };
}

/** Attributes following a fixed header of `headerLen` bytes in a message payload. */
export function payloadAttrs(msg: NlMsg, headerLen: number): Attrs {
  return new Attrs(msg.payload.subarray(Math.min(msg.payload.length, align4(headerLen))));
}
