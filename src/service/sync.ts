/**
 * Services into the datapath: Service and EndpointSlice objects plus the
 * local pods become frontends and backends (ServiceManager), written to the
 * load-balancing tables backends first, frontends last. Also resolves the
 * peers of `toServices` policy rules.
 */
import type { MapTable } from '../datapath/reconciler';
import type * as gen from '../datapath/maps.gen';
import { LabelSet, matches as matchesSelector } from '../policy/selector';
import type { Selector, ServicePeer } from '../policy/types';
import type { Resource, Store } from '../store/types';
import type { Logger } from '../util/log';
import { Frontend, LocalPod, ServiceManager, lbEntries } from './manager';

export interface ServiceTables {
  lbServices: MapTable<gen.LbServiceKey, gen.LbServiceValue>;
  lbBackends: MapTable<number, gen.LbBackend>;
  lbRevnat: MapTable<number, gen.LbRevnat>;
}

export class ServiceSync {
  frontends: Frontend[] = [];
  errors: string[] = [];

  constructor(
    readonly manager: ServiceManager,
    private readonly store: Pick<Store, 'get' | 'list'>,
    private readonly tables: ServiceTables,
    private readonly log: Logger,
  ) {}

  /** Recompute every frontend and make the load-balancing maps match (backends first, frontends last). */
  sync(pods: LocalPod[], nodeAddresses: string[], isLocal?: (ip: string) => boolean): void {
    const { frontends, errors } = this.manager.compute(this.store.list('Service'), this.store.list('EndpointSlice'), pods, nodeAddresses, isLocal);
    const e = lbEntries(frontends);
    this.tables.lbBackends.replaceAll(e.backends);
    this.tables.lbRevnat.replaceAll(e.revnat);
    this.tables.lbServices.replaceAll(e.services);
    this.tables.lbBackends.flush();
    this.tables.lbRevnat.flush();
    this.tables.lbServices.flush();
    this.frontends = frontends;
    if (errors.join() !== this.errors.join()) for (const err of errors) this.log.error('service could not be set up', { error: err });
    this.errors = errors;
  }

  /**
   * toServices: a service with a selector stands for the pods it selects (a
   * selector, so new backends are picked up by the selector cache); one without
   * stands for the addresses in its EndpointSlices.
   */
  resolvePeer(peer: ServicePeer): { selectors: Selector[]; cidrs: string[] } {
    const services = peer.name
      ? [this.store.get({ kind: 'Service', namespace: peer.namespace, name: peer.name })].filter((x): x is Resource => !!x)
      : this.store.list('Service', peer.namespace).filter((svc) => {
          const labels = new LabelSet(Object.entries(svc.metadata.labels ?? {}).map(([k, v]) => `k8s:${k}=${v}`));
          return peer.selector ? matchesSelector(peer.selector, labels) : true;
        });
    const selectors: Selector[] = [];
    const cidrs: string[] = [];
    for (const svc of services) {
      const sel: Record<string, string> | undefined = svc.spec?.selector;
      const ns = svc.metadata.namespace ?? 'default';
      if (sel && Object.keys(sel).length) {
        selectors.push({
          requirements: [
            ...Object.entries(sel).map(([key, v]) => ({ key, source: 'k8s', operator: 'In' as const, values: [v] })),
            { key: 'io.kubernetes.pod.namespace', source: 'k8s', operator: 'In' as const, values: [ns] },
          ],
        });
      } else {
        for (const sl of this.store.list('EndpointSlice', ns)) {
          if (sl.metadata.labels?.['kubernetes.io/service-name'] !== svc.metadata.name) continue;
          for (const e of (sl as any).endpoints ?? []) for (const a of e.addresses ?? []) cidrs.push(`${a}/32`);
        }
      }
    }
    return { selectors, cidrs };
  }
}
