/**
 * Shared scaffolding of the datapath tests (BPF_PROG_TEST_RUN): where the
 * compiled objects are, a per-run pin root, verdict codes, and the datapath's
 * constants under the names the tests use — taken from src/datapath/constants.ts,
 * which test/unit/constants.test.ts checks against the C headers.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as C from '../../src/datapath/constants';
import { BpfMap, BpfObject, BpfProgram, TestRunResult, ensureBpffs, fdRefCodec, skbCtx, testRun, u32Codec } from '../../src/bpf';
import * as gen from '../../src/datapath/maps.gen';
import { createPolicyMap } from '../../src/datapath/policymap';
import { RtNetlink } from '../../src/netlink';

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

// ---------------------------------------------------------------------------
// The shared datapath fixture: the objects loaded once, per-run pins, and
// endpoints installed exactly as the agent installs them (configuration,
// ifindex -> id, policy map in mb_policy_maps, tail-call slot).


export interface DpEndpoint {
  id: number;
  secId: number;
  /** the endpoint's host-side veth; set by addEndpoint (BPF_PROG_TEST_RUN needs an existing device for ctx->ifindex) */
  ifindex: number;
  ip: Buffer;
  mac: Buffer;
  nodeMac: Buffer;
  /** enforce policy (false: EP_CFG_F_NO_POLICY) */
  policy?: boolean;
  /** the policy names address blocks (EP_CFG_F_ADDR_POLICY) */
  addressRules?: boolean;
  /** conntrack caches verdicts under this epoch (0, the fixture's default: never cached) */
  policyEpoch?: number;
}

export class DatapathFixture {
  readonly pinRoot: string;
  private readonly devPrefix: string;
  private readonly closers: { close(): void }[] = [];
  private readonly devs: string[] = [];
  private nl?: RtNetlink;
  progs!: { from_container: BpfProgram; policy_ingress: BpfProgram; from_host: BpfProgram; from_netdev: BpfProgram };
  /** each endpoint's policy map, by endpoint id */
  readonly policy: Record<number, BpfMap<gen.PolicyKey, gen.PolicyValue>> = {};

  constructor(readonly tag: string) {
    this.pinRoot = testPinRoot(tag);
    this.devPrefix = `mbd${crypto.randomBytes(3).toString('hex')}`;
  }

  own<T extends { close(): void }>(x: T): T {
    this.closers.push(x);
    return x;
  }

  /** A pinned global map of this run. */
  pin(name: string): BpfMap {
    return this.own(BpfMap.fromPin(path.join(this.pinRoot, name), name));
  }

  /** Further programs of the objects loaded (fixtures built on the datapath's sources), by name. */
  readonly extra: Record<string, BpfProgram> = {};

  /**
   * Load bpf_lxc.o and bpf_host.o once (their maps pinned by name under the
   * run's root), or fixture objects built from them (o.lxc, o.host) with
   * extra programs to keep (o.extra).
   */
  load(o: { lxc?: string; host?: string; extra?: { lxc?: string[]; host?: string[] } } = {}): this {
    ensureBpffs(this.pinRoot);
    this.nl = RtNetlink.open(null);
    const progs: Record<string, BpfProgram> = {};
    for (const [obj, names, extra] of [
      [o.lxc ?? LXC_OBJ, ['from_container', 'policy_ingress'], o.extra?.lxc ?? []],
      [o.host ?? HOST_OBJ, ['from_host', 'from_netdev'], o.extra?.host ?? []],
    ] as const) {
      const ob = BpfObject.open(obj, { pinRoot: this.pinRoot });
      try {
        ob.load();
        for (const n of names) progs[n] = this.own(ob.program(n));
        for (const n of extra) this.extra[n] = this.own(ob.program(n));
      } finally {
        ob.close();
      }
    }
    this.progs = progs as DatapathFixture['progs'];
    return this;
  }

  /**
   * Install an endpoint as the agent does: a real veth (its host side's
   * ifindex becomes e.ifindex), mb_ep_config, mb_lxc, an empty policy map in
   * mb_policy_maps, mb_endpoints and ipcache entries, and the tail-call slot
   * (unless callPolicy is false).
   */
  addEndpoint(e: DpEndpoint, o: { callPolicy?: boolean } = {}): void {
    const name = `${this.devPrefix}${e.id}`;
    this.nl!.linkAddVeth({ name, peerName: `${name}p` });
    this.devs.push(name);
    e.ifindex = this.nl!.linkGet(name)!.index;
    const map = this.own(createPolicyMap(e.id));
    this.policy[e.id] = map;
    this.pin('mb_policy_maps').withCodecs(u32Codec, fdRefCodec).update(e.id, { fd: map.fd, id: 0 });
    this.configure(e);
    this.pin('mb_lxc').withCodecs(u32Codec, u32Codec).update(e.ifindex, e.id);
    this.pin('mb_endpoints').withCodecs(gen.endpointKeyCodec, gen.endpointInfoCodec)
      .update({ addr: e.ip, family: 4 }, { ifindex: e.ifindex, ep_id: e.id, flags: 0, sec_id: e.secId, mac: e.mac, node_mac: e.nodeMac });
    this.pin('mb_ipcache').withCodecs(gen.ipcacheKeyCodec, gen.ipcacheValueCodec)
      .update({ prefixlen: 64, family: 4, addr: e.ip }, { sec_id: e.secId, tunnel_family: 0, flags: 0, tunnel_addr: Buffer.alloc(16) });
    if (o.callPolicy !== false) this.pin('mb_call_policy').withCodecs(u32Codec, fdRefCodec).update(e.id, { fd: this.progs.policy_ingress.fd, id: 0 });
  }

  /** (Re)write an endpoint's mb_ep_config entry from its fields. */
  configure(e: DpEndpoint): void {
    this.pin('mb_ep_config').withCodecs(u32Codec, gen.epConfigCodec).update(e.id, {
      ep_id: e.id, sec_id: e.secId, ifindex: e.ifindex,
      flags: EP_CFG_F_IPV4 | (e.policy === false ? EP_CFG_F_NO_POLICY : 0) | (e.addressRules ? C.EP_CFG_F_ADDR_POLICY : 0),
      ipv4: e.ip, ipv6: Buffer.alloc(16), mac: e.mac, node_mac: e.nodeMac, policy_epoch: e.policyEpoch ?? 0,
    });
  }

  /** An address block (mb_ipblock): prefix -> identity; identity undefined removes it. */
  setIpblock(ip: Buffer, prefixLen: number, identity: number | undefined): void {
    const m = this.pin('mb_ipblock').withCodecs(gen.ipcacheKeyCodec, u32Codec);
    const k = { prefixlen: 32 + prefixLen, family: 4, addr: ip } as gen.IpcacheKey;
    if (identity === undefined) m.delete(k);
    else m.update(k, identity);
  }

  /** A node address (ENDPOINT_F_HOST, identity host). */
  addHostAddress(ip: Buffer): void {
    this.pin('mb_endpoints').withCodecs(gen.endpointKeyCodec, gen.endpointInfoCodec)
      .update({ addr: ip, family: 4 }, { ifindex: 0, ep_id: 0, flags: ENDPOINT_F_HOST, sec_id: ID_HOST, mac: Buffer.alloc(6), node_mac: Buffer.alloc(6) });
    this.setIpcache(ip, 32, ID_HOST);
  }

  setIpcache(ip: Buffer, prefixLen: number, secId: number): void {
    this.pin('mb_ipcache').withCodecs(gen.ipcacheKeyCodec, gen.ipcacheValueCodec)
      .update({ prefixlen: 32 + prefixLen, family: 4, addr: ip }, { sec_id: secId, tunnel_family: 0, flags: 0, tunnel_addr: Buffer.alloc(16) });
  }

  /** from_container as it runs on endpoint e's veth. */
  fromContainer(e: DpEndpoint, data: Buffer, extra: { mark?: number } = {}): TestRunResult {
    return testRun(this.progs.from_container, { data, ctx: skbCtx({ ifindex: e.ifindex, mark: extra.mark }) });
  }

  /** policy_ingress as a caller's tail call runs it for endpoint e (source identity, rev_nat, pending trace). */
  policyIngress(e: DpEndpoint, data: Buffer, src: { identity: number; revNat?: number; trace?: number; mark?: number }): TestRunResult {
    return testRun(this.progs.policy_ingress, { data, ctx: skbCtx({ cb: [src.identity, src.trace ?? 0, src.revNat ?? 0, e.id, 0], mark: src.mark }) });
  }

  /**
   * Run a program by the name the tests use: `from_container_X` on endpoint
   * X's veth, `policy_ingress_X` as a tail call into X (cb0 = source
   * identity), `from_host` / `from_netdev` on node devices.
   */
  runNamed(name: string, eps: Record<string, DpEndpoint>, data: Buffer, o: { cb0?: number; repeat?: number } = {}): TestRunResult {
    const m = /^(from_container|policy_ingress)_(\w+)$/.exec(name);
    if (m) {
      const e = eps[m[2]];
      if (!e) throw new Error(`runNamed: no endpoint ${m[2]}`);
      const ctx = m[1] === 'from_container' ? skbCtx({ ifindex: e.ifindex }) : skbCtx({ cb: [o.cb0 ?? 0, 0, 0, e.id, 0] });
      return testRun(m[1] === 'from_container' ? this.progs.from_container : this.progs.policy_ingress, { data, ctx, repeat: o.repeat });
    }
    if (name !== 'from_host' && name !== 'from_netdev') throw new Error(`runNamed: unknown program ${name}`);
    return testRun(this.progs[name], { data, ctx: skbCtx({}), repeat: o.repeat });
  }

  /** A bpf_host.o program on a node device (ctx->ifindex 0 unless given). */
  runHost(prog: 'from_host' | 'from_netdev', data: Buffer, extra: { ifindex?: number; mark?: number } = {}): TestRunResult {
    return testRun(this.progs[prog], { data, ctx: skbCtx({ ifindex: extra.ifindex, mark: extra.mark }) });
  }

  close(): void {
    for (const c of this.closers.reverse()) {
      try { c.close(); } catch { /* keep cleaning */ }
    }
    for (const d of this.devs) {
      try { this.nl?.linkDel(d); } catch { /* keep cleaning */ }
    }
    this.nl?.close();
    fs.rmSync(this.pinRoot, { recursive: true, force: true });
  }
}
