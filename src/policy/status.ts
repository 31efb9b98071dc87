/**
 * What this node enforces of each policy object (cluster mode): one report
 * per policy, written under the node's lease at
 * policies/v1/reports/<Kind>/<ns|_>/<name>/<node>, which the operator
 * aggregates into the policy's status (src/operator/policystatus.ts).
 *
 * A policy is enforced on the node when it is loaded (the generation the
 * repository holds) and every local endpoint it selects has its policy in the
 * kernel; it failed when loading it failed, or when an endpoint it selects
 * could not take its policy (map full: the endpoint fails closed). The error
 * names the endpoint and the cause.
 */
import type { Resource } from '../store/types';
import { LabelSet, matches } from './selector';
import type { Rule } from './types';

/** The policy kinds whose status is reported. */
export const POLICY_KINDS = ['CiliumNetworkPolicy', 'CiliumClusterwideNetworkPolicy', 'NetworkPolicy'] as const;

/** What one node reports about one policy. */
export interface PolicyReport {
  /** The policy object's metadata.generation the node has loaded (or failed to). */
  generation: number;
  /** Whether every local endpoint the policy selects enforces it. */
  enforcing: boolean;
  /** Why not. */
  error?: string;
  /** The node's policy revision. */
  revision: number;
  /** Local endpoints the policy selects. */
  endpoints: number;
}

export interface ReportInputs {
  /** The policy objects of the cluster (the store's copy). */
  objects: Resource[];
  /** What the repository holds (what the node computes from), by "Kind/ns/name". */
  loaded: Map<string, { object: Resource; rules: Rule[] }>;
  /** Objects that failed to load, by "Kind/ns/name": the generation and the error. */
  loadErrors: Map<string, { generation: number; error: string }>;
  endpoints: { id: number; labels: string[]; namespace: string; podName?: string; policy: { revision: number; error?: string } }[];
  revision: number;
}

export function policyKey(o: { kind: string; metadata: { namespace?: string; name: string } }): string {
  return `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
}

/** One report per policy object the node has loaded or failed to load (pure). */
export function policyReports(inp: ReportInputs): Map<string, PolicyReport> {
  const out = new Map<string, PolicyReport>();
  const eps = inp.endpoints.map((e) => ({ e, set: new LabelSet(e.labels) }));
  for (const o of inp.objects) {
    const key = policyKey(o);
    const gen = o.metadata.generation ?? 1;
    const failed = inp.loadErrors.get(key);
    if (failed && failed.generation >= gen) {
      out.set(key, { generation: failed.generation, enforcing: false, error: `not loaded: ${failed.error}`, revision: inp.revision, endpoints: 0 });
      continue;
    }
    const l = inp.loaded.get(key);
    if (!l) continue; // not yet seen by the repository
    const selected = eps.filter(({ set }) => l.rules.some((r) => matches(r.subject, set)));
    const bad = selected.find(({ e }) => e.policy.error);
    out.set(key, {
      generation: l.object.metadata.generation ?? 1,
      enforcing: !bad,
      error: bad ? `endpoint ${bad.e.id} (${bad.e.namespace}/${bad.e.podName ?? '?'}): ${bad.e.policy.error}` : undefined,
      revision: inp.revision,
      endpoints: selected.length,
    });
  }
  return out;
}
