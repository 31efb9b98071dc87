/**
 * Cluster state in Kubernetes shapes. The Store interface is what the agent
 * uses; the embedded store (one node, a file) and the etcd store (a cluster)
 * implement it. Reads are synchronous (from memory: the embedded store's
 * objects, the etcd store's watched cache); writes are asynchronous and
 * resolve once the store's own readers see the change.
 */
export interface ObjectMeta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  [k: string]: unknown;
}

export interface Resource {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec?: any;
  specs?: any;
  status?: any;
  [k: string]: unknown;
}

export interface ResourceRef {
  kind: string;
  namespace?: string;
  name: string;
}

export type WatchEvent = { type: 'ADDED' | 'MODIFIED' | 'DELETED'; object: Resource; old?: Resource };

export interface ApplyResult {
  kind: string;
  namespace?: string;
  name: string;
  action: 'created' | 'configured' | 'unchanged' | 'deleted' | 'not found';
}

export interface Store {
  /** Current store revision; bumped by every change. */
  readonly revision: number;
  list(kind: string, namespace?: string): Resource[];
  get(ref: ResourceRef): Resource | undefined;
  /** Create or replace every object, all or nothing. Objects must already be validated. */
  apply(objects: Resource[]): Promise<ApplyResult[]>;
  delete(refs: ResourceRef[]): Promise<ApplyResult[]>;
  watch(fn: (ev: WatchEvent) => void): () => void;
}

export function refOf(r: Resource | ResourceRef): ResourceRef {
  if ('metadata' in r) return { kind: r.kind, namespace: r.metadata.namespace, name: r.metadata.name };
  return r;
}

export function refString(r: ResourceRef): string {
  return `${r.kind}/${r.namespace ? r.namespace + '/' : ''}${r.name}`;
}

export function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${stableJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The user-owned content of an object (what apply compares): no status, no server-set metadata. */
export function content(r: Resource): string {
  const { metadata, status, ...rest } = r;
  const { uid, resourceVersion, generation, creationTimestamp, ...meta } = metadata;
  return stableJson({ ...rest, metadata: meta });
}

/** Store failures the API turns into status codes: never classified by message. */
export class StoreError extends Error {
  constructor(
    message: string,
    readonly kind: 'unavailable' | 'conflict' | 'invalid' | 'internal',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
