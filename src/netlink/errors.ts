import * as os from 'node:os';
import * as util from 'node:util';
import { msgTypeName } from './constants';

/** glibc strerror() texts for the errnos netlink commonly returns (libuv's texts differ). */
const STRERROR: Record<string, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  ESRCH: 'No such process',
  EINTR: 'Interrupted system call',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  E2BIG: 'Argument list too long',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EFAULT: 'Bad address',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EINVAL: 'Invalid argument',
  ENFILE: 'Too many open files in system',
  EMFILE: 'Too many open files',
  ENOSPC: 'No space left on device',
  ERANGE: 'Numerical result out of range',
  ENOSYS: 'Function not implemented',
  ENOTEMPTY: 'Directory not empty',
  ENODATA: 'No data available',
  EPROTO: 'Protocol error',
  EOVERFLOW: 'Value too large for defined data type',
  EBADMSG: 'Bad message',
  EMSGSIZE: 'Message too long',
  EPROTONOSUPPORT: 'Protocol not supported',
  EOPNOTSUPP: 'Operation not supported',
  EAFNOSUPPORT: 'Address family not supported by protocol',
  EADDRINUSE: 'Address already in use',
  EADDRNOTAVAIL: 'Cannot assign requested address',
  ENETDOWN: 'Network is down',
  ENETUNREACH: 'Network is unreachable',
  ENOBUFS: 'No buffer space available',
  ETIMEDOUT: 'Connection timed out',
  EHOSTUNREACH: 'No route to host',
  EALREADY: 'Operation already in progress',
  ENOTSUP: 'Operation not supported',
};

export function errnoCode(errno: number): string {
  try {
    return util.getSystemErrorName(-Math.abs(errno));
  } catch {
    for (const [k, v] of Object.entries(os.constants.errno)) if (v === errno) return k;
    return 'EUNKNOWN';
  }
}

export function strerror(errno: number): string {
  const code = errnoCode(errno);
  if (STRERROR[code]) return STRERROR[code];
  const m = util.getSystemErrorMap().get(-Math.abs(errno));
  return m ? m[1] : `Unknown error ${errno}`;
}

/**
 * A kernel error answer to a netlink request, e.g.
 * `netlink RTM_NEWLINK (veth lxc1a2b peer eth0 in netns /run/netns/x): File exists (EEXIST, errno 17): <ext ack>`.
 */
export class NetlinkError extends Error {
  readonly errno: number;
  readonly code: string;
  /** Request message type name, e.g. "RTM_NEWLINK". */
  readonly op: string;
  /** Human description of the object the request was about. */
  readonly context: string;
  /** Kernel extended-ACK message, when provided. */
  readonly extAck?: string;
  readonly extAckOffset?: number;

  constructor(opts: { errno: number; op: number | string; context: string; extAck?: string; extAckOffset?: number }) {
    const op = typeof opts.op === 'number' ? msgTypeName(opts.op) : opts.op;
    const code = errnoCode(opts.errno);
    let msg = `netlink ${op}${opts.context ? ` (${opts.context})` : ''}: ${strerror(opts.errno)} (${code}, errno ${opts.errno})`;
    if (opts.extAck) msg += `: ${opts.extAck}`;
    super(msg);
    this.name = 'NetlinkError';
    this.errno = opts.errno;
    this.code = code;
    this.op = op;
    this.context = opts.context;
    this.extAck = opts.extAck;
    this.extAckOffset = opts.extAckOffset;
  }
}

/** Invalid argument detected before talking to the kernel; names the field and the value. */
export class NetlinkArgError extends TypeError {
  readonly field: string;
  constructor(field: string, value: unknown, why: string) {
    super(`${field}: ${JSON.stringify(value)} ${why}`);
    this.name = 'NetlinkArgError';
    this.field = field;
  }
}
