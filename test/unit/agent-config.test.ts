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

  it('the flow store is bounded by a count and by memory (flag or config key), stream clients by a timeout', () => {
    const d = parseAgentArgs([]);
    assert.ok(d !== 'help');
    assert.equal(d.flowsBuffer, 65536);
    assert.equal(d.flowsMemory, 64 * 2 ** 20);
    assert.equal(d.flowsStreamTimeout, 30);
    for (const [v, bytes] of [['64Mi', 64 * 2 ** 20], ['1Gi', 2 ** 30], ['500M', 500e6], ['2097152', 2 ** 21], ['1.5Gi', 1.5 * 2 ** 30], ['8MiB', 8 * 2 ** 20]] as const) {
      const c = parseAgentArgs(['--flows-memory', v]);
      assert.ok(c !== 'help');
      assert.equal(c.flowsMemory, bytes, v);
    }
    assert.throws(() => parseAgentArgs(['--flows-memory', '64 elephants']), /flows-memory: "64 elephants" is not a size/);
    assert.throws(() => parseAgentArgs(['--flows-memory', '10Ki']), /flows-memory: "10Ki" must be between 1Mi and 64Gi/);
    assert.throws(() => parseAgentArgs(['--flows-stream-timeout', '0']), /flows-stream-timeout: "0" must be 1\.\.3600 seconds/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cfg-'));
    try {
      const f = path.join(dir, 'agent.yaml');
      fs.writeFileSync(f, 'flows-memory: 128Mi\nflowsBuffer: 1000\nflowsStreamTimeout: 5\n');
      const c = parseAgentArgs(['--config', f]);
      assert.ok(c !== 'help');
      assert.equal(c.flowsMemory, 128 * 2 ** 20);
      assert.equal(c.flowsBuffer, 1000);
      assert.equal(c.flowsStreamTimeout, 5);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
