/**
 * Stop the L7 proxy that serves a directory (for `membrane-agent --cleanup`):
 * the pid from its pid file, only if that process still runs membrane-proxy on
 * this directory; SIGTERM, then SIGKILL after a grace period.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readJson } from '../util/fsutil';

export async function stopProxy(dir: string, graceMs = 3000): Promise<number | undefined> {
  let pid: number | undefined;
  try {
    pid = readJson<{ pid?: number }>(path.join(dir, 'proxy.pid'))?.pid;
  } catch {
    return undefined;
  }
  if (typeof pid !== 'number' || pid <= 0) return undefined;
  const alive = () => {
    try {
      const args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      return args.some((a) => a.endsWith('membrane-proxy')) && args.includes(dir);
    } catch {
      return false;
    }
  };
  if (!alive()) return undefined;
  process.kill(pid, 'SIGTERM');
  for (const end = Date.now() + graceMs; Date.now() < end && alive(); ) await new Promise((r) => setTimeout(r, 50));
  if (alive()) process.kill(pid, 'SIGKILL');
  for (const end = Date.now() + graceMs; Date.now() < end && alive(); ) await new Promise((r) => setTimeout(r, 50));
  return pid;
}
