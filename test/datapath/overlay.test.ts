/**
 * The overlay's encapsulation and decapsulation decisions, on crafted packets
 * with BPF_PROG_TEST_RUN. The programs are the datapath's own (fixture objects
 * test/fixtures/bpf/test_overlay_*.c include bpf_lxc.c / bpf_host.c and only
 * add a way to feed or read back the tunnel metadata, which a test run has no
 * VXLAN device for).
 */
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { BpfMap, parseSkbCtx, skbCtx, testRun, u32Codec } from '../../src/bpf';
import * as gen from '../../src/datapath/maps.gen';
import { MetricsKey, metricsKeyCodec } from '../../src/datapath/metricsmap';
import { DatapathFixture, DpEndpoint, ROOT, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, ID_HOST, ID_WORLD } from '../helpers/datapath';
import { ip4, ipv4Frame, mac } from '../helpers/packet';

const FIX = path.join(ROOT, 'test/fixtures/bpf');
const ID_REMOTE_NODE = 6;
const DROP_POLICY = 133;
const DROP_NO_TUNNEL_ENDPOINT = 160;
const DROP_INVALID_IDENTITY = 171;
const DROP_UNKNOWN_SENDER = 172;
const DROP_UNROUTABLE = 151;
const DROP_NO_TUNNEL_KEY = 190;

const NODE_MAC = mac('02:00:00:00:aa:01');
const ROUTER = ip4('10.1.0.1');
const A: DpEndpoint = { id: 11, secId: 4001, ifindex: 0, ip: ip4('10.1.0.11'), mac: mac('02:00:00:00:00:11'), nodeMac: NODE_MAC };
const B: DpEndpoint = { id: 12, secId: 4002, ifindex: 0, ip: ip4('10.1.0.12'), mac: mac('02:00:00:00:00:12'), nodeMac: NODE_MAC };
const OTHER_NODE = ip4('198.18.0.2');
const THIRD_NODE = ip4('198.18.0.3');
const REMOTE_POD = ip4('10.2.0.7'); // a pod of node 198.18.0.2
const REMOTE_ID = 5005;

describe('overlay: encapsulation and decapsulation decisions (BPF_PROG_TEST_RUN)', () => {
  const fx = new DatapathFixture('ovl');
  let metrics: BpfMap<MetricsKey, gen.MetricsValue>;
  let ipcache: BpfMap<gen.IpcacheKey, gen.IpcacheValue>;
  let node: BpfMap<number, gen.NodeConfig>;
  const nodeConfig = (tunnel: number): gen.NodeConfig => ({
    host_ifindex: 1, net_ifindex: 1, host_mac: mac('02:00:00:00:bb:01'), net_mac: mac('02:00:00:00:bb:02'),
    router_ipv4: ROUTER, router_ipv6: Buffer.alloc(16), flags: 0, tunnel_ifindex: tunnel,
  });

  const metric = (reason: number, dir: number): bigint => (metrics.lookupPerCpu({ reason, dir }) ?? []).reduce((s, v) => s + v.count, 0n);
  const tunnelEntry = (addr: Buffer, len: number, id: number, tunnel: Buffer) =>
    ipcache.update({ prefixlen: 32 + len, family: 4, addr }, { sec_id: id, tunnel_family: 4, flags: 1, tunnel_addr: Buffer.concat([tunnel, Buffer.alloc(12)]) });
  const allow = (e: DpEndpoint, egress: number) =>
    fx.policy[e.id].update({ prefixlen: 40, sec_id: 0, egress, protocol: 0, dport: 0 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 40 });
  const frame = (src: Buffer, dst: Buffer, dport = 8080) => ipv4Frame({ srcMac: A.mac, dstMac: NODE_MAC, src, dst, l4: 'tcp', sport: 41000 + Math.floor(Math.random() * 20000), dport });

  before(() => {
    execFileSync('make', ['-s', '-C', path.join(ROOT, 'bpf')], { stdio: 'inherit' });
    execFileSync('make', ['-s', '-C', FIX], { stdio: 'inherit' });
    fx.load({ lxc: path.join(FIX, 'test_overlay_lxc.o'), host: path.join(FIX, 'test_overlay_host.o'), extra: { lxc: ['test_encap'], host: ['test_decap', 'test_host_encap', 'from_overlay'] } });
    fx.addEndpoint(A);
    fx.addEndpoint(B);
    fx.addHostAddress(ROUTER);
    metrics = fx.pin('mb_metrics').withCodecs(metricsKeyCodec, gen.metricsValueCodec);
    ipcache = fx.pin('mb_ipcache').withCodecs(gen.ipcacheKeyCodec, gen.ipcacheValueCodec);
    node = fx.pin('mb_node').withCodecs(u32Codec, gen.nodeConfigCodec);
    // What the agent programs for another node: its pod CIDR (world), its address (remote-node), a pod of it.
    tunnelEntry(ip4('10.2.0.0'), 24, ID_WORLD, OTHER_NODE);
    tunnelEntry(OTHER_NODE, 32, ID_REMOTE_NODE, OTHER_NODE);
    tunnelEntry(REMOTE_POD, 32, REMOTE_ID, OTHER_NODE);
  });
  after(() => fx.close());
  beforeEach(() => {
    node.update(0, nodeConfig(A.ifindex)); // any existing device stands for the VXLAN device
    for (const e of [A, B]) for (const k of fx.policy[e.id].keys()) fx.policy[e.id].delete(k);
  });

  const encap = (data: Buffer) => {
    const r = testRun(fx.extra.test_encap, { data, ctx: skbCtx({ ifindex: A.ifindex }) });
    const cb = parseSkbCtx(r.ctx!).cb;
    return { ret: r.retval, set: cb[2] === 1, vni: cb[0], remote: cb[1] };
  };

  it('a remote pod: egress policy first, then encapsulated to its node with the source identity as VNI', () => {
    allow(A, 1);
    const fwd = metric(0, 2);
    const r = encap(frame(A.ip, REMOTE_POD));
    assert.equal(r.ret, TC_ACT_REDIRECT);
    assert.equal(r.set, true);
    assert.equal(r.vni, A.secId, 'VNI = the source pod identity');
    assert.equal(r.remote, OTHER_NODE.readUInt32BE(0), 'outer destination = the ipcache entry\'s tunnel endpoint');
    assert.equal(metric(0, 2), fwd + 1n);
  });

  it('an address of a remote node\'s pod CIDR nobody announced yet, and the remote node itself, go to that node', () => {
    allow(A, 1);
    for (const dst of [ip4('10.2.0.99'), OTHER_NODE]) {
      const r = encap(frame(A.ip, dst));
      assert.equal(r.ret, TC_ACT_REDIRECT);
      assert.equal(r.remote, OTHER_NODE.readUInt32BE(0));
      assert.equal(r.vni, A.secId);
    }
  });

  it('egress policy denies before anything is encapsulated; the destination identity is the remote pod\'s', () => {
    const drops = metric(DROP_POLICY, 2);
    fx.policy[A.id].update({ prefixlen: 40, sec_id: REMOTE_ID + 1, egress: 1, protocol: 0, dport: 0 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 40 });
    const r = encap(frame(A.ip, REMOTE_POD));
    assert.equal(r.ret, TC_ACT_SHOT);
    assert.equal(r.set, false);
    assert.equal(metric(DROP_POLICY, 2), drops + 1n);
    fx.policy[A.id].update({ prefixlen: 40, sec_id: REMOTE_ID, egress: 1, protocol: 0, dport: 0 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 40 });
    assert.equal(encap(frame(A.ip, REMOTE_POD)).ret, TC_ACT_REDIRECT, 'allowed for exactly that identity');
  });

  it('local pods and the world are never encapsulated; a node without an overlay drops tunnelled destinations (160)', () => {
    allow(A, 1);
    allow(B, 0);
    const local = encap(frame(A.ip, B.ip));
    assert.equal(local.set, false, 'same node: tail call into the destination, no tunnel');
    const world = encap(frame(A.ip, ip4('203.0.113.9')));
    assert.equal(world.set, false);
    assert.equal(world.ret, TC_ACT_REDIRECT, 'to the host stack');
    node.update(0, nodeConfig(0));
    const drops = metric(DROP_NO_TUNNEL_ENDPOINT, 2);
    assert.equal(encap(frame(A.ip, REMOTE_POD)).ret, TC_ACT_SHOT);
    assert.equal(metric(DROP_NO_TUNNEL_ENDPOINT, 2), drops + 1n);
  });

  it('the host reaching a remote pod is encapsulated with the host identity', () => {
    const r = testRun(fx.extra.test_host_encap, { data: frame(ROUTER, REMOTE_POD), ctx: skbCtx({}) });
    const cb = parseSkbCtx(r.ctx!).cb;
    assert.equal(r.retval, TC_ACT_REDIRECT);
    assert.deepEqual([cb[2], cb[0], cb[1]], [1, ID_HOST, OTHER_NODE.readUInt32BE(0)]);
  });

  const decap = (data: Buffer, vni: number, outer: Buffer) => testRun(fx.extra.test_decap, { data, ctx: skbCtx({ cb: [vni, outer.readUInt32BE(0), 0, 0, 0] }) });

  it('decapsulated: the VNI is the source identity of the destination\'s ingress policy', () => {
    allow(B, 0);
    fx.policy[B.id].delete({ prefixlen: 40, sec_id: 0, egress: 0, protocol: 0, dport: 0 });
    fx.policy[B.id].update({ prefixlen: 40, sec_id: REMOTE_ID, egress: 0, protocol: 0, dport: 0 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 40 });
    const fwd = metric(0, 1);
    const ok = decap(frame(REMOTE_POD, B.ip), REMOTE_ID, OTHER_NODE);
    assert.equal(ok.retval, TC_ACT_REDIRECT, 'allowed: redirected into the pod');
    assert.equal(metric(0, 1), fwd + 1n);
    const drops = metric(DROP_POLICY, 1);
    const denied = decap(frame(REMOTE_POD, B.ip), REMOTE_ID + 1, OTHER_NODE);
    assert.equal(denied.retval, TC_ACT_SHOT, 'the same packet with another identity in the VNI is denied: the address is not trusted');
    assert.equal(metric(DROP_POLICY, 1), drops + 1n);
  });

  it('drops a VNI that is no identity (171) and an inner source the sending node does not host (172)', () => {
    allow(B, 0);
    const bad = metric(DROP_INVALID_IDENTITY, 1);
    for (const vni of [0, 0x10000, 0xffffff]) assert.equal(decap(frame(REMOTE_POD, B.ip), vni, OTHER_NODE).retval, TC_ACT_SHOT);
    assert.equal(metric(DROP_INVALID_IDENTITY, 1), bad + 3n);
    const unknown = metric(DROP_UNKNOWN_SENDER, 1);
    assert.equal(decap(frame(REMOTE_POD, B.ip), REMOTE_ID, THIRD_NODE).retval, TC_ACT_SHOT, 'another node speaking for node 2\'s pod');
    assert.equal(decap(frame(ip4('203.0.113.5'), B.ip), REMOTE_ID, OTHER_NODE).retval, TC_ACT_SHOT, 'a world address from inside the tunnel');
    assert.equal(decap(frame(A.ip, B.ip), REMOTE_ID, OTHER_NODE).retval, TC_ACT_SHOT, 'one of our own pods from inside the tunnel');
    assert.equal(metric(DROP_UNKNOWN_SENDER, 1), unknown + 3n);
  });

  it('another node\'s host arrives as remote-node; traffic for the node itself goes to its stack; anything else is unroutable', () => {
    fx.policy[B.id].update({ prefixlen: 40, sec_id: ID_REMOTE_NODE, egress: 0, protocol: 0, dport: 0 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 40 });
    assert.equal(decap(frame(OTHER_NODE, B.ip), ID_HOST, OTHER_NODE).retval, TC_ACT_REDIRECT, 'VNI host = remote-node here');
    assert.equal(decap(frame(REMOTE_POD, ROUTER), REMOTE_ID, OTHER_NODE).retval, TC_ACT_OK, 'to the router address: the stack');
    const unr = metric(DROP_UNROUTABLE, 1);
    assert.equal(decap(frame(REMOTE_POD, ip4('10.1.0.200')), REMOTE_ID, OTHER_NODE).retval, TC_ACT_SHOT);
    assert.equal(metric(DROP_UNROUTABLE, 1), unr + 1n);
  });

  it('from_overlay itself drops a packet without tunnel metadata (190)', () => {
    const drops = metric(DROP_NO_TUNNEL_KEY, 1);
    const r = testRun(fx.extra.from_overlay, { data: frame(REMOTE_POD, B.ip), ctx: skbCtx({}) });
    assert.equal(r.retval, TC_ACT_SHOT);
    assert.equal(metric(DROP_NO_TUNNEL_KEY, 1), drops + 1n);
  });
});
