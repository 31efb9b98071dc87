/**
 * Kernel maps decoded for display (`membrane bpf ...`, GET /v1/map/NAME):
 * what the kernel holds now, read directly, never the desired state.
 */
import type { IdentityAllocator } from '../identity/identity';
import { formatIp, formatMac, ipFromBytes } from '../util/ip';
import { dropReasonText, metricDirName } from './constants';
import type { Datapath } from './datapath';

const PROTO: Record<number, string> = { 0: 'ANY', 1: 'ICMP', 6: 'TCP', 17: 'UDP', 58: 'ICMPv6', 132: 'SCTP' };
const addr = (family: number, b: Buffer) => formatIp(ipFromBytes(family === 6 ? 6 : 4, b));

export const MAP_NAMES = [
  'mb_endpoints',
  'mb_ipcache',
  'mb_metrics',
  'mb_ct',
  'mb_node',
  'mb_ep_config',
  'mb_lxc',
  'mb_lb_services',
  'mb_lb_backends',
  'mb_lb_revnat',
  'mb_lb_affinity',
];

/** Read a map from the kernel and decode it for display. */
export function dumpMap(dp: Datapath, name: string): { name: string; entries: unknown[] } | undefined {
  const m = dp.maps;
  switch (name) {
    case 'mb_endpoints':
      return {
        name,
        entries: [...m.endpoints.entries()].map(([k, v]) => ({
          address: addr(k.family, k.addr),
          endpointId: v.ep_id,
          flags: v.flags & 1 ? ['host'] : [],
          identity: v.sec_id,
          ifindex: v.ifindex,
          mac: formatMac(v.mac),
          nodeMac: formatMac(v.node_mac),
        })),
      };
    case 'mb_ipcache':
      return {
        name,
        entries: [...m.ipcache.entries()].map(([k, v]) => ({
          prefix: `${addr(k.family, k.addr)}/${k.prefixlen - 32}`,
          identity: v.sec_id,
          tunnelEndpoint: v.flags & 1 ? addr(v.tunnel_family, v.tunnel_addr) : undefined,
        })),
      };
    case 'mb_metrics':
      return {
        name,
        entries: [...m.metrics.entriesPerCpu()].filter(([, vs]) => vs.some((v) => v.count || v.bytes)).map(([k, vs]) => ({
          reason: k.reason,
          description: dropReasonText(k.reason),
          direction: metricDirName(k.dir),
          packets: vs.reduce((s, v) => s + Number(v.count), 0),
          bytes: vs.reduce((s, v) => s + Number(v.bytes), 0),
        })),
      };
    case 'mb_ct':
      return {
        name,
        entries: [...m.ct.entries()].map(([k, v]) => ({
          family: k.family,
          source: `${addr(k.family, k.saddr)}:${k.sport}`,
          destination: `${addr(k.family, k.daddr)}:${k.dport}`,
          nexthdr: k.nexthdr,
          flags: k.flags,
          lifetime: v.lifetime,
          txPackets: Number(v.tx_packets),
          rxPackets: Number(v.rx_packets),
          srcIdentity: v.src_sec_id,
          service: (k.flags & 4) !== 0,
          backendId: (k.flags & 4) !== 0 ? v.backend_id : undefined,
          revNatIndex: v.rev_nat_index || undefined,
        })),
      };
    case 'mb_ep_config':
      return {
        name,
        entries: [...dp.epConfig.kernelEntries()].map(({ key, value: v }) => ({
          endpointId: key,
          identity: v.sec_id,
          ifindex: v.ifindex,
          flags: v.flags,
          ipv4: formatIp(ipFromBytes(4, v.ipv4)),
          mac: formatMac(v.mac),
          nodeMac: formatMac(v.node_mac),
        })),
      };
    case 'mb_lxc':
      return { name, entries: [...dp.lxc.kernelEntries()].map(({ key, value }) => ({ ifindex: key, endpointId: value })) };
    case 'mb_lb_services':
      return {
        name,
        entries: [...m.lbServices.entries()].map(([k, v]) => ({
          frontend: `${addr(4, k.addr)}:${k.dport}/${PROTO[k.proto] ?? k.proto}`,
          slot: k.slot,
          ...(k.slot === 0
            ? { count: v.count, revNatIndex: v.rev_nat_index, flags: v.flags, affinityTimeout: v.flags & 2 ? v.backend_id : undefined }
            : { backendId: v.backend_id }),
        })),
      };
    case 'mb_lb_backends':
      return {
        name,
        entries: [...m.lbBackends.entries()].map(([k, v]) => ({
          id: k,
          backend: `${addr(4, v.addr)}:${v.port}/${PROTO[v.proto] ?? v.proto}`,
          state: v.flags === 1 ? 'terminating' : 'active',
        })),
      };
    case 'mb_lb_revnat':
      return { name, entries: [...m.lbRevnat.entries()].map(([k, v]) => ({ index: k, frontend: `${addr(4, v.addr)}:${v.port}` })) };
    case 'mb_lb_affinity':
      return {
        name,
        entries: [...m.lbAffinity.entries()].map(([k, v]) => ({ client: addr(4, k.client), revNatIndex: k.rev_nat_index, backendId: v.backend_id, lastUsed: v.last_used })),
      };
    case 'mb_node': {
      const v = m.node.lookup(0);
      return { name, entries: v ? [{ ...v, host_mac: formatMac(v.host_mac), net_mac: formatMac(v.net_mac) }] : [] };
    }
    default:
      return undefined;
  }
}

/** An endpoint's policy map as the kernel holds it, with identity labels (`bpf policy get`). */
export function dumpPolicyMap(dp: Datapath, id: number, identities: Pick<IdentityAllocator, 'get'>) {
  const table = dp.policyTable(id);
  if (!table) return undefined;
  const rows = [...table.kernelEntries()].map(({ key: k, value: v }) => {
    const portBits = Math.max(0, k.prefixlen - 48);
    const span = portBits >= 16 ? 1 : 2 ** (16 - portBits);
    const port = k.prefixlen <= 48 ? 'ANY' : span > 1 ? `${k.dport}-${k.dport + span - 1}` : String(k.dport);
    return {
      verdict: v.flags & 1 ? 'Deny' : 'Allow',
      direction: k.egress ? 'Egress' : 'Ingress',
      identity: k.sec_id,
      labels: k.sec_id === 0 ? ['ANY'] : (identities.get(k.sec_id)?.labels ?? ['(unknown)']),
      protocol: k.prefixlen <= 40 ? 'ANY' : (PROTO[k.protocol] ?? String(k.protocol)),
      port: k.prefixlen <= 40 ? 'ANY' : k.protocol === 1 || k.protocol === 58 ? `type ${k.dport}` : port,
      prefixLen: k.prefixlen,
      proxyPort: v.proxy_port,
      packets: Number(v.packets),
      bytes: Number(v.bytes),
    };
  });
  rows.sort((a, b) => a.direction.localeCompare(b.direction) || a.identity - b.identity || a.prefixLen - b.prefixLen);
  return rows;
}

/** Remove conntrack entries (all, or only service entries). */
export function flushConntrack(dp: Datapath, onlyServices: boolean): number {
  let n = 0;
  for (const [k] of [...dp.maps.ct.entries()]) {
    if (onlyServices && (k.flags & 4) === 0) continue;
    if (dp.maps.ct.delete(k)) n++;
  }
  return n;
}
