/**
 * Traffic control over rtnetlink: the clsact qdisc and direct-action cls_bpf
 * filters (the `tc qdisc add dev X clsact` / `tc filter add dev X ingress bpf
 * da fd N` of iproute2, encoded here).
 *
 * Why not only tcx links: attaching a tcx program waits for an RCU grace
 * period (~10 ms here) on every attach, which dominates pod start. A cls_bpf
 * filter is installed without one and is replaced atomically in place
 * (NLM_F_REPLACE on the same handle and priority), so endpoint veths use it;
 * long-lived node devices keep tcx links.
 */
import * as C from './constants';
import { NetlinkError } from './errors';
import { NlAttr, attr, payloadAttrs, wI32, wU32 } from './message';
import type { RtNetlink } from './rtnetlink';

const TCMSG_LEN = 20;
const TCA_KIND = 1;
const TCA_OPTIONS = 2;
const TCA_BPF_FD = 6;
const TCA_BPF_NAME = 7;
const TCA_BPF_FLAGS = 8;
const TCA_BPF_ID = 11;
const TCA_BPF_FLAG_ACT_DIRECT = 1;
const TC_H_CLSACT = 0xfffffff1;
const TC_H_MIN_INGRESS = 0xfff2;
const TC_H_MIN_EGRESS = 0xfff3;
const ETH_P_ALL = 0x0003;

export type TcDirection = 'ingress' | 'egress';

export interface TcBpfFilter {
  ifindex: number;
  direction: TcDirection;
  priority: number;
  handle: number;
  /** program id (TCA_BPF_ID) */
  progId: number;
  name?: string;
  directAction: boolean;
}

function tcmsg(ifindex: number, handle: number, parent: number, info: number): Buffer {
  const b = Buffer.alloc(TCMSG_LEN);
  b[0] = C.AF_UNSPEC;
  wI32(b, ifindex, 4);
  wU32(b, handle >>> 0, 8);
  wU32(b, parent >>> 0, 12);
  wU32(b, info >>> 0, 16);
  return b;
}

function parentOf(direction: TcDirection): number {
  return ((TC_H_CLSACT & 0xffff0000) | (direction === 'ingress' ? TC_H_MIN_INGRESS : TC_H_MIN_EGRESS)) >>> 0;
}

/** tcm_info of a filter: priority in the upper 16 bits, the protocol (network order) in the lower. */
function filterInfo(priority: number): number {
  const proto = ((ETH_P_ALL & 0xff) << 8) | (ETH_P_ALL >> 8); // htons on a little-endian host
  return ((priority << 16) | proto) >>> 0;
}

/** Add the clsact qdisc to a device (no-op if it has one). */
export function tcClsactEnsure(nl: RtNetlink, ifindex: number): void {
  try {
    nl.request(C.RTM_NEWQDISC, C.NLM_F_CREATE | C.NLM_F_EXCL | C.NLM_F_ACK, tcmsg(ifindex, 0xffff0000, TC_H_CLSACT, 0), [attr.str(TCA_KIND, 'clsact')], `add clsact qdisc to ifindex ${ifindex}`);
  } catch (e) {
    if (e instanceof NetlinkError && e.code === 'EEXIST') return;
    throw e;
  }
}

/**
 * Install (or atomically replace) the direct-action BPF filter with this
 * priority and handle on a device's clsact hook.
 */
export function tcBpfAttach(nl: RtNetlink, f: { ifindex: number; direction: TcDirection; progFd: number; name: string; priority?: number; handle?: number }): void {
  const prio = f.priority ?? 1;
  const handle = f.handle ?? 1;
  const opts: NlAttr[] = [attr.u32(TCA_BPF_FD, f.progFd), attr.str(TCA_BPF_NAME, f.name), attr.u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT)];
  nl.request(
    C.RTM_NEWTFILTER,
    C.NLM_F_CREATE | C.NLM_F_REPLACE | C.NLM_F_ACK,
    tcmsg(f.ifindex, handle, parentOf(f.direction), filterInfo(prio)),
    [attr.str(TCA_KIND, 'bpf'), attr.nest(TCA_OPTIONS, opts)],
    `attach bpf filter ${f.name} to ifindex ${f.ifindex} ${f.direction}`,
  );
}

/** The BPF filters on a device's clsact hook. */
export function tcBpfList(nl: RtNetlink, ifindex: number, direction: TcDirection): TcBpfFilter[] {
  let msgs;
  try {
    msgs = nl.request(C.RTM_GETTFILTER, C.NLM_F_DUMP, tcmsg(ifindex, 0, parentOf(direction), 0), [], `list filters on ifindex ${ifindex} ${direction}`);
  } catch (e) {
    // No clsact qdisc (or no device): no filters.
    if (e instanceof NetlinkError && (e.code === 'EINVAL' || e.code === 'ENOENT' || e.code === 'ENODEV')) return [];
    throw e;
  }
  const out: TcBpfFilter[] = [];
  for (const m of msgs) {
    if (m.type !== C.RTM_NEWTFILTER) continue;
    const handle = m.payload.readUInt32LE(8);
    const info = m.payload.readUInt32LE(16);
    const a = payloadAttrs(m, TCMSG_LEN);
    if (a.str(TCA_KIND) !== 'bpf' || handle === 0) continue;
    const o = a.nested(TCA_OPTIONS);
    out.push({
      ifindex,
      direction,
      priority: info >>> 16,
      handle,
      progId: o?.u32(TCA_BPF_ID) ?? 0,
      name: o?.str(TCA_BPF_NAME),
      directAction: ((o?.u32(TCA_BPF_FLAGS) ?? 0) & TCA_BPF_FLAG_ACT_DIRECT) !== 0,
    });
  }
  return out;
}

/** Remove the filter with this priority and handle (false if there was none). */
export function tcBpfDetach(nl: RtNetlink, f: { ifindex: number; direction: TcDirection; priority?: number; handle?: number }): boolean {
  try {
    nl.request(C.RTM_DELTFILTER, C.NLM_F_ACK, tcmsg(f.ifindex, f.handle ?? 1, parentOf(f.direction), filterInfo(f.priority ?? 1)), [attr.str(TCA_KIND, 'bpf')], `detach bpf filter from ifindex ${f.ifindex}`);
    return true;
  } catch (e) {
    if (e instanceof NetlinkError && (e.code === 'ENOENT' || e.code === 'EINVAL' || e.code === 'ENODEV')) return false;
    throw e;
  }
}
