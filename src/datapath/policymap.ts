/**
 * An endpoint's policy map: an LPM trie (layout in bpf/include/maps.h) that
 * the agent creates per endpoint, pins at <bpf-root>/endpoints/<id>/policy and
 * installs into mb_policy_maps[id]; the encoding of computed policy entries;
 * and the desired-state table that reconciles it. Counters (packets, bytes)
 * belong to the kernel and never count as drift.
 */
import { BPF_MAP_TYPE, BpfMap } from '../bpf';
import type { PolicyEntry } from '../policy/mapstate';
import { MB_POLICY_MAX_ENTRIES, POLICY_F_DENY } from './constants';
import * as gen from './maps.gen';
import { MapTable, TableState, prepareState } from './reconciler';

export type PolicyKey = gen.PolicyKey;
export type PolicyValue = gen.PolicyValue;

const BPF_F_NO_PREALLOC = 1;

export function policyKV(e: PolicyEntry): { key: PolicyKey; value: PolicyValue } {
  return {
    key: { prefixlen: e.prefixLen, sec_id: e.identity, egress: e.egress ? 1 : 0, protocol: e.protocol, dport: e.port },
    value: { packets: 0n, bytes: 0n, proxy_port: e.proxyPort ?? 0, flags: e.deny ? POLICY_F_DENY : 0, prefix_len: e.prefixLen },
  };
}

/**
 * A new, empty policy map for endpoint `id` (exactly the shape mb_policy_maps'
 * inner template has). Named "mbp<agent tag>_<id>" (15 bytes at most), so an
 * agent's maps can be told apart in the kernel's list.
 */
export function createPolicyMap(id: number, agentTag = ''): BpfMap<PolicyKey, PolicyValue> {
  return BpfMap.create({
    type: BPF_MAP_TYPE.LPM_TRIE,
    name: policyMapName(id, agentTag),
    keySize: gen.policyKeyCodec.size,
    valueSize: gen.policyValueCodec.size,
    maxEntries: MB_POLICY_MAX_ENTRIES,
    flags: BPF_F_NO_PREALLOC,
  }).withCodecs(gen.policyKeyCodec, gen.policyValueCodec);
}

export function policyMapName(id: number, agentTag = ''): string {
  return `mbp${agentTag.slice(0, 6)}_${id}`;
}

/** One set of options for every policy table (not a pair of closures per endpoint). */
const POLICY_TABLE_OPTS = {
  keyId: (k: PolicyKey) => `${k.prefixlen}/${k.sec_id}/${k.egress}/${k.protocol}/${k.dport}`,
  same: (a: PolicyValue, b: PolicyValue) => a.flags === b.flags && a.proxy_port === b.proxy_port && a.prefix_len === b.prefix_len,
};

export function policyTable(name: string, map: BpfMap<PolicyKey, PolicyValue>): MapTable<PolicyKey, PolicyValue> {
  return new MapTable(name, map, POLICY_TABLE_OPTS);
}

/**
 * A policy map's desired state, encoded once: every endpoint whose policy is
 * this computation adopts it (MapTable.adoptState) instead of keeping a copy.
 */
export function policyState(entries: Iterable<PolicyEntry>): TableState {
  const kv = function* () {
    for (const e of entries) yield policyKV(e);
  };
  return prepareState(gen.policyKeyCodec, gen.policyValueCodec, kv());
}
