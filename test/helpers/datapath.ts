/**
 * Shared scaffolding of the datapath tests (BPF_PROG_TEST_RUN): where the
 * compiled objects are, a per-run pin root, verdict codes, and the datapath's
 * constants under the names the tests use — taken from src/datapath/constants.ts,
 * which test/unit/constants.test.ts checks against the C headers.
 */
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import * as C from '../../src/datapath/constants';

export const ROOT = path.resolve(__dirname, '..', '..', '..');
export const LXC_OBJ = path.join(ROOT, 'bpf/bpf_lxc.o');
export const HOST_OBJ = path.join(ROOT, 'bpf/bpf_host.o');
export const SOCK_OBJ = path.join(ROOT, 'bpf/bpf_sock.o');

/** A bpffs directory unique to this run, e.g. /sys/fs/bpf/mbtest-dp-1a2b3c4d. */
export function testPinRoot(tag: string): string {
  return `/sys/fs/bpf/mbtest-${tag}-${crypto.randomBytes(4).toString('hex')}`;
}

export const TC_ACT_OK = 0;
export const TC_ACT_SHOT = 2;
export const TC_ACT_REDIRECT = 7;

export const FORWARDED = 0;
export const DIR_INGRESS = C.METRIC_DIR_INGRESS;
export const DIR_EGRESS = C.METRIC_DIR_EGRESS;

const drop = (name: string): number => {
  const e = Object.entries(C.DROP_REASONS).find(([, r]) => r.name === name);
  if (!e) throw new Error(`no drop reason ${name}`);
  return Number(e[0]);
};
export const DROP_INVALID_SMAC = drop('INVALID_SMAC');
export const DROP_INVALID_SIP = drop('INVALID_SIP');
export const DROP_POLICY = drop('POLICY');
export const DROP_INVALID = drop('INVALID');
export const DROP_UNKNOWN_L3 = drop('UNKNOWN_L3');
export const DROP_MISSED_TAIL_CALL = drop('MISSED_TAIL_CALL');
export const DROP_UNROUTABLE = drop('UNROUTABLE');
export const DROP_FRAG_NOSUPPORT = drop('FRAG_NOSUPPORT');
export const DROP_NO_SERVICE = drop('NO_SERVICE');
export const DROP_POLICY_DENY = drop('POLICY_DENY');
export const DROP_TTL_EXCEEDED = drop('TTL_EXCEEDED');

export const { EP_CFG_F_IPV4, EP_CFG_F_NO_POLICY, ENDPOINT_F_HOST, POLICY_F_DENY } = C;
export const { CT_EGRESS, CT_INGRESS, CT_SERVICE, CT_F_RX_CLOSING, CT_F_TX_CLOSING, CT_F_SEEN_NON_SYN } = C;
export const { EVENT_DROP, EVENT_TRACE, EVENT_POLICY_VERDICT } = C;
export const { LB_SVC_F_NODEPORT, LB_SVC_F_AFFINITY, LB_SVC_F_MAGLEV, LB_SVC_F_CLUSTERIP, LB_MAGLEV_M, LB_BACKEND_TERMINATING } = C;
export const LB_BACKEND_ACTIVE = 0;

export const ID_HOST = 1;
export const ID_WORLD = 2;
