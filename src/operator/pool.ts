/**
 * The cluster pool: one CIDR (--cluster-pool-ipv4-cidr) cut into per-node pod
 * CIDRs of --cluster-pool-ipv4-mask-size bits. Pure logic: which CIDR comes
 * next, given those already allocated and those nodes configured themselves
 * (--pod-cidr), which the pool must never hand out again.
 */
import { Cidr, bitsOf, formatCidr, ipAtOffset, parseCidr } from '../util/ip';
import { cidrsOverlap } from '../node/registry';

export class PoolConfigError extends Error {
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}

/** The pool has no CIDR left (every one allocated or overlapping a node's own). */
export class PoolExhaustedError extends Error {
  constructor(
    message: string,
    readonly pool: string,
    readonly maskSize: number,
    readonly allocated: number,
    readonly size: number,
  ) {
    super(message);
  }
}

/** At most this many CIDRs per pool (a /8 in /24s is 65,536). */
const MAX_POOL = 1 << 20;

export class CidrPool {
  readonly cidr: Cidr;
  readonly size: number;
  private readonly step: number;

  constructor(
    cidrText: string,
    readonly maskSize: number,
  ) {
    try {
      this.cidr = parseCidr(cidrText, 'cluster-pool-ipv4-cidr');
    } catch (e) {
      throw new PoolConfigError((e as Error).message, 'cluster-pool-ipv4-cidr');
    }
    if (this.cidr.addr.family !== 4) throw new PoolConfigError(`cluster-pool-ipv4-cidr: "${cidrText}" is not an IPv4 CIDR`, 'cluster-pool-ipv4-cidr');
    const bits = bitsOf(this.cidr.addr.family);
    if (!Number.isInteger(maskSize) || maskSize < this.cidr.prefixLen || maskSize > bits - 2) {
      throw new PoolConfigError(`cluster-pool-ipv4-mask-size: "${maskSize}" must be between the pool's prefix length ${this.cidr.prefixLen} and ${bits - 2}`, 'cluster-pool-ipv4-mask-size');
    }
    if (maskSize - this.cidr.prefixLen > 20) {
      throw new PoolConfigError(`cluster-pool-ipv4-mask-size: ${maskSize} cuts ${formatCidr(this.cidr)} into more than ${MAX_POOL} CIDRs`, 'cluster-pool-ipv4-mask-size');
    }
    this.size = 2 ** (maskSize - this.cidr.prefixLen);
    this.step = 2 ** (bits - maskSize);
  }

  get text(): string {
    return formatCidr(this.cidr);
  }

  at(i: number): string {
    return formatCidr({ addr: ipAtOffset(this.cidr, i * this.step), prefixLen: this.maskSize });
  }

  /** Whether `cidr` is one of this pool's CIDRs (same size, inside the pool). */
  owns(cidr: string): boolean {
    try {
      const c = parseCidr(cidr);
      return c.prefixLen === this.maskSize && cidrsOverlap(c, this.cidr);
    } catch {
      return false;
    }
  }

  /**
   * The first CIDR neither allocated (`used`, canonical text) nor overlapping
   * a CIDR a node configured itself (`reserved`). Throws PoolExhaustedError.
   */
  next(used: Set<string>, reserved: string[] = []): string {
    const res = reserved.map((r) => parseCidr(r)).filter((r) => cidrsOverlap(r, this.cidr));
    for (let i = 0; i < this.size; i++) {
      const c = this.at(i);
      if (used.has(c)) continue;
      if (res.length && res.some((r) => cidrsOverlap(r, parseCidr(c)))) continue;
      return c;
    }
    const allocated = [...used].filter((u) => this.owns(u)).length;
    throw new PoolExhaustedError(
      `cluster pool ${this.text} (/${this.maskSize} per node) is exhausted: ${allocated} of ${this.size} CIDRs allocated${res.length ? `, ${res.length} taken by nodes' own --pod-cidr` : ''}`,
      this.text,
      this.maskSize,
      allocated,
      this.size,
    );
  }
}
