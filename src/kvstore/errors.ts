/**
 * Typed kvstore errors. Callers decide by class (never by message): an
 * unavailable store means "retry later, keep what you have"; a conflict means a
 * transaction's condition did not hold (someone else wrote first).
 */
import { BrokenCircuitError, IsolatedCircuitError, TaskCancelledError } from 'cockatiel';
import {
  ClientClosedError,
  EtcdLeaseInvalidError,
  EtcdWatchStreamEnded,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  isRecoverableError,
} from 'etcd3';

export class KvstoreError extends Error {
  constructor(
    message: string,
    /** The operation that failed: get, list, txn, put, delete, lease, watch. */
    readonly op: string,
    /** The key or prefix (without the cluster prefix) it concerned. */
    readonly key?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** etcd could not be reached (or did not answer in time). */
export class KvstoreUnavailableError extends KvstoreError {}

/** A transaction's comparison failed (after any retries the caller made). */
export class KvstoreConflictError extends KvstoreError {}

/** The agent's lease is gone (expired while etcd was unreachable, or revoked). */
export class KvstoreLeaseLostError extends KvstoreError {}

/** Is this error (thrown by the etcd client) a sign that etcd is unreachable? */
export function isUnavailable(e: unknown): boolean {
  return (
    e instanceof KvstoreUnavailableError ||
    e instanceof GRPCUnavailableError ||
    e instanceof GRPCDeadlineExceededError ||
    e instanceof GRPCCancelledError ||
    e instanceof BrokenCircuitError ||
    e instanceof IsolatedCircuitError ||
    e instanceof TaskCancelledError ||
    e instanceof EtcdWatchStreamEnded ||
    e instanceof ClientClosedError ||
    (e instanceof Error && isRecoverableError(e))
  );
}

/** Wrap an error from the etcd client into a typed one naming the operation and key. */
export function wrapEtcdError(e: unknown, op: string, key?: string): KvstoreError {
  if (e instanceof KvstoreError) return e;
  const what = `kvstore ${op}${key !== undefined ? ` ${key}` : ''}`;
  const detail = e instanceof Error ? e.message : String(e);
  if (e instanceof EtcdLeaseInvalidError) return new KvstoreLeaseLostError(`${what}: lease lost: ${detail}`, op, key, { cause: e });
  if (isUnavailable(e)) return new KvstoreUnavailableError(`${what}: etcd is unavailable: ${detail}`, op, key, { cause: e });
  return new KvstoreError(`${what}: ${detail}`, op, key, { cause: e });
}
