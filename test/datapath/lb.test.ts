/**
 * Service load balancing in the datapath (bpf/lib/lb.h, bpf_lxc.c,
 * bpf_host.c) on crafted packets with BPF_PROG_TEST_RUN:
 *
 *   - from_container: frontend lookup, DNAT with valid IP/TCP/UDP checksums
 *     (recomputed here), the CT_SERVICE entry keeping a flow on its backend,
 *     random and Maglev selection, session affinity and its timeout,
 *     terminating and removed backends, a frontend without backends (ICMP
 *     port unreachable back into the pod, drop 158 counted and reported),
 *     egress policy against the backend's identity, hairpin (pod -> own
 *     service -> itself) both ways
 *   - reverse NAT of replies in the client's policy_ingress (from a local
 *     backend's from_container, and from_host for a remote backend)
 *   - from_host: host -> ClusterIP -> local backend, reply reversed in the
 *     backend's from_container
 *   - from_netdev: NodePort DNAT, reply reversed; anything else untouched
 *
 * Everything is pinned under a per-run root /sys/fs/bpf/mbtest-lb-<rand>,
 * removed in after() even on failure. Needs root (BPF) and the built objects.
 *
 * Run: npx tsc -p . && node --test dist/test/datapath/lb.test.js
 */
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfMap, BpfObject, RingBufReader, u16Codec, u32Codec } from '../../src/bpf';
import * as gen from '../../src/datapath/maps.gen';
import { MetricsKey, metricsKeyCodec } from '../../src/datapath/metricsmap';
import {
  ETH_HLEN,
  ETH_P_ARP,
  ETH_P_IPV6,
  ICMP_DEST_UNREACH,
  ICMP_PORT_UNREACH,
  IPPROTO_ICMP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  TCP_ACK,
  TCP_FIN,
  TCP_RST,
  TCP_SYN,
  arpRequestFrame,
  ethernet,
  icmpEcho,
  inetChecksum,
  ip4,
  ip4Str,
  ipv4ChecksumOk,
  ipv4L4Frame,
  l4ChecksumState,
  l4Ports,
  mac,
  parseEth,
  parseIpv4,
  tcp,
  udp,
} from '../helpers/packet';
import { CT_EGRESS, CT_INGRESS, CT_SERVICE, DIR_EGRESS, DIR_INGRESS, DROP_NO_SERVICE, DROP_POLICY, DROP_UNROUTABLE, ENDPOINT_F_HOST, EP_CFG_F_IPV4, FORWARDED, HOST_OBJ, ID_HOST, ID_WORLD, LB_BACKEND_ACTIVE, LB_BACKEND_TERMINATING, LB_MAGLEV_M, LB_SVC_F_AFFINITY, LB_SVC_F_CLUSTERIP, LB_SVC_F_MAGLEV, LB_SVC_F_NODEPORT, LXC_OBJ, ROOT, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, DatapathFixture } from '../helpers/datapath';

const fx = new DatapathFixture('lb');

// maps.h
const HAIRPIN = ip4('169.254.42.1');
const ID_REMOTE = 3000;

// ---- topology ----
const ROUTER = ip4('10.200.0.1');
const NODE_IP = ip4('192.168.1.10');
const REMOTE = ip4('10.2.0.5'); // a pod on another node
const WORLD = ip4('8.8.8.8');
const NODE = {
  host_ifindex: 201, net_ifindex: 202,
  host_mac: mac('02:00:00:00:02:01'), net_mac: mac('02:00:00:00:02:02'),
  router_ipv4: ROUTER, router_ipv6: Buffer.alloc(16), flags: 0, tunnel_ifindex: 0,
};
const NETDEV_MAC = mac('52:54:00:00:00:01');
const GW_MAC = mac('52:54:00:00:00:fe');

interface Ep { name: string; id: number; secId: number; ifindex: number; ip: Buffer; mac: Buffer; nodeMac: Buffer }

function ep(name: string, id: number): Ep {
  const h = id.toString(16).padStart(2, '0');
  return { name, id, secId: 2000 + id, ifindex: 100 + id, ip: ip4(`10.1.0.${id}`), mac: mac(`0a:00:00:00:00:${h}`), nodeMac: mac(`fe:00:00:00:00:${h}`) };
}

const C = ep('C', 31); // the client
const B1 = ep('B1', 32);
const B2 = ep('B2', 33);
const B3 = ep('B3', 34);
const EPS = [C, B1, B2, B3];
const EPS_BY_NAME: Record<string, Ep> = Object.fromEntries(EPS.map((e) => [e.name, e]));

// Backend ids: B1..B3 = 1..3, REMOTE = 4, the client itself = 5 (hairpin), ROUTER = 6.
const BE: Record<number, { addr: Buffer; port: number }> = {
  1: { addr: B1.ip, port: 8080 }, 2: { addr: B2.ip, port: 8080 }, 3: { addr: B3.ip, port: 8080 },
  4: { addr: REMOTE, port: 8080 }, 5: { addr: C.ip, port: 8080 }, 6: { addr: ROUTER, port: 8080 },
};
const BY_ADDR = (a: Buffer) => Number(Object.entries(BE).find(([, b]) => b.addr.equals(a))?.[0] ?? 0);

// ---- state ----
let metrics: BpfMap<MetricsKey, gen.MetricsValue>;
let ct: BpfMap<gen.CtKey, gen.CtValue>;
let services: BpfMap<gen.LbServiceKey, gen.LbServiceValue>;
let backends: BpfMap<number, gen.LbBackend>;
let revnat: BpfMap<number, gen.LbRevnat>;
let affinity: BpfMap<gen.LbAffinityKey, gen.LbAffinityValue>;
const policy = fx.policy;
let reader: RingBufReader | undefined;
const events: { reason: number; srcLabel: number; dstLabel: number; source: number }[] = [];

async function mark(): Promise<number> {
  let n = -1;
  while (n !== events.length) {
    n = events.length;
    await new Promise((r) => setTimeout(r, 20));
  }
  return n;
}

async function dropEvent(reason: number, from: number) {
  for (let i = 0; i < 100; i++) {
    const e = events.slice(from).find((x) => x.reason === reason);
    if (e) return e;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`no drop event with reason ${reason}`);
}

function metric(reason: number, dir: number): { count: bigint; bytes: bigint } {
  const vs = metrics.lookupPerCpu({ reason, dir }) ?? [];
  return vs.reduce((a, v) => ({ count: a.count + v.count, bytes: a.bytes + v.bytes }), { count: 0n, bytes: 0n });
}

function nowSec(): number {
  return Number(process.hrtime.bigint() / 1_000_000_000n);
}

// ---- services ----
interface Svc { addr: Buffer; port: number; proto?: number; revNat: number; slots: number[]; flags?: number; timeout?: number }

function svcKey(addr: Buffer, port: number, proto: number, slot: number): gen.LbServiceKey {
  return { addr, dport: port, slot, proto, family: 4, scope: 0 };
}

/** Write a frontend: slot 0 + slots 1..n, the reverse NAT entry; old extra slots removed. */
function putService(s: Svc): void {
  const proto = s.proto ?? IPPROTO_TCP;
  s.slots.forEach((id, i) => services.update(svcKey(s.addr, s.port, proto, i + 1), { backend_id: id, count: 0, rev_nat_index: 0, flags: 0 }));
  for (let i = s.slots.length + 1; services.lookup(svcKey(s.addr, s.port, proto, i)); i++) services.delete(svcKey(s.addr, s.port, proto, i));
  services.update(svcKey(s.addr, s.port, proto, 0), {
    backend_id: s.timeout ?? 0, count: s.slots.length, rev_nat_index: s.revNat, flags: s.flags ?? LB_SVC_F_CLUSTERIP,
  });
  revnat.update(s.revNat, { addr: s.addr, port: s.port, family: 4 });
}

function putBackend(id: number, flags = LB_BACKEND_ACTIVE): void {
  backends.update(id, { addr: BE[id].addr, port: BE[id].port, proto: IPPROTO_TCP, flags, family: 4 });
}

// Frontends (a fresh one per test where state matters).
let svcSeq = 0;
function frontend(): Buffer {
  svcSeq++;
  return ip4(`10.96.${svcSeq >> 8}.${svcSeq & 0xff}`);
}

// ---- packets ----
let portSeq = 40000;
function port(): number {
  return portSeq++;
}

function tcpOut(from: Ep, dst: Buffer, sport: number, dport: number, flags = TCP_SYN): Buffer {
  return ipv4L4Frame({ srcMac: from.mac, dstMac: from.nodeMac, src: from.ip, dst, proto: IPPROTO_TCP, seg: tcp({ src: from.ip, dst, sport, dport, flags, payload: Buffer.from('lb-test') }) });
}

function udpOut(from: Ep, dst: Buffer, sport: number, dport: number, noChecksum = false): Buffer {
  return ipv4L4Frame({ srcMac: from.mac, dstMac: from.nodeMac, src: from.ip, dst, proto: IPPROTO_UDP, seg: udp({ src: from.ip, dst, sport, dport, payload: Buffer.from('lb-udp'), noChecksum }) });
}

/** A frame arriving from the host stack (from_host) or the network (from_netdev). */
function tcpIn(src: Buffer, dst: Buffer, sport: number, dport: number, flags = TCP_SYN, macs = { src: NODE.host_mac, dst: NODE.host_mac }): Buffer {
  return ipv4L4Frame({ srcMac: macs.src, dstMac: macs.dst, src, dst, proto: IPPROTO_TCP, seg: tcp({ src, dst, sport, dport, flags, payload: Buffer.from('lb-in') }) });
}

function run(prog: string, pkt: Buffer, expect: { verdict: number; reason: number; dir: number; cb0?: number }) {
  const before = metric(expect.reason, expect.dir);
  const r = fx.runNamed(prog, EPS_BY_NAME, pkt, { cb0: expect.cb0 });
  const now = metric(expect.reason, expect.dir);
  assert.equal(r.retval, expect.verdict, `${prog}: verdict`);
  assert.equal(now.count - before.count, 1n, `${prog}: metric {reason ${expect.reason}, dir ${expect.dir}} count`);
  assert.equal(now.bytes - before.bytes, BigInt(pkt.length), `${prog}: metric bytes`);
  return r;
}

interface Delivered { ep: Ep; ip: ReturnType<typeof parseIpv4>; l3: Buffer; sport: number; dport: number }

/** The packet was delivered into a local pod (policy_ingress): which one, and its IPv4 view, checksums verified. */
function delivered(data: Buffer): Delivered {
  const eth = parseEth(data);
  const e = EPS.find((x) => x.mac.equals(eth.dst));
  assert.ok(e, `delivered into a pod (dst mac ${[...eth.dst].map((b) => b.toString(16)).join(':')})`);
  assert.deepEqual(eth.src, e.nodeMac, 'routed by the pod\'s router MAC');
  return view(data, e);
}

function view(data: Buffer, e: Ep): Delivered {
  const l3 = data.subarray(ETH_HLEN);
  const ip = parseIpv4(l3);
  assert.ok(ipv4ChecksumOk(ip.header), 'IPv4 header checksum valid');
  const st = l4ChecksumState(l3);
  assert.notEqual(st, 'bad', 'L4 checksum valid');
  const { sport, dport } = l4Ports(l3);
  return { ep: e, ip, l3, sport, dport };
}

/** C -> frontend from C's from_container, delivered into a local backend (forwarded at ingress). */
function viaService(pkt: Buffer, from = 'from_container_C'): Delivered {
  const r = run(from, pkt, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
  return delivered(r.data);
}

function ctKey(saddr: Buffer, daddr: Buffer, proto: number, sport: number, dport: number, flags: number): gen.CtKey {
  return { saddr, daddr, sport, dport, nexthdr: proto, flags, family: 4 };
}

// Maglev flow hash, as lb4_hash in bpf/lib/lb.h (raw network-order values, little-endian loads).
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
const swap16 = (v: number) => ((v & 0xff) << 8) | (v >>> 8);
function lb4Hash(saddr: Buffer, daddr: Buffer, sport: number, dport: number, proto: number): number {
  let h = fmix32((Math.imul(saddr.readUInt32LE(0), 0x9e3779b1) ^ daddr.readUInt32LE(0)) >>> 0);
  h = fmix32((h ^ Math.imul(((swap16(sport) << 16) | swap16(dport)) >>> 0, 0xcc9e2d51)) >>> 0);
  return fmix32((h ^ proto) >>> 0);
}

// ---- setup ----
before(() => {
  if (!fs.existsSync(LXC_OBJ) || !fs.existsSync(HOST_OBJ)) execFileSync('make', ['-s', '-C', path.join(ROOT, 'bpf')], { stdio: 'inherit' });
  fx.load();
  for (const e of EPS) fx.addEndpoint(e);
  for (const a of [ROUTER, NODE_IP]) fx.addHostAddress(a);
  fx.setIpcache(ip4('10.2.0.0'), 16, ID_REMOTE);
  metrics = fx.pin('mb_metrics').withCodecs(metricsKeyCodec, gen.metricsValueCodec);
  ct = fx.pin('mb_ct').withCodecs(gen.ctKeyCodec, gen.ctValueCodec);
  services = fx.pin('mb_lb_services').withCodecs(gen.lbServiceKeyCodec, gen.lbServiceValueCodec);
  backends = fx.pin('mb_lb_backends').withCodecs(u32Codec, gen.lbBackendCodec);
  revnat = fx.pin('mb_lb_revnat').withCodecs(u16Codec, gen.lbRevnatCodec);
  affinity = fx.pin('mb_lb_affinity').withCodecs(gen.lbAffinityKeyCodec, gen.lbAffinityValueCodec);
  fx.pin('mb_node').withCodecs(u32Codec, gen.nodeConfigCodec).update(0, NODE);
  for (const id of Object.keys(BE)) putBackend(Number(id));
  reader = new RingBufReader(fx.pin('mb_events'), (rec) => {
    if (rec.length >= 36 && rec[0] === 1) events.push({ reason: rec[1], source: rec.readUInt16LE(2), srcLabel: rec.readUInt32LE(8), dstLabel: rec.readUInt32LE(12) });
  });
});

after(() => {
  reader?.close();
  fx.close();
});

/** Allow everything in both directions for every endpoint (policy is not the subject here). */
function allowAll(e: Ep): void {
  for (const egress of [0, 1]) policy[e.id].update({ prefixlen: 40, sec_id: 0, egress, protocol: 0, dport: 0 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 40 });
}

beforeEach(() => {
  for (const e of EPS) {
    for (const k of policy[e.id].keys()) policy[e.id].delete(k);
    allowAll(e);
  }
  for (const id of Object.keys(BE)) putBackend(Number(id));
});

// ============================================================================

describe('DNAT in from_container', () => {
  it('TCP: daddr/dport rewritten to the backend, IP and TCP checksums valid, CT_SERVICE + CT_EGRESS (rev_nat_index) entries', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 101, slots: [1, 2, 3] });
    const sport = port();
    const pkt = tcpOut(C, F, sport, 80);
    const d = viaService(pkt);
    const id = BY_ADDR(d.ip.dst);
    assert.ok([1, 2, 3].includes(id), `a backend of the service (got ${ip4Str(d.ip.dst)})`);
    assert.equal(d.ep, [B1, B2, B3][id - 1], 'delivered into that backend');
    assert.equal(d.dport, 8080);
    assert.deepEqual(d.ip.src, C.ip, 'source kept');
    assert.equal(d.sport, sport);
    assert.equal(l4ChecksumState(d.l3), 'ok');
    // The payload is untouched.
    assert.deepEqual(d.l3.subarray(d.ip.ihl + 20), Buffer.from('lb-test'));
    const svcCt = ct.lookup(ctKey(C.ip, F, IPPROTO_TCP, sport, 80, CT_SERVICE));
    assert.ok(svcCt, 'CT_SERVICE entry keyed by the original tuple');
    assert.equal(svcCt.backend_id, id);
    assert.equal(svcCt.rev_nat_index, 101);
    assert.ok(svcCt.lifetime >= nowSec() + 58, 'lifetime like other CT entries (SYN: 60 s)');
    const eg = ct.lookup(ctKey(C.ip, d.ip.dst, IPPROTO_TCP, sport, 8080, CT_EGRESS));
    assert.equal(eg?.rev_nat_index, 101, 'the translated flow\'s CT_EGRESS entry carries rev_nat_index');
    const ing = ct.lookup(ctKey(C.ip, d.ip.dst, IPPROTO_TCP, sport, 8080, CT_INGRESS));
    assert.equal(ing?.rev_nat_index, 0, 'the backend\'s CT_INGRESS entry does not (pod clients are reversed at the client)');
  });

  it('UDP with a checksum: rewritten with a valid checksum; UDP checksum 0 stays 0', () => {
    const F = frontend();
    putService({ addr: F, port: 53, proto: IPPROTO_UDP, revNat: 102, slots: [2] });
    const d = viaService(udpOut(C, F, port(), 53));
    assert.deepEqual(d.ip.dst, B2.ip);
    assert.equal(d.dport, 8080);
    assert.equal(l4ChecksumState(d.l3), 'ok');
    const z = viaService(udpOut(C, F, port(), 53, true));
    assert.deepEqual(z.ip.dst, B2.ip);
    assert.equal(z.dport, 8080);
    assert.equal(l4ChecksumState(z.l3), 'none', 'no checksum stays no checksum');
  });

  it('non-service traffic is unchanged: pod -> pod directly, pod -> world, ICMP echo to a frontend', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 103, slots: [1] });
    const direct = tcpOut(C, B2.ip, port(), 80);
    const d = viaService(direct);
    assert.equal(d.ep, B2);
    assert.deepEqual(d.l3.subarray(20), direct.subarray(ETH_HLEN + 20), 'L4 untouched');
    const other = tcpOut(C, F, port(), 81); // the frontend's address, another port
    let r = run('from_container_C', other, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_EGRESS });
    assert.deepEqual(r.data.subarray(ETH_HLEN), other.subarray(ETH_HLEN), 'to the stack unchanged');
    const world = tcpOut(C, WORLD, port(), 80);
    r = run('from_container_C', world, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_EGRESS });
    assert.deepEqual(r.data.subarray(ETH_HLEN), world.subarray(ETH_HLEN));
    const ping = ipv4L4Frame({ srcMac: C.mac, dstMac: C.nodeMac, src: C.ip, dst: F, proto: IPPROTO_ICMP, seg: icmpEcho({ id: port() }) });
    r = run('from_container_C', ping, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_EGRESS });
    assert.deepEqual(r.data.subarray(ETH_HLEN), ping.subarray(ETH_HLEN), 'ICMP is not balanced');
  });
});

describe('backend selection', () => {
  it('the CT_SERVICE entry keeps a flow on its backend across packets', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 110, slots: [1, 2, 3] });
    const sport = port();
    const first = BY_ADDR(viaService(tcpOut(C, F, sport, 80, TCP_SYN)).ip.dst);
    for (let i = 0; i < 20; i++) assert.equal(BY_ADDR(viaService(tcpOut(C, F, sport, 80, TCP_ACK)).ip.dst), first, `packet ${i}`);
    const v = ct.lookup(ctKey(C.ip, F, IPPROTO_TCP, sport, 80, CT_SERVICE))!;
    assert.equal(v.tx_packets, 21n);
    assert.equal(v.backend_id, first);
  });

  it('random selection spreads new flows over all slots', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 111, slots: [1, 2, 3] });
    const seen = new Map<number, number>();
    for (let i = 0; i < 60; i++) {
      const id = BY_ADDR(viaService(tcpOut(C, F, port(), 80)).ip.dst);
      seen.set(id, (seen.get(id) ?? 0) + 1);
    }
    assert.deepEqual([...seen.keys()].sort(), [1, 2, 3], `every backend chosen (${JSON.stringify([...seen])})`);
  });

  it('Maglev: the slot is (flow hash % M) + 1, stable for the flow even without its CT_SERVICE entry', () => {
    const F = frontend();
    const table = Array.from({ length: LB_MAGLEV_M }, (_, i) => (i * 7 % 3) + 1);
    putService({ addr: F, port: 80, revNat: 112, slots: table, flags: LB_SVC_F_CLUSTERIP | LB_SVC_F_MAGLEV });
    const got = new Set<number>();
    for (let i = 0; i < 30; i++) {
      const sport = port();
      const want = table[lb4Hash(C.ip, F, sport, 80, IPPROTO_TCP) % LB_MAGLEV_M];
      const a = BY_ADDR(viaService(tcpOut(C, F, sport, 80)).ip.dst);
      assert.equal(a, want, `flow ${sport}: the hash's slot`);
      assert.ok(ct.delete(ctKey(C.ip, F, IPPROTO_TCP, sport, 80, CT_SERVICE)));
      assert.equal(BY_ADDR(viaService(tcpOut(C, F, sport, 80)).ip.dst), want, 'same backend again from the hash');
      got.add(a);
    }
    assert.equal(got.size, 3, 'flows hash over the table');
  });

  it('session affinity keeps a client on one backend until the timeout', () => {
    const F = frontend();
    const rn = 113;
    putService({ addr: F, port: 80, revNat: rn, slots: [1, 2, 3], flags: LB_SVC_F_CLUSTERIP | LB_SVC_F_AFFINITY, timeout: 100 });
    const first = BY_ADDR(viaService(tcpOut(C, F, port(), 80)).ip.dst);
    for (let i = 0; i < 15; i++) assert.equal(BY_ADDR(viaService(tcpOut(C, F, port(), 80)).ip.dst), first, `new flow ${i} sticks`);
    const akey = { client: C.ip, rev_nat_index: rn, family: 4 };
    const a = affinity.lookup(akey);
    assert.equal(a?.backend_id, first);
    assert.ok(Math.abs(a!.last_used - nowSec()) <= 1, 'last_used = now');
    // Within the timeout the affinity wins even over the slots.
    putService({ addr: F, port: 80, revNat: rn, slots: [3], flags: LB_SVC_F_CLUSTERIP | LB_SVC_F_AFFINITY, timeout: 100 });
    affinity.update(akey, { last_used: nowSec() - 90, backend_id: 2 });
    assert.equal(BY_ADDR(viaService(tcpOut(C, F, port(), 80)).ip.dst), 2, 'affinity entry 90 s old (timeout 100): kept');
    // Older than the timeout: selected again (the slots only hold B3), and the entry now names B3.
    affinity.update(akey, { last_used: nowSec() - 110, backend_id: 2 });
    assert.equal(BY_ADDR(viaService(tcpOut(C, F, port(), 80)).ip.dst), 3, 'expired affinity: selected again');
    assert.equal(affinity.lookup(akey)?.backend_id, 3);
    // A terminating backend is not used by affinity for new flows.
    putBackend(3, LB_BACKEND_TERMINATING);
    putService({ addr: F, port: 80, revNat: rn, slots: [1], flags: LB_SVC_F_CLUSTERIP | LB_SVC_F_AFFINITY, timeout: 100 });
    assert.equal(BY_ADDR(viaService(tcpOut(C, F, port(), 80)).ip.dst), 1, 'terminating affinity backend skipped');
  });

  it('a terminating backend keeps its existing flow but gets no new ones; a removed backend\'s flow moves', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 114, slots: [1] });
    const sport = port();
    assert.equal(BY_ADDR(viaService(tcpOut(C, F, sport, 80)).ip.dst), 1);
    // B1 terminates: the agent takes it out of the slots.
    putBackend(1, LB_BACKEND_TERMINATING);
    putService({ addr: F, port: 80, revNat: 114, slots: [2] });
    for (let i = 0; i < 5; i++) assert.equal(BY_ADDR(viaService(tcpOut(C, F, sport, 80, TCP_ACK)).ip.dst), 1, 'existing flow stays on B1');
    for (let i = 0; i < 5; i++) assert.equal(BY_ADDR(viaService(tcpOut(C, F, port(), 80)).ip.dst), 2, 'new flows go to B2');
    // Still in the slots (a race with the agent): skipped for new flows.
    putService({ addr: F, port: 80, revNat: 114, slots: [1, 2] });
    for (let i = 0; i < 20; i++) assert.equal(BY_ADDR(viaService(tcpOut(C, F, port(), 80)).ip.dst), 2, 'terminating slot skipped');
    // B1 removed: the flow gets a new backend and its entry says so.
    backends.delete(1);
    assert.equal(BY_ADDR(viaService(tcpOut(C, F, sport, 80, TCP_ACK)).ip.dst), 2, 'moved to B2');
    assert.equal(ct.lookup(ctKey(C.ip, F, IPPROTO_TCP, sport, 80, CT_SERVICE))?.backend_id, 2);
  });
});

describe('no backend', () => {
  for (const proto of [IPPROTO_TCP, IPPROTO_UDP]) {
    it(`count 0 (${proto === IPPROTO_TCP ? 'TCP' : 'UDP'}): ICMP port unreachable back into the pod, drop 158 counted and reported`, async () => {
      const F = frontend();
      putService({ addr: F, port: 80, proto, revNat: 120, slots: [] });
      const sport = port();
      const pkt = proto === IPPROTO_TCP ? tcpOut(C, F, sport, 80) : udpOut(C, F, sport, 80);
      const from = await mark();
      const r = run('from_container_C', pkt, { verdict: TC_ACT_REDIRECT, reason: DROP_NO_SERVICE, dir: DIR_EGRESS });
      const e = await dropEvent(DROP_NO_SERVICE, from);
      assert.equal(e.srcLabel, C.secId);
      assert.equal(e.source, C.id);

      const eth = parseEth(r.data);
      assert.deepEqual(eth.dst, C.mac, 'to the pod');
      assert.deepEqual(eth.src, C.nodeMac, 'from its router');
      assert.equal(eth.type, 0x0800);
      const quoted = pkt.subarray(ETH_HLEN, ETH_HLEN + 20 + 8);
      assert.equal(r.data.length, ETH_HLEN + 20 + 8 + quoted.length, 'frame = Ethernet + IPv4 + ICMP + quote');
      const ip = parseIpv4(eth.payload);
      assert.equal(ip.ihl, 20);
      assert.equal(ip.totalLength, 20 + 8 + quoted.length);
      assert.equal(ip.proto, IPPROTO_ICMP);
      assert.equal(ip.ttl, 64);
      assert.deepEqual(ip.src, F, 'from the frontend');
      assert.deepEqual(ip.dst, C.ip, 'to the client');
      assert.ok(ipv4ChecksumOk(ip.header), 'IPv4 header checksum');
      const icmpMsg = ip.payload;
      assert.equal(icmpMsg[0], ICMP_DEST_UNREACH);
      assert.equal(icmpMsg[1], ICMP_PORT_UNREACH);
      assert.equal(icmpMsg.readUInt32BE(4), 0, 'unused word 0');
      assert.equal(inetChecksum(icmpMsg), 0, 'ICMP checksum');
      assert.deepEqual(icmpMsg.subarray(8), quoted, 'quotes the original IP header + 8 bytes');
      assert.equal(ct.lookup(ctKey(C.ip, F, proto, sport, 80, CT_SERVICE)), undefined, 'no CT_SERVICE entry');
    });
  }
});

describe('reverse NAT of replies', () => {
  it('local backend: the reply from the backend\'s from_container reaches the client with source frontend:port, valid checksums', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 130, slots: [1, 2, 3] });
    const sport = port();
    const d = viaService(tcpOut(C, F, sport, 80));
    const b = d.ep;
    const reply = tcpOut(b, C.ip, 8080, sport, TCP_SYN | TCP_ACK);
    const r = run(`from_container_${b.name}`, reply, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    const back = delivered(r.data);
    assert.equal(back.ep, C);
    assert.deepEqual(back.ip.src, F, 'source back to the frontend');
    assert.equal(back.sport, 80, 'source port back to the frontend port');
    assert.deepEqual(back.ip.dst, C.ip);
    assert.equal(back.dport, sport);
    assert.equal(l4ChecksumState(back.l3), 'ok');
    assert.equal(back.ip.ttl, 63, 'one hop');
    assert.equal(ct.lookup(ctKey(C.ip, b.ip, IPPROTO_TCP, sport, 8080, CT_EGRESS))?.rx_packets, 1n);
  });

  it('a port reused between a service flow and a direct flow to the same backend: each connection\'s reply is reversed by its own translation', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 131, slots: [1] });
    const sport = port();
    // Through the service, to B1:8080; the flow closes (FIN both ways).
    const d = viaService(tcpOut(C, F, sport, 80));
    assert.equal(d.ep, B1);
    run('from_container_B1', tcpOut(B1, C.ip, 8080, sport, TCP_SYN | TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    run('from_container_C', tcpOut(C, F, sport, 80, TCP_FIN | TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    run('from_container_B1', tcpOut(B1, C.ip, 8080, sport, TCP_FIN | TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    // The same source port, now straight to the backend (same post-DNAT tuple).
    const direct = delivered(run('from_container_C', tcpOut(C, B1.ip, sport, 8080), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS }).data);
    assert.equal(direct.ep, B1);
    assert.equal(ct.lookup(ctKey(C.ip, B1.ip, IPPROTO_TCP, sport, 8080, CT_EGRESS))?.rev_nat_index, 0, 'the direct connection\'s entry is not a translated one');
    const back = delivered(run('from_container_B1', tcpOut(B1, C.ip, 8080, sport, TCP_SYN | TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS }).data);
    assert.equal(back.ep, C);
    assert.deepEqual(back.ip.src, B1.ip, 'the direct reply keeps the backend\'s address');
    assert.equal(back.sport, 8080);
    // And back through the service on the same port: translated again.
    run('from_container_C', tcpOut(C, B1.ip, sport, 8080, TCP_RST), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    viaService(tcpOut(C, F, sport, 80));
    const again = delivered(run('from_container_B1', tcpOut(B1, C.ip, 8080, sport, TCP_SYN | TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS }).data);
    assert.deepEqual(again.ip.src, F, 'the service reply is reversed to the frontend');
    assert.equal(again.sport, 80);
  });

  it('remote backend: forward to the stack DNATed, the reply through from_host is reversed (TCP and UDP)', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 131, slots: [4] });
    putService({ addr: F, port: 80, proto: IPPROTO_UDP, revNat: 132, slots: [4] });
    const sport = port();
    let r = run('from_container_C', tcpOut(C, F, sport, 80), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_EGRESS });
    assert.deepEqual(parseEth(r.data).dst, NODE.host_mac, 'to the stack');
    const fwd = view(r.data, C);
    assert.deepEqual(fwd.ip.dst, REMOTE);
    assert.equal(fwd.dport, 8080);
    r = run('from_host', tcpIn(REMOTE, C.ip, 8080, sport, TCP_SYN | TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    const back = delivered(r.data);
    assert.equal(back.ep, C);
    assert.deepEqual(back.ip.src, F);
    assert.equal(back.sport, 80);
    assert.equal(l4ChecksumState(back.l3), 'ok');

    const usport = port();
    r = run('from_container_C', udpOut(C, F, usport, 80), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_EGRESS });
    assert.deepEqual(view(r.data, C).ip.dst, REMOTE);
    const ureply = ipv4L4Frame({ srcMac: NODE.host_mac, dstMac: NODE.host_mac, src: REMOTE, dst: C.ip, proto: IPPROTO_UDP, seg: udp({ src: REMOTE, dst: C.ip, sport: 8080, dport: usport, payload: Buffer.from('pong') }) });
    r = run('from_host', ureply, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    const uback = delivered(r.data);
    assert.deepEqual(uback.ip.src, F);
    assert.equal(uback.sport, 80);
    assert.equal(l4ChecksumState(uback.l3), 'ok');
  });
});

describe('policy after translation', () => {
  it('egress policy is checked against the backend\'s identity and port', async () => {
    const F1 = frontend();
    const F2 = frontend();
    putService({ addr: F1, port: 80, revNat: 140, slots: [1] });
    putService({ addr: F2, port: 80, revNat: 141, slots: [2] });
    for (const k of policy[C.id].keys()) if (k.egress) policy[C.id].delete(k);
    // C may reach B1 on TCP 8080 (the backend port) only.
    policy[C.id].update({ prefixlen: 64, sec_id: B1.secId, egress: 1, protocol: IPPROTO_TCP, dport: 8080 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 64 });
    assert.equal(viaService(tcpOut(C, F1, port(), 80)).ep, B1);
    const from = await mark();
    run('from_container_C', tcpOut(C, F2, port(), 80), { verdict: TC_ACT_SHOT, reason: DROP_POLICY, dir: DIR_EGRESS });
    const e = await dropEvent(DROP_POLICY, from);
    assert.equal(e.dstLabel, B2.secId, 'denied for B2\'s identity');
    // An entry for the frontend's port does not help.
    policy[C.id].update({ prefixlen: 64, sec_id: B2.secId, egress: 1, protocol: IPPROTO_TCP, dport: 80 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 64 });
    run('from_container_C', tcpOut(C, F2, port(), 80), { verdict: TC_ACT_SHOT, reason: DROP_POLICY, dir: DIR_EGRESS });
  });
});

describe('hairpin', () => {
  it('a pod reaching itself through its service: SNAT to 169.254.42.1 in, both translations reversed on the reply', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 150, slots: [5] });
    // C's ingress admits only the host: the hairpin source is the host's identity.
    for (const k of policy[C.id].keys()) if (!k.egress) policy[C.id].delete(k);
    policy[C.id].update({ prefixlen: 40, sec_id: ID_HOST, egress: 0, protocol: 0, dport: 0 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 40 });
    const sport = port();
    const d = viaService(tcpOut(C, F, sport, 80));
    assert.equal(d.ep, C, 'delivered back into the pod');
    assert.deepEqual(d.ip.src, HAIRPIN, 'source SNATed to the hairpin address');
    assert.equal(d.sport, sport);
    assert.deepEqual(d.ip.dst, C.ip);
    assert.equal(d.dport, 8080);
    assert.equal(l4ChecksumState(d.l3), 'ok');
    assert.equal(ct.lookup(ctKey(HAIRPIN, C.ip, IPPROTO_TCP, sport, 8080, CT_INGRESS))?.src_sec_id, ID_HOST);

    // The pod answers the hairpin address.
    const reply = ipv4L4Frame({ srcMac: C.mac, dstMac: C.nodeMac, src: C.ip, dst: HAIRPIN, proto: IPPROTO_TCP, seg: tcp({ src: C.ip, dst: HAIRPIN, sport: 8080, dport: sport, flags: TCP_SYN | TCP_ACK }) });
    const r = run('from_container_C', reply, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    const back = delivered(r.data);
    assert.equal(back.ep, C);
    assert.deepEqual(back.ip.src, F, 'source back to the frontend');
    assert.equal(back.sport, 80);
    assert.deepEqual(back.ip.dst, C.ip, 'destination back to the pod');
    assert.equal(back.dport, sport);
    assert.equal(l4ChecksumState(back.l3), 'ok');

    // Traffic to the hairpin address that is not a reply goes nowhere.
    const stray = ipv4L4Frame({ srcMac: C.mac, dstMac: C.nodeMac, src: C.ip, dst: HAIRPIN, proto: IPPROTO_TCP, seg: tcp({ src: C.ip, dst: HAIRPIN, sport: port(), dport: 80 }) });
    run('from_container_C', stray, { verdict: TC_ACT_SHOT, reason: DROP_UNROUTABLE, dir: DIR_EGRESS });
  });
});

describe('host -> service (from_host)', () => {
  it('DNAT to a local backend; the backend\'s CT_INGRESS entry carries rev_nat_index; its reply is reversed before the stack', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 160, slots: [1, 2, 3] });
    const sport = port();
    let r = run('from_host', tcpIn(ROUTER, F, sport, 80), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    const d = delivered(r.data);
    assert.ok([B1, B2, B3].includes(d.ep));
    assert.deepEqual(d.ip.src, ROUTER);
    assert.equal(d.dport, 8080);
    assert.equal(l4ChecksumState(d.l3), 'ok');
    const ing = ct.lookup(ctKey(ROUTER, d.ep.ip, IPPROTO_TCP, sport, 8080, CT_INGRESS));
    assert.equal(ing?.rev_nat_index, 160);
    assert.equal(ing?.src_sec_id, ID_HOST);
    assert.equal(ct.lookup(ctKey(ROUTER, F, IPPROTO_TCP, sport, 80, CT_SERVICE))?.backend_id, BY_ADDR(d.ip.dst));
    // Same flow, same backend.
    r = run('from_host', tcpIn(ROUTER, F, sport, 80, TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    assert.equal(delivered(r.data).ep, d.ep);

    r = run(`from_container_${d.ep.name}`, tcpOut(d.ep, ROUTER, 8080, sport, TCP_SYN | TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_EGRESS });
    assert.deepEqual(parseEth(r.data).dst, NODE.host_mac, 'to the stack');
    const back = view(r.data, d.ep);
    assert.deepEqual(back.ip.src, F, 'source back to the frontend');
    assert.equal(back.sport, 80);
    assert.deepEqual(back.ip.dst, ROUTER);
    assert.equal(l4ChecksumState(back.l3), 'ok');
  });

  it('no backend: 158; a remote backend: 151 (socket LB is the path for those); other traffic as before', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 161, slots: [] });
    run('from_host', tcpIn(ROUTER, F, port(), 80), { verdict: TC_ACT_SHOT, reason: DROP_NO_SERVICE, dir: DIR_INGRESS });
    putService({ addr: F, port: 80, revNat: 161, slots: [4] });
    run('from_host', tcpIn(ROUTER, F, port(), 80), { verdict: TC_ACT_SHOT, reason: DROP_UNROUTABLE, dir: DIR_INGRESS });
    const direct = tcpIn(ROUTER, B1.ip, port(), 80);
    const r = run('from_host', direct, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    assert.deepEqual(delivered(r.data).l3.subarray(20), direct.subarray(ETH_HLEN + 20));
  });
});

describe('NodePort (from_netdev)', () => {
  const netdevMacs = { src: GW_MAC, dst: NETDEV_MAC };

  it('DNAT to the local backend keeping the client address, source identity world; the reply is reversed to node:nodePort', () => {
    putService({ addr: NODE_IP, port: 30080, revNat: 170, slots: [1], flags: LB_SVC_F_NODEPORT });
    const sport = port();
    let r = run('from_netdev', tcpIn(WORLD, NODE_IP, sport, 30080, TCP_SYN, netdevMacs), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    const d = delivered(r.data);
    assert.equal(d.ep, B1);
    assert.deepEqual(d.ip.src, WORLD, 'client address kept');
    assert.equal(d.sport, sport);
    assert.deepEqual(d.ip.dst, B1.ip);
    assert.equal(d.dport, 8080);
    assert.equal(l4ChecksumState(d.l3), 'ok');
    const ing = ct.lookup(ctKey(WORLD, B1.ip, IPPROTO_TCP, sport, 8080, CT_INGRESS));
    assert.equal(ing?.src_sec_id, ID_WORLD);
    assert.equal(ing?.rev_nat_index, 170);

    r = run('from_container_B1', tcpOut(B1, WORLD, 8080, sport, TCP_SYN | TCP_ACK), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_EGRESS });
    const back = view(r.data, B1);
    assert.deepEqual(back.ip.src, NODE_IP);
    assert.equal(back.sport, 30080);
    assert.deepEqual(back.ip.dst, WORLD);
    assert.equal(back.dport, sport);
    assert.equal(l4ChecksumState(back.l3), 'ok');
  });

  it('ingress policy of the backend applies (world identity)', () => {
    putService({ addr: NODE_IP, port: 30081, revNat: 171, slots: [2], flags: LB_SVC_F_NODEPORT });
    for (const k of policy[B2.id].keys()) if (!k.egress) policy[B2.id].delete(k);
    run('from_netdev', tcpIn(WORLD, NODE_IP, port(), 30081, TCP_SYN, netdevMacs), { verdict: TC_ACT_SHOT, reason: DROP_POLICY, dir: DIR_INGRESS });
  });

  it('anything else passes untouched (TC_ACT_OK), with no metric', () => {
    const F = frontend();
    putService({ addr: F, port: 80, revNat: 172, slots: [1] }); // a ClusterIP: not served on the netdev
    putService({ addr: NODE_IP, port: 30082, revNat: 173, slots: [1], flags: LB_SVC_F_NODEPORT });
    const pkts = [
      tcpIn(WORLD, F, port(), 80, TCP_SYN, netdevMacs),
      tcpIn(WORLD, NODE_IP, port(), 22, TCP_SYN, netdevMacs),
      ipv4L4Frame({ srcMac: GW_MAC, dstMac: NETDEV_MAC, src: WORLD, dst: NODE_IP, proto: IPPROTO_UDP, seg: udp({ src: WORLD, dst: NODE_IP, sport: 53, dport: 30082 }) }),
      ipv4L4Frame({ srcMac: GW_MAC, dstMac: NETDEV_MAC, src: WORLD, dst: NODE_IP, proto: IPPROTO_ICMP, seg: icmpEcho({ id: 7 }) }),
      arpRequestFrame({ srcMac: GW_MAC, senderIp: WORLD, targetIp: NODE_IP }),
      ethernet({ dst: NETDEV_MAC, src: GW_MAC, type: ETH_P_IPV6, payload: Buffer.alloc(60) }),
    ];
    assert.equal(parseEth(pkts[4]).type, ETH_P_ARP);
    const before = metric(FORWARDED, DIR_INGRESS);
    for (const p of pkts) {
      const r = fx.runHost('from_netdev', p);
      assert.equal(r.retval, TC_ACT_OK);
      assert.deepEqual(r.data, p, 'untouched');
    }
    assert.deepEqual(metric(FORWARDED, DIR_INGRESS), before);
  });
});

// ============================================================================

describe('socket LB (bpf_sock.o on a dedicated cgroup)', () => {
  const SOCK_OBJ = path.join(ROOT, 'bpf/bpf_sock.o');
  const HOOKS = ['connect4', 'sendmsg4', 'recvmsg4', 'getpeername4'];
  let cgroup = '';
  const attached: string[] = [];
  const servers: { close(): void }[] = [];

  before(() => {
    const mnt = fs.readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[2] === 'cgroup2')?.[1];
    assert.ok(mnt, 'a cgroup2 mount');
    cgroup = path.join(mnt, path.basename(fx.pinRoot));
    fs.mkdirSync(cgroup);
    const o = BpfObject.open(SOCK_OBJ, { pinRoot: fx.pinRoot });
    try {
      o.load();
      for (const h of HOOKS) {
        const p = fx.own(o.program(`sock_${h}`));
        const pinPath = path.join(fx.pinRoot, `sock_${h}`);
        p.pin(pinPath);
        execFileSync('bpftool', ['cgroup', 'attach', cgroup, h, 'pinned', pinPath]);
        attached.push(h);
      }
    } finally {
      o.close();
    }
  });

  after(() => {
    for (const s of servers) s.close();
    for (const h of attached) {
      try { execFileSync('bpftool', ['cgroup', 'detach', cgroup, h, 'pinned', path.join(fx.pinRoot, `sock_${h}`)]); } catch { /* rmdir frees them */ }
    }
    if (cgroup) try { fs.rmdirSync(cgroup); } catch { /* keep cleaning */ }
  });

  /** Run a script in a child node process that first moves itself into the test cgroup; its stdout as JSON. */
  async function inCgroup(script: string): Promise<Record<string, unknown>> {
    const { spawn } = await import('node:child_process');
    const code = `require('fs').writeFileSync(${JSON.stringify(path.join(cgroup, 'cgroup.procs'))}, String(process.pid));\n${script}`;
    const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await new Promise((r) => child.on('exit', r));
    clearTimeout(timer);
    return JSON.parse(out || '{}');
  }

  it('TCP connect() to a frontend reaches the backend; getpeername() shows the frontend; count 0 fails the connect', async () => {
    const net = await import('node:net');
    const srv = net.createServer((s) => s.end('hello from backend'));
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    servers.push(srv);
    const bport = (srv.address() as import('node:net').AddressInfo).port;
    backends.update(7, { addr: ip4('127.0.0.1'), port: bport, proto: IPPROTO_TCP, flags: LB_BACKEND_ACTIVE, family: 4 });
    const F = ip4('10.96.250.1');
    putService({ addr: F, port: 80, revNat: 180, slots: [7] });
    putService({ addr: F, port: 81, revNat: 181, slots: [] });
    const res = await inCgroup(`
      const net = require('net');
      const out = {};
      const s = net.connect(80, '10.96.250.1');
      let data = '';
      s.on('connect', () => { out.remote = s.remoteAddress; out.remotePort = s.remotePort; });
      s.on('data', (d) => { data += d; });
      s.on('end', () => {
        out.data = data;
        const t = net.connect(81, '10.96.250.1');
        t.on('error', (e) => { out.err = e.code; console.log(JSON.stringify(out)); process.exit(0); });
        t.on('connect', () => { out.err = 'connected'; console.log(JSON.stringify(out)); process.exit(0); });
      });
      s.on('error', (e) => { out.err0 = e.code; console.log(JSON.stringify(out)); process.exit(0); });
    `);
    assert.equal(res.data, 'hello from backend');
    assert.equal(res.remote, '10.96.250.1', 'getpeername: the frontend');
    assert.equal(res.remotePort, 80);
    assert.equal(res.err, 'EPERM', 'no backend: connect fails at once');
  });

  it('UDP sendmsg() to a frontend reaches the backend; recvmsg() shows the frontend as the source', async () => {
    const dgram = await import('node:dgram');
    const srv = dgram.createSocket('udp4');
    srv.on('message', (m, r) => srv.send(Buffer.concat([Buffer.from('echo:'), m]), r.port, r.address));
    await new Promise<void>((r) => srv.bind(0, '127.0.0.1', () => r()));
    servers.push(srv);
    const bport = srv.address().port;
    backends.update(8, { addr: ip4('127.0.0.1'), port: bport, proto: IPPROTO_UDP, flags: LB_BACKEND_ACTIVE, family: 4 });
    const F = ip4('10.96.250.2');
    putService({ addr: F, port: 53, proto: IPPROTO_UDP, revNat: 182, slots: [8] });
    const res = await inCgroup(`
      const s = require('dgram').createSocket('udp4');
      s.on('message', (m, r) => { console.log(JSON.stringify({ data: String(m), from: r.address, port: r.port })); process.exit(0); });
      s.send('ping', 53, '10.96.250.2');
    `);
    assert.equal(res.data, 'echo:ping');
    assert.equal(res.from, '10.96.250.2');
    assert.equal(res.port, 53);
  });
});
