/**
 * The L7 redirect decisions of bpf_lxc.o (lib/proxy.h) on crafted packets
 * with BPF_PROG_TEST_RUN. The kernel runs test packets outside tc ingress, so
 * bpf_sk_assign itself cannot succeed here (the e2e tests cover delivery to a
 * real proxy); what is checked is every decision around it:
 *   - a TCP flow to a port whose entry carries a proxy port goes to the proxy:
 *     without a proxy socket it is dropped with 178 (fail closed, never passed),
 *     its conntrack entry is marked CT_F_PROXY_REDIRECT (egress and ingress);
 *     with the proxy's listener present, the lookup finds it (the assignment
 *     is what the test run refuses: 179);
 *   - an entry without a proxy port is not redirected; a UDP flow with one
 *     (DNS) goes to the proxy's marked UDP socket on the port (178 without);
 *   - packets from the proxy (MB_MARK_FROM_PROXY) are not redirected again,
 *     and their flow's entry gets CT_F_FROM_PROXY;
 *   - the server's reply of such a flow is steered to the stack, marked
 *     MB_MARK_TO_PROXY, instead of being delivered;
 *   - an established redirected flow stays redirected after its L7 rule is
 *     gone; a TCP segment no flow knows and no proxy socket owns goes on to
 *     policy as before.
 */
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { BpfMap, parseSkbCtx, u32Codec } from '../../src/bpf';
import * as C from '../../src/datapath/constants';
import * as gen from '../../src/datapath/maps.gen';
import { MetricsKey, metricsKeyCodec } from '../../src/datapath/metricsmap';
import { sockets } from '../../src/proxy/sockets';
import { IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN, ip4, ipv4L4Frame, mac, tcp, udp } from '../helpers/packet';
import { CT_EGRESS, CT_INGRESS, DIR_EGRESS, DIR_INGRESS, DatapathFixture, FORWARDED, HOST_OBJ, LXC_OBJ, ROOT, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT } from '../helpers/datapath';

const fx = new DatapathFixture('l7');
const DROP_PROXY_LOOKUP_FAILED = 178;
const DROP_PROXY_SET_FAILED = 179;
const PROXY_PORT = 15999;

const ROUTER = ip4('10.200.0.1');
const NODE = { host_ifindex: 201, net_ifindex: 202, host_mac: mac('02:00:00:00:02:01'), net_mac: mac('02:00:00:00:02:02'), router_ipv4: ROUTER, router_ipv6: Buffer.alloc(16), flags: 0, tunnel_ifindex: 0 };

interface Ep { id: number; secId: number; ifindex: number; ip: Buffer; mac: Buffer; nodeMac: Buffer }
function ep(id: number): Ep {
  const h = id.toString(16).padStart(2, '0');
  return { id, secId: 2100 + id, ifindex: 0, ip: ip4(`10.1.0.${id}`), mac: mac(`0a:00:00:00:01:${h}`), nodeMac: mac(`fe:00:00:00:01:${h}`) };
}
const A = ep(31); // client
const B = ep(32); // server

let metrics: BpfMap<MetricsKey, gen.MetricsValue>;
let ct: BpfMap<gen.CtKey, gen.CtValue>;
let sport = 41000;

function metric(reason: number, dir: number): number {
  return (metrics.lookupPerCpu({ reason, dir }) ?? []).reduce((a, v) => a + Number(v.count), 0);
}

function allow(e: Ep, o: { id: number; egress: boolean; proto: number; port: number; proxyPort?: number }): void {
  fx.policy[e.id].update(
    { prefixlen: 64, sec_id: o.id, egress: o.egress ? 1 : 0, protocol: o.proto, dport: o.port },
    { packets: 0n, bytes: 0n, proxy_port: o.proxyPort ?? 0, flags: 0, prefix_len: 64 },
  );
}

function tcpFrame(src: Ep | Buffer, dst: Buffer, sp: number, dp: number, flags: number, srcMac?: Buffer, dstMac?: Buffer): Buffer {
  const s = Buffer.isBuffer(src) ? src : src.ip;
  return ipv4L4Frame({
    srcMac: srcMac ?? (Buffer.isBuffer(src) ? NODE.host_mac : src.mac),
    dstMac: dstMac ?? (Buffer.isBuffer(src) ? NODE.host_mac : src.nodeMac),
    src: s, dst, proto: IPPROTO_TCP,
    seg: tcp({ src: s, dst, sport: sp, dport: dp, flags, payload: Buffer.from('GET / HTTP/1.1\r\n\r\n') }),
  });
}

function ctFlags(saddr: Buffer, daddr: Buffer, sp: number, dp: number, dir: number): number | undefined {
  return ct.lookup({ saddr, daddr, sport: sp, dport: dp, nexthdr: IPPROTO_TCP, flags: dir, family: 4 })?.flags;
}

before(() => {
  if (!fs.existsSync(LXC_OBJ) || !fs.existsSync(HOST_OBJ)) execFileSync('make', ['-s', '-C', path.join(ROOT, 'bpf')], { stdio: 'inherit' });
  fx.load();
  fx.addEndpoint(A);
  fx.addEndpoint(B);
  metrics = fx.pin('mb_metrics').withCodecs(metricsKeyCodec, gen.metricsValueCodec);
  ct = fx.pin('mb_ct').withCodecs(gen.ctKeyCodec, gen.ctValueCodec);
  fx.pin('mb_node').withCodecs(u32Codec, gen.nodeConfigCodec).update(0, NODE);
});

after(() => fx.close());

beforeEach(() => {
  for (const m of Object.values(fx.policy)) for (const k of m.keys()) m.delete(k);
});

describe('L7 redirect decisions (bpf_lxc.o)', () => {
  it('egress: a flow to a port with a proxy port and no proxy socket is dropped with 178, never passed; its entry is marked', () => {
    allow(A, { id: B.secId, egress: true, proto: IPPROTO_TCP, port: 80, proxyPort: PROXY_PORT });
    const sp = sport++;
    const before = metric(DROP_PROXY_LOOKUP_FAILED, DIR_EGRESS);
    const r = fx.fromContainer(A, tcpFrame(A, B.ip, sp, 80, TCP_SYN));
    assert.equal(r.retval, TC_ACT_SHOT);
    assert.equal(metric(DROP_PROXY_LOOKUP_FAILED, DIR_EGRESS), before + 1);
    assert.equal((ctFlags(A.ip, B.ip, sp, 80, CT_EGRESS) ?? 0) & C.CT_F_PROXY_REDIRECT, C.CT_F_PROXY_REDIRECT);
    // A retransmission (established entry) is still not passed.
    assert.equal(fx.fromContainer(A, tcpFrame(A, B.ip, sp, 80, TCP_SYN)).retval, TC_ACT_SHOT);
  });

  it('ingress: the same at the destination, whoever sent it', () => {
    allow(B, { id: A.secId, egress: false, proto: IPPROTO_TCP, port: 8080, proxyPort: PROXY_PORT });
    const sp = sport++;
    const before = metric(DROP_PROXY_LOOKUP_FAILED, DIR_INGRESS);
    const r = fx.policyIngress(B, tcpFrame(A.ip, B.ip, sp, 8080, TCP_SYN), { identity: A.secId });
    assert.equal(r.retval, TC_ACT_SHOT);
    assert.equal(metric(DROP_PROXY_LOOKUP_FAILED, DIR_INGRESS), before + 1);
    assert.equal((ctFlags(A.ip, B.ip, sp, 8080, CT_INGRESS) ?? 0) & C.CT_F_PROXY_REDIRECT, C.CT_F_PROXY_REDIRECT);
  });

  it("another process's listener on the proxy port is never used; the proxy's (marked) is found (the test run refuses the assignment itself: 179)", async () => {
    const other = net.createServer(() => {});
    await new Promise<void>((r) => other.listen(PROXY_PORT, '127.0.0.1', () => r()));
    try {
      allow(A, { id: B.secId, egress: true, proto: IPPROTO_TCP, port: 80, proxyPort: PROXY_PORT });
      const before = metric(DROP_PROXY_LOOKUP_FAILED, DIR_EGRESS);
      assert.equal(fx.fromContainer(A, tcpFrame(A, B.ip, sport++, 80, TCP_SYN)).retval, TC_ACT_SHOT);
      assert.equal(metric(DROP_PROXY_LOOKUP_FAILED, DIR_EGRESS), before + 1, 'an unmarked listener is not the proxy');
    } finally {
      await new Promise<void>((r) => other.close(() => r()));
    }
    const fd = sockets().sockListen('127.0.0.1', PROXY_PORT, 16, true, C.MB_MARK_FROM_PROXY);
    const srv = net.createServer(() => {});
    await new Promise<void>((r) => srv.listen({ fd }, () => r()));
    try {
      allow(A, { id: B.secId, egress: true, proto: IPPROTO_TCP, port: 80, proxyPort: PROXY_PORT });
      const r = fx.fromContainer(A, tcpFrame(A, B.ip, sport++, 80, TCP_SYN));
      assert.equal(r.retval, TC_ACT_SHOT);
      const before = metric(DROP_PROXY_SET_FAILED, DIR_EGRESS);
      fx.fromContainer(A, tcpFrame(A, B.ip, sport++, 80, TCP_SYN));
      assert.equal(metric(DROP_PROXY_SET_FAILED, DIR_EGRESS), before + 1, 'found the listener; only bpf_sk_assign outside tc ingress failed');
    } finally {
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });

  it('no proxy port: not redirected', () => {
    allow(B, { id: A.secId, egress: false, proto: IPPROTO_TCP, port: 8081 });
    const sp = sport++;
    assert.equal(fx.policyIngress(B, tcpFrame(A.ip, B.ip, sp, 8081, TCP_SYN), { identity: A.secId }).retval, TC_ACT_REDIRECT);
    assert.equal((ctFlags(A.ip, B.ip, sp, 8081, CT_INGRESS) ?? 0) & C.CT_F_PROXY_REDIRECT, 0);
  });

  it("UDP with a proxy port (DNS): to the proxy's UDP socket on the port, never another process's; none: dropped with 178", async () => {
    allow(A, { id: B.secId, egress: true, proto: IPPROTO_UDP, port: 53, proxyPort: PROXY_PORT });
    const frame = () => ipv4L4Frame({ srcMac: A.mac, dstMac: A.nodeMac, src: A.ip, dst: B.ip, proto: IPPROTO_UDP, seg: udp({ src: A.ip, dst: B.ip, sport: sport++, dport: 53 }) });
    const before = metric(DROP_PROXY_LOOKUP_FAILED, DIR_EGRESS);
    assert.equal(fx.fromContainer(A, frame()).retval, TC_ACT_SHOT);
    assert.equal(metric(DROP_PROXY_LOOKUP_FAILED, DIR_EGRESS), before + 1, 'no proxy socket: fail closed');
    // Another process's (unmarked) socket on the port is not the proxy.
    const other = sockets().udpSocket('127.0.0.1', PROXY_PORT, 0, false);
    try {
      assert.equal(fx.fromContainer(A, frame()).retval, TC_ACT_SHOT);
      assert.equal(metric(DROP_PROXY_LOOKUP_FAILED, DIR_EGRESS), before + 2);
    } finally {
      fs.closeSync(other);
    }
    const fd = sockets().udpSocket('127.0.0.1', PROXY_PORT, C.MB_MARK_FROM_PROXY, true);
    try {
      const set = metric(DROP_PROXY_SET_FAILED, DIR_EGRESS);
      assert.equal(fx.fromContainer(A, frame()).retval, TC_ACT_SHOT);
      assert.equal(metric(DROP_PROXY_SET_FAILED, DIR_EGRESS), set + 1, "found the proxy's socket; only bpf_sk_assign outside tc ingress failed");
    } finally {
      fs.closeSync(fd);
    }
  });

  it("the proxy's own packets (MB_MARK_FROM_PROXY) are not redirected again; their flow's replies are steered back to the stack", () => {
    allow(B, { id: A.secId, egress: false, proto: IPPROTO_TCP, port: 8080, proxyPort: PROXY_PORT });
    allow(B, { id: 0, egress: true, proto: 0, port: 0 });
    const sp = sport++;
    const fwd = fx.policyIngress(B, tcpFrame(A.ip, B.ip, sp, 8080, TCP_SYN), { identity: A.secId, mark: C.MB_MARK_FROM_PROXY });
    assert.equal(fwd.retval, TC_ACT_REDIRECT, 'delivered to the server pod');
    assert.equal((ctFlags(A.ip, B.ip, sp, 8080, CT_INGRESS) ?? 0) & C.CT_F_FROM_PROXY, C.CT_F_FROM_PROXY);
    // The server's SYN-ACK leaves B: to the stack, marked for local delivery, not to A.
    const before = metric(FORWARDED, DIR_EGRESS);
    const reply = fx.fromContainer(B, tcpFrame(B, A.ip, 8080, sp, TCP_SYN | TCP_ACK));
    assert.equal(reply.retval, TC_ACT_OK, 'passed up the stack');
    assert.equal(parseSkbCtx(reply.ctx!).mark & C.MB_MARK_MASK, C.MB_MARK_TO_PROXY);
    assert.equal(metric(FORWARDED, DIR_EGRESS), before + 1);
  });

  it('an established redirected flow stays with the proxy when its L7 rule is gone (new flows do not)', () => {
    allow(B, { id: A.secId, egress: false, proto: IPPROTO_TCP, port: 8082, proxyPort: PROXY_PORT });
    const sp = sport++;
    assert.equal(fx.policyIngress(B, tcpFrame(A.ip, B.ip, sp, 8082, TCP_SYN), { identity: A.secId }).retval, TC_ACT_SHOT);
    allow(B, { id: A.secId, egress: false, proto: IPPROTO_TCP, port: 8082 }); // the L7 rule removed
    const before = metric(DROP_PROXY_LOOKUP_FAILED, DIR_INGRESS);
    assert.equal(fx.policyIngress(B, tcpFrame(A.ip, B.ip, sp, 8082, TCP_ACK), { identity: A.secId }).retval, TC_ACT_SHOT);
    assert.equal(metric(DROP_PROXY_LOOKUP_FAILED, DIR_INGRESS), before + 1, 'the open flow still goes to the proxy (here: none, so dropped)');
    assert.equal(fx.policyIngress(B, tcpFrame(A.ip, B.ip, sport++, 8082, TCP_SYN), { identity: A.secId }).retval, TC_ACT_REDIRECT, 'a new flow goes straight to the pod');
  });

  it("a TCP segment that no flow knows and no proxy socket owns goes on to policy (it is not steered)", () => {
    allow(A, { id: 0, egress: false, proto: IPPROTO_TCP, port: 0 });
    fx.policy[A.id].update({ prefixlen: 48, sec_id: 0, egress: 0, protocol: IPPROTO_TCP, dport: 0 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 48 });
    const world = ip4('192.0.2.10');
    const r = fx.policyIngress(A, tcpFrame(world, A.ip, 80, sport++, TCP_SYN | TCP_ACK), { identity: 2 });
    assert.equal(r.retval, TC_ACT_REDIRECT, 'allowed by policy and delivered as before');
    assert.equal(parseSkbCtx(r.ctx!).mark & C.MB_MARK_MASK, 0);
  });
});
