/**
 * Micro-benchmark of the kernel operations an endpoint ADD/DEL is made of, on
 * this machine, through the project's own native bindings (built dist/src):
 *
 *   node dist/bench/attach-cost.js [--count N]
 *
 * In a scratch netns (unique prefix, removed at the end) with a trivial tc
 * program (compiled with clang into a per-run temp dir), for N fresh veth
 * pairs: veth create, tcx attach ingress (first program on the device), tcx
 * attach egress, a second tcx attach on an already-used hook, link detach,
 * veth delete. Explains where `cni-add-latency --breakdown` finds the time.
 */
/* eslint-disable @typescript-eslint/no-explicit-any */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { netnsAdd, netnsDel, runPrefix, sh } from '../test/helpers/sys';
import { argValue, fmt, median, mustRoot, onCleanup, percentile, runBench, table } from './lib';

// The built agent modules, loaded at run time (not compiled from here, so that
// compiling bench/ never rewrites dist/src).
const dist = path.resolve(__dirname, '..', 'src');
const bpf: any = require(path.join(dist, 'bpf'));
const netlink: any = require(path.join(dist, 'netlink'));

const PROG = `
#define SEC(n) __attribute__((section(n), used))
struct __sk_buff;
SEC("tc") int bench_pass(struct __sk_buff *skb) { return -1; /* TC_ACT_UNSPEC / TCX_NEXT */ }
char _license[] SEC("license") = "GPL";
`;

function timed<T>(out: number[], fn: () => T): T {
  const t0 = process.hrtime.bigint();
  const r = fn();
  out.push(Number(process.hrtime.bigint() - t0) / 1e6);
  return r;
}

async function main(): Promise<void> {
  mustRoot();
  const count = argValue('--count', 10, 1, 100);
  const prefix = runPrefix('ac');
  const tmp = fs.mkdtempSync(`/tmp/${prefix}-`);
  onCleanup(`remove ${tmp}`, () => fs.rmSync(tmp, { recursive: true, force: true }));
  const src = path.join(tmp, 'pass.c');
  const obj = path.join(tmp, 'pass.o');
  fs.writeFileSync(src, PROG);
  sh('clang', ['-O2', '-g', '-target', 'bpf', '-c', src, '-o', obj]);

  const nsName = `${prefix}-x`;
  const nsPath = netnsAdd(nsName);
  onCleanup(`delete netns ${nsName}`, () => netnsDel(nsName));
  const ns = netlink.Netns.open(nsPath);
  onCleanup('close netns handle', () => ns.close());
  const nl = netlink.RtNetlink.open(ns);
  onCleanup('close netlink', () => nl.close());

  // Two loads of the same object: a program can be attached to a hook only once.
  const [prog, prog2] = [0, 1].map(() => {
    const o = bpf.BpfObject.open(obj);
    o.load();
    const p = o.program('bench_pass');
    onCleanup('close program', () => {
      p.close();
      o.close();
    });
    return p;
  });

  const t = { veth: [] as number[], ingress: [] as number[], egress: [] as number[], second: [] as number[], detach: [] as number[], del: [] as number[] };
  for (let i = 0; i < count; i++) {
    const name = `bh${i}`;
    timed(t.veth, () => nl.linkAddVeth({ name, peerName: `bp${i}`, mtu: 1500 }));
    const dev = nl.linkGet(name);
    nl.linkSet(dev.index, { up: true });
    // The link_create syscall resolves the ifindex in the calling thread's netns.
    const links = ns.run(() => [
      timed(t.ingress, () => bpf.attachTcx(prog, dev.index, 'ingress')),
      timed(t.egress, () => bpf.attachTcx(prog, dev.index, 'egress')),
      timed(t.second, () => bpf.attachTcx(prog2, dev.index, 'ingress')),
    ]);
    for (const l of links) {
      timed(t.detach, () => {
        l.detach();
        l.close();
      });
    }
    timed(t.del, () => nl.linkDel(name));
  }

  console.log(`attach-cost: ${count} fresh veth pairs in netns ${nsName}; ms per operation`);
  const row = (label: string, xs: number[]) => [label, String(xs.length), fmt(median(xs), 2), fmt(percentile(xs, 99), 2), fmt(Math.min(...xs), 2), fmt(Math.max(...xs), 2)];
  console.log(
    table([
      ['operation (ms)', 'n', 'p50', 'p99', 'min', 'max'],
      row('veth pair create (RTM_NEWLINK)', t.veth),
      row('tcx attach ingress, first on the device', t.ingress),
      row('tcx attach egress, first on the device', t.egress),
      row('tcx attach ingress, hook already in use', t.second),
      row('tcx link detach + close', t.detach),
      row('veth pair delete (RTM_DELLINK)', t.del),
    ]),
  );
}

runBench('attach-cost', main);
