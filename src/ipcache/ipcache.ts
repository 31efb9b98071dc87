/**
 * The ipcache: which security identity (and, for remote pods, which node)
 * every address and prefix the node knows stands for. It is the desired state
 * of the mb_ipcache map (LPM trie) and the only thing that writes its table.
 *
 * Several sources may claim the same prefix: a local endpoint, one of the
 * node's own addresses, a pod or node learned from the cluster, an identity a
 * CIDR or FQDN policy selects. Each claim is kept; the one with the highest
 * precedence is programmed, and removing it restores the next one. So a
 * policy naming a pod's or the router's /32 never displaces the endpoint or
 * host entry, and deleting that policy leaves the address as it was.
 */
import { IpcacheKey, IpcacheValue, ipcacheKey } from '../datapath/datapath';
import type { MapTable } from '../datapath/reconciler';
import { FAMILY_IPV4, FAMILY_IPV6, IPCACHE_F_HAS_TUNNEL } from '../datapath/constants';
import { IpAddr, formatIp, maskIp, parseCidr, parseIp } from '../util/ip';

/** Who claims a prefix. Higher precedence wins. */
export const IPCACHE_SOURCES = {
  /** a pod on this node */
  endpoint: 100,
  /** an address of this node (router, devices) */
  host: 100,
  /** the Gateway proxy's upstream address (reserved identity ingress) */
  gateway: 100,
  /** a pod on another node, learned from the cluster store */
  'cluster-pod': 80,
  /** another node's address (remote-node) */
  'cluster-node': 70,
  /** another node's pod CIDR (unknown addresses in it are reached through that node) */
  'cluster-cidr': 60,
  /** an address learned from an allowed DNS answer (toFQDNs) */
  fqdn: 30,
  /** a prefix named by a policy (toCIDR, ipBlock) */
  cidr: 20,
} as const;

export type IpcacheSource = keyof typeof IPCACHE_SOURCES;

export interface IpcacheEntry {
  identity: number;
  /** the node (underlay address) that hosts the prefix: traffic to it is tunnelled there */
  tunnelEndpoint?: string;
  /** informational: the node's name, the pod behind the address */
  node?: string;
  namespace?: string;
  pod?: string;
}

interface Claim {
  source: IpcacheSource;
  entry: IpcacheEntry;
}

interface Prefix {
  addr: IpAddr;
  len: number;
  text: string;
  claims: Claim[];
}

export interface IpcacheRow {
  prefix: string;
  source: IpcacheSource;
  entry: IpcacheEntry;
  /** lower-precedence claims kept for when the winner goes away */
  shadowed: { source: IpcacheSource; identity: number }[];
}

export function ipcacheValue(e: IpcacheEntry): IpcacheValue {
  const tunnel = Buffer.alloc(16);
  let family = 0;
  if (e.tunnelEndpoint) {
    const t = parseIp(e.tunnelEndpoint);
    t.bytes.copy(tunnel, 0, 0, 16);
    family = t.family === 4 ? FAMILY_IPV4 : FAMILY_IPV6;
  }
  return {
    sec_id: e.identity,
    tunnel_family: family,
    flags: e.tunnelEndpoint ? IPCACHE_F_HAS_TUNNEL : 0,
    pad: 0,
    tunnel_addr: tunnel,
  } as IpcacheValue;
}

function sameEntry(a: IpcacheEntry, b: IpcacheEntry): boolean {
  return a.identity === b.identity && a.tunnelEndpoint === b.tunnelEndpoint && a.node === b.node && a.namespace === b.namespace && a.pod === b.pod;
}

export class IpCache {
  private readonly prefixes = new Map<string, Prefix>();
  /** Called with the prefix whose programmed entry changed (after the table is updated). */
  onChange?: (prefix: string, entry: IpcacheEntry | undefined) => void;

  constructor(private readonly table: MapTable<IpcacheKey, IpcacheValue>) {}

  private norm(prefix: string | IpAddr): { addr: IpAddr; len: number; text: string } {
    if (typeof prefix !== 'string') {
      const len = prefix.family === 4 ? 32 : 128;
      return { addr: prefix, len, text: `${formatIp(prefix)}/${len}` };
    }
    const c = parseCidr(prefix.includes('/') ? prefix : `${prefix}/${parseIp(prefix).family === 4 ? 32 : 128}`);
    return { addr: c.addr, len: c.prefixLen, text: `${formatIp(c.addr)}/${c.prefixLen}` };
  }

  /** Claim `prefix` (a CIDR, an address, or an IpAddr for a host prefix) for `source`. */
  upsert(prefix: string | IpAddr, source: IpcacheSource, entry: IpcacheEntry): void {
    const n = this.norm(prefix);
    let p = this.prefixes.get(n.text);
    if (!p) {
      p = { ...n, claims: [] };
      this.prefixes.set(n.text, p);
    }
    const before = p.claims[0];
    const i = p.claims.findIndex((c) => c.source === source);
    if (i >= 0) {
      if (sameEntry(p.claims[i].entry, entry)) return;
      p.claims[i] = { source, entry };
    } else {
      p.claims.push({ source, entry });
    }
    p.claims.sort((a, b) => IPCACHE_SOURCES[b.source] - IPCACHE_SOURCES[a.source]);
    this.program(p, before);
  }

  /** Withdraw `source`'s claim on `prefix`; the next claim (if any) takes over. */
  delete(prefix: string | IpAddr, source: IpcacheSource): void {
    const n = this.norm(prefix);
    const p = this.prefixes.get(n.text);
    if (!p) return;
    const i = p.claims.findIndex((c) => c.source === source);
    if (i < 0) return;
    const before = p.claims[0];
    p.claims.splice(i, 1);
    if (!p.claims.length) this.prefixes.delete(n.text);
    this.program(p, before);
  }

  private program(p: Prefix, before: Claim | undefined): void {
    const win = p.claims[0];
    if (win === before || (win && before && win.source === before.source && sameEntry(win.entry, before.entry))) return;
    const key = ipcacheKey(p.addr, p.len);
    if (win) this.table.upsert(key, ipcacheValue(win.entry));
    else this.table.delete(key);
    this.onChange?.(p.text, win?.entry);
  }

  /** The programmed entry of exactly this prefix. */
  get(prefix: string | IpAddr): (IpcacheEntry & { source: IpcacheSource }) | undefined {
    const c = this.prefixes.get(this.norm(prefix).text)?.claims[0];
    return c ? { ...c.entry, source: c.source } : undefined;
  }

  /** Longest-prefix match for an address, as the datapath sees it. */
  lookup(ip: string | IpAddr): (IpcacheEntry & { source: IpcacheSource; prefix: string }) | undefined {
    const a = typeof ip === 'string' ? parseIp(ip) : ip;
    const max = a.family === 4 ? 32 : 128;
    for (let len = max; len >= 0; len--) {
      const text = `${formatIp(maskIp(a, len))}/${len}`;
      const p = this.prefixes.get(text);
      if (p?.claims.length) return { ...p.claims[0].entry, source: p.claims[0].source, prefix: text };
    }
    return undefined;
  }

  /** Every prefix with its programmed claim and the claims it shadows. */
  list(): IpcacheRow[] {
    return [...this.prefixes.values()]
      .filter((p) => p.claims.length)
      .map((p) => ({
        prefix: p.text,
        source: p.claims[0].source,
        entry: p.claims[0].entry,
        shadowed: p.claims.slice(1).map((c) => ({ source: c.source, identity: c.entry.identity })),
      }));
  }

  /** Prefixes claimed by one source (e.g. to withdraw what a departed node announced). */
  claimedBy(source: IpcacheSource): string[] {
    return [...this.prefixes.values()].filter((p) => p.claims.some((c) => c.source === source)).map((p) => p.text);
  }

  get size(): number {
    return this.prefixes.size;
  }
}
