/**
 * BPF links. tcx (kernel >= 6.6) attaches a tc program to a device's ingress or
 * egress through a link: the attachment lives as long as the link fd or its pin.
 */
import * as path from 'node:path';
import { bpfUsageError, wrap } from './errors';
import { LinkInfo, native } from './native';
import { BpfProgram } from './prog';

export const BPF_LINK_TYPE_TCX = 11;
export const BPF_TCX_INGRESS = 46;
export const BPF_TCX_EGRESS = 47;

export type TcxDirection = 'ingress' | 'egress';

export class BpfLink {
  private closed = false;

  /** Takes ownership of fd. */
  constructor(
    private readonly fdValue: number,
    readonly name: string,
  ) {}

  static fromPin(pinPath: string, name?: string): BpfLink {
    const nm = name ?? path.basename(pinPath);
    const fd = wrap({ op: 'open pinned link', path: pinPath }, () => native().objGet(pinPath));
    return new BpfLink(fd, nm);
  }

  get fd(): number {
    if (this.closed) throw bpfUsageError({ op: 'use link', path: this.name }, 'link fd is closed', 'EBADF', 9);
    return this.fdValue;
  }

  info(): LinkInfo {
    return wrap({ op: 'link info', path: this.name }, () => native().linkInfo(this.fd));
  }

  /** Pin so the attachment outlives this process. */
  pin(pinPath: string): void {
    wrap({ op: 'pin link', path: pinPath }, () => native().objPin(this.fd, pinPath));
  }

  /** BPF_LINK_UPDATE: swap in another program without a gap (the attachment stays). */
  update(prog: BpfProgram | number): void {
    const pfd = typeof prog === 'number' ? prog : prog.fd;
    wrap({ op: 'update link', path: this.name, program: typeof prog === 'number' ? `fd ${prog}` : prog.name }, () => native().linkUpdate(this.fd, pfd));
  }

  /** BPF_LINK_DETACH: detach now, even if pinned (the pin then refers to a defunct link). */
  detach(): void {
    wrap({ op: 'detach link', path: this.name }, () => native().linkDetach(this.fd));
  }

  /** Close the fd; the attachment stays if the link is pinned. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    native().close(this.fdValue);
  }
}

export const CGROUP_ATTACH = {
  connect4: 10, // BPF_CGROUP_INET4_CONNECT
  sendmsg4: 14, // BPF_CGROUP_UDP4_SENDMSG
  recvmsg4: 19, // BPF_CGROUP_UDP4_RECVMSG
  getpeername4: 29, // BPF_CGROUP_INET4_GETPEERNAME
} as const;

/** Attach a cgroup program to a cgroup v2 directory through a link. */
export function attachCgroup(prog: BpfProgram, cgroupPath: string, hook: keyof typeof CGROUP_ATTACH): BpfLink {
  const fd = wrap({ op: `attach cgroup ${hook} on ${cgroupPath}`, program: prog.name }, () => native().linkCreateCgroup(prog.fd, cgroupPath, CGROUP_ATTACH[hook]));
  return new BpfLink(fd, `${prog.name}@${cgroupPath}/${hook}`);
}

/** Attach prog at ifindex's tcx ingress/egress (appended after existing tcx programs). */
export function attachTcx(prog: BpfProgram | number, ifindex: number, direction: TcxDirection): BpfLink {
  const fd = typeof prog === 'number' ? prog : prog.fd;
  const pname = typeof prog === 'number' ? `fd ${prog}` : prog.name;
  const lfd = wrap({ op: `attach tcx ${direction} on ifindex ${ifindex}`, program: pname }, () => native().linkCreateTcx(fd, ifindex, direction));
  return new BpfLink(lfd, `${pname}@${ifindex}/${direction}`);
}
