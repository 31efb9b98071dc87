/**
 * What names the two ends of a flow, taken when the event is ingested so that
 * a stored flow can still be named after its endpoint is gone: interned
 * snapshots of endpoints (id, identity, namespace, pod name, labels), of
 * identities (labels) and of interface names. Every flow refers to them by a
 * 32-bit reference; a snapshot is shared by all the flows that refer to it and
 * freed when the last of them is evicted (reference counts), so what is kept
 * is bounded by the stored flows and accounted in bytes.
 *
 * Lookups on the ingestion path cost a Map lookup keyed by numbers (endpoint
 * id, IPv4 address as a u32, identity), no string and no object per event.
 */

export interface EndpointInfoLite {
  id: number;
  identity: number;
  namespace: string;
  podName?: string;
  labels: string[];
}

/** An endpoint of this node as the source lists it. */
export interface SourceEndpoint extends EndpointInfoLite {
  ipv4?: string;
  ipv6?: string;
}

/** A pod on another node (cluster mode), as the cluster store publishes it. */
export interface RemoteEndpoint {
  ip: string;
  identity: number;
  namespace: string;
  podName?: string;
  node: string;
}

/** Where the names come from (the agent's endpoints, remote pods, identities and links). */
export interface FlowSource {
  nodeName: string;
  endpoints(): Iterable<SourceEndpoint>;
  /** Pods of other nodes (cluster mode): a flow to or from one names it, its labels and node. */
  remoteEndpoints?(): Iterable<RemoteEndpoint>;
  identityLabels(id: number): string[] | undefined;
  linkNames(): Map<number, string>;
}

/** An interned snapshot: an endpoint (ep set), an identity (labels only) or an interface name. */
export interface Ctx {
  ep?: number;
  identity: number;
  namespace?: string;
  podName?: string;
  labels: string[];
  ifName?: string;
  /** The node of a remote pod (cluster mode). */
  node?: string;
  /** Estimated bytes held by this snapshot (object, strings, array). */
  bytes: number;
}

const NS_LABEL = 'k8s:io.kubernetes.pod.namespace=';
const EMPTY: string[] = [];

/** Rough V8 footprint of a string (header + one byte per Latin-1 char, two otherwise). */
function strBytes(s: string | undefined): number {
  if (s === undefined) return 0;
  return 16 + (/[^\u0000-\u00ff]/.test(s) ? 2 : 1) * s.length;
}

function sameLabels(a: string[], b: string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function ipv4ToU32(ip: string): number | undefined {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(ip);
  if (!m) return undefined;
  return ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
}

interface EpCache {
  info: SourceEndpoint;
  ctx: number;
}

export class ContextTable {
  private readonly entries: (Ctx | undefined)[] = [undefined]; // 0: no context
  private refs = new Uint32Array(1024);
  private readonly freeIds: number[] = [];
  /** Bytes held by live snapshots. */
  bytes = 0;

  // Current snapshots, each holding one reference.
  private readonly epCtx = new Map<number, EpCache>();
  private readonly identityCtx = new Map<number, { labels: string[]; ctx: number }>();
  private readonly ifCtx = new Map<number, { name: string; ctx: number }>();
  private readonly remoteCtx = new Map<string, { info: RemoteEndpoint; labels: string[]; ctx: number }>();

  // Indexes of the source's endpoints, refreshed at most every REFRESH_MS (and on an unknown id).
  private byId = new Map<number, SourceEndpoint>();
  private byIpv4 = new Map<number, SourceEndpoint>();
  private byIp = new Map<string, SourceEndpoint>();
  private remoteByIpv4 = new Map<number, RemoteEndpoint>();
  private remoteByIp = new Map<string, RemoteEndpoint>();
  private links = new Map<number, string>();
  private epAt = -Infinity;
  private missAt = -Infinity;
  private linkAt = -Infinity;
  static REFRESH_MS = 500;
  static MISS_REFRESH_MS = 100;

  constructor(readonly source: FlowSource) {}

  get nodeName(): string {
    return this.source.nodeName;
  }

  /** Live snapshots (for accounting and tests). */
  get size(): number {
    return this.entries.length - 1 - this.freeIds.length;
  }

  get(ctx: number): Ctx | undefined {
    return this.entries[ctx];
  }

  private alloc(c: Ctx): number {
    const id = this.freeIds.pop() ?? this.entries.length;
    if (id === this.entries.length) this.entries.push(c);
    else this.entries[id] = c;
    if (id >= this.refs.length) {
      const n = new Uint32Array(this.refs.length * 2);
      n.set(this.refs);
      this.refs = n;
    }
    this.refs[id] = 1; // the cache's reference
    this.bytes += c.bytes;
    return id;
  }

  ref(ctx: number): number {
    if (ctx) this.refs[ctx]++;
    return ctx;
  }

  unref(ctx: number): void {
    if (!ctx) return;
    if (--this.refs[ctx] === 0) {
      this.bytes -= this.entries[ctx]!.bytes;
      this.entries[ctx] = undefined;
      this.freeIds.push(ctx);
    }
  }

  /** Refresh the endpoint indexes if they are older than REFRESH_MS (or `force`). */
  refresh(now = Date.now(), force = false): void {
    if (!force && now - this.epAt < ContextTable.REFRESH_MS) return;
    this.epAt = now;
    const byId = new Map<number, SourceEndpoint>();
    const byIpv4 = new Map<number, SourceEndpoint>();
    const byIp = new Map<string, SourceEndpoint>();
    for (const e of this.source.endpoints()) {
      byId.set(e.id, e);
      if (e.ipv4) {
        const n = ipv4ToU32(e.ipv4);
        if (n !== undefined) byIpv4.set(n, e);
        byIp.set(e.ipv4, e);
      }
      if (e.ipv6) byIp.set(e.ipv6, e);
    }
    this.byId = byId;
    this.byIpv4 = byIpv4;
    this.byIp = byIp;
    if (this.source.remoteEndpoints) {
      const rv4 = new Map<number, RemoteEndpoint>();
      const rip = new Map<string, RemoteEndpoint>();
      for (const r of this.source.remoteEndpoints()) {
        const n = ipv4ToU32(r.ip);
        if (n !== undefined) rv4.set(n, r);
        rip.set(r.ip, r);
      }
      this.remoteByIpv4 = rv4;
      this.remoteByIp = rip;
      for (const [ip, c] of this.remoteCtx) {
        if (!rip.has(ip)) {
          this.remoteCtx.delete(ip);
          this.unref(c.ctx);
        }
      }
    }
    // Snapshots of endpoints that are gone stay alive while flows refer to them.
    for (const [id, c] of this.epCtx) {
      if (!byId.has(id)) {
        this.epCtx.delete(id);
        this.unref(c.ctx);
      }
    }
  }

  private endpointById(id: number, now: number): SourceEndpoint | undefined {
    const e = this.byId.get(id);
    if (e || now - this.missAt < ContextTable.MISS_REFRESH_MS) return e;
    this.missAt = now;
    this.refresh(now, true);
    return this.byId.get(id);
  }

  /** The current snapshot of an endpoint (a new one when it changed), unreferenced. */
  private endpointCtx(e: SourceEndpoint): number {
    const c = this.epCtx.get(e.id);
    if (c) {
      const i = c.info;
      if (i === e || (i.identity === e.identity && i.namespace === e.namespace && i.podName === e.podName && sameLabels(i.labels, e.labels))) return c.ctx;
      this.unref(c.ctx);
    }
    const labels = e.labels ?? EMPTY;
    const bytes = 96 + strBytes(e.namespace) + strBytes(e.podName) + 16 + labels.reduce((t, l) => t + 8 + strBytes(l), 0);
    const ctx = this.alloc({ ep: e.id, identity: e.identity, namespace: e.namespace, podName: e.podName, labels, bytes });
    this.epCtx.set(e.id, { info: { ...e }, ctx });
    return ctx;
  }

  /** The snapshot of a remote pod (its labels from its identity), unreferenced. */
  private remoteContext(r: RemoteEndpoint): number {
    const labels = this.source.identityLabels(r.identity) ?? EMPTY;
    const c = this.remoteCtx.get(r.ip);
    if (c) {
      const i = c.info;
      if (i.identity === r.identity && i.namespace === r.namespace && i.podName === r.podName && i.node === r.node && sameLabels(c.labels, labels)) return c.ctx;
      this.unref(c.ctx);
    }
    const bytes = 112 + strBytes(r.namespace) + strBytes(r.podName) + strBytes(r.node) + 16 + labels.reduce((t, l) => t + 8 + strBytes(l), 0);
    const ctx = this.alloc({ identity: r.identity, namespace: r.namespace, podName: r.podName, node: r.node, labels, bytes });
    this.remoteCtx.set(r.ip, { info: { ...r }, labels, ctx });
    return ctx;
  }

  /** The snapshot of an identity's labels (namespace from its labels), unreferenced. */
  identityContext(identity: number): number {
    const labels = this.source.identityLabels(identity) ?? EMPTY;
    const c = this.identityCtx.get(identity);
    if (c) {
      if (sameLabels(c.labels, labels)) return c.ctx;
      this.unref(c.ctx);
    }
    let namespace: string | undefined;
    for (const l of labels) if (l.startsWith(NS_LABEL)) namespace = l.slice(NS_LABEL.length);
    const bytes = 80 + strBytes(namespace) + 16 + labels.reduce((t, l) => t + 8 + strBytes(l), 0);
    const ctx = this.alloc({ identity, namespace, labels, bytes });
    this.identityCtx.set(identity, { labels, ctx });
    return ctx;
  }

  /**
   * The context naming one end of a flow, referenced for the caller: the
   * endpoint `knownId` (when non-zero and known), else the endpoint owning the
   * IPv4 address `ipv4` (u32; 0 = none), else the identity's labels.
   */
  endContext(knownId: number, ipv4: number, identity: number, now: number): number {
    let e: SourceEndpoint | undefined;
    if (knownId) e = this.endpointById(knownId, now);
    if (!e && ipv4) e = this.byIpv4.get(ipv4);
    if (e) return this.ref(this.endpointCtx(e));
    const r = ipv4 ? this.remoteByIpv4.get(ipv4) : undefined;
    return this.ref(r && (!identity || r.identity === identity) ? this.remoteContext(r) : this.identityContext(identity));
  }

  /** As endContext, with the address as a string (IPv6 and records from proxies). */
  endContextByIp(knownId: number, ip: string | undefined, identity: number, now: number): number {
    let e: SourceEndpoint | undefined;
    if (knownId) e = this.endpointById(knownId, now);
    if (!e && ip) e = this.byIp.get(ip);
    if (e) return this.ref(this.endpointCtx(e));
    const r = ip ? this.remoteByIp.get(ip) : undefined;
    return this.ref(r && (!identity || r.identity === identity) ? this.remoteContext(r) : this.identityContext(identity));
  }

  /** An interface's name, referenced for the caller (0 if unknown). */
  ifContext(ifindex: number, now: number): number {
    if (!ifindex) return 0;
    let name = this.links.get(ifindex);
    if (name === undefined && now - this.linkAt > 1000) {
      this.linkAt = now;
      try {
        this.links = this.source.linkNames();
      } catch {
        /* best effort */
      }
      name = this.links.get(ifindex);
    }
    if (name === undefined) return 0;
    const c = this.ifCtx.get(ifindex);
    if (c && c.name === name) return this.ref(c.ctx);
    if (c) this.unref(c.ctx);
    const ctx = this.alloc({ identity: 0, labels: EMPTY, ifName: name, bytes: 64 + strBytes(name) });
    this.ifCtx.set(ifindex, { name, ctx });
    return this.ref(ctx);
  }
}
