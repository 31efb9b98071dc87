/**
 * The proxy's configuration: what the agent tells bin/membrane-proxy, and what
 * the proxy keeps on disk so that it serves with its last configuration after
 * its own restart.
 *
 * The model is a set of listeners plus the policy data their kinds need:
 *
 *   listeners[]   {name, kind, address, port, protocol, transparent, ...}
 *   policies      L7 tables (mapstate.ts L7Entry) by key; endpoints with the
 *                 same identity and named ports share one
 *   endpoints[]   local endpoint id -> its policy key
 *
 * A listener's `kind` selects the handler that serves it (LISTENER_FACTORIES in src/proxy/listeners.ts):
 * 'http-policy' today (redirected flows, decided by the L7 tables); the DNS proxy
 * adds kind 'dns-policy' (transparent UDP+TCP listeners on the same model, its
 * rules as another table per endpoint) and the Gateway API kind 'http-gateway'
 * (a plain listener on a node address with routes to Services under a new
 * top-level `gateways` key). Each kind validates only its own part, so adding
 * one touches no other.
 */
import type { L7Entry } from '../policy/mapstate';
import type { DnsRule, HttpRule } from '../policy/types';
import type { GatewayTable } from '../gateway/model';
import { nameProblems, patternProblems } from '../fqdn/pattern';

export const CONFIG_VERSION = 1;

export type ListenerKind = 'http-policy' | 'http-gateway' | 'dns-policy';
export const LISTENER_KINDS: ListenerKind[] = ['http-policy', 'http-gateway', 'dns-policy'];

export interface ListenerConfig {
  /** Unique; also the name in flow records and status (e.g. "http-egress"). */
  name: string;
  kind: ListenerKind;
  /** Bind address. Transparent listeners bind loopback: the datapath assigns them redirected flows. */
  address: string;
  port: number;
  /** dns-policy listens on UDP and TCP on the same port. */
  protocol: 'tcp' | 'udp+tcp';
  /** IP_TRANSPARENT: accepts flows addressed to other hosts (the original destination stays the local address). */
  transparent: boolean;
  /** http-policy: the direction whose redirect leads here (its endpoint's rules decide). */
  direction?: 'ingress' | 'egress';
  /** http-gateway: the address upstream connections come from (its ipcache identity is the reserved `ingress`). */
  sourceAddress?: string;
}

export interface EndpointTables {
  ingress: L7Entry[];
  egress: L7Entry[];
}

export interface EndpointRef {
  id: number;
  /** Key into ProxyConfig.policies. */
  policy: string;
}

export interface ProxyConfig {
  version: number;
  /** Increases with every configuration the agent sends (informational; content decides). */
  generation: number;
  node: string;
  listeners: ListenerConfig[];
  policies: Record<string, EndpointTables>;
  endpoints: EndpointRef[];
  /** http-gateway listeners' routes, by listener name (src/gateway/model.ts); replaced without touching the listener. */
  gateways?: Record<string, GatewayTable>;
  /** The DNS proxy's part (dns-policy listeners). */
  dns?: DnsConfig;
}

export interface DnsConfig {
  /** toFQDNs selectors in force: addresses answered for names they match are learned before the answer is released. */
  selectors: DnsRule[];
  /** The rcode of a refused query. */
  rejectRcode: 'REFUSED' | 'NXDOMAIN';
  /** Longest wait for the agent to have learned an answer's addresses before the answer is released anyway. */
  maxDelayMs: number;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid proxy configuration:\n  ${problems.join('\n  ')}`);
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown) => JSON.stringify(v);
const isPort = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;
const isU32 = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;

function checkEntry(p: string[], path: string, e: unknown): void {
  if (!isObj(e)) return void p.push(`${path}: must be an object, got ${show(e)}`);
  for (const k of ['identity', 'protocol', 'port', 'prefixLen'] as const) if (!isU32(e[k])) p.push(`${path}.${k}: must be a number, got ${show(e[k])}`);
  if (typeof e.egress !== 'boolean') p.push(`${path}.egress: must be true or false, got ${show(e.egress)}`);
  if (!Array.isArray(e.allowAllFrom) || !e.allowAllFrom.every((x) => typeof x === 'string')) p.push(`${path}.allowAllFrom: must be a list of names`);
  if (!Array.isArray(e.http)) return void p.push(`${path}.http: must be a list, got ${show(e.http)}`);
  if (e.dns !== undefined) {
    if (!Array.isArray(e.dns)) p.push(`${path}.dns: must be a list, got ${show(e.dns)}`);
    else
      e.dns.forEach((d, i) => {
        if (!isObj(d) || !isObj(d.rule) || typeof d.from !== 'string') return void p.push(`${path}.dns[${i}]: must be {rule, from}, got ${show(d)}`);
        checkNameSelector(p, `${path}.dns[${i}].rule`, d.rule);
      });
  }
  e.http.forEach((h, i) => {
    if (!isObj(h) || !isObj(h.rule) || typeof h.from !== 'string') p.push(`${path}.http[${i}]: must be {rule, from}, got ${show(h)}`);
    else checkRule(p, `${path}.http[${i}].rule`, h.rule as HttpRule);
  });
}

function checkNameSelector(p: string[], path: string, r: Obj): void {
  const bad = r.matchName !== undefined ? nameProblems(r.matchName) : r.matchPattern !== undefined ? patternProblems(r.matchPattern) : ['needs matchName or matchPattern'];
  if (bad.length) p.push(`${path}: ${show(r)} ${bad.join('; ')}`);
}

function checkRule(p: string[], path: string, r: HttpRule): void {
  for (const k of ['method', 'path', 'host'] as const) if (r[k] !== undefined && typeof r[k] !== 'string') p.push(`${path}.${k}: must be a string`);
  if (r.headers !== undefined && (!Array.isArray(r.headers) || !r.headers.every((h) => typeof h === 'string'))) p.push(`${path}.headers: must be a list of strings`);
  if (r.headerMatches !== undefined && (!Array.isArray(r.headerMatches) || !r.headerMatches.every((m) => isObj(m) && typeof m.name === 'string'))) {
    p.push(`${path}.headerMatches: must be a list of {name, value, mismatch}`);
  }
}

/** Validate a configuration (from the agent or from disk); throws ConfigError naming every problem. */
export function parseConfig(v: unknown): ProxyConfig {
  const p: string[] = [];
  if (!isObj(v)) throw new ConfigError([`configuration must be an object, got ${show(v)}`]);
  if (v.version !== CONFIG_VERSION) p.push(`version: ${show(v.version)} is not ${CONFIG_VERSION}`);
  if (!isU32(v.generation)) p.push(`generation: must be a number, got ${show(v.generation)}`);
  if (typeof v.node !== 'string') p.push(`node: must be a string, got ${show(v.node)}`);
  const names = new Set<string>();
  const ports = new Set<string>();
  if (!Array.isArray(v.listeners)) p.push(`listeners: must be a list, got ${show(v.listeners)}`);
  else
    v.listeners.forEach((l, i) => {
      const lp = `listeners[${i}]`;
      if (!isObj(l)) return void p.push(`${lp}: must be an object, got ${show(l)}`);
      if (typeof l.name !== 'string' || !/^[a-z0-9][a-z0-9-]{0,62}$/.test(l.name)) p.push(`${lp}.name: ${show(l.name)} is not a name (lowercase letters, digits, '-')`);
      else if (names.has(l.name)) p.push(`${lp}.name: ${show(l.name)} is used twice`);
      else names.add(l.name);
      if (!LISTENER_KINDS.includes(l.kind as ListenerKind)) p.push(`${lp}.kind: ${show(l.kind)} is not one of ${LISTENER_KINDS.join(', ')}`);
      if (typeof l.address !== 'string' || !l.address) p.push(`${lp}.address: must be an address, got ${show(l.address)}`);
      if (!isPort(l.port)) p.push(`${lp}.port: ${show(l.port)} is not a port 1-65535`);
      else if (ports.has(`${String(l.address)}:${l.port}`)) p.push(`${lp}.port: ${String(l.address)}:${l.port} is used twice`);
      else ports.add(`${String(l.address)}:${l.port}`);
      const wantProto = l.kind === 'dns-policy' ? 'udp+tcp' : 'tcp';
      if (l.protocol !== wantProto) p.push(`${lp}.protocol: ${show(l.protocol)} is not ${wantProto}`);
      if (typeof l.transparent !== 'boolean') p.push(`${lp}.transparent: must be true or false, got ${show(l.transparent)}`);
      if (l.kind === 'http-policy' && l.direction !== 'ingress' && l.direction !== 'egress') p.push(`${lp}.direction: ${show(l.direction)} is not ingress or egress`);
      if (l.kind === 'http-gateway') {
        if (typeof l.sourceAddress !== 'string' || !/^\d+\.\d+\.\d+\.\d+$/.test(l.sourceAddress)) p.push(`${lp}.sourceAddress: ${show(l.sourceAddress)} is not an IPv4 address`);
        const t = isObj(v.gateways) ? v.gateways[l.name as string] : undefined;
        if (!isObj(t) || !Array.isArray(t.entries) || typeof t.gateway !== 'string') p.push(`gateways.${String(l.name)}: must be {gateway, address, port, entries: [...]}, got ${show(t)?.slice(0, 100)}`);
        else
          t.entries.forEach((e, j) => {
            if (!isObj(e) || typeof e.route !== 'string' || !isObj(e.match) || !Array.isArray(e.backends) || !Array.isArray(e.filters) || !Array.isArray(e.hostnames)) {
              p.push(`gateways.${String(l.name)}.entries[${j}]: must be {route, match, hostnames, filters, backends}`);
            }
          });
      }
    });
  if (!isObj(v.policies)) p.push(`policies: must be an object, got ${show(v.policies)}`);
  else
    for (const [k, t] of Object.entries(v.policies)) {
      if (!isObj(t) || !Array.isArray(t.ingress) || !Array.isArray(t.egress)) {
        p.push(`policies.${k}: must be {ingress: [...], egress: [...]}`);
        continue;
      }
      t.ingress.forEach((e, i) => checkEntry(p, `policies.${k}.ingress[${i}]`, e));
      t.egress.forEach((e, i) => checkEntry(p, `policies.${k}.egress[${i}]`, e));
    }
  if (!Array.isArray(v.endpoints)) p.push(`endpoints: must be a list, got ${show(v.endpoints)}`);
  else
    v.endpoints.forEach((e, i) => {
      if (!isObj(e) || !isU32(e.id) || typeof e.policy !== 'string') return void p.push(`endpoints[${i}]: must be {id, policy}, got ${show(e)}`);
      if (isObj(v.policies) && !(e.policy in v.policies)) p.push(`endpoints[${i}].policy: ${show(e.policy)} is not in policies`);
    });
  if (v.dns !== undefined) {
    const d = v.dns;
    if (!isObj(d)) p.push(`dns: must be an object, got ${show(d)}`);
    else {
      if (!Array.isArray(d.selectors)) p.push(`dns.selectors: must be a list, got ${show(d.selectors)}`);
      else d.selectors.forEach((s, i) => (isObj(s) ? checkNameSelector(p, `dns.selectors[${i}]`, s) : p.push(`dns.selectors[${i}]: must be an object`)));
      if (d.rejectRcode !== 'REFUSED' && d.rejectRcode !== 'NXDOMAIN') p.push(`dns.rejectRcode: ${show(d.rejectRcode)} is not REFUSED or NXDOMAIN`);
      if (typeof d.maxDelayMs !== 'number' || !(d.maxDelayMs >= 0 && d.maxDelayMs <= 60_000)) p.push(`dns.maxDelayMs: ${show(d.maxDelayMs)} is not 0..60000`);
    }
  }
  if (p.length) throw new ConfigError(p);
  return v as unknown as ProxyConfig;
}
