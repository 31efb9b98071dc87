/**
 * Flow enrichment from the node's own state: local endpoints by address and
 * id, identity labels, interface names. Lookups are cached briefly, so a
 * flood of events costs no rebuild per event.
 */
import type { EndpointInfoLite, Enricher } from './flow';

export interface EnricherSources {
  nodeName: string;
  endpoints(): { id: number; identity: number; ipv4: string; namespace: string; podName?: string; labels: string[] }[];
  identityLabels(id: number): string[] | undefined;
  linkNames(): Map<number, string>;
}

export function nodeEnricher(src: EnricherSources): Enricher {
  let byIp = new Map<string, EndpointInfoLite>();
  let byId = new Map<number, EndpointInfoLite>();
  let links = new Map<number, string>();
  let epAt = 0;
  let linkAt = 0;
  const refresh = () => {
    if (Date.now() - epAt < 500) return;
    epAt = Date.now();
    byIp = new Map();
    byId = new Map();
    for (const e of src.endpoints()) {
      const lite = { id: e.id, identity: e.identity, namespace: e.namespace, podName: e.podName, labels: e.labels };
      byIp.set(e.ipv4, lite);
      byId.set(e.id, lite);
    }
  };
  return {
    nodeName: src.nodeName,
    endpointByIp: (ip) => (refresh(), byIp.get(ip)),
    endpointById: (id) => (refresh(), byId.get(id)),
    identityLabels: (id) => src.identityLabels(id) ?? (id === 0 ? [] : [`reserved:unknown-${id}`]),
    ifName: (ifindex) => {
      if (!links.has(ifindex) && Date.now() - linkAt > 1000) {
        linkAt = Date.now();
        try {
          links = src.linkNames();
        } catch {
          /* best effort */
        }
      }
      return links.get(ifindex);
    },
  };
}
