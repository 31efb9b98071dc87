/**
 * Cluster state in Kubernetes shapes. The Store interface is what the agent
 * uses; the embedded store implements it today, etcd and the Kubernetes API
 * will implement it later.
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
  apply(objects: Resource[]): ApplyResult[];
  delete(refs: ResourceRef[]): ApplyResult[];
  watch(fn: (ev: WatchEvent) => void): () => void;
}

export function refOf(r: Resource | ResourceRef): ResourceRef {
  if ('metadata' in r) return { kind: r.kind, namespace: r.metadata.namespace, name: r.metadata.name };
  return r;
}

export function refString(r: ResourceRef): string {
  return `${r.kind}/${r.namespace ? r.namespace + '/' : ''}${r.name}`;
}
