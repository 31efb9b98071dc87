/**
 * Loader for the native addon functions used by src/netlink (netns + raw
 * netlink sockets). Kept separate from src/bpf/native.ts on purpose: this
 * interface lists only the functions implemented in native/src/netns.c and
 * native/src/netlink.c (plus util's close).
 */
import * as path from 'node:path';

export interface NetlinkNative {
  /** open(path, O_RDONLY|O_CLOEXEC|O_NONBLOCK|O_NOCTTY); the error names the path. */
  nsOpen(path: string): number;
  /** fd of the calling thread's current netns (/proc/thread-self/ns/net). */
  nsCurrent(): number;
  /**
   * setns(fd, CLONE_NEWNET) on the calling (main JS) thread, call fn
   * synchronously, always switch back (rethrowing fn's exception). Only
   * synchronous work inside fn runs in the namespace; libuv threadpool work
   * (async fs, dns.lookup, ...) does not.
   */
  nsRun<T>(fd: number, fn: () => T): T;
  /** ioctl(NS_GET_NSTYPE): CLONE_NEW* of a namespace fd; throws (ENOTTY) for anything else. */
  nsType(fd: number): number;
  /** fstat() of a namespace fd: equal {dev, ino} means the same namespace. */
  nsIdentity(fd: number): { dev: number; ino: number };
  /** AF_NETLINK raw socket created inside netnsFd (-1 = current), bound, EXT_ACK + CAP_ACK on. */
  nlOpen(protocol: number, netnsFd: number): number;
  nlSend(fd: number, buf: Buffer): void;
  /** One datagram, or null when nothing arrived within timeoutMs (-1 = wait forever). */
  nlRecv(fd: number, timeoutMs: number): Buffer | null;
  /**
   * Send one request and read datagrams until the ACK/error or end of dump
   * with this sequence number, on a libuv worker thread; resolves with the
   * datagrams end to end. Nothing else may use the socket meanwhile.
   */
  nlExchangeAsync(fd: number, request: Buffer, seq: number, timeoutMs: number): Promise<Buffer>;
  close(fd: number): void;
}

let cached: NetlinkNative | undefined;

export function netlinkNative(): NetlinkNative {
  if (!cached) {
    // dist/src/netlink -> repo root
    const repoRoot = path.resolve(__dirname, '..', '..', '..');
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    cached = require(path.join(repoRoot, 'native/build/Release/membrane.node')) as NetlinkNative;
  }
  return cached;
}
