import { netlinkNative } from './native';

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

  /** Open a namespace by path, e.g. /run/netns/<name> or /proc/<pid>/ns/net. */
  static open(path: string): Netns {
    return new Netns(netlinkNative().nsOpen(path), path);
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
