/** The TypeScript constants agree with the C headers that define them. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as C from '../../src/datapath/constants';

const REPO = path.resolve(__dirname, '..', '..', '..');

function defines(): Map<string, number> {
  const out = new Map<string, number>();
  for (const f of ['bpf/include/maps.h']) {
    for (const m of fs.readFileSync(path.join(REPO, f), 'utf8').matchAll(/^#define\s+([A-Z0-9_]+)\s+(0x[0-9a-fA-F]+|\d+)\b/gm)) out.set(m[1], Number(m[2]));
  }
  return out;
}

describe('constants shared with the datapath', () => {
  it('match the #defines in bpf/include', () => {
    const d = defines();
    const pairs: [string, number][] = [
      ['MB_FAMILY_IPV4', C.FAMILY_IPV4],
      ['MB_FAMILY_IPV6', C.FAMILY_IPV6],
      ['MB_MAX_ENDPOINTS', C.MB_MAX_ENDPOINTS],
      ['MB_POLICY_MAX_ENTRIES', C.MB_POLICY_MAX_ENTRIES],
      ['ENDPOINT_F_HOST', C.ENDPOINT_F_HOST],
      ['IPCACHE_F_HAS_TUNNEL', C.IPCACHE_F_HAS_TUNNEL],
      ['POLICY_F_DENY', C.POLICY_F_DENY],
      ['EP_CFG_F_IPV4', C.EP_CFG_F_IPV4],
      ['EP_CFG_F_IPV6', C.EP_CFG_F_IPV6],
      ['EP_CFG_F_NO_POLICY', C.EP_CFG_F_NO_POLICY],
      ['EP_CFG_F_ADDR_POLICY', C.EP_CFG_F_ADDR_POLICY],
      ['METRIC_DIR_INGRESS', C.METRIC_DIR_INGRESS],
      ['METRIC_ENTRIES', C.METRIC_ENTRIES],
      ['METRIC_DIR_EGRESS', C.METRIC_DIR_EGRESS],
      ['EVENT_DROP', C.EVENT_DROP],
      ['EVENT_TRACE', C.EVENT_TRACE],
      ['EVENT_POLICY_VERDICT', C.EVENT_POLICY_VERDICT],
      ['LB_SVC_F_NODEPORT', C.LB_SVC_F_NODEPORT],
      ['LB_SVC_F_AFFINITY', C.LB_SVC_F_AFFINITY],
      ['LB_SVC_F_MAGLEV', C.LB_SVC_F_MAGLEV],
      ['LB_SVC_F_LOCAL', C.LB_SVC_F_LOCAL],
      ['LB_SVC_F_CLUSTERIP', C.LB_SVC_F_CLUSTERIP],
      ['LB_MAGLEV_M', C.LB_MAGLEV_M],
      ['LB_BACKEND_TERMINATING', C.LB_BACKEND_TERMINATING],
      ['CT_F_PROXY_REDIRECT', C.CT_F_PROXY_REDIRECT],
      ['CT_F_FROM_PROXY', C.CT_F_FROM_PROXY],
      ['MB_MARK_MASK', C.MB_MARK_MASK],
      ['MB_MARK_TO_PROXY', C.MB_MARK_TO_PROXY],
      ['MB_MARK_FROM_PROXY', C.MB_MARK_FROM_PROXY],
    ];
    for (const [name, v] of pairs) assert.equal(d.get(name), v, name);
    for (const [code, r] of Object.entries(C.DROP_REASONS)) assert.equal(d.get(`DROP_${r.name}`), Number(code), `DROP_${r.name}`);
    for (const [name, v] of d) if (name.startsWith('DROP_')) assert.ok(C.DROP_REASONS[v], `${name} (${v}) has a TS entry`);
  });
});
