/**
 * Per-endpoint policy map state: the exact set of entries the endpoint's
 * mb_policy LPM map must hold.
 *
 * Key bits: identity (32) + direction (8) + protocol (8) + port (16). Stored
 * prefixes always cover identity and direction (>= 40): 40 = any protocol and
 * port, 48 = one protocol any port, 48+n = a port prefix, 64 = one port.
 * The datapath looks up the remote identity and identity 0 (L3 wildcard); a
 * deny in either wins, then an allow in either, else drop 133.
 *
 * Deny precedence is resolved here: LPM returns only the longest match, so an
 * allow that a shorter deny of the same identity covers must not be installed.
 */
import { ALL_PROTOCOLS, Direction, IcmpSpec, PeerRule, PortSpec, PROTO_NUMBER, Rule } from './types';

export const ANY_IDENTITY = 0;

export interface PolicyEntry {
  identity: number;
  egress: boolean;
  protocol: number; // 0 = any
  port: number; // host order; ICMP: type
  prefixLen: number; // 40..64
  deny: boolean;
  /** L7: the proxy listener port this flow is redirected to (0/absent: none). */
  proxyPort?: number;
  /** Which rules produced the entry (for explanations). */
  derivedFrom: string[];
}

export type MapState = Map<string, PolicyEntry>;

export function entryKey(e: { identity: number; egress: boolean; protocol: number; port: number; prefixLen: number }): string {
  return `${e.identity}/${e.egress ? 'e' : 'i'}/${e.protocol}/${e.port}/${e.prefixLen}`;
}

/** Cover [lo, hi] with the fewest port prefixes: [value, bits-of-16 fixed]. */
export function portRangeToPrefixes(lo: number, hi: number): [number, number][] {
  const out: [number, number][] = [];
  let cur = lo;
  while (cur <= hi) {
    let size = 1;
    let bits = 16;
    while (bits > 0) {
      const next = size * 2;
      if (cur % next !== 0 || cur + next - 1 > hi) break;
      size = next;
      bits--;
    }
    out.push([cur, bits]);
    cur += size;
  }
  return out;
}

export interface NamedPort {
  port: number;
  protocol: 'TCP' | 'UDP' | 'SCTP';
}

/** Resolve a port rule into (protocol, port, prefixLen) triples. */
export function expandPorts(spec: PortSpec, named: (name: string) => NamedPort[]): { protocol: number; port: number; prefixLen: number }[] {
  const protos = spec.protocol === 'ANY' ? ALL_PROTOCOLS : [spec.protocol];
  if (typeof spec.port === 'string') {
    return named(spec.port)
      .filter((np) => spec.protocol === 'ANY' || np.protocol === spec.protocol)
      .map((np) => ({ protocol: PROTO_NUMBER[np.protocol], port: np.port, prefixLen: 64 }));
  }
  if (spec.port === 0) {
    if (spec.protocol === 'ANY') return [{ protocol: 0, port: 0, prefixLen: 40 }];
    return [{ protocol: PROTO_NUMBER[spec.protocol], port: 0, prefixLen: 48 }];
  }
  const ranges = spec.endPort && spec.endPort > spec.port ? portRangeToPrefixes(spec.port, spec.endPort) : [[spec.port, 16] as [number, number]];
  const out: { protocol: number; port: number; prefixLen: number }[] = [];
  for (const p of protos) for (const [port, bits] of ranges) out.push({ protocol: PROTO_NUMBER[p], port, prefixLen: 48 + bits });
  return out;
}

function expandIcmps(icmps: IcmpSpec[]): { protocol: number; port: number; prefixLen: number }[] {
  return icmps.map((i) => ({ protocol: i.family === 'IPv4' ? PROTO_NUMBER.ICMP : PROTO_NUMBER.ICMPV6, port: i.type, prefixLen: 64 }));
}

/** Does entry `outer` (shorter or equal prefix) cover every key `inner` matches? */
export function covers(outer: PolicyEntry, inner: PolicyEntry): boolean {
  if (outer.identity !== inner.identity || outer.egress !== inner.egress) return false;
  if (outer.prefixLen > inner.prefixLen) return false;
  if (outer.prefixLen <= 40) return true;
  if (outer.protocol !== inner.protocol) return false;
  if (outer.prefixLen <= 48) return true;
  const bits = outer.prefixLen - 48;
  const mask = (0xffff << (16 - bits)) & 0xffff;
  return (outer.port & mask) === (inner.port & mask);
}

export interface EndpointPolicyInput {
  identity: number;
  /** Rules whose subject selects this endpoint. */
  rules: Rule[];
  /** Identities selected by a peer rule (0 = any peer). */
  peerIdentities: (pr: PeerRule) => number[];
  /** Named ports of the destination: ingress = this pod's; egress = the peers'. */
  namedPorts: (dir: Direction, pr: PeerRule, name: string) => NamedPort[];
  mode: 'default' | 'always' | 'never';
  allowLocalhost: boolean;
}

export interface DirectionState {
  enforced: boolean;
}

export interface ComputedPolicy {
  entries: MapState;
  ingress: DirectionState;
  egress: DirectionState;
  /**
   * Some entry names an address-block identity (NetworkPolicy ipBlock): the
   * datapath must also look the peer's address up in mb_ipblock.
   */
  addressRules?: boolean;
}

function ruleName(r: Rule): string {
  const s = r.source;
  return `${s.kind}/${s.namespace ? s.namespace + '/' : ''}${s.name}${s.index ? `[${s.index}]` : ''}`;
}

export function computeMapState(input: EndpointPolicyInput): ComputedPolicy {
  const entries: MapState = new Map();
  const add = (e: Omit<PolicyEntry, 'derivedFrom'>, from: string) => {
    const k = entryKey(e);
    const cur = entries.get(k);
    if (cur) {
      if (e.deny && !cur.deny) {
        cur.deny = true;
        cur.derivedFrom = [from];
      } else if (e.deny === cur.deny && !cur.derivedFrom.includes(from)) cur.derivedFrom.push(from);
      return;
    }
    entries.set(k, { ...e, derivedFrom: [from] });
  };
  const result: ComputedPolicy = { entries, ingress: { enforced: false }, egress: { enforced: false } };

  for (const dir of ['ingress', 'egress'] as Direction[]) {
    const egress = dir === 'egress';
    let enforced: boolean;
    if (input.mode === 'never') enforced = false;
    else if (input.mode === 'always') enforced = true;
    else enforced = input.rules.some((r) => r.defaultDeny[dir]);
    result[dir].enforced = enforced;
    if (!enforced) add({ identity: ANY_IDENTITY, egress, protocol: 0, port: 0, prefixLen: 40, deny: false }, 'no policy enforced in this direction');
    if (input.mode === 'never') continue;
    if (!egress && input.allowLocalhost) add({ identity: 1, egress, protocol: 0, port: 0, prefixLen: 40, deny: false }, 'host may always reach local endpoints');
    for (const r of input.rules) {
      const name = ruleName(r);
      for (const [list, deny] of [
        [r[dir], false],
        [egress ? r.egressDeny : r.ingressDeny, true],
      ] as [PeerRule[], boolean][]) {
        for (const pr of list) {
          const ids = input.peerIdentities(pr);
          if (ids.length === 0) continue;
          let l4: { protocol: number; port: number; prefixLen: number }[];
          if (pr.icmps) l4 = expandIcmps(pr.icmps);
          else if (pr.ports) l4 = pr.ports.flatMap((ps) => expandPorts(ps, (n) => input.namedPorts(dir, pr, n)));
          else l4 = [{ protocol: 0, port: 0, prefixLen: 40 }];
          for (const id of ids) for (const p of l4) add({ identity: id, egress, ...p, deny }, name);
        }
      }
    }
  }

  // Deny precedence within one identity: drop allows that a deny covers.
  const denies = new Map<string, PolicyEntry[]>();
  for (const e of entries.values()) {
    if (!e.deny) continue;
    const g = `${e.identity}/${e.egress}`;
    (denies.get(g) ?? denies.set(g, []).get(g)!).push(e);
  }
  if (denies.size) {
    for (const [k, e] of entries) {
      if (e.deny) continue;
      const ds = denies.get(`${e.identity}/${e.egress}`);
      if (ds && ds.some((d) => covers(d, e))) entries.delete(k);
    }
  }
  return result;
}

export interface Verdict {
  allowed: boolean;
  /** 0 allowed, 133 default deny (no match), 181 explicit deny */
  reason: 0 | 133 | 181;
  entry?: PolicyEntry;
}

/** The datapath's decision, computed from a map state (LPM per identity, then deny-wins across the two lookups). */
/**
 * The datapath's decision (bpf/lib/policy.h): the remote identity, then the
 * wildcard; with no entry hit and an address-block identity for the remote
 * address (NetworkPolicy ipBlock, mb_ipblock), that identity's entries too.
 */
export function lookupVerdict(state: MapState, remoteIdentity: number, egress: boolean, protocol: number, port: number, addressIdentity?: number): Verdict {
  const probe: PolicyEntry = { identity: 0, egress, protocol, port, prefixLen: 64, deny: false, derivedFrom: [] };
  const longest = (identity: number): PolicyEntry | undefined => {
    let best: PolicyEntry | undefined;
    for (const e of state.values()) {
      if (e.identity !== identity || e.egress !== egress) continue;
      if (covers(e, { ...probe, identity }) && (!best || e.prefixLen > best.prefixLen)) best = e;
    }
    return best;
  };
  const exact = longest(remoteIdentity);
  const wild = remoteIdentity === 0 ? undefined : longest(0);
  const deny = [exact, wild].find((e) => e?.deny);
  if (deny) return { allowed: false, reason: 181, entry: deny };
  const allow = exact ?? wild;
  if (allow) return { allowed: true, reason: 0, entry: allow };
  if (addressIdentity !== undefined) {
    const block = longest(addressIdentity);
    if (block?.deny) return { allowed: false, reason: 181, entry: block };
    if (block) return { allowed: true, reason: 0, entry: block };
  }
  return { allowed: false, reason: 133 };
}
