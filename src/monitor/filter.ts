/**
 * Flow filters, as users combine them: values of one filter are alternatives
 * (OR), different filters must all hold (AND), and `not` negates one filter.
 * Endpoint filters without from_/to_ match either end of the flow.
 */
import { cidrContains, parseCidr, parseIp } from '../util/ip';
import type { Flow, FlowEndpoint } from './flow';
import { dropReasonName } from './flow';
import { EVENT_L7, parseStatusRange } from './l7';
import type { TcpFlags } from './packet';

export interface FlowFilter {
  field: string;
  values: string[];
  negate: boolean;
}

const ENDPOINT_FIELDS = ['pod', 'namespace', 'label', 'ip', 'identity', 'port'];
export const FILTER_FIELDS = [
  ...ENDPOINT_FIELDS,
  ...ENDPOINT_FIELDS.flatMap((f) => [`from_${f}`, `to_${f}`]),
  'verdict',
  'drop_reason',
  'type',
  'protocol',
  'tcp_flags',
  'traffic_direction',
  'node_name',
  'http_method',
  'http_path',
  'http_status',
  'dns_query',
];

const VERDICTS = ['FORWARDED', 'DROPPED', 'AUDIT', 'REDIRECTED', 'ERROR', 'TRACED'];
const TYPES = ['drop', 'trace', 'policy-verdict', 'l7'];
const TYPE_CODES: Record<string, number> = { drop: 1, trace: 4, 'policy-verdict': 5, l7: EVENT_L7 };
const PROTOCOLS = ['tcp', 'udp', 'icmp', 'icmpv4', 'sctp', 'http', 'dns'];
const FLAGS = ['SYN', 'FIN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR'];

export class FilterError extends Error {}

/** Check a filter's field and values; throws FilterError naming the culprit. */
export function validateFilter(f: FlowFilter): void {
  if (!FILTER_FIELDS.includes(f.field)) throw new FilterError(`unknown flow filter "${f.field}" (known: ${FILTER_FIELDS.join(', ')})`);
  for (const v of f.values) {
    const bad = (what: string) => new FilterError(`filter ${f.field}: "${v}" ${what}`);
    const base = f.field.replace(/^(from|to)_/, '');
    if (base === 'verdict' && !VERDICTS.includes(v.toUpperCase())) throw bad(`is not one of ${VERDICTS.join(', ')}`);
    if (base === 'type' && !TYPES.includes(v.toLowerCase())) throw bad(`is not one of ${TYPES.join(', ')}`);
    if (base === 'protocol' && !PROTOCOLS.includes(v.toLowerCase())) throw bad(`is not one of ${PROTOCOLS.join(', ')}`);
    if ((base === 'port' || base === 'identity') && !/^\d+$/.test(v)) throw bad('is not a number');
    if (base === 'traffic_direction' && !['ingress', 'egress'].includes(v.toLowerCase())) throw bad('is not ingress or egress');
    if (base === 'tcp_flags' && !v.split(',').every((x) => FLAGS.includes(x.toUpperCase()))) throw bad(`is not a list of ${FLAGS.join(', ')}`);
    if (base === 'http_status' && !parseStatusRange(v)) throw bad('is not a status code (403), a range (400-499) or a class (4+)');
    if (base === 'http_method' && !/^[A-Za-z]+$/.test(v)) throw bad('is not an HTTP method');
    if (base === 'http_path') {
      try {
        regex(v);
      } catch (e) {
        throw bad(`is not a regular expression (${(e as Error).message})`);
      }
    }
    if (base === 'dns_query' && !/^[A-Za-z0-9_*.-]+$/.test(v)) throw bad('is not a DNS name (letters, digits, -, _, . and * for any characters)');
    if (base === 'ip') {
      try {
        if (v.includes('/')) parseCidr(v);
        else parseIp(v);
      } catch {
        throw bad('is not an IP address or CIDR');
      }
    }
  }
}

const regexCache = new Map<string, RegExp>();
function regex(v: string): RegExp {
  let r = regexCache.get(v);
  if (!r) {
    r = new RegExp(v);
    if (regexCache.size > 256) regexCache.clear();
    regexCache.set(v, r);
  }
  return r;
}

/** The path of an HTTP URL (absolute or origin-form). */
function urlPath(url: string): string {
  const m = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i.exec(url);
  const rest = m ? url.slice(m[0].length) : url;
  const end = rest.search(/[?#]/);
  const p = end >= 0 ? rest.slice(0, end) : rest;
  return p || '/';
}

/** DNS names compare without case and trailing dot; `*` in the filter matches any characters. */
function dnsName(s: string): string {
  return s.toLowerCase().replace(/\.$/, '');
}
function dnsMatches(query: string, v: string): boolean {
  const want = dnsName(v);
  if (!want.includes('*')) return dnsName(query) === want;
  // Validated names hold only letters, digits, -, _, . and *: only the dots need escaping.
  const pattern = want.split('*').map((p) => p.replace(/\./g, '\\.')).join('.*');
  return regex(`^${pattern}$`).test(dnsName(query));
}

function podMatches(e: FlowEndpoint, v: string): boolean {
  if (!e.pod_name) return false;
  if (v.includes('/')) {
    const [ns, name] = v.split('/', 2);
    return e.namespace === ns && e.pod_name.startsWith(name);
  }
  return e.pod_name.startsWith(v);
}

function labelMatches(e: FlowEndpoint, v: string): boolean {
  const want = v.includes(':') ? v : `k8s:${v}`;
  const [k, val] = want.split('=', 2);
  return e.labels.some((l) => (val === undefined ? l === k || l.startsWith(`${k}=`) : l === want));
}

function ipMatches(ip: string | undefined, v: string): boolean {
  if (!ip) return false;
  if (!v.includes('/')) return ip === v;
  try {
    return cidrContains(parseCidr(v), parseIp(ip));
  } catch {
    return false;
  }
}

function ports(f: Flow): [number | undefined, number | undefined] {
  const l = f.l4?.TCP ?? f.l4?.UDP ?? f.l4?.SCTP;
  return [l?.source_port, l?.destination_port];
}

function endpointTest(field: string, v: string, f: Flow, side: 'source' | 'destination'): boolean {
  const e = f[side];
  switch (field) {
    case 'pod':
      return podMatches(e, v);
    case 'namespace':
      return e.namespace === v;
    case 'label':
      return labelMatches(e, v);
    case 'ip':
      return ipMatches(side === 'source' ? f.IP?.source : f.IP?.destination, v);
    case 'identity':
      return e.identity === Number(v);
    case 'port':
      return ports(f)[side === 'source' ? 0 : 1] === Number(v);
  }
  return false;
}

function valueMatches(field: string, v: string, f: Flow): boolean {
  const m = /^(from|to)_(.*)$/.exec(field);
  if (m && ENDPOINT_FIELDS.includes(m[2])) return endpointTest(m[2], v, f, m[1] === 'from' ? 'source' : 'destination');
  if (ENDPOINT_FIELDS.includes(field)) return endpointTest(field, v, f, 'source') || endpointTest(field, v, f, 'destination');
  switch (field) {
    case 'verdict':
      return f.verdict === v.toUpperCase();
    case 'drop_reason':
      return f.drop_reason !== undefined && (String(f.drop_reason) === v || dropReasonName(f.drop_reason) === v.toUpperCase() || (f.drop_reason_desc ?? '') === v);
    case 'type':
      return TYPE_CODES[v.toLowerCase()] === f.event_type.type;
    case 'protocol': {
      const p = v.toLowerCase();
      if (p === 'http') return !!f.l7?.http;
      if (p === 'dns') return !!f.l7?.dns;
      return (p === 'tcp' && !!f.l4?.TCP) || (p === 'udp' && !!f.l4?.UDP) || (p === 'sctp' && !!f.l4?.SCTP) || ((p === 'icmp' || p === 'icmpv4') && !!f.l4?.ICMPv4);
    }
    case 'http_method':
      return !!f.l7?.http && f.l7.http.method.toUpperCase() === v.toUpperCase();
    case 'http_path':
      return !!f.l7?.http && regex(v).test(urlPath(f.l7.http.url));
    case 'http_status': {
      const code = f.l7?.http?.code;
      const r = parseStatusRange(v);
      return code !== undefined && !!r && code >= r[0] && code <= r[1];
    }
    case 'dns_query':
      return !!f.l7?.dns && dnsMatches(f.l7.dns.query, v);
    case 'tcp_flags': {
      const flags = f.l4?.TCP?.flags;
      return !!flags && v.split(',').every((x) => flags[x.toUpperCase() as keyof TcpFlags]);
    }
    case 'traffic_direction':
      return f.traffic_direction === v.toUpperCase();
    case 'node_name':
      return f.node_name === v;
  }
  return false;
}

export function matchFlow(f: Flow, filters: FlowFilter[]): boolean {
  for (const flt of filters) {
    const hit = flt.values.some((v) => valueMatches(flt.field, v, f));
    if (hit === flt.negate) return false;
  }
  return true;
}

export interface FlowQuery {
  filters: FlowFilter[];
  last?: number;
  follow: boolean;
  since?: number;
  until?: number;
}

function parseTime(field: string, v: string): number {
  const rel = /^(\d+)(s|m|h)$/.exec(v);
  if (rel) return Date.now() - Number(rel[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[rel[2] as 's' | 'm' | 'h'];
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new FilterError(`${field}: "${v}" is not a time (RFC 3339, or relative like 5m)`);
  return t;
}

/**
 * Parse a query (URL search params): filter fields, each optionally prefixed
 * with "not." to negate it, plus last, follow, since, until.
 */
export function parseFlowQuery(q: URLSearchParams): FlowQuery {
  const byKey = new Map<string, FlowFilter>();
  const out: FlowQuery = { filters: [], follow: false };
  for (const [k, v] of q) {
    if (k === 'last') {
      if (!/^\d+$/.test(v)) throw new FilterError(`last: "${v}" is not a number`);
      out.last = Number(v);
    } else if (k === 'follow') out.follow = v === '1' || v === 'true';
    else if (k === 'since') out.since = parseTime('since', v);
    else if (k === 'until') out.until = parseTime('until', v);
    else {
      const negate = k.startsWith('not.');
      const field = negate ? k.slice(4) : k;
      const key = `${negate ? '!' : ''}${field}`;
      let flt = byKey.get(key);
      if (!flt) {
        flt = { field, values: [], negate };
        byKey.set(key, flt);
        out.filters.push(flt);
      }
      // tcp_flags=SYN,ACK means both flags; elsewhere a comma separates alternatives.
      flt.values.push(...(field === 'tcp_flags' ? [v] : v.split(',').filter((x) => x !== '')));
    }
  }
  for (const f of out.filters) validateFilter(f);
  return out;
}
