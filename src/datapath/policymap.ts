/**
 * An endpoint's policy map (mb_policy, pinned per endpoint): encoding of the
 * computed policy entries and the desired-state table that reconciles them.
 * Counters (packets, bytes) belong to the kernel and never count as drift.
 */
import type { BpfMap } from '../bpf';
import type { PolicyEntry } from '../policy/mapstate';
import { POLICY_F_DENY } from './constants';
import * as gen from './maps.gen';
import { MapTable } from './reconciler';

export type PolicyKey = gen.PolicyKey;
export type PolicyValue = gen.PolicyValue;

export function policyKV(e: PolicyEntry): { key: PolicyKey; value: PolicyValue } {
  return {
    key: { prefixlen: e.prefixLen, sec_id: e.identity, egress: e.egress ? 1 : 0, protocol: e.protocol, dport: e.port },
    value: { packets: 0n, bytes: 0n, proxy_port: 0, flags: e.deny ? POLICY_F_DENY : 0, prefix_len: e.prefixLen },
  };
}

export function policyTable(name: string, map: BpfMap<PolicyKey, PolicyValue>): MapTable<PolicyKey, PolicyValue> {
  return new MapTable(
    name,
    map,
    (k) => `${k.prefixlen}/${k.sec_id}/${k.egress}/${k.protocol}/${k.dport}`,
    (a, b) => a.flags === b.flags && a.proxy_port === b.proxy_port && a.prefix_len === b.prefix_len,
  );
}
