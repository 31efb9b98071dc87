/**
 * What the eBPF datapath costs per packet, measured in the kernel with
 * BPF_PROG_TEST_RUN (the kernel's own timing of the program run): the programs
 * alone, without the devices and sockets around them, so differences between
 * datapath versions show without the noise of a shared machine. The programs
 * rewrite the packet, so each measurement is one run on a fresh copy; the
 * figure is the median of N runs.
 *
 *   node dist/bench/datapath-cost.js [--runs N]
 *
 * Paths (the packet of an established flow unless noted; the tail call into
 * the destination's policy_ingress runs too, bpf_redirect_peer only returns):
 *   pod -> pod, forward      from_container(A) + policy_ingress(B), both enforcing policy
 *   pod -> pod, reply        from_container(B) + policy_ingress(A)
 *   pod -> ClusterIP         the same with service translation (CT_SERVICE entry)
 *   pod -> world             from_container(A) to the host stack
 *   host -> pod              from_host + policy_ingress(B)
 * Prints figures; never asserts.
 */
import * as os from 'node:os';
import { DatapathFixture, DpEndpoint, ID_HOST, TC_ACT_REDIRECT } from '../test/helpers/datapath';
import { IPPROTO_TCP, TCP_ACK, ip4, ipv4L4Frame, mac, tcp } from '../test/helpers/packet';
import * as gen from '../src/datapath/maps.gen';
import { u16Codec, u32Codec } from '../src/bpf';
import { argValue, fmt, mustRoot, onCleanup, runBench, table } from './lib';

const ROUTER = ip4('10.200.0.1');
const VIP = ip4('10.96.0.10');
const WORLD = ip4('198.51.100.7');
const NODE = {
  host_ifindex: 201, net_ifindex: 202,
  host_mac: mac('02:00:00:00:02:01'), net_mac: mac('02:00:00:00:02:02'),
  router_ipv4: ROUTER, router_ipv6: Buffer.alloc(16), flags: 0, tunnel_ifindex: 0,
};

function ep(id: number): DpEndpoint {
  const h = id.toString(16).padStart(2, '0');
  return { id, secId: 5000 + id, ifindex: 0, ip: ip4(`10.200.0.${id}`), mac: mac(`0a:00:00:00:00:${h}`), nodeMac: mac(`fe:00:00:00:00:${h}`), policyEpoch: 1 };
}

async function main(): Promise<void> {
  mustRoot();
  const runs = argValue('--runs', 20_000, 100, 1_000_000);
  const fx = new DatapathFixture('cost');
  onCleanup('datapath fixture', () => fx.close());
  fx.load();
  const A = ep(11);
  const B = ep(12);
  for (const e of [A, B]) fx.addEndpoint(e);
  fx.addHostAddress(ROUTER);
  fx.pin('mb_node').withCodecs(u32Codec, gen.nodeConfigCodec).update(0, NODE);
  // Policy as a real one looks: each allows the other on TCP 80 (and replies pass through conntrack).
  const allow = (e: DpEndpoint, remote: number, egress: boolean) =>
    fx.policy[e.id].update({ prefixlen: 64, sec_id: remote, egress: egress ? 1 : 0, protocol: IPPROTO_TCP, dport: 80 }, { packets: 0n, bytes: 0n, proxy_port: 0, flags: 0, prefix_len: 64 });
  allow(A, B.secId, true);
  allow(B, A.secId, false);
  allow(A, 2, true); // world
  allow(B, ID_HOST, false);
  // A ClusterIP with B as its only backend.
  fx.pin('mb_lb_backends').withCodecs(u32Codec, gen.lbBackendCodec).update(1, { addr: Buffer.concat([B.ip, Buffer.alloc(12)]), port: 80, proto: IPPROTO_TCP, flags: 0, family: 4 } as any);
  fx.pin('mb_lb_revnat').withCodecs(u16Codec, gen.lbRevnatCodec).update(1, { addr: Buffer.concat([VIP, Buffer.alloc(12)]), port: 8080, family: 4 } as any);
  const svc = fx.pin('mb_lb_services').withCodecs(gen.lbServiceKeyCodec, gen.lbServiceValueCodec);
  const skey = (slot: number) => ({ addr: Buffer.concat([VIP, Buffer.alloc(12)]), dport: 8080, slot, proto: IPPROTO_TCP, family: 4, scope: 0 }) as any;
  svc.update(skey(0), { backend_id: 0, count: 1, rev_nat_index: 1, flags: 16 } as any);
  svc.update(skey(1), { backend_id: 1, count: 0, rev_nat_index: 1, flags: 0 } as any);

  const frame = (src: DpEndpoint | Buffer, dst: Buffer, sport: number, dport: number, fromPod: boolean) => {
    const s = Buffer.isBuffer(src) ? src : src.ip;
    const m = Buffer.isBuffer(src) ? { src: NODE.host_mac, dst: NODE.host_mac } : { src: src.mac, dst: src.nodeMac };
    return ipv4L4Frame({ srcMac: fromPod ? m.src : NODE.host_mac, dstMac: fromPod ? m.dst : NODE.host_mac, src: s, dst, proto: IPPROTO_TCP, seg: tcp({ src: s, dst, sport, dport, flags: TCP_ACK, payload: Buffer.alloc(14) }) });
  };
  // Establish each flow with one packet each way first (CT entries), then measure.
  const paths: { name: string; run: () => { retval: number; duration: number } }[] = [];
  const add = (name: string, warm: () => unknown, fn: () => { retval: number; duration: number }) => {
    warm();
    paths.push({ name, run: fn });
  };
  const fwd = frame(A, B.ip, 40000, 80, true);
  const rep = frame(B, A.ip, 80, 40000, true);
  add('pod -> pod, forward', () => (fx.fromContainer(A, fwd), fx.fromContainer(B, rep)), () => fx.runNamed('from_container_A', { A, B }, fwd));
  add('pod -> pod, reply', () => 0, () => fx.runNamed('from_container_B', { A, B }, rep));
  const toSvc = frame(A, VIP, 40001, 8080, true);
  add('pod -> ClusterIP, forward', () => fx.fromContainer(A, toSvc), () => fx.runNamed('from_container_A', { A, B }, toSvc));
  const toWorld = frame(A, WORLD, 40002, 80, true);
  add('pod -> world, forward', () => fx.fromContainer(A, toWorld), () => fx.runNamed('from_container_A', { A, B }, toWorld));
  const fromHost = frame(ROUTER, B.ip, 40003, 80, false);
  add('host -> pod, forward', () => fx.runHost('from_host', fromHost), () => fx.runNamed('from_host', { A, B }, fromHost));

  console.log(`datapath-cost: kernel ${os.release()}, ${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; BPF_PROG_TEST_RUN, ${runs} single runs per path\n`);
  const rows: string[][] = [['path (programs run)', 'verdict', 'ns per packet p50', 'p10', 'p90']];
  for (const p of paths) {
    const ds: number[] = [];
    const verdicts = new Set<number>();
    for (let i = 0; i < runs; i++) {
      const r = p.run();
      verdicts.add(r.retval);
      ds.push(r.duration);
    }
    ds.sort((a, b) => a - b);
    const q = (f: number) => ds[Math.min(ds.length - 1, Math.floor(f * ds.length))];
    const v = [...verdicts].map((x) => (x === TC_ACT_REDIRECT ? 'redirect' : `${x} (not forwarded!)`)).join(',');
    rows.push([p.name, v, fmt(q(0.5), 0), fmt(q(0.1), 0), fmt(q(0.9), 0)]);
  }
  console.log(table(rows));
}

runBench('datapath-cost', main);
