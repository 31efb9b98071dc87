/**
 * The service map's data model, free of the DOM: flow records as the agent
 * streams them (GET /v1/flows), the peer (graph node) a flow endpoint belongs
 * to, the filters, and the aggregation of flows into nodes and edges.
 */

export type Verdict = 'FORWARDED' | 'DROPPED' | 'AUDIT' | 'REDIRECTED' | 'ERROR' | 'TRACED' | string;

export interface FlowEndpoint {
  ID?: number;
  identity: number;
  namespace?: string;
  pod_name?: string;
  labels?: string[];
  /** The node of a pod on another node (cluster mode). */
  node_name?: string;
}

export interface TcpFlags {
  SYN?: boolean;
  ACK?: boolean;
  FIN?: boolean;
  RST?: boolean;
  PSH?: boolean;
  URG?: boolean;
  ECE?: boolean;
  CWR?: boolean;
  NS?: boolean;
}

export interface Flow {
  time: string;
  uuid?: string;
  verdict: Verdict;
  drop_reason?: number;
  drop_reason_desc?: string;
  event_type?: { type: number | string; sub_type?: number | string };
  IP?: { source: string; destination: string; ipVersion?: string | number };
  l4?: {
    TCP?: { source_port: number; destination_port: number; flags?: TcpFlags };
    UDP?: { source_port: number; destination_port: number };
    SCTP?: { source_port: number; destination_port: number };
    ICMPv4?: { type: number; code: number };
    ICMPv6?: { type: number; code: number };
  };
  l7?: {
    type: 'REQUEST' | 'RESPONSE' | string;
    latency_ns?: number;
    http?: { code?: number; method: string; url: string; protocol?: string };
    dns?: { query: string; rcode?: string; ips?: string[]; qtypes?: string[] };
    route?: { gateway: string; route: string; backend?: string };
  };
  source: FlowEndpoint;
  destination: FlowEndpoint;
  traffic_direction?: string;
  trace_observation_point?: string;
  is_reply?: boolean;
  policy_match_type?: string;
  node_name?: string;
  Summary?: string;
}

export interface Endpoint {
  id: number;
  identity: number;
  ipv4?: string;
  namespace?: string;
  podName?: string;
  labels?: string[];
}

export type PeerKind = 'workload' | 'world' | 'host' | 'cidr' | 'reserved' | 'unknown';

/** A node of the map: a workload (namespace + app label, else pod name) or a non-pod peer. */
export interface Peer {
  id: string;
  label: string;
  kind: PeerKind;
  namespace?: string;
}

/** Labels whose value names a pod's workload, in order of preference. */
export const WORKLOAD_LABELS = ['app', 'name', 'k8s-app', 'app.kubernetes.io/name'];

/** "k8s:app=web" -> {source: k8s, key: app, value: web}; "reserved:world" -> {source: reserved, key: world}. */
export function parseLabel(l: string): { source: string; key: string; value: string } {
  const eq = l.indexOf('=');
  const kp = eq >= 0 ? l.slice(0, eq) : l;
  const value = eq >= 0 ? l.slice(eq + 1) : '';
  const colon = kp.indexOf(':');
  // cidr:10.0.0.0/8 has no "=": the key is everything after the source.
  if (colon > 0) return { source: kp.slice(0, colon), key: kp.slice(colon + 1), value };
  return { source: '', key: kp, value };
}

export function labelValue(labels: string[] | undefined, key: string): string | undefined {
  for (const l of labels ?? []) {
    const p = parseLabel(l);
    if (p.key === key && (p.source === 'k8s' || p.source === '' || p.source === 'container')) return p.value;
  }
  return undefined;
}

function prefixLen(cidr: string): number {
  const n = Number(cidr.split('/')[1]);
  return Number.isFinite(n) ? n : -1;
}

/** The graph node a flow endpoint belongs to. podLabels: labels of local endpoints by "ns/pod", for flows that carry none. */
export function peerOf(ep: FlowEndpoint, ip: string | undefined, podLabels?: Map<string, string[]>, identityLabels?: Map<number, string[]>): Peer {
  if (ep.pod_name) {
    const ns = ep.namespace || 'default';
    const labels = ep.labels?.length ? ep.labels : podLabels?.get(`${ns}/${ep.pod_name}`);
    let name = ep.pod_name;
    for (const k of WORKLOAD_LABELS) {
      const v = labelValue(labels, k);
      if (v) {
        name = v;
        break;
      }
    }
    return { id: `${ns}/${name}`, label: name, kind: 'workload', namespace: ns };
  }
  const labels = ep.labels?.length ? ep.labels : identityLabels?.get(ep.identity) ?? [];
  const parsed = labels.map(parseLabel);
  if (parsed.some((p) => p.source === 'reserved' && p.key === 'host')) return { id: 'host', label: 'host', kind: 'host' };
  const cidrs = parsed.filter((p) => p.source === 'cidr').map((p) => p.key);
  if (cidrs.length) {
    // A CIDR identity carries its prefix and every super-prefix: name it by the most specific.
    const best = cidrs.sort((a, b) => prefixLen(b) - prefixLen(a))[0];
    return { id: `cidr:${best}`, label: `cidr:${best}`, kind: 'cidr' };
  }
  if (parsed.some((p) => p.source === 'reserved' && (p.key === 'world' || p.key.startsWith('world-')))) return { id: 'world', label: 'world', kind: 'world' };
  const reserved = parsed.find((p) => p.source === 'reserved');
  if (reserved) return { id: reserved.key, label: reserved.key, kind: 'reserved' };
  if (ep.identity === 1) return { id: 'host', label: 'host', kind: 'host' };
  if (ep.identity === 2) return { id: 'world', label: 'world', kind: 'world' };
  const name = ip ? ip : `identity ${ep.identity}`;
  return { id: `peer:${name}`, label: name, kind: 'unknown' };
}

export function protocolOf(f: Flow): string {
  const l4 = f.l4 ?? {};
  if (l4.TCP) return 'TCP';
  if (l4.UDP) return 'UDP';
  if (l4.SCTP) return 'SCTP';
  if (l4.ICMPv4) return 'ICMPv4';
  if (l4.ICMPv6) return 'ICMPv6';
  return '';
}

export function portsOf(f: Flow): { src?: number; dst?: number } {
  const p = f.l4?.TCP ?? f.l4?.UDP ?? f.l4?.SCTP;
  return p ? { src: p.source_port, dst: p.destination_port } : {};
}

/** "8080/TCP", "ICMPv4 8/0", or "" */
export function portProto(f: Flow): string {
  const proto = protocolOf(f);
  const { dst } = portsOf(f);
  if (dst !== undefined) return `${dst}/${proto}`;
  const icmp = f.l4?.ICMPv4 ?? f.l4?.ICMPv6;
  if (icmp) return `${proto} ${icmp.type}/${icmp.code}`;
  return proto;
}

/** The service port of a flow as an edge shows it: a reply's source port is the service's. */
export function servicePort(f: Flow): string {
  const proto = protocolOf(f);
  const { src, dst } = portsOf(f);
  const port = f.is_reply ? src : dst;
  if (port !== undefined) return `${port}/${proto}`;
  return proto || 'L3';
}

export function tcpFlags(f: Flow): string {
  const fl = f.l4?.TCP?.flags;
  if (!fl) return '';
  return (['SYN', 'ACK', 'FIN', 'RST', 'PSH', 'URG', 'ECE', 'CWR', 'NS'] as const).filter((k) => fl[k]).join(' ');
}

export function dropReason(f: Flow): string {
  if (f.verdict !== 'DROPPED' && f.verdict !== 'ERROR' && !f.drop_reason) return '';
  const desc = f.drop_reason_desc;
  if (desc && f.drop_reason) return `${desc} (${f.drop_reason})`;
  return desc || (f.drop_reason ? String(f.drop_reason) : '');
}

/** The path of an HTTP URL. */
function urlPath(url: string): string {
  const m = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i.exec(url);
  return (m ? url.slice(m[0].length) : url) || '/';
}

/** What an L7 flow says: "GET /api 403", "DNS example.com A NXDomain"; "" for other flows. */
export function l7Text(f: Flow): string {
  const l7 = f.l7;
  if (!l7) return '';
  if (l7.http) {
    const via = l7.route ? `via ${l7.route.gateway}${l7.route.route ? ` ${l7.route.route}` : ''}${l7.route.backend ? ` -> ${l7.route.backend}` : ''}` : '';
    return [l7.http.method, urlPath(l7.http.url), l7.http.code, via].filter((x) => x !== undefined && x !== '').join(' ');
  }
  if (l7.dns) return ['DNS', l7.dns.query, ...(l7.dns.qtypes ?? []), l7.dns.rcode ?? '', ...(l7.dns.ips ?? [])].filter(Boolean).join(' ');
  return '';
}

/** An L7 flow the proxy denied (an HTTP 403 for a request the policy refuses). */
export function isL7Denied(f: Flow): boolean {
  return !!f.l7 && isDenied(f.verdict);
}

/** Denied or failed: the red side of the map. Everything else reached its destination. */
export function isDenied(v: Verdict): boolean {
  return v === 'DROPPED' || v === 'ERROR';
}

export interface Filters {
  namespace: string;
  pod: string;
  verdict: string;
  protocol: string;
  port: string;
  text: string;
  /** A map node clicked: flows from or to this peer. */
  node: string;
  /** A map edge clicked: "src->dst" (request direction). */
  edge: string;
}

export const EMPTY_FILTERS: Filters = { namespace: '', pod: '', verdict: '', protocol: '', port: '', text: '', node: '', edge: '' };

/** The filters the agent understands, as query parameters of GET /v1/flows. */
export function agentQuery(f: Filters): URLSearchParams {
  const q = new URLSearchParams();
  if (f.namespace) q.set('namespace', f.namespace);
  if (f.pod) q.set('pod', f.pod);
  if (f.verdict) q.set('verdict', f.verdict);
  if (f.protocol) q.set('protocol', f.protocol);
  if (f.port) q.set('port', f.port);
  return q;
}

function podMatches(ep: FlowEndpoint, want: string): boolean {
  if (!ep.pod_name) return false;
  const slash = want.indexOf('/');
  if (slash >= 0) return (ep.namespace || 'default') === want.slice(0, slash) && ep.pod_name.startsWith(want.slice(slash + 1));
  return ep.pod_name.startsWith(want);
}

/** A flow as the map sees it: its two peers, in request direction (replies turned around). */
export interface ViewFlow {
  flow: Flow;
  src: Peer;
  dst: Peer;
  /** Request-direction endpoints of the edge this flow counts on. */
  edgeSrc: Peer;
  edgeDst: Peer;
  /** The connection (5-tuple in request direction) the flow belongs to. */
  conn: string;
  haystack: string;
}

/**
 * One connection's key: protocol and both ends in request direction. A packet is
 * reported at several points (egress policy verdict, trace, ingress drop), so
 * the map judges connections, not records: a connection is dropped when any
 * record of it is.
 */
export function connKey(f: Flow): string {
  let s = f.IP?.source ?? `identity:${f.source.identity}`;
  let d = f.IP?.destination ?? `identity:${f.destination.identity}`;
  let { src: sp, dst: dp } = portsOf(f);
  if (f.is_reply) {
    [s, d] = [d, s];
    [sp, dp] = [dp, sp];
  }
  return `${protocolOf(f) || 'L3'} ${s}:${sp ?? ''} ${d}:${dp ?? ''}`;
}

/** connection key -> denied (any record of it dropped or in error). */
export function connectionOutcomes(flows: Iterable<ViewFlow>): Map<string, boolean> {
  const out = new Map<string, boolean>();
  // L7 verdicts judge requests, not the connection: a denied request (403) travels over an allowed connection.
  for (const v of flows) if (!v.flow.l7) out.set(v.conn, (out.get(v.conn) ?? false) || isDenied(v.flow.verdict));
  return out;
}

export function viewFlow(flow: Flow, podLabels?: Map<string, string[]>, identityLabels?: Map<number, string[]>): ViewFlow {
  const src = peerOf(flow.source, flow.IP?.source, podLabels, identityLabels);
  const dst = peerOf(flow.destination, flow.IP?.destination, podLabels, identityLabels);
  const [edgeSrc, edgeDst] = flow.is_reply ? [dst, src] : [src, dst];
  const side = (e: FlowEndpoint, p: Peer, ip?: string) => [p.id, e.namespace, e.pod_name, ip, ...(e.labels ?? [])].filter(Boolean).join(' ');
  const haystack = [
    flow.Summary,
    l7Text(flow),
    flow.verdict,
    dropReason(flow),
    portProto(flow),
    tcpFlags(flow),
    flow.traffic_direction,
    flow.trace_observation_point,
    side(flow.source, src, flow.IP?.source),
    side(flow.destination, dst, flow.IP?.destination),
  ]
    .filter(Boolean)
    .join(' ')
    .toLowerCase();
  return { flow, src, dst, edgeSrc, edgeDst, conn: connKey(flow), haystack };
}

export function edgeId(src: string, dst: string): string {
  return `${src}->${dst}`;
}

export function matches(v: ViewFlow, f: Filters): boolean {
  const fl = v.flow;
  if (f.namespace && (fl.source.namespace || (fl.source.pod_name ? 'default' : '')) !== f.namespace && (fl.destination.namespace || (fl.destination.pod_name ? 'default' : '')) !== f.namespace) return false;
  if (f.pod && !podMatches(fl.source, f.pod) && !podMatches(fl.destination, f.pod)) return false;
  if (f.verdict && fl.verdict !== f.verdict) return false;
  if (f.protocol && protocolOf(fl).toUpperCase() !== f.protocol.toUpperCase()) return false;
  if (f.port) {
    const { src, dst } = portsOf(fl);
    if (String(src) !== f.port && String(dst) !== f.port) return false;
  }
  if (f.node && v.src.id !== f.node && v.dst.id !== f.node) return false;
  if (f.edge && edgeId(v.edgeSrc.id, v.edgeDst.id) !== f.edge) return false;
  if (f.text) {
    for (const word of f.text.toLowerCase().split(/\s+/).filter(Boolean)) if (!v.haystack.includes(word)) return false;
  }
  return true;
}

export type EdgeVerdict = 'forwarded' | 'dropped' | 'mixed';

export interface GraphEdge {
  id: string;
  source: string;
  target: string;
  /** Connections that got through, and connections that were dropped. */
  forwarded: number;
  dropped: number;
  /** Flow records counted on the edge. */
  flows: number;
  ports: string[];
  verdict: EdgeVerdict;
  lastSeen: string;
  /** L7 records (HTTP, DNS) on the edge, and those the proxy denied. */
  l7: number;
  l7Denied: number;
  /** Methods (or DNS) seen on the edge. */
  l7Kinds: string[];
  /** Its two ends run on different cluster nodes (the traffic crosses the overlay). */
  crossNode: boolean;
}

export interface GraphNode extends Peer {
  pods: string[];
  flows: number;
  /** The cluster nodes its pods were seen on (cluster mode). */
  clusterNodes: string[];
}

/** The cluster node a flow's end runs on: the observing node for a local endpoint, the remote pod's node otherwise. */
export function clusterNodeOf(f: Flow, e: FlowEndpoint): string | undefined {
  if (e.node_name) return e.node_name;
  return e.ID !== undefined ? f.node_name : undefined;
}

export interface Graph {
  nodes: GraphNode[];
  edges: GraphEdge[];
}

/**
 * Nodes and edges of the map: every peer of a matching flow, plus the local
 * workloads given. An edge's verdict comes from its connections' outcomes
 * (judged over every flow known, not only the matching ones, so a filter never
 * paints a dropped connection green).
 */
export function buildGraph(flows: ViewFlow[], extraNodes: { peer: Peer; pod?: string }[], outcomes: Map<string, boolean> = connectionOutcomes(flows)): Graph {
  const nodes = new Map<string, GraphNode & { podSet: Set<string>; nodeSet: Set<string> }>();
  const node = (p: Peer) => {
    let n = nodes.get(p.id);
    if (!n) nodes.set(p.id, (n = { ...p, pods: [], flows: 0, clusterNodes: [], podSet: new Set(), nodeSet: new Set() }));
    return n;
  };
  for (const x of extraNodes) {
    const n = node(x.peer);
    if (x.pod) n.podSet.add(x.pod);
  }
  const edges = new Map<string, GraphEdge & { portSet: Set<string>; fwd: Set<string>; drop: Set<string>; kindSet: Set<string> }>();
  for (const v of flows) {
    for (const [p, e] of [
      [v.src, v.flow.source],
      [v.dst, v.flow.destination],
    ] as const) {
      const n = node(p);
      n.flows++;
      if (e.pod_name) n.podSet.add(e.pod_name);
      const cn = clusterNodeOf(v.flow, e);
      if (cn) n.nodeSet.add(cn);
    }
    const srcNode = clusterNodeOf(v.flow, v.flow.source);
    const dstNode = clusterNodeOf(v.flow, v.flow.destination);
    const id = edgeId(v.edgeSrc.id, v.edgeDst.id);
    let e = edges.get(id);
    if (!e) edges.set(id, (e = { id, source: v.edgeSrc.id, target: v.edgeDst.id, forwarded: 0, dropped: 0, flows: 0, ports: [], verdict: 'forwarded', lastSeen: '', l7: 0, l7Denied: 0, l7Kinds: [], crossNode: false, portSet: new Set(), fwd: new Set(), drop: new Set(), kindSet: new Set() }));
    e.flows++;
    if (srcNode && dstNode && srcNode !== dstNode) e.crossNode = true;
    if (v.flow.l7) {
      e.l7++;
      if (isL7Denied(v.flow)) e.l7Denied++;
      e.kindSet.add(v.flow.l7.http ? v.flow.l7.http.method : 'DNS');
      if (!outcomes.has(v.conn)) e.fwd.add(v.conn);
    } else if (outcomes.get(v.conn) ?? isDenied(v.flow.verdict)) e.drop.add(v.conn);
    else e.fwd.add(v.conn);
    e.portSet.add(servicePort(v.flow));
    if (v.flow.time > e.lastSeen) e.lastSeen = v.flow.time;
  }
  return {
    nodes: [...nodes.values()].map(({ podSet, nodeSet, ...n }) => ({ ...n, pods: [...podSet].sort(), clusterNodes: [...nodeSet].sort() })),
    edges: [...edges.values()].map(({ portSet, fwd, drop, kindSet, ...e }) => ({
      ...e,
      l7Kinds: [...kindSet].sort(),
      forwarded: fwd.size,
      dropped: drop.size,
      ports: [...portSet].sort((a, b) => (parseInt(a) || 0) - (parseInt(b) || 0) || a.localeCompare(b)),
      verdict: drop.size && fwd.size ? 'mixed' : drop.size ? 'dropped' : 'forwarded',
    })),
  };
}

/** A stable key for de-duplicating flows seen twice (a stream reopened with a backlog). */
export function flowKey(f: Flow): string {
  return f.uuid || `${f.time}|${f.Summary ?? ''}|${f.IP?.source ?? ''}|${f.IP?.destination ?? ''}|${f.verdict}`;
}
