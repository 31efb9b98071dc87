/**
 * Synchronous rtnetlink client: links (veth, vxlan), addresses, routes and
 * neighbours, IPv4 and IPv6, over a NETLINK_ROUTE socket bound to one network
 * namespace. Every request carries its own sequence number; change requests
 * set NLM_F_ACK and wait for the kernel's ACK, dumps read until NLMSG_DONE.
 * Failures throw NetlinkError (kernel errno + extended ACK) or
 * NetlinkArgError (bad input, naming the field and value).
 */
import * as C from './constants';
import { NetlinkArgError, NetlinkError } from './errors';
import {
  Attrs, NlAttr, NlMsg, attr, decodeFibRuleHdr, decodeIfAddrMsg, decodeIfInfoMsg, decodeNdMsg, decodeRtMsg, encodeFibRuleHdr,
  encodeIfAddrMsg, encodeIfInfoMsg, encodeMessage, encodeNdMsg, encodeRtMsg, parseDoneErrno, parseError, parseMessages,
  payloadAttrs,
} from './message';
import { netlinkNative } from './native';
import { Netns } from './netns';
import { Family, formatIp, formatMac, ipFromBytes, parseIp } from '../util/ip';

export interface LinkInfo {
  index: number;
  name: string;
  mtu: number;
  /** aa:bb:cc:dd:ee:ff ('' when the link has no L2 address). */
  mac: string;
  /** IFF_* flags. */
  flags: number;
  /** IFF_UP (administratively up). */
  up: boolean;
  operState: C.OperState;
  /** IFLA_INFO_KIND, e.g. 'veth', 'vxlan'; undefined for plain devices. */
  kind?: string;
  /** IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace). */
  linkIndex?: number;
  /** IFLA_LINK_NETNSID: the peer's namespace id, as seen from this namespace. */
  linkNetnsId?: number;
  master?: number;
  txqlen?: number;
}

export interface VethOptions {
  name: string;
  peerName: string;
  /** Namespace to create the peer in directly (default: same as the socket). */
  peerNetns?: Netns;
  mtu?: number;
  mac?: string;
  peerMac?: string;
  txqlen?: number;
}

export interface VxlanOptions {
  name: string;
  /** Only collect-metadata (external) devices are supported. */
  external: true;
  dstPort: number;
  mtu?: number;
  /** Group Based Policy extension (VXLAN-GBP). */
  gbp?: boolean;
}

export interface LinkSetOptions {
  up?: boolean;
  mtu?: number;
  mac?: string;
  name?: string;
  /** Move the link into this namespace (fd of an nsfs file, e.g. Netns.fd). */
  netnsFd?: number;
  noarp?: boolean;
}

export interface AddrInfo {
  index: number;
  family: Family;
  address: string;
  prefixLen: number;
  scope: string;
  /** IFA_F_* flags (IFA_FLAGS when present). */
  flags: number;
  label?: string;
}

export interface AddrAddOptions {
  /** IFA_F_NODAD (IPv6: usable immediately, no duplicate address detection). */
  noDad?: boolean;
  /** IFA_F_NOPREFIXROUTE: do not create the prefix route. */
  noPrefixRoute?: boolean;
  scope?: C.ScopeName;
}

export interface RouteSpec {
  /** 'default' or a CIDR with no host bits set. */
  dst: string;
  gateway?: string;
  /** Output interface index. */
  dev?: number;
  /** Preferred source address. */
  src?: string;
  /** Default: 'link' without a gateway, 'universe' with one (as `ip route`). */
  scope?: 'link' | 'host' | 'universe';
  /** Routing table id, default main (254). */
  table?: number;
  /** Gateway is on-link even if no prefix covers it (RTNH_F_ONLINK). */
  onlink?: boolean;
  /** Path MTU (RTAX_MTU). */
  mtu?: number;
  /** NLM_F_REPLACE instead of NLM_F_EXCL on add. */
  replace?: boolean;
  /** RTA_PRIORITY. */
  metric?: number;
  /** rtm_protocol; default RTPROT_BOOT on add, any on delete. */
  protocol?: number;
  /** Only needed for dst 'default' without gateway/src (default 4). */
  family?: Family;
  /** Route type: 'unicast' (default) or 'local' (deliver to this host, scope host). */
  type?: 'unicast' | 'local';
}

export interface Route {
  family: Family;
  /** CIDR, or 'default' for a zero-length prefix. */
  dst: string;
  gateway?: string;
  dev?: number;
  src?: string;
  scope: string;
  table: number;
  protocol: number;
  /** 'unicast', 'local', 'broadcast', 'blackhole', ... */
  type: string;
  metric?: number;
  mtu?: number;
  onlink: boolean;
}

export interface RouteListOptions {
  family?: Family;
  /** Table id, or 'all'. Default: main (254). */
  table?: number | 'all';
}

/** A policy routing rule: packets whose mark matches look up `table` (FR_ACT_TO_TBL). */
export interface RuleSpec {
  /** Default 4. */
  family?: Family;
  /** Rule priority (FRA_PRIORITY), 1..32765 for rules between the local and main tables. */
  priority: number;
  fwmark?: number;
  /** Default 0xffffffff when fwmark is given. */
  fwmask?: number;
  table: number;
  /** FRA_PROTOCOL, to tell who added the rule (default RTPROT_STATIC on add, any on delete). */
  protocol?: number;
}

export interface RuleInfo {
  family: Family;
  priority: number;
  fwmark?: number;
  fwmask?: number;
  table: number;
  /** 'to-table', or the FR_ACT_* number. */
  action: string;
  protocol?: number;
}

export interface NeighSpec {
  dev: number;
  ip: string;
  mac: string;
  /** NUD_PERMANENT (default true) or NUD_REACHABLE. */
  permanent?: boolean;
  /** Replace an existing entry (default true: neighbour entries are idempotent). */
  replace?: boolean;
}

export interface NeighInfo {
  dev: number;
  family: Family;
  ip: string;
  mac?: string;
  state: string;
  permanent: boolean;
}

const DEFAULT_TIMEOUT_MS = 5000;
const MAX_DUMP_RETRIES = 5;

// ---- validation helpers -----------------------------------------------------------------------

function checkIfname(field: string, name: unknown): string {
  if (typeof name !== 'string' || name.length === 0) throw new NetlinkArgError(field, name, 'must be a non-empty interface name');
  if (Buffer.byteLength(name) > 15) throw new NetlinkArgError(field, name, 'is longer than 15 bytes (IFNAMSIZ)');
  if (name === '.' || name === '..' || /[/:\s]/.test(name)) {
    throw new NetlinkArgError(field, name, 'is not a valid interface name (no "/", ":", whitespace)');
  }
  return name;
}

function checkInt(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new NetlinkArgError(field, v, `must be an integer in [${min}, ${max}]`);
  }
  return v;
}

function checkIndex(field: string, v: unknown): number {
  return checkInt(field, v, 1, 0x7fffffff);
}

function checkMac(field: string, v: unknown): Buffer {
  if (typeof v !== 'string' || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(v)) {
    throw new NetlinkArgError(field, v, 'is not a MAC address (aa:bb:cc:dd:ee:ff)');
  }
  const b = Buffer.from(v.split(':').map((x) => parseInt(x, 16)));
  if (b[0] & 1) throw new NetlinkArgError(field, v, 'is a multicast MAC address (must be unicast)');
  if (b.every((x) => x === 0)) throw new NetlinkArgError(field, v, 'is the all-zero MAC address');
  return b;
}

interface ParsedIp {
  family: Family;
  bytes: Buffer; // 4 or 16 bytes, as on the wire
  text: string;
}

function checkIp(field: string, v: unknown): ParsedIp {
  if (typeof v !== 'string') throw new NetlinkArgError(field, v, 'must be an IPv4 or IPv6 address string');
  let a;
  try {
    a = parseIp(v, field);
  } catch {
    throw new NetlinkArgError(field, v, 'is not an IPv4 or IPv6 address');
  }
  return { family: a.family, bytes: Buffer.from(a.bytes.subarray(0, a.family === 4 ? 4 : 16)), text: v };
}

function checkCidr(field: string, v: unknown, opts: { requirePrefix: boolean; noHostBits: boolean }): ParsedIp & { prefixLen: number } {
  if (typeof v !== 'string') throw new NetlinkArgError(field, v, 'must be a CIDR string like 10.0.0.5/32');
  const slash = v.indexOf('/');
  if (slash < 0 && opts.requirePrefix) throw new NetlinkArgError(field, v, 'is not a CIDR (expected address/prefix-length)');
  let ip: ParsedIp;
  try {
    ip = checkIp(field, slash < 0 ? v : v.slice(0, slash));
  } catch {
    throw new NetlinkArgError(field, v, `is not a valid ${opts.requirePrefix ? 'CIDR' : 'address or CIDR'} (bad address part)`);
  }
  const bits = ip.family === 4 ? 32 : 128;
  let prefixLen = bits;
  if (slash >= 0) {
    const pl = v.slice(slash + 1);
    if (!/^\d{1,3}$/.test(pl) || Number(pl) > bits) {
      throw new NetlinkArgError(field, v, `has an invalid prefix length (0..${bits} for IPv${ip.family})`);
    }
    prefixLen = Number(pl);
  }
  if (opts.noHostBits) {
    for (let i = 0; i < ip.bytes.length; i++) {
      const keep = Math.max(0, Math.min(8, prefixLen - i * 8));
      const mask = keep === 0 ? 0 : (0xff << (8 - keep)) & 0xff;
      if (ip.bytes[i] & ~mask & 0xff) throw new NetlinkArgError(field, v, 'has host bits set beyond the prefix length');
    }
  }
  return { ...ip, text: v, prefixLen };
}

function ipText(family: Family, b: Buffer): string {
  return formatIp(ipFromBytes(family, b));
}

function familyOf(af: number): Family | undefined {
  return af === C.AF_INET ? 4 : af === C.AF_INET6 ? 6 : undefined;
}

function afOf(f: Family): number {
  return f === 4 ? C.AF_INET : C.AF_INET6;
}

// ---- the client -------------------------------------------------------------------------------

export class RtNetlink {
  private fd: number;
  private seq: number;
  /** Namespace path for error messages ('' for the agent's own namespace). */
  readonly netnsPath: string;
  timeoutMs = DEFAULT_TIMEOUT_MS;

  /** The last request queued on a worker thread (async requests on one socket run one after another). */
  private asyncTail?: Promise<unknown>;

  private constructor(fd: number, netnsPath: string) {
    this.fd = fd;
    this.netnsPath = netnsPath;
    this.seq = (Date.now() & 0x3fffffff) >>> 0;
  }

  /**
   * Open a NETLINK_ROUTE socket bound to `netns` (a Netns, a path such as
   * /run/netns/x, or null/undefined for the current namespace). The socket
   * stays in that namespace for its lifetime; a path is opened and closed here.
   */
  static open(netns?: Netns | string | null): RtNetlink {
    const nat = netlinkNative();
    if (netns === undefined || netns === null) return new RtNetlink(nat.nlOpen(C.NETLINK_ROUTE, -1), '');
    if (typeof netns === 'string') {
      const ns = Netns.open(netns);
      try {
        return new RtNetlink(nat.nlOpen(C.NETLINK_ROUTE, ns.fd), netns);
      } finally {
        ns.close();
      }
    }
    return new RtNetlink(nat.nlOpen(C.NETLINK_ROUTE, netns.fd), netns.path);
  }

  close(): void {
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      // A request on a worker thread still uses the socket: close it when that is done.
      if (this.asyncTail) void this.asyncTail.finally(() => netlinkNative().close(fd));
      else netlinkNative().close(fd);
    }
  }

  // ---- transport --------------------------------------------------------------------------

  private ctx(desc: string): string {
    return this.netnsPath ? `${desc}; socket netns ${this.netnsPath}` : desc;
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0 || 1;
    return this.seq;
  }

  /**
   * Send one request and collect the answer: all non-control messages with
   * our sequence number until the ACK (NLMSG_ERROR, error 0) or NLMSG_DONE.
   * Throws NetlinkError for a kernel error. `dump` requests are retried when
   * the kernel flags NLM_F_DUMP_INTR (the table changed during the dump).
   */
  request(type: number, flags: number, header: Buffer, attrs: NlAttr[], context: string): NlMsg[] {
    if (this.fd < 0) throw new Error(`netlink ${C.msgTypeName(type)} (${context}): socket is closed`);
    const dump = (flags & C.NLM_F_DUMP) === C.NLM_F_DUMP && type % 4 === 2; // RTM_GET*
    for (let attempt = 0; ; attempt++) {
      const { msgs, interrupted } = this.exchange(type, flags | C.NLM_F_REQUEST, header, attrs, context);
      if (!dump || !interrupted || attempt >= MAX_DUMP_RETRIES) return msgs;
    }
  }

  private exchange(type: number, flags: number, header: Buffer, attrs: NlAttr[], context: string) {
    const nat = netlinkNative();
    const seq = this.nextSeq();
    nat.nlSend(this.fd, encodeMessage({ type, flags, seq, header, attrs }));
    const msgs: NlMsg[] = [];
    let interrupted = false;
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      const dgram = left > 0 ? nat.nlRecv(this.fd, left) : null;
      if (!dgram) {
        throw new NetlinkError({ errno: 110 /* ETIMEDOUT */, op: type, context: this.ctx(context), extAck: `no answer within ${this.timeoutMs} ms` });
      }
      for (const m of parseMessages(dgram)) {
        if (m.seq !== seq) continue; // stale answer to an earlier (timed-out) request
        if (m.flags & C.NLM_F_DUMP_INTR) interrupted = true;
        if (m.type === C.NLMSG_ERROR) {
          const e = parseError(m);
          if (e.errno !== 0) {
            throw new NetlinkError({ errno: e.errno, op: type, context: this.ctx(context), extAck: e.extAckMsg, extAckOffset: e.extAckOffset });
          }
          return { msgs, interrupted };
        }
        if (m.type === C.NLMSG_DONE) {
          const errno = parseDoneErrno(m);
          if (errno !== 0) throw new NetlinkError({ errno, op: type, context: this.ctx(context) });
          return { msgs, interrupted };
        }
        if (m.type === C.NLMSG_NOOP || m.type === C.NLMSG_OVERRUN) continue;
        msgs.push(m);
      }
    }
  }

  /**
   * request() with the socket's send and receive on a libuv worker thread,
   * for requests the kernel answers slowly (deleting a veth waits for RCU):
   * the event loop keeps serving meanwhile. Async requests on one socket run
   * one after another; a socket used this way must not also be used with the
   * synchronous calls while one is in flight (they would read its answer).
   */
  requestAsync(type: number, flags: number, header: Buffer, attrs: NlAttr[], context: string): Promise<NlMsg[]> {
    const run = async (): Promise<NlMsg[]> => {
      if (this.fd < 0) throw new Error(`netlink ${C.msgTypeName(type)} (${context}): socket is closed`);
      const seq = this.nextSeq();
      let answer: Buffer;
      try {
        answer = await netlinkNative().nlExchangeAsync(this.fd, encodeMessage({ type, flags: flags | C.NLM_F_REQUEST, seq, header, attrs }), seq, this.timeoutMs);
      } catch (e) {
        const errno = (e as { errno?: number }).errno ?? 5;
        throw new NetlinkError({ errno, op: type, context: this.ctx(context), extAck: errno === 110 ? `no answer within ${this.timeoutMs} ms` : (e as Error).message });
      }
      const msgs: NlMsg[] = [];
      for (const m of parseMessages(answer)) {
        if (m.seq !== seq) continue; // stale answer to an earlier (timed-out) request
        if (m.type === C.NLMSG_ERROR) {
          const err = parseError(m);
          if (err.errno !== 0) throw new NetlinkError({ errno: err.errno, op: type, context: this.ctx(context), extAck: err.extAckMsg, extAckOffset: err.extAckOffset });
          return msgs;
        }
        if (m.type === C.NLMSG_DONE) {
          const errno = parseDoneErrno(m);
          if (errno !== 0) throw new NetlinkError({ errno, op: type, context: this.ctx(context) });
          return msgs;
        }
        if (m.type === C.NLMSG_NOOP || m.type === C.NLMSG_OVERRUN) continue;
        msgs.push(m);
      }
      return msgs;
    };
    const p = (this.asyncTail ?? Promise.resolve()).catch(() => undefined).then(run);
    this.asyncTail = p;
    return p;
  }

  /** Run a change request; returns false instead of throwing when the kernel answers with one of `okErrnos`. */
  private change(type: number, flags: number, header: Buffer, attrs: NlAttr[], context: string, okErrnos: string[] = []): boolean {
    try {
      this.request(type, flags | C.NLM_F_ACK, header, attrs, context);
      return true;
    } catch (e) {
      if (e instanceof NetlinkError && okErrnos.includes(e.code)) return false;
      throw e;
    }
  }

  // ---- links ------------------------------------------------------------------------------

  private static decodeLink(m: NlMsg): LinkInfo {
    const ifi = decodeIfInfoMsg(m.payload);
    const a = payloadAttrs(m, C.IFINFOMSG_LEN);
    const addr = a.get(C.IFLA_ADDRESS);
    const li = a.nested(C.IFLA_LINKINFO);
    const op = a.u8(C.IFLA_OPERSTATE) ?? 0;
    const link: LinkInfo = {
      index: ifi.index,
      name: a.str(C.IFLA_IFNAME) ?? '',
      mtu: a.u32(C.IFLA_MTU) ?? 0,
      mac: addr && addr.length === 6 ? formatMac(addr) : addr && addr.length ? Array.from(addr, (x) => x.toString(16).padStart(2, '0')).join(':') : '',
      flags: ifi.flags,
      up: (ifi.flags & C.IFF_UP) !== 0,
      operState: C.OPER_STATES[op] ?? 'unknown',
    };
    const kind = li?.str(C.IFLA_INFO_KIND);
    if (kind !== undefined) link.kind = kind;
    const linkIndex = a.i32(C.IFLA_LINK);
    if (linkIndex !== undefined) link.linkIndex = linkIndex;
    const nsid = a.i32(C.IFLA_LINK_NETNSID);
    if (nsid !== undefined) link.linkNetnsId = nsid;
    const master = a.u32(C.IFLA_MASTER);
    if (master !== undefined) link.master = master;
    const txq = a.u32(C.IFLA_TXQLEN);
    if (txq !== undefined) link.txqlen = txq;
    return link;
  }

  linkList(): LinkInfo[] {
    const msgs = this.request(C.RTM_GETLINK, C.NLM_F_DUMP, encodeIfInfoMsg({ family: C.AF_UNSPEC }), [], 'dump links');
    return msgs.filter((m) => m.type === C.RTM_NEWLINK).map(RtNetlink.decodeLink);
  }

  /** Look up a link by name or ifindex; undefined if it does not exist. */
  linkGet(nameOrIndex: string | number): LinkInfo | undefined {
    const { header, attrs, desc } = this.linkSelector('nameOrIndex', nameOrIndex);
    try {
      const msgs = this.request(C.RTM_GETLINK, C.NLM_F_ACK, header, attrs, `get link ${desc}`);
      const m = msgs.find((x) => x.type === C.RTM_NEWLINK);
      return m ? RtNetlink.decodeLink(m) : undefined;
    } catch (e) {
      if (e instanceof NetlinkError && e.code === 'ENODEV') return undefined;
      throw e;
    }
  }

  private linkSelector(field: string, nameOrIndex: string | number): { header: Buffer; attrs: NlAttr[]; desc: string } {
    if (typeof nameOrIndex === 'number') {
      const index = checkIndex(field, nameOrIndex);
      return { header: encodeIfInfoMsg({ index }), attrs: [], desc: `index ${index}` };
    }
    const name = checkIfname(field, nameOrIndex);
    return { header: encodeIfInfoMsg({}), attrs: [attr.str(C.IFLA_IFNAME, name)], desc: name };
  }

  /**
   * Create a veth pair in one RTM_NEWLINK. With peerNetns the peer is created
   * directly inside that namespace (IFLA_NET_NS_FD in the peer's attributes),
   * so it never appears in this namespace. Returns the host-side link.
   */
  linkAddVeth(o: VethOptions): LinkInfo {
    const name = checkIfname('name', o.name);
    const peerName = checkIfname('peerName', o.peerName);
    const attrs: NlAttr[] = [attr.str(C.IFLA_IFNAME, name)];
    const peer: NlAttr[] = [attr.str(C.IFLA_IFNAME, peerName)];
    if (o.mtu !== undefined) {
      const mtu = checkInt('mtu', o.mtu, 68, 65535);
      attrs.push(attr.u32(C.IFLA_MTU, mtu));
      peer.push(attr.u32(C.IFLA_MTU, mtu));
    }
    if (o.txqlen !== undefined) {
      const q = checkInt('txqlen', o.txqlen, 0, 0xffffffff);
      attrs.push(attr.u32(C.IFLA_TXQLEN, q));
      peer.push(attr.u32(C.IFLA_TXQLEN, q));
    }
    if (o.mac !== undefined) attrs.push(attr.bytes(C.IFLA_ADDRESS, checkMac('mac', o.mac)));
    if (o.peerMac !== undefined) peer.push(attr.bytes(C.IFLA_ADDRESS, checkMac('peerMac', o.peerMac)));
    if (o.peerNetns) peer.push(attr.u32(C.IFLA_NET_NS_FD, o.peerNetns.fd));
    attrs.push(
      attr.nest(C.IFLA_LINKINFO, [
        attr.str(C.IFLA_INFO_KIND, 'veth'),
        attr.nest(C.IFLA_INFO_DATA, [
          // VETH_INFO_PEER payload = struct ifinfomsg + the peer's IFLA_* attributes.
          attr.nest(C.VETH_INFO_PEER, peer, { header: encodeIfInfoMsg({}), flagNested: false }),
        ]),
      ]),
    );
    const desc = `veth ${name} peer ${peerName}${o.peerNetns ? ` in netns ${o.peerNetns.path}` : ''}`;
    this.change(C.RTM_NEWLINK, C.NLM_F_CREATE | C.NLM_F_EXCL, encodeIfInfoMsg({}), attrs, desc);
    const link = this.linkGet(name);
    if (!link) throw new Error(`veth ${name}: created but not found afterwards`);
    return link;
  }

  /** Create a collect-metadata ("external") VXLAN device, learning off. */
  linkAddVxlan(o: VxlanOptions): LinkInfo {
    const name = checkIfname('name', o.name);
    if (o.external !== true) throw new NetlinkArgError('external', o.external, 'must be true (only collect-metadata VXLAN is supported)');
    const port = checkInt('dstPort', o.dstPort, 1, 65535);
    const attrs: NlAttr[] = [attr.str(C.IFLA_IFNAME, name)];
    if (o.mtu !== undefined) attrs.push(attr.u32(C.IFLA_MTU, checkInt('mtu', o.mtu, 68, 65535)));
    const data: NlAttr[] = [
      attr.u8(C.IFLA_VXLAN_COLLECT_METADATA, 1),
      attr.be16(C.IFLA_VXLAN_PORT, port),
      attr.u8(C.IFLA_VXLAN_LEARNING, 0),
    ];
    if (o.gbp) data.push(attr.flag(C.IFLA_VXLAN_GBP));
    attrs.push(attr.nest(C.IFLA_LINKINFO, [attr.str(C.IFLA_INFO_KIND, 'vxlan'), attr.nest(C.IFLA_INFO_DATA, data)]));
    this.change(C.RTM_NEWLINK, C.NLM_F_CREATE | C.NLM_F_EXCL, encodeIfInfoMsg({}), attrs, `vxlan ${name} external dstport ${port}`);
    const link = this.linkGet(name);
    if (!link) throw new Error(`vxlan ${name}: created but not found afterwards`);
    return link;
  }

  /** Change link properties in one RTM_NEWLINK (no NLM_F_CREATE). */
  linkSet(index: number, o: LinkSetOptions): void {
    checkIndex('index', index);
    const attrs: NlAttr[] = [];
    let flags = 0;
    let change = 0;
    const parts: string[] = [];
    if (o.up !== undefined) {
      change |= C.IFF_UP;
      if (o.up) flags |= C.IFF_UP;
      parts.push(o.up ? 'up' : 'down');
    }
    if (o.noarp !== undefined) {
      change |= C.IFF_NOARP;
      if (o.noarp) flags |= C.IFF_NOARP;
      parts.push(o.noarp ? 'arp off' : 'arp on');
    }
    if (o.mtu !== undefined) {
      attrs.push(attr.u32(C.IFLA_MTU, checkInt('mtu', o.mtu, 68, 65535)));
      parts.push(`mtu ${o.mtu}`);
    }
    if (o.mac !== undefined) {
      attrs.push(attr.bytes(C.IFLA_ADDRESS, checkMac('mac', o.mac)));
      parts.push(`address ${o.mac}`);
    }
    if (o.name !== undefined) {
      attrs.push(attr.str(C.IFLA_IFNAME, checkIfname('name', o.name)));
      parts.push(`name ${o.name}`);
    }
    if (o.netnsFd !== undefined) {
      attrs.push(attr.u32(C.IFLA_NET_NS_FD, checkInt('netnsFd', o.netnsFd, 0, 0x7fffffff)));
      parts.push(`netns fd ${o.netnsFd}`);
    }
    if (!attrs.length && !change) return;
    this.change(C.RTM_NEWLINK, 0, encodeIfInfoMsg({ index, flags, change }), attrs, `link index ${index} ${parts.join(' ')}`);
  }

  /** Delete a link (a veth deletes its peer too). Returns false if it did not exist. */
  linkDel(nameOrIndex: string | number): boolean {
    const { header, attrs, desc } = this.linkSelector('nameOrIndex', nameOrIndex);
    return this.change(C.RTM_DELLINK, 0, header, attrs, `delete link ${desc}`, ['ENODEV']);
  }

  /** linkDel() on a worker thread (see requestAsync): false if there was no such link. */
  async linkDelAsync(nameOrIndex: string | number): Promise<boolean> {
    const { header, attrs, desc } = this.linkSelector('nameOrIndex', nameOrIndex);
    try {
      await this.requestAsync(C.RTM_DELLINK, C.NLM_F_ACK, header, attrs, `delete link ${desc}`);
      return true;
    } catch (e) {
      if (e instanceof NetlinkError && e.code === 'ENODEV') return false;
      throw e;
    }
  }

  // ---- addresses --------------------------------------------------------------------------

  private addrMsg(index: number, cidr: string, o: AddrAddOptions = {}) {
    checkIndex('index', index);
    const c = checkCidr('cidr', cidr, { requirePrefix: true, noHostBits: false });
    let flags = 0;
    if (o.noDad) flags |= C.IFA_F_NODAD;
    if (o.noPrefixRoute) flags |= C.IFA_F_NOPREFIXROUTE;
    let scope = 0;
    if (o.scope !== undefined) {
      if (!(o.scope in C.SCOPES)) throw new NetlinkArgError('scope', o.scope, `must be one of ${Object.keys(C.SCOPES).join(', ')}`);
      scope = C.SCOPES[o.scope];
    }
    const header = encodeIfAddrMsg({ family: afOf(c.family), prefixLen: c.prefixLen, flags: flags & 0xff, scope, index });
    const attrs: NlAttr[] = [attr.bytes(C.IFA_LOCAL, c.bytes), attr.bytes(C.IFA_ADDRESS, c.bytes)];
    if (flags > 0xff) attrs.push(attr.u32(C.IFA_FLAGS, flags));
    return { header, attrs, desc: `${cidr} dev index ${index}` };
  }

  addrAdd(index: number, cidr: string, opts: AddrAddOptions = {}): void {
    const { header, attrs, desc } = this.addrMsg(index, cidr, opts);
    this.change(C.RTM_NEWADDR, C.NLM_F_CREATE | C.NLM_F_EXCL, header, attrs, `add address ${desc}`);
  }

  /** Remove an address; false if it was not there. */
  addrDel(index: number, cidr: string): boolean {
    const { header, attrs, desc } = this.addrMsg(index, cidr);
    return this.change(C.RTM_DELADDR, 0, header, attrs, `delete address ${desc}`, ['EADDRNOTAVAIL', 'ENOENT']);
  }

  addrList(index?: number): AddrInfo[] {
    if (index !== undefined) checkIndex('index', index);
    const msgs = this.request(C.RTM_GETADDR, C.NLM_F_DUMP, encodeIfAddrMsg({ family: C.AF_UNSPEC }), [], 'dump addresses');
    const out: AddrInfo[] = [];
    for (const m of msgs) {
      if (m.type !== C.RTM_NEWADDR) continue;
      const h = decodeIfAddrMsg(m.payload);
      const family = familyOf(h.family);
      if (!family || (index !== undefined && h.index !== index)) continue;
      const a = payloadAttrs(m, C.IFADDRMSG_LEN);
      const raw = a.get(C.IFA_LOCAL) ?? a.get(C.IFA_ADDRESS);
      if (!raw) continue;
      const info: AddrInfo = {
        index: h.index,
        family,
        address: ipText(family, raw),
        prefixLen: h.prefixLen,
        scope: C.scopeName(h.scope),
        flags: a.u32(C.IFA_FLAGS) ?? h.flags,
      };
      const label = a.str(C.IFA_LABEL);
      if (label !== undefined) info.label = label;
      out.push(info);
    }
    return out;
  }

  // ---- routes -----------------------------------------------------------------------------

  private routeMsg(r: RouteSpec, del: boolean) {
    if (!r || typeof r !== 'object') throw new NetlinkArgError('route', r, 'must be an object');
    const gw = r.gateway !== undefined ? checkIp('gateway', r.gateway) : undefined;
    const src = r.src !== undefined ? checkIp('src', r.src) : undefined;
    let family: Family;
    let dst: (ParsedIp & { prefixLen: number }) | undefined;
    if (r.dst === 'default') {
      if (r.family !== undefined && r.family !== 4 && r.family !== 6) throw new NetlinkArgError('family', r.family, 'must be 4 or 6');
      family = gw?.family ?? src?.family ?? r.family ?? 4;
    } else {
      dst = checkCidr('dst', r.dst, { requirePrefix: false, noHostBits: true });
      family = dst.family;
    }
    if (gw && gw.family !== family) throw new NetlinkArgError('gateway', r.gateway, `is IPv${gw.family} but dst ${r.dst} is IPv${family}`);
    if (src && src.family !== family) throw new NetlinkArgError('src', r.src, `is IPv${src.family} but dst ${r.dst} is IPv${family}`);
    if (r.dev !== undefined) checkIndex('dev', r.dev);
    const table = r.table === undefined ? C.RT_TABLE_MAIN : checkInt('table', r.table, 1, 0xffffffff);
    let scope: number;
    if (r.scope !== undefined) {
      if (!['link', 'host', 'universe'].includes(r.scope)) throw new NetlinkArgError('scope', r.scope, 'must be one of link, host, universe');
      scope = C.SCOPES[r.scope];
    } else if (del) scope = C.RT_SCOPE_NOWHERE; // wildcard for delete
    else scope = gw ? C.RT_SCOPE_UNIVERSE : C.RT_SCOPE_LINK;
    const protocol = r.protocol !== undefined ? checkInt('protocol', r.protocol, 0, 255) : del ? C.RTPROT_UNSPEC : C.RTPROT_BOOT;
    if (r.type !== undefined && r.type !== 'unicast' && r.type !== 'local') throw new NetlinkArgError('type', r.type, 'must be unicast or local');
    if (r.type === 'local' && r.scope === undefined && !del) scope = C.RT_SCOPE_HOST;
    const header = encodeRtMsg({
      family: afOf(family),
      dstLen: dst?.prefixLen ?? 0,
      table: table < 256 ? table : C.RT_TABLE_UNSPEC,
      protocol,
      scope,
      type: r.type === 'local' ? C.RTN_LOCAL : C.RTN_UNICAST,
      flags: r.onlink ? C.RTNH_F_ONLINK : 0,
    });
    const attrs: NlAttr[] = [attr.u32(C.RTA_TABLE, table)];
    if (dst) attrs.push(attr.bytes(C.RTA_DST, dst.bytes));
    if (gw) attrs.push(attr.bytes(C.RTA_GATEWAY, gw.bytes));
    if (r.dev !== undefined) attrs.push(attr.u32(C.RTA_OIF, r.dev));
    if (src) attrs.push(attr.bytes(C.RTA_PREFSRC, src.bytes));
    if (r.metric !== undefined) attrs.push(attr.u32(C.RTA_PRIORITY, checkInt('metric', r.metric, 0, 0xffffffff)));
    if (r.mtu !== undefined) attrs.push(attr.nest(C.RTA_METRICS, [attr.u32(C.RTAX_MTU, checkInt('mtu', r.mtu, 68, 65535))]));
    const desc = [
      r.type === 'local' ? 'local' : '',
      `${r.dst}`,
      gw ? `via ${r.gateway}` : '',
      r.dev !== undefined ? `dev index ${r.dev}` : '',
      src ? `src ${r.src}` : '',
      table !== C.RT_TABLE_MAIN ? `table ${table}` : '',
      r.onlink ? 'onlink' : '',
    ].filter(Boolean).join(' ');
    return { header, attrs, desc };
  }

  routeAdd(r: RouteSpec): void {
    const { header, attrs, desc } = this.routeMsg(r, false);
    const flags = C.NLM_F_CREATE | (r.replace ? C.NLM_F_REPLACE : C.NLM_F_EXCL);
    this.change(C.RTM_NEWROUTE, flags, header, attrs, `${r.replace ? 'replace' : 'add'} route ${desc}`);
  }

  /** Delete a route; false if no such route (ESRCH). */
  routeDel(r: RouteSpec): boolean {
    const { header, attrs, desc } = this.routeMsg(r, true);
    return this.change(C.RTM_DELROUTE, 0, header, attrs, `delete route ${desc}`, ['ESRCH']);
  }

  routeList(o: RouteListOptions = {}): Route[] {
    if (o.family !== undefined && o.family !== 4 && o.family !== 6) throw new NetlinkArgError('family', o.family, 'must be 4 or 6');
    if (o.table !== undefined && o.table !== 'all') checkInt('table', o.table, 0, 0xffffffff);
    const wantTable = o.table ?? C.RT_TABLE_MAIN;
    const af = o.family ? afOf(o.family) : C.AF_UNSPEC;
    const msgs = this.request(C.RTM_GETROUTE, C.NLM_F_DUMP, encodeRtMsg({ family: af }), [], 'dump routes');
    const out: Route[] = [];
    for (const m of msgs) {
      if (m.type !== C.RTM_NEWROUTE) continue;
      const h = decodeRtMsg(m.payload);
      const family = familyOf(h.family);
      if (!family || (o.family && family !== o.family)) continue;
      if (h.flags & C.RTM_F_CLONED) continue; // IPv6 route cache entries
      const a = payloadAttrs(m, C.RTMSG_LEN);
      const table = a.u32(C.RTA_TABLE) ?? h.table;
      if (wantTable !== 'all' && table !== wantTable) continue;
      const dstRaw = a.get(C.RTA_DST);
      const route: Route = {
        family,
        dst: h.dstLen === 0 ? 'default' : `${ipText(family, dstRaw ?? Buffer.alloc(16))}/${h.dstLen}`,
        scope: C.scopeName(h.scope),
        table,
        protocol: h.protocol,
        type: C.RTN_NAMES[h.type] ?? String(h.type),
        onlink: (h.flags & C.RTNH_F_ONLINK) !== 0,
      };
      const gw = a.get(C.RTA_GATEWAY);
      if (gw) route.gateway = ipText(family, gw);
      const oif = a.u32(C.RTA_OIF);
      if (oif !== undefined) route.dev = oif;
      const src = a.get(C.RTA_PREFSRC);
      if (src) route.src = ipText(family, src);
      const prio = a.u32(C.RTA_PRIORITY);
      if (prio !== undefined) route.metric = prio;
      const mtu = a.nested(C.RTA_METRICS)?.u32(C.RTAX_MTU);
      if (mtu !== undefined) route.mtu = mtu;
      out.push(route);
    }
    return out;
  }

  // ---- policy routing rules -------------------------------------------------------------

  private ruleMsg(r: RuleSpec, del: boolean) {
    if (!r || typeof r !== 'object') throw new NetlinkArgError('rule', r, 'must be an object');
    if (r.family !== undefined && r.family !== 4 && r.family !== 6) throw new NetlinkArgError('family', r.family, 'must be 4 or 6');
    const family = r.family ?? 4;
    const priority = checkInt('priority', r.priority, 1, 32765);
    const table = checkInt('table', r.table, 1, 0xffffffff);
    if (table === C.RT_TABLE_LOCAL || table === C.RT_TABLE_MAIN || table === C.RT_TABLE_DEFAULT) {
      throw new NetlinkArgError('table', r.table, 'must not be one of the kernel\'s own tables (local, main, default)');
    }
    const attrs: NlAttr[] = [attr.u32(C.FRA_PRIORITY, priority), attr.u32(C.FRA_TABLE, table)];
    let fw = '';
    if (r.fwmark !== undefined) {
      const mark = checkInt('fwmark', r.fwmark, 0, 0xffffffff);
      const mask = r.fwmask === undefined ? 0xffffffff : checkInt('fwmask', r.fwmask, 0, 0xffffffff);
      attrs.push(attr.u32(C.FRA_FWMARK, mark), attr.u32(C.FRA_FWMASK, mask));
      fw = ` fwmark 0x${mark.toString(16)}/0x${mask.toString(16)}`;
    } else if (r.fwmask !== undefined) throw new NetlinkArgError('fwmask', r.fwmask, 'needs fwmark');
    const protocol = r.protocol !== undefined ? checkInt('protocol', r.protocol, 0, 255) : del ? undefined : C.RTPROT_STATIC;
    if (protocol !== undefined) attrs.push(attr.u8(C.FRA_PROTOCOL, protocol));
    const header = encodeFibRuleHdr({ family: afOf(family), table: table < 256 ? table : C.RT_TABLE_UNSPEC, action: C.FR_ACT_TO_TBL });
    return { header, attrs, desc: `ipv${family} rule priority ${priority}${fw} lookup ${table}` };
  }

  /** Add a rule (NLM_F_EXCL: an identical rule is EEXIST). */
  ruleAdd(r: RuleSpec): void {
    const { header, attrs, desc } = this.ruleMsg(r, false);
    this.change(C.RTM_NEWRULE, C.NLM_F_CREATE | C.NLM_F_EXCL, header, attrs, `add ${desc}`);
  }

  /** Add the rule unless one with the same priority, mark, mask and table exists. Returns whether it was added. */
  ruleEnsure(r: RuleSpec): boolean {
    const family = r.family ?? 4;
    const mask = r.fwmark === undefined ? undefined : (r.fwmask ?? 0xffffffff);
    const same = this.ruleList(family).some(
      (x) => x.priority === r.priority && x.table === r.table && x.fwmark === r.fwmark && (x.fwmark === undefined || x.fwmask === mask),
    );
    if (same) return false;
    this.ruleAdd(r);
    return true;
  }

  /** Delete a rule; false if no such rule (ENOENT). */
  ruleDel(r: RuleSpec): boolean {
    const { header, attrs, desc } = this.ruleMsg(r, true);
    return this.change(C.RTM_DELRULE, 0, header, attrs, `delete ${desc}`, ['ENOENT']);
  }

  ruleList(family: Family = 4): RuleInfo[] {
    if (family !== 4 && family !== 6) throw new NetlinkArgError('family', family, 'must be 4 or 6');
    const msgs = this.request(C.RTM_GETRULE, C.NLM_F_DUMP, encodeFibRuleHdr({ family: afOf(family) }), [], `dump ipv${family} rules`);
    const out: RuleInfo[] = [];
    for (const m of msgs) {
      if (m.type !== C.RTM_NEWRULE) continue;
      const h = decodeFibRuleHdr(m.payload);
      if (familyOf(h.family) !== family) continue;
      const a = payloadAttrs(m, C.FIB_RULE_HDR_LEN);
      const info: RuleInfo = {
        family,
        priority: a.u32(C.FRA_PRIORITY) ?? 0,
        table: a.u32(C.FRA_TABLE) ?? h.table,
        action: h.action === C.FR_ACT_TO_TBL ? 'to-table' : String(h.action),
      };
      const mark = a.u32(C.FRA_FWMARK);
      if (mark !== undefined) {
        info.fwmark = mark;
        info.fwmask = a.u32(C.FRA_FWMASK) ?? 0xffffffff;
      }
      const proto = a.u8(C.FRA_PROTOCOL);
      if (proto !== undefined) info.protocol = proto;
      out.push(info);
    }
    return out;
  }

  // ---- neighbours -------------------------------------------------------------------------

  neighAdd(n: NeighSpec): void {
    const dev = checkIndex('dev', n.dev);
    const ip = checkIp('ip', n.ip);
    const mac = checkMac('mac', n.mac);
    const permanent = n.permanent ?? true;
    const header = encodeNdMsg({ family: afOf(ip.family), index: dev, state: permanent ? C.NUD_PERMANENT : C.NUD_REACHABLE });
    const flags = C.NLM_F_CREATE | (n.replace === false ? C.NLM_F_EXCL : C.NLM_F_REPLACE);
    this.change(C.RTM_NEWNEIGH, flags, header, [attr.bytes(C.NDA_DST, ip.bytes), attr.bytes(C.NDA_LLADDR, mac)],
      `neighbour ${n.ip} lladdr ${n.mac} dev index ${dev}`);
  }

  /** Delete a neighbour entry; false if it did not exist. */
  neighDel(n: { dev: number; ip: string }): boolean {
    const dev = checkIndex('dev', n.dev);
    const ip = checkIp('ip', n.ip);
    return this.change(C.RTM_DELNEIGH, 0, encodeNdMsg({ family: afOf(ip.family), index: dev }), [attr.bytes(C.NDA_DST, ip.bytes)],
      `delete neighbour ${n.ip} dev index ${dev}`, ['ENOENT']);
  }

  neighList(dev?: number): NeighInfo[] {
    if (dev !== undefined) checkIndex('dev', dev);
    const msgs = this.request(C.RTM_GETNEIGH, C.NLM_F_DUMP, encodeNdMsg({ family: C.AF_UNSPEC }), [], 'dump neighbours');
    const out: NeighInfo[] = [];
    for (const m of msgs) {
      if (m.type !== C.RTM_NEWNEIGH) continue;
      const h = decodeNdMsg(m.payload);
      const family = familyOf(h.family);
      if (!family || (dev !== undefined && h.index !== dev)) continue;
      const a = payloadAttrs(m, C.NDMSG_LEN);
      const dst = a.get(C.NDA_DST);
      if (!dst) continue;
      const ll = a.get(C.NDA_LLADDR);
      const info: NeighInfo = {
        dev: h.index,
        family,
        ip: ipText(family, dst),
        state: C.nudName(h.state),
        permanent: (h.state & C.NUD_PERMANENT) !== 0,
      };
      if (ll && ll.length === 6) info.mac = formatMac(ll);
      out.push(info);
    }
    return out;
  }
}
