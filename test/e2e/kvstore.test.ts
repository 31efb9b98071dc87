/**
 * The cluster store client against a real etcd on loopback: transactions,
 * watched caches that resume after a partition and re-list after compaction,
 * and leased keys that vanish with their lease and come back under a new one.
 * A TCP proxy stands between client and etcd so a partition can be made while
 * etcd keeps running.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { EtcdServer, TcpProxy } from '../helpers/etcd';
import { runPrefix, sleep } from '../helpers/sys';
import { Kvstore, KvstoreUnavailableError, LeasedKeys, Reflector, ReflectorEvent } from '../../src/kvstore';
import { ClusterIdentities } from '../../src/identity/cluster';
import { makeLogger } from '../../src/util/log';

const log = makeLogger({ test: 'kvstore' });

async function until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await sleep(50);
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe('kvstore (real etcd)', () => {
  const prefix = runPrefix('kv');
  const dir = fs.mkdtempSync(`/tmp/${prefix}-`);
  let etcd: EtcdServer;
  let proxy: TcpProxy;
  let direct: Kvstore;
  const clients: Kvstore[] = [];

  before(async () => {
    etcd = await EtcdServer.onLoopback(prefix, dir);
    await etcd.start();
    const port = Number(etcd.opts.clientAddrs[0].split(':')[1]);
    proxy = new TcpProxy({ host: '127.0.0.1', port });
    await proxy.start();
    direct = new Kvstore({ endpoints: [etcd.endpoint], prefix: `${prefix}/c1`, log });
    clients.push(direct);
  });

  after(async () => {
    for (const c of clients) c.close();
    await proxy?.close();
    await etcd?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('keeps clusters apart by prefix and creates a key only once in a transaction', async () => {
    const other = new Kvstore({ endpoints: [etcd.endpoint], prefix: `${prefix}/c2`, log });
    clients.push(other);
    await direct.put('a', '1');
    assert.equal((await other.get('a')), undefined);
    const create = (kv: Kvstore, v: string) => kv.txn([{ key: 'once', target: 'create', op: '==', value: 0 }], [{ type: 'put', key: 'once', value: v }], [{ type: 'get', key: 'once' }]);
    const r1 = await create(direct, 'first');
    const r2 = await create(direct, 'second');
    assert.equal(r1.succeeded, true);
    assert.equal(r2.succeeded, false);
    assert.equal(r2.reads[0]?.value, 'first');
    assert.equal(r2.reads[0]?.key, 'once');
    assert.equal((await direct.get('once'))?.value, 'first');
  });

  it('fails fast with a typed error when etcd cannot be reached', async () => {
    const dead = new Kvstore({ endpoints: ['http://127.0.0.1:1'], prefix: `${prefix}/x`, log, callTimeoutMs: 1000 });
    clients.push(dead);
    const t0 = Date.now();
    await assert.rejects(dead.get('k'), (e: unknown) => e instanceof KvstoreUnavailableError && /kvstore get k/.test((e as Error).message));
    assert.ok(Date.now() - t0 < 15_000);
  });

  it('a watched cache resumes from its revision after a partition: every change once, in order', async () => {
    const viaProxy = new Kvstore({ endpoints: [proxy.endpoint], prefix: `${prefix}/c1`, log });
    clients.push(viaProxy);
    await direct.put('w/k0', 'v0');
    const r = new Reflector(viaProxy, 'w/', log);
    const seen: ReflectorEvent[] = [];
    r.subscribe((evs) => seen.push(...evs));
    await r.start(10_000);
    assert.equal(r.get('k0')?.value, 'v0');
    await direct.put('w/k1', 'v1');
    await until('k1 in the cache', () => r.get('k1')?.value === 'v1');
    const relists = r.stats.relists;
    proxy.partition();
    await sleep(300);
    for (let i = 2; i < 6; i++) await direct.put(`w/k${i}`, `v${i}`);
    await direct.delete('w/k0');
    const last = await direct.put('w/k1', 'v1b');
    proxy.heal();
    assert.equal(await r.waitForRevision(last, 20_000), true);
    r.stop();
    assert.deepEqual([...r.entries()].map(([k, v]) => `${k}=${v.value}`).sort(), ['k1=v1b', 'k2=v2', 'k3=v3', 'k4=v4', 'k5=v5']);
    assert.equal(r.stats.relists, relists, 'resumed, not re-listed');
    const keys = seen.map((e) => `${e.type}:${e.key}`);
    assert.deepEqual(keys.filter((k) => k === 'put:k3'), ['put:k3'], 'each change exactly once');
    assert.ok(keys.includes('delete:k0'));
    const revs = seen.map((e) => e.revision);
    assert.deepEqual(revs, [...revs].sort((a, b) => a - b), 'in revision order');
  });

  it('a watched cache re-lists after its revision was compacted away and reports the difference', async () => {
    const viaProxy = new Kvstore({ endpoints: [proxy.endpoint], prefix: `${prefix}/c1`, log });
    clients.push(viaProxy);
    await direct.put('c/a', '1');
    await direct.put('c/b', '1');
    const r = new Reflector(viaProxy, 'c/', log);
    const seen: ReflectorEvent[] = [];
    r.subscribe((evs) => seen.push(...evs));
    await r.start(10_000);
    proxy.partition();
    await sleep(300);
    await direct.delete('c/a');
    await direct.put('c/b', '2');
    const last = await direct.put('c/c', '3');
    const compact = etcd.ctl(['compaction', String(last)]);
    assert.equal(compact.code, 0, compact.stderr);
    proxy.heal();
    assert.equal(await r.waitForRevision(last, 20_000), true);
    r.stop();
    assert.deepEqual([...r.entries()].map(([k, v]) => `${k}=${v.value}`).sort(), ['b=2', 'c=3']);
    assert.ok(r.stats.relists >= 2, `re-listed (${r.stats.relists})`);
    assert.deepEqual(
      seen.map((e) => `${e.type}:${e.key}`).sort(),
      ['delete:a', 'put:a', 'put:b', 'put:b', 'put:c'].sort(),
      'only real changes, the deletion included',
    );
  });

  it('leased keys vanish when the lease is not renewed', async () => {
    const kv = new Kvstore({ endpoints: [etcd.endpoint], prefix: `${prefix}/c1`, log });
    clients.push(kv);
    const keys = new LeasedKeys(kv, 2, log);
    keys.set('l/a', 'x');
    keys.set('l/b', 'y');
    assert.equal(await keys.flushed(10_000), true);
    assert.equal((await direct.get('l/a'))?.value, 'x');
    keys.delete('l/b');
    assert.equal(await keys.flushed(10_000), true);
    assert.equal(await direct.get('l/b'), undefined);
    await keys.close(); // stop renewing, do not revoke
    await until('the key to expire with its lease', async () => (await direct.get('l/a')) === undefined, 15_000);
  });

  it('a lease lost during a partition is replaced and every key written again', async () => {
    const kv = new Kvstore({ endpoints: [proxy.endpoint], prefix: `${prefix}/c1`, log, callTimeoutMs: 1000 });
    clients.push(kv);
    const keys = new LeasedKeys(kv, 2, log);
    keys.set('p/a', '1');
    assert.equal(await keys.flushed(10_000), true);
    const first = keys.currentLease;
    proxy.partition();
    await until('the key to expire during the partition', async () => (await direct.get('p/a')) === undefined, 15_000);
    keys.set('p/b', '2'); // a change made while etcd is unreachable
    proxy.heal();
    await until('both keys back', async () => (await direct.get('p/a'))?.value === '1' && (await direct.get('p/b'))?.value === '2', 20_000);
    assert.notEqual(keys.currentLease, first);
    await keys.close({ revoke: true });
    assert.equal(await direct.get('p/a'), undefined, 'revoking removes the keys at once');
  });

  it('nodes allocating the same new label sets at the same moment get one identity per label set', async () => {
    const nodes = await Promise.all(
      ['a', 'b', 'c', 'd'].map(async (n) => {
        const kv = new Kvstore({ endpoints: [etcd.endpoint], prefix: `${prefix}/ids`, log });
        clients.push(kv);
        const ids = new ClusterIdentities(kv, new LeasedKeys(kv, 10, log), n, log);
        await ids.start(10_000);
        return ids;
      }),
    );
    const sets = Array.from({ length: 12 }, (_, i) => [`k8s:app=race${i}`, 'k8s:io.kubernetes.pod.namespace=default']);
    // Every node asks for every label set at once.
    const got = await Promise.all(nodes.map((n) => Promise.all(sets.map((s) => n.allocate(s)))));
    for (let i = 0; i < sets.length; i++) {
      const perNode = got.map((g) => g[i]);
      assert.equal(new Set(perNode).size, 1, `label set ${i}: one id on every node (${perNode.join(',')})`);
    }
    assert.equal(new Set(got[0]).size, sets.length, 'different label sets, different ids');
    for (const id of got[0]) assert.ok(id >= 256 && id <= 65535);
    const masters = etcd.ctl(['get', '--prefix', '--keys-only', `${prefix}/ids/identities/v1/id/`]).stdout.split('\n').filter(Boolean);
    assert.equal(masters.length, sets.length, 'exactly one master key per label set');
    for (const n of nodes) {
      await until('every node to know every identity', () => sets.every((s) => n.lookup(s) !== undefined));
      n.stop();
    }
  });
});
