/**
 * L7 (HTTP) policy decisions, shared by the proxy (every request of a
 * redirected flow) and `membrane policy trace`.
 *
 * Input: an endpoint's L7 table for one direction (mapstate.ts, L7Entry) and a
 * request from/to a remote identity on a port. The entries covering (identity,
 * port) decide: none -> the flow is not subject to L7 rules (allowed here; L3/L4
 * is the datapath's business); an entry allowing every request (a rule without
 * L7 rules) -> allowed; otherwise an HTTP rule must match. Rules are
 * alternatives. method, path and host are RE2 regular expressions matched
 * against the whole method, request target (path and query, as the reference
 * system's proxy sees :path) and Host header.
 *
 * headerMatches: a mismatch denies the request unless the entry names an
 * action (LOG, ADD, DELETE, REPLACE); then the rule still matches and the
 * action is applied to the forwarded request. A rule that matches without
 * mismatches wins over one that needs actions.
 */
import { RE2JS } from 're2js';
import { L7Entry, portsOverlap } from './mapstate';
import type { HeaderMatch, HttpRule } from './types';
import { selectorMatches } from '../fqdn/pattern';

export interface HttpRequestView {
  method: string;
  /** The request target as sent (origin form: path and query). */
  path: string;
  /** Header name (lower case) -> every value, in order. */
  headers: Map<string, string[]>;
}

export interface HeaderAction {
  action: 'LOG' | 'ADD' | 'DELETE' | 'REPLACE';
  name: string;
  value?: string;
}

export interface L7Decision {
  allowed: boolean;
  /** The flow is redirected but no entry covers it: not subject to L7 rules. */
  unrestricted?: boolean;
  /** The rule(s) that decided: the matching rule's policy, an L4 rule allowing every request, or the policies whose rules did not match. */
  policies: string[];
  /** The matching HTTP rule (absent when allowed without one). */
  rule?: HttpRule;
  actions: HeaderAction[];
}

interface CompiledRule {
  rule: HttpRule;
  from: string;
  method?: RE2JS;
  path?: RE2JS;
  host?: RE2JS;
  headers: { name: string; value?: string }[];
  headerMatches: HeaderMatch[];
}

const regexCache = new Map<string, RE2JS>();

function re(pattern: string | undefined): RE2JS | undefined {
  if (pattern === undefined) return undefined;
  let r = regexCache.get(pattern);
  if (!r) {
    r = RE2JS.compile(pattern);
    if (regexCache.size > 10_000) regexCache.clear();
    regexCache.set(pattern, r);
  }
  return r;
}

/** "Name" (present) or "Name: value" (exact value), as the reference system reads `headers`. */
export function parseHeaderRequirement(h: string): { name: string; value?: string } {
  const t = h.trim();
  const sp = t.indexOf(' ');
  if (sp < 0) return { name: t.replace(/:$/, '').toLowerCase() };
  return { name: t.slice(0, sp).replace(/:$/, '').toLowerCase(), value: t.slice(sp + 1).trim() };
}

function compile(rule: HttpRule, from: string): CompiledRule {
  return {
    rule,
    from,
    method: re(rule.method),
    path: re(rule.path),
    host: re(rule.host),
    headers: (rule.headers ?? []).map(parseHeaderRequirement),
    headerMatches: rule.headerMatches ?? [],
  };
}

function headerHas(req: HttpRequestView, name: string, value?: string): boolean {
  const vs = req.headers.get(name.toLowerCase());
  if (!vs || vs.length === 0) return false;
  if (value === undefined) return true;
  return vs.includes(value) || (vs.length > 1 && vs.join(',') === value);
}

/** undefined: no match; else the actions the match needs (empty: a clean match). */
function matchRule(c: CompiledRule, req: HttpRequestView): HeaderAction[] | undefined {
  if (c.method && !c.method.matches(req.method)) return undefined;
  if (c.path && !c.path.matches(req.path)) return undefined;
  if (c.host) {
    const host = req.headers.get('host')?.[0] ?? '';
    if (!c.host.matches(host)) return undefined;
  }
  for (const h of c.headers) if (!headerHas(req, h.name, h.value)) return undefined;
  const actions: HeaderAction[] = [];
  for (const m of c.headerMatches) {
    if (headerHas(req, m.name, m.value)) continue;
    if (!m.mismatch) return undefined;
    actions.push({ action: m.mismatch, name: m.name, value: m.value });
  }
  return actions;
}

/**
 * Compiled L7 tables of one endpoint and direction, indexed by identity.
 * Build once per configuration; decide() per request.
 */
export class L7Table {
  private readonly byIdentity = new Map<number, { entry: L7Entry; rules: CompiledRule[] }[]>();
  readonly size: number;

  constructor(entries: L7Entry[], readonly egress: boolean) {
    for (const e of entries) {
      if (e.egress !== egress) continue;
      const list = this.byIdentity.get(e.identity) ?? [];
      list.push({ entry: e, rules: e.http.map((h) => compile(h.rule, h.from)) });
      this.byIdentity.set(e.identity, list);
    }
    this.size = [...this.byIdentity.values()].reduce((s, l) => s + l.length, 0);
  }

  /** The entries covering a remote identity and destination port (TCP). */
  covering(identity: number, port: number, protocol = 6): { entry: L7Entry; rules: CompiledRule[] }[] {
    const out: { entry: L7Entry; rules: CompiledRule[] }[] = [];
    for (const id of identity === 0 ? [0] : [identity, 0]) {
      for (const x of this.byIdentity.get(id) ?? []) if (portsOverlap(x.entry, { protocol, port, prefixLen: 64 })) out.push(x);
    }
    return out;
  }

  decide(identity: number, port: number, req: HttpRequestView): L7Decision {
    const cov = this.covering(identity, port);
    if (cov.length === 0) return { allowed: true, unrestricted: true, policies: [], actions: [] };
    const allowAll = cov.flatMap((x) => x.entry.allowAllFrom);
    if (allowAll.length) return { allowed: true, policies: [...new Set(allowAll)], actions: [] };
    let withActions: { c: CompiledRule; actions: HeaderAction[] } | undefined;
    for (const x of cov) {
      for (const c of x.rules) {
        const actions = matchRule(c, req);
        if (!actions) continue;
        if (actions.length === 0) return { allowed: true, policies: [c.from], rule: c.rule, actions };
        withActions ??= { c, actions };
      }
    }
    if (withActions) return { allowed: true, policies: [withActions.c.from], rule: withActions.c.rule, actions: withActions.actions };
    return { allowed: false, policies: [...new Set(cov.flatMap((x) => x.rules.map((r) => r.from)))], actions: [] };
  }
}

/** Headers of a request as a lower-case name -> values map, from Node's rawHeaders pairs. */
export function headerMap(raw: string[]): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i].toLowerCase();
    const list = m.get(k);
    if (list) list.push(raw[i + 1]);
    else m.set(k, [raw[i + 1]]);
  }
  return m;
}

/** Apply header actions to rawHeaders pairs (the request is otherwise forwarded unchanged). */
export function applyHeaderActions(raw: string[], actions: HeaderAction[]): string[] {
  let out = raw;
  for (const a of actions) {
    const name = a.name.toLowerCase();
    if (a.action === 'LOG') continue;
    if (a.action === 'DELETE') {
      const next: string[] = [];
      for (let i = 0; i + 1 < out.length; i += 2) if (out[i].toLowerCase() !== name) next.push(out[i], out[i + 1]);
      out = next;
    } else if (a.action === 'ADD') {
      out = [...out, a.name, a.value ?? ''];
    } else if (a.action === 'REPLACE') {
      const next: string[] = [];
      for (let i = 0; i + 1 < out.length; i += 2) if (out[i].toLowerCase() !== name) next.push(out[i], out[i + 1]);
      out = [...next, a.name, a.value ?? ''];
    }
  }
  return out;
}

export interface DnsDecision {
  allowed: boolean;
  /** No entry covers the flow: not subject to DNS rules. */
  unrestricted?: boolean;
  /** The policy whose rule allowed the query, or the policies whose rules did not match. */
  policies: string[];
}

/**
 * A DNS query of a redirected flow (src/fqdn/pattern.ts for the name rules):
 * allowed when no entry covers (identity, port, protocol), when a covering
 * entry allows everything (a rule without L7 rules), or when one of the
 * covering entries' DNS rules matches the query name.
 */
export function decideDns(table: L7Table, identity: number, port: number, protocol: number, qname: string): DnsDecision {
  const cov = table.covering(identity, port, protocol);
  if (cov.length === 0) return { allowed: true, unrestricted: true, policies: [] };
  const allowAll = cov.flatMap((x) => x.entry.allowAllFrom);
  if (allowAll.length) return { allowed: true, policies: [...new Set(allowAll)] };
  for (const x of cov) for (const d of x.entry.dns ?? []) if (selectorMatches(d.rule, qname)) return { allowed: true, policies: [d.from] };
  return { allowed: false, policies: [...new Set(cov.flatMap((x) => [...(x.entry.dns ?? []), ...x.entry.http].map((r) => r.from)))] };
}
