/** The proxy's parts that need no root: configuration validation, the bounded record queue, NDJSON framing. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { ConfigError, parseConfig } from '../../src/proxy/config';
import { LineChannel } from '../../src/proxy/control';
import { L7Record, RecordQueue } from '../../src/proxy/records';

const rec = (i: number): L7Record => ({
  time: i,
  kind: 'request',
  direction: 'ingress',
  verdict: 'forwarded',
  src: { ip: '10.0.0.1', port: i, identity: 256 },
  dst: { ip: '10.0.0.2', port: 80, identity: 257, endpointId: 2 },
  http: { method: 'GET', url: 'http://x/', protocol: 'HTTP/1.1' },
});

describe('proxy configuration', () => {
  it('accepts a well-formed configuration and names every problem of a bad one', () => {
    const good = {
      version: 1,
      generation: 3,
      node: 'n',
      listeners: [{ name: 'http-egress', kind: 'http-policy', address: '127.0.0.1', port: 15001, protocol: 'tcp', transparent: true, direction: 'egress' }],
      policies: { k: { ingress: [], egress: [{ identity: 0, egress: true, protocol: 6, port: 80, prefixLen: 64, http: [{ rule: { method: 'GET' }, from: 'p' }], allowAllFrom: [] }] } },
      endpoints: [{ id: 4, policy: 'k' }],
    };
    assert.equal(parseConfig(good).generation, 3);
    try {
      parseConfig({
        ...good,
        version: 2,
        listeners: [good.listeners[0], { ...good.listeners[0], direction: 'sideways' }],
        policies: { k: { ingress: [{ identity: 'x' }], egress: [] } },
        endpoints: [{ id: 5, policy: 'missing' }],
      });
      assert.fail('should be rejected');
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      const all = e.problems.join('\n');
      for (const f of ['version: 2 is not 1', 'listeners[1].name: "http-egress" is used twice', 'listeners[1].port: 127.0.0.1:15001 is used twice', 'listeners[1].direction: "sideways"', 'policies.k.ingress[0].identity', 'endpoints[0].policy: "missing" is not in policies']) {
        assert.ok(all.includes(f), `${f} in:\n${all}`);
      }
    }
  });
});

describe('record queue', () => {
  it('is bounded: beyond its capacity the oldest records are dropped and counted', () => {
    const q = new RecordQueue(100);
    for (let i = 0; i < 250; i++) q.push(rec(i));
    assert.equal(q.length, 100);
    assert.equal(q.dropped, 150);
    const got = q.take(60);
    assert.deepEqual([got[0].time, got[59].time], [150, 209]);
    assert.equal(q.take(1000).length, 40);
    assert.equal(q.length, 0);
    assert.equal(q.delivered, 100);
    for (let i = 0; i < 10_000; i++) q.push(rec(i));
    assert.equal(q.length, 100, 'still bounded after many cycles');
  });
});

describe('control channel framing', () => {
  it('reassembles messages split across reads and splits several in one read', async () => {
    const received: unknown[] = [];
    const srv = net.createServer((s) => new LineChannel(s, (m) => received.push(m), () => {}));
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    const c = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
    await new Promise<void>((r) => c.once('connect', () => r()));
    const big = { type: 'records', records: Array.from({ length: 2000 }, (_, i) => rec(i)), dropped: 0 };
    const text = JSON.stringify({ a: 1 }) + '\n' + JSON.stringify(big) + '\n' + JSON.stringify({ b: 2 }) + '\n';
    for (let i = 0; i < text.length; i += 7777) c.write(text.slice(i, i + 7777));
    for (let i = 0; i < 200 && received.length < 3; i++) await new Promise((r) => setTimeout(r, 10));
    c.destroy();
    srv.close();
    assert.equal(received.length, 3);
    assert.deepEqual(received[0], { a: 1 });
    assert.equal((received[1] as typeof big).records.length, 2000);
    assert.deepEqual(received[2], { b: 2 });
  });
});
