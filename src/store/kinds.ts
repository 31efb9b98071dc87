/**
 * The resource kinds Membrane accepts, in Kubernetes shapes, with validation
 * that names every problem by field path and value.
 */
import { translatePolicy, PolicyValidationError } from '../policy/translate';
import type { Resource } from './types';

export interface KindInfo {
  kind: string;
  apiVersion: string;
  namespaced: boolean;
  names: string[]; // accepted on the command line: singular, plural, short
  validate(o: Resource, problems: string[]): void;
}

const NAME_RE = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const LABEL_KEY_RE = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE_RE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;
const PORT_NAME_RE = /^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/;

function validateLabels(path: string, labels: unknown, problems: string[]): void {
  if (labels === undefined) return;
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) {
    problems.push(`${path}: must be a map of strings, got ${JSON.stringify(labels)}`);
    return;
  }
  for (const [k, v] of Object.entries(labels)) {
    if (!LABEL_KEY_RE.test(k)) problems.push(`${path}: key ${JSON.stringify(k)} is not a valid label key`);
    if (typeof v !== 'string' || !LABEL_VALUE_RE.test(v)) problems.push(`${path}.${k}: value ${JSON.stringify(v)} is not a valid label value`);
  }
}

function validatePod(o: Resource, problems: string[]): void {
  const spec = o.spec;
  if (spec === undefined) return;
  if (typeof spec !== 'object' || spec === null) {
    problems.push(`spec: must be an object, got ${JSON.stringify(spec)}`);
    return;
  }
  if (spec.serviceAccountName !== undefined && (typeof spec.serviceAccountName !== 'string' || !NAME_RE.test(spec.serviceAccountName))) {
    problems.push(`spec.serviceAccountName: ${JSON.stringify(spec.serviceAccountName)} is not a valid name`);
  }
  if (spec.containers === undefined) return;
  if (!Array.isArray(spec.containers)) {
    problems.push(`spec.containers: must be a list, got ${JSON.stringify(spec.containers)}`);
    return;
  }
  spec.containers.forEach((c: any, i: number) => {
    const cp = `spec.containers[${i}]`;
    if (typeof c !== 'object' || c === null) return problems.push(`${cp}: must be an object`);
    if (c.ports === undefined) return;
    if (!Array.isArray(c.ports)) return problems.push(`${cp}.ports: must be a list`);
    c.ports.forEach((p: any, j: number) => {
      const pp = `${cp}.ports[${j}]`;
      if (!Number.isInteger(p?.containerPort) || p.containerPort < 1 || p.containerPort > 65535) {
        problems.push(`${pp}.containerPort: ${JSON.stringify(p?.containerPort)} must be a port number 1-65535`);
      }
      if (p?.name !== undefined && (typeof p.name !== 'string' || !PORT_NAME_RE.test(p.name) || !/[a-z]/.test(p.name))) {
        problems.push(`${pp}.name: ${JSON.stringify(p.name)} is not a valid port name`);
      }
      if (p?.protocol !== undefined && !['TCP', 'UDP', 'SCTP'].includes(p.protocol)) {
        problems.push(`${pp}.protocol: ${JSON.stringify(p.protocol)} is not TCP, UDP or SCTP`);
      }
    });
  });
}

const PROTOCOLS = ['TCP', 'UDP', 'SCTP'];

function validateService(o: Resource, problems: string[]): void {
  const spec = o.spec;
  if (spec === undefined || typeof spec !== 'object' || spec === null) {
    problems.push('spec: is required');
    return;
  }
  const type = spec.type ?? 'ClusterIP';
  if (!['ClusterIP', 'NodePort'].includes(type)) problems.push(`spec.type: ${JSON.stringify(spec.type)} is not ClusterIP or NodePort`);
  if (spec.clusterIP !== undefined && spec.clusterIP !== 'None' && spec.clusterIP !== '' && !/^\d+\.\d+\.\d+\.\d+$/.test(String(spec.clusterIP))) {
    problems.push(`spec.clusterIP: ${JSON.stringify(spec.clusterIP)} is not an IPv4 address or "None"`);
  }
  if (spec.selector !== undefined) validateLabels('spec.selector', spec.selector, problems);
  if (spec.sessionAffinity !== undefined && !['None', 'ClientIP'].includes(spec.sessionAffinity)) problems.push(`spec.sessionAffinity: ${JSON.stringify(spec.sessionAffinity)} is not None or ClientIP`);
  const t = spec.sessionAffinityConfig?.clientIP?.timeoutSeconds;
  if (t !== undefined && (!Number.isInteger(t) || t < 1 || t > 86400)) problems.push(`spec.sessionAffinityConfig.clientIP.timeoutSeconds: ${JSON.stringify(t)} must be 1..86400`);
  if (spec.externalTrafficPolicy !== undefined && !['Cluster', 'Local'].includes(spec.externalTrafficPolicy)) {
    problems.push(`spec.externalTrafficPolicy: ${JSON.stringify(spec.externalTrafficPolicy)} is not Cluster or Local`);
  }
  const alg = o.metadata.annotations?.['membrane.io/lb-algorithm'] ?? o.metadata.annotations?.['service.cilium.io/lb-algorithm'];
  if (alg !== undefined && !['random', 'maglev'].includes(alg)) problems.push(`metadata.annotations.membrane.io/lb-algorithm: ${JSON.stringify(alg)} is not random or maglev`);
  if (!Array.isArray(spec.ports) || spec.ports.length === 0) {
    problems.push('spec.ports: at least one port is required');
    return;
  }
  const names = new Set<string>();
  spec.ports.forEach((p: any, i: number) => {
    const pp = `spec.ports[${i}]`;
    if (typeof p !== 'object' || p === null) return problems.push(`${pp}: must be an object`);
    if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) problems.push(`${pp}.port: ${JSON.stringify(p.port)} must be a port number 1-65535`);
    if (p.protocol !== undefined && !PROTOCOLS.includes(p.protocol)) problems.push(`${pp}.protocol: ${JSON.stringify(p.protocol)} is not TCP, UDP or SCTP`);
    if (spec.ports.length > 1 && !p.name) problems.push(`${pp}.name: is required when a Service has several ports`);
    if (p.name !== undefined) {
      if (typeof p.name !== 'string' || !PORT_NAME_RE.test(p.name)) problems.push(`${pp}.name: ${JSON.stringify(p.name)} is not a valid port name`);
      else if (names.has(p.name)) problems.push(`${pp}.name: ${JSON.stringify(p.name)} is used twice`);
      names.add(p.name);
    }
    const tp = p.targetPort;
    if (tp !== undefined && !(Number.isInteger(tp) && tp >= 1 && tp <= 65535) && !(typeof tp === 'string' && PORT_NAME_RE.test(tp))) {
      problems.push(`${pp}.targetPort: ${JSON.stringify(tp)} is neither a port number nor a port name`);
    }
    if (p.nodePort !== undefined) {
      if (type !== 'NodePort') problems.push(`${pp}.nodePort: only a NodePort Service has node ports`);
      else if (!Number.isInteger(p.nodePort) || p.nodePort < 30000 || p.nodePort > 32767) problems.push(`${pp}.nodePort: ${JSON.stringify(p.nodePort)} is outside 30000-32767`);
    }
  });
}

function validateEndpointSlice(o: Resource, problems: string[]): void {
  const svc = o.metadata.labels?.['kubernetes.io/service-name'];
  if (!svc) problems.push('metadata.labels.kubernetes.io/service-name: is required (the Service this slice belongs to)');
  if ((o as any).addressType !== 'IPv4') problems.push(`addressType: ${JSON.stringify((o as any).addressType)} must be IPv4 (IPv6 slices are not wired yet)`);
  const eps = (o as any).endpoints;
  if (eps !== undefined && !Array.isArray(eps)) problems.push('endpoints: must be a list');
  (Array.isArray(eps) ? eps : []).forEach((e: any, i: number) => {
    const ep = `endpoints[${i}]`;
    if (!Array.isArray(e?.addresses) || e.addresses.length === 0) return problems.push(`${ep}.addresses: at least one address is required`);
    e.addresses.forEach((a: unknown, j: number) => {
      if (typeof a !== 'string' || !/^\d+\.\d+\.\d+\.\d+$/.test(a)) problems.push(`${ep}.addresses[${j}]: ${JSON.stringify(a)} is not an IPv4 address`);
    });
    for (const c of ['ready', 'serving', 'terminating']) {
      const v = e.conditions?.[c];
      if (v !== undefined && typeof v !== 'boolean') problems.push(`${ep}.conditions.${c}: must be true or false, got ${JSON.stringify(v)}`);
    }
  });
  const ports = (o as any).ports;
  (Array.isArray(ports) ? ports : []).forEach((p: any, i: number) => {
    if (!Number.isInteger(p?.port) || p.port < 1 || p.port > 65535) problems.push(`ports[${i}].port: ${JSON.stringify(p?.port)} must be a port number 1-65535`);
    if (p?.protocol !== undefined && !PROTOCOLS.includes(p.protocol)) problems.push(`ports[${i}].protocol: ${JSON.stringify(p.protocol)} is not TCP, UDP or SCTP`);
  });
}

function validatePolicy(o: Resource, problems: string[]): void {
  try {
    translatePolicy(o);
  } catch (e) {
    if (e instanceof PolicyValidationError) {
      const prefix = `${o.kind}/${o.metadata.namespace ? o.metadata.namespace + '/' : ''}${o.metadata.name}: `;
      problems.push(...e.problems.map((p) => (p.startsWith(prefix) ? p.slice(prefix.length) : p)));
    } else throw e;
  }
}

export const KINDS: KindInfo[] = [
  { kind: 'Namespace', apiVersion: 'v1', namespaced: false, names: ['namespace', 'namespaces', 'ns'], validate: () => {} },
  { kind: 'Pod', apiVersion: 'v1', namespaced: true, names: ['pod', 'pods', 'po'], validate: validatePod },
  { kind: 'Service', apiVersion: 'v1', namespaced: true, names: ['service', 'services', 'svc'], validate: validateService },
  {
    kind: 'EndpointSlice',
    apiVersion: 'discovery.k8s.io/v1',
    namespaced: true,
    names: ['endpointslice', 'endpointslices'],
    validate: validateEndpointSlice,
  },
  {
    kind: 'NetworkPolicy',
    apiVersion: 'networking.k8s.io/v1',
    namespaced: true,
    names: ['networkpolicy', 'networkpolicies', 'netpol'],
    validate: validatePolicy,
  },
  {
    kind: 'CiliumNetworkPolicy',
    apiVersion: 'cilium.io/v2',
    namespaced: true,
    names: ['ciliumnetworkpolicy', 'ciliumnetworkpolicies', 'cnp'],
    validate: validatePolicy,
  },
  {
    kind: 'CiliumClusterwideNetworkPolicy',
    apiVersion: 'cilium.io/v2',
    namespaced: false,
    names: ['ciliumclusterwidenetworkpolicy', 'ciliumclusterwidenetworkpolicies', 'ccnp'],
    validate: validatePolicy,
  },
];

export function kindInfo(kindOrName: string): KindInfo | undefined {
  const l = kindOrName.toLowerCase();
  return KINDS.find((k) => k.kind.toLowerCase() === l || k.names.includes(l));
}

export class ResourceValidationError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid resources (nothing was applied):\n  ${problems.join('\n  ')}`);
  }
}

/**
 * Validate and normalise a batch of objects (namespace defaulted). Throws
 * ResourceValidationError listing every problem of every object.
 */
export function validateResources(objects: unknown[]): Resource[] {
  const problems: string[] = [];
  const out: Resource[] = [];
  objects.forEach((raw, i) => {
    const where = `object ${i + 1}`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      problems.push(`${where}: must be an object with apiVersion, kind, metadata`);
      return;
    }
    const o = raw as Resource;
    const info = typeof o.kind === 'string' ? kindInfo(o.kind) : undefined;
    if (!info || info.kind !== o.kind) {
      problems.push(`${where}: kind: ${JSON.stringify(o.kind)} is not supported (${KINDS.map((k) => k.kind).join(', ')})`);
      return;
    }
    const name = o.metadata?.name;
    const id = `${o.kind}/${o.metadata?.namespace ? o.metadata.namespace + '/' : ''}${name ?? '?'}`;
    const local: string[] = [];
    if (o.apiVersion !== info.apiVersion) local.push(`apiVersion: ${JSON.stringify(o.apiVersion)} must be ${info.apiVersion}`);
    if (typeof o.metadata !== 'object' || o.metadata === null) local.push('metadata: is required');
    else {
      if (typeof name !== 'string' || !NAME_RE.test(name)) local.push(`metadata.name: ${JSON.stringify(name)} is not a valid name (lowercase letters, digits, '-', '.')`);
      if (info.namespaced) {
        if (o.metadata.namespace !== undefined && (typeof o.metadata.namespace !== 'string' || !NAME_RE.test(o.metadata.namespace))) {
          local.push(`metadata.namespace: ${JSON.stringify(o.metadata.namespace)} is not a valid namespace name`);
        }
      } else if (o.metadata.namespace !== undefined) local.push(`metadata.namespace: ${o.kind} is cluster-scoped and takes no namespace`);
      validateLabels('metadata.labels', o.metadata.labels, local);
    }
    if (!local.length) {
      const n: Resource = structuredClone(o);
      if (info.namespaced && !n.metadata.namespace) n.metadata.namespace = 'default';
      info.validate(n, local);
      if (!local.length) out.push(n);
    }
    problems.push(...local.map((p) => `${id}: ${p}`));
  });
  if (problems.length) throw new ResourceValidationError(problems);
  return out;
}
