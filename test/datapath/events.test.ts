/**
 * Trace and policy verdict events of the datapath (bpf/lib/trace.h), with
 * aggregation, on crafted packets with BPF_PROG_TEST_RUN:
 *
 *   - trace points FROM_LXC, TO_STACK (from_container), TO_LXC (policy_ingress),
 *     FROM_HOST (from_host; deferred to policy_ingress under aggregation) with
 *     their identities, endpoint ids, ifindexes, CT states, captures and a flow
 *     hash shared by both directions (and by drops)
 *   - policy verdict events: allow for a new flow (match types L3_L4, L3_ONLY,
 *     L4_ONLY, ALL), deny (133 NONE, 181) for every policy drop
 *   - aggregation NONE / LOW (periodic report via ct.last_report) / MEDIUM /
 *     MAX, monitor flags 0 (drops only), the per-CPU lost counter when the
 *     ring buffer is full (drops and traces)
 *
 * The monitor configuration is written into mb_monitor[0] per test. Events
 * are read with a RingBufReader through the event loop. Everything is pinned
 * under a per-run root /sys/fs/bpf/mbtest-ev-<rand>, removed in after() even
 * on failure. Needs root (BPF) and the built objects.
 *
 * Run: npx tsc -p . && node --test dist/test/datapath/events.test.js
 */
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfMap, RingBufReader, testRun, u32Codec, u64Codec } from '../../src/bpf';
import * as gen from '../../src/datapath/maps.gen';
import {
  ICMP_ECHO,
  IPPROTO_ICMP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  arpRequestFrame,
  icmpEcho,
  ip4,
  ipv4L4Frame,
  mac,
  tcp,
  udp,
} from '../helpers/packet';
import { CT_EGRESS, DIR_EGRESS, DIR_INGRESS, DROP_INVALID_SIP, DROP_POLICY, DROP_POLICY_DENY, ENDPOINT_F_HOST, EP_CFG_F_IPV4, EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, HOST_OBJ, ID_HOST, LXC_OBJ, POLICY_F_DENY, ROOT, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, DatapathFixture } from '../helpers/datapath';

const fx = new DatapathFixture('ev');

// maps.h
const TRACE_TO_LXC = 0;
const TRACE_TO_STACK = 3;
const TRACE_FROM_LXC = 5;
const TRACE_FROM_HOST = 7;
const CT_NEW = 0;
const CT_ESTABLISHED = 1;
const CT_REPLY = 2;
const CT_UNKNOWN = 255;
const VERDICT_ALLOW = 0;
const VERDICT_DENY = 1;
const MATCH_NONE = 0;
const MATCH_L3_ONLY = 1;
const MATCH_L3_L4 = 2;
const MATCH_L4_ONLY = 3;
const MATCH_ALL = 4;
const AGG_NONE = 0;
const AGG_LOW = 1;
const AGG_MEDIUM = 2;
const AGG_MAX = 3;
const F_TRACE = 1;
const F_VERDICT = 2;
const ID_REMOTE = 3000; // 10.2.0.0/16 in the ipcache
const TEST_RUN_IFINDEX = 1; // BPF_PROG_TEST_RUN puts the skb on loopback unless ctx names a device (from_container runs on the endpoint's veth)

// ---- topology ----
const ROUTER = ip4('10.200.0.1');
const REMOTE = ip4('10.2.0.5');
const REMOTE2 = ip4('10.2.0.6');
const NODE = {
  host_ifindex: 201, net_ifindex: 202,
  host_mac: mac('02:00:00:00:02:01'), net_mac: mac('02:00:00:00:02:02'),
  router_ipv4: ROUTER, router_ipv6: Buffer.alloc(16), flags: 0, tunnel_ifindex: 0,
};

interface Ep { id: number; secId: number; ifindex: number; ip: Buffer; mac: Buffer; nodeMac: Buffer }

function ep(id: number): Ep {
  const h = id.toString(16).padStart(2, '0');
  return { id, secId: 4000 + id, ifindex: 100 + id, ip: ip4(`10.1.0.${id}`), mac: mac(`0a:00:00:00:00:${h}`), nodeMac: mac(`fe:00:00:00:00:${h}`) };
}

const P = ep(31);
const Q = ep(32);

// ---- state ----
let monitor: BpfMap<number, gen.MonitorConfig>;
let lost: BpfMap<number, bigint>;
let ct: BpfMap<gen.CtKey, gen.CtValue>;
const policy = fx.policy;
let reader: RingBufReader | undefined;

type Trace = gen.TraceEvent & { kind: 'trace' };
type Verdict = gen.PolicyVerdictEvent & { kind: 'verdict' };
type Drop = gen.DropEvent & { kind: 'drop' };
type Ev = Trace | Verdict | Drop;
const events: Ev[] = [];
let records = 0;

function onRecord(b: Buffer): void {
  records++;
  switch (b[0]) {
    case EVENT_TRACE: events.push({ kind: 'trace', ...gen.traceEventCodec.decode(b) }); break;
    case EVENT_POLICY_VERDICT: events.push({ kind: 'verdict', ...gen.policyVerdictEventCodec.decode(b) }); break;
    case EVENT_DROP: events.push({ kind: 'drop', ...gen.dropEventCodec.decode(b) }); break;
    default: assert.fail(`unexpected event type ${b[0]}`);
  }
}

function setMonitor(flags: number, aggregation = AGG_NONE, report_interval = 5): void {
  monitor.update(0, { flags, aggregation, report_interval });
}

/** Wait until the reader has delivered everything (no new record for a while). */
async function settle(): Promise<void> {
  let n = -1;
  while (n !== records) {
    n = records;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Run `fn` (synchronous test runs) and return the events it produced. */
async function eventsOf(fn: () => void): Promise<Ev[]> {
  await settle();
  const from = events.length;
  fn();
  await settle();
  return events.slice(from);
}

const traces = (evs: Ev[]) => evs.filter((e): e is Trace => e.kind === 'trace');
const verdicts = (evs: Ev[]) => evs.filter((e): e is Verdict => e.kind === 'verdict');
const drops = (evs: Ev[]) => evs.filter((e): e is Drop => e.kind === 'drop');
const points = (evs: Ev[]) => traces(evs).map((e) => e.hdr.subtype);

function lostTotal(): bigint {
  return (lost.lookupPerCpu(0) ?? []).reduce((a, v) => a + v, 0n);
}

function nowSec(): number {
  return Number(process.hrtime.bigint() / 1_000_000_000n);
}

// ---- policy ----
interface Rule { id: number; egress: boolean; proto?: number; port?: number; prefix?: number; deny?: boolean }

function put(e: Ep, r: Rule): void {
  const prefixlen = r.prefix ?? (r.proto ? (r.port !== undefined ? 64 : 48) : 40);
  policy[e.id].update(
    { prefixlen, sec_id: r.id, egress: r.egress ? 1 : 0, protocol: r.proto ?? 0, dport: r.port ?? 0 },
    { packets: 0n, bytes: 0n, proxy_port: 0, flags: r.deny ? POLICY_F_DENY : 0, prefix_len: prefixlen },
  );
}

function clearPolicy(): void {
  for (const m of Object.values(policy)) for (const k of m.keys()) m.delete(k);
}

// ---- packets ----
let portSeq = 41000;
function port(): number {
  return portSeq++;
}

const PAYLOAD = Buffer.from('events!');

function tcpOut(from: Ep, dst: Buffer, sport: number, dport: number, flags: number): Buffer {
  return ipv4L4Frame({ srcMac: from.mac, dstMac: from.nodeMac, src: from.ip, dst, proto: IPPROTO_TCP, seg: tcp({ src: from.ip, dst, sport, dport, flags, payload: PAYLOAD }) });
}

function tcpIn(src: Buffer, to: Ep, sport: number, dport: number, flags: number): Buffer {
  return ipv4L4Frame({ srcMac: NODE.host_mac, dstMac: NODE.host_mac, src, dst: to.ip, proto: IPPROTO_TCP, seg: tcp({ src, dst: to.ip, sport, dport, flags, payload: PAYLOAD }) });
}

function udpOut(from: Ep, dst: Buffer, sport: number, dport: number): Buffer {
  return ipv4L4Frame({ srcMac: from.mac, dstMac: from.nodeMac, src: from.ip, dst, proto: IPPROTO_UDP, seg: udp({ src: from.ip, dst, sport, dport, payload: PAYLOAD }) });
}

function udpIn(src: Buffer, to: Ep, sport: number, dport: number): Buffer {
  return ipv4L4Frame({ srcMac: NODE.host_mac, dstMac: NODE.host_mac, src, dst: to.ip, proto: IPPROTO_UDP, seg: udp({ src, dst: to.ip, sport, dport, payload: PAYLOAD }) });
}

function run(prog: string, pkt: Buffer, verdict: number, cb0 = 0, repeat?: number): void {
  const r = fx.runNamed(prog, { P, Q }, pkt, { cb0, repeat });
  assert.equal(r.retval, verdict, `${prog}: verdict`);
}

/** P's egress (from_container) to a remote destination: handed to the host. */
const egressP = (pkt: Buffer) => run('from_container_P', pkt, TC_ACT_REDIRECT);
/** A packet from REMOTE into P's policy_ingress (as from_host would tail-call it). */
const ingressP = (pkt: Buffer) => run('policy_ingress_P', pkt, TC_ACT_REDIRECT, ID_REMOTE);

function assertCapture(e: { orig_len: number; cap_len: number; data: Buffer }, pkt: Buffer, what: string): void {
  assert.equal(e.orig_len, pkt.length, `${what}: orig_len`);
  assert.equal(e.cap_len, Math.min(pkt.length, 128), `${what}: cap_len`);
}

before(() => {
  if (!fs.existsSync(LXC_OBJ) || !fs.existsSync(HOST_OBJ)) execFileSync('make', ['-s', '-C', path.join(ROOT, 'bpf')], { stdio: 'inherit' });
  fx.load();
  for (const e of [P, Q]) fx.addEndpoint(e);
  fx.addHostAddress(ROUTER);
  fx.setIpcache(ip4('10.2.0.0'), 16, ID_REMOTE);
  monitor = fx.pin('mb_monitor').withCodecs(u32Codec, gen.monitorConfigCodec);
  lost = fx.pin('mb_events_lost').withCodecs(u32Codec, u64Codec);
  ct = fx.pin('mb_ct').withCodecs(gen.ctKeyCodec, gen.ctValueCodec);
  fx.pin('mb_node').withCodecs(u32Codec, gen.nodeConfigCodec).update(0, NODE);
  reader = new RingBufReader(fx.pin('mb_events'), onRecord);
});

after(() => {
  reader?.close();
  fx.close();
});

beforeEach(() => {
  if (Object.keys(policy).length) clearPolicy();
  if (monitor) setMonitor(0);
});

// ============================================================================

describe('trace points (MONITOR_F_TRACE, aggregation NONE)', () => {
  it('pod -> remote: FROM_LXC then TO_STACK; the reply through from_host: FROM_HOST then TO_LXC; one flow hash', async () => {
    setMonitor(F_TRACE, AGG_NONE);
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const syn = tcpOut(P, REMOTE, sport, 80, TCP_SYN);
    const out = traces(await eventsOf(() => egressP(syn)));
    assert.deepEqual(points(out), [TRACE_FROM_LXC, TRACE_TO_STACK]);
    const [from, to] = out;
    for (const e of out) {
      assert.equal(e.hdr.type, EVENT_TRACE);
      assert.equal(e.hdr.source, P.id, 'source = the endpoint');
      assert.equal(e.src_label, P.secId);
      assert.equal(e.dst_label, ID_REMOTE);
      assert.equal(e.dst_id, 0, 'not a local endpoint');
      assert.equal(e.ct_state, CT_NEW);
      assertCapture(e, syn, 'egress');
    }
    assert.equal(from.ifindex, P.ifindex, 'FROM_LXC: the device it came in on');
    assert.deepEqual(from.data.subarray(0, syn.length), syn, 'FROM_LXC captures the packet as sent');
    assert.equal(to.ifindex, NODE.net_ifindex, 'TO_STACK: the device it is redirected to');
    assert.deepEqual(to.data.subarray(0, 6), NODE.host_mac, 'TO_STACK captures the rewritten packet');
    assert.equal(from.hdr.hash, to.hdr.hash);
    assert.notEqual(from.hdr.hash, 0);

    const synack = tcpIn(REMOTE, P, 80, sport, TCP_SYN | TCP_ACK);
    const back = traces(await eventsOf(() => run('from_host', synack, TC_ACT_REDIRECT)));
    assert.deepEqual(points(back), [TRACE_FROM_HOST, TRACE_TO_LXC]);
    const [fh, tl] = back;
    assert.equal(fh.hdr.source, 0, 'from_host: no endpoint');
    assert.equal(fh.dst_id, P.id);
    assert.equal(fh.src_label, ID_REMOTE);
    assert.equal(fh.dst_label, P.secId);
    assert.equal(fh.ct_state, CT_UNKNOWN, 'no CT state in from_host');
    assert.equal(fh.ifindex, TEST_RUN_IFINDEX);
    assert.equal(tl.hdr.source, P.id);
    assert.equal(tl.dst_id, P.id);
    assert.equal(tl.src_label, ID_REMOTE);
    assert.equal(tl.dst_label, P.secId);
    assert.equal(tl.ct_state, CT_REPLY);
    assert.equal(tl.ifindex, P.ifindex, 'TO_LXC: the endpoint\'s host-side veth');
    assert.deepEqual(tl.data.subarray(0, 6), P.mac, 'TO_LXC captures the packet as delivered');
    assertCapture(tl, synack, 'ingress');
    assert.equal(fh.hdr.hash, from.hdr.hash, 'the reply has the flow hash of the request');
    assert.equal(tl.hdr.hash, from.hdr.hash);

    // Another flow: another hash.
    const other = traces(await eventsOf(() => egressP(tcpOut(P, REMOTE, port(), 80, TCP_SYN))));
    assert.notEqual(other[0].hdr.hash, from.hdr.hash);
  });

  it('pod -> pod on the node: FROM_LXC (P, new) then TO_LXC (Q, new); the reply: FROM_LXC (Q, reply), TO_LXC (P, reply)', async () => {
    setMonitor(F_TRACE, AGG_NONE);
    put(P, { id: Q.secId, egress: true });
    put(Q, { id: P.secId, egress: false, proto: IPPROTO_TCP, port: 8080 });
    const sport = port();
    const evs = traces(await eventsOf(() => run('from_container_P', tcpOut(P, Q.ip, sport, 8080, TCP_SYN), TC_ACT_REDIRECT)));
    assert.deepEqual(points(evs), [TRACE_FROM_LXC, TRACE_TO_LXC]);
    assert.deepEqual(
      evs.map((e) => [e.hdr.source, e.src_label, e.dst_label, e.dst_id, e.ct_state]),
      [[P.id, P.secId, Q.secId, Q.id, CT_NEW], [Q.id, P.secId, Q.secId, Q.id, CT_NEW]],
    );
    assert.equal(evs[1].ifindex, Q.ifindex);

    const back = traces(await eventsOf(() => run('from_container_Q', tcpOut(Q, P.ip, 8080, sport, TCP_SYN | TCP_ACK), TC_ACT_REDIRECT)));
    assert.deepEqual(points(back), [TRACE_FROM_LXC, TRACE_TO_LXC]);
    assert.deepEqual(
      back.map((e) => [e.hdr.source, e.src_label, e.dst_label, e.dst_id, e.ct_state]),
      [[Q.id, Q.secId, P.secId, P.id, CT_REPLY], [P.id, Q.secId, P.secId, P.id, CT_REPLY]],
    );
    assert.equal(back[0].hdr.hash, evs[0].hdr.hash);
    assert.equal(back[1].hdr.hash, evs[0].hdr.hash);
  });

  it('an established packet: CT state ESTABLISHED at both points', async () => {
    setMonitor(F_TRACE, AGG_NONE);
    put(P, { id: ID_REMOTE, egress: true });
    const sport = port();
    egressP(udpOut(P, REMOTE, sport, 53));
    const evs = traces(await eventsOf(() => egressP(udpOut(P, REMOTE, sport, 53))));
    assert.deepEqual(evs.map((e) => [e.hdr.subtype, e.ct_state]), [[TRACE_FROM_LXC, CT_ESTABLISHED], [TRACE_TO_STACK, CT_ESTABLISHED]]);
  });

  it('ARP: a request passed to the host is traced untracked (NONE only); answered requests are not', async () => {
    setMonitor(F_TRACE, AGG_NONE);
    const dad = arpRequestFrame({ srcMac: P.mac, senderIp: P.ip, targetIp: P.ip });
    const evs = traces(await eventsOf(() => run('from_container_P', dad, TC_ACT_OK)));
    assert.deepEqual(evs.map((e) => [e.hdr.subtype, e.ct_state, e.hdr.source, e.src_label]), [[TRACE_FROM_LXC, CT_UNKNOWN, P.id, P.secId]]);
    assertCapture(evs[0], dad, 'arp');
    const req = arpRequestFrame({ srcMac: P.mac, senderIp: P.ip, targetIp: ROUTER });
    assert.deepEqual(await eventsOf(() => run('from_container_P', req, TC_ACT_REDIRECT)), [], 'responder: no event');
    setMonitor(F_TRACE, AGG_MEDIUM);
    assert.deepEqual(await eventsOf(() => run('from_container_P', dad, TC_ACT_OK)), [], 'untracked: not under aggregation');
  });

  it('a policy drop is a drop (and no trace); drops carry the flow hash of the traces', async () => {
    setMonitor(F_TRACE, AGG_NONE);
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_UDP });
    const sport = port();
    const first = traces(await eventsOf(() => egressP(udpOut(P, REMOTE, sport, 53))));
    clearPolicy(); // revoke: the established flow is cut
    const evs = await eventsOf(() => run('from_container_P', udpOut(P, REMOTE, sport, 53), TC_ACT_SHOT));
    assert.deepEqual(traces(evs), []);
    const [d] = drops(evs);
    assert.equal(d.hdr.subtype, DROP_POLICY);
    assert.equal(d.hdr.hash, first[0].hdr.hash);
  });
});

describe('FROM_HOST under aggregation (emitted by policy_ingress)', () => {
  it('MEDIUM: the first packet from the host gets FROM_HOST (with its CT state) + TO_LXC; a pure ACK nothing', async () => {
    setMonitor(F_TRACE, AGG_MEDIUM);
    put(P, { id: ID_REMOTE, egress: false, proto: IPPROTO_TCP, port: 22 });
    const sport = port();
    const evs = traces(await eventsOf(() => run('from_host', tcpIn(REMOTE, P, sport, 22, TCP_SYN), TC_ACT_REDIRECT)));
    assert.deepEqual(
      evs.map((e) => [e.hdr.subtype, e.hdr.source, e.src_label, e.dst_label, e.dst_id, e.ct_state, e.ifindex]),
      [[TRACE_FROM_HOST, 0, ID_REMOTE, P.secId, P.id, CT_NEW, TEST_RUN_IFINDEX], [TRACE_TO_LXC, P.id, ID_REMOTE, P.secId, P.id, CT_NEW, P.ifindex]],
    );
    assert.deepEqual(await eventsOf(() => run('from_host', tcpIn(REMOTE, P, sport, 22, TCP_ACK), TC_ACT_REDIRECT)), []);
    // Packets that reach policy_ingress from a pod never get a FROM_HOST.
    put(Q, { id: ID_REMOTE, egress: true });
    const q = traces(await eventsOf(() => run('from_container_Q', tcpOut(Q, REMOTE, port(), 22, TCP_SYN), TC_ACT_REDIRECT)));
    assert.deepEqual(points(q), [TRACE_FROM_LXC, TRACE_TO_STACK]);
  });
});

// ============================================================================

describe('policy verdict events (MONITOR_F_VERDICT)', () => {
  async function allowVerdict(rule: Rule, pkt: Buffer, dport: number, proto: number): Promise<Verdict> {
    put(P, rule);
    const evs = await eventsOf(() => egressP(pkt));
    assert.deepEqual(traces(evs), [], 'traces off');
    const vs = verdicts(evs);
    assert.equal(vs.length, 1, 'one verdict for the new flow');
    const v = vs[0];
    assert.equal(v.hdr.type, EVENT_POLICY_VERDICT);
    assert.equal(v.hdr.subtype, 0);
    assert.equal(v.hdr.source, P.id);
    assert.equal(v.remote_label, ID_REMOTE);
    assert.equal(v.verdict, VERDICT_ALLOW);
    assert.equal(v.drop_reason, 0);
    assert.equal(v.dir, DIR_EGRESS);
    assert.equal(v.dst_port, dport);
    assert.equal(v.proto, proto);
    assert.equal(v.audited, 0);
    assert.equal(v.ifindex, P.ifindex);
    assertCapture(v, pkt, 'verdict');
    assert.deepEqual(v.data.subarray(0, pkt.length), pkt);
    return v;
  }

  it('allow, exact identity + port: L3_L4; only the first packet of the flow', async () => {
    setMonitor(F_VERDICT);
    const sport = port();
    const v = await allowVerdict({ id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 }, tcpOut(P, REMOTE, sport, 80, TCP_SYN), 80, IPPROTO_TCP);
    assert.equal(v.match_type, MATCH_L3_L4);
    assert.deepEqual(await eventsOf(() => egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK))), [], 'established: policy checked, no verdict');
  });

  it('allow, exact identity, a port range (/61) and a protocol-only (/48) entry: L3_L4', async () => {
    setMonitor(F_VERDICT);
    let v = await allowVerdict({ id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 8080, prefix: 61 }, tcpOut(P, REMOTE, port(), 8083, TCP_SYN), 8083, IPPROTO_TCP);
    assert.equal(v.match_type, MATCH_L3_L4);
    v = await allowVerdict({ id: ID_REMOTE, egress: true, proto: IPPROTO_UDP }, udpOut(P, REMOTE, port(), 5353), 5353, IPPROTO_UDP);
    assert.equal(v.match_type, MATCH_L3_L4);
  });

  it('allow, exact identity, any port (/40): L3_ONLY', async () => {
    setMonitor(F_VERDICT);
    const v = await allowVerdict({ id: ID_REMOTE, egress: true }, udpOut(P, REMOTE, port(), 53), 53, IPPROTO_UDP);
    assert.equal(v.match_type, MATCH_L3_ONLY);
  });

  it('allow, any identity + port: L4_ONLY; ICMP reports the type as the port', async () => {
    setMonitor(F_VERDICT);
    let v = await allowVerdict({ id: 0, egress: true, proto: IPPROTO_TCP, port: 443 }, tcpOut(P, REMOTE, port(), 443, TCP_SYN), 443, IPPROTO_TCP);
    assert.equal(v.match_type, MATCH_L4_ONLY);
    const echo = ipv4L4Frame({ srcMac: P.mac, dstMac: P.nodeMac, src: P.ip, dst: REMOTE, proto: IPPROTO_ICMP, seg: icmpEcho({ id: port() }) });
    v = await allowVerdict({ id: 0, egress: true, proto: IPPROTO_ICMP, port: ICMP_ECHO }, echo, ICMP_ECHO, IPPROTO_ICMP);
    assert.equal(v.match_type, MATCH_L4_ONLY);
  });

  it('allow, any identity, any port: ALL; an exact-identity entry wins the match type', async () => {
    setMonitor(F_VERDICT);
    let v = await allowVerdict({ id: 0, egress: true }, udpOut(P, REMOTE, port(), 123), 123, IPPROTO_UDP);
    assert.equal(v.match_type, MATCH_ALL);
    v = await allowVerdict({ id: ID_REMOTE, egress: true, proto: IPPROTO_UDP, port: 124 }, udpOut(P, REMOTE, port(), 124), 124, IPPROTO_UDP);
    assert.equal(v.match_type, MATCH_L3_L4);
  });

  it('ingress: dir INGRESS, remote = the source identity', async () => {
    setMonitor(F_VERDICT);
    put(P, { id: ID_REMOTE, egress: false, proto: IPPROTO_UDP, port: 53 });
    const evs = verdicts(await eventsOf(() => ingressP(udpIn(REMOTE, P, port(), 53))));
    assert.deepEqual(
      evs.map((v) => [v.hdr.source, v.remote_label, v.verdict, v.dir, v.match_type, v.dst_port, v.proto]),
      [[P.id, ID_REMOTE, VERDICT_ALLOW, DIR_INGRESS, MATCH_L3_L4, 53, IPPROTO_UDP]],
    );
  });

  it('deny, no entry: 133 / NONE, with the drop event', async () => {
    setMonitor(F_VERDICT);
    const pkt = tcpOut(P, REMOTE, port(), 80, TCP_SYN);
    const evs = await eventsOf(() => run('from_container_P', pkt, TC_ACT_SHOT));
    assert.deepEqual(
      verdicts(evs).map((v) => [v.remote_label, v.verdict, v.drop_reason, v.dir, v.match_type, v.dst_port, v.proto]),
      [[ID_REMOTE, VERDICT_DENY, DROP_POLICY, DIR_EGRESS, MATCH_NONE, 80, IPPROTO_TCP]],
    );
    assert.deepEqual(drops(evs).map((d) => d.hdr.subtype), [DROP_POLICY]);
    assert.equal(drops(evs)[0].hdr.hash, verdicts(evs)[0].hdr.hash);
    assertCapture(verdicts(evs)[0], pkt, 'deny');
  });

  it('deny entries: 181 with the deny entry\'s match type (identity /40: L3_ONLY, wildcard TCP: L4_ONLY)', async () => {
    setMonitor(F_VERDICT);
    put(P, { id: ID_REMOTE, egress: true, deny: true });
    put(P, { id: 0, egress: true, proto: IPPROTO_TCP, port: 80 });
    let evs = await eventsOf(() => run('from_container_P', tcpOut(P, REMOTE, port(), 80, TCP_SYN), TC_ACT_SHOT));
    assert.deepEqual(verdicts(evs).map((v) => [v.verdict, v.drop_reason, v.match_type]), [[VERDICT_DENY, DROP_POLICY_DENY, MATCH_L3_ONLY]]);
    assert.deepEqual(drops(evs).map((d) => d.hdr.subtype), [DROP_POLICY_DENY]);
    clearPolicy();
    put(P, { id: 0, egress: true, proto: IPPROTO_TCP, deny: true });
    put(P, { id: ID_REMOTE, egress: true });
    evs = await eventsOf(() => run('from_container_P', tcpOut(P, REMOTE, port(), 80, TCP_SYN), TC_ACT_SHOT));
    assert.deepEqual(verdicts(evs).map((v) => [v.verdict, v.drop_reason, v.match_type]), [[VERDICT_DENY, DROP_POLICY_DENY, MATCH_L4_ONLY]]);
  });

  it('every policy drop of an established flow gets a deny verdict (revocation)', async () => {
    setMonitor(F_VERDICT);
    put(P, { id: ID_REMOTE, egress: true });
    const sport = port();
    egressP(udpOut(P, REMOTE, sport, 53));
    clearPolicy();
    const evs = await eventsOf(() => {
      run('from_container_P', udpOut(P, REMOTE, sport, 53), TC_ACT_SHOT);
      run('from_container_P', udpOut(P, REMOTE, sport, 53), TC_ACT_SHOT);
    });
    assert.deepEqual(verdicts(evs).map((v) => [v.verdict, v.drop_reason]), [[VERDICT_DENY, DROP_POLICY], [VERDICT_DENY, DROP_POLICY]]);
  });

  it('replies and flags TRACE only: no verdicts', async () => {
    setMonitor(F_VERDICT);
    put(P, { id: ID_REMOTE, egress: true });
    const sport = port();
    egressP(tcpOut(P, REMOTE, sport, 80, TCP_SYN));
    assert.deepEqual(await eventsOf(() => ingressP(tcpIn(REMOTE, P, 80, sport, TCP_SYN | TCP_ACK))), [], 'a reply: no policy lookup');
    setMonitor(F_TRACE);
    assert.deepEqual(verdicts(await eventsOf(() => egressP(tcpOut(P, REMOTE, port(), 80, TCP_SYN)))), []);
  });
});

// ============================================================================

describe('aggregation', () => {
  /** One TCP connection P -> REMOTE:80, replies into P's policy_ingress; returns the trace points + CT states per step. */
  async function connection(): Promise<Record<string, [number, number][]>> {
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const steps: [string, () => void][] = [
      ['syn', () => egressP(tcpOut(P, REMOTE, sport, 80, TCP_SYN))],
      ['synack', () => ingressP(tcpIn(REMOTE, P, 80, sport, TCP_SYN | TCP_ACK))],
      ['ack', () => egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK))],
      ['data', () => egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK | TCP_PSH))],
      ['data2', () => egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK | TCP_PSH))],
      ['rdata', () => ingressP(tcpIn(REMOTE, P, 80, sport, TCP_ACK | TCP_PSH))],
      ['fin', () => egressP(tcpOut(P, REMOTE, sport, 80, TCP_FIN | TCP_ACK))],
      ['finack', () => ingressP(tcpIn(REMOTE, P, 80, sport, TCP_FIN | TCP_ACK))],
      ['lastack', () => egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK))],
    ];
    const res: Record<string, [number, number][]> = {};
    for (const [name, fn] of steps) {
      const evs = await eventsOf(fn);
      res[name] = traces(evs).map((e) => [e.hdr.subtype, e.ct_state]);
    }
    return res;
  }

  const OUT_NEW: [number, number][] = [[TRACE_FROM_LXC, CT_NEW], [TRACE_TO_STACK, CT_NEW]];
  const OUT_EST: [number, number][] = [[TRACE_FROM_LXC, CT_ESTABLISHED], [TRACE_TO_STACK, CT_ESTABLISHED]];
  const IN_REPLY: [number, number][] = [[TRACE_TO_LXC, CT_REPLY]];

  it('NONE: every packet', async () => {
    setMonitor(F_TRACE, AGG_NONE);
    assert.deepEqual(await connection(), {
      syn: OUT_NEW, synack: IN_REPLY, ack: OUT_EST, data: OUT_EST, data2: OUT_EST,
      rdata: IN_REPLY, fin: OUT_EST, finack: IN_REPLY, lastack: OUT_EST,
    });
  });

  it('MEDIUM: SYN, SYN-ACK (first reply), FIN each way; nothing for ACKs and data', async () => {
    setMonitor(F_TRACE | F_VERDICT, AGG_MEDIUM);
    assert.deepEqual(await connection(), {
      syn: OUT_NEW, synack: IN_REPLY, ack: [], data: [], data2: [],
      rdata: [], fin: OUT_EST, finack: IN_REPLY, lastack: [],
    });
  });

  it('MEDIUM: an RST is a new flag; a UDP flow reports its first packet and its first reply only', async () => {
    setMonitor(F_TRACE, AGG_MEDIUM);
    put(P, { id: ID_REMOTE, egress: true });
    const sport = port();
    egressP(tcpOut(P, REMOTE, sport, 80, TCP_SYN));
    assert.deepEqual(points(await eventsOf(() => egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK)))), []);
    assert.deepEqual(points(await eventsOf(() => ingressP(tcpIn(REMOTE, P, 80, sport, TCP_RST | TCP_ACK)))), [TRACE_TO_LXC]);

    const u = port();
    assert.deepEqual(points(await eventsOf(() => egressP(udpOut(P, REMOTE2, u, 53)))), [TRACE_FROM_LXC, TRACE_TO_STACK]);
    assert.deepEqual(points(await eventsOf(() => egressP(udpOut(P, REMOTE2, u, 53)))), []);
    assert.deepEqual(points(await eventsOf(() => ingressP(udpIn(REMOTE2, P, 53, u)))), [TRACE_TO_LXC]);
    assert.deepEqual(points(await eventsOf(() => ingressP(udpIn(REMOTE2, P, 53, u)))), []);
  });

  it('MAX: the first packet of a flow only', async () => {
    setMonitor(F_TRACE, AGG_MAX);
    assert.deepEqual(await connection(), {
      syn: OUT_NEW, synack: [], ack: [], data: [], data2: [],
      rdata: [], fin: [], finack: [], lastack: [],
    });
  });

  it('LOW: as MEDIUM plus a periodic report once now - ct.last_report >= report_interval', async () => {
    // A long interval (the monotonic clock starts at boot: last_report - interval must stay >= 0).
    const interval = Math.min(3600, nowSec());
    assert.ok(interval >= 10, 'booted long enough ago');
    setMonitor(F_TRACE, AGG_LOW, interval);
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    const key: gen.CtKey = { saddr: P.ip, daddr: REMOTE, sport, dport: 80, nexthdr: IPPROTO_TCP, flags: CT_EGRESS, family: 4 };
    const data = () => egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK | TCP_PSH));
    assert.deepEqual(points(await eventsOf(() => egressP(tcpOut(P, REMOTE, sport, 80, TCP_SYN)))), [TRACE_FROM_LXC, TRACE_TO_STACK]);
    const created = ct.lookup(key)!;
    assert.ok(Math.abs(created.last_report - nowSec()) <= 2, 'last_report = creation time');
    assert.deepEqual(points(await eventsOf(() => ingressP(tcpIn(REMOTE, P, 80, sport, TCP_SYN | TCP_ACK)))), [TRACE_TO_LXC]);
    assert.deepEqual(points(await eventsOf(data)), [], 'within the interval');

    // The interval has passed (as far as the entry knows): one report, then quiet again.
    ct.update(key, { ...ct.lookup(key)!, last_report: nowSec() - interval });
    const evs = traces(await eventsOf(data));
    assert.deepEqual(evs.map((e) => [e.hdr.subtype, e.ct_state]), OUT_EST);
    assert.ok(Math.abs(ct.lookup(key)!.last_report - nowSec()) <= 2, 'last_report updated');
    assert.deepEqual(points(await eventsOf(data)), []);

    // report_interval 1: a report when the last one is a second old.
    setMonitor(F_TRACE, AGG_LOW, 1);
    ct.update(key, { ...ct.lookup(key)!, last_report: nowSec() - 1 });
    assert.deepEqual(points(await eventsOf(data)), [TRACE_FROM_LXC, TRACE_TO_STACK]);
    // Replies are reported periodically too (the same entry).
    ct.update(key, { ...ct.lookup(key)!, last_report: nowSec() - 10 });
    assert.deepEqual(points(await eventsOf(() => ingressP(tcpIn(REMOTE, P, 80, sport, TCP_ACK)))), [TRACE_TO_LXC]);
  });

  it('MEDIUM on an established stream without flag changes: no events at all', async () => {
    setMonitor(F_TRACE | F_VERDICT, AGG_MEDIUM, 1);
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    const sport = port();
    egressP(tcpOut(P, REMOTE, sport, 80, TCP_SYN));
    ingressP(tcpIn(REMOTE, P, 80, sport, TCP_SYN | TCP_ACK));
    egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK));
    const evs = await eventsOf(() => {
      for (let i = 0; i < 20; i++) {
        egressP(tcpOut(P, REMOTE, sport, 80, TCP_ACK | TCP_PSH));
        ingressP(tcpIn(REMOTE, P, 80, sport, TCP_ACK));
      }
    });
    assert.deepEqual(evs, []);
  });

  it('flags 0: no trace or verdict events, drops still reported', async () => {
    setMonitor(0, AGG_NONE);
    put(P, { id: ID_REMOTE, egress: true, proto: IPPROTO_TCP, port: 80 });
    let evs = await eventsOf(() => {
      egressP(tcpOut(P, REMOTE, port(), 80, TCP_SYN));
      run('from_host', tcpIn(REMOTE, P, 80, port(), TCP_SYN), TC_ACT_SHOT); // ingress policy: empty
    });
    assert.deepEqual(evs.map((e) => [e.kind, e.hdr.subtype]), [['drop', DROP_POLICY]]);
    const spoofed = ipv4L4Frame({ srcMac: P.mac, dstMac: P.nodeMac, src: REMOTE, dst: REMOTE2, proto: IPPROTO_UDP, seg: udp({ src: REMOTE, dst: REMOTE2, sport: 1, dport: 2 }) });
    evs = await eventsOf(() => run('from_container_P', spoofed, TC_ACT_SHOT));
    assert.deepEqual(evs.map((e) => [e.kind, e.hdr.subtype]), [['drop', DROP_INVALID_SIP]]);
    const d = evs[0] as Drop;
    assert.equal(d.hdr.source, P.id);
    assert.equal(d.src_label, P.secId);
    assertCapture(d, spoofed, 'drop');
    assert.deepEqual(d.data.subarray(0, spoofed.length), spoofed);
  });
});

// ============================================================================

describe('lost events', () => {
  /**
   * Run `pkt` `n` times in one test run (the reader cannot drain meanwhile:
   * it runs on this thread's event loop); every one of the n * perRun events
   * is either received or counted as lost.
   */
  async function fill(prog: string, pkt: Buffer, verdict: number, n: number, perRun: number, kind: Ev['kind']): Promise<{ received: number; lostDelta: bigint }> {
    await settle();
    const lost0 = lostTotal();
    const evs = await eventsOf(() => run(prog, pkt, verdict, 0, n));
    const received = evs.filter((e) => e.kind === kind).length;
    const lostDelta = lostTotal() - lost0;
    assert.equal(evs.length, received, `only ${kind} events`);
    assert.ok(lostDelta > 0n, `events were lost (received ${received})`);
    assert.equal(BigInt(received) + lostDelta, BigInt(n * perRun), 'every event is either delivered or counted as lost');
    return { received, lostDelta };
  }

  it('drop events: counted in mb_events_lost when the ring buffer is full', async () => {
    setMonitor(0);
    const spoofed = ipv4L4Frame({ srcMac: P.mac, dstMac: P.nodeMac, src: REMOTE, dst: REMOTE2, proto: IPPROTO_UDP, seg: udp({ src: REMOTE, dst: REMOTE2, sport: 1, dport: 2 }) });
    // 1 MiB / (164 + 8) bytes per record: about 6100 drops fit, 8000 do not.
    const { received } = await fill('from_container_P', spoofed, TC_ACT_SHOT, 8000, 1, 'drop');
    assert.ok(received > 5000, `the ring buffer held ${received} drops`);
  });

  it('trace events: counted in mb_events_lost when the ring buffer is full; delivery resumes once drained', async () => {
    setMonitor(F_TRACE, AGG_NONE);
    const dad = arpRequestFrame({ srcMac: P.mac, senderIp: P.ip, targetIp: P.ip });
    // One FROM_LXC per run, the packet is not modified: 8000 records of 168 bytes > 1 MiB.
    await fill('from_container_P', dad, TC_ACT_OK, 8000, 1, 'trace');
    const after = traces(await eventsOf(() => run('from_container_P', dad, TC_ACT_OK)));
    assert.equal(after.length, 1, 'the drained buffer takes events again');
  });
});
