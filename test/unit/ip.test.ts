import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cidrContains, formatCidr, formatIp, ipAtOffset, parseCidr, parseIp } from '../../src/util/ip';

describe('addresses', () => {
  it('parses and formats IPv4 and IPv6 into 16-byte form', () => {
    const v4 = parseIp('10.1.2.3');
    assert.equal(v4.family, 4);
    assert.equal(v4.bytes.length, 16);
    assert.deepEqual([...v4.bytes.subarray(0, 5)], [10, 1, 2, 3, 0]);
    assert.equal(formatIp(v4), '10.1.2.3');
    for (const s of ['::1', 'fd00::1:2', '2001:db8::', 'fe80::1:2:3:4', '1:2:3:4:5:6:7:8', '::ffff:1.2.3.4']) {
      const a = parseIp(s);
      assert.equal(a.family, 6);
      assert.deepEqual(parseIp(formatIp(a)).bytes, a.bytes, s);
    }
    assert.equal(formatIp(parseIp('2001:db8:0:0:0:0:0:1')), '2001:db8::1');
  });

  it('CIDRs: masking, containment, offsets and errors naming the field', () => {
    const c = parseCidr('10.200.0.77/24');
    assert.equal(formatCidr(c), '10.200.0.0/24');
    assert.ok(cidrContains(c, parseIp('10.200.0.9')));
    assert.ok(!cidrContains(c, parseIp('10.201.0.9')));
    assert.equal(formatIp(ipAtOffset(c, 1)), '10.200.0.1');
    assert.equal(formatCidr(parseCidr('fd00:1::5/64')), 'fd00:1::/64');
    assert.throws(() => parseCidr('10.0.0.0/33', 'pod-cidr'), /pod-cidr: "10\.0\.0\.0\/33"/);
    assert.throws(() => parseCidr('nope', 'pod-cidr'), /pod-cidr: "nope" is not a CIDR/);
    assert.throws(() => parseIp('1.2.3', 'ip'), /ip: "1\.2\.3"/);
  });
});
