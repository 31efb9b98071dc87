/**
 * Cluster-wide ClusterIP and node port allocation (cluster mode). With one
 * store shared by many agents, a Service's ClusterIP and node ports must be
 * the same on every node, so they are allocated when the Service is written,
 * as an API server does: the writing agent fills in spec.clusterIP and each
 * port's nodePort and reserves them with create-only keys in the same
 * transaction (services/v1/clusterip/<ip>, services/v1/nodeport/<port>-<proto>).
 * Two agents allocating the same value at once: one transaction fails, its
 * agent re-reads and picks another. A re-apply without these fields keeps the
 * allocated values; deleting the Service releases them.
 */
import { Kvstore, Reflector } from '../kvstore';
import { SERVICE_CLUSTERIPS, SERVICE_NODEPORTS, clusterIpKey, nodePortKey } from '../kvstore/keys';
import type { StoreAdmission, WritePlan } from '../store/etcd';
import { Resource, StoreError } from '../store/types';
import { Cidr, cidrContains, cidrSize, formatCidr, formatIp, ipAtOffset, parseCidr, parseIp } from '../util/ip';
import type { Logger } from '../util/log';

const NODE_PORT_MIN = 30000;
const NODE_PORT_MAX = 32767;

export class ClusterServiceAllocations implements StoreAdmission {
  private readonly ips: Reflector;
  private readonly ports: Reflector;
  private readonly cidr: Cidr;

  constructor(kv: Kvstore, serviceCidr: string, log: Logger) {
    this.cidr = parseCidr(serviceCidr, 'service-cidr');
    this.ips = new Reflector(kv, SERVICE_CLUSTERIPS, log);
    this.ports = new Reflector(kv, SERVICE_NODEPORTS, log);
  }

  async start(timeoutMs?: number): Promise<void> {
    await Promise.all([this.ips.start(timeoutMs), this.ports.start(timeoutMs)]);
  }

  stop(): void {
    this.ips.stop();
    this.ports.stop();
  }

  get watchEvents(): number {
    return this.ips.stats.events + this.ports.stats.events;
  }

  async caughtUp(rev: number): Promise<void> {
    await Promise.all([this.ips.waitForRevision(rev, 10_000), this.ports.waitForRevision(rev, 10_000)]);
  }

  admit(next: Resource, old: Resource | undefined, plan: WritePlan): void {
    if (next.kind !== 'Service') return;
    const owner = `${next.metadata.namespace ?? 'default'}/${next.metadata.name}`;
    const spec = (next.spec ??= {});
    const oldSpec = old?.spec ?? {};
    if (spec.clusterIP === undefined || spec.clusterIP === '') {
      if (oldSpec.clusterIP) spec.clusterIP = oldSpec.clusterIP;
    }
    if (spec.clusterIP !== 'None') {
      if (!spec.clusterIP) spec.clusterIP = this.pickIp(owner, plan);
      else this.claimIp(owner, spec.clusterIP, plan);
    }
    if (oldSpec.clusterIP && oldSpec.clusterIP !== 'None' && oldSpec.clusterIP !== spec.clusterIP) this.free(clusterIpKey(oldSpec.clusterIP), owner, plan);

    const ports: any[] = Array.isArray(spec.ports) ? spec.ports : [];
    const oldPorts: any[] = Array.isArray(oldSpec.ports) ? oldSpec.ports : [];
    const keep = new Set<string>();
    if (spec.type === 'NodePort') {
      for (const p of ports) {
        const proto = p.protocol ?? 'TCP';
        if (!p.nodePort) {
          const prev = oldPorts.find((q) => (q.name ?? '') === (p.name ?? '') && (q.protocol ?? 'TCP') === proto && q.nodePort);
          if (prev && oldSpec.type === 'NodePort') p.nodePort = prev.nodePort;
        }
        const tag = `${owner}/${p.name ?? ''}`;
        if (!p.nodePort) p.nodePort = this.pickPort(tag, proto, plan);
        else this.claimPort(tag, p.nodePort, proto, plan);
        keep.add(nodePortKey(p.nodePort, proto));
      }
    }
    if (oldSpec.type === 'NodePort') {
      for (const q of oldPorts) {
        if (!q.nodePort) continue;
        const k = nodePortKey(q.nodePort, q.protocol ?? 'TCP');
        if (!keep.has(k)) this.free(k, `${owner}/${q.name ?? ''}`, plan);
      }
    }
  }

  release(old: Resource, plan: WritePlan): void {
    if (old.kind !== 'Service') return;
    const owner = `${old.metadata.namespace ?? 'default'}/${old.metadata.name}`;
    const spec = old.spec ?? {};
    if (spec.clusterIP && spec.clusterIP !== 'None') this.free(clusterIpKey(spec.clusterIP), owner, plan);
    if (spec.type === 'NodePort') for (const p of spec.ports ?? []) if (p.nodePort) this.free(nodePortKey(p.nodePort, p.protocol ?? 'TCP'), `${owner}/${p.name ?? ''}`, plan);
  }

  private planned(plan: WritePlan, key: string): string | undefined {
    for (const o of plan.ops) if (o.key === key && o.type === 'put') return o.value;
    return undefined;
  }

  private claimIp(owner: string, ip: string, plan: WritePlan): void {
    let addr;
    try {
      addr = parseIp(ip, 'spec.clusterIP');
    } catch (e) {
      throw new StoreError(`Service ${owner}: ${(e as Error).message}`, 'invalid');
    }
    if (!cidrContains(this.cidr, addr)) throw new StoreError(`Service ${owner}: spec.clusterIP ${ip} is outside the service CIDR ${formatCidr(this.cidr)}`, 'invalid');
    const key = clusterIpKey(formatIp(addr));
    this.claim(key, owner, plan, `spec.clusterIP ${ip}`);
  }

  private claimPort(owner: string, port: number, proto: string, plan: WritePlan): void {
    if (!Number.isInteger(port) || port < NODE_PORT_MIN || port > NODE_PORT_MAX) {
      throw new StoreError(`Service ${owner.split('/').slice(0, 2).join('/')}: nodePort ${port} is outside ${NODE_PORT_MIN}-${NODE_PORT_MAX}`, 'invalid');
    }
    this.claim(nodePortKey(port, proto), owner, plan, `nodePort ${port}/${proto}`);
  }

  private claim(key: string, owner: string, plan: WritePlan, what: string): void {
    const rel = key.startsWith(SERVICE_CLUSTERIPS) ? key.slice(SERVICE_CLUSTERIPS.length) : key.slice(SERVICE_NODEPORTS.length);
    const cache = key.startsWith(SERVICE_CLUSTERIPS) ? this.ips : this.ports;
    const holder = this.planned(plan, key) ?? cache.get(rel)?.value;
    if (holder === owner) return;
    if (holder !== undefined) throw new StoreError(`Service ${owner.split('/').slice(0, 2).join('/')}: ${what} is already used by ${holder}`, 'invalid');
    plan.compares.push({ key, target: 'create', op: '==', value: 0 });
    plan.ops.push({ type: 'put', key, value: owner });
  }

  private free(key: string, owner: string, plan: WritePlan): void {
    if (plan.ops.some((o) => o.key === key)) return;
    plan.compares.push({ key, target: 'value', op: '==', value: owner });
    plan.ops.push({ type: 'delete', key });
  }

  private pickIp(owner: string, plan: WritePlan): string {
    const size = Math.min(cidrSize(this.cidr), 1 << 20);
    if (size < 3) throw new StoreError(`service CIDR ${formatCidr(this.cidr)} has no address to allocate`, 'invalid');
    // Start at a hash of the name: agents allocating different services at once rarely collide.
    const start = hash(owner) % (size - 2);
    for (let i = 0; i < size - 2; i++) {
      const ip = formatIp(ipAtOffset(this.cidr, 1 + ((start + i) % (size - 2))));
      const key = clusterIpKey(ip);
      if (this.ips.get(ip) || this.planned(plan, key)) continue;
      this.claim(key, owner, plan, `spec.clusterIP ${ip}`);
      return ip;
    }
    throw new StoreError(`Service ${owner}: service CIDR ${formatCidr(this.cidr)} is exhausted`, 'invalid');
  }

  private pickPort(owner: string, proto: string, plan: WritePlan): number {
    const span = NODE_PORT_MAX - NODE_PORT_MIN + 1;
    const start = hash(owner) % span;
    for (let i = 0; i < span; i++) {
      const port = NODE_PORT_MIN + ((start + i) % span);
      const key = nodePortKey(port, proto);
      if (this.ports.get(`${port}-${proto}`) || this.planned(plan, key)) continue;
      this.claim(key, owner, plan, `nodePort ${port}/${proto}`);
      return port;
    }
    throw new StoreError(`Service ${owner}: node ports ${NODE_PORT_MIN}-${NODE_PORT_MAX} are exhausted`, 'invalid');
  }
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 16777619) >>> 0;
  }
  return h;
}
