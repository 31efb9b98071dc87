/**
 * Labels in the form users know from the reference system: "source:key=value".
 * A security identity is derived from the sorted set of security-relevant labels.
 */
export interface Label {
  source: string; // k8s, reserved, cidr, unspec, ...
  key: string;
  value: string;
}

export function parseLabel(text: string): Label {
  let source = 'unspec';
  let rest = text;
  const colon = text.indexOf(':');
  const eq = text.indexOf('=');
  if (colon > 0 && (eq < 0 || colon < eq)) {
    source = text.slice(0, colon);
    rest = text.slice(colon + 1);
  }
  const e = rest.indexOf('=');
  if (e < 0) return { source, key: rest, value: '' };
  return { source, key: rest.slice(0, e), value: rest.slice(e + 1) };
}

export function formatLabel(l: Label): string {
  return `${l.source}:${l.key}${l.value !== '' ? '=' + l.value : ''}`;
}

/** Canonical, sorted, de-duplicated label strings: the identity key. */
export function canonicalLabels(labels: Iterable<string | Label>): string[] {
  const set = new Set<string>();
  for (const l of labels) set.add(typeof l === 'string' ? formatLabel(parseLabel(l)) : formatLabel(l));
  return [...set].sort();
}

export const NAMESPACE_LABEL = 'io.kubernetes.pod.namespace';
export const SERVICE_ACCOUNT_LABEL = 'io.cilium.k8s.policy.serviceaccount';
export const CLUSTER_LABEL = 'io.cilium.k8s.policy.cluster';
export const NAMESPACE_LABELS_PREFIX = 'io.cilium.k8s.namespace.labels.';

/** The security labels of a pod, as a cluster would derive them. */
export function podSecurityLabels(opts: {
  namespace: string;
  podLabels?: Record<string, string>;
  namespaceLabels?: Record<string, string>;
  serviceAccount?: string;
  cluster?: string;
}): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(opts.podLabels ?? {})) out.push(`k8s:${k}=${v}`);
  out.push(`k8s:${NAMESPACE_LABEL}=${opts.namespace}`);
  for (const [k, v] of Object.entries(opts.namespaceLabels ?? {})) out.push(`k8s:${NAMESPACE_LABELS_PREFIX}${k}=${v}`);
  if (opts.serviceAccount) out.push(`k8s:${SERVICE_ACCOUNT_LABEL}=${opts.serviceAccount}`);
  out.push(`k8s:${CLUSTER_LABEL}=${opts.cluster ?? 'default'}`);
  return canonicalLabels(out);
}
