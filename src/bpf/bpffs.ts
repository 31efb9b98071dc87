/**
 * bpffs helpers. Node has no statfs(2) magic numbers, so mounts are read from
 * /proc/self/mountinfo.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { wrap } from './errors';
import { native } from './native';

export const BPFFS_DEFAULT = '/sys/fs/bpf';

interface Mount {
  mountPoint: string;
  fsType: string;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

function mounts(): Mount[] {
  const out: Mount[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
    const parts = line.split(' ');
    const sep = parts.indexOf('-');
    if (sep < 0 || parts.length < 5) continue;
    out.push({ mountPoint: unescapeMount(parts[4]), fsType: parts[sep + 1] });
  }
  return out;
}

/** The filesystem type of the mount containing p (p need not exist). Last mount wins (stacking). */
function fsTypeOf(p: string, ms: Mount[]): string | undefined {
  const abs = path.resolve(p);
  let best: Mount | undefined;
  for (const m of ms) {
    const mp = m.mountPoint;
    if (abs === mp || abs.startsWith(mp === '/' ? '/' : mp + '/')) {
      if (!best || mp.length >= best.mountPoint.length) best = m;
    }
  }
  return best?.fsType;
}

/** true if p lies on a bpf filesystem. */
export function isOnBpffs(p: string): boolean {
  return fsTypeOf(p, mounts()) === 'bpf';
}

/**
 * Make sure root is a directory on bpffs: mount bpffs at /sys/fs/bpf if it is not
 * mounted there, then mkdir -p root. Throws if root still isn't on bpffs.
 */
export function ensureBpffs(root: string = BPFFS_DEFAULT): void {
  const abs = path.resolve(root);
  if (fsTypeOf(abs, mounts()) !== 'bpf' && fsTypeOf(BPFFS_DEFAULT, mounts()) !== 'bpf') {
    fs.mkdirSync(BPFFS_DEFAULT, { recursive: true });
    wrap({ op: 'mount bpffs', path: BPFFS_DEFAULT }, () => native().mountBpffs(BPFFS_DEFAULT));
  }
  if (fsTypeOf(abs, mounts()) !== 'bpf') {
    const err = new Error(`ensureBpffs: ${abs} is not on a bpf filesystem (mount bpffs there or use a directory under ${BPFFS_DEFAULT})`);
    Object.assign(err, { code: 'EINVAL', path: abs });
    throw err;
  }
  fs.mkdirSync(abs, { recursive: true });
}
