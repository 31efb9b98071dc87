/**
 * The selector cache: for each selector in use, the set of identities it
 * selects, kept up to date incrementally as identities come and go (each new
 * identity is tested against every cached selector once; no full recompute).
 */
import type { Identity } from '../identity/identity';
import { LabelSet, matches, selectorKey } from './selector';
import type { Selector } from './types';

export interface CachedSelector {
  key: string;
  selector: Selector;
  ids: Set<number>;
  users: number;
}

export class SelectorCache {
  private readonly selectors = new Map<string, CachedSelector>();
  private readonly identities = new Map<number, LabelSet>();
  /** Bumped whenever any selection changes. */
  version = 0;

  /** Register a selector (reference counted) and return its live entry. */
  add(sel: Selector): CachedSelector {
    const key = selectorKey(sel);
    let c = this.selectors.get(key);
    if (!c) {
      c = { key, selector: sel, ids: new Set(), users: 0 };
      for (const [id, labels] of this.identities) if (matches(sel, labels)) c.ids.add(id);
      this.selectors.set(key, c);
    }
    c.users++;
    return c;
  }

  release(sel: Selector): void {
    const key = selectorKey(sel);
    const c = this.selectors.get(key);
    if (c && --c.users <= 0) this.selectors.delete(key);
  }

  get(sel: Selector): CachedSelector | undefined {
    return this.selectors.get(selectorKey(sel));
  }

  /** An identity appeared: add it to every selector it matches. Returns whether any selection changed. */
  identityAdded(ident: Identity): boolean {
    const labels = new LabelSet(ident.labels);
    this.identities.set(ident.id, labels);
    let changed = false;
    for (const c of this.selectors.values()) {
      if (matches(c.selector, labels)) {
        c.ids.add(ident.id);
        changed = true;
      }
    }
    if (changed) this.version++;
    return changed;
  }

  identityRemoved(id: number): boolean {
    this.identities.delete(id);
    let changed = false;
    for (const c of this.selectors.values()) if (c.ids.delete(id)) changed = true;
    if (changed) this.version++;
    return changed;
  }

  labelsOf(id: number): LabelSet | undefined {
    return this.identities.get(id);
  }

  list(): { selector: string; identities: number[]; users: number }[] {
    return [...this.selectors.values()].map((c) => ({ selector: c.key, identities: [...c.ids].sort((a, b) => a - b), users: c.users }));
  }
}
