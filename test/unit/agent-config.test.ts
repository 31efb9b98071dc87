import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { hostVethName, parseAgentArgs } from '../../src/agent/config';

describe('agent configuration', () => {
  it('defaults match the documented contract', () => {
    const c = parseAgentArgs([]);
    assert.ok(c !== 'help');
    assert.equal(c.stateDir, '/var/run/membrane');
    assert.equal(c.bpfRoot, '/sys/fs/bpf/membrane');
    assert.equal(c.socket, '/var/run/membrane/membrane.sock');
    assert.equal(c.podCidr, '10.200.0.0/24');
    assert.equal(c.hostDevice, 'mb_host');
  });

  it('two agents with different flags get different device and veth names', () => {
    const a = parseAgentArgs(['--state-dir', '/tmp/a', '--bpf-root', '/sys/fs/bpf/a']);
    const b = parseAgentArgs(['--state-dir', '/tmp/b', '--bpf-root', '/sys/fs/bpf/b']);
    assert.ok(a !== 'help' && b !== 'help');
    assert.notEqual(a.hostDevice, b.hostDevice);
    assert.ok(a.hostDevice.length <= 15 && a.netDevice.length <= 15);
    assert.notEqual(hostVethName(a, 'c1', 'eth0'), hostVethName(b, 'c1', 'eth0'));
    assert.match(hostVethName(a, 'c1', 'eth0'), /^lxc[0-9a-f]{12}$/);
    assert.equal(a.socket, '/tmp/a/membrane.sock');
  });

  it('reads a config file and names bad values', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cfg-'));
    try {
      const f = path.join(dir, 'agent.yaml');
      fs.writeFileSync(f, 'pod-cidr: 10.50.0.0/24\nmtu: 1400\n');
      const c = parseAgentArgs(['--config', f]);
      assert.ok(c !== 'help');
      assert.equal(c.podCidr, '10.50.0.0/24');
      assert.equal(c.mtu, 1400);
      fs.writeFileSync(f, 'podCidr: 10.50.0.0/24\nbogus: 1\n');
      assert.throws(() => parseAgentArgs(['--config', f]), /unknown setting "bogus"/);
      assert.throws(() => parseAgentArgs(['--pod-cidr', '10.0.0.0/99']), /pod-cidr/);
      assert.throws(() => parseAgentArgs(['--mtu', 'x']), /mtu: "x"/);
      assert.throws(() => parseAgentArgs(['--bpf-root', '/tmp/x']), /bpf-root/);
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });
});
