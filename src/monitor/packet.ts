/**
 * Decoding the first bytes of a packet captured by the datapath (Ethernet,
 * IPv4, TCP/UDP/ICMP). Truncated or unknown packets decode as far as they go.
 */
import { formatMac } from '../util/ip';

export interface DecodedPacket {
  ethernet?: { source: string; destination: string; type: number };
  ip?: { source: string; destination: string; ipVersion: 'IPv4'; protocol: number; ttl: number; length: number; id: number };
  tcp?: { source_port: number; destination_port: number; flags: TcpFlags; seq: number; ack: number; window: number };
  udp?: { source_port: number; destination_port: number; length: number };
  icmp?: { type: number; code: number; id?: number; seq?: number };
  arp?: { op: number; senderIp: string; targetIp: string; senderMac: string };
}

export interface TcpFlags {
  FIN?: boolean;
  SYN?: boolean;
  RST?: boolean;
  PSH?: boolean;
  ACK?: boolean;
  URG?: boolean;
  ECE?: boolean;
  CWR?: boolean;
}

const v4 = (b: Buffer, o: number) => `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;

export function tcpFlags(byte: number): TcpFlags {
  const f: TcpFlags = {};
  if (byte & 0x01) f.FIN = true;
  if (byte & 0x02) f.SYN = true;
  if (byte & 0x04) f.RST = true;
  if (byte & 0x08) f.PSH = true;
  if (byte & 0x10) f.ACK = true;
  if (byte & 0x20) f.URG = true;
  if (byte & 0x40) f.ECE = true;
  if (byte & 0x80) f.CWR = true;
  return f;
}

export function flagNames(f: TcpFlags): string[] {
  return (['SYN', 'FIN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR'] as const).filter((k) => f[k]);
}

export function decodePacket(b: Buffer): DecodedPacket {
  const out: DecodedPacket = {};
  if (b.length < 14) return out;
  const type = b.readUInt16BE(12);
  out.ethernet = { destination: formatMac(b, 0), source: formatMac(b, 6), type };
  if (type === 0x0806 && b.length >= 42) {
    out.arp = { op: b.readUInt16BE(20), senderMac: formatMac(b, 22), senderIp: v4(b, 28), targetIp: v4(b, 38) };
    return out;
  }
  if (type !== 0x0800 || b.length < 34) return out;
  const ihl = (b[14] & 0x0f) * 4;
  const protocol = b[23];
  out.ip = { source: v4(b, 26), destination: v4(b, 30), ipVersion: 'IPv4', protocol, ttl: b[22], length: b.readUInt16BE(16), id: b.readUInt16BE(18) };
  const l4 = 14 + ihl;
  const fragOffset = b.readUInt16BE(20) & 0x1fff;
  if (fragOffset !== 0) return out;
  if (protocol === 6 && b.length >= l4 + 14) {
    out.tcp = {
      source_port: b.readUInt16BE(l4),
      destination_port: b.readUInt16BE(l4 + 2),
      seq: b.readUInt32BE(l4 + 4),
      ack: b.length >= l4 + 12 ? b.readUInt32BE(l4 + 8) : 0,
      flags: tcpFlags(b[l4 + 13]),
      window: b.length >= l4 + 16 ? b.readUInt16BE(l4 + 14) : 0,
    };
  } else if ((protocol === 17 || protocol === 132) && b.length >= l4 + 4) {
    out.udp = { source_port: b.readUInt16BE(l4), destination_port: b.readUInt16BE(l4 + 2), length: b.length >= l4 + 6 ? b.readUInt16BE(l4 + 4) : 0 };
  } else if (protocol === 1 && b.length >= l4 + 2) {
    const icmp: DecodedPacket['icmp'] = { type: b[l4], code: b[l4 + 1] };
    if ((icmp.type === 0 || icmp.type === 8) && b.length >= l4 + 8) {
      icmp.id = b.readUInt16BE(l4 + 4);
      icmp.seq = b.readUInt16BE(l4 + 6);
    }
    out.icmp = icmp;
  }
  return out;
}
