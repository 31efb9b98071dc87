/**
 * Shared helpers of the benchmarks: cleanup that runs even on failure or
 * Ctrl-C, bounded child processes, small statistics and table printing, and
 * the rows of the issues' tables (reportRow) that bench/run-all.sh gathers
 * into one summary. Benchmarks print figures and ratios; they never assert
 * timings.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';

// ---------------------------------------------------------------- cleanup

type CleanupFn = () => void | Promise<void>;
const cleanups: { label: string; fn: CleanupFn }[] = [];
const children = new Set<ChildProcess>();
let cleaning: Promise<void> | undefined;

/** Register an undo step; steps run in reverse order of registration. */
export function onCleanup(label: string, fn: CleanupFn): void {
  cleanups.push({ label, fn });
}

/** Kill the background processes this run started (by their pid), then run the undo steps. */
export function runCleanup(): Promise<void> {
  if (cleaning) return cleaning;
  cleaning = (async () => {
    for (const c of children) killChild(c);
    children.clear();
    while (cleanups.length) {
      const { label, fn } = cleanups.pop()!;
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`cleanup: ${label}: ${(e as Error).message}\n`);
      }
    }
  })();
  return cleaning;
}

function killChild(c: ChildProcess): void {
  if (c.exitCode === null && c.signalCode === null) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

/**
 * Run a benchmark's main function with cleanup on every exit path: normal end,
 * exception, SIGINT/SIGTERM/SIGHUP. Exit code is 0 unless the bench itself
 * failed (figures missing a target are not a failure).
 */
export function runBench(name: string, main: () => Promise<void>): void {
  benchName = name;
  let signalled = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) return;
    signalled = true;
    process.stderr.write(`\n${name}: ${sig}, cleaning up...\n`);
    runCleanup().finally(() => process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1)));
  };
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as NodeJS.Signals[]) process.on(s, onSignal);
  (async () => {
    try {
      await main();
    } finally {
      await runCleanup();
    }
    if (reported.length) {
      console.log('');
      console.log(`${name}: rows of the issues' tables (bench/run-all.sh gathers them into its summary)`);
      console.log(rowsTable(reported));
    }
  })().then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`${name}: FAILED: ${(e as Error)?.stack ?? e}\n`);
      process.exit(1);
    },
  );
}

// ---------------------------------------------------------------- processes

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

/** Run a command to completion, asynchronously, killed after timeoutMs. Times spawn() to exit. */
export function run(
  cmd: string,
  args: string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const c = spawn(cmd, args, { env: opts.env, stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(c);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    c.stdout!.setEncoding('utf8').on('data', (d) => (stdout += d));
    c.stderr!.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      killChild(c);
    }, opts.timeoutMs ?? 60_000);
    c.on('error', (e) => {
      stderr += String(e.message);
    });
    c.on('close', (code, signal) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      clearTimeout(timer);
      children.delete(c);
      resolve({ code: code ?? (signal ? -1 : 0), stdout, stderr, ms, timedOut });
    });
    c.stdin!.on('error', () => {});
    c.stdin!.end(opts.input ?? '');
  });
}

/** Start a long-running process (a server); killed by runCleanup() or stopBackground(). */
export function background(cmd: string, args: string[]): ChildProcess {
  const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(c);
  c.stderr!.setEncoding('utf8').on('data', () => {});
  c.on('close', () => children.delete(c));
  return c;
}

export async function stopBackground(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const done = new Promise<void>((r) => c.once('close', () => r()));
  killChild(c);
  await Promise.race([done, sleep(3000)]);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------- statistics

export function median(xs: number[]): number {
  return percentile(xs, 50);
}

/** Nearest-rank percentile (p in 0..100); NaN for no samples. */
export function percentile(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))];
}

export function fmt(x: number, digits = 1): string {
  if (!Number.isFinite(x)) return '-';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** "median [min-max]" of samples. */
export function spread(xs: number[], digits = 1): string {
  if (!xs.length) return '-';
  return `${fmt(median(xs), digits)} [${fmt(Math.min(...xs), digits)}-${fmt(Math.max(...xs), digits)}]`;
}

// ---------------------------------------------------------------- output

/** Print rows as an aligned text table (first row is the header). */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  const out = [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const r of rows.slice(1)) out.push(line(r));
  return out.join('\n');
}

export function hasArg(name: string): boolean {
  return process.argv.slice(2).includes(name);
}

export function argValue(name: string, def: number, min: number, max: number): number {
  const argv = process.argv.slice(2);
  const i = argv.indexOf(name);
  if (i < 0) return def;
  const v = Number(argv[i + 1]);
  if (!Number.isInteger(v) || v < min || v > max) throw new Error(`${name}: expected an integer between ${min} and ${max}, got ${JSON.stringify(argv[i + 1])}`);
  return v;
}

export function mustRoot(): void {
  if (process.getuid && process.getuid() !== 0) throw new Error('the benchmarks create network namespaces: run them as root');
}

// ---------------------------------------------------------------- issue rows

/**
 * What a row must reach: the figure itself, or the figure divided by the
 * reference measured in the same run ('ratio').
 */
export interface RowTarget {
  on: 'figure' | 'ratio';
  op: '<=' | '>=';
  value: number;
}

/** One row of an issue's table, as a bench measured it. */
export interface BenchRow {
  /** The row as the issue names it, e.g. "CNI ADD, plugin exec p50, sequential". */
  row: string;
  figure: number;
  /** 'ms', 'KiB', 's', 'events/s', '' for a plain ratio, ... */
  unit: string;
  /** The reference measured in the same run, when the row has one. */
  reference?: { what: string; value: number; unit?: string };
  /** Absent: the figure is shown, nothing is judged. */
  target?: RowTarget;
  note?: string;
  /** Filled in by reportRow. */
  bench?: string;
  meets?: boolean;
  time?: string;
}

/** The file rows are appended to (JSON lines); bench/run-all.sh sets it for the run. */
export const ROWS_FILE_ENV = 'MEMBRANE_BENCH_ROWS';

let benchName = '';
const reported: BenchRow[] = [];

/** The value a target is judged on (figure, or figure / reference). */
export function rowValue(r: BenchRow): number {
  if (r.target?.on === 'ratio') return r.reference && r.reference.value ? r.figure / r.reference.value : NaN;
  return r.figure;
}

export function rowMeets(r: BenchRow): boolean | undefined {
  if (!r.target) return undefined;
  const v = rowValue(r);
  if (!Number.isFinite(v)) return false;
  return r.target.op === '<=' ? v <= r.target.value : v >= r.target.value;
}

/**
 * Report one row of an issue's table: printed at the end of the bench and,
 * under bench/run-all.sh, appended to the run's rows file for its summary.
 * One call per row, e.g.
 *   reportRow({ row: 'ClusterIP / direct new connections, 1 service', figure: 0.98, unit: '',
 *               target: { on: 'figure', op: '>=', value: 0.97 } });
 */
export function reportRow(r: BenchRow): void {
  const row: BenchRow = { ...r, bench: r.bench ?? benchName, meets: rowMeets(r), time: new Date().toISOString() };
  reported.push(row);
  const file = process.env[ROWS_FILE_ENV];
  if (file) fs.appendFileSync(file, JSON.stringify(row) + '\n');
}

function withUnit(x: number, unit: string | undefined): string {
  if (!Number.isFinite(x)) return '-';
  const digits = Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : Math.abs(x) >= 1 ? 2 : 3;
  return `${fmt(x, digits)}${unit ? ' ' + unit : ''}`;
}

/** "<= 2x bridge + host-local", ">= 0.97", "<= 10 ms" */
export function targetText(r: BenchRow): string {
  if (!r.target) return '';
  if (r.target.on === 'ratio') return `${r.target.op} ${fmt(r.target.value, r.target.value % 1 ? 2 : 0)}x ${r.reference?.what ?? 'the reference'}`;
  return `${r.target.op} ${withUnit(r.target.value, r.unit)}`;
}

/** The rows as a table: row, figure, reference in the same run, target, meets/misses. */
export function rowsTable(rows: BenchRow[]): string {
  const out: string[][] = [['row', 'figure', 'reference (same run)', 'target', '']];
  for (const r of rows) {
    const ratio = r.target?.on === 'ratio' ? ` (${fmt(rowValue(r), 2)}x)` : '';
    const ref = r.reference ? `${r.reference.what}: ${withUnit(r.reference.value, r.reference.unit ?? r.unit)}` : '';
    const verdict = r.meets === undefined ? '' : r.meets ? 'meets' : 'MISSES';
    out.push([r.row, withUnit(r.figure, r.unit) + ratio, ref, targetText(r), verdict]);
  }
  return table(out);
}

/** One wrk run (one thread, keep-alive): requests/s, p50/p99 latency, non-2xx answers and socket errors. */
export interface Wrk {
  rps: number;
  p50us: number;
  p99us: number;
  non2xx: number;
  errors: number;
}

function us(v: string, unit: string): number {
  const n = Number(v);
  return unit === 'us' ? n : unit === 'ms' ? n * 1000 : unit === 's' ? n * 1e6 : n;
}

export async function wrk(ns: string, url: string, conns: number, seconds: number): Promise<Wrk> {
  const r = await run('ip', ['netns', 'exec', ns, 'wrk', '-t1', `-c${conns}`, `-d${seconds}s`, '--latency', url], { timeoutMs: (seconds + 30) * 1000 });
  const out = r.stdout + r.stderr;
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const p50 = /\s50%\s+([\d.]+)(us|ms|s)/.exec(out);
  const p99 = /\s99%\s+([\d.]+)(us|ms|s)/.exec(out);
  if (r.code !== 0 || !rps || !p50 || !p99) throw new Error(`wrk ${url} failed (exit ${r.code}):\n${out.slice(-1500)}`);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const errs = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: Number(rps[1]),
    p50us: us(p50[1], p50[2]),
    p99us: us(p99[1], p99[2]),
    non2xx,
    errors: errs ? errs.slice(1).reduce((s, x) => s + Number(x), 0) : 0,
  };
}
