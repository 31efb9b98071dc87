/**
 * Text forms of events and flows: `membrane monitor` lines in the shapes users
 * know from the reference system's monitor, and `membrane observe` compact and
 * table forms.
 */
import type { Flow, FlowEndpoint } from '../monitor/flow';
import { flagNames, decodePacket } from '../monitor/packet';

const RESERVED: Record<number, string> = { 1: 'host', 2: 'world', 3: 'unmanaged', 4: 'health', 5: 'init', 6: 'remote-node', 7: 'kube-apiserver', 8: 'ingress', 9: 'world-ipv4', 10: 'world-ipv6' };

export function identityName(id: number): string {
  return RESERVED[id] ?? String(id);
}

const hex = (n: number) => `0x${(n >>> 0).toString(16)}`;

/** "10.0.0.1:1234 -> 10.0.0.2:80 tcp SYN" from a hex packet capture. */
export function packetSummary(dataHex: string): string {
  const p = decodePacket(Buffer.from(dataHex, 'hex'));
  if (p.arp) return `ARP ${p.arp.op === 1 ? 'request' : 'reply'} ${p.arp.senderIp} -> ${p.arp.targetIp}`;
  if (!p.ip) return p.ethernet ? `${p.ethernet.source} -> ${p.ethernet.destination} ethertype 0x${p.ethernet.type.toString(16)}` : 'unknown packet';
  if (p.tcp) return `${p.ip.source}:${p.tcp.source_port} -> ${p.ip.destination}:${p.tcp.destination_port} tcp ${flagNames(p.tcp.flags).join(', ')}`;
  if (p.udp) return `${p.ip.source}:${p.udp.source_port} -> ${p.ip.destination}:${p.udp.destination_port} ${p.ip.protocol === 132 ? 'sctp' : 'udp'}`;
  if (p.icmp) {
    const t = p.icmp.type === 8 ? 'EchoRequest' : p.icmp.type === 0 ? 'EchoReply' : `type ${p.icmp.type} code ${p.icmp.code}`;
    return `${p.ip.source} -> ${p.ip.destination} icmp ${t}${p.icmp.id !== undefined ? ` id ${p.icmp.id} seq ${p.icmp.seq}` : ''}`;
  }
  return `${p.ip.source} -> ${p.ip.destination} proto ${p.ip.protocol}`;
}

export function packetDetails(dataHex: string): string {
  const p = decodePacket(Buffer.from(dataHex, 'hex'));
  const lines: string[] = [];
  if (p.ethernet) lines.push(`Ethernet\t{Contents=[..14..] SrcMAC=${p.ethernet.source} DstMAC=${p.ethernet.destination} EthernetType=0x${p.ethernet.type.toString(16)}}`);
  if (p.ip) lines.push(`IPv4\t{Version=4 Length=${p.ip.length} Id=${p.ip.id} TTL=${p.ip.ttl} Protocol=${p.ip.protocol} SrcIP=${p.ip.source} DstIP=${p.ip.destination}}`);
  if (p.tcp) lines.push(`TCP\t{SrcPort=${p.tcp.source_port} DstPort=${p.tcp.destination_port} Seq=${p.tcp.seq} Ack=${p.tcp.ack} Flags=${flagNames(p.tcp.flags).join(',')} Window=${p.tcp.window}}`);
  if (p.udp) lines.push(`UDP\t{SrcPort=${p.udp.source_port} DstPort=${p.udp.destination_port} Length=${p.udp.length}}`);
  if (p.icmp) lines.push(`ICMPv4\t{TypeCode=${p.icmp.type}/${p.icmp.code}${p.icmp.id !== undefined ? ` Id=${p.icmp.id} Seq=${p.icmp.seq}` : ''}}`);
  if (p.arp) lines.push(`ARP\t{Operation=${p.arp.op} SenderMAC=${p.arp.senderMac} SenderIP=${p.arp.senderIp} TargetIP=${p.arp.targetIp}}`);
  return lines.join('\n');
}

const TRACE_PREFIX: Record<string, (e: any, f: Flow) => string> = {
  'to-endpoint': (e) => `-> endpoint ${e.dstId}`,
  'from-endpoint': (e) => `<- endpoint ${e.source}`,
  'to-stack': () => '-> stack',
  'from-host': () => '<- host',
  'to-host': () => '-> host',
  'from-stack': () => '<- stack',
  'to-overlay': () => '-> overlay',
  'from-overlay': () => '<- overlay',
};

/** The line for a stream's lost_events record: how many records the agent dropped for this (slow) client. */
export function lostLine(rec: { lost_events: { num_events_lost: number } }, what: 'flows' | 'events'): string {
  return `${rec.lost_events.num_events_lost} ${what} dropped: client too slow`;
}

function endpointLabels(f: FlowEndpoint): string {
  return `[${f.labels.join(' ')}]`;
}

/** The monitor line of an L7 record, in the reference system's monitor shape. */
function l7MonitorLine(e: any, f: Flow): string {
  const verdict = { forwarded: 'Forwarded', denied: 'Denied', error: 'Error' }[e.verdict as string] ?? e.verdict;
  const proto = e.http ? 'http' : 'dns';
  const who = (x: FlowEndpoint) => `${x.ID ?? 0} (${endpointLabels(x)})`;
  const head = e.kind === 'request' ? `<- Request ${proto} from ${who(f.source)} to ${who(f.destination)}` : `-> Response ${proto} to ${who(f.destination)} from ${who(f.source)}`;
  let what: string;
  if (e.http) what = `${e.http.method} ${e.http.url} => ${e.http.code ?? 0}`;
  else {
    const q = `${e.dns.query} ${(e.dns.qtypes ?? []).join(',')}`.trim();
    what = e.kind === 'request' ? `DNS Query: ${q}` : `DNS Answer: ${q} rcode ${e.dns.rcode ?? '-'} ${(e.dns.ips ?? []).join(',')}`.trimEnd();
  }
  return `${head}, identity ${identityName(f.source.identity)}->${identityName(f.destination.identity)}, verdict ${verdict} ${what}`;
}

/** One `membrane monitor` line for an {event, flow} record of /v1/monitor. */
export function monitorLine(rec: { event: any; flow: Flow }, verbose = false): string {
  const e = rec.event;
  let line: string;
  if (e.type === 'l7') return l7MonitorLine(e, rec.flow);
  if (e.type === 'drop') {
    const reason = rec.flow.Summary.match(/\(([^)]*)\)$/)?.[1] ?? `reason ${e.reason}`;
    line = `xx drop (${reason}) flow ${hex(e.hash)} to endpoint ${e.dstId}, ifindex ${e.ifindex}, file ${e.file} line ${e.line}, , identity ${identityName(e.srcLabel)}->${identityName(e.dstLabel)}: ${packetSummary(e.data)}`;
  } else if (e.type === 'trace') {
    const prefix = (TRACE_PREFIX[e.point] ?? ((x: any) => `-> ${x.point}`))(e, rec.flow);
    const state = { 0: 'new', 1: 'established', 2: 'reply', 3: 'related' }[e.ctState as 0 | 1 | 2 | 3] ?? 'untracked';
    line = `${prefix} flow ${hex(e.hash)} identity ${identityName(e.srcLabel)}->${identityName(e.dstLabel)} state ${state} ifindex ${rec.flow.interface?.name ?? e.ifindex} orig-ip 0.0.0.0: ${packetSummary(e.data)}`;
  } else {
    line = `Policy verdict log: flow ${hex(e.hash)}, local EP ID ${e.source}, remote ID ${identityName(e.remoteLabel)}, proto ${e.proto}, ${e.direction.toLowerCase()}, action ${e.allowed ? 'allow' : 'deny'}, auth: disabled, match ${rec.flow.policy_match_type}, ${packetSummary(e.data)}`;
  }
  return verbose ? `${line}\n${packetDetails(e.data)}\n------------------------------------------------------------------------------` : line;
}

function endpointText(e: FlowEndpoint, ip?: string, port?: number): string {
  const where = e.pod_name ? `${e.namespace}/${e.pod_name}` : ip ?? '?';
  const p = port !== undefined ? `:${port}` : '';
  const who = e.pod_name ? `(ID:${e.identity})` : `(${identityName(e.identity)})`;
  return `${where}${p} ${who}`;
}

function ports(f: Flow): [number | undefined, number | undefined] {
  const l = f.l4?.TCP ?? f.l4?.UDP ?? f.l4?.SCTP;
  return [l?.source_port, l?.destination_port];
}

function shortTime(iso: string): string {
  const d = new Date(iso);
  const mon = d.toLocaleString('en-US', { month: 'short', timeZone: 'UTC' });
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${mon} ${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}`;
}

function what(f: Flow): string {
  if (f.l7) return `${f.l7.http ? 'http' : 'dns'}-${f.l7.type.toLowerCase()} ${f.verdict}`;
  if (f.event_type.type === 5) return `policy-verdict:${f.policy_match_type} ${f.traffic_direction} ${f.verdict === 'DROPPED' ? 'DENIED' : 'ALLOWED'}`;
  if (f.verdict === 'DROPPED') return `${f.Summary.match(/\(([^)]*)\)$/)?.[1] ?? f.drop_reason_desc} DROPPED`;
  return `${(f.trace_observation_point ?? '').toLowerCase().replace(/_/g, '-')} ${f.verdict}`;
}

function l4Text(f: Flow): string {
  if (f.l7) return `(${f.Summary})`;
  if (f.l4?.TCP) return `(TCP Flags: ${flagNames(f.l4.TCP.flags ?? {}).join(', ')})`;
  if (f.l4?.UDP) return '(UDP)';
  if (f.l4?.SCTP) return '(SCTP)';
  if (f.l4?.ICMPv4) return `(ICMPv4 ${f.l4.ICMPv4.type === 8 ? 'EchoRequest' : f.l4.ICMPv4.type === 0 ? 'EchoReply' : `type ${f.l4.ICMPv4.type}`})`;
  return '';
}

/** One compact line per flow, as users read them. */
export function flowCompact(f: Flow): string {
  const [sp, dp] = ports(f);
  return `${shortTime(f.time)}: ${endpointText(f.source, f.IP?.source, sp)} ${f.is_reply ? '<-' : '->'} ${endpointText(f.destination, f.IP?.destination, dp)} ${what(f)} ${l4Text(f)}`.trimEnd();
}

export function flowRow(f: Flow): string[] {
  const [sp, dp] = ports(f);
  return [
    shortTime(f.time),
    endpointText(f.source, f.IP?.source, sp),
    endpointText(f.destination, f.IP?.destination, dp),
    f.l7 ? `${f.l7.http ? 'http' : 'dns'}-${f.l7.type.toLowerCase()}` : f.event_type.type === 1 ? 'drop' : f.event_type.type === 5 ? 'policy-verdict' : (f.trace_observation_point ?? '').toLowerCase(),
    f.verdict + (f.drop_reason ? ` (${f.drop_reason})` : ''),
    l4Text(f),
  ];
}
