import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CniBackend, buildResult, convertResult, parseCniArgs, parseConf, run } from '../../src/cni/plugin';

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
