/**
 * Minimal packet builders/parsers for datapath tests: Ethernet, ARP, IPv4,
 * TCP, UDP, ICMP echo, with correct checksums.
 */

export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;
export const ETH_P_IPV6 = 0x86dd;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_SCTP = 132;
export const ETH_HLEN = 14;

export function mac(s: string): Buffer {
  const b = Buffer.from(s.split(':').map((x) => parseInt(x, 16)));
  if (b.length !== 6) throw new Error(`bad MAC ${s}`);
  return b;
}

export function ip4(s: string): Buffer {
  const b = Buffer.from(s.split('.').map((x) => Number(x)));
  if (b.length !== 4) throw new Error(`bad IPv4 ${s}`);
  return b;
}

export function macStr(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export function ip4Str(b: Buffer): string {
  return [...b].join('.');
}

/** RFC 1071 internet checksum over the concatenation of `parts`. */
export function inetChecksum(...parts: Buffer[]): number {
  let sum = 0;
  const all = Buffer.concat(parts);
  for (let i = 0; i + 1 < all.length; i += 2) sum += all.readUInt16BE(i);
  if (all.length % 2) sum += all[all.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ethernet(o: { dst: Buffer; src: Buffer; type: number; payload: Buffer }): Buffer {
  const h = Buffer.alloc(ETH_HLEN);
  o.dst.copy(h, 0);
  o.src.copy(h, 6);
  h.writeUInt16BE(o.type, 12);
  return Buffer.concat([h, o.payload]);
}

export const ARPOP_REQUEST = 1;
export const ARPOP_REPLY = 2;

export function arp(o: { op: number; sha: Buffer; spa: Buffer; tha?: Buffer; tpa: Buffer }): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt16BE(1, 0); // Ethernet
  b.writeUInt16BE(ETH_P_IP, 2);
  b[4] = 6;
  b[5] = 4;
  b.writeUInt16BE(o.op, 6);
  o.sha.copy(b, 8);
  o.spa.copy(b, 14);
  (o.tha ?? Buffer.alloc(6)).copy(b, 18);
  o.tpa.copy(b, 24);
  return b;
}

export interface ArpFields { op: number; sha: Buffer; spa: Buffer; tha: Buffer; tpa: Buffer; hrd: number; pro: number }

export function parseArp(b: Buffer): ArpFields {
  return {
    hrd: b.readUInt16BE(0), pro: b.readUInt16BE(2), op: b.readUInt16BE(6),
    sha: b.subarray(8, 14), spa: b.subarray(14, 18), tha: b.subarray(18, 24), tpa: b.subarray(24, 28),
  };
}

/** fragOff: the raw flags + fragment offset word (default 0x4000, DF). */
export function ipv4(o: { src: Buffer; dst: Buffer; proto: number; payload: Buffer; ttl?: number; id?: number; tos?: number; fragOff?: number }): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h[1] = o.tos ?? 0;
  h.writeUInt16BE(20 + o.payload.length, 2);
  h.writeUInt16BE(o.id ?? 0x1234, 4);
  h.writeUInt16BE(o.fragOff ?? 0x4000, 6); // DF unless told
  h[8] = o.ttl ?? 64;
  h[9] = o.proto;
  o.src.copy(h, 12);
  o.dst.copy(h, 16);
  h.writeUInt16BE(inetChecksum(h), 10);
  return Buffer.concat([h, o.payload]);
}

function pseudo(src: Buffer, dst: Buffer, proto: number, len: number): Buffer {
  const p = Buffer.alloc(12);
  src.copy(p, 0);
  dst.copy(p, 4);
  p[9] = proto;
  p.writeUInt16BE(len, 10);
  return p;
}

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;
export const IP_MF = 0x2000;

export function tcp(o: { src: Buffer; dst: Buffer; sport: number; dport: number; flags?: number; seq?: number; ack?: number; payload?: Buffer }): Buffer {
  const payload = o.payload ?? Buffer.alloc(0);
  const h = Buffer.alloc(20);
  h.writeUInt16BE(o.sport, 0);
  h.writeUInt16BE(o.dport, 2);
  h.writeUInt32BE(o.seq ?? 1, 4);
  h.writeUInt32BE(o.ack ?? 0, 8);
  h[12] = 5 << 4;
  h[13] = o.flags ?? TCP_SYN;
  h.writeUInt16BE(65535, 14);
  const seg = Buffer.concat([h, payload]);
  seg.writeUInt16BE(inetChecksum(pseudo(o.src, o.dst, IPPROTO_TCP, seg.length), seg), 16);
  return seg;
}

/** noChecksum: leave the UDP checksum 0 ("none", RFC 768). */
export function udp(o: { src: Buffer; dst: Buffer; sport: number; dport: number; payload?: Buffer; noChecksum?: boolean }): Buffer {
  const payload = o.payload ?? Buffer.alloc(0);
  const seg = Buffer.concat([Buffer.alloc(8), payload]);
  seg.writeUInt16BE(o.sport, 0);
  seg.writeUInt16BE(o.dport, 2);
  seg.writeUInt16BE(seg.length, 4);
  if (o.noChecksum) return seg;
  const c = inetChecksum(pseudo(o.src, o.dst, IPPROTO_UDP, seg.length), seg);
  seg.writeUInt16BE(c === 0 ? 0xffff : c, 6);
  return seg;
}

export function icmpEcho(o: { id?: number; seq?: number; payload?: Buffer; reply?: boolean }): Buffer {
  const m = Buffer.concat([Buffer.alloc(8), o.payload ?? Buffer.alloc(0)]);
  m[0] = o.reply ? 0 : 8;
  m.writeUInt16BE(o.id ?? 1, 4);
  m.writeUInt16BE(o.seq ?? 1, 6);
  m.writeUInt16BE(inetChecksum(m), 2);
  return m;
}

export const ICMP_ECHOREPLY = 0;
export const ICMP_DEST_UNREACH = 3;
export const ICMP_PORT_UNREACH = 3; // code
export const ICMP_ECHO = 8;
export const ICMP_TIME_EXCEEDED = 11;
export const ICMP_TIMESTAMP = 13;

/** Any ICMP message: type, code, the 4 "rest of header" bytes, payload; checksum filled in. */
export function icmp(o: { type: number; code?: number; rest?: Buffer; payload?: Buffer }): Buffer {
  const m = Buffer.concat([Buffer.alloc(8), o.payload ?? Buffer.alloc(0)]);
  m[0] = o.type;
  m[1] = o.code ?? 0;
  (o.rest ?? Buffer.alloc(4)).copy(m, 4, 0, 4);
  m.writeUInt16BE(inetChecksum(m), 2);
  return m;
}

/**
 * An ICMP error (destination unreachable by default, port unreachable code)
 * quoting `quoted` (an IPv4 packet from its IP header): its header plus the
 * first `quoteL4` (default 8) bytes of its payload, as RFC 792 requires.
 */
export function icmpError(o: { quoted: Buffer; type?: number; code?: number; quoteL4?: number }): Buffer {
  const ihl = (o.quoted[0] & 0x0f) * 4;
  return icmp({
    type: o.type ?? ICMP_DEST_UNREACH, code: o.code ?? ICMP_PORT_UNREACH,
    payload: Buffer.from(o.quoted.subarray(0, ihl + (o.quoteL4 ?? 8))),
  });
}

/** An Ethernet + IPv4 frame around a ready L4 segment (any protocol). */
export function ipv4L4Frame(o: {
  srcMac: Buffer; dstMac: Buffer; src: Buffer; dst: Buffer; proto: number; seg: Buffer; ttl?: number; fragOff?: number; id?: number;
}): Buffer {
  return ethernet({
    dst: o.dstMac, src: o.srcMac, type: ETH_P_IP,
    payload: ipv4({ src: o.src, dst: o.dst, proto: o.proto, ttl: o.ttl, fragOff: o.fragOff, id: o.id, payload: o.seg }),
  });
}

/** Whole frames in one call. */
export function ipv4Frame(o: {
  srcMac: Buffer; dstMac: Buffer; src: Buffer; dst: Buffer; ttl?: number;
  l4?: 'tcp' | 'udp' | 'icmp'; sport?: number; dport?: number; payload?: Buffer;
  /** TCP flags (default SYN) */
  flags?: number;
}): Buffer {
  const l4 = o.l4 ?? 'tcp';
  const seg = l4 === 'tcp' ? tcp({ src: o.src, dst: o.dst, sport: o.sport ?? 40000, dport: o.dport ?? 80, flags: o.flags, payload: o.payload })
    : l4 === 'udp' ? udp({ src: o.src, dst: o.dst, sport: o.sport ?? 40000, dport: o.dport ?? 53, payload: o.payload })
      : icmpEcho({ payload: o.payload });
  const proto = l4 === 'tcp' ? IPPROTO_TCP : l4 === 'udp' ? IPPROTO_UDP : IPPROTO_ICMP;
  return ethernet({ dst: o.dstMac, src: o.srcMac, type: ETH_P_IP, payload: ipv4({ src: o.src, dst: o.dst, proto, ttl: o.ttl, payload: seg }) });
}

export function arpRequestFrame(o: { srcMac: Buffer; senderIp: Buffer; targetIp: Buffer }): Buffer {
  return ethernet({
    dst: mac('ff:ff:ff:ff:ff:ff'), src: o.srcMac, type: ETH_P_ARP,
    payload: arp({ op: ARPOP_REQUEST, sha: o.srcMac, spa: o.senderIp, tpa: o.targetIp }),
  });
}

export interface EthFields { dst: Buffer; src: Buffer; type: number; payload: Buffer }

export function parseEth(b: Buffer): EthFields {
  return { dst: b.subarray(0, 6), src: b.subarray(6, 12), type: b.readUInt16BE(12), payload: b.subarray(ETH_HLEN) };
}

export interface Ipv4Fields { ihl: number; totalLength: number; ttl: number; proto: number; checksum: number; src: Buffer; dst: Buffer; header: Buffer; payload: Buffer }

export function parseIpv4(b: Buffer): Ipv4Fields {
  const ihl = (b[0] & 0x0f) * 4;
  return {
    ihl, totalLength: b.readUInt16BE(2), ttl: b[8], proto: b[9], checksum: b.readUInt16BE(10),
    src: b.subarray(12, 16), dst: b.subarray(16, 20), header: b.subarray(0, ihl), payload: b.subarray(ihl),
  };
}

/** True if the IPv4 header checksum verifies (sum over the header is 0). */
export function ipv4ChecksumOk(header: Buffer): boolean {
  return inetChecksum(header) === 0;
}

/** Source and destination port of a TCP/UDP/SCTP packet (an IPv4 packet from its IP header). */
export function l4Ports(ipPacket: Buffer): { sport: number; dport: number } {
  const ihl = (ipPacket[0] & 0x0f) * 4;
  return { sport: ipPacket.readUInt16BE(ihl), dport: ipPacket.readUInt16BE(ihl + 2) };
}

/**
 * Verify the L4 checksum of an IPv4 packet (from its IP header), recomputed
 * over the pseudo header and the segment (up to the IP total length):
 * 'ok', 'bad', or 'none' (UDP checksum 0). TCP, UDP and ICMP (no pseudo header).
 */
export function l4ChecksumState(ipPacket: Buffer): 'ok' | 'bad' | 'none' {
  const ip = parseIpv4(ipPacket);
  const seg = ipPacket.subarray(ip.ihl, ip.totalLength);
  if (ip.proto === IPPROTO_ICMP) return inetChecksum(seg) === 0 ? 'ok' : 'bad';
  if (ip.proto === IPPROTO_UDP && seg.readUInt16BE(6) === 0) return 'none';
  if (ip.proto !== IPPROTO_TCP && ip.proto !== IPPROTO_UDP) throw new Error(`l4ChecksumState: protocol ${ip.proto}`);
  return inetChecksum(pseudo(ip.src, ip.dst, ip.proto, seg.length), seg) === 0 ? 'ok' : 'bad';
}
