import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CniBackend, buildResult, convertResult, parseCniArgs, parseConf, run } from '../../src/cni/plugin';
import { EndpointError } from '../../src/endpoint/manager';

/** A backend that must not be reached: input errors are found before any endpoint work. */
const unreachable: CniBackend = {
  add: async () => assert.fail('add called'),
  del: async () => assert.fail('del called'),
  check: async () => assert.fail('check called'),
  status: async () => assert.fail('status called'),
  gc: async () => assert.fail('gc called'),
};

describe('CNI plugin input handling (no endpoint work)', () => {
  it('parses CNI_ARGS and rejects unknown keys unless IgnoreUnknown', () => {
    assert.deepEqual(parseCniArgs('IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;FOO=b'), { K8S_POD_NAMESPACE: 'x', K8S_POD_NAME: 'a', FOO: 'b' });
    assert.throws(() => parseCniArgs('FOO=b'), /unknown key "FOO"/);
    assert.throws(() => parseCniArgs('garbage'), /"garbage" is not KEY=VALUE/);
    assert.deepEqual(parseCniArgs(undefined), {});
  });

  it('validates the configuration with the spec codes', () => {
    assert.throws(() => parseConf('{', 'ADD'), (e: any) => e.code === 6);
    assert.throws(() => parseConf('{"name":"n"}', 'ADD'), (e: any) => e.code === 7 && /cniVersion/.test(e.message));
    assert.throws(() => parseConf('{"cniVersion":"2.0.0","name":"n"}', 'ADD'), (e: any) => e.code === 1);
    assert.throws(() => parseConf('{"cniVersion":"1.0.0","name":"n"}', 'STATUS'), (e: any) => e.code === 1 && /STATUS/.test(e.message));
    assert.throws(() => parseConf('{"cniVersion":"1.1.0","name":"n","socket":"rel/path"}', 'ADD'), (e: any) => e.code === 7 && /socket/.test(e.message));
  });

  it('shapes results per version', () => {
    const resp = {
      endpoint: { id: 1, ifname: 'eth0', ipv4: '10.0.0.2', mac: '02:00:00:00:00:02', hostIfname: 'lxcabc', hostMac: '02:00:00:00:00:01', mtu: 1500, netns: '/run/netns/x' },
      router: '10.0.0.1',
      durationMs: 1,
    };
    const r = buildResult({ cniVersion: '1.1.0', name: 'n', type: 't' }, resp);
    assert.deepEqual(r.ips, [{ address: '10.0.0.2/32', gateway: '10.0.0.1', interface: 1 }]);
    assert.deepEqual(r.routes, [{ dst: '0.0.0.0/0', gw: '10.0.0.1' }]);
    assert.equal(r.interfaces[1].sandbox, '/run/netns/x');
    const old = convertResult(r, '0.3.1');
    assert.equal(old.ips[0].version, '4');
    const v2 = convertResult(r, '0.2.0');
    assert.equal(v2.ip4.ip, '10.0.0.2/32');
  });

  it('missing environment variables are code 4 naming the variable', async () => {
    const out = await run({ env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c' }, stdin: '{"cniVersion":"1.1.0","name":"n","type":"membrane-cni"}' }, unreachable);
    assert.equal(out.exitCode, 1);
    const j = JSON.parse(out.stdout);
    assert.equal(j.code, 4);
    assert.match(j.msg, /CNI_NETNS/);
    const v = await run({ env: { CNI_COMMAND: 'VERSION' }, stdin: '{"cniVersion":"0.4.0"}' }, unreachable);
    assert.equal(JSON.parse(v.stdout).cniVersion, '0.4.0');
  });
});

describe('CNI commands against a backend (the agent side of the shim)', () => {
  const conf = (extra: Record<string, unknown> = {}) => JSON.stringify({ cniVersion: '1.1.0', name: 'n', type: 'membrane-cni', ...extra });
  const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/run/netns/p', CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart' };
  const added = {
    endpoint: { id: 7, ifname: 'eth0', ipv4: '10.0.0.7', mac: '02:00:00:00:00:07', hostIfname: 'lxc7', hostMac: '02:00:00:00:00:01', mtu: 1500, netns: '/run/netns/p' },
    router: '10.0.0.1',
  };
  const backend = (over: Partial<CniBackend> = {}): CniBackend & { calls: string[] } => {
    const calls: string[] = [];
    return {
      calls,
      add: async (r) => {
        calls.push(`add ${r.containerId} ${r.ifname} ${r.netns} ${JSON.stringify(r.args)} ${r.mtu ?? ''}`);
        return added;
      },
      del: async (c, i) => void calls.push(`del ${c} ${i}`),
      check: async () => [],
      status: async () => void calls.push('status'),
      gc: async (v) => {
        calls.push(`gc ${JSON.stringify(v)}`);
        return { removed: [], errors: [] };
      },
      ...over,
    };
  };

  it('ADD passes the request on and answers the result; DEL, STATUS and GC print nothing on success', async () => {
    const b = backend();
    const out = await run({ env, stdin: conf({ mtu: 9000 }) }, b);
    assert.equal(out.exitCode, 0, out.stdout);
    assert.equal(JSON.parse(out.stdout).ips[0].address, '10.0.0.7/32');
    assert.deepEqual(b.calls, ['add c1 eth0 /run/netns/p {"K8S_POD_NAMESPACE":"shop","K8S_POD_NAME":"cart"} 9000']);
    assert.deepEqual(await run({ env: { CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c1', CNI_IFNAME: 'eth0' }, stdin: conf() }, b), { stdout: '', exitCode: 0 });
    assert.deepEqual(await run({ env: { CNI_COMMAND: 'STATUS' }, stdin: conf() }, b), { stdout: '', exitCode: 0 });
    const gc = await run({ env: { CNI_COMMAND: 'GC' }, stdin: conf({ 'cni.dev/valid-attachments': [{ containerID: 'c1', ifname: 'eth0' }] }) }, b);
    assert.deepEqual(gc, { stdout: '', exitCode: 0 });
    assert.equal(b.calls.at(-1), 'gc [{"containerId":"c1","ifname":"eth0"}]');
  });

  it('endpoint errors become the CNI codes, naming the variable the field came from', async () => {
    const fail = (e: Error) => backend({ add: async () => Promise.reject(e) });
    const code = async (e: Error) => JSON.parse((await run({ env, stdin: conf() }, fail(e))).stdout);
    assert.equal((await code(new EndpointError('an endpoint for container c1 interface eth0 already exists', 'conflict'))).code, 100);
    assert.equal((await code(new EndpointError('pod CIDR exhausted', 'exhausted'))).code, 101);
    const ns = await code(new EndpointError('netns: /run/netns/p is a regular file, not a network namespace', 'invalid', 'netns'));
    assert.equal(ns.code, 4);
    assert.equal(ns.msg, 'environment variable CNI_NETNS: /run/netns/p is a regular file, not a network namespace');
    assert.equal((await code(new EndpointError('mtu: too big', 'invalid'))).code, 7);
    const internal = await code(new Error('netlink RTM_NEWLINK: File exists'));
    assert.equal(internal.code, 102);
    assert.match(internal.msg, /^membrane agent: netlink/);
    const check = await run({ env: { ...env, CNI_COMMAND: 'CHECK' }, stdin: conf({ prevResult: {} }) }, backend({ check: async () => ['address 10.0.0.7 is missing'] }));
    assert.equal(JSON.parse(check.stdout).code, 103);
    const gc = await run({ env: { CNI_COMMAND: 'GC' }, stdin: conf() }, backend({ gc: async () => ({ removed: [], errors: ['veth gone'] }) }));
    assert.equal(JSON.parse(gc.stdout).code, 102);
    assert.match(JSON.parse(gc.stdout).msg, /veth gone/);
  });

  it('a container id or netns path too long for the agent is code 4 naming the variable', async () => {
    const long = await run({ env: { ...env, CNI_CONTAINERID: 'c'.repeat(257) }, stdin: conf() }, backend());
    assert.equal(JSON.parse(long.stdout).code, 4);
    assert.match(JSON.parse(long.stdout).msg, /CNI_CONTAINERID: 257 characters/);
  });
});
