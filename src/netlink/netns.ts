import * as fs from 'node:fs';
import { netlinkNative } from './native';

const CLONE_NEWNET = 0x40000000;
const NS_TYPE_NAMES: Record<number, string> = {
  0x00020000: 'a mount namespace',
  0x02000000: 'a cgroup namespace',
  0x04000000: 'a UTS namespace',
  0x08000000: 'an IPC namespace',
  0x10000000: 'a user namespace',
  0x20000000: 'a PID namespace',
  0x00000080: 'a time namespace',
};

/** A path given as a network namespace that is not one (missing, a file, another kind of namespace, ...). */
export class NetnsError extends Error {
  constructor(
    readonly path: string,
    readonly reason: 'missing' | 'inaccessible' | 'not-a-namespace' | 'other-namespace',
    detail: string,
    /** The errno name behind it (ENOENT, EACCES, ENOTTY, EINVAL). */
    readonly code: string,
  ) {
    super(`${JSON.stringify(path)} ${detail}`);
    this.name = 'NetnsError';
  }
}

function describeFile(p: string): string {
  try {
    const st = fs.statSync(p);
    if (st.isDirectory()) return 'a directory';
    if (st.isFIFO()) return 'a FIFO';
    if (st.isSocket()) return 'a socket';
    if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
    return 'a regular file';
  } catch {
    return 'not a namespace file';
  }
}

/**
 * A handle on a network namespace (an open nsfs fd).
 *
 * run(fn) switches the main JS thread into the namespace for the duration of
 * a synchronous callback. Only synchronous work inside fn (e.g.
 * fs.writeFileSync on /proc/sys/net/..., creating sockets, native calls)
 * happens in the namespace: libuv threadpool work and anything after an
 * await runs in the agent's own namespace. Never pass an async function.
 */
export class Netns {
  private _fd: number;
  readonly path: string;

  private constructor(fd: number, path: string) {
    this._fd = fd;
    this.path = path;
  }

  /**
   * Open a network namespace by path, e.g. /run/netns/<name> or
   * /proc/<pid>/ns/net. Throws NetnsError when the path is missing or is not a
   * network namespace (a regular file, a directory, a mount namespace, ...).
   */
  static open(path: string): Netns {
    const nat = netlinkNative();
    let fd: number;
    try {
      fd = nat.nsOpen(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new NetnsError(path, 'missing', 'does not exist', 'ENOENT');
      throw new NetnsError(path, 'inaccessible', `cannot be opened: ${(e as Error).message}`, code ?? 'EIO');
    }
    let type: number;
    try {
      type = nat.nsType(fd);
    } catch {
      nat.close(fd);
      throw new NetnsError(path, 'not-a-namespace', `is not a network namespace (it is ${describeFile(path)})`, 'ENOTTY');
    }
    if (type !== CLONE_NEWNET) {
      nat.close(fd);
      throw new NetnsError(path, 'other-namespace', `is not a network namespace (it is ${NS_TYPE_NAMES[type] ?? `a namespace of type 0x${type.toString(16)}`})`, 'EINVAL');
    }
    return new Netns(fd, path);
  }

  /** The calling thread's current namespace. */
  static current(): Netns {
    return new Netns(netlinkNative().nsCurrent(), '/proc/thread-self/ns/net');
  }

  get fd(): number {
    if (this._fd < 0) throw new Error(`netns ${this.path}: handle is closed`);
    return this._fd;
  }

  get closed(): boolean {
    return this._fd < 0;
  }

  run<T>(fn: () => T): T {
    return netlinkNative().nsRun(this.fd, () => {
      const r = fn();
      if (r && typeof (r as { then?: unknown }).then === 'function') {
        throw new Error(`netns ${this.path}: run() callback returned a Promise; only synchronous work runs in the namespace`);
      }
      return r;
    });
  }

  identity(): { dev: number; ino: number } {
    return netlinkNative().nsIdentity(this.fd);
  }

  /** Same namespace (by nsfs dev/inode)? */
  equals(other: Netns): boolean {
    const a = this.identity();
    const b = other.identity();
    return a.dev === b.dev && a.ino === b.ino;
  }

  close(): void {
    if (this._fd >= 0) {
      const fd = this._fd;
      this._fd = -1;
      netlinkNative().close(fd);
    }
  }
}
