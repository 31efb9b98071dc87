/**
 * From Gateway API objects to listener configuration and status (pure).
 *
 *   GatewayClass (controllerName membrane.io/gateway-controller)
 *     -> Gateway (its class is ours) gets an address; each distinct listener
 *        port becomes one proxy listener (GatewayTable) on that address
 *     -> HTTPRoute parentRefs attach the route to the Gateway's listeners that
 *        match sectionName/port, allow the route's namespace and kind
 *        (allowedRoutes) and share a hostname with it
 *     -> each match of each rule is one RouteEntry, with the hostnames the
 *        route and listener share, its filters, and its backendRefs resolved
 *        to Service endpoints (cross-namespace only with a ReferenceGrant);
 *        the entries of a table are sorted by the specification's precedence.
 *
 * Status follows the specification's conditions and reasons: GatewayClass
 * Accepted; Gateway Accepted/Programmed with addresses, and per listener
 * Accepted/Programmed/ResolvedRefs/Conflicted with attachedRoutes; HTTPRoute
 * per parent Accepted (NotAllowedByListeners, NoMatchingListenerHostname,
 * NoMatchingParent) and ResolvedRefs (BackendNotFound, RefNotPermitted,
 * InvalidKind).
 */
import type { Resource } from '../store/types';
import type { GatewayTable, RouteBackend, RouteEntry, RouteMatch } from './model';
import { CONTROLLER_NAME, GATEWAY_GROUP, type BackendRef, type GatewayListener, type HttpRouteRule, type ParentRef } from './resources';
import { hostnameScore, normalPrefix } from './match';

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  observedGeneration?: number;
  lastTransitionTime?: string;
}

export interface GatewayInputs {
  classes: Resource[];
  gateways: Resource[];
  routes: Resource[];
  grants: Resource[];
  namespaces: Resource[];
  services: Resource[];
  /** Ready endpoints of a Service port (the Service's `port`); undefined when the Service has no such port. */
  endpoints(namespace: string, name: string, port: number): { ip: string; port: number }[] | undefined;
  /** The address of a Gateway ("namespace/name"), or why it has none (a Programmed reason and message). */
  address(gateway: string): string | { reason: 'AddressNotAssigned' | 'AddressNotUsable'; message: string };
}

export interface StatusUpdate {
  kind: 'GatewayClass' | 'Gateway' | 'HTTPRoute';
  namespace?: string;
  name: string;
  status: Record<string, unknown>;
}

export interface GatewayTranslation {
  tables: GatewayTable[];
  status: StatusUpdate[];
  /** The Gateways Membrane programs ("namespace/name"), whether or not they got an address. */
  gateways: string[];
}

const key = (o: Resource) => `${o.metadata.namespace ?? 'default'}/${o.metadata.name}`;

function cond(type: string, ok: boolean, reason: string, message: string, gen?: number): Condition {
  return { type, status: ok ? 'True' : 'False', reason, message, ...(gen !== undefined ? { observedGeneration: gen } : {}) };
}

/** The hostnames a route serves on a listener, or undefined when they share none. */
export function intersectHostnames(listener: string | undefined, route: string[]): string[] | undefined {
  if (!listener) return route;
  if (!route.length) return [listener];
  const out: string[] = [];
  for (const r of route) {
    if (!r.startsWith('*.')) {
      if (hostnameScore(listener, r) >= 0) out.push(r);
    } else if (!listener.startsWith('*.')) {
      if (hostnameScore(r, listener) >= 0) out.push(listener);
    } else if (listener === r) out.push(r);
    else if (listener.endsWith(r.slice(1))) out.push(listener); // listener *.a.x within route *.x
    else if (r.endsWith(listener.slice(1))) out.push(r); // route *.a.x within listener *.x
  }
  return out.length ? [...new Set(out)] : undefined;
}

function selectorMatches(sel: any, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(sel?.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of sel?.matchExpressions ?? []) {
    const has = e.key in labels;
    if (e.operator === 'In' && !(has && (e.values ?? []).includes(labels[e.key]))) return false;
    if (e.operator === 'NotIn' && has && (e.values ?? []).includes(labels[e.key])) return false;
    if (e.operator === 'Exists' && !has) return false;
    if (e.operator === 'DoesNotExist' && has) return false;
  }
  return true;
}

function allows(l: GatewayListener, gwNs: string, routeNs: string, namespaces: Resource[]): boolean {
  const kinds = l.allowedRoutes?.kinds;
  if (kinds?.length && !kinds.some((k) => k.kind === 'HTTPRoute' && (k.group ?? GATEWAY_GROUP) === GATEWAY_GROUP)) return false;
  const from = l.allowedRoutes?.namespaces?.from ?? 'Same';
  if (from === 'All') return true;
  if (from === 'Same') return gwNs === routeNs;
  const ns = namespaces.find((n) => n.metadata.name === routeNs);
  const labels = { 'kubernetes.io/metadata.name': routeNs, ...(ns?.metadata.labels ?? {}) };
  return selectorMatches(l.allowedRoutes?.namespaces?.selector, labels);
}

/** A ReferenceGrant in `toNs` lets HTTPRoutes of `fromNs` refer to Service `name`. */
export function refPermitted(grants: Resource[], fromNs: string, toNs: string, name: string): boolean {
  return grants.some(
    (g) =>
      (g.metadata.namespace ?? 'default') === toNs &&
      (g.spec?.from ?? []).some((f: any) => f.group === GATEWAY_GROUP && f.kind === 'HTTPRoute' && f.namespace === fromNs) &&
      (g.spec?.to ?? []).some((t: any) => t.group === '' && t.kind === 'Service' && (t.name === undefined || t.name === name)),
  );
}

function matchesOf(rule: HttpRouteRule): RouteMatch[] {
  const ms = rule.matches?.length ? rule.matches : [{}];
  return ms.map((m) => {
    const headers: RouteMatch['headers'] = [];
    for (const h of m.headers ?? []) if (!headers.some((x) => x.name === h.name.toLowerCase())) headers.push({ name: h.name.toLowerCase(), value: h.value });
    const queryParams: RouteMatch['queryParams'] = [];
    for (const q of m.queryParams ?? []) if (!queryParams.some((x) => x.name === q.name)) queryParams.push({ name: q.name, value: q.value });
    return {
      path: { type: m.path?.type ?? 'PathPrefix', value: m.path?.value ?? '/' },
      headers,
      queryParams,
      ...(m.method ? { method: m.method } : {}),
    };
  });
}

/** The specification's precedence between matches (negative: a first). */
export function comparePrecedence(a: { match: RouteMatch; created: string; route: string; rule: number; index: number }, b: typeof a): number {
  const exact = (x: typeof a) => (x.match.path.type === 'Exact' ? 0 : 1);
  if (exact(a) !== exact(b)) return exact(a) - exact(b);
  const len = (x: typeof a) => normalPrefix(x.match.path.value).length;
  if (len(a) !== len(b)) return len(b) - len(a);
  const method = (x: typeof a) => (x.match.method ? 0 : 1);
  if (method(a) !== method(b)) return method(a) - method(b);
  if (a.match.headers.length !== b.match.headers.length) return b.match.headers.length - a.match.headers.length;
  if (a.match.queryParams.length !== b.match.queryParams.length) return b.match.queryParams.length - a.match.queryParams.length;
  if (a.created !== b.created) return a.created < b.created ? -1 : 1;
  if (a.route !== b.route) return a.route < b.route ? -1 : 1;
  if (a.rule !== b.rule) return a.rule - b.rule;
  return a.index - b.index;
}

interface Resolved {
  backends: RouteBackend[];
  problem?: { reason: string; message: string };
}

function resolveBackends(route: Resource, refs: BackendRef[], inputs: GatewayInputs): Resolved {
  const rns = route.metadata.namespace ?? 'default';
  let problem: Resolved['problem'];
  const backends = refs.map((b): RouteBackend => {
    const ns = b.namespace ?? rns;
    const name = `${ns}/${b.name}:${b.port ?? ''}`;
    const weight = b.weight ?? 1;
    const fail = (reason: string, message: string): RouteBackend => {
      problem ??= { reason, message };
      return { name, weight, endpoints: [], error: message };
    };
    if ((b.group ?? '') !== '' || (b.kind ?? 'Service') !== 'Service') return fail('InvalidKind', `backendRef ${b.group ?? ''}/${b.kind}/${b.name}: only core Services are supported`);
    if (ns !== rns && !refPermitted(inputs.grants, rns, ns, b.name)) return fail('RefNotPermitted', `backendRef Service ${ns}/${b.name}: no ReferenceGrant in ${ns} allows HTTPRoutes of ${rns}`);
    const svc = inputs.services.find((s) => s.metadata.name === b.name && (s.metadata.namespace ?? 'default') === ns);
    if (!svc) return fail('BackendNotFound', `backendRef Service ${ns}/${b.name} not found`);
    const eps = b.port !== undefined ? inputs.endpoints(ns, b.name, b.port) : undefined;
    if (!eps) return fail('BackendNotFound', `backendRef Service ${ns}/${b.name} has no port ${b.port}`);
    return { name, weight, endpoints: eps };
  });
  return { backends, problem };
}

/** Compute every Gateway's listener tables and every object's status from the objects. */
export function translateGateways(inputs: GatewayInputs): GatewayTranslation {
  const status: StatusUpdate[] = [];
  const ours = new Set<string>();
  for (const c of inputs.classes) {
    if (c.spec?.controllerName !== CONTROLLER_NAME) continue;
    ours.add(c.metadata.name);
    const gen = c.metadata.generation;
    status.push({ kind: 'GatewayClass', name: c.metadata.name, status: { conditions: [cond('Accepted', true, 'Accepted', 'handled by Membrane', gen)] } });
  }
  const gateways = inputs.gateways.filter((g) => ours.has(g.spec?.gatewayClassName));
  const gwByKey = new Map(gateways.map((g) => [key(g), g]));
  // Per gateway listener: attached route count; per table: entries.
  const attached = new Map<string, number>(); // "ns/gw/listener" -> routes
  const entries = new Map<string, (RouteEntry & { created: string; index: number })[]>(); // "ns/gw:port"
  let counter = 0;

  for (const r of inputs.routes) {
    const rns = r.metadata.namespace ?? 'default';
    const parents: unknown[] = [];
    const rules: HttpRouteRule[] = r.spec?.rules?.length ? r.spec.rules : [{}];
    const resolved = rules.map((rule) => resolveBackends(r, rule.backendRefs ?? [], inputs));
    const refProblem = resolved.find((x) => x.problem)?.problem;
    for (const pr of (r.spec?.parentRefs ?? []) as ParentRef[]) {
      if ((pr.group ?? GATEWAY_GROUP) !== GATEWAY_GROUP || (pr.kind ?? 'Gateway') !== 'Gateway') continue;
      const gw = gwByKey.get(`${pr.namespace ?? rns}/${pr.name}`);
      if (!gw) continue; // not a Gateway of ours: another controller's to report
      const gns = gw.metadata.namespace ?? 'default';
      const listeners: GatewayListener[] = gw.spec?.listeners ?? [];
      const named = listeners.filter((l) => (pr.sectionName === undefined || l.name === pr.sectionName) && (pr.port === undefined || l.port === pr.port));
      const allowed = named.filter((l) => allows(l, gns, rns, inputs.namespaces));
      const hosts = allowed.map((l) => ({ l, hostnames: intersectHostnames(l.hostname, r.spec?.hostnames ?? []) })).filter((x) => x.hostnames !== undefined);
      let accepted: Condition;
      if (!named.length) accepted = cond('Accepted', false, 'NoMatchingParent', `Gateway ${gns}/${gw.metadata.name} has no listener ${pr.sectionName ?? ''}${pr.port ? ` on port ${pr.port}` : ''}`.trim());
      else if (!allowed.length) accepted = cond('Accepted', false, 'NotAllowedByListeners', `no listener of Gateway ${gns}/${gw.metadata.name} allows HTTPRoutes from namespace ${rns}`);
      else if (!hosts.length) accepted = cond('Accepted', false, 'NoMatchingListenerHostname', `the route's hostnames match no listener hostname of Gateway ${gns}/${gw.metadata.name}`);
      else accepted = cond('Accepted', true, 'Accepted', 'attached', r.metadata.generation);
      accepted.observedGeneration = r.metadata.generation;
      const resolvedCond = refProblem ? cond('ResolvedRefs', false, refProblem.reason, refProblem.message, r.metadata.generation) : cond('ResolvedRefs', true, 'ResolvedRefs', 'every backendRef resolved', r.metadata.generation);
      parents.push({ parentRef: { group: GATEWAY_GROUP, kind: 'Gateway', namespace: gns, name: gw.metadata.name, ...(pr.sectionName ? { sectionName: pr.sectionName } : {}), ...(pr.port ? { port: pr.port } : {}) }, controllerName: CONTROLLER_NAME, conditions: [accepted, resolvedCond] });
      for (const { l, hostnames } of hosts) {
        const lk = `${gns}/${gw.metadata.name}/${l.name}`;
        attached.set(lk, (attached.get(lk) ?? 0) + 1);
        const tk = `${gns}/${gw.metadata.name}:${l.port}`;
        const list = entries.get(tk) ?? [];
        entries.set(tk, list);
        rules.forEach((rule, ri) => {
          for (const match of matchesOf(rule)) {
            list.push({
              route: `${rns}/${r.metadata.name}`, rule: ri, listener: l.name, ...(l.hostname ? { listenerHostname: l.hostname } : {}),
              hostnames: hostnames!, match, filters: rule.filters ?? [], backends: resolved[ri].backends,
              created: r.metadata.creationTimestamp ?? '', index: counter++,
            });
          }
        });
      }
    }
    if (parents.length) status.push({ kind: 'HTTPRoute', namespace: rns, name: r.metadata.name, status: { parents } });
  }

  const tables: GatewayTable[] = [];
  for (const gw of gateways) {
    const gk = key(gw);
    const gen = gw.metadata.generation;
    const assigned = inputs.address(gk);
    const address = typeof assigned === 'string' ? assigned : undefined;
    const noAddress = typeof assigned === 'string' ? undefined : assigned;
    const listeners: GatewayListener[] = gw.spec?.listeners ?? [];
    const ports = [...new Set(listeners.map((l) => l.port))];
    if (address) {
      for (const port of ports) {
        const list = (entries.get(`${gk}:${port}`) ?? []).sort(comparePrecedence);
        tables.push({ gateway: gk, address, port, entries: list.map(({ created, index, ...e }) => e) });
      }
    }
    status.push({
      kind: 'Gateway',
      namespace: gw.metadata.namespace ?? 'default',
      name: gw.metadata.name,
      status: {
        addresses: address ? [{ type: 'IPAddress', value: address }] : [],
        conditions: [
          cond('Accepted', true, 'Accepted', 'handled by Membrane', gen),
          address ? cond('Programmed', true, 'Programmed', `listening on ${address}`, gen) : cond('Programmed', false, noAddress!.reason, noAddress!.message, gen),
        ],
        listeners: listeners.map((l) => ({
          name: l.name,
          supportedKinds: [{ group: GATEWAY_GROUP, kind: 'HTTPRoute' }],
          attachedRoutes: attached.get(`${gk}/${l.name}`) ?? 0,
          conditions: [
            cond('Accepted', true, 'Accepted', 'HTTP listener', gen),
            address ? cond('Programmed', true, 'Programmed', `${address}:${l.port}`, gen) : cond('Programmed', false, 'Pending', 'the Gateway has no address', gen),
            cond('ResolvedRefs', true, 'ResolvedRefs', 'no references', gen),
            cond('Conflicted', false, 'NoConflicts', 'no conflicts', gen),
          ],
        })),
      },
    });
  }
  return { tables, status, gateways: gateways.map(key) };
}

/** Keep a condition's lastTransitionTime while its status stays the same. */
export function carryTransitions(next: Record<string, any>, prev: Record<string, any> | undefined, now: string): Record<string, any> {
  const fix = (conds: Condition[] | undefined, old: Condition[] | undefined) =>
    conds?.map((c) => {
      const o = old?.find((x) => x.type === c.type);
      return { ...c, lastTransitionTime: o && o.status === c.status && o.lastTransitionTime ? o.lastTransitionTime : now };
    });
  const out: Record<string, any> = { ...next };
  if (next.conditions) out.conditions = fix(next.conditions, prev?.conditions);
  if (next.listeners) out.listeners = next.listeners.map((l: any) => ({ ...l, conditions: fix(l.conditions, prev?.listeners?.find((x: any) => x.name === l.name)?.conditions) }));
  if (next.parents)
    out.parents = next.parents.map((p: any) => ({
      ...p,
      conditions: fix(p.conditions, prev?.parents?.find((x: any) => JSON.stringify(x.parentRef) === JSON.stringify(p.parentRef))?.conditions),
    }));
  return out;
}
