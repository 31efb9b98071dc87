/**
 * L3/L4 policy and connection tracking in bpf_lxc.o, on crafted packets with
 * BPF_PROG_TEST_RUN: policy lookups (exact identity, identity 0 wildcard,
 * deny precedence, port prefixes, protocol-any and protocol-any-port entries,
 * ICMP types), egress policy in from_container for every destination, ingress
 * policy in policy_ingress, and conntrack in mb_ct (entry
 * creation, reply and related bypass at both sides, revocation of established
 * flows, expiry, counters, lifetimes).
 *
 * Everything is pinned under a per-run root /sys/fs/bpf/mbtest-pct-<rand>,
 * removed in after() even on failure. Needs root (BPF) and the built objects
 * (make -C bpf; built here if missing).
 *
 * Run: npx tsc -p . && node --test dist/test/datapath/policy-ct.test.js
 */
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfMap, RingBufReader, testRun, u32Codec } from '../../src/bpf';
import * as gen from '../../src/datapath/maps.gen';
import { MetricsKey, metricsKeyCodec } from '../../src/datapath/metricsmap';
import { gcConntrack } from '../../src/datapath/ctgc';
import {
  ETH_HLEN,
  ICMP_ECHO,
  ICMP_ECHOREPLY,
  ICMP_TIMESTAMP,
  ICMP_TIME_EXCEEDED,
  IPPROTO_ICMP,
  IPPROTO_SCTP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  IP_MF,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_SYN,
  icmp,
  icmpEcho,
  icmpError,
  ip4,
  ipv4,
  ipv4L4Frame,
  mac,
  parseEth,
  tcp,
  udp,
} from '../helpers/packet';
import { CT_EGRESS, CT_F_RX_CLOSING, CT_F_SEEN_NON_SYN, CT_F_TX_CLOSING, CT_INGRESS, DIR_EGRESS, DIR_INGRESS, DROP_FRAG_NOSUPPORT, DROP_POLICY, DROP_POLICY_DENY, ENDPOINT_F_HOST, EP_CFG_F_IPV4, FORWARDED, HOST_OBJ, ID_HOST, ID_WORLD, LXC_OBJ, POLICY_F_DENY, ROOT, TC_ACT_REDIRECT, TC_ACT_SHOT, DatapathFixture, DpEndpoint } from '../helpers/datapath';

const fx = new DatapathFixture('pct');

const ID_REMOTE = 3000; // pods of another node, 10.2.0.0/16 in the ipcache

// ---- topology ----
const ROUTER = ip4('10.200.0.1');
const REMOTE = ip4('10.2.0.5');
const REMOTE_ROUTER = ip4('172.16.0.1'); // a router on the path (world)
const WORLD = ip4('8.8.8.8');
const NODE = {
  host_ifindex: 201, net_ifindex: 202,
  host_mac: mac('02:00:00:00:02:01'), net_mac: mac('02:00:00:00:02:02'),
  router_ipv4: ROUTER, router_ipv6: Buffer.alloc(16), flags: 0, tunnel_ifindex: 0,
};

type Ep = DpEndpoint;

function ep(id: number): Ep {
  const h = id.toString(16).padStart(2, '0');
  return { id, secId: 2000 + id, ifindex: 100 + id, ip: ip4(`10.1.0.${id}`), mac: mac(`0a:00:00:00:00:${h}`), nodeMac: mac(`fe:00:00:00:00:${h}`) };
}

const P = ep(21); // both enforce policy in both directions
const Q = ep(22);

// ---- state ----
let metrics: BpfMap<MetricsKey, gen.MetricsValue>;
let ct: BpfMap<gen.CtKey, gen.CtValue>;
const policy = fx.policy;
let reader: RingBufReader | undefined;
const events: DropEvent[] = [];

interface DropEvent { reason: number; source: number; srcLabel: number; dstLabel: number; dstId: number; file: number }
const DROP_EVENT_SIZE = 36 + 128;
function decodeDrop(b: Buffer): DropEvent {
  return { reason: b[1], source: b.readUInt16LE(2), srcLabel: b.readUInt32LE(8), dstLabel: b.readUInt32LE(12), dstId: b.readUInt16LE(16), file: b[20] };
}

/**
 * Index to look for new events from, once the events of earlier (synchronous)
 * test runs have been delivered: the reader runs on the event loop.
 */
async function mark(): Promise<number> {
  let n = -1;
  while (n !== events.length) {
    n = events.length;
    await new Promise((r) => setTimeout(r, 20));
  }
  return n;
}

async function dropEvent(reason: number, from: number): Promise<DropEvent> {
  for (let i = 0; i < 100; i++) {
    const e = events.slice(from).find((x) => x.reason === reason);
    if (e) return e;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`no drop event with reason ${reason} (have ${events.slice(from).map((e) => e.reason).join(',') || 'none'})`);
}

function metric(reason: number, dir: number): { count: bigint; bytes: bigint } {
  const vs = metrics.lookupPerCpu({ reason, dir }) ?? [];
  return vs.reduce((a, v) => ({ count: a.count + v.count, bytes: a.bytes + v.bytes }), { count: 0n, bytes: 0n });
}

/** CLOCK_MONOTONIC seconds, the clock of bpf_ktime_get_ns(). */
function nowSec(): number {
  return Number(process.hrtime.bigint() / 1_000_000_000n);
}

// ---- policy entries ----
interface Rule { id: number; egress: boolean; proto?: number; port?: number; prefix?: number; deny?: boolean }

function pkey(r: Rule): gen.PolicyKey {
  const prefix = r.prefix ?? (r.proto ? (r.port !== undefined ? 64 : 48) : 40);
  return { prefixlen: prefix, sec_id: r.id, egress: r.egress ? 1 : 0, protocol: r.proto ?? 0, dport: r.port ?? 0 };
}

function put(e: Ep, r: Rule): gen.PolicyKey {
  const k = pkey(r);
  policy[e.id].update(k, { packets: 0n, bytes: 0n, proxy_port: 0, flags: r.deny ? POLICY_F_DENY : 0, prefix_len: k.prefixlen });
  return k;
}

function counters(e: Ep, k: gen.PolicyKey): [bigint, bigint] {
  const v = policy[e.id].lookup(k);
  assert.ok(v, 'policy entry present');
  return [v.packets, v.bytes];
}

function clearPolicy(): void {
  for (const m of Object.values(policy)) for (const k of m.keys()) m.delete(k);
}

// ---- packets ----
let portSeq = 30000;
/** A fresh source port per flow so tests never share conntrack tuples. */
function port(): number {
  return portSeq++;
}

type L4 =
  | { tcp: { sport: number; dport: number; flags?: number } }
  | { udp: { sport: number; dport: number } }
  | { icmp: { type: number; id?: number; code?: number } }
  | { raw: { proto: number; seg: Buffer } };

function seg(src: Buffer, dst: Buffer, l4: L4): { proto: number; seg: Buffer } {
  if ('tcp' in l4) return { proto: IPPROTO_TCP, seg: tcp({ src, dst, ...l4.tcp, payload: Buffer.from('pct') }) };
  if ('udp' in l4) return { proto: IPPROTO_UDP, seg: udp({ src, dst, ...l4.udp, payload: Buffer.from('pct') }) };
  if ('icmp' in l4) {
    const t = l4.icmp.type;
    if (t === ICMP_ECHO || t === ICMP_ECHOREPLY) return { proto: IPPROTO_ICMP, seg: icmpEcho({ id: l4.icmp.id ?? 1, reply: t === ICMP_ECHOREPLY, payload: Buffer.from('pct') }) };
    return { proto: IPPROTO_ICMP, seg: icmp({ type: t, code: l4.icmp.code, payload: Buffer.alloc(12) }) };
  }
  return l4.raw;
}

/** A frame pod `from` sends (into its from_container). */
function out(from: Ep, dst: Buffer, l4: L4, o: { fragOff?: number } = {}): Buffer {
  return ipv4L4Frame({ srcMac: from.mac, dstMac: from.nodeMac, src: from.ip, dst, ...seg(from.ip, dst, l4), fragOff: o.fragOff });
}

/** A frame arriving for pod `to` (policy_ingress / from_host). */
function inb(src: Buffer, to: Ep, l4: L4): Buffer {
  return ipv4L4Frame({ srcMac: NODE.host_mac, dstMac: NODE.host_mac, src, dst: to.ip, ...seg(src, to.ip, l4) });
}

/** The IPv4 packet (no Ethernet header) inside a frame, for quoting in ICMP errors. */
function l3(frame: Buffer): Buffer {
  return frame.subarray(ETH_HLEN);
}

// ---- running ----
/**
 * Run prog on pkt; assert the verdict and that the metric (reason, dir) moved
 * by exactly this packet. `reason` 0 = forwarded.
 */
function run(prog: string, pkt: Buffer, expect: { verdict: number; reason: number; dir: number; cb0?: number }) {
  const before = metric(expect.reason, expect.dir);
  const r = fx.runNamed(prog, { P, Q }, pkt, { cb0: expect.cb0 });
  const now = metric(expect.reason, expect.dir);
  assert.equal(r.retval, expect.verdict, `${prog}: verdict`);
  assert.equal(now.count - before.count, 1n, `${prog}: metric {reason ${expect.reason}, dir ${expect.dir}} count`);
  assert.equal(now.bytes - before.bytes, BigInt(pkt.length), `${prog}: metric {reason ${expect.reason}, dir ${expect.dir}} bytes`);
  return r;
}

/** P's egress to a remote destination: passes = redirected to the host device pair. */
function egressPass(pkt: Buffer, prog = 'from_container_P') {
  const r = run(prog, pkt, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_EGRESS });
  assert.deepEqual(parseEth(r.data).dst, NODE.host_mac, 'handed to the host stack');
  return r;
}

function egressDrop(pkt: Buffer, reason: number, prog = 'from_container_P') {
  return run(prog, pkt, { verdict: TC_ACT_SHOT, reason, dir: DIR_EGRESS });
}

/** Ingress into `to` via its policy_ingress (tail-call target) with source identity `src`. */
function ingressPass(to: Ep, pkt: Buffer, src: number) {
  const r = run(`policy_ingress_${to === P ? 'P' : 'Q'}`, pkt, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS, cb0: src });
  assert.deepEqual(parseEth(r.data).dst, to.mac, 'delivered into the pod');
  return r;
}

function ingressDrop(to: Ep, pkt: Buffer, src: number, reason: number) {
  return run(`policy_ingress_${to === P ? 'P' : 'Q'}`, pkt, { verdict: TC_ACT_SHOT, reason, dir: DIR_INGRESS, cb0: src });
}

function ctKey(saddr: Buffer, daddr: Buffer, proto: number, sport: number, dport: number, flags: number): gen.CtKey {
  return { saddr, daddr, sport, dport, nexthdr: proto, flags, family: 4 };
}

function ctCount(): number {
  return ct.keys().length;
}

function assertLifetime(v: gen.CtValue, secs: number): void {
  const now = nowSec();
  assert.ok(v.lifetime >= now + secs - 2 && v.lifetime <= now + secs + 1, `lifetime ${v.lifetime} ~ now ${now} + ${secs}`);
}

before(() => {
  if (!fs.existsSync(LXC_OBJ) || !fs.existsSync(HOST_OBJ)) execFileSync('make', ['-s', '-C', path.join(ROOT, 'bpf')], { stdio: 'inherit' });
  fx.load();
  for (const e of [P, Q]) fx.addEndpoint(e);
  fx.addHostAddress(ROUTER);
  fx.setIpcache(ip4('10.2.0.0'), 16, ID_REMOTE);
  metrics = fx.pin('mb_metrics').withCodecs(metricsKeyCodec, gen.metricsValueCodec);
  ct = fx.pin('mb_ct').withCodecs(gen.ctKeyCodec, gen.ctValueCodec);
  fx.pin('mb_node').withCodecs(u32Codec, gen.nodeConfigCodec).update(0, NODE);
  reader = new RingBufReader(fx.pin('mb_events'), (rec) => {
    if (rec.length >= DROP_EVENT_SIZE && rec[0] === 1) events.push(decodeDrop(rec));
  });
});

after(() => {
  reader?.close();
  fx.close();
});

beforeEach(() => {
  if (Object.keys(policy).length) clearPolicy();
});

// ============================================================================

describe('policy lookups (egress of P towards a remote identity)', () => {
  it('exact identity + port: allowed and counted on the entry', () => {
    const k = put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const pkt = out(P, REMOTE, { tcp: { sport: port(), dport: 80 } });
    egressPass(pkt);
    assert.deepEqual(counters(P, k), [1n, BigInt(pkt.length)]);
    // Another port or protocol of the same identity is not covered.
    egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 81 } }), DROP_POLICY);
    egressDrop(out(P, REMOTE, { udp: { sport: port(), dport: 80 } }), DROP_POLICY);
    assert.deepEqual(counters(P, k), [1n, BigInt(pkt.length)], 'drops not counted on the entry');
  });

  it('wildcard identity 0: allows any remote identity, counted on the wildcard entry', () => {
    const k = put(P, { id: 0, egress: true, proto: IPPROTO_TCP, port: 443 });
    const a = out(P, REMOTE, { tcp: { sport: port(), dport: 443 } });
    const b = out(P, WORLD, { tcp: { sport: port(), dport: 443 } });
    egressPass(a);
    egressPass(b);
    assert.deepEqual(counters(P, k), [2n, BigInt(a.length + b.length)]);
  });

  it('an exact-identity hit is preferred over a wildcard hit for the counters', () => {
    const exact = put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 443 });
    const wild = put(P, { id: 0, egress: true });
    const pkt = out(P, REMOTE, { tcp: { sport: port(), dport: 443 } });
    egressPass(pkt);
    assert.deepEqual(counters(P, exact), [1n, BigInt(pkt.length)]);
    assert.deepEqual(counters(P, wild), [0n, 0n]);
  });

  it('deny for the identity beats an allow for the wildcard: 181, reported with identities', async () => {
    put(P, { id: ID_REMOTE, egress: true, deny: true });
    const allow = put(P, { id: 0, egress: true, proto: IPPROTO_TCP, port: 80 });
    const from = await mark();
    egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY_DENY);
    const e = await dropEvent(DROP_POLICY_DENY, from);
    assert.equal(e.srcLabel, P.secId);
    assert.equal(e.dstLabel, ID_REMOTE);
    assert.equal(e.source, P.id);
    assert.deepEqual(counters(P, allow), [0n, 0n]);
    // Other identities still get the wildcard allow.
    egressPass(out(P, WORLD, { tcp: { sport: port(), dport: 80 } }));
  });

  it('deny for the wildcard beats an allow for the identity: 181', () => {
    put(P, { id: 0, egress: true, proto: IPPROTO_TCP, deny: true });
    const allow = put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY_DENY);
    assert.deepEqual(counters(P, allow), [0n, 0n]);
    // The wildcard deny is TCP only.
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_UDP, port: 53 });
    egressPass(out(P, REMOTE, { udp: { sport: port(), dport: 53 } }));
  });

  it('no matching entry: 133, reported; an empty map denies everything', async () => {
    egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY);
    put(P, { id: ID_REMOTE, egress: false }); // the other direction
    put(P, { id: ID_WORLD, egress: true }); // another identity
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_UDP }); // another protocol
    const from = await mark();
    egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY);
    const e = await dropEvent(DROP_POLICY, from);
    assert.equal(e.srcLabel, P.secId);
    assert.equal(e.dstLabel, ID_REMOTE);
  });

  it('port range 8080-8087 as one /61 entry (13 port bits): inside passes, 8079 and 8088 do not', () => {
    const k = put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 8080, prefix: 48 + 13 });
    for (let p = 8080; p <= 8087; p++) egressPass(out(P, REMOTE, { tcp: { sport: port(), dport: p } }));
    assert.equal(counters(P, k)[0], 8n);
    egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 8088 } }), DROP_POLICY);
    egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 8079 } }), DROP_POLICY);
  });

  it('protocol any (prefix 40) passes TCP, UDP, ICMP, SCTP and other protocols', () => {
    const k = put(P, { id: ID_REMOTE, egress: true });
    egressPass(out(P, REMOTE, { tcp: { sport: port(), dport: 22 } }));
    egressPass(out(P, REMOTE, { udp: { sport: port(), dport: 5000 } }));
    egressPass(out(P, REMOTE, { icmp: { type: ICMP_ECHO, id: port() } }));
    egressPass(out(P, REMOTE, { raw: { proto: IPPROTO_SCTP, seg: Buffer.from([0x75, 0x30, 0x0b, 0x59, 0, 0, 0, 0, 0, 0, 0, 0]) } }));
    egressPass(out(P, REMOTE, { raw: { proto: 47 /* GRE */, seg: Buffer.alloc(8) } }));
    assert.equal(counters(P, k)[0], 5n);
  });

  it('protocol fixed, any port (prefix 48)', () => {
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_UDP });
    egressPass(out(P, REMOTE, { udp: { sport: port(), dport: 53 } }));
    egressPass(out(P, REMOTE, { udp: { sport: port(), dport: 65535 } }));
    egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 53 } }), DROP_POLICY);
    egressDrop(out(P, REMOTE, { icmp: { type: ICMP_ECHO, id: port() } }), DROP_POLICY);
  });

  it('ICMP types: key dport = htons(type): echo request allowed, timestamp not', () => {
    const k = put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_ICMP, port: ICMP_ECHO });
    egressPass(out(P, REMOTE, { icmp: { type: ICMP_ECHO, id: port() } }));
    egressDrop(out(P, REMOTE, { icmp: { type: ICMP_TIMESTAMP } }), DROP_POLICY);
    assert.equal(counters(P, k)[0], 1n);
    // The encoding in memory: bytes {0, type} (network order of the 16-bit type).
    assert.deepEqual(gen.policyKeyCodec.encode(k).subarray(10, 12), Buffer.from([0, ICMP_ECHO]));
  });

  it('egress policy covers local endpoints, the host and the world alike', () => {
    egressDrop(out(P, Q.ip, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY);
    egressDrop(out(P, ROUTER, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY);
    egressDrop(out(P, WORLD, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY);
    const toHost = put(P, { id: ID_HOST, egress: true });
    const toWorld = put(P, { id: ID_WORLD, egress: true });
    egressPass(out(P, ROUTER, { tcp: { sport: port(), dport: 80 } }));
    egressPass(out(P, WORLD, { tcp: { sport: port(), dport: 80 } }));
    assert.equal(counters(P, toHost)[0], 1n);
    assert.equal(counters(P, toWorld)[0], 1n);
    // A local destination: P's egress allows, Q's ingress (empty) drops.
    put(P, { id: Q.secId, egress: true });
    run('from_container_P', out(P, Q.ip, { tcp: { sport: port(), dport: 80 } }), { verdict: TC_ACT_SHOT, reason: DROP_POLICY, dir: DIR_INGRESS });
  });
});

describe('ingress policy', () => {
  it('policy_ingress uses the source identity from cb[0], ingress entries only', async () => {
    put(P, { id: ID_REMOTE, egress: true }); // egress entry: irrelevant for ingress
    const from = await mark();
    ingressDrop(P, inb(REMOTE, P, { tcp: { sport: port(), dport: 80 } }), ID_REMOTE, DROP_POLICY);
    const e = await dropEvent(DROP_POLICY, from);
    assert.equal(e.srcLabel, ID_REMOTE);
    assert.equal(e.dstLabel, P.secId);
    const k = put(P, { id: ID_REMOTE, egress: false, proto: IPPROTO_TCP, port: 80 });
    const pkt = inb(REMOTE, P, { tcp: { sport: port(), dport: 80 } });
    ingressPass(P, pkt, ID_REMOTE);
    assert.deepEqual(counters(P, k), [1n, BigInt(pkt.length)]);
    ingressDrop(P, inb(REMOTE, P, { tcp: { sport: port(), dport: 80 } }), ID_WORLD, DROP_POLICY);
  });

  it('deny over allow at ingress: 181', () => {
    put(P, { id: 0, egress: false, deny: true });
    put(P, { id: ID_REMOTE, egress: false });
    ingressDrop(P, inb(REMOTE, P, { udp: { sport: port(), dport: 53 } }), ID_REMOTE, DROP_POLICY_DENY);
  });

  it('from_host passes the ipcache identity of the source to the endpoint\'s ingress policy', () => {
    put(P, { id: ID_REMOTE, egress: false, proto: IPPROTO_UDP, port: 53 });
    run('from_host', inb(REMOTE, P, { udp: { sport: port(), dport: 53 } }), { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    run('from_host', inb(WORLD, P, { udp: { sport: port(), dport: 53 } }), { verdict: TC_ACT_SHOT, reason: DROP_POLICY, dir: DIR_INGRESS });
    run('from_host', inb(REMOTE, P, { udp: { sport: port(), dport: 54 } }), { verdict: TC_ACT_SHOT, reason: DROP_POLICY, dir: DIR_INGRESS });
  });
});

// ============================================================================

describe('address blocks (NetworkPolicy ipBlock, mb_ipblock)', () => {
  const BLOCK = 0x1000000 + 77; // a local (address-block) identity
  const EXCEPT = 0x1000000 + 78;

  it('with EP_CFG_F_ADDR_POLICY, a peer whose identity finds nothing is matched by its address', () => {
    const POD = ip4('10.2.0.9'); // a pod of another node: identity ID_REMOTE in the ipcache, no entry for it
    put(P, { id: BLOCK, egress: true, proto: IPPROTO_TCP, port: 80 });
    fx.setIpblock(POD, 32, BLOCK);
    try {
      egressDrop(out(P, REMOTE, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY); // no block for REMOTE
      egressDrop(out(P, POD, { tcp: { sport: port(), dport: 80 } }), DROP_POLICY); // switch off: identity only
      P.addressRules = true;
      fx.configure(P);
      egressPass(out(P, POD, { tcp: { sport: port(), dport: 80 } })); // allowed by its address
      egressDrop(out(P, POD, { tcp: { sport: port(), dport: 81 } }), DROP_POLICY); // the block's entry is for port 80 only
    } finally {
      P.addressRules = false;
      fx.configure(P);
      fx.setIpblock(POD, 32, undefined);
    }
  });

  it('the longest prefix decides (except), at ingress too; a deny for the identity still wins', () => {
    put(P, { id: BLOCK, egress: false });
    fx.setIpblock(ip4('10.2.0.0'), 16, BLOCK);
    fx.setIpblock(REMOTE, 32, EXCEPT); // except 10.2.0.5/32: an identity no entry names
    P.addressRules = true;
    fx.configure(P);
    try {
      ingressPass(P, inb(ip4('10.2.9.9'), P, { udp: { sport: port(), dport: 53 } }), ID_REMOTE);
      ingressDrop(P, inb(REMOTE, P, { udp: { sport: port(), dport: 53 } }), ID_REMOTE, DROP_POLICY);
      put(P, { id: ID_REMOTE, egress: false, deny: true });
      ingressDrop(P, inb(ip4('10.2.9.9'), P, { udp: { sport: port(), dport: 53 } }), ID_REMOTE, DROP_POLICY_DENY);
    } finally {
      P.addressRules = false;
      fx.configure(P);
      fx.setIpblock(ip4('10.2.0.0'), 16, undefined);
      fx.setIpblock(REMOTE, 32, undefined);
    }
  });
});

// ============================================================================

describe('conntrack', () => {
  it('an established flow keeps its verdict while the policy epoch stands; a new epoch rechecks it (revocation still cuts it)', () => {
    const k = put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    P.policyEpoch = 7;
    fx.configure(P);
    try {
      const sport = port();
      const pkt = () => out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_ACK } });
      egressPass(out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_SYN } })); // new: policy, entry created
      egressPass(pkt()); // established: policy checked, verdict cached under epoch 7
      const entry = ct.lookup(ctKey(P.ip, REMOTE, IPPROTO_TCP, sport, 80, CT_EGRESS))!;
      assert.equal(entry.policy_epoch, 7);
      assert.equal(entry.src_sec_id, ID_REMOTE);
      const [pk] = counters(P, k);
      egressPass(pkt());
      assert.deepEqual(counters(P, k)[0], pk, 'the cached verdict skips the policy lookup (the entry is not counted)');
      policy[P.id].delete(k); // revoked behind the epoch's back: the cache still holds...
      egressPass(pkt());
      P.policyEpoch = 8; // ...until the epoch moves, as the agent does with every change of the map
      fx.configure(P);
      egressDrop(pkt(), DROP_POLICY);
    } finally {
      P.policyEpoch = 0;
      fx.configure(P);
    }
  });

  it('garbage collection removes exactly the expired entries of a large table (read on a worker thread, deleted in slices)', async () => {
    const now = nowSec();
    const live: gen.CtKey[] = [];
    const expired: gen.CtKey[] = [];
    const entries: [gen.CtKey, gen.CtValue][] = [];
    for (let i = 0; i < 20000; i++) {
      const k = ctKey(ip4(`10.9.${i >> 8}.${i & 255}`), ip4('10.9.255.1'), IPPROTO_UDP, 1000 + (i % 50000), 53, CT_EGRESS);
      const dead = i % 3 === 0;
      (dead ? expired : live).push(k);
      entries.push([k, { tx_packets: 1n, tx_bytes: 1n, rx_packets: 0n, rx_bytes: 0n, lifetime: dead ? now - 5 : now + 600, src_sec_id: 2, rev_nat_index: 0, tx_flags_seen: 0, rx_flags_seen: 0, flags: 0, policy_epoch: 0, last_report: now, backend_id: 0 } as gen.CtValue]);
    }
    ct.updateBatch(entries);
    const before = ctCount();
    const r = await gcConntrack(ct, now);
    assert.ok(r.scanned >= 20000, `scanned ${r.scanned}`);
    assert.ok(r.deleted >= expired.length, `deleted ${r.deleted}`);
    assert.equal(ctCount(), before - r.deleted);
    for (const k of live.slice(0, 200)) assert.ok(ct.lookup(k), 'a live entry stays');
    for (const k of expired.slice(0, 200)) assert.equal(ct.lookup(k), undefined, 'an expired entry is gone');
    ct.deleteBatch(live);
  });

  it('a NEW egress TCP SYN creates {tuple, CT_EGRESS} with counters, flags, SYN lifetime and the remote identity', () => {
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const n = ctCount();
    const pkt = out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_SYN } });
    egressPass(pkt);
    assert.equal(ctCount(), n + 1, 'exactly one entry created');
    const v = ct.lookup(ctKey(P.ip, REMOTE, IPPROTO_TCP, sport, 80, CT_EGRESS));
    assert.ok(v, '{P -> R, CT_EGRESS} exists');
    assert.equal(v.tx_packets, 1n);
    assert.equal(v.tx_bytes, BigInt(pkt.length));
    assert.equal(v.rx_packets, 0n);
    assert.equal(v.rx_bytes, 0n);
    assert.equal(v.src_sec_id, ID_REMOTE);
    assert.equal(v.tx_flags_seen, TCP_SYN);
    assert.equal(v.rx_flags_seen, 0);
    assert.equal(v.flags, 0);
    assertLifetime(v, 60);
    assert.equal(ct.lookup(ctKey(P.ip, REMOTE, IPPROTO_TCP, sport, 80, CT_INGRESS)), undefined);
    assert.equal(ct.lookup(ctKey(REMOTE, P.ip, IPPROTO_TCP, 80, sport, CT_INGRESS)), undefined);
  });

  it('the reply passes P\'s EMPTY ingress policy (from_host, policy_ingress) without creating entries; states and lifetimes follow the TCP flags', () => {
    const allow = put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const key = ctKey(P.ip, REMOTE, IPPROTO_TCP, sport, 80, CT_EGRESS);
    const syn = out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_SYN } });
    egressPass(syn);
    policy[P.id].delete(allow); // P's policy is now empty in both directions

    const n = ctCount();
    const synack = inb(REMOTE, P, { tcp: { sport: 80, dport: sport, flags: TCP_SYN | TCP_ACK } });
    run('from_host', synack, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    assert.equal(ctCount(), n, 'the reply creates nothing');
    let v = ct.lookup(key)!;
    assert.equal(v.rx_packets, 1n);
    assert.equal(v.rx_bytes, BigInt(synack.length));
    assert.equal(v.rx_flags_seen, TCP_SYN | TCP_ACK);
    assert.equal(v.flags, 0);
    assertLifetime(v, 60);

    // The forward ACK is checked against policy (established): allow it again.
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const ack = out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_ACK } });
    egressPass(ack);
    v = ct.lookup(key)!;
    assert.equal(v.tx_packets, 2n);
    assert.equal(v.tx_bytes, BigInt(syn.length + ack.length));
    assert.equal(v.tx_flags_seen, TCP_SYN | TCP_ACK);
    assert.equal(v.flags, CT_F_SEEN_NON_SYN);
    assertLifetime(v, 21600);
    clearPolicy();

    const data = inb(REMOTE, P, { tcp: { sport: 80, dport: sport, flags: TCP_PSH | TCP_ACK } });
    ingressPass(P, data, ID_REMOTE);
    const fin = inb(REMOTE, P, { tcp: { sport: 80, dport: sport, flags: TCP_FIN | TCP_ACK } });
    ingressPass(P, fin, ID_REMOTE);
    v = ct.lookup(key)!;
    assert.equal(v.rx_packets, 3n);
    assert.equal(v.rx_bytes, BigInt(synack.length + data.length + fin.length));
    assert.equal(v.rx_flags_seen, TCP_SYN | TCP_ACK | TCP_PSH | TCP_FIN);
    assert.equal(v.flags, CT_F_SEEN_NON_SYN | CT_F_RX_CLOSING);
    assertLifetime(v, 10);
    assert.equal(ctCount(), n, 'still nothing created');

    // A new flow into P is not a reply: dropped by the empty ingress policy.
    ingressDrop(P, inb(REMOTE, P, { tcp: { sport: 80, dport: port(), flags: TCP_SYN } }), ID_REMOTE, DROP_POLICY);
  });

  it('same node P -> Q: entries at both sides; the reply passes Q\'s egress and P\'s ingress with empty policies', () => {
    put(P, { id: Q.secId, egress: true });
    put(Q, { id: P.secId, egress: false, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const syn = out(P, Q.ip, { tcp: { sport, dport: 80 } });
    const r = run('from_container_P', syn, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    assert.deepEqual(parseEth(r.data).dst, Q.mac, 'delivered into Q');
    const atP = ctKey(P.ip, Q.ip, IPPROTO_TCP, sport, 80, CT_EGRESS);
    const atQ = ctKey(P.ip, Q.ip, IPPROTO_TCP, sport, 80, CT_INGRESS);
    assert.equal(ct.lookup(atP)?.src_sec_id, Q.secId, 'P\'s egress entry: remote = Q');
    assert.equal(ct.lookup(atQ)?.src_sec_id, P.secId, 'Q\'s ingress entry: remote = P');
    assert.equal(ct.lookup(atP)?.tx_packets, 1n);
    assert.equal(ct.lookup(atQ)?.tx_packets, 1n);

    clearPolicy();
    const n = ctCount();
    const egressFwd = metric(FORWARDED, DIR_EGRESS);
    const synack = out(Q, P.ip, { tcp: { sport: 80, dport: sport, flags: TCP_SYN | TCP_ACK } });
    const r2 = run('from_container_Q', synack, { verdict: TC_ACT_REDIRECT, reason: FORWARDED, dir: DIR_INGRESS });
    assert.equal(metric(FORWARDED, DIR_EGRESS).count - egressFwd.count, 1n, 'Q\'s egress forwarded it');
    assert.deepEqual(parseEth(r2.data).dst, P.mac, 'delivered into P');
    assert.equal(ctCount(), n);
    assert.equal(ct.lookup(atP)?.rx_packets, 1n);
    assert.equal(ct.lookup(atQ)?.rx_packets, 1n);
    assert.equal(ct.lookup(atQ)?.rx_bytes, BigInt(synack.length));

    // Q opening a flow of its own is policy-checked: Q's egress is empty.
    egressDrop(out(Q, P.ip, { tcp: { sport: 80, dport: port() } }), DROP_POLICY, 'from_container_Q');
  });

  it('revoking policy cuts an established flow (egress and ingress), replies are not policy-checked', async () => {
    const allow = put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const key = ctKey(P.ip, REMOTE, IPPROTO_TCP, sport, 80, CT_EGRESS);
    egressPass(out(P, REMOTE, { tcp: { sport, dport: 80 } }));
    ingressPass(P, inb(REMOTE, P, { tcp: { sport: 80, dport: sport, flags: TCP_SYN | TCP_ACK } }), ID_REMOTE);
    egressPass(out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_ACK } }));
    assert.equal(ct.lookup(key)?.tx_packets, 2n);
    policy[P.id].delete(allow);
    const from = await mark();
    egressDrop(out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_ACK } }), DROP_POLICY);
    assert.equal((await dropEvent(DROP_POLICY, from)).dstLabel, ID_REMOTE);
    assert.equal(ct.lookup(key)?.tx_packets, 2n, 'the dropped packet is not counted');
    ingressPass(P, inb(REMOTE, P, { tcp: { sport: 80, dport: sport, flags: TCP_ACK } }), ID_REMOTE);

    // Ingress side: a flow P accepted.
    const inAllow = put(P, { id: ID_REMOTE, egress: false, proto: IPPROTO_TCP, port: 8443 });
    const rport = port();
    ingressPass(P, inb(REMOTE, P, { tcp: { sport: rport, dport: 8443 } }), ID_REMOTE);
    const inKey = ctKey(REMOTE, P.ip, IPPROTO_TCP, rport, 8443, CT_INGRESS);
    assert.equal(ct.lookup(inKey)?.src_sec_id, ID_REMOTE);
    egressPass(out(P, REMOTE, { tcp: { sport: 8443, dport: rport, flags: TCP_SYN | TCP_ACK } })); // the reply: P's egress policy is empty now
    ingressPass(P, inb(REMOTE, P, { tcp: { sport: rport, dport: 8443, flags: TCP_ACK } }), ID_REMOTE);
    policy[P.id].delete(inAllow);
    ingressDrop(P, inb(REMOTE, P, { tcp: { sport: rport, dport: 8443, flags: TCP_ACK } }), ID_REMOTE, DROP_POLICY);
    const v = ct.lookup(inKey)!;
    assert.equal(v.tx_packets, 2n);
    assert.equal(v.rx_packets, 1n);
  });

  it('UDP and ICMP echo are tracked: 60 s lifetime, echo reply matches the request (sport = id / dport = id)', () => {
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_UDP, port: 53 });
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_ICMP, port: ICMP_ECHO });
    const sport = port();
    egressPass(out(P, REMOTE, { udp: { sport, dport: 53 } }));
    const u = ct.lookup(ctKey(P.ip, REMOTE, IPPROTO_UDP, sport, 53, CT_EGRESS));
    assert.ok(u);
    assertLifetime(u, 60);
    assert.equal(u.flags, 0);
    const id = port();
    const req = out(P, REMOTE, { icmp: { type: ICMP_ECHO, id } });
    egressPass(req);
    const ekey = ctKey(P.ip, REMOTE, IPPROTO_ICMP, id, 0, CT_EGRESS);
    const e = ct.lookup(ekey);
    assert.ok(e, 'echo request: sport = id, dport = 0');
    assertLifetime(e, 60);
    clearPolicy();
    ingressPass(P, inb(REMOTE, P, { udp: { sport: 53, dport: sport } }), ID_REMOTE);
    const rep = inb(REMOTE, P, { icmp: { type: ICMP_ECHOREPLY, id } });
    ingressPass(P, rep, ID_REMOTE);
    assert.equal(ct.lookup(ekey)?.rx_packets, 1n);
    assert.equal(ct.lookup(ekey)?.rx_bytes, BigInt(rep.length));
    // A reply with another id is not related to anything.
    ingressDrop(P, inb(REMOTE, P, { icmp: { type: ICMP_ECHOREPLY, id: id + 1 } }), ID_REMOTE, DROP_POLICY);
  });

  it('related ICMP errors pass without policy: at ingress (about a flow P opened) and at egress (about a flow P accepted)', () => {
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_UDP, port: 53 });
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_ICMP, port: ICMP_ECHO });
    put(P, { id: ID_REMOTE, egress: false, proto: IPPROTO_UDP, port: 5353 });
    const sport = port();
    const query = out(P, REMOTE, { udp: { sport, dport: 53 } });
    egressPass(query);
    const id = port();
    const ping = out(P, REMOTE, { icmp: { type: ICMP_ECHO, id } });
    egressPass(ping);
    const rport = port();
    const incoming = inb(REMOTE, P, { udp: { sport: rport, dport: 5353 } });
    ingressPass(P, incoming, ID_REMOTE);
    clearPolicy();
    const n = ctCount();

    // Port unreachable from R about P's query: related at P's ingress.
    ingressPass(P, inb(REMOTE, P, { raw: { proto: IPPROTO_ICMP, seg: icmpError({ quoted: l3(query) }) } }), ID_REMOTE);
    // Time exceeded from a router on the path about P's echo request (inner ICMP).
    ingressPass(P, inb(REMOTE_ROUTER, P, { raw: { proto: IPPROTO_ICMP, seg: icmpError({ quoted: l3(ping), type: ICMP_TIME_EXCEEDED, code: 0 }) } }), ID_WORLD);
    // P's port unreachable about the flow it accepted: related at P's egress.
    egressPass(out(P, REMOTE, { raw: { proto: IPPROTO_ICMP, seg: icmpError({ quoted: l3(incoming) }) } }));
    assert.equal(ctCount(), n, 'related packets create nothing');

    // Errors about untracked flows are plain ICMP: policy-checked.
    const other = out(P, REMOTE, { udp: { sport: port(), dport: 53 } });
    ingressDrop(P, inb(REMOTE, P, { raw: { proto: IPPROTO_ICMP, seg: icmpError({ quoted: l3(other) }) } }), ID_REMOTE, DROP_POLICY);
    const notP = ipv4({ src: Q.ip, dst: REMOTE, proto: IPPROTO_UDP, payload: udp({ src: Q.ip, dst: REMOTE, sport, dport: 53 }) });
    ingressDrop(P, inb(REMOTE, P, { raw: { proto: IPPROTO_ICMP, seg: icmpError({ quoted: notP }) } }), ID_REMOTE, DROP_POLICY);
    egressDrop(out(P, REMOTE, { raw: { proto: IPPROTO_ICMP, seg: icmpError({ quoted: l3(query) }) } }), DROP_POLICY);
  });

  it('an expired entry is treated as absent: no reply bypass, a new forward packet recreates it', () => {
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const key = ctKey(P.ip, REMOTE, IPPROTO_TCP, sport, 80, CT_EGRESS);
    egressPass(out(P, REMOTE, { tcp: { sport, dport: 80 } }));
    egressPass(out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_ACK } }));
    const v = ct.lookup(key)!;
    assert.equal(v.tx_packets, 2n);
    ct.update(key, { ...v, lifetime: nowSec() - 5 });

    // Reply with P's ingress empty: dropped (no bypass), entry untouched.
    ingressDrop(P, inb(REMOTE, P, { tcp: { sport: 80, dport: sport, flags: TCP_ACK } }), ID_REMOTE, DROP_POLICY);
    assert.equal(ct.lookup(key)?.rx_packets, 0n);

    const ack = out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_ACK } });
    egressPass(ack);
    const w = ct.lookup(key)!;
    assert.equal(w.tx_packets, 1n, 'recreated, not updated');
    assert.equal(w.tx_bytes, BigInt(ack.length));
    assert.equal(w.flags, CT_F_SEEN_NON_SYN);
    assertLifetime(w, 21600);
    clearPolicy();
    ingressPass(P, inb(REMOTE, P, { tcp: { sport: 80, dport: sport, flags: TCP_ACK } }), ID_REMOTE);
  });

  it('FIN seen forward -> 10 s; a new SYN on the closing tuple reopens it', () => {
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const key = ctKey(P.ip, REMOTE, IPPROTO_TCP, sport, 80, CT_EGRESS);
    egressPass(out(P, REMOTE, { tcp: { sport, dport: 80 } }));
    egressPass(out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_FIN | TCP_ACK } }));
    let v = ct.lookup(key)!;
    assert.equal(v.flags, CT_F_SEEN_NON_SYN | CT_F_TX_CLOSING);
    assertLifetime(v, 10);
    egressPass(out(P, REMOTE, { tcp: { sport, dport: 80, flags: TCP_SYN } }));
    v = ct.lookup(key)!;
    assert.equal(v.flags, 0);
    assert.equal(v.tx_flags_seen, TCP_SYN);
    assertLifetime(v, 60);
  });

  it('non-first fragments are dropped with 157; a first fragment is tracked normally', () => {
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_UDP });
    const sport = port();
    egressPass(out(P, REMOTE, { udp: { sport, dport: 4000 } }, { fragOff: IP_MF }));
    assert.ok(ct.lookup(ctKey(P.ip, REMOTE, IPPROTO_UDP, sport, 4000, CT_EGRESS)));
    egressDrop(out(P, REMOTE, { raw: { proto: IPPROTO_UDP, seg: Buffer.alloc(16, 1) } }, { fragOff: 2 }), DROP_FRAG_NOSUPPORT);
    ingressDrop(P, ipv4L4Frame({ srcMac: NODE.host_mac, dstMac: NODE.host_mac, src: REMOTE, dst: P.ip, proto: IPPROTO_UDP, seg: Buffer.alloc(16, 1), fragOff: 3 }), ID_REMOTE, DROP_FRAG_NOSUPPORT);
  });
});
