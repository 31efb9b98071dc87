/**
 * The operator's parts against a real etcd on loopback (no lab): identity GC
 * keeps what a node references (also one referenced at the last moment),
 * cluster-pool IPAM allocates once per node, reports an exhausted pool,
 * adopts a node running with a pool CIDR nobody allocated, holds a gone
 * node's CIDR for the grace period and gives it back to a node that returns;
 * a leader cut off from etcd steps down before another can be elected.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { EtcdServer, TcpProxy } from '../helpers/etcd';
import { runPrefix, sleep } from '../helpers/sys';
import { Kvstore, Reflector } from '../../src/kvstore';
import { IDENTITY_IDS, NODES, identityIdKey, identityLabelsKey, identityRefKey, ipamCidrKey, ipamNodeKey, nodeKey } from '../../src/kvstore/keys';
import { IdentityGc } from '../../src/operator/identitygc';
import { LeaderElection } from '../../src/operator/leader';
import { ClusterPoolIpam, IpamAllocation } from '../../src/operator/ipam';
import { CidrPool } from '../../src/operator/pool';
import { makeLogger } from '../../src/util/log';

const log = makeLogger({ test: 'operator-gc' });

async function until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await fn()) return;
    await sleep(50);
  }
  assert.fail(`timed out waiting for ${what}`);
}

const nodeRec = (name: string, podCIDRs: string[] = []) =>
  JSON.stringify({ name, bootId: name, addresses: [{ type: 'InternalIP', ip: '198.18.0.9' }], podCIDRs, tunnel: { type: 'vxlan', port: 8472 }, health: { status: 'ok', problems: [], since: '' }, version: '0', startedAt: '' });

describe('operator parts (real etcd)', () => {
  const prefix = runPrefix('opg');
  const dir = fs.mkdtempSync(`/tmp/${prefix}-`);
  let etcd: EtcdServer;
  let kv: Kvstore;

  before(async () => {
    etcd = await EtcdServer.onLoopback(prefix, dir);
    await etcd.start();
    kv = new Kvstore({ endpoints: [etcd.endpoint], prefix: `${prefix}/`, log });
  });
  after(async () => {
    kv?.close();
    await etcd?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('leader election: a leader cut off from etcd stops acting before the other is elected', async () => {
    const port = Number(etcd.opts.clientAddrs[0].split(':')[1]);
    const proxy = new TcpProxy({ host: '127.0.0.1', port });
    await proxy.start();
    const kvA = new Kvstore({ endpoints: [proxy.endpoint], prefix: `${prefix}/le/`, log, callTimeoutMs: 1000 });
    const kvB = new Kvstore({ endpoints: [etcd.endpoint], prefix: `${prefix}/le/`, log });
    const a = new LeaderElection(kvA, 'a', 2, log);
    const b = new LeaderElection(kvB, 'b', 2, log);
    const events: string[] = [];
    a.onElected = () => events.push('a elected');
    a.onDeposed = () => events.push('a deposed');
    b.onElected = () => events.push('b elected');
    try {
      await a.start();
      await until('a leads', () => a.isLeader);
      await b.start();
      await sleep(500);
      assert.equal(b.isLeader, false, 'one acts, the other waits');
      proxy.partition();
      await until('b elected', () => b.isLeader, 15_000);
      assert.deepEqual(events, ['a elected', 'a deposed', 'b elected'], 'a stopped acting before b started');
      assert.equal(a.isLeader, false);
    } finally {
      await b.stop();
      await a.stop().catch(() => undefined);
      kvA.close();
      kvB.close();
      await proxy.close();
    }
  });

  it('identity GC: unreferenced identities go after the grace period; referenced ones stay', async () => {
    const ids = [300, 301, 302];
    for (const id of ids) {
      const labels = [`k8s:app=a${id}`];
      await kv.put(identityIdKey(id), JSON.stringify({ labels }));
      await kv.put(identityLabelsKey(labels), String(id));
    }
    await kv.put(identityRefKey(301, 'n1'), '');
    const gc = new IdentityGc(kv, 400, 3_600_000, log);
    await gc.start();
    gc.setActive(true);
    assert.equal(await gc.run(), 0, 'nothing before the grace period');
    // 302 gets a reference during the grace period: it stays.
    await kv.put(identityRefKey(302, 'n2'), '');
    await sleep(500);
    await until('the refs watch to have it', async () => (await kv.keys('identities/v1/refs/302/')).length === 1);
    await sleep(100);
    assert.equal(await gc.run(), 1);
    assert.equal((await kv.keys(IDENTITY_IDS)).sort().join(','), 'identities/v1/id/301,identities/v1/id/302');
    assert.equal(await kv.get(identityLabelsKey(['k8s:app=a300'])), undefined, 'the label index goes with the master key');
    // A reference the watch has not seen yet still protects the identity (the deletion is guarded by the range).
    await kv.delete(identityRefKey(301, 'n1'));
    await sleep(600);
    await gc.run(); // sees 301 unreferenced: grace starts
    await sleep(450);
    await kv.put(identityRefKey(301, 'n3'), '');
    const r = await kv.deleteGuarded([{ keys: [identityIdKey(301)], guard: { key: identityIdKey(301), modRevision: (await kv.get(identityIdKey(301)))!.modRevision }, emptyPrefix: 'identities/v1/refs/301/' }]);
    assert.equal(r.succeeded, false, 'a reference under refs/301/ fails the guard');
    gc.stop();
  });

  it('cluster pool: allocation, exhaustion, adoption, grace period, a node that returns', async () => {
    const pool = new CidrPool('10.230.0.0/23', 24); // two CIDRs
    const nodes = new Reflector(kv, NODES, log);
    await nodes.start();
    const ipam = new ClusterPoolIpam(kv, nodes, pool, 1500, log);
    await ipam.start();
    ipam.setActive(true);
    const alloc = async (n: string) => {
      const v = await kv.get(ipamNodeKey(n));
      return v ? (JSON.parse(v.value) as IpamAllocation) : undefined;
    };
    const lease = kv.lease(10);
    const leaseId = String(await lease.grant());
    // a: adopts 10.230.1.0/24 it runs with; b: gets the other; c: none left.
    await kv.put(nodeKey('a'), nodeRec('a', ['10.230.1.0/24']), leaseId);
    await until('a adopted', async () => (await alloc('a'))?.podCIDRs[0] === '10.230.1.0/24');
    await kv.put(nodeKey('b'), nodeRec('b'));
    await until('b allocated', async () => (await alloc('b'))?.podCIDRs[0] === '10.230.0.0/24');
    await kv.put(nodeKey('c'), nodeRec('c'));
    await until('c told the pool is exhausted', async () => /exhausted: 2 of 2/.test((await alloc('c'))?.error ?? ''));
    // a goes (its lease revoked): its CIDR is held for the grace period, then c gets it.
    await lease.revoke();
    await until('a orphaned', async () => !!(await alloc('a'))?.orphanedSince);
    assert.equal((await kv.get(ipamCidrKey('10.230.1.0/24')))?.value, 'a', 'held during the grace period');
    await until('c gets a\'s CIDR after the grace period', async () => (await alloc('c'))?.podCIDRs[0] === '10.230.1.0/24', 10_000);
    assert.equal(await alloc('a'), undefined);
    // b goes and comes back within the grace period: it keeps its CIDR.
    await kv.delete(nodeKey('b'));
    await until('b orphaned', async () => !!(await alloc('b'))?.orphanedSince);
    await kv.put(nodeKey('b'), nodeRec('b', ['10.230.0.0/24']));
    await until('b no longer orphaned', async () => (await alloc('b'))?.orphanedSince === undefined);
    await sleep(1800);
    assert.equal((await alloc('b'))?.podCIDRs[0], '10.230.0.0/24');
    assert.equal(ipam.stats.released, 1);
    ipam.stop();
    nodes.stop();
  });

  it('cluster pool: a node asks for the CIDR its state recorded, and gets it if free', async () => {
    const pool = new CidrPool('10.231.0.0/22', 24);
    const nodes = new Reflector(kv, NODES, log);
    await nodes.start();
    const ipam = new ClusterPoolIpam(kv, nodes, pool, 1000, log);
    await ipam.start();
    ipam.setActive(true);
    await kv.put(nodeKey('h'), JSON.stringify({ ...JSON.parse(nodeRec('h')), podCidrHint: '10.231.2.0/24' }));
    await until('h gets its recorded CIDR', async () => JSON.parse((await kv.get(ipamNodeKey('h')))?.value ?? '{"podCIDRs":[]}').podCIDRs[0] === '10.231.2.0/24');
    await kv.put(nodeKey('i'), JSON.stringify({ ...JSON.parse(nodeRec('i')), podCidrHint: '10.231.2.0/24' }));
    await until('i gets the first free one instead', async () => JSON.parse((await kv.get(ipamNodeKey('i')))?.value ?? '{"podCIDRs":[]}').podCIDRs[0] === '10.231.0.0/24');
    ipam.stop();
    nodes.stop();
  });
});
