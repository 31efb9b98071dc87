/**
 * The node's datapath: the host device pair, the shared pinned maps, the host
 * program, and each endpoint's programs and links. This module turns desired
 * state into kernel state; it holds no policy of its own.
 *
 * Every map the agent owns is written only through its desired-state table
 * (MapTable), registered with the node's Reconciler (retries, periodic resync
 * repairing drift, per-table status).
 *
 * bpf_lxc.o is loaded once per object version and its programs are shared by
 * every endpoint; per-endpoint values live in mb_ep_config / mb_lxc and each
 * endpoint's policy map is reached through mb_policy_maps. Creating an
 * endpoint therefore verifies no program.
 *
 * Pin layout under --bpf-root:
 *   <root>/mb_*                              global maps (libbpf LIBBPF_PIN_BY_NAME)
 *   <root>/programs/lxc-<sha>/{from_container,policy_ingress}
 *                                            the shared endpoint programs of one
 *                                            bpf_lxc.o version (reused across restarts)
 *   <root>/host/from_host, host/netdev_<dev> tcx links of bpf_host.o
 *   <root>/endpoints/<id>/policy             the endpoint's policy map
 *
 * An endpoint's veth runs the shared from_container as a direct-action
 * cls_bpf filter on its clsact ingress hook (src/netlink/tc.ts): unlike a tcx
 * attach it costs no RCU grace period, so pod start is not bound by one; the
 * filter lives as long as the veth and is replaced atomically on upgrade.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfLink, BpfMap, BpfObject, BpfProgram, CGROUP_ATTACH, attachCgroup, attachTcx, ensureBpffs, fdRefCodec, u16Codec, u32Codec, u64Codec } from '../bpf';
import { Netns, RtNetlink, setSysctl, tcBpfAttach, tcBpfList, tcClsactEnsure } from '../netlink';
import type { AgentConfig } from '../agent/config';
import { IpAddr, formatCidr, formatIp, parseCidr, parseMac } from '../util/ip';
import type { Logger } from '../util/log';
import { FdRef, MapTable, Reconciler, TableState, Undo, fdRefOpts, u32KeyOpts } from './reconciler';
import * as gen from './maps.gen';
import { MetricsKey, metricsKeyCodec } from './metricsmap';
import { EP_CFG_F_ADDR_POLICY, EP_CFG_F_IPV4, FAMILY_IPV4, FAMILY_IPV6 } from './constants';
import { PolicyKey, PolicyValue, createPolicyMap, policyTable } from './policymap';

export type EndpointKey = gen.EndpointKey;
export type EndpointInfo = gen.EndpointInfo;
export type IpcacheKey = gen.IpcacheKey;
export type IpcacheValue = gen.IpcacheValue;

export interface EndpointDatapathSpec {
  id: number;
  identity: number;
  /** the endpoint's policy names address blocks */
  addressRules?: boolean;
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

/** What the shared programs need to know about one endpoint (mb_ep_config). */
export interface EndpointConfig {
  id: number;
  identity: number;
  ipv4: IpAddr;
  hostIfindex: number;
  /** host-side veth MAC (the pod's router MAC) */
  hostMac: Buffer;
  /** pod-side MAC */
  podMac: Buffer;
  /** the endpoint's policy names address blocks (EP_CFG_F_ADDR_POLICY) */
  addressRules?: boolean;
  /** bumped with every change of the endpoint's policy map: conntrack's cached verdicts older than it are rechecked */
  policyEpoch?: number;
}

const POLICY_GROUP = 'mb_policy (per endpoint)';
/**
 * Emptied policy maps kept installed in their mb_policy_maps slot for the next
 * endpoint that gets the same id: writing a map-of-maps slot waits for an RCU
 * grace period (~10 ms), so ADD and DEL recycle slots instead. Spares beyond
 * this many are released in the background, one per event-loop turn.
 */
const SPARE_POLICY_MAPS = 64;

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
const sameEncoded = <V>(codec: { encode(v: V): Buffer }) => (a: V, b: V) => codec.encode(a).equals(codec.encode(b));
const hexKeyOpts = <K, V>(k: { encode(v: K): Buffer }, v: { encode(v: V): Buffer }) => ({ keyId: keyHex(k), same: sameEncoded(v) });

function epConfigValue(c: EndpointConfig): gen.EpConfig {
  const ipv4 = Buffer.alloc(4);
  c.ipv4.bytes.copy(ipv4, 0, 0, 4);
  const flags = EP_CFG_F_IPV4 | (c.addressRules ? EP_CFG_F_ADDR_POLICY : 0);
  return { ep_id: c.id, sec_id: c.identity, ifindex: c.hostIfindex, flags, policy_epoch: c.policyEpoch ?? 1, ipv4, ipv6: Buffer.alloc(16), mac: c.podMac, node_mac: c.hostMac };
}

const EMPTY_EP_CONFIG = gen.epConfigCodec.decode(Buffer.alloc(gen.epConfigCodec.size));
const EMPTY_NODE_CONFIG = gen.nodeConfigCodec.decode(Buffer.alloc(gen.nodeConfigCodec.size));
const EMPTY_MONITOR_CONFIG = gen.monitorConfigCodec.decode(Buffer.alloc(gen.monitorConfigCodec.size));

export class Datapath {
  readonly reconciler: Reconciler;
  /** Desired-state tables: the only writers of the maps the agent owns. */
  readonly endpoints: MapTable<EndpointKey, EndpointInfo>;
  readonly ipcache: MapTable<IpcacheKey, IpcacheValue>;
  readonly ipblock: MapTable<IpcacheKey, number>;
  readonly epConfig: MapTable<number, gen.EpConfig>;
  readonly lxc: MapTable<number, number>;
  readonly policyMaps: MapTable<number, FdRef>;
  readonly callPolicy: MapTable<number, FdRef>;
  readonly nodeConfig: MapTable<number, gen.NodeConfig>;
  readonly monitorConfig: MapTable<number, gen.MonitorConfig>;
  readonly lbServices: MapTable<gen.LbServiceKey, gen.LbServiceValue>;
  readonly lbBackends: MapTable<number, gen.LbBackend>;
  readonly lbRevnat: MapTable<number, gen.LbRevnat>;
  /** Maps the datapath itself writes (conntrack, counters, events): read, GC'd, never reconciled. */
  readonly maps: {
    endpoints: BpfMap<EndpointKey, EndpointInfo>;
    ipcache: BpfMap<IpcacheKey, IpcacheValue>;
    metrics: BpfMap<MetricsKey, gen.MetricsValue>;
    ct: BpfMap<gen.CtKey, gen.CtValue>;
    node: BpfMap<number, gen.NodeConfig>;
    events: BpfMap;
    eventsLost: BpfMap<number, bigint>;
    lbServices: BpfMap<gen.LbServiceKey, gen.LbServiceValue>;
    lbBackends: BpfMap<number, gen.LbBackend>;
    lbRevnat: BpfMap<number, gen.LbRevnat>;
    lbAffinity: BpfMap<gen.LbAffinityKey, gen.LbAffinityValue>;
  };
  hostIfindex = 0;
  netIfindex = 0;
  private readonly nl: RtNetlink;
  private nlAsync?: RtNetlink;
  private closed = false;
  /** Each endpoint's policy map and its table, by endpoint id. */
  private readonly policyTables = new Map<number, PolicyMapState>();
  /** Emptied policy maps still installed in mb_policy_maps, by endpoint id (oldest first). */
  private readonly sparePolicy = new Map<number, PolicyMapState>();
  private spareReaper?: NodeJS.Timeout;
  /** Policy-map slots being installed on a worker thread, by endpoint id. */
  private readonly installing = new Map<number, Promise<void>>();

  private constructor(
    private readonly cfg: AgentConfig,
    private readonly log: Logger,
    maps: Datapath['maps'],
    raw: { epConfig: BpfMap; lxc: BpfMap; policyMaps: BpfMap; callPolicy: BpfMap; monitor: BpfMap; ipblock: BpfMap },
    private readonly programs: SharedPrograms,
  ) {
    this.maps = maps;
    this.nl = RtNetlink.open(null);
    const r = (this.reconciler = new Reconciler(log.child({ component: 'reconciler' })));
    this.endpoints = r.add(new MapTable('mb_endpoints', maps.endpoints, hexKeyOpts(gen.endpointKeyCodec, gen.endpointInfoCodec)));
    this.ipcache = r.add(new MapTable('mb_ipcache', maps.ipcache, hexKeyOpts(gen.ipcacheKeyCodec, gen.ipcacheValueCodec)));
    this.ipblock = r.add(new MapTable('mb_ipblock', raw.ipblock.withCodecs(gen.ipcacheKeyCodec, u32Codec), { keyId: keyHex(gen.ipcacheKeyCodec), same: (a, b) => a === b }));
    const sameEp = sameEncoded(gen.epConfigCodec);
    this.epConfig = r.add(new MapTable('mb_ep_config', raw.epConfig.withCodecs(u32Codec, gen.epConfigCodec), u32KeyOpts(sameEp, EMPTY_EP_CONFIG)));
    this.lxc = r.add(new MapTable('mb_lxc', raw.lxc.withCodecs(u32Codec, u32Codec), u32KeyOpts((a, b) => a === b)));
    this.policyMaps = r.add(new MapTable('mb_policy_maps', raw.policyMaps.withCodecs(u32Codec, fdRefCodec), fdRefOpts()));
    this.callPolicy = r.add(new MapTable('mb_call_policy', raw.callPolicy.withCodecs(u32Codec, fdRefCodec), fdRefOpts()));
    this.nodeConfig = r.add(new MapTable('mb_node', maps.node, u32KeyOpts(sameEncoded(gen.nodeConfigCodec), EMPTY_NODE_CONFIG)));
    this.monitorConfig = r.add(
      new MapTable('mb_monitor', raw.monitor.withCodecs(u32Codec, gen.monitorConfigCodec), u32KeyOpts(sameEncoded(gen.monitorConfigCodec), EMPTY_MONITOR_CONFIG)),
    );
    this.lbServices = r.add(new MapTable('mb_lb_services', maps.lbServices, hexKeyOpts(gen.lbServiceKeyCodec, gen.lbServiceValueCodec)));
    this.lbBackends = r.add(new MapTable('mb_lb_backends', maps.lbBackends, u32KeyOpts(sameEncoded(gen.lbBackendCodec))));
    this.lbRevnat = r.add(new MapTable('mb_lb_revnat', maps.lbRevnat, u32KeyOpts(sameEncoded(gen.lbRevnatCodec))));
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

  /** Open (or create) the pinned global maps and the shared endpoint programs; nothing is attached yet. */
  static open(cfg: AgentConfig, log: Logger): Datapath {
    ensureBpffs(cfg.bpfRoot);
    for (const f of ['bpf_lxc.o', 'bpf_host.o']) {
      if (!fs.existsSync(path.join(cfg.bpfObjDir, f))) {
        throw new Error(`datapath: BPF object ${path.join(cfg.bpfObjDir, f)} is missing (run the setup: scripts/setup.sh)`);
      }
    }
    // The shared endpoint programs first: loading bpf_lxc.o creates every
    // LIBBPF_PIN_BY_NAME map under the root, or reuses the pinned ones (restart).
    const programs = loadSharedPrograms(cfg, log);
    const pin = (n: string) => BpfMap.fromPin(path.join(cfg.bpfRoot, n), n);
    const maps = {
      endpoints: pin('mb_endpoints').withCodecs(gen.endpointKeyCodec, gen.endpointInfoCodec),
      ipcache: pin('mb_ipcache').withCodecs(gen.ipcacheKeyCodec, gen.ipcacheValueCodec),
      metrics: pin('mb_metrics').withCodecs(metricsKeyCodec, gen.metricsValueCodec),
      ct: pin('mb_ct').withCodecs(gen.ctKeyCodec, gen.ctValueCodec),
      node: pin('mb_node').withCodecs(u32Codec, gen.nodeConfigCodec),
      events: pin('mb_events'),
      eventsLost: pin('mb_events_lost').withCodecs(u32Codec, u64Codec),
      lbServices: pin('mb_lb_services').withCodecs(gen.lbServiceKeyCodec, gen.lbServiceValueCodec),
      lbBackends: pin('mb_lb_backends').withCodecs(u32Codec, gen.lbBackendCodec),
      lbRevnat: pin('mb_lb_revnat').withCodecs(u16Codec, gen.lbRevnatCodec),
      lbAffinity: pin('mb_lb_affinity').withCodecs(gen.lbAffinityKeyCodec, gen.lbAffinityValueCodec),
    };
    const raw = {
      epConfig: pin('mb_ep_config'),
      lxc: pin('mb_lxc'),
      policyMaps: pin('mb_policy_maps'),
      callPolicy: pin('mb_call_policy'),
      monitor: pin('mb_monitor'),
      ipblock: pin('mb_ipblock'),
    };
    return new Datapath(cfg, log, maps, raw, programs);
  }

  /** Ids of the shared endpoint programs (what every endpoint's link and prog-array slot must run). */
  get sharedProgramIds(): { fromContainer: number; policyIngress: number } {
    return { fromContainer: this.programs.fromContainerId, policyIngress: this.programs.policyIngressId };
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
    this.nodeConfig.upsert(0, {
      host_ifindex: host.index,
      net_ifindex: net.index,
      host_mac: parseMac(host.mac),
      net_mac: parseMac(net.mac),
      router_ipv4: routerV4,
      router_ipv6: Buffer.alloc(16),
      flags: 0,
      // An agent restart keeps the overlay in use until attachOverlay confirms it.
      tunnel_ifindex: this.tunnelIfindex || (this.maps.node.lookup(0)?.tunnel_ifindex ?? 0),
    } as unknown as gen.NodeConfig);
    this.nodeConfig.flush();
    this.attachHostProgram(net.index);
  }

  /** The overlay's VXLAN device (cluster mode): from_overlay at its ingress, its ifindex in mb_node. */
  attachOverlay(ifindex: number): void {
    this.attachHostProgram(ifindex, 'from_overlay', 'from_overlay');
    this.tunnelIfindex = ifindex;
    const cur = this.nodeConfig.get(0);
    if (cur) {
      this.nodeConfig.upsert(0, { ...cur, tunnel_ifindex: ifindex });
      this.nodeConfig.flush();
    }
  }
  private tunnelIfindex = 0;

  /** The monitor switch and aggregation (mb_monitor[0]). */
  setMonitorConfig(c: gen.MonitorConfig): void {
    this.monitorConfig.upsert(0, c);
    this.monitorConfig.flush();
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
        const prog = obj.program(`sock_${hook}`);
        try {
          const link = attachCgroup(prog, cgroup, hook);
          try {
            const old = BpfLink.fromPin(pinPath);
            fs.unlinkSync(pinPath);
            old.close();
          } catch {
            /* none before */
          }
          link.pin(pinPath);
          link.close();
        } finally {
          prog.close();
        }
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
      const prog = obj.program(program);
      let old: BpfLink | undefined;
      try {
        old = BpfLink.fromPin(pinPath);
      } catch {
        old = undefined;
      }
      try {
        // Same device: swap the program in place; otherwise attach anew and drop the old link.
        if (old && old.info().ifindex === ifindex) {
          old.update(prog);
          return;
        }
        const link = attachTcx(prog, ifindex, 'ingress');
        if (old) {
          fs.unlinkSync(pinPath);
          try {
            old.detach();
          } catch {
            /* the device it was attached to may be gone */
          }
        }
        link.pin(pinPath);
        link.close();
      } finally {
        old?.close();
        prog.close();
      }
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
   * pod addressing and routes, its policy map filled with `policy`, its
   * configuration, the tail-call slot, and last the tcx link running the shared
   * from_container. Every step is undone if a later one fails. No program is
   * loaded: the endpoint runs the node's shared programs.
   */
  createEndpoint(spec: EndpointDatapathSpec, router: IpAddr, undo: Undo, policy: TableState): EndpointDatapathResult {
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

    this.attachEndpoint(
      { id: spec.id, identity: spec.identity, ipv4: spec.ipv4, hostIfindex: host.index, hostMac: parseMac(host.mac), podMac: parseMac(pod.mac), addressRules: spec.addressRules, policyEpoch: 1 },
      undo,
      policy,
    );
    podNl.close();
    ns.close();
    return { hostIfindex: host.index, hostMac: host.mac, podIfindex: pod.index, podMac: pod.mac };
  }

  /**
   * Policy map -> mb_policy_maps -> configuration -> tail-call slot -> link.
   * A packet can never run on the endpoint before all of it is in place.
   */
  private attachEndpoint(c: EndpointConfig, undo: Undo, policy: TableState): void {
    const dir = this.endpointPinDir(c.id);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    undo.push(`remove pins ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));

    // A spare map left in this id's slot by an earlier endpoint is reused as is
    // (empty, already installed): no map-of-maps write, no grace period.
    const spare = this.sparePolicy.get(c.id);
    this.sparePolicy.delete(c.id);
    const map = spare?.map ?? createPolicyMap(c.id, this.cfg.instance);
    const table = spare?.table ?? this.reconciler.add(policyTable(`mb_policy of endpoint ${c.id}`, map), POLICY_GROUP);
    undo.push(`release policy map of endpoint ${c.id}`, () => {
      this.policyTables.delete(c.id);
      this.retirePolicyMap(c.id, { map, table });
    });
    table.adoptState(policy);
    table.flush();
    map.pin(path.join(dir, 'policy'));
    this.policyTables.set(c.id, { map, table });

    const steps: [MapTable<number, any>, number, unknown][] = [
      [this.policyMaps, c.id, { fd: map.fd, id: map.id }],
      [this.epConfig, c.id, epConfigValue(c)],
      [this.lxc, c.hostIfindex, c.id],
      [this.callPolicy, c.id, { fd: this.programs.policyIngress.fd, id: this.programs.policyIngressId }],
    ];
    for (const [t, key, value] of steps) {
      if (t === this.policyMaps && t.get(key)?.id === map.id) continue; // a recycled slot: already there
      t.upsert(key, value);
      if (t !== this.policyMaps) {
        undo.push(`remove ${t.name}[${key}]`, () => {
          t.delete(key);
          t.flush();
        });
      }
      t.flush();
    }
    tcClsactEnsure(this.nl, c.hostIfindex);
    tcBpfAttach(this.nl, { ifindex: c.hostIfindex, direction: 'ingress', progFd: this.programs.fromContainer.fd, name: 'from_container' });
  }

  /**
   * Make sure endpoint id `id` has an empty policy map installed in its
   * mb_policy_maps slot, ready for attachEndpoint. Installing one waits for an
   * RCU grace period; it happens on a worker thread, so the agent keeps serving.
   */
  ensurePolicySlot(id: number): Promise<void> {
    if (this.sparePolicy.has(id) || this.policyTables.has(id)) return Promise.resolve();
    const inFlight = this.installing.get(id);
    if (inFlight) return inFlight;
    const p = (async () => {
      const map = createPolicyMap(id, this.cfg.instance);
      const table = this.reconciler.add(policyTable(`mb_policy of endpoint ${id}`, map), POLICY_GROUP);
      try {
        this.policyMaps.upsert(id, { fd: map.fd, id: map.id });
        await this.policyMaps.flushAsync();
      } catch (e) {
        if (this.policyMaps.get(id)?.id === map.id) this.policyMaps.delete(id);
        this.reconciler.remove(table);
        table.close();
        throw e;
      }
      this.sparePolicy.set(id, { map, table });
    })().finally(() => this.installing.delete(id));
    this.installing.set(id, p);
    return p;
  }

  /** Install policy-map slots for ids likely to come next, in the background. */
  prewarmPolicySlots(ids: number[]): void {
    for (const id of ids) {
      this.ensurePolicySlot(id).catch((e) => this.log.warn('preparing a policy map slot failed', { endpoint: id, error: e }));
    }
  }

  /** The endpoint's policy table (desired state of its policy map). */
  policyTable(id: number): MapTable<PolicyKey, PolicyValue> | undefined {
    return this.policyTables.get(id)?.table;
  }

  /** The policy epoch the kernel holds for an endpoint (restore continues after it). */
  kernelPolicyEpoch(id: number): number | undefined {
    return this.epConfig.kernelGet(id)?.policy_epoch;
  }

  /**
   * Remove the conntrack entries of an address (both directions), in the
   * background: after an endpoint's policy epoch wraps around, no entry may
   * carry an old verdict under a reused epoch.
   */
  async flushConntrackOf(ip: IpAddr): Promise<number> {
    const { keys, count } = await this.maps.ct.rawEntriesAsync();
    const ks = this.maps.ct.keySize;
    const addr = ip.bytes.subarray(0, 16);
    const hit: number[] = [];
    for (let i = 0; i < count; i++) {
      const o = i * ks;
      if (keys.subarray(o, o + 16).equals(addr) || keys.subarray(o + 16, o + 32).equals(addr)) hit.push(i);
    }
    if (!hit.length) return 0;
    const batch = Buffer.alloc(hit.length * ks);
    hit.forEach((i, j) => keys.copy(batch, j * ks, i * ks, (i + 1) * ks));
    this.maps.ct.deleteRawBatch(batch, hit.length);
    return hit.length;
  }

  /** A new identity (or addresses) for an endpoint: a configuration write, no program is touched. */
  setEndpointConfig(c: EndpointConfig): void {
    this.epConfig.upsert(c.id, epConfigValue(c));
    this.epConfig.flush();
  }

  /**
   * Adopt an endpoint that exists in the kernel (agent restart): its policy map
   * becomes a table whose starting desired state is what the kernel holds, its
   * configuration and slots are desired again (the next resync repairs them),
   * and a veth still running an older program version (or an older agent's
   * per-endpoint tcx link) is moved to the shared program without a gap.
   * Returns the problems found.
   */
  restoreEndpoint(c: EndpointConfig): string[] {
    const problems: string[] = [];
    const dir = this.endpointPinDir(c.id);
    let map: BpfMap<PolicyKey, PolicyValue> | undefined;
    try {
      map = BpfMap.fromPin(path.join(dir, 'policy'), `mb_policy of endpoint ${c.id}`).withCodecs(gen.policyKeyCodec, gen.policyValueCodec);
      const table = policyTable(`mb_policy of endpoint ${c.id}`, map);
      table.replaceAll([...table.kernelEntries()]);
      table.markClean();
      this.policyTables.set(c.id, { map, table: this.reconciler.add(table, POLICY_GROUP) });
      this.policyMaps.adopt(c.id, { fd: map.fd, id: map.id });
    } catch (e) {
      map?.close();
      problems.push(`policy map: ${(e as Error).message}`);
    }
    this.epConfig.upsert(c.id, epConfigValue(c));
    this.lxc.adopt(c.hostIfindex, c.id);
    this.callPolicy.adopt(c.id, { fd: this.programs.policyIngress.fd, id: this.programs.policyIngressId });
    try {
      // The configuration the (maybe new) program reads is in place before the program runs.
      for (const t of [this.policyMaps, this.epConfig, this.lxc, this.callPolicy] as MapTable<number, unknown>[]) t.flush();
    } catch (e) {
      problems.push((e as Error).message);
    }
    try {
      const f = tcBpfList(this.nl, c.hostIfindex, 'ingress').find((x) => x.priority === 1 && x.handle === 1);
      if (!f || f.progId !== this.programs.fromContainerId) {
        tcClsactEnsure(this.nl, c.hostIfindex);
        tcBpfAttach(this.nl, { ifindex: c.hostIfindex, direction: 'ingress', progFd: this.programs.fromContainer.fd, name: 'from_container' });
      }
      // An endpoint made by an older agent runs its own program through a pinned tcx link: retire it now that the filter runs.
      const legacy = path.join(dir, 'from_container');
      if (fs.existsSync(legacy)) {
        const link = BpfLink.fromPin(legacy);
        try {
          link.detach();
        } finally {
          link.close();
          fs.rmSync(legacy, { force: true });
        }
      }
    } catch (e) {
      problems.push(`from_container on ifindex ${c.hostIfindex}: ${(e as Error).message}`);
    }
    return problems;
  }

  /** Is the endpoint's datapath in place? Returns the problems found. */
  checkEndpoint(id: number, hostIfname: string): string[] {
    const problems: string[] = [];
    const host = this.nl.linkGet(hostIfname);
    if (!host) problems.push(`host veth ${hostIfname} is missing`);
    if (host) {
      const f = tcBpfList(this.nl, host.index, 'ingress').find((x) => x.priority === 1 && x.handle === 1);
      if (!f) problems.push(`${hostIfname} has no from_container filter`);
      else if (f.progId !== this.programs.fromContainerId) problems.push(`${hostIfname} runs program ${f.progId}, not the shared from_container (${this.programs.fromContainerId})`);
      else if (!f.directAction) problems.push(`${hostIfname}: the from_container filter is not direct-action`);
    }
    if (this.callPolicy.kernelGet(id)?.id !== this.programs.policyIngressId) problems.push(`mb_call_policy[${id}] does not hold the shared policy_ingress`);
    const table = this.policyTables.get(id);
    if (!table) problems.push(`endpoint ${id} has no policy map`);
    else if (this.policyMaps.kernelGet(id)?.id !== this.policyMaps.get(id)?.id) problems.push(`mb_policy_maps[${id}] does not hold the endpoint's policy map`);
    if (this.epConfig.kernelGet(id)?.ep_id !== id) problems.push(`mb_ep_config[${id}] is not set`);
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

  /**
   * Remove an endpoint: the veth first (its link goes with it, so nothing runs
   * for it any more), then its slot, configuration and policy map, then its
   * pins. Best effort and idempotent; returns what could not be done.
   */
  async deleteEndpoint(id: number, hostIfname: string, hostIfindex?: number): Promise<string[]> {
    const errors: string[] = [];
    const step = (what: string, fn: () => void) => {
      try {
        fn();
      } catch (e) {
        errors.push(`${what}: ${(e as Error).message}`);
      }
    };
    // Deleting the host side removes the pair (and the link attached to it). The kernel takes
    // ~20 ms to answer (it waits for RCU), on a worker thread: other requests are served meanwhile.
    try {
      await this.asyncNetlink().linkDelAsync(hostIfname);
    } catch (e) {
      errors.push(`delete veth ${hostIfname}: ${(e as Error).message}`);
    }
    if (id > 0) {
      for (const t of [this.callPolicy, this.epConfig] as MapTable<number, unknown>[]) {
        step(`remove ${t.name}[${id}]`, () => {
          t.delete(id);
          t.flush();
        });
      }
      const st = this.policyTables.get(id);
      this.policyTables.delete(id);
      // Nothing can reach the endpoint any more: empty its map and keep the slot for the next endpoint with this id.
      if (st) step(`empty the policy map of endpoint ${id}`, () => this.retirePolicyMap(id, st));
    }
    if (hostIfindex) {
      step(`remove mb_lxc[${hostIfindex}]`, () => {
        if (this.lxc.get(hostIfindex) === id || id === 0) this.lxc.delete(hostIfindex);
        this.lxc.flush();
      });
    }
    if (id > 0) {
      const dir = this.endpointPinDir(id);
      step(`remove pins ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
    }
    return errors;
  }

  /**
   * Keep an endpoint's policy map as the spare of its id: emptied, still
   * installed in mb_policy_maps (a map never installed is simply closed).
   */
  private retirePolicyMap(id: number, st: PolicyMapState): void {
    if (this.policyMaps.get(id)?.id !== st.map.id) {
      // Never installed (a create undone early): just let it go.
      this.reconciler.remove(st.table);
      st.table.close();
      return;
    }
    st.table.clearAll();
    this.sparePolicy.set(id, st);
    this.scheduleSpareRelease();
  }

  /**
   * Release spares beyond SPARE_POLICY_MAPS, oldest first, one at a time
   * (each costs a grace period, waited for on a worker thread).
   */
  private scheduleSpareRelease(): void {
    if (this.spareReaper || this.sparePolicy.size <= SPARE_POLICY_MAPS) return;
    this.spareReaper = setTimeout(async () => {
      const [id, spare] = this.sparePolicy.entries().next().value as [number, PolicyMapState];
      this.sparePolicy.delete(id);
      try {
        this.policyMaps.delete(id);
        await this.policyMaps.flushAsync();
      } catch (e) {
        this.log.error('releasing a spare policy map failed', { endpoint: id, error: e });
      }
      this.reconciler.remove(spare.table);
      spare.table.close();
      this.spareReaper = undefined;
      if (!this.closed) this.scheduleSpareRelease();
    }, 50);
    this.spareReaper.unref();
  }

  /** A netlink socket of the agent's namespace for requests on a worker thread (only used that way). */
  private asyncNetlink(): RtNetlink {
    this.nlAsync ??= RtNetlink.open(null);
    return this.nlAsync;
  }

  linkByName(name: string) {
    return this.nl.linkGet(name);
  }

  /** Interface names by index (for flow records). */
  linkNames(): Map<number, string> {
    return new Map(this.nl.linkList().map((l) => [l.index, l.name]));
  }

  close(): void {
    this.closed = true;
    this.reconciler.stop();
    this.nl.close();
    this.nlAsync?.close();
    if (this.spareReaper) clearTimeout(this.spareReaper);
    for (const st of [...this.policyTables.values(), ...this.sparePolicy.values()]) st.table.close();
    this.policyTables.clear();
    this.sparePolicy.clear();
    for (const t of [this.epConfig, this.lxc, this.policyMaps, this.callPolicy, this.monitorConfig, this.ipblock]) t.close();
    for (const m of Object.values(this.maps)) m.close();
    this.programs.fromContainer.close();
    this.programs.policyIngress.close();
  }
}

interface PolicyMapState {
  map: BpfMap<PolicyKey, PolicyValue>;
  table: MapTable<PolicyKey, PolicyValue>;
}

interface SharedPrograms {
  fromContainer: BpfProgram;
  policyIngress: BpfProgram;
  fromContainerId: number;
  policyIngressId: number;
}

/**
 * The endpoint programs of this bpf_lxc.o, loaded and verified once: pinned
 * under <root>/programs/lxc-<sha of the object>, so a restart with the same
 * object reuses them and endpoints need no update; a new object is loaded
 * once and restored endpoints are moved to it (Datapath.restoreEndpoint).
 */
function loadSharedPrograms(cfg: AgentConfig, log: Logger): SharedPrograms {
  const obj = path.join(cfg.bpfObjDir, 'bpf_lxc.o');
  const sha = crypto.createHash('sha256').update(fs.readFileSync(obj)).digest('hex').slice(0, 16);
  const base = path.join(cfg.bpfRoot, 'programs');
  const dir = path.join(base, `lxc-${sha}`);
  const names = ['from_container', 'policy_ingress'] as const;
  let progs: BpfProgram[] | undefined;
  try {
    progs = names.map((n) => BpfProgram.fromPin(path.join(dir, n), n));
    // The maps must be pinned too (a root emptied behind our back keeps no pins).
    fs.accessSync(path.join(cfg.bpfRoot, 'mb_ep_config'));
  } catch {
    for (const p of progs ?? []) p.close();
    progs = undefined;
  }
  if (!progs) {
    const t0 = Date.now();
    const o = BpfObject.open(obj, { pinRoot: cfg.bpfRoot });
    try {
      // A map whose layout changed with this object version is recreated (its entries are lost; the
      // agent's tables fill it again, conntrack starts over).
      const dropped = o.dropIncompatiblePins();
      if (dropped.length) log.warn('pinned maps with an older layout were recreated', { maps: dropped });
      o.load();
      progs = names.map((n) => o.program(n));
    } finally {
      o.close();
    }
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    progs.forEach((p, i) => p.pin(path.join(dir, names[i])));
    log.info('endpoint programs loaded', { object: obj, version: sha, ms: Date.now() - t0 });
  }
  return {
    fromContainer: progs[0],
    policyIngress: progs[1],
    fromContainerId: progs[0].info().id,
    policyIngressId: progs[1].info().id,
  };
}

/** Remove pinned program versions other than the current one (after every endpoint moved off them). */
export function pruneSharedPrograms(bpfRoot: string, keepIds: { fromContainer: number }): string[] {
  const base = path.join(bpfRoot, 'programs');
  const removed: string[] = [];
  if (!fs.existsSync(base)) return removed;
  for (const d of fs.readdirSync(base)) {
    const p = path.join(base, d, 'from_container');
    try {
      const prog = BpfProgram.fromPin(p);
      const id = prog.info().id;
      prog.close();
      if (id === keepIds.fromContainer) continue;
    } catch {
      /* a broken version directory goes too */
    }
    fs.rmSync(path.join(base, d), { recursive: true, force: true });
    removed.push(d);
  }
  return removed;
}

export class EndpointConflict extends Error {}

function ipBytes(text: string): Buffer {
  const b = Buffer.alloc(16);
  text.split('.').forEach((p, i) => (b[i] = Number(p)));
  return b;
}

function trySysctl(ns: Netns | null, key: string, value: string): void {
  try {
    setSysctl(ns, key, value);
  } catch {
    /* a missing knob (e.g. IPv6 disabled in the kernel) is not fatal */
  }
}

