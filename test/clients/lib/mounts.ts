/** Mount and process helpers for the real-client tests (cleanup of what a runtime left under a temp dir). */
import * as fs from 'node:fs';
import { tryRun } from '../../helpers/sys';

function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points at or below dir, deepest first (so they can be unmounted in order). */
export function mountsUnder(dir: string): string[] {
  const root = dir.replace(/\/+$/, '');
  const out: string[] = [];
  let text = '';
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const mp = unescapeMountPath(f[4]);
    if (mp === root || mp.startsWith(root + '/')) out.push(mp);
  }
  return [...new Set(out)].sort((a, b) => b.length - a.length);
}

/** Unmount everything at or below dir (lazily if a plain umount fails). Returns what was still mounted. */
export function unmountUnder(dir: string): string[] {
  for (let round = 0; round < 5; round++) {
    const mps = mountsUnder(dir);
    if (mps.length === 0) return [];
    for (const mp of mps) {
      if (tryRun('umount', [mp], { timeoutMs: 10_000 }).code !== 0) tryRun('umount', ['-l', mp], { timeoutMs: 10_000 });
    }
  }
  return mountsUnder(dir);
}

/** Pids of processes whose command line contains needle (read from /proc; nothing is killed here). */
export function pidsWithCmdline(needle: string): number[] {
  const pids: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(needle)) pids.push(Number(e));
    } catch {
      /* exited */
    }
  }
  return pids;
}

/** Remove a temp dir after unmounting whatever a runtime left mounted in it. */
export function removeTree(dir: string): void {
  unmountUnder(dir);
  try {
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  } catch {
    tryRun('rm', ['-rf', '--one-file-system', dir]);
  }
}

/**
 * Remove the cgroup rel (e.g. "/mbtxx123456") and everything below it in every
 * hierarchy (v1 controllers and the v2 mount): rmdir only, deepest first, so a
 * cgroup that still holds a process is never touched. Returns what is left.
 */
export function removeCgroup(rel: string): string[] {
  const name = rel.replace(/^\/+/, '');
  if (!name || name.includes('..')) throw new Error(`bad cgroup name ${rel}`);
  const left: string[] = [];
  let hierarchies: string[] = [];
  try {
    hierarchies = fs.readdirSync('/sys/fs/cgroup').map((h) => `/sys/fs/cgroup/${h}`);
  } catch {
    return left;
  }
  for (const h of [...hierarchies, '/sys/fs/cgroup']) {
    const top = `${h}/${name}`;
    if (!fs.existsSync(top)) continue;
    const dirs: string[] = [];
    const walk = (d: string) => {
      dirs.push(d);
      try {
        for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(`${d}/${e.name}`);
      } catch {
        /* gone */
      }
    };
    walk(top);
    for (const d of dirs.reverse()) {
      try {
        fs.rmdirSync(d);
      } catch {
        left.push(d);
      }
    }
  }
  return left;
}
