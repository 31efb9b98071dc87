/**
 * Errors from the BPF layer. Native failures carry {errno, code, syscall}; the
 * TS layer wraps them in a BpfError that also says which map/program/path and
 * which high-level operation failed, e.g.
 *   "update on map mb_ipcache: bpf(BPF_MAP_UPDATE_ELEM) map 'mb_ipcache' (fd 12): Argument list too long (E2BIG, errno 7)"
 */
export interface BpfErrorContext {
  /** high-level operation: 'lookup', 'update', 'load', 'attach tcx ingress', ... */
  op: string;
  map?: string;
  program?: string;
  path?: string;
  object?: string;
}

export class BpfError extends Error {
  /** positive errno, if the failure came from a syscall */
  readonly errno?: number;
  /** 'ENOENT', 'EPERM', ... */
  readonly code?: string;
  /** the failing native call, e.g. 'bpf(BPF_MAP_UPDATE_ELEM)' */
  readonly syscall?: string;
  readonly op: string;
  readonly map?: string;
  readonly program?: string;
  readonly path?: string;
  readonly object?: string;
  /** verifier/libbpf log tail on load failures */
  readonly log?: string;

  constructor(message: string, ctx: BpfErrorContext, native?: NativeErrorLike) {
    super(message);
    this.name = 'BpfError';
    this.op = ctx.op;
    this.map = ctx.map;
    this.program = ctx.program ?? native?.program;
    this.path = ctx.path ?? native?.path;
    this.object = ctx.object;
    if (native) {
      this.errno = native.errno;
      this.code = native.code;
      this.syscall = native.syscall;
      this.log = native.log;
      (this as { cause?: unknown }).cause = native;
    }
  }
}

interface NativeErrorLike extends Error {
  errno?: number;
  code?: string;
  syscall?: string;
  program?: string;
  path?: string;
  log?: string;
}

function describe(ctx: BpfErrorContext): string {
  if (ctx.map) return `${ctx.op} on map ${ctx.map}`;
  if (ctx.program) return `${ctx.op} on program ${ctx.program}`;
  if (ctx.object) return `${ctx.op} of ${ctx.object}`;
  if (ctx.path) return `${ctx.op} ${ctx.path}`;
  return ctx.op;
}

/** Wrap any thrown value into a BpfError naming the operation and object. */
export function toBpfError(e: unknown, ctx: BpfErrorContext): BpfError {
  if (e instanceof BpfError) return e;
  const ne = e as NativeErrorLike;
  const msg = ne && typeof ne.message === 'string' ? ne.message : String(e);
  return new BpfError(`${describe(ctx)}: ${msg}`, ctx, ne instanceof Error ? ne : undefined);
}

/** Run fn, rethrowing failures as BpfError with ctx. */
export function wrap<T>(ctx: BpfErrorContext, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw toBpfError(e, ctx);
  }
}

/** A BpfError without an underlying errno (bad arguments, size mismatches, use after close). */
export function bpfUsageError(ctx: BpfErrorContext, detail: string, code = 'EINVAL', errno = 22): BpfError {
  const err = new BpfError(`${describe(ctx)}: ${detail}`, ctx);
  Object.assign(err, { code, errno });
  return err;
}

export function isNotFound(e: unknown): boolean {
  return (e as { code?: string } | null)?.code === 'ENOENT';
}
