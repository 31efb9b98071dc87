/**
 * L7 access records: what the HTTP and DNS proxies (separate processes) hand
 * the agent for every request and response they handle. The agent checks a
 * record (validateL7Record), stores it as a flow of type l7 (event type 129,
 * as the reference system's L7 access-log events) and enriches both ends with
 * their pods and labels like any other flow.
 *
 * For a response, `src` is the end that answered (the server) and `dst` the
 * client, as the reference system shows response flows.
 */
import * as net from 'node:net';

export interface L7Record {
  time: number; // ms since epoch
  kind: 'request' | 'response'; // response records carry code and latency
  direction: 'ingress' | 'egress';
  verdict: 'forwarded' | 'denied' | 'error';
  policy?: string; // "CiliumNetworkPolicy/ns/name" that allowed or denied it, when known
  src: { ip: string; port: number; identity: number; endpointId?: number };
  dst: { ip: string; port: number; identity: number; endpointId?: number };
  http?: { method: string; url: string; protocol: string; host?: string; code?: number; latencyNs?: number; headers?: Record<string, string> };
  dns?: { query: string; qtypes: string[]; rcode?: string; ips?: string[]; ttls?: number[]; cnames?: string[] };
  route?: { gateway: string; route: string; backend?: string }; // Gateway API requests
}

/** The monitor event type of L7 flows (the reference system's access-log type). */
export const EVENT_L7 = 129;

/** Stored limits: longer URLs and header values are cut (marked with "..."), extra headers and answers dropped. */
export const L7_LIMITS = { url: 2048, headers: 32, headerName: 128, headerValue: 256, dnsAnswers: 64, name: 255, policy: 512 };

/** A record that does not have the shape of an L7Record: names the field and the value. */
export class L7RecordError extends Error {
  constructor(
    readonly field: string,
    readonly value: unknown,
    readonly problem: string,
  ) {
    super(`L7 record: ${field}: ${JSON.stringify(value)?.slice(0, 200) ?? String(value)} ${problem}`);
  }
}

// Strings repeated across records (methods, protocols, hosts, policies, rcodes,
// qtypes, names) are interned so stored records share them. Bounded.
const interned = new Map<string, string>();
function intern(s: string): string {
  const v = interned.get(s);
  if (v !== undefined) return v;
  if (interned.size >= 8192) interned.clear();
  interned.set(s, s);
  return s;
}

function cut(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n - 3)}...` : s;
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function only(o: Obj, field: string, keys: string[]): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new L7RecordError(field ? `${field}.${k}` : k, o[k], 'is not a field of an L7 record');
}

function str(o: Obj, k: string, field: string, max: number, opts: { optional?: boolean; truncate?: boolean; pattern?: RegExp } = {}): string | undefined {
  const v = o[k];
  const f = `${field}.${k}`.replace(/^\./, '');
  if (v === undefined && opts.optional) return undefined;
  if (typeof v !== 'string') throw new L7RecordError(f, v, 'must be a string');
  if (opts.pattern && !opts.pattern.test(v)) throw new L7RecordError(f, v, `must match ${opts.pattern}`);
  if (v.length > max) {
    if (opts.truncate) return cut(v, max);
    throw new L7RecordError(f, v, `is longer than ${max} characters`);
  }
  return v;
}

function int(o: Obj, k: string, field: string, min: number, max: number, optional = false): number | undefined {
  const v = o[k];
  const f = `${field}.${k}`.replace(/^\./, '');
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new L7RecordError(f, v, `must be an integer in ${min}..${max}`);
  return v;
}

function oneOf<T extends string>(o: Obj, k: string, values: readonly T[]): T {
  const v = o[k];
  if (typeof v !== 'string' || !values.includes(v as T)) throw new L7RecordError(k, v, `must be one of ${values.join(', ')}`);
  return v as T;
}

function peer(v: unknown, field: string): L7Record['src'] {
  if (!isObj(v)) throw new L7RecordError(field, v, 'must be an object {ip, port, identity, endpointId?}');
  only(v, field, ['ip', 'port', 'identity', 'endpointId']);
  const ip = str(v, 'ip', field, 64)!;
  if (!net.isIP(ip)) throw new L7RecordError(`${field}.ip`, ip, 'is not an IPv4 or IPv6 address');
  const out: L7Record['src'] = { ip: intern(ip), port: int(v, 'port', field, 0, 65535)!, identity: int(v, 'identity', field, 0, 0xffffffff)! };
  const ep = int(v, 'endpointId', field, 0, 65535, true);
  if (ep !== undefined) out.endpointId = ep;
  return out;
}

function strList(v: unknown, field: string, max: number, each: (s: string, f: string) => string): string[] {
  if (!Array.isArray(v)) throw new L7RecordError(field, v, 'must be an array of strings');
  const out: string[] = [];
  v.forEach((s, i) => {
    if (typeof s !== 'string') throw new L7RecordError(`${field}[${i}]`, s, 'must be a string');
    if (out.length < max) out.push(each(s, `${field}[${i}]`));
  });
  return out;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Check a record from a proxy and return the copy that is stored (strings
 * interned, long URLs and header values cut, at most L7_LIMITS.headers headers
 * and dnsAnswers answers). Throws L7RecordError naming the field and value.
 */
export function validateL7Record(input: unknown): L7Record {
  if (!isObj(input)) throw new L7RecordError('record', input, 'must be an object');
  only(input, '', ['time', 'kind', 'direction', 'verdict', 'policy', 'src', 'dst', 'http', 'dns', 'route']);
  const time = input.time;
  if (typeof time !== 'number' || !Number.isFinite(time) || time < 0) throw new L7RecordError('time', time, 'must be milliseconds since the epoch');
  const rec: L7Record = {
    time,
    kind: oneOf(input, 'kind', ['request', 'response'] as const),
    direction: oneOf(input, 'direction', ['ingress', 'egress'] as const),
    verdict: oneOf(input, 'verdict', ['forwarded', 'denied', 'error'] as const),
    src: peer(input.src, 'src'),
    dst: peer(input.dst, 'dst'),
  };
  const policy = str(input, 'policy', '', L7_LIMITS.policy, { optional: true });
  if (policy !== undefined) rec.policy = intern(policy);
  if (input.http !== undefined) {
    const h = input.http;
    if (!isObj(h)) throw new L7RecordError('http', h, 'must be an object');
    only(h, 'http', ['method', 'url', 'protocol', 'host', 'code', 'latencyNs', 'headers']);
    const http: NonNullable<L7Record['http']> = {
      method: intern(str(h, 'method', 'http', 32, { pattern: TOKEN })!),
      url: str(h, 'url', 'http', L7_LIMITS.url, { truncate: true })!,
      protocol: intern(str(h, 'protocol', 'http', 16)!),
    };
    const host = str(h, 'host', 'http', L7_LIMITS.name, { optional: true });
    if (host !== undefined) http.host = intern(host);
    const code = int(h, 'code', 'http', 100, 999, true);
    if (code !== undefined) http.code = code;
    if (h.latencyNs !== undefined) {
      if (typeof h.latencyNs !== 'number' || !Number.isFinite(h.latencyNs) || h.latencyNs < 0) throw new L7RecordError('http.latencyNs', h.latencyNs, 'must be a number of nanoseconds');
      http.latencyNs = Math.round(h.latencyNs);
    }
    if (h.headers !== undefined) {
      if (!isObj(h.headers)) throw new L7RecordError('http.headers', h.headers, 'must be an object of strings');
      const headers: Record<string, string> = {};
      let n = 0;
      for (const [k, v] of Object.entries(h.headers)) {
        if (typeof v !== 'string') throw new L7RecordError(`http.headers.${k}`, v, 'must be a string');
        if (n++ >= L7_LIMITS.headers) break;
        headers[intern(cut(k, L7_LIMITS.headerName))] = cut(v, L7_LIMITS.headerValue);
      }
      http.headers = headers;
    }
    rec.http = http;
  }
  if (input.dns !== undefined) {
    const d = input.dns;
    if (!isObj(d)) throw new L7RecordError('dns', d, 'must be an object');
    only(d, 'dns', ['query', 'qtypes', 'rcode', 'ips', 'ttls', 'cnames']);
    const dns: NonNullable<L7Record['dns']> = {
      query: intern(str(d, 'query', 'dns', L7_LIMITS.name)!),
      qtypes: strList(d.qtypes, 'dns.qtypes', 16, (s, f) => {
        if (!/^[A-Z0-9]{1,16}$/i.test(s)) throw new L7RecordError(f, s, 'is not a query type such as A or AAAA');
        return intern(s.toUpperCase());
      }),
    };
    const rcode = str(d, 'rcode', 'dns', 32, { optional: true });
    if (rcode !== undefined) dns.rcode = intern(rcode);
    if (d.ips !== undefined)
      dns.ips = strList(d.ips, 'dns.ips', L7_LIMITS.dnsAnswers, (s, f) => {
        if (!net.isIP(s)) throw new L7RecordError(f, s, 'is not an IPv4 or IPv6 address');
        return s;
      });
    if (d.ttls !== undefined) {
      if (!Array.isArray(d.ttls)) throw new L7RecordError('dns.ttls', d.ttls, 'must be an array of seconds');
      dns.ttls = d.ttls.slice(0, L7_LIMITS.dnsAnswers).map((t, i) => {
        if (typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t > 0xffffffff) throw new L7RecordError(`dns.ttls[${i}]`, t, 'must be a number of seconds');
        return t;
      });
    }
    if (d.cnames !== undefined) dns.cnames = strList(d.cnames, 'dns.cnames', L7_LIMITS.dnsAnswers, (s) => intern(cut(s, L7_LIMITS.name)));
    rec.dns = dns;
  }
  if (input.route !== undefined) {
    const r = input.route;
    if (!isObj(r)) throw new L7RecordError('route', r, 'must be an object {gateway, route, backend?}');
    only(r, 'route', ['gateway', 'route', 'backend']);
    rec.route = { gateway: intern(str(r, 'gateway', 'route', L7_LIMITS.name)!), route: intern(str(r, 'route', 'route', L7_LIMITS.name)!) };
    const backend = str(r, 'backend', 'route', L7_LIMITS.name, { optional: true });
    if (backend !== undefined) rec.route.backend = intern(backend);
  }
  if (!rec.http && !rec.dns) throw new L7RecordError('record', input, 'has neither http nor dns');
  return rec;
}

/** Estimated bytes a stored record holds (interned strings count as pointers). */
export function l7RecordBytes(r: L7Record): number {
  const s = (x: string | undefined) => (x === undefined ? 0 : 16 + x.length);
  let n = 240; // the record, src, dst and their fields
  if (r.http) {
    n += 96 + s(r.http.url);
    if (r.http.headers) for (const v of Object.values(r.http.headers)) n += 24 + s(v);
  }
  if (r.dns) {
    n += 96 + 16 + 8 * r.dns.qtypes.length;
    for (const ip of r.dns.ips ?? []) n += 8 + s(ip);
    n += 16 + 8 * (r.dns.ttls?.length ?? 0) + 16 + 8 * (r.dns.cnames?.length ?? 0);
  }
  if (r.route) n += 64;
  return n;
}

/** The policy that decided, as the reference system's flow field: {kind, namespace?, name}. */
export function policyRef(policy: string): { kind: string; namespace?: string; name: string } {
  const parts = policy.split('/');
  if (parts.length >= 3) return { kind: parts[0], namespace: parts[1], name: parts.slice(2).join('/') };
  if (parts.length === 2) return { kind: parts[0], name: parts[1] };
  return { kind: '', name: policy };
}

/** "403", "400-499" or "4+" (a class, as the reference system's CLI) -> [min, max]; undefined if malformed. */
export function parseStatusRange(v: string): [number, number] | undefined {
  let m = /^([1-9])\+$/.exec(v);
  if (m) return [Number(m[1]) * 100, Number(m[1]) * 100 + 99];
  m = /^(\d{3})$/.exec(v);
  if (m) return [Number(m[1]), Number(m[1])];
  m = /^(\d{3})-(\d{3})$/.exec(v);
  if (m && Number(m[1]) <= Number(m[2])) return [Number(m[1]), Number(m[2])];
  return undefined;
}
