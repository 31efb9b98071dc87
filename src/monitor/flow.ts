/**
 * Flow records: a datapath event turned into what users read — verdict, drop
 * reason, addresses, ports, TCP flags, direction, observation point, and both
 * ends enriched with endpoint id, identity, namespace, pod name and labels.
 * The JSON shape follows the reference system's flow records. Flows are built
 * here only when read: the store keeps compact records (store.ts) and the
 * interned contexts of both ends (context.ts).
 */
import { DROP_REASONS, dropReasonText } from '../datapath/constants';
import type { Ctx } from './context';
import { CT_STATES, MATCH_TYPES, MonitorEvent, OBSERVATION_POINTS } from './events';
import { EVENT_L7, L7Record, policyRef } from './l7';
import { DecodedPacket, TcpFlags, decodePacket, flagNames } from './packet';

export interface FlowEndpoint {
  ID?: number;
  identity: number;
  namespace?: string;
  pod_name?: string;
  labels: string[];
  /** The node of a pod on another node (cluster mode). */
  node_name?: string;
}

export interface PolicyRef {
  kind: string;
  namespace?: string;
  name: string;
}

export interface FlowL7 {
  type: 'REQUEST' | 'RESPONSE';
  latency_ns?: number;
  http?: { code?: number; method: string; url: string; protocol: string; host?: string; headers?: { key: string; value: string }[] };
  dns?: { query: string; ips?: string[]; ttl?: number; ttls?: number[]; cnames?: string[]; rcode?: string; qtypes: string[] };
  route?: { gateway: string; route: string; backend?: string };
}

export type Verdict = 'FORWARDED' | 'DROPPED' | 'AUDIT' | 'REDIRECTED' | 'ERROR' | 'TRACED';

export interface Flow {
  time: string;
  uuid: string;
  verdict: Verdict;
  drop_reason?: number;
  drop_reason_desc?: string;
  event_type: { type: number; sub_type: number };
  ethernet?: { source: string; destination: string };
  IP?: { source: string; destination: string; ipVersion: 'IPv4' | 'IPv6' };
  l4?: {
    TCP?: { source_port: number; destination_port: number; flags?: TcpFlags };
    UDP?: { source_port: number; destination_port: number };
    SCTP?: { source_port: number; destination_port: number };
    ICMPv4?: { type: number; code: number };
  };
  l7?: FlowL7;
  ingress_allowed_by?: PolicyRef[];
  egress_allowed_by?: PolicyRef[];
  ingress_denied_by?: PolicyRef[];
  egress_denied_by?: PolicyRef[];
  source: FlowEndpoint;
  destination: FlowEndpoint;
  traffic_direction: 'INGRESS' | 'EGRESS' | 'TRAFFIC_DIRECTION_UNKNOWN';
  trace_observation_point?: string;
  ct_state?: string;
  is_reply?: boolean;
  policy_match_type?: string;
  interface?: { index: number; name?: string };
  node_name: string;
  Summary: string;
}

function l4Of(p: DecodedPacket): Flow['l4'] {
  if (p.tcp) return { TCP: { source_port: p.tcp.source_port, destination_port: p.tcp.destination_port, flags: p.tcp.flags } };
  if (p.udp && p.ip?.protocol === 132) return { SCTP: { source_port: p.udp.source_port, destination_port: p.udp.destination_port } };
  if (p.udp) return { UDP: { source_port: p.udp.source_port, destination_port: p.udp.destination_port } };
  if (p.icmp) return { ICMPv4: { type: p.icmp.type, code: p.icmp.code } };
  return undefined;
}

function summary(p: DecodedPacket, extra?: string): string {
  let s = '';
  if (p.tcp) s = `TCP Flags: ${flagNames(p.tcp.flags).join(', ')}`;
  else if (p.udp) s = p.ip?.protocol === 132 ? 'SCTP' : 'UDP';
  else if (p.icmp) s = `ICMPv4 ${p.icmp.type === 8 ? 'EchoRequest' : p.icmp.type === 0 ? 'EchoReply' : `type ${p.icmp.type} code ${p.icmp.code}`}`;
  else if (p.arp) s = `ARP ${p.arp.op === 1 ? 'request' : 'reply'} ${p.arp.senderIp} -> ${p.arp.targetIp}`;
  return extra ? (s ? `${s} ${extra}` : extra) : s;
}

export function dropReasonName(code: number): string {
  const r = DROP_REASONS[code];
  return r ? (code === 133 ? 'POLICY_DENIED' : code === 181 ? 'POLICY_DENY' : r.name) : `REASON_${code}`;
}

/** What a flow needs besides its record: time, id, node, and the interned names of its ends and interface. */
export interface FlowMeta {
  time: number;
  uuid: string;
  nodeName: string;
  src?: Ctx;
  dst?: Ctx;
  ifName?: string;
}

/** One end of a flow from its context (an endpoint, or an identity's labels). */
function endOf(c: Ctx | undefined, identity: number): FlowEndpoint {
  if (c?.ep !== undefined) return { ID: c.ep, identity: identity || c.identity, namespace: c.namespace, pod_name: c.podName, labels: c.labels };
  if (c?.node !== undefined) return { identity: identity || c.identity, namespace: c.namespace, pod_name: c.podName, labels: c.labels, node_name: c.node };
  return { identity, namespace: c?.namespace, labels: c?.labels ?? [] };
}

/** The flow of a datapath event, its ends named by their contexts. (One object literal per kind, keys in the
 * order users read them: no intermediate objects.) */
export function eventFlow(ev: MonitorEvent, m: FlowMeta): Flow {
  const pkt = decodePacket(ev.data);
  const time = new Date(m.time).toISOString();
  const ethernet = pkt.ethernet ? { source: pkt.ethernet.source, destination: pkt.ethernet.destination } : undefined;
  const IP = pkt.ip ? { source: pkt.ip.source, destination: pkt.ip.destination, ipVersion: pkt.ip.ipVersion } : undefined;
  const l4 = l4Of(pkt);
  const iface = ev.ifindex ? { index: ev.ifindex, name: m.ifName } : undefined;
  switch (ev.type) {
    case 'drop':
      return {
        time,
        uuid: m.uuid,
        ethernet,
        IP,
        l4,
        interface: iface,
        node_name: m.nodeName,
        verdict: 'DROPPED',
        drop_reason: ev.reason,
        drop_reason_desc: dropReasonName(ev.reason),
        event_type: { type: 1, sub_type: ev.reason },
        source: endOf(m.src, ev.srcLabel),
        destination: endOf(m.dst, ev.dstLabel),
        traffic_direction: ev.direction,
        Summary: summary(pkt, `(${dropReasonText(ev.reason)})`),
      };
    case 'trace':
      return {
        time,
        uuid: m.uuid,
        ethernet,
        IP,
        l4,
        interface: iface,
        node_name: m.nodeName,
        verdict: 'FORWARDED',
        event_type: { type: 4, sub_type: ev.obsPoint },
        source: endOf(m.src, ev.srcLabel),
        destination: endOf(m.dst, ev.dstLabel),
        traffic_direction: traceDirection(ev.obsPoint),
        trace_observation_point: OBSERVATION_POINTS[ev.obsPoint] ?? `POINT_${ev.obsPoint}`,
        ct_state: CT_STATES[ev.ctState] ?? String(ev.ctState),
        is_reply: ev.ctState === 2,
        Summary: summary(pkt),
      };
    case 'policy-verdict': {
      const localCtx = ev.direction === 'INGRESS' ? m.dst : m.src;
      const localEp: FlowEndpoint = localCtx?.ep !== undefined ? endOf(localCtx, 0) : { ID: ev.source, identity: 0, labels: [] };
      const remote = endOf(ev.direction === 'INGRESS' ? m.src : m.dst, ev.remoteLabel);
      const match = MATCH_TYPES[ev.matchType] ?? String(ev.matchType);
      return {
        time,
        uuid: m.uuid,
        ethernet,
        IP,
        l4,
        interface: iface,
        node_name: m.nodeName,
        verdict: ev.allowed ? 'FORWARDED' : 'DROPPED',
        drop_reason: ev.allowed ? undefined : ev.dropReason,
        drop_reason_desc: ev.allowed ? undefined : dropReasonName(ev.dropReason),
        event_type: { type: 5, sub_type: 0 },
        source: ev.direction === 'INGRESS' ? remote : localEp,
        destination: ev.direction === 'INGRESS' ? localEp : remote,
        traffic_direction: ev.direction,
        policy_match_type: match,
        Summary: summary(pkt, `policy-verdict:${match} ${ev.direction} ${ev.allowed ? 'ALLOWED' : 'DENIED'}`),
      };
    }
  }
}

/** Traffic direction of a trace event by its observation point. */
export function traceDirection(obsPoint: number): Flow['traffic_direction'] {
  const point = OBSERVATION_POINTS[obsPoint];
  return point === 'FROM_ENDPOINT' || point === 'TO_STACK' ? 'EGRESS' : point === 'TO_ENDPOINT' || point === 'FROM_HOST' ? 'INGRESS' : 'TRAFFIC_DIRECTION_UNKNOWN';
}

const L7_VERDICT = { forwarded: 'FORWARDED', denied: 'DROPPED', error: 'ERROR' } as const;

/** The one-line summary of an L7 record, as the reference system prints L7 flows. */
export function l7Summary(r: L7Record): string {
  if (r.http) {
    const h = r.http;
    // Through a Gateway: which route and backend.
    const via = r.route ? ` via Gateway ${r.route.gateway}${r.route.route ? ` route ${r.route.route}` : ''}${r.route.backend ? ` -> ${r.route.backend}` : ''}` : '';
    if (r.kind === 'request') return `${h.protocol} ${h.method} ${h.url}${via}`;
    const ms = h.latencyNs !== undefined ? ` ${Math.round(h.latencyNs / 1e6)}ms` : '';
    return `${h.protocol} ${h.code ?? '-'}${ms} (${h.method} ${h.url})${via}`;
  }
  const d = r.dns!;
  const q = `${d.query} ${d.qtypes.join(',')}`.trim();
  if (r.kind === 'request') return `DNS Query ${q}`;
  if (d.rcode && d.rcode !== 'NoError' && !d.ips?.length) return `DNS Answer RCode: ${d.rcode} (Proxy ${q})`;
  const ttl = d.ttls?.length ? ` TTL: ${d.ttls[0]}` : '';
  return `DNS Answer "${(d.ips ?? []).concat(d.cnames ?? []).join(',')}"${ttl} (Proxy ${q})`;
}

/** The flow of an L7 record from a proxy. */
export function l7Flow(r: L7Record, m: FlowMeta): Flow {
  const v6 = r.src.ip.includes(':');
  const ports = { source_port: r.src.port, destination_port: r.dst.port };
  const l7: FlowL7 = { type: r.kind === 'request' ? 'REQUEST' : 'RESPONSE' };
  if (r.http) {
    if (r.http.latencyNs !== undefined) l7.latency_ns = r.http.latencyNs;
    l7.http = { code: r.http.code, method: r.http.method, url: r.http.url, protocol: r.http.protocol, host: r.http.host };
    if (r.http.headers) l7.http.headers = Object.entries(r.http.headers).map(([key, value]) => ({ key, value }));
  }
  if (r.dns) {
    l7.dns = { query: r.dns.query, ips: r.dns.ips, ttl: r.dns.ttls?.[0], ttls: r.dns.ttls, cnames: r.dns.cnames, rcode: r.dns.rcode, qtypes: r.dns.qtypes };
  }
  if (r.route) l7.route = r.route;
  const verdict = L7_VERDICT[r.verdict];
  const flow: Flow = {
    time: new Date(m.time).toISOString(),
    uuid: m.uuid,
    verdict,
    event_type: { type: EVENT_L7, sub_type: 0 },
    IP: { source: r.src.ip, destination: r.dst.ip, ipVersion: v6 ? 'IPv6' : 'IPv4' },
    l4: r.dns && !r.http ? { UDP: ports } : { TCP: ports },
    source: endOf(m.src, r.src.identity),
    destination: endOf(m.dst, r.dst.identity),
    traffic_direction: r.direction === 'ingress' ? 'INGRESS' : 'EGRESS',
    is_reply: r.kind === 'response',
    l7,
    node_name: m.nodeName,
    Summary: l7Summary(r),
  };
  if (r.policy) {
    const key = `${r.direction}_${r.verdict === 'denied' ? 'denied' : 'allowed'}_by` as 'ingress_allowed_by';
    flow[key] = [policyRef(r.policy)];
  }
  return flow;
}
