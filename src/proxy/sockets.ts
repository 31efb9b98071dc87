/**
 * The native addon's socket helpers (native/src/sock.c): sockets with options
 * Node's net module cannot set. Each returns a non-blocking fd owned by the
 * caller, to be adopted by Node (server.listen({fd}), new net.Socket({fd})).
 */
import * as path from 'node:path';

export interface SocketNative {
  /** A listening TCP socket on address:port (IP_TRANSPARENT when transparent; SO_MARK mark, which accepted sockets inherit). */
  sockListen(address: string, port: number, backlog: number, transparent: boolean, mark?: number): number;
  /** An unconnected TCP socket bound to address:port (0: chosen at connect), SO_MARK mark (0: none), IP_TRANSPARENT when transparent. */
  sockBound(address: string, port: number, mark: number, transparent: boolean): number;
  /** A bound, blocking UDP socket (SO_REUSEADDR, SO_MARK mark when non-zero, IP_TRANSPARENT when transparent, IP_RECVORIGDSTADDR). */
  udpSocket(address: string, port: number, mark: number, transparent: boolean): number;
  /**
   * Datagrams (up to buf.length / UDP_SLOT_BYTES, at most 64), waiting on a worker thread for the first; received into buf
   * (kept by the caller for its socket, untouched until this settles) and copied out. dstIp/dstPort: the original
   * destination. [] once shut down.
   */
  udpRecvAsync(fd: number, buf: Buffer): Promise<{ data: Buffer; srcIp: string; srcPort: number; dstIp?: string; dstPort?: number }[]>;
  /** sendto (non-blocking); bytes sent. */
  udpSendTo(fd: number, data: Buffer, address: string, port: number): number;
  /** shutdown(SHUT_RDWR): wakes a udpRecvAsync waiting on the socket. */
  sockShutdown(fd: number): void;
  /** SO_MARK of a socket. */
  sockMark(fd: number): number;
}

/** Bytes per datagram slot of udpRecvAsync's buffer (native/src/sock.c UDP_DGRAM_MAX). */
export const UDP_SLOT_BYTES = 8192;

let cached: SocketNative | undefined;

export function sockets(): SocketNative {
  if (!cached) {
    // dist/src/proxy -> repo root
    const repoRoot = path.resolve(__dirname, '..', '..', '..');
    cached = require(process.env.MEMBRANE_NATIVE ?? path.join(repoRoot, 'native/build/Release/membrane.node')) as SocketNative;
  }
  return cached;
}
