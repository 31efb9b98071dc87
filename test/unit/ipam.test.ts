import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Ipam } from '../../src/ipam/ipam';
import { formatIp } from '../../src/util/ip';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mb-ipam-'));

describe('IPAM', () => {
  it('reserves the router, allocates from .2, persists across restarts, and never reuses a held address', () => {
    const dir = tmp();
    try {
      const a = new Ipam('10.9.0.0/24', dir);
      assert.equal(formatIp(a.router), '10.9.0.1');
      assert.equal(formatIp(a.allocate('c1/eth0')), '10.9.0.2');
      assert.equal(formatIp(a.allocate('c2/eth0')), '10.9.0.3');
      assert.equal(formatIp(a.allocate('c1/eth0')), '10.9.0.2', 'same owner, same address');
      const b = new Ipam('10.9.0.0/24', dir);
      assert.equal(formatIp(b.allocate('c3/eth0')), '10.9.0.4');
      assert.deepEqual(b.list().map((x) => x.owner), ['router', 'c1/eth0', 'c2/eth0', 'c3/eth0']);
      assert.ok(b.release('10.9.0.3'));
      assert.equal(formatIp(b.allocate('c4/eth0')), '10.9.0.5', 'released addresses are not handed out again at once');
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('exhausts cleanly, skips network and broadcast, and refuses a changed CIDR', () => {
    const dir = tmp();
    try {
      const a = new Ipam('10.9.1.0/29', dir); // .1 router, .2-.6 usable, .7 broadcast
      const got = [1, 2, 3, 4, 5].map((i) => formatIp(a.allocate(`c${i}`)));
      assert.deepEqual(got, ['10.9.1.2', '10.9.1.3', '10.9.1.4', '10.9.1.5', '10.9.1.6']);
      assert.throws(() => a.allocate('c6'), /exhausted/);
      assert.throws(() => new Ipam('10.9.2.0/24', dir), /pod-cidr.*10\.9\.2\.0\/24.*10\.9\.1\.0\/29/);
      assert.throws(() => a.reserve('10.9.1.3', 'other'), /already allocated to c2/);
      assert.throws(() => a.reserve('10.8.0.1', 'x'), /outside the pod CIDR/);
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });
});
