/**
 * Translate policy objects, exactly as users write them, into internal rules.
 *
 *  - cilium.io/v2 CiliumNetworkPolicy (namespaced): subject and peer endpoint
 *    selectors are scoped to the policy's namespace unless they name
 *    io.kubernetes.pod.namespace themselves. `ingress: [{}]` selects no peer
 *    (it only turns default deny on); a rule with toPorts/icmps but no peers
 *    applies to every peer.
 *  - cilium.io/v2 CiliumClusterwideNetworkPolicy: the same without scoping.
 *  - networking.k8s.io/v1 NetworkPolicy: podSelector in the policy's namespace,
 *    policyTypes decide default deny, `from`/`to` absent or empty = every peer,
 *    `ingress: [{}]` = allow everything in that direction, port protocol
 *    defaults to TCP, namespaceSelector matches namespace labels.
 *
 * Every problem is reported with its field path and value; nothing is returned
 * unless the whole object is valid.
 */
import { parseCidr, cidrContains } from '../util/ip';
import { labelValueProblems, qualifiedNameProblems } from '../util/k8snames';
import { NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX } from '../identity/labels';
import { RE2JS } from 're2js';
import { nameProblems, patternProblems } from '../fqdn/pattern';
import {
  CidrPeer, DnsRule, Entity, ENTITIES, HeaderMatch, HeaderMismatchAction, HttpRule, IcmpSpec, L7Rules, PeerRule, Peers, PolicySource, PortSpec, Protocol,
  Requirement, Rule, Selector, ServicePeer,
} from './types';

export class PolicyValidationError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid policy:\n  ${problems.join('\n  ')}`);
  }
}

class Problems {
  readonly list: string[] = [];
  add(path: string, msg: string): void {
    this.list.push(`${path}: ${msg}`);
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown) => JSON.stringify(v);

function checkKeys(p: Problems, path: string, o: Obj, allowed: string[], unsupported: Record<string, string> = {}): void {
  for (const k of Object.keys(o)) {
    if (k in unsupported) p.add(`${path}.${k}`, unsupported[k]);
    else if (!allowed.includes(k)) p.add(`${path}.${k}`, `unknown field (allowed: ${allowed.join(', ')})`);
  }
}

function arrayAt(p: Problems, path: string, v: unknown): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) {
    p.add(path, `must be a list, got ${show(v)}`);
    return [];
  }
  return v;
}

// ---------- selectors ----------

/** "k8s:app" -> {source: k8s, key: app}; "app" -> {key: app}; "any:app" -> {key: app}. */
export function splitKey(raw: string): { source?: string; key: string } {
  const colon = raw.indexOf(':');
  if (colon > 0 && !raw.slice(0, colon).includes('/') && !raw.slice(0, colon).includes('.')) {
    const source = raw.slice(0, colon);
    return { source: source === 'any' ? undefined : source, key: raw.slice(colon + 1) };
  }
  return { key: raw };
}

const OPERATORS = ['In', 'NotIn', 'Exists', 'DoesNotExist'];

/**
 * A selector's label key, validated as Kubernetes validates label keys once the
 * reference system's source prefix ("k8s:", "any:", ...) is taken off. Keys of
 * the reserved and cidr sources name identities, not labels, and are not checked.
 */
function checkLabelKey(p: Problems, path: string, raw: string, source: string | undefined, key: string): boolean {
  if (!key) {
    p.add(path, `empty label key ${show(raw)}`);
    return false;
  }
  if (source === 'reserved' || source === 'cidr') return true;
  const bad = qualifiedNameProblems(key);
  if (bad.length) p.add(path, `key ${show(raw)} is not a valid label key: ${bad.join('; ')}`);
  return bad.length === 0;
}

export function parseSelector(p: Problems, path: string, v: unknown, keyPrefix = ''): Selector | undefined {
  if (!isObj(v)) {
    p.add(path, `must be a label selector object, got ${show(v)}`);
    return undefined;
  }
  checkKeys(p, path, v, ['matchLabels', 'matchExpressions']);
  const requirements: Requirement[] = [];
  if (v.matchLabels !== undefined) {
    if (!isObj(v.matchLabels)) p.add(`${path}.matchLabels`, `must be a map of label key to value, got ${show(v.matchLabels)}`);
    else
      for (const [k, val] of Object.entries(v.matchLabels)) {
        const { source, key } = splitKey(k);
        if (!checkLabelKey(p, `${path}.matchLabels`, k, source, key)) continue;
        const bad = labelValueProblems(val);
        if (bad.length) {
          p.add(`${path}.matchLabels.${k}`, `value ${show(val)} is not a valid label value: ${bad.join('; ')}`);
          continue;
        }
        requirements.push({ key: keyPrefix + key, source, operator: 'In', values: [val as string] });
      }
  }
  arrayAt(p, `${path}.matchExpressions`, v.matchExpressions).forEach((e, i) => {
    const ep = `${path}.matchExpressions[${i}]`;
    if (!isObj(e)) return p.add(ep, `must be an object, got ${show(e)}`);
    checkKeys(p, ep, e, ['key', 'operator', 'values']);
    if (typeof e.key !== 'string' || !e.key) return p.add(`${ep}.key`, `must be a non-empty string, got ${show(e.key)}`);
    if (typeof e.operator !== 'string' || !OPERATORS.includes(e.operator)) {
      return p.add(`${ep}.operator`, `${show(e.operator)} is not one of ${OPERATORS.join(', ')}`);
    }
    const split = splitKey(e.key);
    if (!checkLabelKey(p, `${ep}.key`, e.key, split.source, split.key)) return;
    const values = arrayAt(p, `${ep}.values`, e.values).flatMap((x, j) => {
      const bad = labelValueProblems(x);
      if (bad.length) p.add(`${ep}.values[${j}]`, `${show(x)} is not a valid label value: ${bad.join('; ')}`);
      return bad.length ? [] : [x as string];
    });
    if ((e.operator === 'In' || e.operator === 'NotIn') && values.length === 0) p.add(`${ep}.values`, `must not be empty for operator ${e.operator}`);
    if ((e.operator === 'Exists' || e.operator === 'DoesNotExist') && values.length > 0) p.add(`${ep}.values`, `must be empty for operator ${e.operator}`);
    const { source, key } = splitKey(e.key);
    requirements.push({ key: keyPrefix + key, source, operator: e.operator as Requirement['operator'], values });
  });
  return { requirements };
}

function namesNamespace(s: Selector): boolean {
  return s.requirements.some((r) => r.key === NAMESPACE_LABEL);
}

function selectsReserved(s: Selector): boolean {
  return s.requirements.some((r) => r.source === 'reserved');
}

/** CNP implicit scoping: add the policy's namespace unless the selector names one itself. */
function scoped(s: Selector, namespace: string | undefined): Selector {
  if (!namespace || namesNamespace(s) || selectsReserved(s)) return s;
  return { requirements: [...s.requirements, { key: NAMESPACE_LABEL, source: 'k8s', operator: 'In', values: [namespace] }] };
}

// ---------- ports, ICMP, CIDR, entities ----------

const NAMED_PORT_RE = /^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/;

function parsePort(p: Problems, path: string, v: unknown): number | string | undefined {
  if (v === undefined || v === null || v === '') return 0;
  if (typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v))) {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0 || n > 65535) {
      p.add(path, `port ${show(v)} is out of range 0-65535`);
      return undefined;
    }
    return n;
  }
  if (typeof v === 'string') {
    if (!NAMED_PORT_RE.test(v) || !/[a-z]/.test(v)) {
      p.add(path, `${show(v)} is neither a port number nor a valid port name (lowercase letters, digits and '-', at most 15)`);
      return undefined;
    }
    return v;
  }
  p.add(path, `must be a port number or name, got ${show(v)}`);
  return undefined;
}

function parseProtocol(p: Problems, path: string, v: unknown, dflt: Protocol, allowed: Protocol[]): Protocol {
  if (v === undefined || v === null || v === '') return dflt;
  const s = String(v).toUpperCase() as Protocol;
  if (typeof v !== 'string' || !allowed.includes(s)) {
    p.add(path, `${show(v)} is not one of ${allowed.join(', ')}`);
    return dflt;
  }
  return s;
}

function parseEndPort(p: Problems, path: string, v: unknown, port: number | string | undefined): number | undefined {
  if (v === undefined || v === null || v === 0) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) {
    p.add(path, `must be a port number 1-65535, got ${show(v)}`);
    return undefined;
  }
  if (typeof port === 'string') p.add(path, `cannot be used with the named port ${show(port)}`);
  else if (typeof port === 'number' && v < port) p.add(path, `${v} is lower than port ${port}`);
  return v;
}

const ICMP4_TYPES: Record<string, number> = {
  EchoReply: 0,
  DestinationUnreachable: 3,
  Redirect: 5,
  Echo: 8,
  EchoRequest: 8,
  RouterAdvertisement: 9,
  RouterSelection: 10,
  TimeExceeded: 11,
  ParameterProblem: 12,
  Timestamp: 13,
  TimestampReply: 14,
  Photuris: 40,
  ExtendedEchoRequest: 42,
  ExtendedEchoReply: 43,
};
const ICMP6_TYPES: Record<string, number> = {
  DestinationUnreachable: 1,
  PacketTooBig: 2,
  TimeExceeded: 3,
  ParameterProblem: 4,
  EchoRequest: 128,
  EchoReply: 129,
  MulticastListenerQuery: 130,
  RouterSolicitation: 133,
  RouterAdvertisement: 134,
  NeighborSolicitation: 135,
  NeighborAdvertisement: 136,
};

function parseIcmps(p: Problems, path: string, v: unknown): IcmpSpec[] {
  const out: IcmpSpec[] = [];
  arrayAt(p, path, v).forEach((rule, i) => {
    const rp = `${path}[${i}]`;
    if (!isObj(rule)) return p.add(rp, `must be an object, got ${show(rule)}`);
    checkKeys(p, rp, rule, ['fields']);
    arrayAt(p, `${rp}.fields`, rule.fields).forEach((f, j) => {
      const fp = `${rp}.fields[${j}]`;
      if (!isObj(f)) return p.add(fp, `must be an object, got ${show(f)}`);
      checkKeys(p, fp, f, ['type', 'family']);
      const family = f.family === undefined ? 'IPv4' : f.family;
      if (family !== 'IPv4' && family !== 'IPv6') return p.add(`${fp}.family`, `${show(f.family)} is not IPv4 or IPv6`);
      let type: number | undefined;
      if (typeof f.type === 'number' && Number.isInteger(f.type) && f.type >= 0 && f.type <= 255) type = f.type;
      else if (typeof f.type === 'string' && /^\d+$/.test(f.type) && Number(f.type) <= 255) type = Number(f.type);
      else if (typeof f.type === 'string') type = (family === 'IPv4' ? ICMP4_TYPES : ICMP6_TYPES)[f.type];
      if (type === undefined) return p.add(`${fp}.type`, `${show(f.type)} is not an ICMP type number 0-255 or a known ${family} type name`);
      out.push({ family, type });
    });
  });
  return out;
}

/**
 * A CIDR as written in a policy: a string without whitespace; `requirePrefix`
 * (Kubernetes ipBlock) demands address/prefix-length, otherwise a bare address
 * means a host prefix (the reference system's toCIDR). Host bits are cleared.
 */
function parseCidrText(p: Problems, path: string, v: unknown, requirePrefix = false): string | undefined {
  if (typeof v !== 'string') {
    p.add(path, `must be a CIDR string, got ${show(v)}`);
    return undefined;
  }
  if (/\s/.test(v)) {
    p.add(path, `${show(v)} is not a valid CIDR: it contains whitespace`);
    return undefined;
  }
  if (requirePrefix && !v.includes('/')) {
    p.add(path, `${show(v)} is not a valid CIDR (expected address/prefix-length, e.g. "10.0.0.0/8")`);
    return undefined;
  }
  try {
    const c = parseCidr(v.includes('/') ? v : `${v}/${v.includes(':') ? 128 : 32}`, path);
    return `${c.addr.family === 4 ? c.addr.bytes.subarray(0, 4).join('.') : v.split('/')[0]}/${c.prefixLen}`;
  } catch (e) {
    p.add(path, `${show(v)} is not a valid CIDR`);
    return undefined;
  }
}

/**
 * cidr + except. `strict` (Kubernetes ipBlock): cidr needs a prefix length and
 * each except must be a strict subset of cidr; otherwise (the reference
 * system's CIDRRule) an except may equal the cidr.
 */
function parseCidrSet(p: Problems, path: string, v: unknown, strict = false): CidrPeer | undefined {
  if (!isObj(v)) {
    p.add(path, `must be an object with cidr and except, got ${show(v)}`);
    return undefined;
  }
  checkKeys(p, path, v, ['cidr', 'except'], { cidrGroupRef: 'CIDR groups are not supported yet', cidrGroupSelector: 'CIDR groups are not supported yet' });
  if (v.cidr === undefined || v.cidr === '') {
    p.add(`${path}.cidr`, 'is required');
    return undefined;
  }
  const cidr = parseCidrText(p, `${path}.cidr`, v.cidr, strict);
  const except: string[] = [];
  arrayAt(p, `${path}.except`, v.except).forEach((e, i) => {
    const c = parseCidrText(p, `${path}.except[${i}]`, e, strict);
    if (!c || !cidr) return;
    const outer = parseCidr(cidr);
    const inner = parseCidr(c);
    if (inner.prefixLen < outer.prefixLen || !cidrContains(outer, inner.addr)) p.add(`${path}.except[${i}]`, `${show(e)} is not inside ${cidr}`);
    else if (strict && inner.prefixLen === outer.prefixLen) p.add(`${path}.except[${i}]`, `${show(e)} must be a strict subset of cidr ${cidr}`);
    else except.push(c);
  });
  return cidr ? { cidr, except } : undefined;
}

function parseEntities(p: Problems, path: string, v: unknown): Entity[] {
  return arrayAt(p, path, v).flatMap((e, i) => {
    if (typeof e !== 'string' || !ENTITIES.includes(e as Entity)) {
      p.add(`${path}[${i}]`, `${show(e)} is not an entity (${ENTITIES.join(', ')})`);
      return [];
    }
    return [e as Entity];
  });
}

// ---------- CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy ----------

const UNSUPPORTED_PEERS: Record<string, string> = {
  fromRequires: 'fromRequires is deprecated and not supported',
  toRequires: 'toRequires is deprecated and not supported',
  fromNodes: 'node selectors are not supported yet (use fromEntities: [host, remote-node])',
  toNodes: 'node selectors are not supported yet (use toEntities: [host, remote-node])',
  fromGroups: 'cloud groups are not supported',
  toGroups: 'cloud groups are not supported',
  authentication: 'mutual authentication is not supported',
};

const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const MISMATCH_ACTIONS = ['LOG', 'ADD', 'DELETE', 'REPLACE'];

/** A regular expression of an HTTP rule: RE2 syntax (as the reference system's proxy), matched against the whole value. */
function parseHttpRegex(p: Problems, path: string, v: unknown): string | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') {
    p.add(path, `must be a regular expression string, got ${show(v)}`);
    return undefined;
  }
  try {
    RE2JS.compile(v);
  } catch (e) {
    p.add(path, `${show(v)} is not a valid regular expression: ${(e as Error).message}`);
    return undefined;
  }
  return v;
}

function parseHttpRule(p: Problems, path: string, v: unknown): HttpRule | undefined {
  if (!isObj(v)) {
    p.add(path, `must be an object with method, path, host, headers or headerMatches, got ${show(v)}`);
    return undefined;
  }
  checkKeys(p, path, v, ['method', 'path', 'host', 'headers', 'headerMatches']);
  const rule: HttpRule = {};
  const method = parseHttpRegex(p, `${path}.method`, v.method);
  if (method !== undefined) rule.method = method;
  const rpath = parseHttpRegex(p, `${path}.path`, v.path);
  if (rpath !== undefined) rule.path = rpath;
  const host = parseHttpRegex(p, `${path}.host`, v.host);
  if (host !== undefined) rule.host = host;
  const headers: string[] = [];
  arrayAt(p, `${path}.headers`, v.headers).forEach((h, i) => {
    const hp = `${path}.headers[${i}]`;
    if (typeof h !== 'string' || !h.trim()) return p.add(hp, `must be "Name" or "Name: value", got ${show(h)}`);
    const name = h.trim().split(' ', 1)[0].replace(/:$/, '');
    if (!HEADER_NAME_RE.test(name)) return p.add(hp, `${show(h)}: ${show(name)} is not a valid header name`);
    headers.push(h.trim());
  });
  if (headers.length) rule.headers = headers;
  const matches: HeaderMatch[] = [];
  arrayAt(p, `${path}.headerMatches`, v.headerMatches).forEach((m, i) => {
    const mp = `${path}.headerMatches[${i}]`;
    if (!isObj(m)) return p.add(mp, `must be an object {name, value, mismatch}, got ${show(m)}`);
    checkKeys(p, mp, m, ['name', 'value', 'mismatch'], { secret: 'header values from secrets are not supported' });
    if (typeof m.name !== 'string' || !HEADER_NAME_RE.test(m.name)) return p.add(`${mp}.name`, `must be a header name, got ${show(m.name)}`);
    if (m.value !== undefined && typeof m.value !== 'string') return p.add(`${mp}.value`, `must be a string, got ${show(m.value)}`);
    if (m.mismatch !== undefined && m.mismatch !== '' && (typeof m.mismatch !== 'string' || !MISMATCH_ACTIONS.includes(m.mismatch))) {
      return p.add(`${mp}.mismatch`, `${show(m.mismatch)} is not one of ${MISMATCH_ACTIONS.join(', ')}`);
    }
    if ((m.mismatch === 'ADD' || m.mismatch === 'REPLACE') && !m.value) return p.add(`${mp}.value`, `is required with mismatch ${m.mismatch}`);
    const hm: HeaderMatch = { name: m.name };
    if (m.value !== undefined && m.value !== '') hm.value = m.value as string;
    if (m.mismatch) hm.mismatch = m.mismatch as HeaderMismatchAction;
    matches.push(hm);
  });
  if (matches.length) rule.headerMatches = matches;
  return rule;
}

/**
 * A DNS rule or toFQDNs selector: exactly one of matchName / matchPattern,
 * valid as the reference system defines them (src/fqdn/pattern.ts).
 */
function parseNameSelector(p: Problems, path: string, v: unknown): DnsRule | undefined {
  if (!isObj(v)) {
    p.add(path, `must be an object with matchName or matchPattern, got ${show(v)}`);
    return undefined;
  }
  checkKeys(p, path, v, ['matchName', 'matchPattern']);
  const hasName = v.matchName !== undefined && v.matchName !== '';
  const hasPattern = v.matchPattern !== undefined && v.matchPattern !== '';
  if (hasName === hasPattern) {
    p.add(path, hasName ? 'takes only one of matchName and matchPattern' : 'needs matchName or matchPattern');
    return undefined;
  }
  if (hasName) {
    const bad = nameProblems(v.matchName);
    if (bad.length) return void p.add(`${path}.matchName`, `${show(v.matchName)} ${bad.join('; ')}`);
    return { matchName: v.matchName as string };
  }
  const bad = patternProblems(v.matchPattern);
  if (bad.length) return void p.add(`${path}.matchPattern`, `${show(v.matchPattern)} ${bad.join('; ')}`);
  return { matchPattern: v.matchPattern as string };
}

/** toPorts[].rules: HTTP or DNS rules; every other L7 protocol is rejected by name. Returns undefined for no (or empty) rules. */
function parseL7Rules(p: Problems, path: string, v: unknown, dir: 'ingress' | 'egress'): L7Rules | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) {
    p.add(path, `must be an object with http or dns rules, got ${show(v)}`);
    return undefined;
  }
  checkKeys(p, path, v, ['http', 'dns'], {
    kafka: 'Kafka rules are not supported (only HTTP and DNS L7 rules are)',
    l7proto: 'generic L7 protocols are not supported (only HTTP and DNS L7 rules are)',
    l7: 'generic L7 protocols are not supported (only HTTP and DNS L7 rules are)',
  });
  const http: HttpRule[] = [];
  arrayAt(p, `${path}.http`, v.http).forEach((r, i) => {
    const rule = parseHttpRule(p, `${path}.http[${i}]`, r);
    if (rule) http.push(rule);
  });
  const dns: DnsRule[] = [];
  arrayAt(p, `${path}.dns`, v.dns).forEach((r, i) => {
    const rule = parseNameSelector(p, `${path}.dns[${i}]`, r);
    if (rule) dns.push(rule);
  });
  if (http.length && dns.length) p.add(path, 'a toPorts entry takes HTTP or DNS rules, not both');
  if (dns.length && dir === 'ingress') p.add(`${path}.dns`, 'DNS rules apply to egress only (the DNS proxy sees the queries pods send)');
  if (dns.length) return { http: [], dns };
  return http.length ? { http } : undefined;
}

function parseCiliumPorts(p: Problems, path: string, v: unknown, deny: boolean, dir: 'ingress' | 'egress'): PortSpec[] | undefined {
  const ports: PortSpec[] = [];
  const list = arrayAt(p, path, v);
  list.forEach((pr, i) => {
    const pp = `${path}[${i}]`;
    if (!isObj(pr)) return p.add(pp, `must be an object, got ${show(pr)}`);
    checkKeys(p, pp, pr, deny ? ['ports'] : ['ports', 'rules'], {
      ...(deny ? { rules: 'deny rules cannot carry L7 rules' } : {}),
      serverNames: 'serverNames (TLS SNI) is not supported yet',
      listener: 'listeners are not supported',
      terminatingTLS: 'TLS interception is not supported',
      originatingTLS: 'TLS interception is not supported',
    });
    const l7 = deny ? undefined : parseL7Rules(p, `${pp}.rules`, pr.rules, dir);
    const entries = arrayAt(p, `${pp}.ports`, pr.ports);
    if (entries.length === 0) {
      if (l7) p.add(`${pp}.rules`, 'L7 rules need a port: add ports to this toPorts entry');
      ports.push({ port: 0, protocol: 'ANY' });
    }
    entries.forEach((e, j) => {
      const ep = `${pp}.ports[${j}]`;
      if (!isObj(e)) return p.add(ep, `must be an object, got ${show(e)}`);
      checkKeys(p, ep, e, ['port', 'endPort', 'protocol']);
      const port = parsePort(p, `${ep}.port`, e.port);
      const endPort = parseEndPort(p, `${ep}.endPort`, e.endPort, port);
      let protocol = parseCiliumProtocol(p, `${ep}`, e.protocol, port, endPort);
      if (l7?.dns && protocol) {
        // DNS runs over UDP and TCP: protocol ANY means both (never SCTP).
        if (protocol !== 'TCP' && protocol !== 'UDP' && protocol !== 'ANY') p.add(`${ep}.protocol`, `${show(e.protocol)}: DNS rules apply to UDP and TCP ports only`);
        if (port === 0) p.add(`${ep}.port`, 'DNS rules need a port (usually 53; 0 means every port)');
        if (endPort !== undefined) p.add(`${ep}.endPort`, 'DNS rules take one port, not a range');
        if (protocol === 'ANY') {
          if (port !== undefined) ports.push({ port, protocol: 'UDP', l7 }, { port, protocol: 'TCP', l7 });
          return;
        }
      } else if (l7 && protocol) {
        // HTTP runs over TCP: an L7 rule on protocol ANY applies to TCP only.
        if (protocol !== 'TCP' && protocol !== 'ANY') p.add(`${ep}.protocol`, `${show(e.protocol)}: HTTP rules apply to TCP ports only`);
        protocol = 'TCP';
        if (port === 0) p.add(`${ep}.port`, 'L7 rules need a port (0 means every port)');
      }
      if (port !== undefined && protocol) ports.push({ port, endPort, protocol, ...(l7 ? { l7 } : {}) });
    });
  });
  return list.length ? ports : undefined;
}

/** Protocols of the reference system's toPorts that Membrane does not enforce yet. */
const NOT_SUPPORTED_PROTOCOLS: Record<string, string> = {
  ICMPV6: 'ICMPv6 in toPorts is not supported yet (IPv6 is not wired in the datapath)',
  VRRP: 'VRRP is not supported yet',
  IGMP: 'IGMP is not supported yet',
};

/**
 * toPorts protocol: TCP, UDP, SCTP, ANY (default), or ICMP, whose port is the
 * ICMP type (0-255; 0 or none = every type), as in the reference system.
 */
function parseCiliumProtocol(p: Problems, path: string, v: unknown, port: number | string | undefined, endPort: number | undefined): Protocol | undefined {
  const name = typeof v === 'string' ? v.toUpperCase() : undefined;
  if (name && name in NOT_SUPPORTED_PROTOCOLS) {
    p.add(`${path}.protocol`, `${show(v)}: ${NOT_SUPPORTED_PROTOCOLS[name]}`);
    return undefined;
  }
  const protocol = parseProtocol(p, `${path}.protocol`, v, 'ANY', ['TCP', 'UDP', 'SCTP', 'ANY', 'ICMP']);
  if (protocol === 'ICMP') {
    if (typeof port === 'string') p.add(`${path}.port`, `${show(port)}: an ICMP port is an ICMP type number, not a port name`);
    else if (typeof port === 'number' && port > 255) p.add(`${path}.port`, `${port} is not an ICMP type (0-255)`);
    if (endPort !== undefined) p.add(`${path}.endPort`, 'cannot be used with protocol ICMP');
  }
  return protocol;
}

/** Rule fields of the reference system that Membrane does not support yet (named, never "unknown field"). */
const NOT_SUPPORTED_RULE_FIELDS: Record<string, string> = {
  auth: 'auth (mutual authentication) is not supported',
};

function parseCiliumRule(p: Problems, path: string, v: unknown, dir: 'ingress' | 'egress', deny: boolean, namespace: string | undefined): PeerRule | undefined {
  if (!isObj(v)) {
    p.add(path, `must be an object, got ${show(v)}`);
    return undefined;
  }
  const f = dir === 'ingress' ? 'from' : 'to';
  const allowed = [`${f}Endpoints`, `${f}CIDR`, `${f}CIDRSet`, `${f}Entities`, 'toPorts', 'icmps', ...(dir === 'egress' ? ['toServices', 'toFQDNs'] : [])];
  checkKeys(p, path, v, allowed, {
    ...UNSUPPORTED_PEERS,
    ...NOT_SUPPORTED_RULE_FIELDS,
    ...(dir === 'ingress' ? { toFQDNs: 'toFQDNs is an egress peer' } : {}),
  });
  const peers: Peers = { selectors: [], entities: [], cidrs: [] };
  const eps = v[`${f}Endpoints`];
  arrayAt(p, `${path}.${f}Endpoints`, eps).forEach((s, i) => {
    const sel = parseSelector(p, `${path}.${f}Endpoints[${i}]`, s);
    if (sel) peers.selectors.push(scoped(sel, namespace));
  });
  arrayAt(p, `${path}.${f}CIDR`, v[`${f}CIDR`]).forEach((c, i) => {
    const cidr = parseCidrText(p, `${path}.${f}CIDR[${i}]`, c);
    if (cidr) peers.cidrs.push({ cidr, except: [] });
  });
  arrayAt(p, `${path}.${f}CIDRSet`, v[`${f}CIDRSet`]).forEach((c, i) => {
    const set = parseCidrSet(p, `${path}.${f}CIDRSet[${i}]`, c);
    if (set) peers.cidrs.push(set);
  });
  peers.entities.push(...parseEntities(p, `${path}.${f}Entities`, v[`${f}Entities`]));
  if (peers.entities.includes('all')) peers.any = true;
  if (dir === 'egress' && v.toServices !== undefined) {
    peers.services = [];
    arrayAt(p, `${path}.toServices`, v.toServices).forEach((sv, i) => {
      const sp = `${path}.toServices[${i}]`;
      if (!isObj(sv)) return p.add(sp, `must be an object with k8sService or k8sServiceSelector, got ${show(sv)}`);
      checkKeys(p, sp, sv, ['k8sService', 'k8sServiceSelector']);
      const ref = sv.k8sService ?? sv.k8sServiceSelector;
      if (!isObj(ref) || (sv.k8sService !== undefined && sv.k8sServiceSelector !== undefined)) {
        return p.add(sp, 'needs exactly one of k8sService {serviceName, namespace} or k8sServiceSelector {selector, namespace}');
      }
      const ns = ref.namespace ?? namespace ?? 'default';
      if (typeof ns !== 'string' || !ns) return p.add(`${sp}.namespace`, `must be a namespace name, got ${show(ref.namespace)}`);
      if (sv.k8sService !== undefined) {
        checkKeys(p, `${sp}.k8sService`, ref, ['serviceName', 'namespace']);
        if (typeof ref.serviceName !== 'string' || !ref.serviceName) return p.add(`${sp}.k8sService.serviceName`, `is required, got ${show(ref.serviceName)}`);
        peers.services!.push({ namespace: ns, name: ref.serviceName } satisfies ServicePeer);
      } else {
        checkKeys(p, `${sp}.k8sServiceSelector`, ref, ['selector', 'namespace']);
        const sel = parseSelector(p, `${sp}.k8sServiceSelector.selector`, ref.selector ?? {});
        if (sel) peers.services!.push({ namespace: ns, selector: sel });
      }
    });
  }
  if (dir === 'egress' && v.toFQDNs !== undefined) {
    if (deny) p.add(`${path}.toFQDNs`, 'toFQDNs cannot be used in deny rules');
    const others = [`${f}Endpoints`, `${f}CIDR`, `${f}CIDRSet`, `${f}Entities`, 'toServices'].filter((k) => v[k] !== undefined);
    if (others.length) p.add(`${path}.toFQDNs`, `cannot be combined with ${others.join(', ')} in the same rule`);
    peers.fqdns = [];
    arrayAt(p, `${path}.toFQDNs`, v.toFQDNs).forEach((s, i) => {
      const sel = parseNameSelector(p, `${path}.toFQDNs[${i}]`, s);
      if (sel) peers.fqdns!.push(sel);
    });
  }
  const hasPeerFields = [`${f}Endpoints`, `${f}CIDR`, `${f}CIDRSet`, `${f}Entities`, ...(dir === 'egress' ? ['toServices', 'toFQDNs'] : [])].some((k) => v[k] !== undefined);
  const ports = parseCiliumPorts(p, `${path}.toPorts`, v.toPorts, deny, dir);
  const icmps = v.icmps !== undefined ? parseIcmps(p, `${path}.icmps`, v.icmps) : undefined;
  if (ports && icmps) p.add(path, 'toPorts and icmps cannot be used in the same rule');
  // Only ports/ICMP and no peer field: the rule applies to every peer. Nothing at all: no peer.
  if (!hasPeerFields && (ports || icmps)) peers.any = true;
  return { peers, ports, icmps };
}

function parseCiliumSpec(p: Problems, path: string, spec: unknown, source: PolicySource, namespace: string | undefined, clusterwide: boolean): Rule | undefined {
  if (!isObj(spec)) {
    p.add(path, `must be an object, got ${show(spec)}`);
    return undefined;
  }
  checkKeys(p, path, spec, ['endpointSelector', 'ingress', 'ingressDeny', 'egress', 'egressDeny', 'enableDefaultDeny', 'description', 'labels', 'log'], {
    nodeSelector: 'host policies (nodeSelector) are not supported yet',
  });
  if (spec.endpointSelector === undefined && spec.nodeSelector === undefined) p.add(`${path}.endpointSelector`, 'is required');
  // Rule labels (reference system): "source:key=value" strings or {key, value, source} objects.
  arrayAt(p, `${path}.labels`, spec.labels).forEach((l, i) => {
    if (typeof l === 'string' && l !== '') return;
    if (isObj(l) && typeof l.key === 'string' && l.key !== '') return checkKeys(p, `${path}.labels[${i}]`, l, ['key', 'value', 'source']);
    p.add(`${path}.labels[${i}]`, `${show(l)} is not a label ("key=value" or {key, value, source})`);
  });
  if (spec.description !== undefined && typeof spec.description !== 'string') p.add(`${path}.description`, `must be a string, got ${show(spec.description)}`);
  const sel = spec.endpointSelector !== undefined ? parseSelector(p, `${path}.endpointSelector`, spec.endpointSelector) : undefined;
  const subject = sel ? (clusterwide ? sel : scoped(sel, namespace)) : { requirements: [] };
  const rules = (k: 'ingress' | 'ingressDeny' | 'egress' | 'egressDeny'): PeerRule[] =>
    arrayAt(p, `${path}.${k}`, spec[k]).flatMap((r, i) => {
      const pr = parseCiliumRule(p, `${path}.${k}[${i}]`, r, k.startsWith('ingress') ? 'ingress' : 'egress', k.endsWith('Deny'), clusterwide ? undefined : namespace);
      return pr ? [pr] : [];
    });
  const edd = spec.enableDefaultDeny;
  let eddIngress: boolean | undefined;
  let eddEgress: boolean | undefined;
  if (edd !== undefined) {
    if (!isObj(edd)) p.add(`${path}.enableDefaultDeny`, `must be an object {ingress, egress}, got ${show(edd)}`);
    else {
      checkKeys(p, `${path}.enableDefaultDeny`, edd, ['ingress', 'egress']);
      for (const k of ['ingress', 'egress'] as const) {
        if (edd[k] !== undefined && typeof edd[k] !== 'boolean') p.add(`${path}.enableDefaultDeny.${k}`, `must be true or false, got ${show(edd[k])}`);
      }
      eddIngress = edd.ingress as boolean | undefined;
      eddEgress = edd.egress as boolean | undefined;
    }
  }
  const r: Rule = {
    source,
    subject,
    ingress: rules('ingress'),
    ingressDeny: rules('ingressDeny'),
    egress: rules('egress'),
    egressDeny: rules('egressDeny'),
    defaultDeny: { ingress: false, egress: false },
  };
  const hasIngress = spec.ingress !== undefined || spec.ingressDeny !== undefined;
  const hasEgress = spec.egress !== undefined || spec.egressDeny !== undefined;
  r.defaultDeny.ingress = eddIngress ?? hasIngress;
  r.defaultDeny.egress = eddEgress ?? hasEgress;
  return r;
}

// ---------- Kubernetes NetworkPolicy ----------

function parseK8sPeer(p: Problems, path: string, v: unknown, namespace: string, peers: Peers): void {
  if (!isObj(v)) return p.add(path, `must be an object, got ${show(v)}`);
  checkKeys(p, path, v, ['podSelector', 'namespaceSelector', 'ipBlock']);
  if (v.ipBlock !== undefined) {
    if (v.podSelector !== undefined || v.namespaceSelector !== undefined) p.add(path, 'ipBlock cannot be combined with podSelector or namespaceSelector');
    const b = v.ipBlock;
    if (!isObj(b)) return p.add(`${path}.ipBlock`, `must be an object, got ${show(b)}`);
    const set = parseCidrSet(p, `${path}.ipBlock`, b, true);
    // Kubernetes defines ipBlock on addresses, pod and node addresses included.
    if (set) peers.cidrs.push({ ...set, byAddress: true });
    return;
  }
  if (v.podSelector === undefined && v.namespaceSelector === undefined) return p.add(path, 'needs podSelector, namespaceSelector or ipBlock');
  const reqs: Requirement[] = [];
  if (v.podSelector !== undefined) {
    const s = parseSelector(p, `${path}.podSelector`, v.podSelector);
    if (s) reqs.push(...s.requirements.map((r) => ({ ...r, source: 'k8s' })));
  }
  if (v.namespaceSelector !== undefined) {
    const s = parseSelector(p, `${path}.namespaceSelector`, v.namespaceSelector, NAMESPACE_LABELS_PREFIX);
    if (s) reqs.push(...s.requirements.map((r) => ({ ...r, source: 'k8s' })));
    // Pods only: every pod carries its namespace label; reserved identities do not.
    reqs.push({ key: NAMESPACE_LABEL, source: 'k8s', operator: 'Exists', values: [] });
  } else {
    reqs.push({ key: NAMESPACE_LABEL, source: 'k8s', operator: 'In', values: [namespace] });
  }
  peers.selectors.push({ requirements: reqs });
}

function parseK8sRule(p: Problems, path: string, v: unknown, dir: 'ingress' | 'egress', namespace: string): PeerRule | undefined {
  if (!isObj(v)) {
    p.add(path, `must be an object, got ${show(v)}`);
    return undefined;
  }
  const f = dir === 'ingress' ? 'from' : 'to';
  checkKeys(p, path, v, [f, 'ports']);
  const peers: Peers = { selectors: [], entities: [], cidrs: [] };
  const list = arrayAt(p, `${path}.${f}`, v[f]);
  if (list.length === 0) peers.any = true; // absent or empty: every peer
  list.forEach((peer, i) => parseK8sPeer(p, `${path}.${f}[${i}]`, peer, namespace, peers));
  const portsList = arrayAt(p, `${path}.ports`, v.ports);
  let ports: PortSpec[] | undefined;
  if (portsList.length) {
    ports = [];
    portsList.forEach((e, j) => {
      const ep = `${path}.ports[${j}]`;
      if (!isObj(e)) return p.add(ep, `must be an object, got ${show(e)}`);
      checkKeys(p, ep, e, ['port', 'endPort', 'protocol']);
      const port = parsePort(p, `${ep}.port`, e.port);
      const endPort = parseEndPort(p, `${ep}.endPort`, e.endPort, port);
      const protocol = parseProtocol(p, `${ep}.protocol`, e.protocol, 'TCP', ['TCP', 'UDP', 'SCTP']);
      if (port !== undefined) ports!.push({ port, endPort, protocol });
    });
  }
  return { peers, ports };
}

function parseK8sPolicy(p: Problems, spec: unknown, namespace: string, source: PolicySource): Rule | undefined {
  if (!isObj(spec)) {
    p.add('spec', `must be an object, got ${show(spec)}`);
    return undefined;
  }
  checkKeys(p, 'spec', spec, ['podSelector', 'policyTypes', 'ingress', 'egress']);
  if (spec.podSelector === undefined) p.add('spec.podSelector', 'is required (use {} to select every pod in the namespace)');
  const sel = spec.podSelector !== undefined ? parseSelector(p, 'spec.podSelector', spec.podSelector) : undefined;
  const subject: Selector = {
    requirements: [...(sel?.requirements ?? []).map((r) => ({ ...r, source: 'k8s' })), { key: NAMESPACE_LABEL, source: 'k8s', operator: 'In', values: [namespace] }],
  };
  // Kubernetes' defaulting: policyTypes omitted, null or [] means Ingress, plus
  // Egress only when the egress list is non-empty (`egress: []` or null isolates nothing).
  const given = arrayAt(p, 'spec.policyTypes', spec.policyTypes);
  given.forEach((t, i) => {
    if (t !== 'Ingress' && t !== 'Egress') p.add(`spec.policyTypes[${i}]`, `${show(t)} is not Ingress or Egress`);
    else if (given.indexOf(t) !== i) p.add(`spec.policyTypes[${i}]`, `${show(t)} is listed twice`);
  });
  const egressGiven = Array.isArray(spec.egress) && spec.egress.length > 0;
  const types: string[] = given.length ? (given as string[]) : ['Ingress', ...(egressGiven ? ['Egress'] : [])];
  const rules = (k: 'ingress' | 'egress') =>
    arrayAt(p, `spec.${k}`, spec[k]).flatMap((r, i) => {
      const pr = parseK8sRule(p, `spec.${k}[${i}]`, r, k, namespace);
      return pr ? [pr] : [];
    });
  return {
    source,
    subject,
    ingress: types.includes('Ingress') ? rules('ingress') : [],
    ingressDeny: [],
    egress: types.includes('Egress') ? rules('egress') : [],
    egressDeny: [],
    defaultDeny: { ingress: types.includes('Ingress'), egress: types.includes('Egress') },
  };
}

// ---------- entry point ----------

export interface PolicyObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; [k: string]: unknown };
  spec?: unknown;
  specs?: unknown;
  [k: string]: unknown;
}

export const POLICY_KINDS = {
  CiliumNetworkPolicy: 'cilium.io/v2',
  CiliumClusterwideNetworkPolicy: 'cilium.io/v2',
  NetworkPolicy: 'networking.k8s.io/v1',
} as const;

export function isPolicyKind(kind: unknown): kind is keyof typeof POLICY_KINDS {
  return typeof kind === 'string' && kind in POLICY_KINDS;
}

/** Translate one policy object; throws PolicyValidationError listing every problem. */
export function translatePolicy(obj: PolicyObject): Rule[] {
  const p = new Problems();
  const kind = obj.kind;
  if (!isPolicyKind(kind)) throw new PolicyValidationError([`kind: ${show(kind)} is not a policy kind (${Object.keys(POLICY_KINDS).join(', ')})`]);
  if (obj.apiVersion !== POLICY_KINDS[kind]) p.add('apiVersion', `${show(obj.apiVersion)} must be ${POLICY_KINDS[kind]} for kind ${kind}`);
  const name = obj.metadata?.name;
  if (typeof name !== 'string' || !name) p.add('metadata.name', 'is required');
  const clusterwide = kind === 'CiliumClusterwideNetworkPolicy';
  const namespace = clusterwide ? undefined : (obj.metadata?.namespace as string | undefined) || 'default';
  if (clusterwide && obj.metadata?.namespace) p.add('metadata.namespace', `${kind} is cluster-scoped and takes no namespace`);
  const rules: Rule[] = [];
  if (kind === 'NetworkPolicy') {
    const r = parseK8sPolicy(p, obj.spec, namespace!, { kind, namespace, name: String(name), index: 0 });
    if (r) rules.push(r);
  } else {
    if (obj.spec === undefined && obj.specs === undefined) p.add('spec', 'is required (or specs)');
    const specs: [string, unknown][] = [];
    if (obj.spec !== undefined) specs.push(['spec', obj.spec]);
    arrayAt(p, 'specs', obj.specs).forEach((s, i) => specs.push([`specs[${i}]`, s]));
    specs.forEach(([path, s], i) => {
      const r = parseCiliumSpec(p, path, s, { kind, namespace, name: String(name), index: i }, namespace, clusterwide);
      if (r) rules.push(r);
    });
  }
  if (p.list.length) throw new PolicyValidationError(p.list.map((x) => `${kind}/${namespace ? namespace + '/' : ''}${name ?? '?'}: ${x}`));
  return rules;
}
