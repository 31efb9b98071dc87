/**
 * Constants shared with the C datapath. The C headers (bpf/include/*.h) are the
 * definition; test/unit/constants.test.ts parses them and checks these values.
 */
export const FAMILY_IPV4 = 4;
export const FAMILY_IPV6 = 6;
export const MB_MAX_ENDPOINTS = 4096;
export const MB_POLICY_MAX_ENTRIES = 16384;

export const ENDPOINT_F_HOST = 1;
export const IPCACHE_F_HAS_TUNNEL = 1;
export const POLICY_F_DENY = 1;

export const EP_CFG_F_IPV4 = 1;
export const EP_CFG_F_IPV6 = 2;
export const EP_CFG_F_NO_POLICY = 4;
export const EP_CFG_F_ADDR_POLICY = 8;

export const METRIC_DIR_INGRESS = 1;
export const METRIC_DIR_EGRESS = 2;
export const METRIC_DIR_SERVICE = 3;
export const METRIC_ENTRIES = 1024;

export const EVENT_DROP = 1;
export const EVENT_DEBUG = 2;
export const EVENT_TRACE = 4;
export const EVENT_POLICY_VERDICT = 5;

/** Drop reasons: the C name (without DROP_), its code and the text users know. */
export const DROP_REASONS: Record<number, { name: string; text: string }> = {
  130: { name: 'INVALID_SMAC', text: 'Invalid source mac' },
  132: { name: 'INVALID_SIP', text: 'Invalid source ip' },
  133: { name: 'POLICY', text: 'Policy denied' },
  134: { name: 'INVALID', text: 'Invalid packet' },
  135: { name: 'CT_INVALID_HDR', text: 'CT: Invalid header' },
  137: { name: 'CT_UNKNOWN_PROTO', text: 'CT: Unknown L4 protocol' },
  139: { name: 'UNKNOWN_L3', text: 'Unknown L3 target address' },
  140: { name: 'MISSED_TAIL_CALL', text: 'Missed tail call' },
  141: { name: 'WRITE_ERROR', text: 'Error writing to packet' },
  142: { name: 'UNKNOWN_L4', text: 'Unknown L4 protocol' },
  151: { name: 'UNROUTABLE', text: 'Unroutable' },
  153: { name: 'CSUM_L3', text: 'Invalid IPv4 header checksum' },
  154: { name: 'CSUM_L4', text: 'Invalid L4 checksum' },
  155: { name: 'CT_CREATE_FAILED', text: 'Failed to create a connection tracking entry' },
  157: { name: 'FRAG_NOSUPPORT', text: 'Fragmentation needed' },
  158: { name: 'NO_SERVICE', text: 'Service backend not found' },
  166: { name: 'UNSUPPORTED_L2', text: 'Unsupported L2 protocol' },
  160: { name: 'NO_TUNNEL_ENDPOINT', text: 'No tunnel endpoint' },
  169: { name: 'NO_FIB', text: 'No FIB entry' },
  171: { name: 'INVALID_IDENTITY', text: 'Invalid identity' },
  172: { name: 'UNKNOWN_SENDER', text: 'Unknown sender' },
  178: { name: 'PROXY_LOOKUP_FAILED', text: 'Proxy lookup failed' },
  179: { name: 'PROXY_SET_FAILED', text: 'Proxy assignment failed' },
  181: { name: 'POLICY_DENY', text: 'Policy denied by denylist' },
  190: { name: 'NO_TUNNEL_KEY', text: 'Missing tunnel metadata' },
  191: { name: 'NAT_NO_PORT', text: 'No free NAT port' },
  196: { name: 'TTL_EXCEEDED', text: 'TTL exceeded' },
  203: { name: 'EP_NOT_READY', text: 'Endpoint not ready' },
};

export function dropReasonText(code: number): string {
  return code === 0 ? 'Forwarded' : DROP_REASONS[code]?.text ?? `Unknown reason ${code}`;
}

export function metricDirName(dir: number): string {
  return dir === METRIC_DIR_INGRESS ? 'ingress' : dir === METRIC_DIR_EGRESS ? 'egress' : dir === METRIC_DIR_SERVICE ? 'service' : `dir-${dir}`;
}

export const LB_SVC_F_NODEPORT = 1;
export const LB_SVC_F_AFFINITY = 2;
export const LB_SVC_F_MAGLEV = 4;
export const LB_SVC_F_LOCAL = 8;
export const LB_SVC_F_CLUSTERIP = 16;
export const LB_MAGLEV_M = 1021;
export const LB_BACKEND_TERMINATING = 1;

export const CT_EGRESS = 0;
export const CT_INGRESS = 1;
export const CT_RELATED = 2;
export const CT_SERVICE = 4;
export const CT_F_RX_CLOSING = 1;
export const CT_F_TX_CLOSING = 2;
export const CT_F_SEEN_NON_SYN = 4;
export const CT_F_PROXY_REDIRECT = 8;
export const CT_F_FROM_PROXY = 16;

/** Packet marks of the L7 proxy path (bpf/lib/proxy.h). */
export const MB_MARK_MASK = 0x0f00;
export const MB_MARK_TO_PROXY = 0x0200;
export const MB_MARK_FROM_PROXY = 0x0a00;
