/**
 * An endpoint's security labels and named ports come from its Pod and
 * Namespace objects, exactly as in a cluster.
 */
import { podSecurityLabels } from '../identity/labels';
import type { NamedPort } from '../policy/mapstate';
import type { Store } from '../store/types';
import type { PodSource } from './manager';

export function storePodSource(store: Pick<Store, 'get'>): PodSource {
  return {
    podInfo: (namespace, podName) => {
      const ns = store.get({ kind: 'Namespace', name: namespace });
      const nsLabels = { ...(ns?.metadata.labels ?? {}), 'kubernetes.io/metadata.name': namespace };
      const pod = podName ? store.get({ kind: 'Pod', namespace, name: podName }) : undefined;
      const namedPorts: Record<string, NamedPort[]> = {};
      for (const c of pod?.spec?.containers ?? []) {
        for (const p of c.ports ?? []) {
          if (!p.name) continue;
          (namedPorts[p.name] ??= []).push({ port: p.containerPort, protocol: p.protocol ?? 'TCP' });
        }
      }
      const labels = podSecurityLabels({
        namespace,
        podLabels: pod?.metadata.labels,
        namespaceLabels: nsLabels,
        serviceAccount: pod ? (pod.spec?.serviceAccountName ?? 'default') : undefined,
      });
      return { labels, namedPorts };
    },
  };
}
