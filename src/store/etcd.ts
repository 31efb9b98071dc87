/**
 * The cluster's resources in etcd (cluster mode). Every agent keeps a watched
 * cache of resources/v1/ (kvstore Reflector) and serves reads from it; writes
 * go to etcd in transactions and resolve only after this agent's cache has
 * seen them, so `membrane apply` on any node answers when that node already
 * acts on the change (other nodes follow through their own watches).
 *
 * One apply is one transaction (all or nothing), guarded per object by its
 * etcd mod revision (or absence), so two nodes applying at once never lose an
 * update: the loser re-reads and retries. An apply larger than one etcd
 * transaction (--max-txn-ops, 128 by default) is written in chunks, and a chunk
 * that fails makes the earlier ones be written back to their previous values.
 *
 * Admission hooks (StoreAdmission) fill in what the cluster allocates at write
 * time, in the same transaction: a Service's ClusterIP and node ports
 * (src/service/allocations.ts), as an API server would.
 */
import * as crypto from 'node:crypto';
import { Kvstore, KvstoreError, Reflector, ReflectorEvent, TxnCompare, TxnOp, isUnavailable } from '../kvstore';
import { RESOURCES, parseResourceKey, resourceKey } from '../kvstore/keys';
import type { Logger } from '../util/log';
import { ApplyResult, Resource, ResourceRef, Store, StoreError, WatchEvent, content, refOf, refString } from './types';

export interface WritePlan {
  compares: TxnCompare[];
  ops: TxnOp[];
}

export interface StoreAdmission {
  /**
   * Called for every object about to be written (`old`: the stored version).
   * May fill in fields the cluster owns (carrying them over from `old` when the
   * user left them out) and add conditions and writes to the transaction.
   * Throws StoreError('invalid') to refuse the object.
   */
  admit(next: Resource, old: Resource | undefined, plan: WritePlan): void;
  /** Called for every object about to be deleted. */
  release(old: Resource, plan: WritePlan): void;
  /** Wait until the hook's own view includes revision `rev` (after a lost race). */
  caughtUp?(rev: number): Promise<void>;
}

const MAX_CHUNK_OPS = 100;
const MAX_CHUNK_BYTES = 1 << 20;
const MAX_ATTEMPTS = 8;

interface Cached {
  object: Resource;
  modRevision: number;
}

export class EtcdStore implements Store {
  private readonly reflector: Reflector;
  private readonly objects = new Map<string, Cached>();
  private readonly watchers = new Set<(ev: WatchEvent) => void>();
  readonly admission: StoreAdmission[] = [];
  /** Counters (status, benchmarks). */
  readonly stats = { applies: 0, conflicts: 0, chunked: 0 };

  constructor(
    private readonly kv: Kvstore,
    private readonly log: Logger,
  ) {
    this.reflector = new Reflector(kv, RESOURCES, log.child({ component: 'store' }));
    this.reflector.subscribe((evs) => this.onEvents(evs));
  }

  /** List every resource and start watching; resolves once the cache holds the cluster's objects. */
  async start(timeoutMs = Infinity): Promise<void> {
    await this.reflector.start(timeoutMs);
  }

  stop(): void {
    this.reflector.stop();
  }

  get revision(): number {
    return this.reflector.revision;
  }

  get watchStats() {
    return { ...this.reflector.stats, revision: this.reflector.revision, objects: this.objects.size };
  }

  list(kind: string, namespace?: string): Resource[] {
    const out: Resource[] = [];
    for (const c of this.objects.values()) {
      if (c.object.kind === kind && (namespace === undefined || c.object.metadata.namespace === namespace)) out.push(c.object);
    }
    return out.sort((a, b) => refString(refOf(a)).localeCompare(refString(refOf(b))));
  }

  get(ref: ResourceRef): Resource | undefined {
    return this.objects.get(resourceKey(ref.kind, ref.namespace, ref.name).slice(RESOURCES.length))?.object;
  }

  watch(fn: (ev: WatchEvent) => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  private onEvents(evs: ReflectorEvent[]): void {
    const out: WatchEvent[] = [];
    for (const ev of evs) {
      const old = this.objects.get(ev.key)?.object;
      if (ev.type === 'delete') {
        if (!old) continue;
        this.objects.delete(ev.key);
        out.push({ type: 'DELETED', object: old });
        continue;
      }
      let object: Resource;
      try {
        object = JSON.parse(ev.value!) as Resource;
      } catch (e) {
        this.log.error('kvstore: a resource is not JSON; ignored', { key: ev.key, error: e });
        continue;
      }
      const ref = parseResourceKey(ev.key);
      if (!ref || object.kind !== ref.kind || object.metadata?.name !== ref.name) {
        this.log.error('kvstore: a resource does not match its key; ignored', { key: ev.key });
        continue;
      }
      object.metadata.resourceVersion = String(ev.revision);
      this.objects.set(ev.key, { object, modRevision: ev.revision });
      out.push({ type: old ? 'MODIFIED' : 'ADDED', object, old });
    }
    for (const ev of out) for (const w of this.watchers) w(ev);
  }

  async apply(objects: Resource[]): Promise<ApplyResult[]> {
    this.stats.applies++;
    return this.withRetries('apply', () => this.planApply(objects));
  }

  async delete(refs: ResourceRef[]): Promise<ApplyResult[]> {
    return this.withRetries('delete', () => this.planDelete(refs));
  }

  /** Plan, write, and on a lost race wait for the cache to catch up and plan again. */
  private async withRetries(what: string, plan: () => { results: ApplyResult[]; plan: WritePlan; rollback: Map<string, { value?: string }> }): Promise<ApplyResult[]> {
    let delay = 20;
    for (let attempt = 1; ; attempt++) {
      const p = plan();
      if (!p.plan.ops.length) return p.results;
      const r = await this.write(p.plan, p.rollback);
      if (r.ok) {
        await this.reflector.waitForRevision(r.revision, 30_000);
        return p.results;
      }
      this.stats.conflicts++;
      if (attempt >= MAX_ATTEMPTS) {
        throw new StoreError(`${what}: another writer kept changing the same objects (${MAX_ATTEMPTS} attempts); nothing was applied`, 'conflict');
      }
      await this.reflector.waitForRevision(r.revision, 10_000);
      for (const a of this.admission) await a.caughtUp?.(r.revision);
      await new Promise((res) => setTimeout(res, delay + Math.random() * delay));
      delay = Math.min(delay * 2, 500);
    }
  }

  private planApply(objects: Resource[]) {
    const plan: WritePlan = { compares: [], ops: [] };
    const results: ApplyResult[] = [];
    const staged = new Map<string, Resource>();
    const rollback = new Map<string, { value?: string }>();
    for (const o of objects) {
      const key = resourceKey(o.kind, o.metadata.namespace, o.metadata.name);
      const rel = key.slice(RESOURCES.length);
      const cached = this.objects.get(rel);
      const old = staged.get(rel) ?? cached?.object;
      const next: Resource = structuredClone(o);
      for (const a of this.admission) a.admit(next, old, plan);
      const r: ApplyResult = { kind: o.kind, namespace: o.metadata.namespace, name: o.metadata.name, action: old ? 'configured' : 'created' };
      results.push(r);
      if (old && content(old) === content(next)) {
        r.action = 'unchanged';
        continue;
      }
      next.metadata.uid = old?.metadata.uid ?? crypto.randomUUID();
      next.metadata.creationTimestamp = old?.metadata.creationTimestamp ?? new Date().toISOString();
      next.metadata.generation = (old?.metadata.generation ?? 0) + 1;
      delete next.metadata.resourceVersion;
      if (old?.status !== undefined && next.status === undefined) next.status = old.status;
      if (!staged.has(rel)) {
        plan.compares.push(cached ? { key, target: 'mod', op: '==', value: cached.modRevision } : { key, target: 'create', op: '==', value: 0 });
        rollback.set(key, cached ? { value: JSON.stringify(cached.object) } : {});
      } else {
        plan.ops = plan.ops.filter((x) => x.key !== key);
      }
      staged.set(rel, next);
      plan.ops.push({ type: 'put', key, value: JSON.stringify(next) });
    }
    return { results, plan, rollback };
  }

  private planDelete(refs: ResourceRef[]) {
    const plan: WritePlan = { compares: [], ops: [] };
    const results: ApplyResult[] = [];
    const gone = new Set<string>();
    const rollback = new Map<string, { value?: string }>();
    for (const ref of refs) {
      const key = resourceKey(ref.kind, ref.namespace, ref.name);
      const rel = key.slice(RESOURCES.length);
      const cached = this.objects.get(rel);
      if (!cached || gone.has(rel)) {
        results.push({ ...ref, action: 'not found' });
        continue;
      }
      gone.add(rel);
      for (const a of this.admission) a.release(cached.object, plan);
      plan.compares.push({ key, target: 'mod', op: '==', value: cached.modRevision });
      plan.ops.push({ type: 'delete', key });
      rollback.set(key, { value: JSON.stringify(cached.object) });
      results.push({ ...ref, action: 'deleted' });
    }
    return { results, plan, rollback };
  }

  /**
   * Write a plan: one transaction, or chunks of at most MAX_CHUNK_OPS writes and
   * MAX_CHUNK_BYTES each; a failed chunk makes the chunks before it be written
   * back (each guarded by the revision it was written at). ok=false: a
   * condition did not hold (lost race); errors from etcd are thrown typed.
   */
  private async write(plan: WritePlan, rollback: Map<string, { value?: string }>): Promise<{ ok: boolean; revision: number }> {
    const chunks: WritePlan[] = [];
    let cur: WritePlan = { compares: [], ops: [] };
    let bytes = 0;
    for (const op of plan.ops) {
      const size = op.key.length + (op.type === 'put' ? op.value.length : 0);
      if (cur.ops.length && (cur.ops.length >= MAX_CHUNK_OPS || bytes + size > MAX_CHUNK_BYTES)) {
        chunks.push(cur);
        cur = { compares: [], ops: [] };
        bytes = 0;
      }
      cur.ops.push(op);
      bytes += size;
      cur.compares.push(...plan.compares.filter((c) => c.key === op.key));
    }
    chunks.push(cur);
    // Conditions on keys that no write touches (admission checks) go into the first chunk.
    const written = new Set(plan.ops.map((o) => o.key));
    chunks[0].compares.push(...plan.compares.filter((c) => !written.has(c.key)));
    if (chunks.length > 1) this.stats.chunked++;
    const done: { plan: WritePlan; revision: number }[] = [];
    try {
      for (const c of chunks) {
        const r = await this.kv.txn(c.compares, c.ops);
        if (!r.succeeded) {
          await this.undo(done, rollback);
          return { ok: false, revision: r.revision };
        }
        done.push({ plan: c, revision: r.revision });
      }
    } catch (e) {
      if (done.length) await this.undo(done, rollback).catch((e2) => this.log.error('kvstore: writing back a partial apply failed', { error: e2 }));
      const err = e as KvstoreError;
      throw new StoreError(
        `the cluster store could not be written${done.length ? ' (the part already written was written back)' : ''}: ${err.message}`,
        isUnavailable(e) ? 'unavailable' : 'internal',
        { cause: e },
      );
    }
    return { ok: true, revision: done[done.length - 1].revision };
  }

  private async undo(done: { plan: WritePlan; revision: number }[], rollback: Map<string, { value?: string }>): Promise<void> {
    for (const d of done.reverse()) {
      const compares: TxnCompare[] = [];
      const ops: TxnOp[] = [];
      for (const op of d.plan.ops) {
        const prev = rollback.get(op.key);
        if (!prev) continue; // an admission write (reservation): undone by releasing below
        compares.push({ key: op.key, target: 'mod', op: op.type === 'put' ? '==' : '<', value: op.type === 'put' ? d.revision : d.revision + 1 });
        ops.push(prev.value === undefined ? { type: 'delete', key: op.key } : { type: 'put', key: op.key, value: prev.value });
      }
      for (const op of d.plan.ops) if (!rollback.has(op.key) && op.type === 'put') ops.push({ type: 'delete', key: op.key });
      if (ops.length) await this.kv.txn(compares, ops);
    }
  }
}
