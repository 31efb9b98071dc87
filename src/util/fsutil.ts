import * as fs from 'node:fs';
import * as path from 'node:path';

export interface AtomicWriteOptions {
  mode?: number;
  /**
   * fsync the file and its directory (default). Runtime state that describes
   * kernel objects (endpoints, their addresses) passes false: those objects do
   * not survive a reboot either, and the rename alone already leaves the old or
   * the new file whole when the process dies.
   */
  durable?: boolean;
}

/**
 * Write a file atomically: write a temporary file beside it, fsync, rename over
 * the target, fsync the directory. A crash leaves either the old or the new file.
 */
export function writeFileAtomic(file: string, data: string | Buffer, opts: AtomicWriteOptions | number = {}): void {
  const o = typeof opts === 'number' ? { mode: opts } : opts;
  const durable = o.durable ?? true;
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w', o.mode ?? 0o600);
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    if (durable) fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  if (!durable) return;
  const dfd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}

export function writeJsonAtomic(file: string, value: unknown, opts: AtomicWriteOptions | number = {}): void {
  writeFileAtomic(file, JSON.stringify(value, null, 2) + '\n', opts);
}

export function readJson<T>(file: string): T | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new Error(`state file ${file} is not valid JSON: ${(e as Error).message}`);
  }
}

export function mkdirp(dir: string, mode = 0o700): void {
  fs.mkdirSync(dir, { recursive: true, mode });
}

/**
 * A directory only its owner may enter: created 0700, or an existing one
 * tightened to 0700 (state must not be readable or writable by others).
 * Returns the mode it had when that was wider, else undefined.
 */
export function ensurePrivateDir(dir: string): number | undefined {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  const mode = st.mode & 0o7777;
  if (mode === 0o700) return undefined;
  fs.chmodSync(dir, 0o700);
  return mode;
}
