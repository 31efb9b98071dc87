/**
 * The reference system's plain policy rules (`policy import` files: a JSON list
 * of rules, each with endpointSelector, ingress, egress, ingressDeny,
 * egressDeny, labels, description) as a stored object.
 *
 * Such rules are not namespaced: their selectors match endpoints of every
 * namespace unless they name `io.kubernetes.pod.namespace` themselves. A
 * CiliumClusterwideNetworkPolicy has exactly these semantics (no implicit
 * namespace scoping), so the rules of one file become the `specs` of one
 * CiliumClusterwideNetworkPolicy (rule i is specs[i]). Its name is the `name`
 * label the rules share (`name` or `io.cilium.k8s.policy.name`), else the
 * file's name without extension, made a valid object name; importing the same
 * file again replaces the policy.
 */
import type { PolicyObject } from './translate';

/** Fields a rule of the reference system may carry (any one marks an object as a rule). */
const RULE_FIELDS = ['endpointSelector', 'nodeSelector', 'ingress', 'egress', 'ingressDeny', 'egressDeny', 'labels', 'description', 'enableDefaultDeny', 'log'];

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A bare rule: an object with rule fields and no apiVersion/kind. */
export function isBareRule(v: unknown): boolean {
  return isObj(v) && v.kind === undefined && v.apiVersion === undefined && Object.keys(v).some((k) => RULE_FIELDS.includes(k));
}

/** A document that is a list of bare rules (the `policy import` format). */
export function isRuleList(v: unknown): v is unknown[] {
  return Array.isArray(v) && v.length > 0 && v.every((r) => isBareRule(r));
}

export class RuleImportError extends Error {}

/** A rule label as {key, value}: "k8s:name=x", "name=x", or {key, value, source}. */
function labelOf(l: unknown): { key: string; value: string } | undefined {
  if (typeof l === 'string') {
    const eq = l.indexOf('=');
    const k = eq >= 0 ? l.slice(0, eq) : l;
    const colon = k.indexOf(':');
    return { key: colon >= 0 ? k.slice(colon + 1) : k, value: eq >= 0 ? l.slice(eq + 1) : '' };
  }
  if (isObj(l) && typeof l.key === 'string') return { key: l.key, value: typeof l.value === 'string' ? l.value : '' };
  return undefined;
}

/** Lowercase letters, digits, '-' and '.', starting and ending alphanumeric, at most 253. */
export function toObjectName(text: string): string {
  return text
    .toLowerCase()
    .replace(/[^a-z0-9.-]+/g, '-')
    .slice(0, 253)
    .replace(/^[^a-z0-9]+/, '')
    .replace(/[^a-z0-9]+$/, '');
}

/** The name the rules give themselves: a `name` label shared by every rule. */
export function nameFromLabels(rules: unknown[]): string | undefined {
  let shared: string | undefined;
  for (const r of rules) {
    const labels = isObj(r) && Array.isArray(r.labels) ? r.labels : [];
    const name = labels.map(labelOf).find((l) => l && (l.key === 'name' || l.key === 'io.cilium.k8s.policy.name') && l.value)?.value;
    if (!name || (shared !== undefined && shared !== name)) return undefined;
    shared = name;
  }
  return shared;
}

/**
 * The rules of one file as one CiliumClusterwideNetworkPolicy. `name` (given
 * by the user) wins over the rules' labels, which win over the file name.
 */
export function rulesToPolicy(rules: unknown[], opts: { name?: string; fileName?: string }): PolicyObject {
  const candidates = [opts.name, nameFromLabels(rules), opts.fileName?.replace(/^.*\//, '').replace(/\.(json|ya?ml)$/i, '')];
  const raw = candidates.find((c) => c !== undefined && c !== '');
  const name = raw === undefined ? '' : opts.name !== undefined ? opts.name : toObjectName(raw);
  if (!name) throw new RuleImportError('the rules have no shared name label and come from no file: give the policy a name with --name NAME');
  return {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumClusterwideNetworkPolicy',
    metadata: {
      name,
      ...(opts.fileName ? { annotations: { 'membrane.io/imported-from': opts.fileName.replace(/^.*\//, '').slice(0, 253) } } : {}),
    },
    specs: rules,
  };
}
