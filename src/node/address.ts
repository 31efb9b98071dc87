/**
 * The node's underlay: the address other nodes reach it (and tunnel to) at,
 * and the MTU of the device that holds it. --node-ip names the address; by
 * default it is the first IPv4 address of the default route's device.
 */
import type { RtNetlink } from '../netlink';

export class NodeAddressError extends Error {}

export interface Underlay {
  ip: string;
  ifindex: number;
  ifname: string;
  mtu: number;
}

export function findUnderlay(nl: RtNetlink, nodeIp?: string): Underlay {
  const addrs = nl.addrList().filter((a) => a.family === 4 && !a.address.startsWith('127.'));
  let ip: string;
  let ifindex: number;
  if (nodeIp) {
    const a = addrs.find((x) => x.address === nodeIp) ?? nl.addrList().find((x) => x.address === nodeIp);
    if (!a) throw new NodeAddressError(`node-ip: ${nodeIp} is not an address of this node (it has ${addrs.map((x) => x.address).join(', ') || 'none'})`);
    ip = a.address;
    ifindex = a.index;
  } else {
    const def = nl.routeList({ family: 4 }).find((r) => r.dst === 'default' && r.table === 254 && r.dev !== undefined);
    if (!def) throw new NodeAddressError('node-ip: this node has no default route to take the underlay address from; give --node-ip');
    const a = addrs.find((x) => x.index === def.dev && x.scope === 'universe') ?? addrs.find((x) => x.index === def.dev);
    if (!a) throw new NodeAddressError(`node-ip: the default route's device (ifindex ${def.dev}) has no IPv4 address; give --node-ip`);
    ip = a.address;
    ifindex = a.index;
  }
  const link = nl.linkGet(ifindex);
  if (!link) throw new NodeAddressError(`node-ip: the device of ${ip} (ifindex ${ifindex}) vanished`);
  return { ip, ifindex, ifname: link.name, mtu: link.mtu };
}
