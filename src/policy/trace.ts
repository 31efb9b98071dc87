/**
 * `policy trace`: the verdict for src -> dst:port/proto, computed exactly as
 * the endpoints' map state is (the egress side of the source, then the
 * ingress side of the destination), naming the rule that decided.
 */
import { IdentityAllocator, ReservedIdentity } from '../identity/identity';
import type { PolicyEngine } from './engine';
import { headerMap, L7Table } from './l7';
import { NamedPort, lookupVerdict } from './mapstate';

export interface TraceEndpoint {
  id: number;
  identity: number;
  ipv4?: string;
  labels: string[];
  namespace: string;
  podName?: string;
  namedPorts?: Record<string, NamedPort[]>;
}

export class PolicyTraceError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

interface Subject {
  identity: number;
  labels: string[];
  endpoint?: TraceEndpoint;
  release?: () => void;
  describe: string;
}

export class PolicyTracer {
  constructor(
    private readonly policy: PolicyEngine,
    private readonly identities: IdentityAllocator,
    private readonly endpoints: { list(): TraceEndpoint[]; get(id: number): TraceEndpoint | undefined },
  ) {}

  /** Resolve "--src/--dst": an endpoint id, a pod "ns/name" or "name", or labels "k=v,k2=v2". */
  private resolve(field: string, spec: string): Subject {
    if (/^\d+$/.test(spec)) {
      const ep = this.endpoints.get(Number(spec));
      if (!ep) throw new PolicyTraceError(field, `${field}: endpoint ${spec} not found`);
      return { identity: ep.identity, labels: ep.labels, endpoint: ep, describe: `endpoint ${ep.id}` };
    }
    if (!spec.includes('=')) {
      const [ns, name] = spec.includes('/') ? spec.split('/', 2) : ['default', spec];
      const ep = this.endpoints.list().find((e) => e.namespace === ns && e.podName === name);
      if (!ep) throw new PolicyTraceError(field, `${field}: no endpoint for pod ${ns}/${name}`);
      return { identity: ep.identity, labels: ep.labels, endpoint: ep, describe: `pod ${ns}/${name} (endpoint ${ep.id})` };
    }
    const labels = spec
      .split(',')
      .map((l) => l.trim())
      .filter(Boolean)
      .map((l) => (/^[a-z0-9-]+:/.test(l) && !l.startsWith('http') ? l : `k8s:${l}`));
    if (!labels.some((l) => l.startsWith('k8s:io.kubernetes.pod.namespace=')) && !labels.some((l) => l.startsWith('reserved:') || l.startsWith('cidr:'))) {
      labels.push('k8s:io.kubernetes.pod.namespace=default');
    }
    if (labels.length === 1 && labels[0].startsWith('reserved:')) {
      const name = labels[0].slice('reserved:'.length) as keyof typeof ReservedIdentity;
      if (ReservedIdentity[name] !== undefined) return { identity: ReservedIdentity[name], labels, describe: labels[0] };
    }
    const ident = this.identities.acquireTransient(labels);
    return { identity: ident.id, labels: ident.labels, release: () => this.identities.release(ident.id), describe: `labels ${ident.labels.join(' ')}` };
  }

  trace(q: { src: string; dst: string; dport: number; protocol: string; http?: { method: string; path: string; host?: string; headers?: string[] } }) {
    const proto = ({ TCP: 6, UDP: 17, SCTP: 132, ICMP: 1, ANY: 0 } as Record<string, number>)[q.protocol.toUpperCase()];
    if (proto === undefined) throw new PolicyTraceError('protocol', `protocol: "${q.protocol}" is not TCP, UDP, SCTP or ICMP`);
    const src = this.resolve('src', q.src);
    let dst: Subject | undefined;
    try {
      dst = this.resolve('dst', q.dst);
      const side = (who: Subject, remote: Subject, egress: boolean) => {
        if (who.identity < 256 || (who.identity & (1 << 24)) !== 0) return { enforced: false, verdict: 'ALLOWED', reason: 'not a managed endpoint: no policy applies here' };
        const computed = this.policy.compute({ identity: who.identity, labels: who.labels, namedPorts: who.endpoint?.namedPorts ?? {} });
        const block = computed.addressRules && remote.endpoint?.ipv4 ? this.policy.repo.addressBlockIdentity(remote.endpoint.ipv4) : undefined;
        const v = lookupVerdict(computed.entries, remote.identity, egress, proto, q.dport, block);
                const e = v.entry;
        // L7: a redirected flow's requests are decided by the proxy with the endpoint's L7 table.
        const redirect =
          v.allowed && e?.redirect
            ? {
                proxyPort: e.proxyPort,
                listener: e.dns ? 'dns-egress' : egress ? 'http-egress' : 'http-ingress',
                rules: (e.http ?? []).map((h) => ({ ...h.rule, policy: h.from })),
                ...(e.dns ? { dns: e.dns.map((h) => ({ ...h.rule, policy: h.from })) } : {}),
                allowAll: e.allowAllFrom ?? [],
              }
            : undefined;
        let l7: { verdict: 'ALLOWED' | 'DENIED'; by: string[] } | undefined;
        if (redirect && q.http) {
          const raw: string[] = [];
          if (q.http.host !== undefined) raw.push('Host', q.http.host);
          for (const h of q.http.headers ?? []) {
            const i = h.indexOf(':');
            raw.push(i < 0 ? h.trim() : h.slice(0, i).trim(), i < 0 ? '' : h.slice(i + 1).trim());
          }
          const d = new L7Table(computed.l7, egress).decide(remote.identity, q.dport, { method: q.http.method, path: q.http.path, headers: headerMap(raw) });
          l7 = { verdict: d.allowed ? 'ALLOWED' : 'DENIED', by: d.policies };
        }
        return {
          enforced: computed[egress ? 'egress' : 'ingress'].enforced,
          verdict: l7?.verdict === 'DENIED' ? 'DENIED' : v.allowed ? 'ALLOWED' : 'DENIED',
          dropReason: v.reason || undefined,
          proxyPort: e?.proxyPort || undefined,
          reason: e
            ? `${e.deny ? 'denied' : 'allowed'} by ${e.derivedFrom.join(', ')} (identity ${e.identity === 0 ? 'ANY' : e.identity}, prefix ${e.prefixLen})`
            : 'no rule allows it: default deny',
          ...(redirect ? { redirect } : {}),
          ...(l7 ? { l7 } : {}),
        };
      };
      const egress = side(src, dst, true);
      const ingress = side(dst, src, false);
      const allowed = egress.verdict === 'ALLOWED' && ingress.verdict === 'ALLOWED';
      return {
        source: { describe: src.describe, identity: src.identity, labels: src.labels },
        destination: { describe: dst.describe, identity: dst.identity, labels: dst.labels },
        port: q.dport,
        protocol: q.protocol.toUpperCase(),
        policyRevision: this.policy.revision,
        egress,
        ingress,
        verdict: allowed ? 'ALLOWED' : 'DENIED',
      };
    } finally {
      src.release?.();
      dst?.release?.();
    }
  }
}
