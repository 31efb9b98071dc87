/**
 * Who is on each end of a proxied connection, from the datapath's own pinned
 * maps, opened read-only: the ipcache (address -> security identity, as the
 * datapath resolves it) and the endpoints map (local address -> endpoint id).
 * Never from anything the client says.
 */
import * as path from 'node:path';
import { BpfMap } from '../bpf';
import * as gen from '../datapath/maps.gen';
import { FAMILY_IPV4, FAMILY_IPV6, ENDPOINT_F_HOST } from '../datapath/constants';
import { parseIp } from '../util/ip';

/** The identity the datapath gives an address the ipcache does not know (reserved:world). */
const WORLD = 2;

export interface Peer {
  ip: string;
  port: number;
  identity: number;
  /** A local endpoint (a pod on this node). */
  endpointId?: number;
}

export class DatapathView {
  private readonly ipcache: BpfMap<gen.IpcacheKey, gen.IpcacheValue>;
  private readonly endpoints: BpfMap<gen.EndpointKey, gen.EndpointInfo>;

  constructor(bpfRoot: string) {
    this.ipcache = BpfMap.fromPin(path.join(bpfRoot, 'mb_ipcache'), 'mb_ipcache', { readOnly: true }).withCodecs(gen.ipcacheKeyCodec, gen.ipcacheValueCodec);
    try {
      this.endpoints = BpfMap.fromPin(path.join(bpfRoot, 'mb_endpoints'), 'mb_endpoints', { readOnly: true }).withCodecs(gen.endpointKeyCodec, gen.endpointInfoCodec);
    } catch (e) {
      this.ipcache.close();
      throw e;
    }
  }

  /** Identity and local endpoint of an address (IPv4 or IPv6; "::ffff:a.b.c.d" is IPv4). */
  peer(ipText: string, port: number): Peer {
    const text = ipText.startsWith('::ffff:') && ipText.includes('.') ? ipText.slice(7) : ipText;
    const ip = parseIp(text, 'address');
    const family = ip.family === 4 ? FAMILY_IPV4 : FAMILY_IPV6;
    const addr = Buffer.from(ip.bytes);
    const ep = this.endpoints.lookup({ addr, family, pad: Buffer.alloc(3) } as gen.EndpointKey);
    if (ep && !(ep.flags & ENDPOINT_F_HOST)) return { ip: text, port, identity: ep.sec_id, endpointId: ep.ep_id };
    const v = this.ipcache.lookup({ prefixlen: 32 + (ip.family === 4 ? 32 : 128), family, pad: Buffer.alloc(3), addr } as gen.IpcacheKey);
    return { ip: text, port, identity: ep ? ep.sec_id : v ? v.sec_id : WORLD };
  }

  close(): void {
    this.ipcache.close();
    this.endpoints.close();
  }
}
