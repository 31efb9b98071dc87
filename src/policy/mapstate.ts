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
import { ALL_PROTOCOLS, Direction, DnsRule, HttpRule, IcmpSpec, L7Rules, PeerRule, PortSpec, PROTO_NUMBER, Rule } from './types';

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
  /** An allow of a port with L7 rules: the datapath redirects its flows to the proxy. */
  redirect?: boolean;
  /** The L7 rules that allow requests on this key, with the rule that carries each. */
  http?: { rule: HttpRule; from: string }[];
  /** DNS rules: the names whose queries are allowed on this key (the DNS proxy decides). */
  dns?: { rule: DnsRule; from: string }[];
  /** Rules that allow this key without L7 rules: every request passes (the rules are alternatives). */
  allowAllFrom?: string[];
}

/**
 * What the proxy needs to decide a request of a redirected flow: the L7 rules
 * of every redirect entry, and every allow entry without L7 rules that
 * overlaps one (an identity-specific L4 allow shadows a wildcard L7 redirect
 * in the datapath's lookup, and a wildcard L4 allow admits every request of a
 * redirected identity). A request of remote identity X to port p is allowed
 * when no entry covers (X, p) — the flow is not subject to L7 rules — or when
 * an entry covering it (identity X or 0) allows every request or has an HTTP
 * rule that matches. This is the union of the rules, as at L3/L4.
 */
export interface L7Entry {
  identity: number;
  egress: boolean;
  protocol: number;
  port: number;
  prefixLen: number;
  http: { rule: HttpRule; from: string }[];
  /** DNS rules (a DNS redirect entry; absent otherwise). */
  dns?: { rule: DnsRule; from: string }[];
  /** Rules allowing every request on the covered keys (empty: only the HTTP rules). */
  allowAllFrom: string[];
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
  /**
   * The proxy listener port redirect entries carry, per direction. Without it
   * a policy with L7 rules cannot be installed (an entry without the port
   * would let flows bypass the rules): computeMapState throws, and the
   * endpoint fails closed.
   */
  proxyPort?: (egress: boolean, kind: 'http' | 'dns') => number;
}

export class L7PolicyError extends Error {}

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
  /** The proxy's view (see L7Entry); empty when no rule of this endpoint has L7 rules. */
  l7: L7Entry[];
}

/** Rule names, made once per rule: every entry a rule produces, for every identity, refers to the same string. */
const ruleNames = new WeakMap<Rule, string>();

function ruleName(r: Rule): string {
  let name = ruleNames.get(r);
  if (name === undefined) {
    const s = r.source;
    name = `${s.kind}/${s.namespace ? s.namespace + '/' : ''}${s.name}${s.index ? `[${s.index}]` : ''}`;
    ruleNames.set(r, name);
  }
  return name;
}

/**
 * A new entry as one literal with every field, so all entries share one shape
 * (a spread, or fields added later to some, makes V8 build shapes per object;
 * entries are kept per identity).
 */
function newEntry(e: Omit<PolicyEntry, 'derivedFrom'>, from: string): PolicyEntry {
  return {
    identity: e.identity,
    egress: e.egress,
    protocol: e.protocol,
    port: e.port,
    prefixLen: e.prefixLen,
    deny: e.deny,
    proxyPort: e.proxyPort,
    derivedFrom: [from],
    redirect: undefined,
    http: undefined,
    dns: undefined,
    allowAllFrom: undefined,
  };
}

function sameList(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export function computeMapState(input: EndpointPolicyInput): ComputedPolicy {
  const entries: MapState = new Map();
  const add = (e: Omit<PolicyEntry, 'derivedFrom'>, from: string, l7?: L7Rules) => {
    const k = entryKey(e);
    let cur = entries.get(k);
    if (cur) {
      if (e.deny && !cur.deny) {
        entries.set(k, newEntry(e, from));
        return;
      }
      if (e.deny !== cur.deny) return;
      if (!cur.derivedFrom.includes(from)) cur.derivedFrom.push(from);
    } else {
      cur = newEntry(e, from);
      entries.set(k, cur);
    }
    if (cur.deny) return;
    if (l7) {
      cur.redirect = true;
      if (l7.dns) {
        cur.dns ??= [];
        for (const rule of l7.dns) if (!cur.dns.some((h) => h.rule === rule)) cur.dns.push({ rule, from });
      } else {
        cur.http ??= [];
        for (const rule of l7.http) if (!cur.http.some((h) => h.rule === rule)) cur.http.push({ rule, from });
      }
    } else {
      cur.allowAllFrom ??= [];
      if (!cur.allowAllFrom.includes(from)) cur.allowAllFrom.push(from);
    }
  };
  const result: ComputedPolicy = { entries, ingress: { enforced: false }, egress: { enforced: false }, l7: [] };

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
          let l4: { protocol: number; port: number; prefixLen: number; l7?: L7Rules }[];
          if (pr.icmps) l4 = expandIcmps(pr.icmps);
          else if (pr.ports) l4 = pr.ports.flatMap((ps) => expandPorts(ps, (n) => input.namedPorts(dir, pr, n)).map((x) => ({ ...x, l7: ps.l7 })));
          else l4 = [{ protocol: 0, port: 0, prefixLen: 40 }];
          for (const id of ids) for (const p of l4) add({ identity: id, egress, protocol: p.protocol, port: p.port, prefixLen: p.prefixLen, deny }, name, deny ? undefined : p.l7);
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
  result.l7 = l7Table(entries);
  for (const e of entries.values()) {
    if (!e.redirect || e.deny) continue;
    if (e.dns && e.http) throw new L7PolicyError(`${e.egress ? 'egress' : 'ingress'} port ${e.port}/${e.protocol} has both HTTP rules (${e.http.map((h) => h.from).join(', ')}) and DNS rules (${e.dns.map((h) => h.from).join(', ')})`);
    const port = input.proxyPort?.(e.egress, e.dns ? 'dns' : 'http') ?? 0;
    if (!port) throw new L7PolicyError(`L7 rules (${[...(e.http ?? []), ...(e.dns ?? [])].map((h) => h.from).join(', ')}) need the proxy, and no proxy port is configured`);
    e.proxyPort = port;
  }
  // Computations are kept per identity: the lists that grew while rules were added are
  // copied to their exact size, and a rule list equal to the entry's own is shared.
  for (const e of entries.values()) {
    if (e.derivedFrom.length > 1) e.derivedFrom = e.derivedFrom.slice();
    if (e.allowAllFrom) e.allowAllFrom = sameList(e.allowAllFrom, e.derivedFrom) ? e.derivedFrom : e.allowAllFrom.slice();
  }
  return result;
}

/** Do two entries' keys share at least one (protocol, port)? (Identity and direction not compared.) */
export function portsOverlap(a: { protocol: number; port: number; prefixLen: number }, b: { protocol: number; port: number; prefixLen: number }): boolean {
  if (a.prefixLen <= 40 || b.prefixLen <= 40) return true;
  if (a.protocol !== b.protocol) return false;
  const bits = Math.min(a.prefixLen, b.prefixLen) - 48;
  if (bits <= 0) return true;
  const mask = (0xffff << (16 - bits)) & 0xffff;
  return (a.port & mask) === (b.port & mask);
}

/** The proxy's table (L7Entry): redirect entries and the L4 allows that overlap them. */
function l7Table(entries: MapState): L7Entry[] {
  const redirects = [...entries.values()].filter((e) => e.redirect && !e.deny);
  if (!redirects.length) return [];
  const out: L7Entry[] = [];
  for (const e of entries.values()) {
    if (e.deny) continue;
    const base = { identity: e.identity, egress: e.egress, protocol: e.protocol, port: e.port, prefixLen: e.prefixLen };
    if (e.redirect) {
      out.push({ ...base, http: e.http ?? [], ...(e.dns ? { dns: e.dns } : {}), allowAllFrom: e.allowAllFrom ?? [] });
      continue;
    }
    const overlaps = redirects.some(
      (r) => r.egress === e.egress && (r.identity === e.identity || r.identity === ANY_IDENTITY || e.identity === ANY_IDENTITY) && portsOverlap(r, e),
    );
    if (overlaps) out.push({ ...base, http: [], allowAllFrom: e.allowAllFrom ?? e.derivedFrom });
  }
  return out;
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
