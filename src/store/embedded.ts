/**
 * The embedded store: one node, zero setup. Objects live in memory and are
 * persisted atomically to <state-dir>/store.json on every change; watchers are
 * called synchronously after each committed change, in order.
 */
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { readJson, writeJsonAtomic } from '../util/fsutil';
import { ApplyResult, Resource, ResourceRef, Store, WatchEvent, content, refOf, refString } from './types';

interface StoreFile {
  revision: number;
  objects: Resource[];
}

export class EmbeddedStore implements Store {
  private readonly objects = new Map<string, Resource>();
  private readonly watchers = new Set<(ev: WatchEvent) => void>();
  private rev = 0;
  private readonly file?: string;

  constructor(stateDir?: string) {
    if (stateDir) {
      this.file = path.join(stateDir, 'store.json');
      const saved = readJson<StoreFile>(this.file);
      if (saved) {
        this.rev = saved.revision;
        for (const o of saved.objects) this.objects.set(refString(refOf(o)), o);
      }
    }
  }

  get revision(): number {
    return this.rev;
  }

  list(kind: string, namespace?: string): Resource[] {
    return [...this.objects.values()]
      .filter((o) => o.kind === kind && (namespace === undefined || o.metadata.namespace === namespace))
      .sort((a, b) => refString(refOf(a)).localeCompare(refString(refOf(b))));
  }

  get(ref: ResourceRef): Resource | undefined {
    return this.objects.get(refString(ref));
  }

  async apply(objects: Resource[]): Promise<ApplyResult[]> {
    return this.applySync(objects);
  }

  /** apply() without the promise (the embedded store commits synchronously). */
  applySync(objects: Resource[]): ApplyResult[] {
    const events: WatchEvent[] = [];
    const results: ApplyResult[] = [];
    const staged = new Map<string, Resource>();
    for (const o of objects) {
      const key = refString(refOf(o));
      const old = staged.get(key) ?? this.objects.get(key);
      const r: ApplyResult = { kind: o.kind, namespace: o.metadata.namespace, name: o.metadata.name, action: 'created' };
      if (old && content(old) === content(o)) {
        r.action = 'unchanged';
        results.push(r);
        continue;
      }
      const next: Resource = structuredClone(o);
      next.metadata.uid = old?.metadata.uid ?? crypto.randomUUID();
      next.metadata.creationTimestamp = old?.metadata.creationTimestamp ?? new Date().toISOString();
      next.metadata.generation = (old?.metadata.generation ?? 0) + 1;
      if (old?.status !== undefined && next.status === undefined) next.status = old.status;
      staged.set(key, next);
      r.action = old ? 'configured' : 'created';
      events.push({ type: old ? 'MODIFIED' : 'ADDED', object: next, old });
      results.push(r);
    }
    if (events.length) this.commit(events, () => {
      for (const [k, v] of staged) this.objects.set(k, v);
    });
    return results;
  }

  async delete(refs: ResourceRef[]): Promise<ApplyResult[]> {
    return this.deleteSync(refs);
  }

  deleteSync(refs: ResourceRef[]): ApplyResult[] {
    const events: WatchEvent[] = [];
    const results: ApplyResult[] = [];
    const gone = new Set<string>();
    for (const ref of refs) {
      const key = refString(ref);
      const old = this.objects.get(key);
      if (!old || gone.has(key)) {
        results.push({ ...ref, action: 'not found' });
        continue;
      }
      gone.add(key);
      events.push({ type: 'DELETED', object: old });
      results.push({ ...ref, action: 'deleted' });
    }
    if (events.length) this.commit(events, () => {
      for (const k of gone) this.objects.delete(k);
    });
    return results;
  }

  /** Update an object's status without bumping its generation (no watch event for content). */
  setStatus(ref: ResourceRef, status: unknown): void {
    const o = this.objects.get(refString(ref));
    if (!o) return;
    o.status = status;
    this.persist();
  }

  watch(fn: (ev: WatchEvent) => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  private commit(events: WatchEvent[], mutate: () => void): void {
    mutate();
    this.rev++;
    for (const ev of events) ev.object.metadata.resourceVersion = String(this.rev);
    this.persist();
    for (const ev of events) for (const w of this.watchers) w(ev);
  }

  private persist(): void {
    if (!this.file) return;
    writeJsonAtomic(this.file, { revision: this.rev, objects: [...this.objects.values()] } satisfies StoreFile);
  }
}
