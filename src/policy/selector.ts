/**
 * Matching selectors against identity label sets, and a canonical string per
 * selector (the selector cache key).
 */
import { parseLabel } from '../identity/labels';
import type { Requirement, Selector } from './types';

/** Labels of one identity, indexed by key. */
export class LabelSet {
  private readonly byKey = new Map<string, { source: string; value: string }[]>();

  constructor(readonly labels: string[]) {
    for (const l of labels) {
      const p = parseLabel(l);
      const list = this.byKey.get(p.key) ?? [];
      list.push({ source: p.source, value: p.value });
      this.byKey.set(p.key, list);
    }
  }

  values(key: string, source?: string): string[] {
    const list = this.byKey.get(key) ?? [];
    return list.filter((l) => !source || l.source === source).map((l) => l.value);
  }

  has(key: string, source?: string): boolean {
    return this.values(key, source).length > 0 || (this.byKey.get(key) ?? []).some((l) => !source || l.source === source);
  }
}

export function matchRequirement(r: Requirement, labels: LabelSet): boolean {
  switch (r.operator) {
    case 'In':
      return labels.values(r.key, r.source).some((v) => r.values.includes(v));
    case 'NotIn':
      return !labels.values(r.key, r.source).some((v) => r.values.includes(v));
    case 'Exists':
      return labels.has(r.key, r.source);
    case 'DoesNotExist':
      return !labels.has(r.key, r.source);
  }
}

export function matches(sel: Selector, labels: LabelSet): boolean {
  return sel.requirements.every((r) => matchRequirement(r, labels));
}

export function isWildcard(sel: Selector): boolean {
  return sel.requirements.length === 0;
}

export function selectorKey(sel: Selector): string {
  const reqs = sel.requirements
    .map((r) => `${r.source ?? 'any'}:${r.key} ${r.operator} (${[...r.values].sort().join(',')})`)
    .sort();
  return reqs.length ? reqs.join(' & ') : '<all>';
}
