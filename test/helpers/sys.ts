/** Shell helpers for tests only (production code never execs ip/tc/bpftool). */
import { execFileSync, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as path from 'node:path';

export const REPO = path.resolve(__dirname, '..', '..', '..');

export function sh(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input: opts.input, env: opts.env, stdio: ['pipe', 'pipe', 'pipe'] });
}

export function tryRun(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input: opts.input, env: opts.env, timeout: opts.timeoutMs ?? 30_000 });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** A unique prefix for everything one test run creates. */
export function runPrefix(tag: string): string {
  return `mbt${tag}${crypto.randomBytes(3).toString('hex')}`;
}

export function netnsAdd(name: string): string {
  sh('ip', ['netns', 'add', name]);
  sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return `/run/netns/${name}`;
}

export function netnsDel(name: string): void {
  tryRun('ip', ['netns', 'del', name]);
}

export function inNs(ns: string, cmd: string, args: string[], timeoutMs = 10_000) {
  return tryRun('ip', ['netns', 'exec', ns, cmd, ...args], { timeoutMs });
}

export function ping(ns: string, ip: string, opts: { count?: number; source?: string } = {}): boolean {
  const args = ['-c', String(opts.count ?? 2), '-i', '0.2', '-W', '1', ...(opts.source ? ['-I', opts.source] : []), ip];
  return inNs(ns, 'ping', args).code === 0;
}

export const NETKIT = path.join(REPO, 'dist/test/helpers/netkit.js');

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
