/**
 * Native BPF layer + src/bpf wrappers against the real kernel (root, BTF, tcx).
 * Fixture objects: test/fixtures/bpf (built here with make).
 * Everything lives under a per-run prefix (pins /sys/fs/bpf/mbtest-<rand>/,
 * netns mbtest-<rand>) removed in after() hooks.
 *
 * Run: npx tsc -p . && node --test dist/test/datapath/bpf-native.test.js
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  BpfError,
  BpfLink,
  BpfMap,
  BpfObject,
  BpfProgram,
  BPF_TCX_EGRESS,
  BPF_TCX_INGRESS,
  BPF_LINK_TYPE_TCX,
  RingBufReader,
  RingBufBatchReader,
  RINGBUF_BATCH_HDR,
  attachTcx,
  ensureBpffs,
  isOnBpffs,
  native,
  numPossibleCpus,
  parseSkbCtx,
  rawCodec,
  skbCtx,
  testRun,
  u32Codec,
  u64Codec,
  Codec,
} from '../../src/bpf';
import * as gen from '../../src/datapath/maps.gen';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const FIXDIR = path.join(ROOT, 'test/fixtures/bpf');
const OBJ = path.join(FIXDIR, 'test_maps.o');
const BAD_OBJ = path.join(FIXDIR, 'test_bad.o');
const RUN = crypto.randomBytes(4).toString('hex');
const PIN_ROOT = `/sys/fs/bpf/mbtest-${RUN}`;
const NETNS = `mbtest-${RUN}`;
const PKT = Buffer.alloc(64, 0xab);

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

/** Load test_maps.o with its pinned maps under PIN_ROOT. */
function loadFixture(retCode = 0, epSecId = 0): BpfObject {
  const obj = BpfObject.open(OBJ, { pinRoot: PIN_ROOT });
  try {
    obj.setConst('ret_code', u32(retCode));
    obj.setConst(
      'ep_cfg',
      gen.epConfigCodec.encode({ ep_id: 1, sec_id: epSecId, ifindex: 0, flags: 0, policy_epoch: 0, ipv4: Buffer.from([10, 0, 0, 1]), ipv6: Buffer.alloc(16), mac: Buffer.alloc(6), node_mac: Buffer.alloc(6) }),
    );
    return obj.load();
  } catch (e) {
    obj.close();
    throw e;
  }
}

function expectBpfError(fn: () => unknown, check: { code?: string; includes?: string[] }): BpfError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof BpfError, `expected BpfError, got ${String(caught)}`);
  if (check.code) assert.equal(caught.code, check.code, caught.message);
  for (const s of check.includes ?? []) assert.ok(caught.message.includes(s), `message should include ${JSON.stringify(s)}: ${caught.message}`);
  return caught;
}

function fieldOffsets(struct: string): Record<string, number> {
  const st = native().btfStructs(OBJ).find((x) => x.name === struct);
  assert.ok(st, `struct ${struct} in fixture BTF`);
  return Object.fromEntries(st.members.map((m) => [m.name, m.bitOffset / 8]));
}

function structSize(struct: string): number {
  return native().btfStructs(OBJ).find((x) => x.name === struct)!.size;
}

before(() => {
  execFileSync('make', ['-s', '-C', FIXDIR], { stdio: 'inherit' });
  ensureBpffs(PIN_ROOT);
  assert.ok(isOnBpffs(PIN_ROOT));
});

after(() => {
  fs.rmSync(PIN_ROOT, { recursive: true, force: true });
});

describe('objects', () => {
  it('opens, sets a .rodata constant, loads and test-runs', () => {
    const obj = loadFixture(7);
    try {
      assert.deepEqual(obj.programNames().sort(), ['count_pkt', 'emit_event', 'ret_const']);
      assert.ok(obj.mapNames().includes('mb_ipcache'));
      for (const m of ['mb_endpoints', 'mb_ipcache', 'mb_ct', 'mb_metrics', 'mb_node', 'mb_call_policy', 'mb_events'])
        assert.ok(fs.existsSync(path.join(PIN_ROOT, m)), `${m} pinned by name under the pin root`);
      const prog = obj.program('ret_const');
      const info = prog.info();
      assert.equal(info.name, 'ret_const');
      assert.match(info.tag, /^[0-9a-f]{16}$/);
      assert.equal(testRun(prog, { data: PKT }).retval, 7);
      // the dup'd fd outlives the object
      obj.close();
      const r = testRun(prog, { data: PKT, ctx: skbCtx({ mark: 0x1234, cb: [1, 2, 3, 4, 5] }) });
      assert.equal(r.retval, 7);
      assert.ok(r.ctx);
      const ctx = parseSkbCtx(r.ctx);
      assert.equal(ctx.mark, 0x1234);
      assert.deepEqual(ctx.cb, [1, 2, 3, 4, 5]);
      assert.equal(r.data.length, PKT.length);
      prog.close();
    } finally {
      obj.close();
    }
  });

  it('a second object with a different constant shares the pinned maps', () => {
    const a = loadFixture(1);
    const b = loadFixture(2);
    try {
      const pa = a.program('ret_const');
      const pb = b.program('ret_const');
      assert.equal(testRun(pa, { data: PKT }).retval, 1);
      assert.equal(testRun(pb, { data: PKT }).retval, 2);
      const ma = a.map('mb_node');
      const mb = b.map('mb_node');
      assert.equal(ma.id, mb.id);
      pa.close(); pb.close(); ma.close(); mb.close();
    } finally {
      a.close();
      b.close();
    }
  });

  it('setConst errors name the variable', () => {
    const obj = BpfObject.open(OBJ, { pinRoot: PIN_ROOT });
    try {
      expectBpfError(() => obj.setConst('ret_code', Buffer.alloc(2)), { code: 'EINVAL', includes: ["'ret_code'", '4 bytes', '2 bytes'] });
      expectBpfError(() => obj.setConst('no_such_var', Buffer.alloc(4)), { code: 'ENOENT', includes: ["'no_such_var'"] });
      expectBpfError(() => obj.program('nope'), { code: 'ENOENT', includes: ['nope'] });
    } finally {
      obj.close();
    }
  });

  it('a verifier rejection names the program and carries the log tail', () => {
    const obj = BpfObject.open(BAD_OBJ, { pinRoot: PIN_ROOT });
    try {
      const err = expectBpfError(() => obj.load(), { includes: ["'bad_access'", 'bpf_object__load'] });
      assert.equal(err.program, 'bad_access');
      assert.match(err.message, /invalid access to packet/);
      assert.ok(err.log && err.log.includes('invalid access to packet'));
      assert.ok(err.message.split('\n').length <= 45, 'message holds only the log tail');
    } finally {
      obj.close();
    }
  });

  it('open of a missing file fails with ENOENT and the path', () => {
    expectBpfError(() => BpfObject.open('/nonexistent/x.o'), { code: 'ENOENT', includes: ['/nonexistent/x.o'] });
  });
});

describe('maps', () => {
  let obj: BpfObject;
  before(() => {
    obj = loadFixture();
  });
  after(() => obj?.close());

  it('hash: update/lookup/delete/iterate/batch', () => {
    const raw = obj.map('t_hash');
    assert.equal(raw.keySize, 4);
    assert.equal(raw.valueSize, 8);
    assert.equal(raw.isPerCpu, false);
    expectBpfError(() => raw.withCodecs(u32Codec, u32Codec), { includes: ['t_hash', 'value'] });
    const m = raw.withCodecs(u32Codec, u64Codec);
    try {
      assert.equal(m.lookup(1), undefined);
      m.update(1, 10n);
      assert.equal(m.lookup(1), 10n);
      expectBpfError(() => m.update(1, 11n, 'noexist'), { code: 'EEXIST', includes: ['t_hash', 'update'] });
      expectBpfError(() => m.update(2, 11n, 'exist'), { code: 'ENOENT', includes: ['t_hash'] });
      assert.equal(m.delete(1), true);
      assert.equal(m.delete(1), false);

      const n = 700;
      m.updateBatch(Array.from({ length: n }, (_, i) => [i, BigInt(i) * 3n] as [number, bigint]));
      const entries = m.entries();
      assert.equal(entries.length, n);
      for (const [k, v] of entries) assert.equal(v, BigInt(k) * 3n);
      assert.deepEqual(m.keys().sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i));
      m.deleteBatch(Array.from({ length: 100 }, (_, i) => i));
      assert.equal(m.entries().length, n - 100);
      expectBpfError(() => m.deleteBatch([0]), { code: 'ENOENT', includes: ['t_hash'] });
      // Raw batches (conntrack GC) skip keys someone else already removed and delete the rest.
      const raw4 = Buffer.alloc(5 * 4);
      [100, 0, 101, 1, 102].forEach((k, i) => raw4.writeUInt32LE(k, i * 4));
      m.deleteRawBatch(raw4, 5);
      assert.equal(m.entries().length, n - 103);
      for (const k of [100, 101, 102]) assert.equal(m.lookup(k), undefined);
      // fill to max_entries and dump (hash buckets bigger than one batch are handled)
      m.updateBatch(Array.from({ length: 1024 }, (_, i) => [i, 1n] as [number, bigint]));
      assert.equal(m.entries().length, 1024);
      expectBpfError(() => m.update(5000, 1n), { code: 'E2BIG', includes: ['t_hash'] });
    } finally {
      m.close();
    }
    assert.ok(raw.closed, 'views share the fd');
  });

  it('LPM trie: longest prefix match, dump and batch fallbacks', () => {
    const m = obj.map('t_lpm').withCodecs(gen.ipcacheKeyCodec, gen.ipcacheValueCodec);
    const key = (addr: number[], bits: number): gen.IpcacheKey => ({ prefixlen: 32 + bits, family: 4, addr: Buffer.from(addr) });
    const val = (id: number): gen.IpcacheValue => ({ sec_id: id, tunnel_family: 0, flags: 0, tunnel_addr: Buffer.alloc(16) });
    try {
      m.update(key([10, 0, 0, 0], 8), val(100));
      m.updateBatch([
        [key([10, 1, 0, 0], 16), val(200)],
        [key([10, 1, 2, 3], 32), val(300)],
      ]);
      assert.equal(m.lookup(key([10, 1, 9, 9], 32))?.sec_id, 200);
      assert.equal(m.lookup(key([10, 9, 9, 9], 32))?.sec_id, 100);
      assert.equal(m.lookup(key([10, 1, 2, 3], 32))?.sec_id, 300);
      assert.equal(m.lookup(key([11, 0, 0, 0], 32)), undefined);
      const all = m.entries();
      assert.equal(all.length, 3);
      assert.deepEqual(all.map(([k, v]) => [k.prefixlen - 32, v.sec_id]).sort((a, b) => a[0] - b[0]), [[8, 100], [16, 200], [32, 300]]);
      assert.equal(m.keys().length, 3);
      m.deleteBatch([key([10, 1, 0, 0], 16), key([10, 1, 2, 3], 32)]);
      assert.equal(m.lookup(key([10, 1, 2, 3], 32))?.sec_id, 100);
      assert.equal(m.entries().length, 1);
    } finally {
      m.close();
    }
  });

  it('per-CPU: counters from test runs, per-CPU reads and writes', () => {
    const ncpu = numPossibleCpus();
    assert.ok(ncpu >= 1);
    assert.equal(native().numPossibleCpus(), ncpu);
    const prog = obj.program('count_pkt');
    const counter = obj.map('t_counter').withCodecs(u32Codec, u64Codec);
    const h = obj.map('t_pcpu_hash').withCodecs(u32Codec, u32Codec);
    try {
      assert.equal(counter.isPerCpu, true);
      expectBpfError(() => counter.lookup(0), { includes: ['t_counter', 'per-CPU'] });
      testRun(prog, { data: PKT, repeat: 5 });
      testRun(prog, { data: PKT });
      const per = counter.lookupPerCpu(0);
      assert.ok(per);
      assert.equal(per.length, ncpu);
      assert.equal(per.reduce((s, v) => s + v, 0n), 6n);
      assert.equal(counter.lookupPerCpu(1)!.reduce((s, v) => s + v, 0n), 6n * BigInt(PKT.length));
      const all = counter.entriesPerCpu();
      assert.equal(all.length, 4);
      assert.deepEqual(all.map(([k]) => k), [0, 1, 2, 3]);

      h.update(7, 42);
      assert.deepEqual(h.lookupPerCpu(7), Array(ncpu).fill(42));
      const distinct = Array.from({ length: ncpu }, (_, i) => i + 1);
      h.updatePerCpu(8, distinct);
      assert.deepEqual(h.lookupPerCpu(8), distinct);
      const e = new Map(h.entriesPerCpu());
      assert.equal(e.size, 2);
      assert.deepEqual(e.get(8), distinct);
      h.updateBatch([[9, 5]]);
      assert.deepEqual(h.lookupPerCpu(9), Array(ncpu).fill(5));
      expectBpfError(() => h.entries(), { includes: ['t_pcpu_hash'] });
    } finally {
      prog.close();
      counter.close();
      h.close();
    }
  });

  it('pin / fromPin survive closing the object and fds', () => {
    const pinPath = path.join(PIN_ROOT, 'my_hash');
    {
      const o = loadFixture();
      const m = o.map('t_hash').withCodecs(u32Codec, u64Codec);
      m.update(77, 7700n);
      m.pin(pinPath);
      m.close();
      o.close();
    }
    const m2 = BpfMap.fromPin(pinPath).withCodecs(u32Codec, u64Codec);
    try {
      assert.equal(m2.name, 'my_hash');
      assert.equal(m2.lookup(77), 7700n);
      assert.equal(m2.info().name, 't_hash');
    } finally {
      m2.close();
    }
    // pinned-by-name globals
    const ev = BpfMap.fromPin(path.join(PIN_ROOT, 'mb_ipcache'));
    assert.equal(ev.keySize, gen.STRUCT_SIZES.ipcache_key);
    assert.equal(ev.valueSize, gen.STRUCT_SIZES.ipcache_value);
    ev.close();
    expectBpfError(() => BpfMap.fromPin(path.join(PIN_ROOT, 'missing')), { code: 'ENOENT', includes: ['missing'] });
    // programs too
    const o = loadFixture(9);
    const p = o.program('ret_const');
    p.pin(path.join(PIN_ROOT, 'ret_const'));
    p.close();
    o.close();
    const p2 = BpfProgram.fromPin(path.join(PIN_ROOT, 'ret_const'));
    assert.equal(testRun(p2, { data: PKT }).retval, 9);
    p2.close();
  });

  it('reuseMap: a second object uses a given map instead of creating one', () => {
    const a = obj.map('t_hash').withCodecs(u32Codec, u64Codec);
    const b = BpfObject.open(OBJ, { pinRoot: PIN_ROOT });
    try {
      b.reuseMap('t_hash', a);
      b.setConst('ret_code', u32(0)).load();
      const bm = b.map('t_hash');
      assert.equal(bm.id, a.id);
      bm.close();
    } finally {
      b.close();
      a.close();
    }
  });
});

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

function ifindexIn(ns: string, dev: string): number {
  const j = JSON.parse(ip('-n', ns, '-j', 'link', 'show', 'dev', dev)) as { ifindex: number }[];
  return j[0].ifindex;
}

describe('tcx links', () => {
  let nsFd = -1;
  before(() => {
    ip('netns', 'add', NETNS);
    ip('-n', NETNS, 'link', 'add', 'mbv0', 'type', 'veth', 'peer', 'name', 'mbv1');
    ip('-n', NETNS, 'link', 'set', 'mbv0', 'up');
    ip('-n', NETNS, 'link', 'set', 'mbv1', 'up');
    ip('-n', NETNS, 'addr', 'add', '10.99.0.1/24', 'dev', 'mbv0');
    nsFd = native().nsOpen(`/var/run/netns/${NETNS}`);
  });
  after(() => {
    if (nsFd >= 0) native().close(nsFd);
    spawnSync('ip', ['netns', 'del', NETNS]);
  });

  it('attaches to a veth in a netns, pins, survives closing fds, detaches', () => {
    const ifindex = ifindexIn(NETNS, 'mbv0');
    const obj = loadFixture();
    const prog = obj.program('count_pkt');
    const progId = prog.info().id;
    const counter = obj.map('t_counter').withCodecs(u32Codec, u64Codec);
    const pinIn = path.join(PIN_ROOT, 'link_egress');
    try {
      // ifindex is resolved in the caller's netns: attach from inside the netns
      const link = native().nsRun(nsFd, () => attachTcx(prog, ifindex, 'egress'));
      const info = link.info();
      assert.equal(info.type, BPF_LINK_TYPE_TCX);
      assert.equal(info.ifindex, ifindex);
      assert.equal(info.attachType, BPF_TCX_EGRESS);
      assert.equal(info.progId, progId);
      link.pin(pinIn);
      link.close();
      prog.close();
      obj.close();

      // traffic: ARP for a non-existent neighbour leaves through mbv0's egress
      spawnSync('ip', ['netns', 'exec', NETNS, 'ping', '-c', '2', '-i', '0.2', '-W', '1', '10.99.0.2'], { stdio: 'ignore' });
      const pkts = counter.lookupPerCpu(0)!.reduce((s, v) => s + v, 0n);
      assert.ok(pkts > 0n, `program still attached after closing all fds (saw ${pkts} packets)`);

      const again = BpfLink.fromPin(pinIn);
      assert.equal(again.info().ifindex, ifindex);
      again.detach();
      assert.equal(again.info().ifindex ?? 0, 0, 'a detached tcx link reports no device');
      again.close();
      const before = counter.lookupPerCpu(0)!.reduce((s, v) => s + v, 0n);
      spawnSync('ip', ['netns', 'exec', NETNS, 'ping', '-c', '1', '-W', '1', '10.99.0.3'], { stdio: 'ignore' });
      assert.equal(counter.lookupPerCpu(0)!.reduce((s, v) => s + v, 0n), before, 'no packets counted after detach');
    } finally {
      counter.close();
      prog.close();
      obj.close();
      fs.rmSync(pinIn, { force: true });
    }
  });

  it('ingress attach and errors name the device', () => {
    const ifindex = ifindexIn(NETNS, 'mbv1');
    const obj = loadFixture();
    const prog = obj.program('ret_const');
    try {
      const link = native().nsRun(nsFd, () => attachTcx(prog, ifindex, 'ingress'));
      assert.equal(link.info().attachType, BPF_TCX_INGRESS);
      link.close(); // not pinned: closing the last fd detaches
      expectBpfError(() => attachTcx(prog, 999999, 'ingress'), { code: 'ENODEV', includes: ['999999', 'ret_const'] });
    } finally {
      prog.close();
      obj.close();
    }
  });
});

describe('ring buffer', () => {
  it('delivers records written by a program through the event loop', async () => {
    const obj = loadFixture(0, 777);
    const prog = obj.program('emit_event');
    const events = obj.map('mb_events');
    const got: Buffer[] = [];
    let waiter: (() => void) | undefined;
    const errors: unknown[] = [];
    let throwNext = false;
    const reader = new RingBufReader(
      events,
      (b) => {
        if (throwNext) {
          throwNext = false;
          throw new Error('boom');
        }
        got.push(b);
        waiter?.();
      },
      { onError: (e) => { errors.push(e); waiter?.(); } },
    );
    const next = (n: number) =>
      new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`timed out waiting for ${n} records (got ${got.length})`)), 3000);
        const check = () => {
          if (got.length + errors.length >= n) {
            clearTimeout(t);
            waiter = undefined;
            resolve();
          }
        };
        waiter = check;
        check();
      });
    try {
      assert.equal(testRun(prog, { data: PKT, ctx: skbCtx({ mark: 1234 }) }).retval, 0);
      await next(1);
      assert.equal(got.length, 1);
      // decode with offsets from the fixture's BTF (maps.gen.ts may not include drop_event)
      const off = fieldOffsets('drop_event');
      const rec = got[0];
      assert.equal(rec.length, structSize('drop_event'));
      assert.equal(rec[off['hdr'] + 0], 1); // EVENT_DROP
      assert.equal(rec[off['hdr'] + 1], 133); // DROP_POLICY
      assert.equal(rec.readUInt16LE(off['hdr'] + 2), 42);
      assert.equal(rec.readUInt32LE(off['src_label']), 1234);
      assert.equal(rec.readUInt32LE(off['dst_label']), 777);
      assert.equal(rec.readUInt32LE(off['orig_len']), PKT.length);
      // a throwing callback does not break the reader
      throwNext = true;
      testRun(prog, { data: PKT });
      await next(2);
      assert.equal(errors.length, 1);
      testRun(prog, { data: PKT, ctx: skbCtx({ mark: 5 }) });
      await next(3);
      assert.equal(got.length, 2);
      assert.equal(got[1].readUInt32LE(fieldOffsets('drop_event')['src_label']), 5);
    } finally {
      reader.close();
      reader.close();
      events.close();
      prog.close();
      obj.close();
    }
  });

  it('delivers records in batches: one call per turn of the event loop with up to maxRecords records, laid out back to back', async () => {
    const obj = loadFixture(0, 777);
    const prog = obj.program('emit_event');
    const events = obj.map('mb_events');
    const calls: { count: number; marks: number[]; lens: number[] }[] = [];
    let waiter: (() => void) | undefined;
    const reader = new RingBufBatchReader(
      events,
      (buf, count, bytes) => {
        const marks: number[] = [];
        const lens: number[] = [];
        let o = 0;
        for (let i = 0; i < count; i++) {
          const len = buf.readUInt32LE(o);
          assert.equal(buf.readUInt32LE(o + 4), 0, 'not truncated');
          lens.push(len);
          marks.push(buf.readUInt32LE(o + RINGBUF_BATCH_HDR + fieldOffsets('drop_event')['src_label']));
          o += RINGBUF_BATCH_HDR + ((len + 7) & ~7);
        }
        assert.equal(o, bytes, 'the records fill exactly the bytes reported');
        calls.push({ count, marks, lens });
        waiter?.();
      },
      { maxRecords: 2, bufferBytes: 64 * 1024 },
    );
    try {
      for (let i = 1; i <= 5; i++) assert.equal(testRun(prog, { data: PKT, ctx: skbCtx({ mark: 100 + i }) }).retval, 0);
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`timed out: ${JSON.stringify(calls)}`)), 3000);
        waiter = () => {
          if (calls.reduce((n, c) => n + c.count, 0) >= 5) {
            clearTimeout(t);
            resolve();
          }
        };
        waiter();
      });
      assert.deepEqual(calls.map((c) => c.count), [2, 2, 1], 'at most maxRecords per turn, the rest on the next turns');
      assert.deepEqual(calls.flatMap((c) => c.marks), [101, 102, 103, 104, 105], 'in order, none lost');
      assert.ok(calls.flatMap((c) => c.lens).every((l) => l === structSize('drop_event')));
    } finally {
      reader.close();
      reader.close();
      events.close();
      prog.close();
      obj.close();
    }
  });

  it('with a reader thread, a busy event loop loses nothing: the thread drains the kernel ring meanwhile', async () => {
    const obj = loadFixture(0, 777);
    const prog = obj.program('emit_event');
    const events = obj.map('mb_events');
    // More than the 1 MiB kernel ring holds (~5,900 drop events): 120 test runs of 100 events, one per
    // millisecond (100,000 events/s), the event loop blocked for the whole 120 ms.
    const N = 12_000;
    const markAt = RINGBUF_BATCH_HDR + fieldOffsets('drop_event')['src_label'];
    const read = async (threaded: boolean) => {
      const marks: number[] = [];
      let calls = 0;
      let maxPerCall = 0;
      const reader = new RingBufBatchReader(
        events,
        (buf, count) => {
          calls++;
          maxPerCall = Math.max(maxPerCall, count);
          let o = 0;
          for (let i = 0; i < count; i++) {
            const len = buf.readUInt32LE(o);
            marks.push(buf.readUInt32LE(o + markAt));
            o += RINGBUF_BATCH_HDR + ((len + 7) & ~7);
          }
        },
        { maxRecords: 1024, stagingBytes: threaded ? 8 << 20 : undefined },
      );
      try {
        // The event loop is busy for the whole burst: nothing is read on it meanwhile.
        const t0 = performance.now();
        for (let i = 0; i < N / 100; i++) {
          testRun(prog, { data: PKT, ctx: skbCtx({ mark: i + 1 }), repeat: 100 });
          while (performance.now() - t0 < i + 1) {
            /* busy: the loop does not turn */
          }
        }
        const deadline = Date.now() + 10_000;
        while (Date.now() < deadline && marks.length < N && (!threaded ? marks.length === 0 : true)) await new Promise((r) => setTimeout(r, 50));
        if (!threaded) await new Promise((r) => setTimeout(r, 200));
        return { marks, calls, maxPerCall, stats: reader.stats() };
      } finally {
        reader.close();
      }
    };
    try {
      const t = await read(true);
      assert.equal(t.marks.length, N, `every event delivered (${t.marks.length} of ${N}), stats ${JSON.stringify(t.stats)}`);
      assert.ok(t.marks.every((m, i) => m === Math.floor(i / 100) + 1), 'in order');
      assert.deepEqual(t.stats, { staged: N, delivered: N, dropped: 0 });
      assert.ok(t.maxPerCall <= 1024 && t.calls >= N / 1024, 'at most maxRecords per turn');
      const e = await read(false);
      assert.ok(e.marks.length < N, `read on the event loop, the kernel ring overflowed during the burst (${e.marks.length} of ${N} delivered)`);
    } finally {
      events.close();
      prog.close();
      obj.close();
    }
  });

  it('refuses non-ringbuf maps', () => {
    const obj = loadFixture();
    const m = obj.map('t_hash');
    try {
      expectBpfError(() => new RingBufReader(m, () => undefined), { includes: ['t_hash', 'RINGBUF'] });
      expectBpfError(() => new RingBufBatchReader(m, () => undefined), { includes: ['t_hash', 'RINGBUF'] });
    } finally {
      m.close();
      obj.close();
    }
  });
});

function isZero(v: unknown): boolean {
  if (typeof v === 'number') return v === 0;
  if (typeof v === 'bigint') return v === 0n;
  if (v instanceof Uint8Array) return v.every((x) => x === 0);
  if (Array.isArray(v)) return v.every(isZero);
  if (v && typeof v === 'object') return Object.values(v).every(isZero);
  return v === undefined;
}

describe('BTF and generated codecs', () => {
  const structs = () => native().btfStructs(OBJ);

  it('btfStructs / btfDatasecVars', () => {
    const s = structs();
    const pk = s.find((x) => x.name === 'policy_key');
    assert.ok(pk);
    assert.equal(pk.size, 12);
    const dport = pk.members.find((m) => m.name === 'dport')!;
    assert.equal(dport.bitOffset, 80);
    assert.equal(dport.type.kind, 'int');
    assert.equal(dport.type.size, 2);
    assert.deepEqual(dport.type.typedefs?.[0], '__be16');
    const ek = s.find((x) => x.name === 'endpoint_key')!;
    const addr = ek.members[0];
    assert.equal(addr.type.kind, 'array');
    assert.equal(addr.type.nelems, 16);
    assert.equal(addr.type.elemType?.size, 1);
    const vars = native().btfDatasecVars(OBJ, '.rodata');
    const byName = new Map(vars.map((v) => [v.name, v]));
    assert.equal(byName.get('ret_code')?.size, 4);
    assert.equal(byName.get('ep_cfg')?.typeName, 'ep_config');
    assert.equal(byName.get('ep_cfg')?.size, gen.STRUCT_SIZES.ep_config);
    const offs = vars.map((v) => v.offset);
    assert.equal(new Set(offs).size, offs.length, 'offsets are fixed up (distinct)');
    assert.throws(() => native().btfDatasecVars(OBJ, '.nope'), /\.nope/);
  });

  it('gen-codecs writes every listed struct and --check detects drift', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mbgen-'));
    try {
      const out = path.join(tmp, 'maps.gen.ts');
      const script = path.join(ROOT, 'scripts/gen-codecs.js');
      let r = spawnSync(process.execPath, [script, '--out', out, OBJ], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const text = fs.readFileSync(out, 'utf8');
      for (const n of ['EndpointKey', 'EpConfig', 'DropEvent', 'EventHdr', 'PolicyKey', 'CtValue', 'NodeConfig'])
        assert.match(text, new RegExp(`export interface ${n} \\{`));
      assert.match(text, /export const dropEventCodec: Codec<DropEvent>/);
      assert.match(text, /drop_event: 164,/);
      r = spawnSync(process.execPath, [script, '--check', '--out', out, OBJ], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      fs.writeFileSync(out, text.replace('sec_id: number;', 'sec_id: string;'));
      r = spawnSync(process.execPath, [script, '--check', '--out', out, OBJ], { encoding: 'utf8' });
      assert.equal(r.status, 1);
      assert.match(r.stderr, /out of date/);
      assert.match(r.stderr, /sec_id: string/);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('every generated codec round-trips and matches the BTF layout', () => {
    const s = new Map(structs().map((x) => [x.name, x]));
    const codecs = gen as unknown as Record<string, Codec<unknown>>;
    for (const [name, size] of Object.entries(gen.STRUCT_SIZES)) {
      const st = s.get(name);
      assert.ok(st, `${name} in BTF`);
      assert.equal(st.size, size, `${name} size`);
      const camel = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
      const codec = codecs[`${camel}Codec`];
      assert.ok(codec, `${camel}Codec exported`);
      assert.equal(codec.size, size);
      // random bytes where members are, zero in implicit padding
      const covered = Buffer.alloc(size);
      for (const m of st.members) covered.fill(1, m.bitOffset / 8, m.bitOffset / 8 + m.type.size);
      const b = crypto.randomBytes(size);
      for (let i = 0; i < size; i++) if (!covered[i]) b[i] = 0;
      const v = codec.decode(b);
      assert.deepEqual(codec.encode(v), b, `${name} round trip`);
      // encode into a larger buffer at an offset
      const out = Buffer.alloc(size + 8, 0xff);
      codec.encode(v, out, 4);
      assert.deepEqual(out.subarray(4, 4 + size), b);
      assert.equal(out[3], 0xff);
      assert.equal(out[4 + size], 0xff);
      assert.deepEqual(codec.decode(out, 4), v);
      // each member decodes from exactly its BTF bytes
      for (const m of st.members) {
        const only = Buffer.alloc(size);
        only.fill(0x5a, m.bitOffset / 8, m.bitOffset / 8 + m.type.size);
        const d = codec.decode(only) as Record<string, unknown>;
        for (const [field, val] of Object.entries(d))
          assert.equal(isZero(val), field !== m.name, `${name}.${field} when only ${m.name}'s bytes are set`);
      }
    }
  });

  it('network-order fields stay big-endian in memory, host order in TS', () => {
    const k = gen.policyKeyCodec.encode({ prefixlen: 64, sec_id: 0x01020304, egress: 1, protocol: 6, dport: 80 });
    assert.equal(k.toString('hex'), '40000000' + '04030201' + '01' + '06' + '0050');
    assert.equal(gen.policyKeyCodec.decode(k).dport, 80);
    const ct = gen.ctKeyCodec.encode({ saddr: Buffer.from([10, 0, 0, 1]), daddr: Buffer.from([10, 0, 0, 2]), sport: 0x1234, dport: 443, nexthdr: 6, flags: 0, family: 4 });
    assert.equal(ct.readUInt16BE(32), 0x1234);
    assert.equal(ct.readUInt16BE(34), 443);
    const ei = gen.endpointInfoCodec.encode({ ifindex: 3, ep_id: 9, flags: 1, sec_id: 0xabcdef, mac: Buffer.alloc(6, 1), node_mac: Buffer.alloc(6, 2) });
    assert.equal(ei.readUInt32LE(12), 0xabcdef);
    assert.equal(ei[16], 1);
    assert.equal(ei[27], 2);
    const pv = gen.policyValueCodec.decode(Buffer.alloc(gen.STRUCT_SIZES.policy_value));
    assert.equal(typeof pv.packets, 'bigint');
    assert.throws(() => gen.endpointKeyCodec.encode({ addr: Buffer.alloc(17), family: 4 }), /endpoint_key\.addr/);
    assert.throws(() => gen.endpointInfoCodec.encode({ ifindex: -1, ep_id: 0, flags: 0, sec_id: 0, mac: Buffer.alloc(6), node_mac: Buffer.alloc(6) }), /endpoint_info\.ifindex/);
    assert.throws(() => rawCodec(4).encode(Buffer.alloc(3)), /4/);
  });
});
