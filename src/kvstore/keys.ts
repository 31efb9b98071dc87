/**
 * The cluster's key layout, relative to the cluster prefix (--kvstore-prefix,
 * default "membrane/<cluster-name>/"). One definition, used by the agent, the
 * CLI, tests and (later) the operator. Values are JSON unless noted.
 *
 *   resources/v1/<Kind>/<namespace|_>/<name>   a resource (Pod, Namespace, policies, Service, ...)   no lease
 *   identities/v1/id/<id>                      {labels}: the master key of a security identity         no lease (operator GC)
 *   identities/v1/labels/<label-set>           "<id>": the index that makes one label set one id        no lease (operator GC)
 *   identities/v1/refs/<id>/<node>             "": node <node> uses identity <id>                       node lease
 *   nodes/v1/<node>                            the node: addresses, pod CIDRs, health                   node lease
 *   nodes/registry                             serialises node registration (overlap checks)          no lease
 *   ipcache/v1/<ip>                            a pod: identity, host node, namespace/name, named ports  node lease
 *   services/v1/clusterip/<ip>                 "<ns>/<name>": a ClusterIP allocation                   no lease
 *   services/v1/nodeport/<port>-<proto>        "<ns>/<name>/<port-name>": a node port allocation      no lease
 *   operator/v1/leader                         the acting operator: {id, since} (leader election)     operator's lease
 *   ipam/v1/nodes/<node>                       the node's cluster-pool allocation {podCIDRs, error}   no lease (operator)
 *   ipam/v1/cidrs/<cidr>                       "<node>": one CIDR, one node                            no lease (operator)
 *   policies/v1/reports/<Kind>/<ns|_>/<name>/<node>  what node enforces of one policy              node lease
 *   policies/v1/status/<Kind>/<ns|_>/<name>    the policy's status, aggregated by the operator        no lease (operator)
 */
export const RESOURCES = 'resources/v1/';
export const IDENTITY_IDS = 'identities/v1/id/';
export const IDENTITY_LABELS = 'identities/v1/labels/';
export const IDENTITY_REFS = 'identities/v1/refs/';
export const NODES = 'nodes/v1/';
export const NODE_REGISTRY = 'nodes/registry';
export const IPCACHE = 'ipcache/v1/';
export const SERVICE_CLUSTERIPS = 'services/v1/clusterip/';
export const SERVICE_NODEPORTS = 'services/v1/nodeport/';
export const OPERATOR_LEADER = 'operator/v1/leader';
export const IPAM_NODES = 'ipam/v1/nodes/';
export const IPAM_CIDRS = 'ipam/v1/cidrs/';
export const POLICY_REPORTS = 'policies/v1/reports/';
export const POLICY_STATUS = 'policies/v1/status/';

/** Key segments may contain anything but "/" (and "%", the escape). */
export function escapeSegment(s: string): string {
  return s.replace(/%/g, '%25').replace(/\//g, '%2F');
}

export function unescapeSegment(s: string): string {
  return s.replace(/%2F/g, '/').replace(/%25/g, '%');
}

export function resourceKey(kind: string, namespace: string | undefined, name: string): string {
  return `${RESOURCES}${kind}/${namespace ? escapeSegment(namespace) : '_'}/${escapeSegment(name)}`;
}

export function parseResourceKey(rel: string): { kind: string; namespace?: string; name: string } | undefined {
  const parts = rel.split('/');
  if (parts.length !== 3) return undefined;
  return { kind: parts[0], namespace: parts[1] === '_' ? undefined : unescapeSegment(parts[1]), name: unescapeSegment(parts[2]) };
}

/** A canonical (sorted) label set as one key segment: "k8s:app=web;k8s:io.kubernetes.pod.namespace=default". */
export function labelSetKey(canonical: string[]): string {
  return escapeSegment(canonical.join(';'));
}

export function identityIdKey(id: number): string {
  return `${IDENTITY_IDS}${id}`;
}

export function identityLabelsKey(canonical: string[]): string {
  return `${IDENTITY_LABELS}${labelSetKey(canonical)}`;
}

export function identityRefKey(id: number, node: string): string {
  return `${IDENTITY_REFS}${id}/${escapeSegment(node)}`;
}

export function nodeKey(node: string): string {
  return `${NODES}${escapeSegment(node)}`;
}

export function ipcacheKey(ip: string): string {
  return `${IPCACHE}${ip}`;
}

export function clusterIpKey(ip: string): string {
  return `${SERVICE_CLUSTERIPS}${ip}`;
}

export function nodePortKey(port: number, protocol: string): string {
  return `${SERVICE_NODEPORTS}${port}-${protocol}`;
}

export function ipamNodeKey(node: string): string {
  return `${IPAM_NODES}${escapeSegment(node)}`;
}

export function ipamCidrKey(cidr: string): string {
  return `${IPAM_CIDRS}${escapeSegment(cidr)}`;
}

/** "<Kind>/<ns|_>/<name>": a policy object, as one relative key path. */
export function policyPath(kind: string, namespace: string | undefined, name: string): string {
  return `${kind}/${namespace ? escapeSegment(namespace) : '_'}/${escapeSegment(name)}`;
}

export function policyReportKey(kind: string, namespace: string | undefined, name: string, node: string): string {
  return `${POLICY_REPORTS}${policyPath(kind, namespace, name)}/${escapeSegment(node)}`;
}

export function policyStatusKey(kind: string, namespace: string | undefined, name: string): string {
  return `${POLICY_STATUS}${policyPath(kind, namespace, name)}`;
}
