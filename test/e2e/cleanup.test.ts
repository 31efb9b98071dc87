/**
 * `membrane-agent --cleanup` with the agent's flags removes the node for good:
 * endpoint veths (and the pods' interfaces), the host device pair with its
 * routes, the NodePort program on --devices (the device itself stays), every
 * pin under --bpf-root and the state directory. Refused while the agent
 * serves; idempotent; works when the state directory is already gone.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TestNode } from '../helpers/node';
import { inNs, ping, tryRun } from '../helpers/sys';
import { BpfLink } from '../../src/bpf';

describe('membrane-agent --cleanup', () => {
  const node = new TestNode('cln');

  before(async () => {
    await node.start({ world: true, agentArgs: ['--devices', 'wld0'] });
  });
  after(async () => {
    await node.cleanup();
  });

  const links = (): string[] => (JSON.parse(node.nodeExec('ip', ['-j', 'link', 'show']).stdout) as any[]).map((l) => l.ifname);
  const podRoute = () => node.nodeExec('ip', ['route', 'show', node.podCidr]).stdout.trim();
  const linkExists = (id: number) => tryRun('bpftool', ['link', 'show', 'id', String(id)]).code === 0;

  it('refuses while the agent serves, then removes devices, routes, programs, pins and state; a second run has nothing to do', async () => {
    const a = node.addPod('a');
    node.addPod('b');
    const { host, net } = node.cliJson(['status']).devices;
    const lxc = links().filter((n) => n.startsWith('lxc'));
    assert.equal(lxc.length, 2);
    const nodePort = BpfLink.fromPin(path.join(node.bpfRoot, 'host', 'netdev_wld0'));
    const nodePortId = nodePort.info().id;
    nodePort.close();
    assert.ok(linkExists(nodePortId));
    assert.notEqual(podRoute(), '');

    let r = node.agentCleanup();
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /an agent is serving on .*: stop it first/);
    assert.ok(links().includes(host) && fs.existsSync(node.stateDir) && fs.existsSync(node.bpfRoot), 'nothing removed');

    await node.stopAgent('SIGTERM');
    assert.ok(ping(a.ns, '10.200.0.1'), 'a stopped agent leaves the datapath in place');
    r = node.agentCleanup();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`removed endpoint veth ${lxc[0]}`));
    assert.match(r.stdout, new RegExp(`removed device ${host}`));
    const left = links();
    assert.deepEqual(left.filter((n) => n === host || n === net || n.startsWith('lxc')), []);
    assert.ok(left.includes('wld0'), 'the external device stays');
    assert.ok(!linkExists(nodePortId), 'the NodePort program is detached from wld0');
    assert.equal(inNs(a.ns, 'ip', ['link', 'show', 'eth0']).code, 1, "the pod's interface went with its veth");
    assert.equal(podRoute(), '', 'the pod CIDR route is gone');
    assert.ok(!fs.existsSync(node.bpfRoot), 'pins removed');
    assert.ok(!fs.existsSync(node.stateDir), 'state removed');

    r = node.agentCleanup();
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'nothing to remove');
  });

  it('cleans a node whose state directory was deleted: veths and devices are found from the pins', async () => {
    await node.startAgent();
    node.addPod('c');
    const { host } = node.cliJson(['status']).devices;
    await node.stopAgent('SIGKILL');
    fs.rmSync(node.stateDir, { recursive: true, force: true });
    const r = node.agentCleanup();
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(links().filter((n) => n === host || n.startsWith('lxc')), []);
    assert.ok(!fs.existsSync(node.bpfRoot));
  });
});
