/**
 * DNS names and patterns as the reference system defines them for toFQDNs
 * and DNS rules (matchName / matchPattern):
 *  - names are compared case-insensitively, as fully qualified names (a
 *    trailing dot is implied: "api.example.com" and "API.example.com." are
 *    the same name);
 *  - matchName: letters, digits, '-', '_' and '.'; the whole name must match;
 *  - matchPattern: the same plus '*', which matches any run (also empty) of
 *    name characters within one label ("*.example.com" matches
 *    "a.example.com", not "example.com" nor "a.b.example.com"); a bare "*"
 *    matches every name.
 */

/** Characters of a name (reference system: [-a-zA-Z0-9_]); '.' separates labels. */
const NAME_RE = /^[-a-zA-Z0-9_.]+$/;
const PATTERN_RE = /^[-a-zA-Z0-9_.*]+$/;

export class DnsNameError extends Error {
  constructor(
    readonly field: string,
    readonly value: unknown,
    readonly reason: string,
  ) {
    super(`${field}: ${JSON.stringify(value)} ${reason}`);
  }
}

/** The canonical form of a name: lower case, with the trailing dot. */
export function canonicalName(name: string): string {
  const n = name.toLowerCase();
  return n.endsWith('.') ? n : `${n}.`;
}

/** Problems of a matchName value (empty list: valid). */
export function nameProblems(v: unknown): string[] {
  if (typeof v !== 'string' || v === '') return ['must be a non-empty DNS name'];
  if (v.length > 255) return [`is longer than 255 characters`];
  if (!NAME_RE.test(v)) return ['is not a DNS name (letters, digits, "-", "_" and "." only)'];
  if (v !== '.' && (v.startsWith('.') || v.includes('..'))) return ['has an empty label'];
  for (const l of v.split('.')) if (l.length > 63) return [`has a label longer than 63 characters (${JSON.stringify(l)})`];
  return [];
}

/** Problems of a matchPattern value (empty list: valid). */
export function patternProblems(v: unknown): string[] {
  if (typeof v !== 'string' || v === '') return ['must be a non-empty DNS name pattern'];
  if (v.length > 255) return [`is longer than 255 characters`];
  if (!PATTERN_RE.test(v)) return ['is not a DNS name pattern (letters, digits, "-", "_", "." and "*" only)'];
  if (v !== '*' && (v.startsWith('.') || v.includes('..'))) return ['has an empty label'];
  return [];
}

const compiled = new Map<string, RegExp>();

/** A matchPattern as an anchored regular expression over canonical names. */
export function patternRegExp(pattern: string): RegExp {
  let re = compiled.get(pattern);
  if (re) return re;
  const p = canonicalName(pattern);
  if (p === '*.') {
    // Every name: one or more labels, or the root.
    re = /^(([-a-z0-9_]+\.)+|\.)$/;
  } else {
    const body = p
      .split('')
      .map((c) => (c === '*' ? '[-a-z0-9_]*' : c === '.' ? '\\.' : c))
      .join('');
    re = new RegExp(`^${body}$`);
  }
  if (compiled.size > 10_000) compiled.clear();
  compiled.set(pattern, re);
  return re;
}

/** A name selector of a policy: exactly one of matchName / matchPattern. */
export interface NameSelector {
  matchName?: string;
  matchPattern?: string;
}

/** Does a selector match a name (any case, with or without the trailing dot)? */
export function selectorMatches(sel: NameSelector, name: string): boolean {
  const n = canonicalName(name);
  if (sel.matchName !== undefined && canonicalName(sel.matchName) === n) return true;
  if (sel.matchPattern !== undefined && patternRegExp(sel.matchPattern).test(n)) return true;
  return false;
}

/** A stable key for a selector (the same selector written in another case is the same key). */
export function selectorKey(sel: NameSelector): string {
  if (sel.matchName !== undefined) return `name:${canonicalName(sel.matchName)}`;
  return `pattern:${canonicalName(sel.matchPattern ?? '')}`;
}
