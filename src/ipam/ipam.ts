/**
 * Host-scope IPAM: addresses for endpoints from the node's pod CIDR.
 * The first usable address is the router (gateway) address, held by the node.
 * Allocations are persisted atomically in <state-dir>/ipam.json, so an agent
 * restart never hands out an address that a running pod holds.
 */
import * as path from 'node:path';
import { Cidr, IpAddr, cidrContains, cidrSize, formatCidr, formatIp, ipAtOffset, offsetInCidr, parseCidr, parseIp } from '../util/ip';
import { readJson, writeJsonAtomic } from '../util/fsutil';

export interface Allocation {
  ip: string;
  owner: string; // "<containerID>/<ifname>" or a reserved name
  allocatedAt: string;
}

interface IpamFile {
  cidr: string;
  allocations: Allocation[];
  next: number;
}

export class IpamError extends Error {
  constructor(message: string, readonly code: 'exhausted' | 'conflict' | 'invalid') {
    super(message);
  }
}

/** A node's cluster-pool allocation (ipam/v1/nodes/<node>), written by the operator (src/operator/ipam.ts). */
export interface IpamAllocation {
  podCIDRs: string[];
  pool?: string;
  allocatedAt?: string;
  /** Why the node has no CIDR (pool exhausted). */
  error?: string;
  /** The node's record is gone since: its CIDR returns to the pool after the grace period. */
  orphanedSince?: string;
}

/** The pod CIDR recorded in a state directory (the one this node's pods hold addresses from), if any. */
export function recordedPodCidr(stateDir: string): string | undefined {
  return readJson<IpamFile>(path.join(stateDir, 'ipam.json'))?.cidr;
}

export class Ipam {
  readonly cidr: Cidr;
  readonly router: IpAddr;
  private readonly byIp = new Map<string, Allocation>();
  private next = 2; // offset of the next candidate (0 network, 1 router)
  private readonly file: string;

  constructor(cidrText: string, stateDir: string) {
    this.cidr = parseCidr(cidrText, 'pod-cidr');
    if (cidrSize(this.cidr) < 4) throw new IpamError(`pod-cidr: "${cidrText}" is too small (need at least a /30)`, 'invalid');
    this.router = ipAtOffset(this.cidr, 1);
    this.file = path.join(stateDir, 'ipam.json');
    const saved = readJson<IpamFile>(this.file);
    if (saved) {
      if (saved.cidr !== formatCidr(this.cidr)) {
        throw new IpamError(
          `pod-cidr: "${formatCidr(this.cidr)}" differs from the CIDR "${saved.cidr}" recorded in ${this.file}; ` +
            `pods hold addresses from it (remove their endpoints or use the recorded CIDR)`,
          'conflict',
        );
      }
      for (const a of saved.allocations) this.byIp.set(a.ip, a);
      this.next = saved.next || 2;
    }
    this.byIp.set(formatIp(this.router), { ip: formatIp(this.router), owner: 'router', allocatedAt: new Date(0).toISOString() });
  }

  /** Allocate the next free address for owner; the same owner asking twice gets its address again. */
  allocate(owner: string): IpAddr {
    const existing = this.ownedBy(owner);
    if (existing) return parseIp(existing.ip);
    const size = cidrSize(this.cidr);
    const lastUsable = this.cidr.addr.family === 4 ? size - 2 : size - 1; // skip IPv4 broadcast
    const span = lastUsable - 1; // candidates are offsets 2..lastUsable
    for (let i = 0; i < span; i++) {
      const off = 2 + ((this.next - 2 + i) % span);
      const ip = formatIp(ipAtOffset(this.cidr, off));
      if (!this.byIp.has(ip)) {
        this.byIp.set(ip, { ip, owner, allocatedAt: new Date().toISOString() });
        this.next = off + 1 > lastUsable ? 2 : off + 1;
        this.save();
        return parseIp(ip);
      }
    }
    throw new IpamError(`IPAM: pod CIDR ${formatCidr(this.cidr)} is exhausted (${this.byIp.size} addresses in use)`, 'exhausted');
  }

  /** Reserve a specific address (restore, or a requested IP). */
  reserve(ipText: string, owner: string): IpAddr {
    const ip = parseIp(ipText, 'ip');
    if (!cidrContains(this.cidr, ip)) throw new IpamError(`ip: ${ipText} is outside the pod CIDR ${formatCidr(this.cidr)}`, 'invalid');
    const key = formatIp(ip);
    const cur = this.byIp.get(key);
    if (cur && cur.owner !== owner) throw new IpamError(`ip: ${key} is already allocated to ${cur.owner}`, 'conflict');
    const off = offsetInCidr(this.cidr, ip);
    if (off === 0) throw new IpamError(`ip: ${key} is the network address of ${formatCidr(this.cidr)}`, 'invalid');
    if (!cur) {
      this.byIp.set(key, { ip: key, owner, allocatedAt: new Date().toISOString() });
      this.save();
    }
    return ip;
  }

  release(ipText: string): boolean {
    const key = formatIp(parseIp(ipText, 'ip'));
    const cur = this.byIp.get(key);
    if (!cur || cur.owner === 'router') return false;
    this.byIp.delete(key);
    this.save();
    return true;
  }

  releaseOwner(owner: string): string[] {
    const released: string[] = [];
    for (const [ip, a] of this.byIp) if (a.owner === owner) { this.byIp.delete(ip); released.push(ip); }
    if (released.length) this.save();
    return released;
  }

  ownedBy(owner: string): Allocation | undefined {
    for (const a of this.byIp.values()) if (a.owner === owner) return a;
    return undefined;
  }

  list(): Allocation[] {
    return [...this.byIp.values()].sort((a, b) => offsetInCidr(this.cidr, parseIp(a.ip)) - offsetInCidr(this.cidr, parseIp(b.ip)));
  }

  private save(): void {
    const allocations = [...this.byIp.values()].filter((a) => a.owner !== 'router');
    writeJsonAtomic(this.file, { cidr: formatCidr(this.cidr), allocations, next: this.next } satisfies IpamFile, { durable: false });
  }
}
