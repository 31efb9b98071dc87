/**
 * Flow records: a datapath event turned into what users read — verdict, drop
 * reason, addresses, ports, TCP flags, direction, observation point, and both
 * ends enriched with endpoint id, identity, namespace, pod name and labels.
 * The JSON shape follows the reference system's flow records.
 */
import * as crypto from 'node:crypto';
import { DROP_REASONS, dropReasonText } from '../datapath/constants';
import { CT_STATES, MATCH_TYPES, MonitorEvent, OBSERVATION_POINTS } from './events';
import { DecodedPacket, TcpFlags, decodePacket, flagNames } from './packet';

export interface FlowEndpoint {
  ID?: number;
  identity: number;
  namespace?: string;
  pod_name?: string;
  labels: string[];
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

export interface EndpointInfoLite {
  id: number;
  identity: number;
  namespace: string;
  podName?: string;
  labels: string[];
}

export interface Enricher {
  nodeName: string;
  endpointByIp(ip: string): EndpointInfoLite | undefined;
  endpointById(id: number): EndpointInfoLite | undefined;
  identityLabels(id: number): string[];
  ifName(ifindex: number): string | undefined;
}

const NS_LABEL = 'k8s:io.kubernetes.pod.namespace=';

function endpointOf(ip: string | undefined, identity: number, en: Enricher, knownId?: number): FlowEndpoint {
  const ep = (knownId ? en.endpointById(knownId) : undefined) ?? (ip ? en.endpointByIp(ip) : undefined);
  if (ep) return { ID: ep.id, identity: identity || ep.identity, namespace: ep.namespace, pod_name: ep.podName, labels: ep.labels };
  const labels = en.identityLabels(identity);
  const ns = labels.find((l) => l.startsWith(NS_LABEL))?.slice(NS_LABEL.length);
  return { identity, namespace: ns, labels };
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

export function toFlow(ev: MonitorEvent, en: Enricher): Flow {
  const pkt = decodePacket(ev.data);
  const base = {
    time: new Date(ev.time).toISOString(),
    uuid: crypto.randomUUID(),
    ethernet: pkt.ethernet ? { source: pkt.ethernet.source, destination: pkt.ethernet.destination } : undefined,
    IP: pkt.ip ? { source: pkt.ip.source, destination: pkt.ip.destination, ipVersion: pkt.ip.ipVersion } : undefined,
    l4: l4Of(pkt),
    interface: ev.ifindex ? { index: ev.ifindex, name: en.ifName(ev.ifindex) } : undefined,
    node_name: en.nodeName,
  };
  const src = pkt.ip?.source;
  const dst = pkt.ip?.destination;
  switch (ev.type) {
    case 'drop': {
      return {
        ...base,
        verdict: 'DROPPED',
        drop_reason: ev.reason,
        drop_reason_desc: dropReasonName(ev.reason),
        event_type: { type: 1, sub_type: ev.reason },
        source: endpointOf(src, ev.srcLabel, en, ev.direction === 'EGRESS' ? ev.source : undefined),
        destination: endpointOf(dst, ev.dstLabel, en, ev.dstId || undefined),
        traffic_direction: ev.direction,
        Summary: summary(pkt, `(${dropReasonText(ev.reason)})`),
      };
    }
    case 'trace': {
      const point = OBSERVATION_POINTS[ev.obsPoint] ?? `POINT_${ev.obsPoint}`;
      const direction = point === 'FROM_ENDPOINT' || point === 'TO_STACK' ? 'EGRESS' : point === 'TO_ENDPOINT' || point === 'FROM_HOST' ? 'INGRESS' : 'TRAFFIC_DIRECTION_UNKNOWN';
      return {
        ...base,
        verdict: 'FORWARDED',
        event_type: { type: 4, sub_type: ev.obsPoint },
        source: endpointOf(src, ev.srcLabel, en, direction === 'EGRESS' ? ev.source : undefined),
        destination: endpointOf(dst, ev.dstLabel, en, ev.dstId || undefined),
        traffic_direction: direction,
        trace_observation_point: point,
        ct_state: CT_STATES[ev.ctState] ?? String(ev.ctState),
        is_reply: ev.ctState === 2,
        Summary: summary(pkt),
      };
    }
    case 'policy-verdict': {
      const local = en.endpointById(ev.source);
      const localEp: FlowEndpoint = local
        ? { ID: local.id, identity: local.identity, namespace: local.namespace, pod_name: local.podName, labels: local.labels }
        : { ID: ev.source, identity: 0, labels: [] };
      const remote = endpointOf(ev.direction === 'INGRESS' ? src : dst, ev.remoteLabel, en);
      return {
        ...base,
        verdict: ev.allowed ? 'FORWARDED' : 'DROPPED',
        drop_reason: ev.allowed ? undefined : ev.dropReason,
        drop_reason_desc: ev.allowed ? undefined : dropReasonName(ev.dropReason),
        event_type: { type: 5, sub_type: 0 },
        source: ev.direction === 'INGRESS' ? remote : localEp,
        destination: ev.direction === 'INGRESS' ? localEp : remote,
        traffic_direction: ev.direction,
        policy_match_type: MATCH_TYPES[ev.matchType] ?? String(ev.matchType),
        Summary: summary(pkt, `policy-verdict:${MATCH_TYPES[ev.matchType] ?? ev.matchType} ${ev.direction} ${ev.allowed ? 'ALLOWED' : 'DENIED'}`),
      };
    }
  }
}
