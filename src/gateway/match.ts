/**
 * Request routing as the Gateway API specification defines it, evaluated by
 * the proxy for every request on a Gateway listener (pure; unit-tested case by
 * case from the specification):
 *
 *  - hostnames: the most specific Gateway listener hostname matching the
 *    request's Host wins (exact, then the longest wildcard suffix, then none);
 *    among its routes the most specific route hostname wins; "*.example.com"
 *    matches "a.example.com" and "a.b.example.com", not "example.com";
 *  - matches: path Exact, or PathPrefix on whole path segments ("/abc"
 *    matches "/abc", "/abc/" and "/abc/d", not "/abcd"; a trailing "/" of the
 *    prefix is ignored), headers exact with case-insensitive names, query
 *    parameters exact, method; all of a match must hold; the matches of a
 *    rule are alternatives;
 *  - precedence (translate.ts sorts the entries so): Exact path, the longest
 *    prefix, a method, the most header matches, the most query matches, then
 *    the oldest route, then "namespace/name" alphabetically, then rule order.
 */
import type { GatewayTable, RouteBackend, RouteEntry, RouteMatch } from './model';
import type { HeaderModifier, PathModifier } from './resources';

export interface GatewayRequest {
  method: string;
  /** The request target: path and query. */
  target: string;
  /** The Host header (may carry a port). */
  host: string;
  /** Header values by lowercased name. */
  headers: Map<string, string[]>;
}

/** The host of a Host header without the port, lowercased, without a trailing dot. */
export function hostOnly(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end > 0 ? h.slice(0, end + 1) : h;
  }
  const colon = h.lastIndexOf(':');
  if (colon >= 0) h = h.slice(0, colon);
  return h.endsWith('.') ? h.slice(0, -1) : h;
}

/**
 * How specifically `pattern` matches `host`: -1 no match; 0 no pattern (any
 * host); a wildcard: 1 + its suffix length; exact: a large number.
 */
export function hostnameScore(pattern: string | undefined, host: string): number {
  if (!pattern) return 0;
  if (pattern.startsWith('*.')) {
    const suffix = pattern.slice(1); // ".example.com"
    return host.length > suffix.length && host.endsWith(suffix) ? 1 + suffix.length : -1;
  }
  return pattern === host ? 100_000 : -1;
}

/** Split a request target into its path and query (no normalisation beyond that). */
export function splitTarget(target: string): { path: string; query: string } {
  const q = target.indexOf('?');
  let path = q >= 0 ? target.slice(0, q) : target;
  const hash = path.indexOf('#');
  if (hash >= 0) path = path.slice(0, hash);
  // An absolute-form target (proxy requests): take its path.
  if (!path.startsWith('/')) {
    const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/]*(\/.*)?$/.exec(path);
    path = m ? m[1] ?? '/' : path;
  }
  return { path: path || '/', query: q >= 0 ? target.slice(q + 1) : '' };
}

/** The prefix as compared: a trailing "/" is ignored (except the root). */
export function normalPrefix(prefix: string): string {
  return prefix.length > 1 && prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
}

/** PathPrefix on whole segments. */
export function prefixMatches(prefix: string, path: string): boolean {
  const p = normalPrefix(prefix);
  if (p === '/') return true;
  return path === p || (path.startsWith(p) && path[p.length] === '/');
}

function queryValue(query: string, name: string): string | undefined {
  if (!query) return undefined;
  for (const part of query.split('&')) {
    const eq = part.indexOf('=');
    const k = eq >= 0 ? part.slice(0, eq) : part;
    let key: string;
    try {
      key = decodeURIComponent(k.replace(/\+/g, ' '));
    } catch {
      key = k;
    }
    if (key !== name) continue;
    const v = eq >= 0 ? part.slice(eq + 1) : '';
    try {
      return decodeURIComponent(v.replace(/\+/g, ' '));
    } catch {
      return v;
    }
  }
  return undefined;
}

export function matchesRequest(m: RouteMatch, req: GatewayRequest, path: string, query: string): boolean {
  if (m.method !== undefined && m.method !== req.method) return false;
  if (m.path.type === 'Exact' ? path !== m.path.value : !prefixMatches(m.path.value, path)) return false;
  for (const h of m.headers) {
    const v = req.headers.get(h.name);
    if (!v || v.join(',') !== h.value) return false;
  }
  for (const q of m.queryParams) if (queryValue(query, q.name) !== q.value) return false;
  return true;
}

/** The entry that serves a request, or undefined (404). Entries are in precedence order. */
export function route(table: GatewayTable, req: GatewayRequest): RouteEntry | undefined {
  const host = hostOnly(req.host);
  // The most specific listener hostname first: routes of a less specific listener never serve its hosts.
  let bestListener = -1;
  for (const e of table.entries) bestListener = Math.max(bestListener, hostnameScore(e.listenerHostname, host));
  if (bestListener < 0) return undefined;
  const { path, query } = splitTarget(req.target);
  let best: RouteEntry | undefined;
  let bestHost = -1;
  for (const e of table.entries) {
    if (hostnameScore(e.listenerHostname, host) !== bestListener) continue;
    let hs = e.hostnames.length ? -1 : 0;
    for (const h of e.hostnames) hs = Math.max(hs, hostnameScore(h, host));
    if (hs <= bestHost) continue; // a less or equally specific hostname: the earlier entry has precedence
    if (!matchesRequest(e.match, req, path, query)) continue;
    best = e;
    bestHost = hs;
  }
  return best;
}

/** A backend by weight (weight 0 gets nothing); undefined when every weight is 0 or there are none. `rand` in [0, 1). */
export function pickBackend(backends: RouteBackend[], rand: number): RouteBackend | undefined {
  let total = 0;
  for (const b of backends) total += b.weight;
  if (total <= 0) return undefined;
  let x = rand * total;
  for (const b of backends) {
    if (b.weight <= 0) continue;
    if (x < b.weight) return b;
    x -= b.weight;
  }
  return backends.filter((b) => b.weight > 0).pop();
}

/** The path after a path modifier, for an entry matched with `match`. */
export function modifyPath(mod: PathModifier, match: RouteMatch, path: string): string {
  if (mod.type === 'ReplaceFullPath') return mod.replaceFullPath ?? '/';
  const prefix = normalPrefix(match.path.value);
  const rest = prefix === '/' ? path : path.slice(prefix.length); // "" or "/..."
  const repl = mod.replacePrefixMatch ?? '/';
  if (repl === '/' || repl.endsWith('/')) {
    const base = repl.endsWith('/') && repl.length > 1 ? repl.slice(0, -1) : repl === '/' ? '' : repl;
    const out = base + (rest.startsWith('/') ? rest : rest ? `/${rest}` : '');
    return out || '/';
  }
  return repl + rest || '/';
}

/** Apply a header modifier to a head given as [name, value, name, value, ...]: set (replace), add (append), remove. */
export function modifyHeaders(raw: string[], mod: HeaderModifier | undefined): string[] {
  if (!mod) return raw;
  const drop = new Set<string>([...(mod.remove ?? []), ...(mod.set ?? []).map((h) => h.name)].map((n) => n.toLowerCase()));
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (!drop.has(raw[i].toLowerCase())) out.push(raw[i], raw[i + 1]);
  for (const h of mod.set ?? []) out.push(h.name, h.value);
  for (const h of mod.add ?? []) {
    // "add" appends to an existing value (comma-separated), as the specification's example shows.
    const idx = out.findIndex((n, j) => j % 2 === 0 && n.toLowerCase() === h.name.toLowerCase());
    if (idx >= 0) out[idx + 1] = `${out[idx + 1]},${h.value}`;
    else out.push(h.name, h.value);
  }
  return out;
}

const DEFAULT_PORT: Record<string, number> = { http: 80, https: 443 };

/** The Location of a RequestRedirect: scheme, hostname, port and path as the filter says, the request's otherwise. */
export function redirectLocation(
  f: { scheme?: string; hostname?: string; port?: number; path?: PathModifier },
  match: RouteMatch,
  req: GatewayRequest,
  listenerPort: number,
): string {
  const { path, query } = splitTarget(req.target);
  const scheme = f.scheme ?? 'http';
  const host = f.hostname ?? hostOnly(req.host);
  // No port given: the scheme's well-known port when the scheme changes, else the listener's.
  const port = f.port ?? (f.scheme !== undefined ? DEFAULT_PORT[scheme] : listenerPort);
  const portPart = port === DEFAULT_PORT[scheme] ? '' : `:${port}`;
  const newPath = f.path ? modifyPath(f.path, match, path) : path;
  return `${scheme}://${host}${portPart}${newPath}${query ? `?${query}` : ''}`;
}
