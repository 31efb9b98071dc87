/**
 * The resource kinds Membrane accepts, in Kubernetes shapes, with validation
 * that names every problem by field path and value.
 */
import { translatePolicy, PolicyValidationError } from '../policy/translate';
import { cidrContains, formatCidr, parseCidr, parseIp } from '../util/ip';
import { showValue, tooDeep, MAX_DEPTH } from '../util/depth';
import { labelValueProblems, MAX_ANNOTATIONS_BYTES, qualifiedNameProblems } from '../util/k8snames';
import type { Resource } from './types';
import { GATEWAY_V1, GATEWAY_V1BETA1, validateGateway, validateGatewayClass, validateHttpRoute, validateReferenceGrant } from '../gateway/resources';

/** What validation needs to know about the node (e.g. ClusterIPs must lie in --service-cidr). */
export interface ValidationContext {
  serviceCidr?: string;
}

export interface KindInfo {
  kind: string;
  apiVersion: string;
  /** Other apiVersions accepted for the same shape (stored as given). */
  alsoApiVersions?: string[];
  namespaced: boolean;
  names: string[]; // accepted on the command line: singular, plural, short
  validate(o: Resource, problems: string[], ctx: ValidationContext): void;
}

const NAME_RE = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const PORT_NAME_RE = /^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/;

/** Labels exactly as Kubernetes validates them: qualified-name keys, short values, strings only. */
function validateLabels(path: string, labels: unknown, problems: string[]): void {
  if (labels === undefined) return;
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) {
    problems.push(`${path}: must be a map of strings, got ${showValue(labels)}`);
    return;
  }
  for (const [k, v] of Object.entries(labels)) {
    for (const why of qualifiedNameProblems(k)) problems.push(`${path}: key ${showValue(k)} is not a valid label key: ${why}`);
    for (const why of labelValueProblems(v)) problems.push(`${path}.${k}: value ${showValue(v)} is not a valid label value: ${why}`);
  }
}

/** Annotations: qualified-name keys, string values, at most 256 KiB in all (as Kubernetes). */
function validateAnnotations(path: string, ann: unknown, problems: string[]): void {
  if (ann === undefined) return;
  if (typeof ann !== 'object' || ann === null || Array.isArray(ann)) {
    problems.push(`${path}: must be a map of strings, got ${showValue(ann)}`);
    return;
  }
  let size = 0;
  for (const [k, v] of Object.entries(ann)) {
    for (const why of qualifiedNameProblems(k)) problems.push(`${path}: key ${showValue(k)} is not a valid annotation key: ${why}`);
    if (typeof v !== 'string') problems.push(`${path}.${k}: must be a string, got ${showValue(v)}`);
    else size += k.length + v.length;
  }
  if (size > MAX_ANNOTATIONS_BYTES) problems.push(`${path}: annotations may hold at most ${MAX_ANNOTATIONS_BYTES} bytes in all (they hold ${size})`);
}

function validatePod(o: Resource, problems: string[]): void {
  const spec = o.spec;
  if (spec === undefined) return;
  if (typeof spec !== 'object' || spec === null) {
    problems.push(`spec: must be an object, got ${showValue(spec)}`);
    return;
  }
  if (spec.serviceAccountName !== undefined && (typeof spec.serviceAccountName !== 'string' || !NAME_RE.test(spec.serviceAccountName))) {
    problems.push(`spec.serviceAccountName: ${showValue(spec.serviceAccountName)} is not a valid name`);
  }
  if (spec.containers === undefined) return;
  if (!Array.isArray(spec.containers)) {
    problems.push(`spec.containers: must be a list, got ${showValue(spec.containers)}`);
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
        problems.push(`${pp}.containerPort: ${showValue(p?.containerPort)} must be a port number 1-65535`);
      }
      if (p?.name !== undefined && (typeof p.name !== 'string' || !PORT_NAME_RE.test(p.name) || !/[a-z]/.test(p.name))) {
        problems.push(`${pp}.name: ${showValue(p.name)} is not a valid port name`);
      }
      if (p?.protocol !== undefined && !['TCP', 'UDP', 'SCTP'].includes(p.protocol)) {
        problems.push(`${pp}.protocol: ${showValue(p.protocol)} is not TCP, UDP or SCTP`);
      }
    });
  });
}

const PROTOCOLS = ['TCP', 'UDP', 'SCTP'];

function validateService(o: Resource, problems: string[], ctx: ValidationContext): void {
  const spec = o.spec;
  if (spec === undefined || typeof spec !== 'object' || spec === null) {
    problems.push('spec: is required');
    return;
  }
  const type = spec.type ?? 'ClusterIP';
  if (!['ClusterIP', 'NodePort'].includes(type)) problems.push(`spec.type: ${showValue(spec.type)} is not ClusterIP or NodePort`);
  if (spec.clusterIP !== undefined && spec.clusterIP !== 'None' && spec.clusterIP !== '') {
    if (typeof spec.clusterIP !== 'string' || !/^\d+\.\d+\.\d+\.\d+$/.test(spec.clusterIP)) {
      problems.push(`spec.clusterIP: ${showValue(spec.clusterIP)} is not an IPv4 address or "None"`);
    } else if (ctx.serviceCidr) {
      const cidr = parseCidr(ctx.serviceCidr, 'service-cidr');
      let ip;
      try {
        ip = parseIp(spec.clusterIP, 'spec.clusterIP');
      } catch {
        ip = undefined;
      }
      if (!ip) problems.push(`spec.clusterIP: ${showValue(spec.clusterIP)} is not an IPv4 address or "None"`);
      else if (!cidrContains(cidr, ip)) problems.push(`spec.clusterIP: ${showValue(spec.clusterIP)} is outside the service CIDR ${formatCidr(cidr)} (--service-cidr)`);
    }
  }
  if (spec.selector !== undefined) validateLabels('spec.selector', spec.selector, problems);
  if (spec.sessionAffinity !== undefined && !['None', 'ClientIP'].includes(spec.sessionAffinity)) problems.push(`spec.sessionAffinity: ${showValue(spec.sessionAffinity)} is not None or ClientIP`);
  const t = spec.sessionAffinityConfig?.clientIP?.timeoutSeconds;
  if (t !== undefined && (!Number.isInteger(t) || t < 1 || t > 86400)) problems.push(`spec.sessionAffinityConfig.clientIP.timeoutSeconds: ${showValue(t)} must be 1..86400`);
  if (spec.externalTrafficPolicy !== undefined && !['Cluster', 'Local'].includes(spec.externalTrafficPolicy)) {
    problems.push(`spec.externalTrafficPolicy: ${showValue(spec.externalTrafficPolicy)} is not Cluster or Local`);
  }
  const alg = o.metadata.annotations?.['membrane.io/lb-algorithm'] ?? o.metadata.annotations?.['service.cilium.io/lb-algorithm'];
  if (alg !== undefined && !['random', 'maglev'].includes(alg)) problems.push(`metadata.annotations.membrane.io/lb-algorithm: ${showValue(alg)} is not random or maglev`);
  if (!Array.isArray(spec.ports) || spec.ports.length === 0) {
    problems.push('spec.ports: at least one port is required');
    return;
  }
  const names = new Set<string>();
  spec.ports.forEach((p: any, i: number) => {
    const pp = `spec.ports[${i}]`;
    if (typeof p !== 'object' || p === null) return problems.push(`${pp}: must be an object`);
    if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) problems.push(`${pp}.port: ${showValue(p.port)} must be a port number 1-65535`);
    if (p.protocol !== undefined && !PROTOCOLS.includes(p.protocol)) problems.push(`${pp}.protocol: ${showValue(p.protocol)} is not TCP, UDP or SCTP`);
    if (spec.ports.length > 1 && !p.name) problems.push(`${pp}.name: is required when a Service has several ports`);
    if (p.name !== undefined) {
      if (typeof p.name !== 'string' || !PORT_NAME_RE.test(p.name)) problems.push(`${pp}.name: ${showValue(p.name)} is not a valid port name`);
      else if (names.has(p.name)) problems.push(`${pp}.name: ${showValue(p.name)} is used twice`);
      names.add(p.name);
    }
    const tp = p.targetPort;
    if (tp !== undefined && !(Number.isInteger(tp) && tp >= 1 && tp <= 65535) && !(typeof tp === 'string' && PORT_NAME_RE.test(tp))) {
      problems.push(`${pp}.targetPort: ${showValue(tp)} is neither a port number nor a port name`);
    }
    if (p.nodePort !== undefined) {
      if (type !== 'NodePort') problems.push(`${pp}.nodePort: only a NodePort Service has node ports`);
      else if (!Number.isInteger(p.nodePort) || p.nodePort < 30000 || p.nodePort > 32767) problems.push(`${pp}.nodePort: ${showValue(p.nodePort)} is outside 30000-32767`);
    }
  });
}

function validateEndpointSlice(o: Resource, problems: string[]): void {
  const svc = o.metadata.labels?.['kubernetes.io/service-name'];
  if (!svc) problems.push('metadata.labels.kubernetes.io/service-name: is required (the Service this slice belongs to)');
  if ((o as any).addressType !== 'IPv4') problems.push(`addressType: ${showValue((o as any).addressType)} must be IPv4 (IPv6 slices are not wired yet)`);
  const eps = (o as any).endpoints;
  if (eps !== undefined && !Array.isArray(eps)) problems.push('endpoints: must be a list');
  (Array.isArray(eps) ? eps : []).forEach((e: any, i: number) => {
    const ep = `endpoints[${i}]`;
    if (!Array.isArray(e?.addresses) || e.addresses.length === 0) return problems.push(`${ep}.addresses: at least one address is required`);
    e.addresses.forEach((a: unknown, j: number) => {
      if (typeof a !== 'string' || !/^\d+\.\d+\.\d+\.\d+$/.test(a)) problems.push(`${ep}.addresses[${j}]: ${showValue(a)} is not an IPv4 address`);
    });
    for (const c of ['ready', 'serving', 'terminating']) {
      const v = e.conditions?.[c];
      if (v !== undefined && typeof v !== 'boolean') problems.push(`${ep}.conditions.${c}: must be true or false, got ${showValue(v)}`);
    }
  });
  const ports = (o as any).ports;
  (Array.isArray(ports) ? ports : []).forEach((p: any, i: number) => {
    if (!Number.isInteger(p?.port) || p.port < 1 || p.port > 65535) problems.push(`ports[${i}].port: ${showValue(p?.port)} must be a port number 1-65535`);
    if (p?.protocol !== undefined && !PROTOCOLS.includes(p.protocol)) problems.push(`ports[${i}].protocol: ${showValue(p.protocol)} is not TCP, UDP or SCTP`);
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
  { kind: 'GatewayClass', apiVersion: GATEWAY_V1, alsoApiVersions: [GATEWAY_V1BETA1], namespaced: false, names: ['gatewayclass', 'gatewayclasses', 'gc'], validate: validateGatewayClass },
  { kind: 'Gateway', apiVersion: GATEWAY_V1, alsoApiVersions: [GATEWAY_V1BETA1], namespaced: true, names: ['gateway', 'gateways', 'gtw'], validate: validateGateway },
  { kind: 'HTTPRoute', apiVersion: GATEWAY_V1, alsoApiVersions: [GATEWAY_V1BETA1], namespaced: true, names: ['httproute', 'httproutes'], validate: validateHttpRoute },
  { kind: 'ReferenceGrant', apiVersion: GATEWAY_V1, alsoApiVersions: [GATEWAY_V1BETA1], namespaced: true, names: ['referencegrant', 'referencegrants', 'refgrant'], validate: validateReferenceGrant },
];

export function kindInfo(kindOrName: string): KindInfo | undefined {
  const l = kindOrName.toLowerCase();
  return KINDS.find((k) => k.kind.toLowerCase() === l || k.names.includes(l));
}

/** At most this many problems are listed in an error; the rest are counted. */
export const MAX_PROBLEMS = 100;

export class ResourceValidationError extends Error {
  /** `problems`: the first MAX_PROBLEMS; `total`: how many there were. */
  constructor(readonly problems: string[], readonly total = problems.length) {
    const more = total > problems.length ? `\n  ... and ${total - problems.length} more problems (${total} in all)` : '';
    super(`invalid resources (nothing was applied):\n  ${problems.join('\n  ')}${more}`);
  }
}

/**
 * Validate and normalise a batch of objects (namespace defaulted). Throws
 * ResourceValidationError listing the problems of every object (the first
 * MAX_PROBLEMS, and how many there were).
 */
export function validateResources(objects: unknown[], ctx: ValidationContext = {}): Resource[] {
  const problems: string[] = [];
  let total = 0;
  const report = (list: string[]) => {
    total += list.length;
    for (const p of list) if (problems.length < MAX_PROBLEMS) problems.push(p);
  };
  const out: Resource[] = [];
  objects.forEach((raw, i) => {
    const where = `object ${i + 1}`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      report([`${where}: must be an object with apiVersion, kind, metadata${Array.isArray(raw) ? ' (a list of policy rules is imported with `membrane policy import -f FILE`)' : ''}`]);
      return;
    }
    const deep = tooDeep(raw, MAX_DEPTH);
    if (deep) {
      report([`${where}: ${deep}: nested more than ${MAX_DEPTH} levels deep`]);
      return;
    }
    const o = raw as Resource;
    const info = typeof o.kind === 'string' ? kindInfo(o.kind) : undefined;
    if (!info || info.kind !== o.kind) {
      report([`${where}: kind: ${showValue(o.kind)} is not supported (${KINDS.map((k) => k.kind).join(', ')})`]);
      return;
    }
    const name = o.metadata?.name;
    const id = `${o.kind}/${typeof o.metadata?.namespace === 'string' && o.metadata.namespace ? o.metadata.namespace + '/' : ''}${typeof name === 'string' ? name : '?'}`;
    const local: string[] = [];
    if (o.apiVersion !== info.apiVersion && !info.alsoApiVersions?.includes(o.apiVersion)) local.push(`apiVersion: ${showValue(o.apiVersion)} must be ${[info.apiVersion, ...(info.alsoApiVersions ?? [])].join(' or ')}`);
    if (typeof o.metadata !== 'object' || o.metadata === null || Array.isArray(o.metadata)) local.push('metadata: is required');
    else {
      if (typeof name !== 'string' || !NAME_RE.test(name)) local.push(`metadata.name: ${showValue(name)} is not a valid name (lowercase letters, digits, '-', '.')`);
      if (info.namespaced) {
        if (o.metadata.namespace !== undefined && (typeof o.metadata.namespace !== 'string' || !NAME_RE.test(o.metadata.namespace))) {
          local.push(`metadata.namespace: ${showValue(o.metadata.namespace)} is not a valid namespace name`);
        }
      } else if (o.metadata.namespace !== undefined) local.push(`metadata.namespace: ${o.kind} is cluster-scoped and takes no namespace`);
      validateLabels('metadata.labels', o.metadata.labels, local);
      validateAnnotations('metadata.annotations', o.metadata.annotations, local);
    }
    if (!local.length) {
      const n: Resource = structuredClone(o);
      if (info.namespaced && !n.metadata.namespace) n.metadata.namespace = 'default';
      info.validate(n, local, ctx);
      if (!local.length) out.push(n);
    }
    report(local.map((p) => `${id}: ${p}`));
  });
  if (total) throw new ResourceValidationError(problems, total);
  return out;
}
