import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as dnsPacket from 'dns-packet';
import { FqdnCache } from '../../src/fqdn/cache';
import type { NameSelector } from '../../src/fqdn/pattern';
import { addressesByName, answerAddresses, refusal } from '../../src/proxy/dns';
import { parseConfig } from '../../src/proxy/config';
import { buildConfig } from '../../src/agent/config';

const silent = { debug() {}, info() {}, warn() {}, error() {}, child() { return silent; } } as any;

function setup(opts: Partial<{ minTtl: number; maxIpsPerName: number; maxIpsPerEndpoint: number }> = {}, selectors: NameSelector[] = [{ matchPattern: '*.example.com' }]) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fqdn-'));
  let next = 300;
  const held = new Map<number, string>();
  const claims = new Map<string, number>();
  let changes = 0;
  const deps = {
    acquire: (ip: string) => {
      const id = next++;
      held.set(id, ip);
      return id;
    },
    release: (id: number) => void held.delete(id),
    claim: (ip: string, id: number | undefined) => (id === undefined ? claims.delete(ip) : claims.set(ip, id)),
    selectors: () => selectors,
    onChanged: async () => void changes++,
    log: silent,
  };
  const cache = new FqdnCache(deps, { stateDir: dir, minTtl: 0, maxIpsPerName: 50, maxIpsPerEndpoint: 1000, ...opts });
  return { cache, held, claims, deps, dir, changes: () => changes, selectors };
}

describe('FQDN cache', () => {
  it('learns addresses of names a selector matches: identity, ipcache claim, selection; ignores other names', async () => {
    const s = setup();
    await s.cache.learn(7, 'API.example.com', [{ ip: '192.0.2.20', ttl: 30 }, { ip: '192.0.2.21', ttl: 30 }], 1000);
    await s.cache.learn(7, 'other.org', [{ ip: '192.0.2.99', ttl: 30 }], 1000);
    assert.equal(s.changes(), 1);
    assert.deepEqual([...s.claims.keys()].sort(), ['192.0.2.20', '192.0.2.21']);
    assert.deepEqual(s.cache.identitiesFor({ matchPattern: '*.example.com' }).sort(), [300, 301]);
    const rows = s.cache.list(1000);
    assert.deepEqual(rows.map((r) => [r.name, r.ip, r.endpoints, r.remaining]), [['api.example.com.', '192.0.2.20', [7], 30], ['api.example.com.', '192.0.2.21', [7], 30]]);
    // The same answer again changes nothing (no regeneration), another endpoint is recorded.
    await s.cache.learn(8, 'api.example.com.', [{ ip: '192.0.2.20', ttl: 30 }], 2000);
    assert.equal(s.changes(), 1);
    assert.deepEqual(s.cache.list(2000)[0].endpoints, [7, 8]);
  });

  it('expires addresses after their TTL (at least the minimum), except while conntrack uses them', async () => {
    const s = setup({ minTtl: 5 });
    await s.cache.learn(7, 'a.example.com', [{ ip: '192.0.2.1', ttl: 1 }, { ip: '192.0.2.2', ttl: 10 }], 0);
    assert.deepEqual(await s.cache.expire(async () => new Set(), 4000), [], 'the minimum TTL holds');
    assert.deepEqual(await s.cache.expire(async () => new Set(), 6000), [], 'the grace after the expiry holds');
    assert.deepEqual(await s.cache.expire(async () => new Set(['192.0.2.1']), 8000), [], 'in use: kept');
    assert.equal(s.cache.counters.keptInUse, 1);
    assert.deepEqual(s.cache.list(8000).find((r) => r.ip === '192.0.2.1')!.remaining, -3);
    assert.deepEqual(await s.cache.expire(async () => new Set(), 8000), ['192.0.2.1']);
    assert.ok(!s.claims.has('192.0.2.1') && s.claims.has('192.0.2.2'));
    assert.equal(s.held.size, 1, 'the identity was released');
    assert.deepEqual(await s.cache.expire(async () => new Set(), 13_000), ['192.0.2.2']);
    assert.equal(s.cache.size, 0);
    assert.equal(s.changes(), 3);
  });

  it('an address several names share is kept until the last one expires', async () => {
    const s = setup();
    await s.cache.learn(7, 'a.example.com', [{ ip: '192.0.2.1', ttl: 1 }], 0);
    await s.cache.learn(7, 'b.example.com', [{ ip: '192.0.2.1', ttl: 10 }], 0);
    assert.equal(s.held.size, 1);
    await s.cache.expire(async () => new Set(), 4000);
    assert.ok(s.claims.has('192.0.2.1'));
    await s.cache.expire(async () => new Set(), 13_000);
    assert.ok(!s.claims.has('192.0.2.1'));
  });

  it('limits: per name the address expiring first makes room, per endpoint further addresses are not learned; both counted', async () => {
    const s = setup({ maxIpsPerName: 2, maxIpsPerEndpoint: 3 });
    await s.cache.learn(7, 'a.example.com', [{ ip: '192.0.2.1', ttl: 5 }, { ip: '192.0.2.2', ttl: 50 }], 0);
    await s.cache.learn(7, 'a.example.com', [{ ip: '192.0.2.3', ttl: 50 }], 0);
    assert.deepEqual(s.cache.list(0).map((r) => r.ip), ['192.0.2.2', '192.0.2.3']);
    assert.equal(s.cache.counters.limitPerName, 1);
    await s.cache.learn(7, 'b.example.com', [{ ip: '192.0.2.4', ttl: 50 }, { ip: '192.0.2.5', ttl: 50 }], 0);
    assert.equal(s.cache.size, 3);
    assert.equal(s.cache.counters.limitPerEndpoint, 1);
    await s.cache.learn(8, 'b.example.com', [{ ip: '192.0.2.5', ttl: 50 }], 0);
    assert.equal(s.cache.size, 4, 'another endpoint has its own limit');
    await s.cache.expire(async () => new Set(), 60_000);
    await s.cache.learn(7, 'c.example.com', [{ ip: '192.0.2.9', ttl: 50 }], 60_000);
    assert.deepEqual(s.cache.list(60_000).map((r) => r.ip), ['192.0.2.9'], "expired addresses free the endpoint's budget");
  });

  it('persists and restores (identities and claims taken again, expired entries left to expire())', async () => {
    const s = setup();
    await s.cache.learn(7, 'a.example.com', [{ ip: '192.0.2.1', ttl: 60 }], Date.now());
    s.cache.persist();
    const t = new FqdnCache(s.deps, { stateDir: s.dir, minTtl: 0, maxIpsPerName: 50, maxIpsPerEndpoint: 1000 });
    s.claims.clear();
    assert.equal(t.restore(), 1);
    assert.ok(s.claims.has('192.0.2.1'));
    assert.equal(t.identitiesFor({ matchPattern: '*.example.com' }).length, 1);
    fs.rmSync(s.dir, { recursive: true, force: true });
  });
});

describe('DNS proxy messages and configuration', () => {
  const query = dnsPacket.encode({ id: 4242, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: 'evil.example.org' }] });

  it('a refusal echoes id and question with REFUSED or NXDOMAIN, RD kept, no records', () => {
    for (const rc of ['REFUSED', 'NXDOMAIN'] as const) {
      const r = dnsPacket.decode(refusal(dnsPacket.decode(query), rc));
      assert.equal(r.id, 4242);
      assert.equal(r.type, 'response');
      assert.equal((r as any).rcode, rc);
      assert.equal((r as any).flag_rd, true);
      assert.deepEqual(r.questions, [{ type: 'A', name: 'evil.example.org', class: 'IN' }]);
      assert.deepEqual(r.answers, []);
    }
  });

  it('answer addresses: A and AAAA with TTLs, CNAMEs apart', () => {
    const ans = dnsPacket.decode(
      dnsPacket.encode({
        id: 1,
        type: 'response',
        questions: [{ type: 'A', name: 'www.example.com' }],
        answers: [
          { type: 'CNAME', name: 'www.example.com', ttl: 60, data: 'api.example.com' },
          { type: 'A', name: 'api.example.com', ttl: 30, data: '192.0.2.20' },
          { type: 'AAAA', name: 'api.example.com', ttl: 20, data: '2001:db8::1' },
        ],
      }),
    );
    assert.deepEqual(answerAddresses(ans), { ips: ['192.0.2.20', '2001:db8::1'], ttls: [30, 20], cnames: ['api.example.com'] });
    // The query name and each CNAME target stand for the addresses (a selector naming either learns them).
    assert.deepEqual(Object.fromEntries(addressesByName('WWW.example.com.', ans)), {
      'www.example.com.': [{ ip: '192.0.2.20', ttl: 30 }, { ip: '2001:db8::1', ttl: 20 }],
      'api.example.com.': [{ ip: '192.0.2.20', ttl: 30 }, { ip: '2001:db8::1', ttl: 20 }],
    });
  });

  it('the proxy configuration checks dns-policy listeners and the dns part, naming field and value', () => {
    const base = { version: 1, generation: 1, node: 'n', policies: {}, endpoints: [] };
    assert.doesNotThrow(() =>
      parseConfig({ ...base, listeners: [{ name: 'dns-egress', kind: 'dns-policy', address: '127.0.0.1', port: 10053, protocol: 'udp+tcp', transparent: true, direction: 'egress' }], dns: { selectors: [{ matchPattern: '*.a.com' }], rejectRcode: 'REFUSED', maxDelayMs: 100 } }),
    );
    assert.throws(
      () => parseConfig({ ...base, listeners: [{ name: 'dns-egress', kind: 'dns-policy', address: '127.0.0.1', port: 10053, protocol: 'tcp', transparent: true }], dns: { selectors: [{ matchName: 'bad name' }], rejectRcode: 'NOPE', maxDelayMs: -1 } }),
      (e: Error) => /listeners\[0\]\.protocol: "tcp" is not udp\+tcp/.test(e.message) && /dns\.selectors\[0\]/.test(e.message) && /dns\.rejectRcode: "NOPE"/.test(e.message) && /dns\.maxDelayMs: -1/.test(e.message),
    );
  });

  it('agent flags: --tofqdns-* parsed and checked, naming flag and value', () => {
    const cfg = (o: Record<string, string>) => buildConfig({ stateDir: '/var/run/mbx', bpfRoot: '/sys/fs/bpf/mbx', podCidr: '10.200.0.0/24', nodeName: 'n', mtu: 1500, logLevel: 'info', bpfObjDir: '/tmp', ...o });
    assert.deepEqual(cfg({}).fqdn, { minTtl: 0, maxDelayMs: 100, rejectRcode: 'REFUSED', maxIpsPerName: 50, maxIpsPerEndpoint: 1000 });
    const c = cfg({ tofqdnsMinTtl: '30', tofqdnsProxyResponseMaxDelay: '1s', tofqdnsDnsRejectResponseCode: 'nameError' });
    assert.equal(c.fqdn.minTtl, 30);
    assert.equal(c.fqdn.maxDelayMs, 1000);
    assert.equal(c.fqdn.rejectRcode, 'NXDOMAIN');
    assert.throws(() => cfg({ tofqdnsMinTtl: '-1' }), /tofqdns-min-ttl: "-1"/);
    assert.throws(() => cfg({ tofqdnsProxyResponseMaxDelay: 'soon' }), /tofqdns-proxy-response-max-delay: "soon"/);
    assert.throws(() => cfg({ tofqdnsDnsRejectResponseCode: 'drop' }), /tofqdns-dns-reject-response-code: "drop"/);
  });
});
