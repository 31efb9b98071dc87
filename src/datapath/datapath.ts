/**
 * The node's datapath: the host device pair, the shared pinned maps, the host
 * program, and each endpoint's programs and links. This module turns desired
 * state into kernel state; it holds no policy of its own.
 *
 * Pin layout under --bpf-root:
 *   <root>/mb_*                     global maps (libbpf LIBBPF_PIN_BY_NAME)
 *   <root>/host/from_host           tcx link on the net side of the host pair
 *   <root>/endpoints/<id>/from_container   the tcx link on the lxc veth
 *   <root>/endpoints/<id>/policy    the endpoint's policy map
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfLink, BpfMap, BpfObject, CGROUP_ATTACH, attachCgroup, attachTcx, ensureBpffs, u16Codec, u32Codec, u64Codec } from '../bpf';
import { Netns, RtNetlink, setSysctl } from '../netlink';
import type { AgentConfig } from '../agent/config';
import { IpAddr, formatCidr, formatIp, parseCidr, parseMac } from '../util/ip';
import type { Logger } from '../util/log';
import { MapTable, Undo } from './reconciler';
import * as gen from './maps.gen';
import { EP_CFG_F_IPV4, FAMILY_IPV4, FAMILY_IPV6 } from './constants';
import type { PolicyKey, PolicyValue } from './policymap';

export type EndpointKey = gen.EndpointKey;
export type EndpointInfo = gen.EndpointInfo;
export type IpcacheKey = gen.IpcacheKey;
export type IpcacheValue = gen.IpcacheValue;

export interface EndpointDatapathSpec {
  id: number;
  identity: number;
  ipv4: IpAddr;
  hostIfname: string;
  podIfname: string;
  netnsPath: string;
  mtu: number;
}

export interface EndpointDatapathResult {
  hostIfindex: number;
  hostMac: string;
  podIfindex: number;
  podMac: string;
}

function famCode(a: IpAddr): number {
  return a.family === 4 ? FAMILY_IPV4 : FAMILY_IPV6;
}

export function endpointKey(a: IpAddr): EndpointKey {
  return { addr: Buffer.from(a.bytes), family: famCode(a), pad: Buffer.alloc(3) } as EndpointKey;
}

export function ipcacheKey(a: IpAddr, prefixLen: number): IpcacheKey {
  return { prefixlen: 32 + prefixLen, family: famCode(a), pad: Buffer.alloc(3), addr: Buffer.from(a.bytes) } as IpcacheKey;
}

const keyHex = (codec: { encode(v: any): Buffer }) => (k: unknown) => codec.encode(k).toString('hex');
const sameEncoded = (codec: { encode(v: any): Buffer }) => (a: unknown, b: unknown) => codec.encode(a).equals(codec.encode(b));

export class Datapath {
  readonly endpoints: MapTable<EndpointKey, EndpointInfo>;
  readonly ipcache: MapTable<IpcacheKey, IpcacheValue>;
  readonly maps: {
    endpoints: BpfMap<EndpointKey, EndpointInfo>;
    ipcache: BpfMap<IpcacheKey, IpcacheValue>;
    metrics: BpfMap<gen.MetricsKey, gen.MetricsValue>;
    ct: BpfMap<gen.CtKey, gen.CtValue>;
    node: BpfMap<number, gen.NodeConfig>;
    callPolicy: BpfMap;
    events: BpfMap;
    monitor: BpfMap<number, gen.MonitorConfig>;
    eventsLost: BpfMap<number, bigint>;
    lbServices: BpfMap<gen.LbServiceKey, gen.LbServiceValue>;
    lbBackends: BpfMap<number, gen.LbBackend>;
    lbRevnat: BpfMap<number, gen.LbRevnat>;
    lbAffinity: BpfMap<gen.LbAffinityKey, gen.LbAffinityValue>;
  };
  readonly lbServices: MapTable<gen.LbServiceKey, gen.LbServiceValue>;
  readonly lbBackends: MapTable<number, gen.LbBackend>;
  readonly lbRevnat: MapTable<number, gen.LbRevnat>;
  hostIfindex = 0;
  netIfindex = 0;
  private readonly nl: RtNetlink;

  private constructor(private readonly cfg: AgentConfig, private readonly log: Logger, maps: Datapath['maps']) {
    this.maps = maps;
    this.nl = RtNetlink.open(null);
    this.endpoints = new MapTable('mb_endpoints', maps.endpoints, keyHex(gen.endpointKeyCodec), sameEncoded(gen.endpointInfoCodec));
    this.ipcache = new MapTable('mb_ipcache', maps.ipcache, keyHex(gen.ipcacheKeyCodec), sameEncoded(gen.ipcacheValueCodec));
    this.lbServices = new MapTable('mb_lb_services', maps.lbServices, keyHex(gen.lbServiceKeyCodec), sameEncoded(gen.lbServiceValueCodec));
    this.lbBackends = new MapTable('mb_lb_backends', maps.lbBackends, (k) => String(k), sameEncoded(gen.lbBackendCodec));
    this.lbRevnat = new MapTable('mb_lb_revnat', maps.lbRevnat, (k) => String(k), sameEncoded(gen.lbRevnatCodec));
  }

  get lxcObject(): string {
    return path.join(this.cfg.bpfObjDir, 'bpf_lxc.o');
  }

  get hostObject(): string {
    return path.join(this.cfg.bpfObjDir, 'bpf_host.o');
  }

  endpointPinDir(id: number): string {
    return path.join(this.cfg.bpfRoot, 'endpoints', String(id));
  }

  /** Open (or create) the pinned global maps; nothing is attached yet. */
  static open(cfg: AgentConfig, log: Logger): Datapath {
    ensureBpffs(cfg.bpfRoot);
    for (const f of ['bpf_lxc.o', 'bpf_host.o']) {
      if (!fs.existsSync(path.join(cfg.bpfObjDir, f))) {
        throw new Error(`datapath: BPF object ${path.join(cfg.bpfObjDir, f)} is missing (run the setup: scripts/setup.sh)`);
      }
    }
    // Loading the host object creates every LIBBPF_PIN_BY_NAME map under the
    // root, or reuses the pinned ones when they already exist (restart).
    const obj = BpfObject.open(path.join(cfg.bpfObjDir, 'bpf_host.o'), { pinRoot: cfg.bpfRoot });
    try {
      obj.load();
    } finally {
      obj.close();
    }
    const pin = (n: string) => BpfMap.fromPin(path.join(cfg.bpfRoot, n), n);
    const maps = {
      endpoints: pin('mb_endpoints').withCodecs(gen.endpointKeyCodec, gen.endpointInfoCodec),
      ipcache: pin('mb_ipcache').withCodecs(gen.ipcacheKeyCodec, gen.ipcacheValueCodec),
      metrics: pin('mb_metrics').withCodecs(gen.metricsKeyCodec, gen.metricsValueCodec),
      ct: pin('mb_ct').withCodecs(gen.ctKeyCodec, gen.ctValueCodec),
      node: pin('mb_node').withCodecs(u32Codec, gen.nodeConfigCodec),
      callPolicy: pin('mb_call_policy'),
      events: pin('mb_events'),
      monitor: pin('mb_monitor').withCodecs(u32Codec, gen.monitorConfigCodec),
      eventsLost: pin('mb_events_lost').withCodecs(u32Codec, u64Codec),
      lbServices: pin('mb_lb_services').withCodecs(gen.lbServiceKeyCodec, gen.lbServiceValueCodec),
      lbBackends: pin('mb_lb_backends').withCodecs(u32Codec, gen.lbBackendCodec),
      lbRevnat: pin('mb_lb_revnat').withCodecs(u16Codec, gen.lbRevnatCodec),
      lbAffinity: pin('mb_lb_affinity').withCodecs(gen.lbAffinityKeyCodec, gen.lbAffinityValueCodec),
    };
    return new Datapath(cfg, log, maps);
  }

  /**
   * Ensure the host device pair, its address and route, the node config map and
   * the host program. Idempotent: existing devices are kept, so pods keep their
   * connectivity across agent restarts.
   */
  setupNode(router: IpAddr): void {
    const { hostDevice, netDevice } = this.cfg;
    let host = this.nl.linkGet(hostDevice);
    let net = this.nl.linkGet(netDevice);
    if (!host || !net || host.kind !== 'veth' || host.linkIndex !== net.index) {
      if (host) this.nl.linkDel(host.index);
      if (net) this.nl.linkDel(net.index);
      this.nl.linkAddVeth({ name: hostDevice, peerName: netDevice, mtu: this.cfg.mtu });
      host = this.nl.linkGet(hostDevice)!;
      net = this.nl.linkGet(netDevice)!;
      this.log.info('created host device pair', { host: hostDevice, net: netDevice });
    }
    for (const dev of [hostDevice, netDevice]) {
      trySysctl(null, `net.ipv6.conf.${dev}.disable_ipv6`, '1');
    }
    trySysctl(null, `net.ipv4.conf.${netDevice}.rp_filter`, '0');
    // NodePort replies reach the stack through the host device with a node address as source.
    trySysctl(null, `net.ipv4.conf.${hostDevice}.rp_filter`, '0');
    trySysctl(null, `net.ipv4.conf.${hostDevice}.accept_local`, '1');
    trySysctl(null, 'net.ipv4.ip_forward', '1');
    this.nl.linkSet(host.index, { up: true, noarp: true });
    this.nl.linkSet(net.index, { up: true });
    const routerCidr = `${formatIp(router)}/${router.family === 4 ? 32 : 128}`;
    if (!this.nl.addrList(host.index).some((a) => a.address === formatIp(router))) this.nl.addrAdd(host.index, routerCidr);
    const podCidr = formatCidr(parseCidr(this.cfg.podCidr));
    this.nl.routeAdd({ dst: podCidr, dev: host.index, src: formatIp(router), scope: 'link', replace: true });
    // ClusterIPs are reached the same way: the host's packets to them meet from_host, which load-balances.
    this.nl.routeAdd({ dst: this.cfg.serviceCidr, dev: host.index, src: formatIp(router), scope: 'link', replace: true });
    this.hostIfindex = host.index;
    this.netIfindex = net.index;
    const routerV4 = Buffer.alloc(4);
    if (router.family === 4) router.bytes.copy(routerV4, 0, 0, 4);
    this.maps.node.update(0, {
      host_ifindex: host.index,
      net_ifindex: net.index,
      host_mac: parseMac(host.mac),
      net_mac: parseMac(net.mac),
      router_ipv4: routerV4,
      router_ipv6: Buffer.alloc(16),
      flags: 0,
    } as unknown as gen.NodeConfig);
    this.attachHostProgram(net.index);
  }

  /**
   * Socket-level load balancing: bpf_sock.o's connect4/sendmsg4/recvmsg4/
   * getpeername4 on the dedicated cgroup (--socket-lb-cgroup), with the same
   * maps as the packet path. The cgroup must be below a cgroup v2 mount and not
   * its root: every host process sits in the root.
   */
  attachSocketLb(cgroup: string): void {
    const mounts = fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter((l) => / - cgroup2 /.test(l))
      .map((l) => l.split(' ')[4]);
    const mount = mounts.find((m) => cgroup.startsWith(m + '/'));
    if (!mount) throw new Error(`socket-lb-cgroup: ${cgroup} is not below a cgroup v2 mount (${mounts.join(', ') || 'none'}), or is the root itself`);
    fs.mkdirSync(cgroup, { recursive: true });
    const dir = path.join(this.cfg.bpfRoot, 'sock');
    fs.mkdirSync(dir, { recursive: true });
    const obj = BpfObject.open(path.join(this.cfg.bpfObjDir, 'bpf_sock.o'), { pinRoot: this.cfg.bpfRoot });
    try {
      obj.load();
      for (const hook of Object.keys(CGROUP_ATTACH) as (keyof typeof CGROUP_ATTACH)[]) {
        const pinPath = path.join(dir, hook);
        const link = attachCgroup(obj.program(`sock_${hook}`), cgroup, hook);
        try {
          const old = BpfLink.fromPin(pinPath);
          fs.unlinkSync(pinPath);
          old.close();
        } catch {
          /* none before */
        }
        link.pin(pinPath);
        link.close();
      }
    } finally {
      obj.close();
    }
    this.log.info('socket-level load balancing attached', { cgroup });
  }

  /** Attach from_netdev (NodePort) at the tcx ingress of each external device named by --devices. */
  attachDevices(): string[] {
    const problems: string[] = [];
    for (const dev of this.cfg.devices) {
      const link = this.nl.linkGet(dev);
      if (!link) {
        problems.push(`device ${dev} (--devices) does not exist`);
        continue;
      }
      try {
        this.attachHostProgram(link.index, 'from_netdev', `netdev_${dev}`);
      } catch (e) {
        problems.push(`device ${dev}: ${(e as Error).message}`);
      }
    }
    return problems;
  }

  /** Load bpf_host.o and attach a program at a device's tcx ingress, replacing any older link without a gap. */
  private attachHostProgram(ifindex: number, program = 'from_host', pinName = 'from_host'): void {
    const dir = path.join(this.cfg.bpfRoot, 'host');
    fs.mkdirSync(dir, { recursive: true });
    const pinPath = path.join(dir, pinName);
    const obj = BpfObject.open(this.hostObject, { pinRoot: this.cfg.bpfRoot });
    try {
      obj.load();
      const link = attachTcx(obj.program(program), ifindex, 'ingress');
      let old: BpfLink | undefined;
      try {
        old = BpfLink.fromPin(pinPath);
      } catch {
        old = undefined;
      }
      if (old) {
        fs.unlinkSync(pinPath);
        try {
          old.detach();
        } catch {
          /* the device it was attached to may be gone */
        }
        old.close();
      }
      link.pin(pinPath);
      link.close();
    } finally {
      obj.close();
    }
  }

  /** Node addresses: identity host in the ipcache, HOST entries in the endpoints map. */
  hostAddresses(): IpAddr[] {
    const out: IpAddr[] = [];
    for (const a of this.nl.addrList()) {
      if (a.family !== 4) continue; // IPv6 is not wired in the datapath yet
      out.push({ family: 4, bytes: ipBytes(a.address) });
    }
    return out;
  }

  /**
   * Create an endpoint's datapath: veth pair (peer created in the pod netns),
   * pod addressing and routes, programs loaded with the endpoint's constants,
   * tail-call entry, tcx links. Every step is undone if a later one fails.
   */
  createEndpoint(spec: EndpointDatapathSpec, router: IpAddr, undo: Undo, policy: { key: PolicyKey; value: PolicyValue }[]): EndpointDatapathResult {
    const ns = Netns.open(spec.netnsPath);
    undo.push('close netns', () => ns.close());
    const podNl = RtNetlink.open(ns);
    undo.push('close netlink', () => podNl.close());
    if (podNl.linkGet(spec.podIfname)) {
      throw new EndpointConflict(`interface "${spec.podIfname}" already exists in netns ${spec.netnsPath}`);
    }
    if (this.nl.linkGet(spec.hostIfname)) this.nl.linkDel(spec.hostIfname); // leftover of a crashed attempt
    this.nl.linkAddVeth({ name: spec.hostIfname, peerName: spec.podIfname, peerNetns: ns, mtu: spec.mtu });
    undo.push(`delete veth ${spec.hostIfname}`, () => void this.nl.linkDel(spec.hostIfname));
    const host = this.nl.linkGet(spec.hostIfname);
    const pod = podNl.linkGet(spec.podIfname);
    if (!host || !pod) throw new Error(`veth ${spec.hostIfname}/${spec.podIfname} vanished after creation`);

    // IPv6 is not wired in the datapath yet: keep both ends quiet on it.
    trySysctl(null, `net.ipv6.conf.${spec.hostIfname}.disable_ipv6`, '1');
    trySysctl(ns, `net.ipv6.conf.${spec.podIfname}.disable_ipv6`, '1');
    this.nl.linkSet(host.index, { up: true });
    podNl.linkSet(pod.index, { up: true });
    const routerText = formatIp(router);
    podNl.addrAdd(pod.index, `${formatIp(spec.ipv4)}/32`);
    podNl.routeAdd({ dst: `${routerText}/32`, dev: pod.index, scope: 'link' });
    podNl.routeAdd({ dst: 'default', gateway: routerText, dev: pod.index, onlink: true });

    this.attachEndpointPrograms(spec, host.index, parseMac(host.mac), parseMac(pod.mac), undo, policy);
    podNl.close();
    ns.close();
    return { hostIfindex: host.index, hostMac: host.mac, podIfindex: pod.index, podMac: pod.mac };
  }

  /** Open an endpoint's lxc object with its constants set (not loaded yet). */
  private openEndpointObject(c: { id: number; identity: number; ipv4: IpAddr; hostIfindex: number; hostMac: Buffer; podMac: Buffer }): BpfObject {
    const obj = BpfObject.open(this.lxcObject, { pinRoot: this.cfg.bpfRoot });
    const ipv4 = Buffer.alloc(4);
    c.ipv4.bytes.copy(ipv4, 0, 0, 4);
    obj.setConst(
      'CONFIG',
      gen.epConfigCodec.encode({
        ep_id: c.id,
        sec_id: c.identity,
        ifindex: c.hostIfindex,
        flags: EP_CFG_F_IPV4,
        ipv4,
        ipv6: Buffer.alloc(16),
        mac: c.podMac,
        node_mac: c.hostMac,
      }),
    );
    return obj;
  }

  private attachEndpointPrograms(
    spec: EndpointDatapathSpec,
    hostIfindex: number,
    hostMac: Buffer,
    podMac: Buffer,
    undo: Undo,
    policyEntries: { key: PolicyKey; value: PolicyValue }[],
  ): void {
    const dir = this.endpointPinDir(spec.id);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    undo.push(`remove pins ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
    const obj = this.openEndpointObject({ id: spec.id, identity: spec.identity, ipv4: spec.ipv4, hostIfindex, hostMac, podMac });
    try {
      obj.load();
      const policyMap = obj.map('mb_policy').withCodecs(gen.policyKeyCodec, gen.policyValueCodec);
      // The policy goes in before anything can run: an endpoint without its policy sends nothing.
      for (const e of policyEntries) policyMap.update(e.key, e.value);
      policyMap.pin(path.join(dir, 'policy'));
      // Order matters: the policy program must be reachable before traffic can arrive.
      const policy = obj.program('policy_ingress');
      this.maps.callPolicy.update(u32(spec.id), u32(policy.fd));
      undo.push(`clear mb_call_policy[${spec.id}]`, () => void this.maps.callPolicy.delete(u32(spec.id)));
      // One tcx link per endpoint: every path *to* the pod tail-calls policy_ingress.
      const link = attachTcx(obj.program('from_container'), hostIfindex, 'ingress');
      try {
        link.pin(path.join(dir, 'from_container'));
      } finally {
        link.close();
      }
    } finally {
      obj.close();
    }
  }

  openPolicyMap(id: number): BpfMap<PolicyKey, PolicyValue> {
    const p = path.join(this.endpointPinDir(id), 'policy');
    return BpfMap.fromPin(p, `mb_policy of endpoint ${id}`).withCodecs(gen.policyKeyCodec, gen.policyValueCodec);
  }

  /**
   * Reload an endpoint's programs with new constants (a new identity) and swap
   * them in without a gap: the tail-call slot is replaced atomically and each
   * tcx link is updated in place (BPF_LINK_UPDATE). The policy map is reused.
   */
  reloadEndpoint(id: number, c: { identity: number; ipv4: IpAddr; hostIfindex: number; hostMac: Buffer; podMac: Buffer }): void {
    const dir = this.endpointPinDir(id);
    const policyMap = BpfMap.fromPin(path.join(dir, 'policy'), `mb_policy of endpoint ${id}`);
    const obj = this.openEndpointObject({ id, ...c });
    try {
      obj.reuseMap('mb_policy', policyMap.fd);
      obj.load();
      this.maps.callPolicy.update(u32(id), u32(obj.program('policy_ingress').fd));
      const link = BpfLink.fromPin(path.join(dir, 'from_container'));
      try {
        link.update(obj.program('from_container'));
      } finally {
        link.close();
      }
    } finally {
      obj.close();
      policyMap.close();
    }
  }

  /** Is the endpoint's datapath in place? Returns the problems found. */
  checkEndpoint(id: number, hostIfname: string): string[] {
    const problems: string[] = [];
    const host = this.nl.linkGet(hostIfname);
    if (!host) problems.push(`host veth ${hostIfname} is missing`);
    const dir = this.endpointPinDir(id);
    for (const prog of ['from_container']) {
      const p = path.join(dir, prog);
      try {
        const l = BpfLink.fromPin(p);
        const info = l.info();
        l.close();
        if (host && info.ifindex !== host.index) problems.push(`link ${p} is attached to ifindex ${info.ifindex}, not ${hostIfname} (${host.index})`);
      } catch (e) {
        problems.push(`link ${p}: ${(e as Error).message}`);
      }
    }
    if (this.maps.callPolicy.lookup(u32(id)) === undefined) problems.push(`mb_call_policy[${id}] is empty`);
    return problems;
  }

  /** Check the pod side: interface, address and default route inside the pod's netns. */
  checkPodSide(netnsPath: string, ifname: string, ip: string, router: string): string[] {
    let ns: Netns;
    try {
      ns = Netns.open(netnsPath);
    } catch (e) {
      return [`netns ${netnsPath}: ${(e as Error).message}`];
    }
    const problems: string[] = [];
    let nl: RtNetlink | undefined;
    try {
      nl = RtNetlink.open(ns);
      const link = nl.linkGet(ifname);
      if (!link) return [`interface ${ifname} is missing in netns ${netnsPath}`];
      if (!link.up) problems.push(`interface ${ifname} in netns ${netnsPath} is down`);
      if (!nl.addrList(link.index).some((a) => a.address === ip)) problems.push(`address ${ip} is missing on ${ifname} in netns ${netnsPath}`);
      const routes = nl.routeList({ family: 4 });
      if (!routes.some((r) => (r.dst === 'default' || r.dst === '0.0.0.0/0') && r.gateway === router)) {
        problems.push(`default route via ${router} is missing in netns ${netnsPath}`);
      }
    } catch (e) {
      problems.push(`netns ${netnsPath}: ${(e as Error).message}`);
    } finally {
      nl?.close();
      ns.close();
    }
    return problems;
  }

  /** Remove an endpoint's programs, pins and veth. Best effort, idempotent. */
  deleteEndpoint(id: number, hostIfname: string): string[] {
    const errors: string[] = [];
    const step = (what: string, fn: () => void) => {
      try {
        fn();
      } catch (e) {
        errors.push(`${what}: ${(e as Error).message}`);
      }
    };
    step(`clear mb_call_policy[${id}]`, () => void this.maps.callPolicy.delete(u32(id)));
    const dir = this.endpointPinDir(id);
    step(`remove pins ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
    // Deleting the host side removes the pair (and the links attached to it).
    step(`delete veth ${hostIfname}`, () => void this.nl.linkDel(hostIfname));
    return errors;
  }

  linkByName(name: string) {
    return this.nl.linkGet(name);
  }

  /** Interface names by index (for flow records). */
  linkNames(): Map<number, string> {
    return new Map(this.nl.linkList().map((l) => [l.index, l.name]));
  }

  close(): void {
    this.nl.close();
    for (const m of Object.values(this.maps)) m.close();
  }
}

export class EndpointConflict extends Error {}

function ipBytes(text: string): Buffer {
  const b = Buffer.alloc(16);
  text.split('.').forEach((p, i) => (b[i] = Number(p)));
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function trySysctl(ns: Netns | null, key: string, value: string): void {
  try {
    setSysctl(ns, key, value);
  } catch {
    /* a missing knob (e.g. IPv6 disabled in the kernel) is not fatal */
  }
}

