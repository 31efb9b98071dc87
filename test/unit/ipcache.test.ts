/** The ipcache's claims and precedence, and the desired-state table it writes (in-memory map). */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { BpfMap } from '../../src/bpf';
import { MapTable } from '../../src/datapath/reconciler';
import type { IpcacheKey, IpcacheValue } from '../../src/datapath/datapath';
import * as gen from '../../src/datapath/maps.gen';
import { IpCache } from '../../src/ipcache/ipcache';
import { MemMap } from '../helpers/memmap';

function setup() {
  const map = new MemMap<IpcacheKey, IpcacheValue>(gen.ipcacheKeyCodec, gen.ipcacheValueCodec);
  const table = new MapTable('mb_ipcache', map as unknown as BpfMap<IpcacheKey, IpcacheValue>, {
    keyId: (k) => gen.ipcacheKeyCodec.encode(k).toString('hex'),
    same: (a, b) => gen.ipcacheValueCodec.encode(a).equals(gen.ipcacheValueCodec.encode(b)),
  });
  const ipc = new IpCache(table);
  const kernel = () => {
    table.flush();
    return new Map([...map.entries()].map(([k, v]) => [`${[...k.addr.subarray(0, 4)].join('.')}/${k.prefixlen - 32}`, v.sec_id]));
  };
  return { ipc, kernel };
}

describe('ipcache', () => {
  it('a CIDR /32 claim never displaces an endpoint or host entry, and withdrawing it restores nothing it did not own', () => {
    const { ipc, kernel } = setup();
    ipc.upsert('10.200.0.1', 'host', { identity: 1 });
    ipc.upsert('10.200.0.7', 'endpoint', { identity: 300, namespace: 'default', pod: 'a' });
    ipc.upsert('10.200.0.1/32', 'cidr', { identity: (1 << 24) + 5 });
    ipc.upsert('10.200.0.7/32', 'cidr', { identity: (1 << 24) + 6 });
    assert.equal(kernel().get('10.200.0.1/32'), 1, 'the router stays host');
    assert.equal(kernel().get('10.200.0.7/32'), 300, 'the pod stays itself');
    assert.deepEqual(ipc.list().find((r) => r.prefix === '10.200.0.1/32')?.shadowed, [{ source: 'cidr', identity: (1 << 24) + 5 }]);
    ipc.delete('10.200.0.1/32', 'cidr');
    ipc.delete('10.200.0.7/32', 'cidr');
    assert.equal(kernel().get('10.200.0.1/32'), 1);
    assert.equal(kernel().get('10.200.0.7/32'), 300);
  });

  it('the next claim takes over when the winner goes, and the prefix goes when nobody claims it', () => {
    const { ipc, kernel } = setup();
    ipc.upsert('10.0.0.9', 'cidr', { identity: 16777300 });
    assert.equal(kernel().get('10.0.0.9/32'), 16777300);
    ipc.upsert('10.0.0.9', 'cluster-pod', { identity: 400, tunnelEndpoint: '192.168.1.2' });
    assert.equal(kernel().get('10.0.0.9/32'), 400);
    ipc.delete('10.0.0.9', 'cluster-pod');
    assert.equal(kernel().get('10.0.0.9/32'), 16777300, 'the policy CIDR identity is back');
    ipc.delete('10.0.0.9', 'cidr');
    assert.equal(kernel().has('10.0.0.9/32'), false);
  });

  it('lookup is a longest-prefix match', () => {
    const { ipc } = setup();
    ipc.upsert('10.1.0.0/16', 'cluster-cidr', { identity: 2, tunnelEndpoint: '192.168.1.3' });
    ipc.upsert('10.1.2.3', 'cluster-pod', { identity: 500, tunnelEndpoint: '192.168.1.3' });
    assert.equal(ipc.lookup('10.1.2.3')?.identity, 500);
    assert.equal(ipc.lookup('10.1.9.9')?.prefix, '10.1.0.0/16');
    assert.equal(ipc.lookup('10.2.0.1'), undefined);
  });

  it('tunnel endpoints are written with the family and flag the datapath reads', () => {
    const { ipc } = setup();
    ipc.upsert('10.1.2.3', 'cluster-pod', { identity: 500, tunnelEndpoint: '192.168.1.3' });
    const e = ipc.get('10.1.2.3/32');
    assert.equal(e?.tunnelEndpoint, '192.168.1.3');
  });

  it('refuses malformed prefixes, naming them', () => {
    const { ipc } = setup();
    assert.throws(() => ipc.upsert('10.1.2.3/40', 'cidr', { identity: 1 }), /10\.1\.2\.3\/40/);
  });
});
