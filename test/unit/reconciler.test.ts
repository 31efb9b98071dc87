/** MapTable and Reconciler: diffs, retries, drift repair and its counts, ARRAY semantics (in-memory map). */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BpfMap, u16Codec, u32Codec } from '../../src/bpf';
import { MapTable, Reconciler, TableError, u32KeyOpts } from '../../src/datapath/reconciler';
import type { Logger } from '../../src/util/log';
import { MemMap } from '../helpers/memmap';

function table(absent?: number) {
  const map = new MemMap<number, number>(u32Codec, u32Codec);
  const t = new MapTable('t', map as unknown as BpfMap<number, number>, u32KeyOpts<number>((a, b) => a === b, absent));
  return { map, t };
}

describe('MapTable', () => {
  it('writes only the diff and leaves failed writes pending for a retry', () => {
    const { map, t } = table();
    t.replaceAll([{ key: 1, value: 10 }, { key: 2, value: 20 }]);
    t.flush();
    assert.deepEqual([...map.entries()], [[1, 10], [2, 20]]);
    map.failNext = 1;
    t.replaceAll([{ key: 1, value: 11 }, { key: 3, value: 30 }]);
    assert.throws(() => t.flush(), (e: unknown) => e instanceof TableError && e.table === 't' && e.op === 'update');
    assert.equal(t.status().failed, 1);
    assert.ok(t.dirty, 'still pending');
    t.flush();
    assert.deepEqual(new Map(map.entries()), new Map([[1, 11], [3, 30]]));
    assert.equal(t.status().failed, 0);
  });

  it('flushAsync writes the changes of one turn in one batch, flushes in turn, and names an entry that fails', async () => {
    const { map, t } = table();
    t.upsert(1, 10);
    const a = t.flushAsync();
    t.upsert(2, 20);
    t.upsert(3, 30);
    const b = t.flushAsync();
    await Promise.all([a, b]);
    assert.equal(map.batches, 1, 'one batch for the changes stated in the same turn');
    assert.deepEqual(new Map(map.entries()), new Map([[1, 10], [2, 20], [3, 30]]));
    assert.ok(!t.dirty);
    // Stated while a batch is in flight: written by the next one.
    t.upsert(4, 40);
    const c = t.flushAsync();
    await undefined;
    await undefined;
    t.upsert(5, 50);
    await Promise.all([c, t.flushAsync()]);
    assert.deepEqual(new Map(map.entries()), new Map([[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]]));
    assert.ok(!t.dirty);
    // A failure inside the batch: the entry at fault is named and stays pending.
    t.upsert(6, 60);
    t.upsert(7, 70);
    map.failNext = 2; // the batch fails at 6, then 6 fails again when written alone
    await assert.rejects(t.flushAsync(), (e: unknown) => e instanceof TableError && e.op === 'update' && e.key === '6');
    assert.ok(t.dirty);
    await t.flushAsync();
    assert.equal(map.lookup(6), 60);
    assert.equal(map.lookup(7), 70);
    assert.equal(t.status().failed, 0);
  });

  it('tables adopt one prepared state without copying it; a table written to gets its own copy', () => {
    const a = table();
    const b = table();
    const state = a.t.prepare([{ key: 1, value: 10 }, { key: 2, value: 20 }]);
    assert.deepEqual(a.t.adoptState(state), { upserts: 2, deletes: 0 });
    assert.deepEqual(b.t.adoptState(state), { upserts: 2, deletes: 0 });
    a.t.flush();
    b.t.flush();
    assert.deepEqual(new Map(a.map.entries()), new Map([[1, 10], [2, 20]]));
    // Writing to one table leaves the shared state and the other table as they were.
    a.t.upsert(3, 30);
    a.t.delete(1);
    a.t.flush();
    assert.equal(state.size, 2);
    assert.deepEqual(b.t.entries(), [{ key: 1, value: 10 }, { key: 2, value: 20 }]);
    assert.deepEqual(new Map(a.map.entries()), new Map([[2, 20], [3, 30]]));
    // Adopting the next state writes only the difference.
    const next = b.t.prepare([{ key: 2, value: 21 }, { key: 4, value: 40 }]);
    assert.deepEqual(b.t.adoptState(next), { upserts: 2, deletes: 1 });
    b.t.flush();
    assert.deepEqual(new Map(b.map.entries()), new Map([[2, 21], [4, 40]]));
    assert.deepEqual(b.t.adoptState(next), { upserts: 0, deletes: 0 });
    assert.ok(!b.t.dirty);
    // A state made with other codecs is refused.
    const other = new MapTable('o', new MemMap<number, number>(u32Codec, u16Codec) as unknown as BpfMap<number, number>, u32KeyOpts<number>((x, y) => x === y));
    assert.throws(() => a.t.adoptState(other.prepare([{ key: 1, value: 1 }])), /other codecs/);
  });

  it('values the table compares as the same (kernel counters) are not written again', () => {
    const map = new MemMap<number, number>(u32Codec, u32Codec);
    // Only the low byte matters, as counters maintained by the datapath never count.
    const t = new MapTable('t', map as unknown as BpfMap<number, number>, u32KeyOpts<number>((x, y) => (x & 0xff) === (y & 0xff)));
    t.replaceAll([{ key: 1, value: 0x105 }]);
    t.flush();
    t.replaceAll([{ key: 1, value: 0x205 }]);
    assert.ok(!t.dirty);
    t.replaceAll([{ key: 1, value: 0x206 }]);
    assert.ok(t.dirty);
  });

  it('resync repairs entries changed, removed or added behind its back, and counts them', () => {
    const { map, t } = table();
    t.replaceAll([{ key: 1, value: 10 }, { key: 2, value: 20 }]);
    t.flush();
    map.update(1, 99);
    map.delete(2);
    map.update(7, 70);
    assert.deepEqual(t.resync(), { updated: 2, removed: 1 });
    assert.deepEqual(new Map(map.entries()), new Map([[1, 10], [2, 20]]));
    assert.equal(t.status().driftRepaired, 3);
    assert.deepEqual(t.resync(), { updated: 0, removed: 0 }, 'nothing left to repair');
  });

  it('ARRAY tables: an index nobody wants holds the absent value and is not drift', () => {
    const { map, t } = table(0);
    t.upsert(3, 33);
    t.flush();
    t.delete(3);
    t.flush();
    assert.equal(map.lookup(3), 0, 'delete writes the absent value');
    map.update(5, 0);
    assert.deepEqual(t.resync(), { updated: 0, removed: 0 });
  });
});

describe('Reconciler', () => {
  it('retries failed flushes with backoff until they succeed, and reports per table', async () => {
    const { map, t } = table();
    const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };
    const r = new Reconciler(quiet);
    r.add(t);
    map.failNext = 2;
    t.upsert(1, 1);
    assert.equal(r.flush(), false);
    for (let i = 0; i < 100 && t.dirty; i++) await new Promise((res) => setTimeout(res, 50));
    assert.equal(t.dirty, false, 'retried until written');
    assert.equal(map.lookup(1), 1);
    assert.ok(r.counters.retries >= 1);
    r.stop();
  });
});
