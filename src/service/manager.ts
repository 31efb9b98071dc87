/**
 * Services: Service and EndpointSlice objects -> load-balancing map state.
 *
 * Each Service port is a frontend (ClusterIP:port/proto, and for NodePort
 * services nodeAddress:nodePort/proto); its backends come from the Service's
 * EndpointSlices, or, when it has none, from the local pods its selector picks
 * (the convenience slices a cluster's controller would have made). Ready
 * backends fill the frontend's slots (random selection, or a Maglev table);
 * terminating backends stay in the backends map so established flows finish.
 * Backend ids, reverse-NAT indices, ClusterIPs and node ports are allocated
 * once and persisted: conntrack entries in the kernel refer to them.
 */
import * as path from 'node:path';
import { LB_MAGLEV_M, LB_SVC_F_AFFINITY, LB_SVC_F_CLUSTERIP, LB_SVC_F_LOCAL, LB_SVC_F_MAGLEV, LB_SVC_F_NODEPORT, FAMILY_IPV4 } from '../datapath/constants';
import type * as gen from '../datapath/maps.gen';
import type { Resource } from '../store/types';
import { cidrContains, cidrSize, formatIp, ipAtOffset, parseCidr, parseIp } from '../util/ip';
import { readJson, writeJsonAtomic } from '../util/fsutil';
import { maglevTable } from './maglev';

export interface LocalPod {
  ip: string;
  namespace: string;
  podName?: string;
  podLabels: Record<string, string>;
  namedPorts: Record<string, { port: number; protocol: string }[]>;
}

export interface Backend {
  id: number;
  ip: string;
  port: number;
  protocol: string;
  terminating: boolean;
}

export interface Frontend {
  service: string; // ns/name
  portName: string;
  type: 'ClusterIP' | 'NodePort';
  ip: string;
  port: number;
  protocol: string;
  revNat: number;
  algorithm: 'random' | 'maglev';
  affinityTimeout?: number;
  local: boolean;
  backends: Backend[];
  /** Slot contents: backend ids (Maglev: LB_MAGLEV_M of them). */
  slots: number[];
}

interface ServiceState {
  clusterIPs: Record<string, string>;
  nodePorts: Record<string, number>;
  revNat: Record<string, number>;
  backendIds: Record<string, number>;
}

const PROTO: Record<string, number> = { TCP: 6, UDP: 17, SCTP: 132 };

export class ServiceError extends Error {}

export class ServiceManager {
  private readonly cidr;
  private readonly file: string;
  private state: ServiceState;

  /** Values in use, kept beside the state so allocation does not rescan it (10,000 services). */
  private readonly used = { clusterIPs: new Set<string>(), nodePorts: new Set<number>(), revNat: new Set<number>(), backendIds: new Set<number>() };
  private readonly cursor = { clusterIP: 1, nodePort: 30000, revNat: 1, backendId: 1 };

  constructor(serviceCidr: string, stateDir: string, private readonly defaultAlgorithm: 'random' | 'maglev' = 'random') {
    this.cidr = parseCidr(serviceCidr, 'service-cidr');
    this.file = path.join(stateDir, 'services.json');
    this.state = readJson<ServiceState>(this.file) ?? { clusterIPs: {}, nodePorts: {}, revNat: {}, backendIds: {} };
    for (const v of Object.values(this.state.clusterIPs)) this.used.clusterIPs.add(v);
    for (const v of Object.values(this.state.nodePorts)) this.used.nodePorts.add(v);
    for (const v of Object.values(this.state.revNat)) this.used.revNat.add(v);
    for (const v of Object.values(this.state.backendIds)) this.used.backendIds.add(v);
  }

  /** The next free value from a cursor, wrapping once over [lo, hi]. */
  private static nextFree(used: Set<number>, from: number, lo: number, hi: number): number | undefined {
    const span = hi - lo + 1;
    for (let i = 0; i < span; i++) {
      const v = lo + ((from - lo + i) % span);
      if (!used.has(v)) return v;
    }
    return undefined;
  }

  private save(): void {
    writeJsonAtomic(this.file, this.state);
  }

  private allocClusterIP(key: string, requested?: string): string {
    if (requested && requested !== 'None' && requested !== '') {
      if (!cidrContains(this.cidr, parseIp(requested))) throw new ServiceError(`${key}: spec.clusterIP ${requested} is outside the service CIDR ${formatIp(this.cidr.addr)}/${this.cidr.prefixLen}`);
      const cur = this.state.clusterIPs[key];
      if (cur === requested) return requested;
      if (this.used.clusterIPs.has(requested)) {
        const owner = Object.entries(this.state.clusterIPs).find(([, ip]) => ip === requested)?.[0];
        throw new ServiceError(`${key}: spec.clusterIP ${requested} is already used by ${owner}`);
      }
      if (cur) this.used.clusterIPs.delete(cur);
      this.state.clusterIPs[key] = requested;
      this.used.clusterIPs.add(requested);
      return requested;
    }
    const cur = this.state.clusterIPs[key];
    if (cur) return cur;
    const size = Math.min(cidrSize(this.cidr), 1 << 20);
    for (let i = 0; i < size - 2; i++) {
      const off = 1 + ((this.cursor.clusterIP - 1 + i) % (size - 2));
      const ip = formatIp(ipAtOffset(this.cidr, off));
      if (!this.used.clusterIPs.has(ip)) {
        this.cursor.clusterIP = off + 1;
        this.state.clusterIPs[key] = ip;
        this.used.clusterIPs.add(ip);
        return ip;
      }
    }
    throw new ServiceError(`service CIDR ${formatIp(this.cidr.addr)}/${this.cidr.prefixLen} is exhausted`);
  }

  private allocNodePort(key: string, requested?: number): number {
    const cur = this.state.nodePorts[key];
    if (requested) {
      if (cur === requested) return requested;
      if (this.used.nodePorts.has(requested)) {
        const owner = Object.entries(this.state.nodePorts).find(([, p]) => p === requested)?.[0];
        throw new ServiceError(`${key}: nodePort ${requested} is already used by ${owner}`);
      }
      if (cur) this.used.nodePorts.delete(cur);
      this.state.nodePorts[key] = requested;
      this.used.nodePorts.add(requested);
      return requested;
    }
    if (cur) return cur;
    const p = ServiceManager.nextFree(this.used.nodePorts, this.cursor.nodePort, 30000, 32767);
    if (p === undefined) throw new ServiceError('node ports 30000-32767 are exhausted');
    this.cursor.nodePort = p + 1;
    this.state.nodePorts[key] = p;
    this.used.nodePorts.add(p);
    return p;
  }

  private revNatIndex(key: string): number {
    const cur = this.state.revNat[key];
    if (cur) return cur;
    const i = ServiceManager.nextFree(this.used.revNat, this.cursor.revNat, 1, 65535);
    if (i === undefined) throw new ServiceError('reverse NAT indices are exhausted');
    this.cursor.revNat = i + 1;
    this.state.revNat[key] = i;
    this.used.revNat.add(i);
    return i;
  }

  private backendId(ip: string, port: number, protocol: string): number {
    const key = `${ip}:${port}/${protocol}`;
    const cur = this.state.backendIds[key];
    if (cur) return cur;
    const i = ServiceManager.nextFree(this.used.backendIds, this.cursor.backendId, 1, (1 << 30) - 1);
    if (i === undefined) throw new ServiceError('backend ids are exhausted');
    this.cursor.backendId = i + 1;
    this.state.backendIds[key] = i;
    this.used.backendIds.add(i);
    return i;
  }

  /** The ClusterIP a Service has (allocated on first sight). */
  clusterIPOf(ns: string, name: string): string | undefined {
    return this.state.clusterIPs[`${ns}/${name}`];
  }

  /**
   * Compute every frontend from the objects. Allocations made on the way are
   * persisted; allocations of services that no longer exist are released.
   */
  compute(
    services: Resource[],
    slices: Resource[],
    pods: LocalPod[],
    nodeAddresses: string[],
    /** Is a backend address on this node (cluster mode: NodePort with externalTrafficPolicy Local uses only those)? */
    isLocal: (ip: string) => boolean = () => true,
  ): { frontends: Frontend[]; errors: string[] } {
    const frontends: Frontend[] = [];
    const errors: string[] = [];
    const live = { clusterIPs: new Set<string>(), nodePorts: new Set<string>(), revNat: new Set<string>(), backends: new Set<string>() };
    const slicesOf = new Map<string, Resource[]>();
    for (const sl of slices) {
      const k = `${sl.metadata.namespace}/${sl.metadata.labels?.['kubernetes.io/service-name']}`;
      (slicesOf.get(k) ?? slicesOf.set(k, []).get(k)!).push(sl);
    }
    for (const svc of services) {
      const ns = svc.metadata.namespace ?? 'default';
      const key = `${ns}/${svc.metadata.name}`;
      const spec = svc.spec ?? {};
      if (spec.clusterIP === 'None') continue;
      try {
        const clusterIP = this.allocClusterIP(key, spec.clusterIP);
        live.clusterIPs.add(key);
        const alg = (svc.metadata.annotations?.['membrane.io/lb-algorithm'] ?? svc.metadata.annotations?.['service.cilium.io/lb-algorithm'] ?? this.defaultAlgorithm) as 'random' | 'maglev';
        const affinity = spec.sessionAffinity === 'ClientIP' ? (spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? 10800) : undefined;
        const mySlices = slicesOf.get(key) ?? [];
        for (const p of spec.ports ?? []) {
          const protocol = p.protocol ?? 'TCP';
          const portName = p.name ?? '';
          const backends = this.backendsFor(ns, spec, p, protocol, mySlices, pods);
          for (const b of backends) live.backends.add(`${b.ip}:${b.port}/${b.protocol}`);
          const mk = (type: Frontend['type'], ip: string, port: number, local: boolean): Frontend => {
            const rk = `${key}/${portName}/${type}/${ip}`;
            live.revNat.add(rk);
            const active = backends.filter((b) => !b.terminating && (!local || isLocal(b.ip)));
            const slots =
              alg === 'maglev' && active.length
                ? maglevTable(active.map((b) => `${b.ip}:${b.port}`), LB_MAGLEV_M).map((i) => active[i].id)
                : active.map((b) => b.id);
            return { service: key, portName, type, ip, port, protocol, revNat: this.revNatIndex(rk), algorithm: alg, affinityTimeout: affinity, local, backends, slots };
          };
          frontends.push(mk('ClusterIP', clusterIP, p.port, false));
          if (spec.type === 'NodePort') {
            const npKey = `${key}/${portName}/${protocol}`;
            const nodePort = this.allocNodePort(npKey, p.nodePort);
            live.nodePorts.add(npKey);
            for (const addr of nodeAddresses) frontends.push(mk('NodePort', addr, nodePort, spec.externalTrafficPolicy === 'Local'));
          }
        }
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    // Release what no object needs any more (backend ids stay while a frontend may still reference them in CT).
    let changed = false;
    const release = <T>(table: Record<string, T>, live: Set<string>, used: Set<T>) => {
      for (const k of Object.keys(table)) {
        if (live.has(k)) continue;
        used.delete(table[k]);
        delete table[k];
        changed = true;
      }
    };
    release(this.state.clusterIPs, live.clusterIPs, this.used.clusterIPs);
    release(this.state.nodePorts, live.nodePorts, this.used.nodePorts);
    release(this.state.revNat, live.revNat, this.used.revNat);
    release(this.state.backendIds, live.backends, this.used.backendIds);
    const before = JSON.stringify(this.lastSaved ?? null);
    const now = JSON.stringify(this.state);
    if (changed || before !== now) {
      this.save();
      this.lastSaved = JSON.parse(now);
    }
    return { frontends, errors };
  }
  private lastSaved?: ServiceState;

  private backendsFor(ns: string, spec: any, p: any, protocol: string, slices: Resource[], pods: LocalPod[]): Backend[] {
    const out = new Map<string, Backend>();
    const add = (ip: string, port: number, terminating: boolean) => {
      const k = `${ip}:${port}`;
      if (out.has(k)) return;
      out.set(k, { id: this.backendId(ip, port, protocol), ip, port, protocol, terminating });
    };
    if (slices.length) {
      for (const s of slices) {
        const sp = ((s as any).ports ?? []).find((x: any) => (x.name ?? '') === (p.name ?? '') && (x.protocol ?? 'TCP') === protocol) ?? (((s as any).ports ?? []).length === 0 ? { port: typeof p.targetPort === 'number' ? p.targetPort : p.port } : undefined);
        if (!sp) continue;
        for (const e of (s as any).endpoints ?? []) {
          const c = e.conditions ?? {};
          const ready = c.ready ?? true;
          const serving = c.serving ?? ready;
          const terminating = c.terminating ?? false;
          if (!ready && !(terminating && serving)) continue;
          for (const ip of e.addresses) add(ip, sp.port, !ready || terminating);
        }
      }
      return [...out.values()];
    }
    const selector: Record<string, string> | undefined = spec.selector;
    if (!selector || Object.keys(selector).length === 0) return [];
    for (const pod of pods) {
      if (pod.namespace !== ns) continue;
      if (!Object.entries(selector).every(([k, v]) => pod.podLabels[k] === v)) continue;
      let port: number | undefined;
      const tp = p.targetPort ?? p.port;
      if (typeof tp === 'number') port = tp;
      else port = pod.namedPorts[tp]?.find((x) => x.protocol === protocol)?.port;
      if (port) add(pod.ip, port, false);
    }
    return [...out.values()].sort((a, b) => a.id - b.id);
  }
}

/** Map entries for the frontends: services (master + slots), backends, reverse NAT. */
export function lbEntries(frontends: Frontend[]) {
  const services: { key: gen.LbServiceKey; value: gen.LbServiceValue }[] = [];
  const backends = new Map<number, gen.LbBackend>();
  const revnat: { key: number; value: gen.LbRevnat }[] = [];
  const addr = (ip: string) => Buffer.from(parseIp(ip).bytes);
  for (const f of frontends) {
    const base = { addr: addr(f.ip), dport: f.port, proto: PROTO[f.protocol], family: FAMILY_IPV4, scope: 0 };
    let flags = f.type === 'NodePort' ? LB_SVC_F_NODEPORT : LB_SVC_F_CLUSTERIP;
    if (f.algorithm === 'maglev' && f.slots.length) flags |= LB_SVC_F_MAGLEV;
    if (f.affinityTimeout) flags |= LB_SVC_F_AFFINITY;
    if (f.local) flags |= LB_SVC_F_LOCAL;
    services.push({ key: { ...base, slot: 0 }, value: { backend_id: f.affinityTimeout ?? 0, count: f.slots.length, rev_nat_index: f.revNat, flags } });
    f.slots.forEach((id, i) => services.push({ key: { ...base, slot: i + 1 }, value: { backend_id: id, count: 0, rev_nat_index: f.revNat, flags: 0 } }));
    for (const b of f.backends) backends.set(b.id, { addr: addr(b.ip), port: b.port, proto: PROTO[b.protocol], flags: b.terminating ? 1 : 0, family: FAMILY_IPV4 });
    revnat.push({ key: f.revNat, value: { addr: addr(f.ip), port: f.port, family: FAMILY_IPV4 } });
  }
  return { services, backends: [...backends].map(([key, value]) => ({ key, value })), revnat };
}
