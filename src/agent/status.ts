/**
 * What `membrane status` shows: the agent's parts, each reporting its own
 * state, gathered in one document (GET /v1/status).
 */
import type { Agent } from './agent';

export const VERSION = '0.1.0';

/** API requests by method, route and status: count and mean latency. */
export class ApiRequests {
  private readonly byKey = new Map<string, { count: number; sumMs: number }>();

  record(method: string, route: string, status: number, ms: number): void {
    const key = `${method} ${route} ${status}`;
    const cur = this.byKey.get(key) ?? { count: 0, sumMs: 0 };
    cur.count++;
    cur.sumMs += ms;
    this.byKey.set(key, cur);
  }

  summary(): Record<string, { count: number; meanMs: number }> {
    return Object.fromEntries([...this.byKey].map(([k, v]) => [k, { count: v.count, meanMs: Math.round((v.sumMs / v.count) * 100) / 100 }]));
  }
}

export function agentStatus(a: Agent) {
  const eps = a.endpoints.list();
  const d = [...a.endpoints.createDurationsMs].sort((a, b) => a - b);
  const pct = (p: number) => (d.length ? Math.round(d[Math.min(d.length - 1, Math.floor((p / 100) * d.length))] * 100) / 100 : null);
  return {
    version: VERSION,
    node: a.cfg.nodeName,
    uptimeSeconds: Math.round((Date.now() - a.startedAt) / 1000),
    podCidr: a.cfg.podCidr,
    podCidrSource: a.cfg.podCidrFromPool ? 'cluster-pool' : 'pod-cidr',
    router: a.routerAddress(),
    devices: { host: a.cfg.hostDevice, net: a.cfg.netDevice },
    bpfRoot: a.cfg.bpfRoot,
    stateDir: a.cfg.stateDir,
    endpoints: {
      total: eps.length,
      ready: eps.filter((e) => e.state === 'ready').length,
      notReady: eps.filter((e) => e.state !== 'ready').map((e) => ({ id: e.id, state: e.state, problems: e.problems })),
    },
    identities: a.identities.list().length,
    policy: {
      revision: a.policy.revision,
      enforcement: a.cfg.policyEnforcement,
      policies: a.policy.repo.objects().length,
      rules: a.policy.repo.rules().length,
      endpointsBehind: eps.filter((e) => e.policy.revision < a.policy.revision).length,
      failures: eps.filter((e) => e.policy.error).map((e) => ({ id: e.id, error: e.policy.error })),
    },
    ipam: { allocated: a.endpoints.ipam.list().length - 1 },
    maps: a.dp.reconciler.status(),
    reconciler: { resyncIntervalSeconds: a.cfg.resyncInterval, ...a.dp.reconciler.counters },
    conntrackGc: a.ctGc.last,
    proxy: a.proxy.status(),
    gateways: a.gateways.status(),
    fqdn: a.fqdn.status(),
    cluster: a.cluster?.status() ?? { mode: 'embedded' },
    services: {
      serviceCidr: a.cfg.serviceCidr,
      frontends: a.services.frontends.length,
      lbAlgorithm: a.cfg.lbAlgorithm,
      nodePortDevices: a.cfg.devices,
      socketLbCgroup: a.cfg.socketLbCgroup ?? null,
      errors: a.services.errors,
    },
    monitor: { aggregation: a.cfg.monitorAggregation, ...a.monitor.status(), metricsAddress: a.cfg.metricsAddress ?? null },
    endpointCreateMs: { count: d.length, p50: pct(50), p99: pct(99) },
    apiRequests: a.apiRequests.summary(),
  };
}
