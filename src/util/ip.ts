/**
 * IP addresses as {family, 16 bytes}: the one representation used in maps, APIs
 * and state. IPv4 occupies the first 4 bytes (the rest zero), as in the C headers.
 */
import * as net from 'node:net';

export type Family = 4 | 6;

export interface IpAddr {
  family: Family;
  bytes: Buffer; // 16 bytes
}

export interface Cidr {
  addr: IpAddr; // network address (host bits cleared)
  prefixLen: number;
}

export function parseIp(text: string, field = 'address'): IpAddr {
  const s = text.trim();
  if (net.isIPv4(s)) {
    const bytes = Buffer.alloc(16);
    s.split('.').forEach((p, i) => (bytes[i] = Number(p)));
    return { family: 4, bytes };
  }
  if (net.isIPv6(s)) return { family: 6, bytes: parseIpv6(s) };
  throw new Error(`${field}: "${text}" is not an IPv4 or IPv6 address`);
}

function parseIpv6(s: string): Buffer {
  const out = Buffer.alloc(16);
  let head = s;
  let tail = '';
  const dbl = s.indexOf('::');
  if (dbl >= 0) {
    head = s.slice(0, dbl);
    tail = s.slice(dbl + 2);
  }
  const groups = (part: string): number[] => {
    if (part === '') return [];
    const res: number[] = [];
    for (const g of part.split(':')) {
      if (g.includes('.')) {
        const v4 = g.split('.').map(Number);
        res.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else res.push(parseInt(g, 16));
    }
    return res;
  };
  const h = groups(head);
  const t = groups(tail);
  const all = dbl >= 0 ? [...h, ...new Array(8 - h.length - t.length).fill(0), ...t] : h;
  all.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

export function formatIp(a: IpAddr): string {
  if (a.family === 4) return `${a.bytes[0]}.${a.bytes[1]}.${a.bytes[2]}.${a.bytes[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(a.bytes.readUInt16BE(i * 2).toString(16));
  // compress the longest run of zero groups
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return groups.slice(0, best).join(':') + '::' + groups.slice(best + bestLen).join(':');
}

export function ipFromBytes(family: Family, bytes: Buffer | Uint8Array): IpAddr {
  const b = Buffer.alloc(16);
  Buffer.from(bytes).copy(b, 0, 0, family === 4 ? 4 : 16);
  return { family, bytes: b };
}

export function bitsOf(family: Family): number {
  return family === 4 ? 32 : 128;
}

export function parseCidr(text: string, field = 'cidr'): Cidr {
  const s = String(text).trim();
  const slash = s.indexOf('/');
  if (slash < 0) throw new Error(`${field}: "${text}" is not a CIDR (expected address/prefix-length)`);
  const addr = parseIp(s.slice(0, slash), field);
  const plText = s.slice(slash + 1);
  const prefixLen = Number(plText);
  if (!/^\d+$/.test(plText) || prefixLen > bitsOf(addr.family)) {
    throw new Error(`${field}: "${text}" has an invalid prefix length "${plText}"`);
  }
  return { addr: maskIp(addr, prefixLen), prefixLen };
}

export function maskIp(a: IpAddr, prefixLen: number): IpAddr {
  const b = Buffer.from(a.bytes);
  const total = bitsOf(a.family) / 8;
  for (let i = 0; i < 16; i++) {
    if (i >= total) { b[i] = 0; continue; }
    const bitsHere = Math.max(0, Math.min(8, prefixLen - i * 8));
    b[i] &= bitsHere === 0 ? 0 : (0xff << (8 - bitsHere)) & 0xff;
  }
  return { family: a.family, bytes: b };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.addr)}/${c.prefixLen}`;
}

export function cidrContains(c: Cidr, a: IpAddr): boolean {
  return a.family === c.addr.family && maskIp(a, c.prefixLen).bytes.equals(c.addr.bytes);
}

/** Address at offset `n` within the CIDR (IPv4: last 32 bits; IPv6: last 32 bits). */
export function ipAtOffset(c: Cidr, n: number): IpAddr {
  const b = Buffer.from(c.addr.bytes);
  const off = c.addr.family === 4 ? 0 : 12;
  const base = b.readUInt32BE(off);
  b.writeUInt32BE((base + n) >>> 0, off);
  return { family: c.addr.family, bytes: b };
}

/** Offset of `a` within `c` (inverse of ipAtOffset). */
export function offsetInCidr(c: Cidr, a: IpAddr): number {
  const off = c.addr.family === 4 ? 0 : 12;
  return (a.bytes.readUInt32BE(off) - c.addr.bytes.readUInt32BE(off)) >>> 0;
}

export function cidrSize(c: Cidr): number {
  const hostBits = bitsOf(c.addr.family) - c.prefixLen;
  return hostBits >= 32 ? 2 ** 32 : 2 ** hostBits;
}

export function parseMac(text: string, field = 'mac'): Buffer {
  const m = /^([0-9a-f]{2})(:[0-9a-f]{2}){5}$/i.exec(text);
  if (!m) throw new Error(`${field}: "${text}" is not a MAC address (aa:bb:cc:dd:ee:ff)`);
  return Buffer.from(text.split(':').map((x) => parseInt(x, 16)));
}

const HEX2 = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** "aa:bb:cc:dd:ee:ff" of the 6 bytes at `offset`. */
export function formatMac(b: Buffer | Uint8Array, offset = 0): string {
  const o = offset;
  return `${HEX2[b[o]]}:${HEX2[b[o + 1]]}:${HEX2[b[o + 2]]}:${HEX2[b[o + 3]]}:${HEX2[b[o + 4]]}:${HEX2[b[o + 5]]}`;
}
