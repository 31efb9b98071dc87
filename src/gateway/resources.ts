/**
 * Gateway API resources (gateway.networking.k8s.io/v1; ReferenceGrant also
 * v1beta1) as Membrane accepts them, and their validation: every problem names
 * the field path and the value, as the other kinds do (src/store/kinds.ts).
 *
 * Only what the HTTP data plane implements is accepted; a field Membrane does
 * not implement (TLS listeners, RegularExpression paths, request mirroring,
 * ...) is refused with "not supported", naming it.
 */
import { showValue } from '../util/depth';
import type { Resource } from '../store/types';

export const GATEWAY_GROUP = 'gateway.networking.k8s.io';
export const GATEWAY_V1 = `${GATEWAY_GROUP}/v1`;
export const GATEWAY_V1BETA1 = `${GATEWAY_GROUP}/v1beta1`;
/** GatewayClasses with this controllerName are Membrane's. */
export const CONTROLLER_NAME = 'membrane.io/gateway-controller';

export interface HeaderValue {
  name: string;
  value: string;
}
export interface HeaderModifier {
  set?: HeaderValue[];
  add?: HeaderValue[];
  remove?: string[];
}
export interface PathModifier {
  type: 'ReplaceFullPath' | 'ReplacePrefixMatch';
  replaceFullPath?: string;
  replacePrefixMatch?: string;
}
export interface HttpRouteFilter {
  type: 'RequestHeaderModifier' | 'ResponseHeaderModifier' | 'RequestRedirect' | 'URLRewrite';
  requestHeaderModifier?: HeaderModifier;
  responseHeaderModifier?: HeaderModifier;
  requestRedirect?: { scheme?: 'http' | 'https'; hostname?: string; port?: number; path?: PathModifier; statusCode?: number };
  urlRewrite?: { hostname?: string; path?: PathModifier };
}
export interface HttpRouteMatch {
  path?: { type?: 'Exact' | 'PathPrefix'; value?: string };
  headers?: { type?: 'Exact'; name: string; value: string }[];
  queryParams?: { type?: 'Exact'; name: string; value: string }[];
  method?: string;
}
export interface BackendRef {
  group?: string;
  kind?: string;
  name: string;
  namespace?: string;
  port?: number;
  weight?: number;
}
export interface ParentRef {
  group?: string;
  kind?: string;
  namespace?: string;
  name: string;
  sectionName?: string;
  port?: number;
}
export interface HttpRouteRule {
  matches?: HttpRouteMatch[];
  filters?: HttpRouteFilter[];
  backendRefs?: BackendRef[];
}
export interface GatewayListener {
  name: string;
  hostname?: string;
  port: number;
  protocol: 'HTTP';
  allowedRoutes?: {
    namespaces?: { from?: 'Same' | 'All' | 'Selector'; selector?: { matchLabels?: Record<string, string>; matchExpressions?: { key: string; operator: string; values?: string[] }[] } };
    kinds?: { group?: string; kind: string }[];
  };
}

type Obj = Record<string, any>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

const SECTION_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** RFC 1123 hostname, optionally with a leading "*." (Gateway API's Hostname type). */
const HOSTNAME_RE = /^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const HEADER_NAME_RE = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'];
const REDIRECT_CODES = [301, 302, 303, 307, 308];

class At {
  constructor(
    readonly problems: string[],
    readonly path: string,
  ) {}
  at(k: string | number): At {
    return new At(this.problems, typeof k === 'number' ? `${this.path}[${k}]` : this.path ? `${this.path}.${k}` : k);
  }
  add(msg: string): void {
    this.problems.push(`${this.path}: ${msg}`);
  }
  keys(o: Obj, allowed: string[], unsupported: Record<string, string> = {}): void {
    for (const k of Object.keys(o)) {
      if (k in unsupported) this.at(k).add(`not supported: ${unsupported[k]}`);
      else if (!allowed.includes(k)) this.at(k).add(`unknown field (known: ${allowed.join(', ')})`);
    }
  }
  list(v: unknown, max: number): unknown[] {
    if (v === undefined) return [];
    if (!Array.isArray(v)) {
      this.add(`must be a list, got ${showValue(v)}`);
      return [];
    }
    if (v.length > max) this.add(`at most ${max} entries (got ${v.length})`);
    return v;
  }
  obj(v: unknown, required = false): Obj | undefined {
    if (v === undefined) {
      if (required) this.add('is required');
      return undefined;
    }
    if (!isObj(v)) {
      this.add(`must be an object, got ${showValue(v)}`);
      return undefined;
    }
    return v;
  }
  str(v: unknown, re: RegExp | undefined, what: string, required = false): string | undefined {
    if (v === undefined) {
      if (required) this.add('is required');
      return undefined;
    }
    if (typeof v !== 'string' || (re && !re.test(v))) {
      this.add(`${showValue(v)} is not ${what}`);
      return undefined;
    }
    return v;
  }
  port(v: unknown, required = false): void {
    if (v === undefined) {
      if (required) this.add('is required');
      return;
    }
    if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > 65535) this.add(`${showValue(v)} must be a port number 1-65535`);
  }
}

const NAME_RE = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

function hostname(a: At, v: unknown): void {
  if (v === undefined) return;
  if (typeof v !== 'string' || v.length > 253 || !HOSTNAME_RE.test(v)) a.add(`${showValue(v)} is not a hostname (lowercase RFC 1123, optionally with a leading "*.")`);
}

export function validateGatewayClass(o: Resource, problems: string[]): void {
  const a = new At(problems, 'spec');
  const spec = a.obj(o.spec, true);
  if (!spec) return;
  a.keys(spec, ['controllerName', 'description', 'parametersRef']);
  a.at('controllerName').str(spec.controllerName, /^[a-z0-9.-]+\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$/, 'a domain-prefixed path (e.g. membrane.io/gateway-controller)', true);
}

export function validateGateway(o: Resource, problems: string[]): void {
  const a = new At(problems, 'spec');
  const spec = a.obj(o.spec, true);
  if (!spec) return;
  a.keys(spec, ['gatewayClassName', 'listeners', 'addresses', 'infrastructure'], { backendTLS: 'backend TLS' });
  a.at('gatewayClassName').str(spec.gatewayClassName, NAME_RE, 'a GatewayClass name', true);
  const ls = a.at('listeners').list(spec.listeners, 64);
  if (spec.listeners === undefined || ls.length === 0) a.at('listeners').add('at least one listener is required');
  const names = new Set<string>();
  const portHost = new Set<string>();
  ls.forEach((l, i) => {
    const la = a.at('listeners').at(i);
    const lo = la.obj(l, true);
    if (!lo) return;
    la.keys(lo, ['name', 'hostname', 'port', 'protocol', 'allowedRoutes'], { tls: 'TLS listeners (HTTPS, TLS) are not supported yet' });
    const name = la.at('name').str(lo.name, SECTION_RE, 'a listener name (lowercase letters, digits, "-")', true);
    if (name !== undefined) {
      if (names.has(name)) la.at('name').add(`${showValue(name)} is used by two listeners`);
      names.add(name);
    }
    hostname(la.at('hostname'), lo.hostname);
    la.at('port').port(lo.port, true);
    if (lo.protocol === undefined) la.at('protocol').add('is required');
    else if (lo.protocol !== 'HTTP') la.at('protocol').add(`${showValue(lo.protocol)} is not supported (only HTTP)`);
    const key = `${lo.port}/${lo.hostname ?? ''}`;
    if (portHost.has(key)) la.add(`port ${showValue(lo.port)} with hostname ${showValue(lo.hostname ?? '')} is used by two listeners`);
    portHost.add(key);
    const ar = la.at('allowedRoutes').obj(lo.allowedRoutes);
    if (ar) {
      const ara = la.at('allowedRoutes');
      ara.keys(ar, ['namespaces', 'kinds']);
      const ns = ara.at('namespaces').obj(ar.namespaces);
      if (ns) {
        const na = ara.at('namespaces');
        na.keys(ns, ['from', 'selector']);
        if (ns.from !== undefined && !['Same', 'All', 'Selector'].includes(ns.from)) na.at('from').add(`${showValue(ns.from)} is not Same, All or Selector`);
        if (ns.from === 'Selector') {
          const sel = na.at('selector').obj(ns.selector, true);
          if (sel) {
            na.at('selector').keys(sel, ['matchLabels', 'matchExpressions']);
            if (sel.matchLabels !== undefined && (!isObj(sel.matchLabels) || !Object.values(sel.matchLabels).every((x) => typeof x === 'string'))) na.at('selector').at('matchLabels').add('must be a map of strings');
            na.at('selector').at('matchExpressions').list(sel.matchExpressions, 64).forEach((e: any, j) => {
              const ea = na.at('selector').at('matchExpressions').at(j);
              if (!isObj(e) || typeof e.key !== 'string') return ea.add(`must be {key, operator, values}, got ${showValue(e)}`);
              if (!['In', 'NotIn', 'Exists', 'DoesNotExist'].includes(e.operator)) ea.at('operator').add(`${showValue(e.operator)} is not In, NotIn, Exists or DoesNotExist`);
            });
          }
        }
      }
      ara.at('kinds').list(ar.kinds, 8).forEach((k: any, j) => {
        const ka = ara.at('kinds').at(j);
        if (!isObj(k) || typeof k.kind !== 'string') ka.add(`must be {group, kind}, got ${showValue(k)}`);
      });
    }
  });
  a.at('addresses').list(spec.addresses, 16).forEach((ad: any, i) => {
    const aa = a.at('addresses').at(i);
    if (!isObj(ad)) return aa.add(`must be {type, value}, got ${showValue(ad)}`);
    if ((ad.type ?? 'IPAddress') !== 'IPAddress') aa.at('type').add(`${showValue(ad.type)} is not supported (only IPAddress)`);
    if (typeof ad.value !== 'string' || !/^\d+\.\d+\.\d+\.\d+$/.test(ad.value)) aa.at('value').add(`${showValue(ad.value)} is not an IPv4 address`);
  });
}

function pathModifier(a: At, v: unknown, prefixAllowed: boolean): void {
  const o = a.obj(v);
  if (!o) return;
  a.keys(o, ['type', 'replaceFullPath', 'replacePrefixMatch']);
  if (o.type === 'ReplaceFullPath') a.at('replaceFullPath').str(o.replaceFullPath, /^\/[^?#\s]*$/, 'an absolute path', true);
  else if (o.type === 'ReplacePrefixMatch') {
    if (!prefixAllowed) a.at('type').add('ReplacePrefixMatch needs a rule whose every match is a PathPrefix match (no matches: PathPrefix "/")');
    a.at('replacePrefixMatch').str(o.replacePrefixMatch, /^(\/[^?#\s]*)?$/, 'an absolute path or ""', true);
  } else a.at('type').add(`${showValue(o.type)} is not ReplaceFullPath or ReplacePrefixMatch`);
}

function headerModifier(a: At, v: unknown): void {
  const o = a.obj(v, true);
  if (!o) return;
  a.keys(o, ['set', 'add', 'remove']);
  for (const k of ['set', 'add'] as const) {
    const seen = new Set<string>();
    a.at(k).list(o[k], 16).forEach((h: any, i) => {
      const ha = a.at(k).at(i);
      if (!isObj(h)) return ha.add(`must be {name, value}, got ${showValue(h)}`);
      const n = ha.at('name').str(h.name, HEADER_NAME_RE, 'an HTTP header name', true);
      ha.at('value').str(h.value, /^[^\r\n\0]*$/, 'a header value (no CR, LF or NUL)', true);
      if (n && seen.has(n.toLowerCase())) ha.at('name').add(`${showValue(n)} is named twice`);
      if (n) seen.add(n.toLowerCase());
    });
  }
  a.at('remove').list(o.remove, 16).forEach((n, i) => a.at('remove').at(i).str(n, HEADER_NAME_RE, 'an HTTP header name', true));
}

function parentRefs(a: At, v: unknown): void {
  const refs = a.list(v, 32);
  refs.forEach((r: any, i) => {
    const ra = a.at(i);
    const o = ra.obj(r, true);
    if (!o) return;
    ra.keys(o, ['group', 'kind', 'namespace', 'name', 'sectionName', 'port']);
    ra.at('name').str(o.name, NAME_RE, 'a name', true);
    ra.at('namespace').str(o.namespace, NAME_RE, 'a namespace name');
    ra.at('sectionName').str(o.sectionName, SECTION_RE, 'a listener name');
    ra.at('port').port(o.port);
    if (o.group !== undefined && typeof o.group !== 'string') ra.at('group').add(`${showValue(o.group)} is not a group`);
    if (o.kind !== undefined && typeof o.kind !== 'string') ra.at('kind').add(`${showValue(o.kind)} is not a kind`);
  });
}

export function validateHttpRoute(o: Resource, problems: string[]): void {
  const a = new At(problems, 'spec');
  const spec = a.obj(o.spec, true);
  if (!spec) return;
  a.keys(spec, ['parentRefs', 'hostnames', 'rules']);
  parentRefs(a.at('parentRefs'), spec.parentRefs);
  a.at('hostnames').list(spec.hostnames, 16).forEach((h, i) => hostname(a.at('hostnames').at(i), h));
  a.at('rules').list(spec.rules, 16).forEach((r: any, i) => {
    const ra = a.at('rules').at(i);
    const rule = ra.obj(r, true);
    if (!rule) return;
    ra.keys(rule, ['name', 'matches', 'filters', 'backendRefs'], { timeouts: 'rule timeouts', retry: 'retries', sessionPersistence: 'session persistence' });
    const matches = ra.at('matches').list(rule.matches, 64);
    let allPrefix = true;
    matches.forEach((m: any, j) => {
      const ma = ra.at('matches').at(j);
      const mo = ma.obj(m, true);
      if (!mo) return;
      ma.keys(mo, ['path', 'headers', 'queryParams', 'method']);
      const p = ma.at('path').obj(mo.path);
      if (p) {
        const pa = ma.at('path');
        pa.keys(p, ['type', 'value']);
        const type = p.type ?? 'PathPrefix';
        if (type === 'RegularExpression') pa.at('type').add('not supported: RegularExpression (use Exact or PathPrefix)');
        else if (type !== 'Exact' && type !== 'PathPrefix') pa.at('type').add(`${showValue(p.type)} is not Exact or PathPrefix`);
        if (type !== 'PathPrefix') allPrefix = false;
        if (p.value !== undefined) {
          const pv = pa.at('value').str(p.value, /^\/[^?#\s]*$/, 'an absolute path (starting with "/", no query or fragment)');
          if (pv && (/\/\/|\/\.\.?(\/|$)/.test(pv))) pa.at('value').add(`${showValue(pv)} must not contain "//", "/./" or "/../"`);
        }
      }
      for (const k of ['headers', 'queryParams'] as const) {
        ma.at(k).list(mo[k], 16).forEach((h: any, n) => {
          const ha = ma.at(k).at(n);
          if (!isObj(h)) return ha.add(`must be {name, value}, got ${showValue(h)}`);
          ha.keys(h, ['type', 'name', 'value']);
          if (h.type !== undefined && h.type !== 'Exact') ha.at('type').add(h.type === 'RegularExpression' ? 'not supported: RegularExpression (use Exact)' : `${showValue(h.type)} is not Exact`);
          ha.at('name').str(h.name, k === 'headers' ? HEADER_NAME_RE : /^[^\s&=#]+$/, k === 'headers' ? 'an HTTP header name' : 'a query parameter name', true);
          ha.at('value').str(h.value, /^[^\r\n\0]*$/, 'a value', true);
        });
      }
      if (mo.method !== undefined && !METHODS.includes(mo.method)) ma.at('method').add(`${showValue(mo.method)} is not one of ${METHODS.join(', ')}`);
    });
    const types = new Map<string, number>();
    ra.at('filters').list(rule.filters, 16).forEach((f: any, j) => {
      const fa = ra.at('filters').at(j);
      const fo = fa.obj(f, true);
      if (!fo) return;
      const known = ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestRedirect', 'URLRewrite'];
      if (fo.type === 'RequestMirror' || fo.type === 'ExtensionRef' || fo.type === 'CORS') return fa.at('type').add(`not supported: ${fo.type}`);
      if (!known.includes(fo.type)) return fa.at('type').add(`${showValue(fo.type)} is not one of ${known.join(', ')}`);
      types.set(fo.type, (types.get(fo.type) ?? 0) + 1);
      if (types.get(fo.type)! > 1) fa.at('type').add(`${fo.type} is given twice in one rule`);
      fa.keys(fo, ['type', 'requestHeaderModifier', 'responseHeaderModifier', 'requestRedirect', 'urlRewrite']);
      const field = fo.type[0].toLowerCase() + fo.type.slice(1);
      const key = field === 'uRLRewrite' ? 'urlRewrite' : field;
      for (const other of ['requestHeaderModifier', 'responseHeaderModifier', 'requestRedirect', 'urlRewrite']) {
        if (other !== key && fo[other] !== undefined) fa.at(other).add(`must not be set for type ${fo.type}`);
      }
      if (key === 'requestHeaderModifier' || key === 'responseHeaderModifier') headerModifier(fa.at(key), fo[key]);
      else if (key === 'requestRedirect') {
        const ra2 = fa.at(key);
        const ro = ra2.obj(fo[key], true);
        if (!ro) return;
        ra2.keys(ro, ['scheme', 'hostname', 'port', 'path', 'statusCode']);
        if (ro.scheme !== undefined && ro.scheme !== 'http' && ro.scheme !== 'https') ra2.at('scheme').add(`${showValue(ro.scheme)} is not http or https`);
        hostname(ra2.at('hostname'), ro.hostname);
        if (typeof ro.hostname === 'string' && ro.hostname.startsWith('*')) ra2.at('hostname').add(`${showValue(ro.hostname)} must not be a wildcard`);
        ra2.at('port').port(ro.port);
        pathModifier(ra2.at('path'), ro.path, allPrefix);
        if (ro.statusCode !== undefined && !REDIRECT_CODES.includes(ro.statusCode)) ra2.at('statusCode').add(`${showValue(ro.statusCode)} is not one of ${REDIRECT_CODES.join(', ')}`);
      } else {
        const ua = fa.at('urlRewrite');
        const uo = ua.obj(fo.urlRewrite, true);
        if (!uo) return;
        ua.keys(uo, ['hostname', 'path']);
        hostname(ua.at('hostname'), uo.hostname);
        if (typeof uo.hostname === 'string' && uo.hostname.startsWith('*')) ua.at('hostname').add(`${showValue(uo.hostname)} must not be a wildcard`);
        pathModifier(ua.at('path'), uo.path, allPrefix);
      }
    });
    if (types.has('RequestRedirect') && types.has('URLRewrite')) ra.at('filters').add('RequestRedirect and URLRewrite cannot be used in the same rule');
    ra.at('backendRefs').list(rule.backendRefs, 16).forEach((b: any, j) => {
      const ba = ra.at('backendRefs').at(j);
      const bo = ba.obj(b, true);
      if (!bo) return;
      ba.keys(bo, ['group', 'kind', 'name', 'namespace', 'port', 'weight'], { filters: 'filters on a backendRef (put them on the rule)' });
      ba.at('name').str(bo.name, NAME_RE, 'a name', true);
      ba.at('namespace').str(bo.namespace, NAME_RE, 'a namespace name');
      if ((bo.group ?? '') === '' && (bo.kind ?? 'Service') === 'Service') ba.at('port').port(bo.port, true);
      else ba.at('port').port(bo.port);
      if (bo.weight !== undefined && (!Number.isInteger(bo.weight) || bo.weight < 0 || bo.weight > 1_000_000)) ba.at('weight').add(`${showValue(bo.weight)} must be an integer 0-1000000`);
    });
  });
}

export function validateReferenceGrant(o: Resource, problems: string[]): void {
  const a = new At(problems, 'spec');
  const spec = a.obj(o.spec, true);
  if (!spec) return;
  a.keys(spec, ['from', 'to']);
  const from = a.at('from').list(spec.from, 16);
  if (!from.length) a.at('from').add('at least one entry is required');
  from.forEach((f: any, i) => {
    const fa = a.at('from').at(i);
    if (!isObj(f)) return fa.add(`must be {group, kind, namespace}, got ${showValue(f)}`);
    fa.keys(f, ['group', 'kind', 'namespace']);
    if (typeof f.group !== 'string') fa.at('group').add(`${showValue(f.group)} is not a group (use "" for the core group)`);
    fa.at('kind').str(f.kind, /^[A-Za-z]+$/, 'a kind', true);
    fa.at('namespace').str(f.namespace, NAME_RE, 'a namespace name', true);
  });
  const to = a.at('to').list(spec.to, 16);
  if (!to.length) a.at('to').add('at least one entry is required');
  to.forEach((t: any, i) => {
    const ta = a.at('to').at(i);
    if (!isObj(t)) return ta.add(`must be {group, kind, name?}, got ${showValue(t)}`);
    ta.keys(t, ['group', 'kind', 'name']);
    if (typeof t.group !== 'string') ta.at('group').add(`${showValue(t.group)} is not a group (use "" for the core group)`);
    ta.at('kind').str(t.kind, /^[A-Za-z]+$/, 'a kind', true);
    ta.at('name').str(t.name, NAME_RE, 'a name');
  });
}
