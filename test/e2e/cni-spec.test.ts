/**
 * End-to-end CNI 1.1 behaviour of bin/membrane-cni, called exactly as a runtime
 * calls it (environment + config on stdin), against a real agent.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CNI_BIN, TestNode } from '../helpers/node';
import { inNs, ping, sleep, tryRun } from '../helpers/sys';

describe('CNI spec behaviour', () => {
  const node = new TestNode('cni');

  before(async () => {
    await node.start();
  });
  after(async () => {
    await node.cleanup();
  });

  const lxcLinks = () => {
    const r = node.nodeExec('ip', ['-j', 'link', 'show']);
    return (JSON.parse(r.stdout) as any[]).map((l) => l.ifname as string).filter((n) => n.startsWith('lxc'));
  };
  const allocations = () => (node.cliJson(['ipam', 'list']).allocations as any[]).filter((a) => a.owner !== 'router');

  it('VERSION lists the supported versions and echoes the config version', () => {
    const r = node.cni({ command: 'VERSION', rawStdin: '{"cniVersion":"1.0.0"}' });
    assert.equal(r.code, 0);
    assert.equal(r.json.cniVersion, '1.0.0');
    assert.deepEqual(r.json.supportedVersions, ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
  });

  it('bad input gets the spec error code and names the culprit', () => {
    const { nsPath } = node.podNs('bad');
    let r = node.cni({ command: 'ADD', containerId: 'c-bad', ifname: 'eth0' });
    assert.equal(r.code, 1);
    assert.equal(r.json.code, 4);
    assert.match(r.json.msg, /CNI_NETNS/);
    r = node.cni({ command: 'ADD', containerId: 'c-bad', netns: nsPath, ifname: 'eth0', rawStdin: '{not json' });
    assert.equal(r.json.code, 6);
    r = node.cni({ command: 'ADD', containerId: 'c-bad', netns: nsPath, ifname: 'eth0', conf: { name: 'x', type: 'membrane-cni' } });
    assert.equal(r.json.code, 7);
    assert.match(r.json.msg, /cniVersion/);
    r = node.cni({ command: 'ADD', containerId: 'c-bad', netns: nsPath, ifname: 'eth0', conf: { ...node.conf, cniVersion: '9.9.9' } });
    assert.equal(r.json.code, 1);
    assert.match(r.json.msg, /9\.9\.9/);
    r = node.cni({ command: 'ADD', containerId: 'c-bad', netns: nsPath, ifname: 'this-name-is-far-too-long' });
    assert.equal(r.json.code, 4);
    assert.match(r.json.msg, /CNI_IFNAME/);
    r = node.cni({ command: 'ADD', containerId: 'c-bad', netns: '/run/netns/does-not-exist', ifname: 'eth0' });
    assert.equal(r.json.code, 4);
    assert.match(r.json.msg, /does-not-exist/);
    r = node.cni({ command: 'ADD', containerId: 'c-bad', netns: nsPath, ifname: 'eth0', args: 'FOO=bar' });
    assert.equal(r.json.code, 4);
    assert.match(r.json.msg, /FOO/);
    r = node.cni({ command: 'ADD', containerId: 'c-bad', netns: nsPath, ifname: 'eth0', conf: { ...node.conf, mtu: 'big' } });
    assert.equal(r.json.code, 7);
    assert.match(r.json.msg, /mtu/);
    r = node.cni({ command: 'FROB' as any });
    assert.equal(r.json.code, 4);
    assert.match(r.json.msg, /FROB/);
    assert.deepEqual(lxcLinks(), []);
    assert.deepEqual(allocations(), []);
  });

  it('a CNI_NETNS that is not a network namespace is code 4 naming CNI_NETNS; CNI_IFNAME "." and ".." are refused', () => {
    const { nsPath } = node.podNs('notns');
    const file = path.join(node.dir, 'not-a-netns');
    fs.writeFileSync(file, 'x');
    const fifo = path.join(node.dir, 'a-fifo');
    assert.equal(tryRun('mkfifo', [fifo]).code, 0);
    const cases: [string, RegExp][] = [
      [file, /regular file/],
      [node.dir, /directory/],
      [fifo, /FIFO/],
      ['/proc/self/ns/mnt', /mount namespace/],
      ['/proc/self/ns/uts', /UTS namespace/],
    ];
    for (const [netns, what] of cases) {
      const r = node.cni({ command: 'ADD', containerId: 'c-notns', netns, ifname: 'eth0' });
      assert.equal(r.code, 1, r.stdout);
      assert.equal(r.json.code, 4, `${netns}: ${r.stdout}`);
      assert.match(r.json.msg, /CNI_NETNS/);
      assert.match(r.json.msg, what);
      assert.ok(r.json.msg.includes(netns), r.json.msg);
    }
    for (const ifname of ['.', '..', 'a b', 'tab\there', 'x:y', 'sixteen-bytes-xx', 'ééééééééé']) {
      const r = node.cni({ command: 'ADD', containerId: 'c-notns', netns: nsPath, ifname });
      assert.equal(r.json?.code, 4, `${JSON.stringify(ifname)}: ${r.stdout}`);
      assert.match(r.json.msg, /CNI_IFNAME/);
    }
    // Nothing was left by the refused calls: a valid ADD into the same pod works.
    const direct = node.cni({ command: 'ADD', containerId: 'c-notns', netns: nsPath, ifname: 'eth0' });
    assert.equal(direct.code, 0, direct.stdout);
    assert.equal(node.cni({ command: 'DEL', containerId: 'c-notns', ifname: 'eth0' }).code, 0);
    assert.deepEqual(lxcLinks(), []);
    assert.deepEqual(allocations(), []);
  });

  it('an agent that dies mid-ADD answers 11 (try again); its address is reclaimed at start, other endpoints keep theirs', async () => {
    const keep = node.addPod('survivor');
    const { nsPath } = node.podNs('midadd');
    const agentPid = node.agent!.pid!;
    // Hold the agent inside this ADD: its first setns (entering the pod's namespace, after the
    // address is allocated and persisted) is delayed by strace while the agent is killed.
    const strace = spawn('strace', ['-p', String(agentPid), '-e', 'trace=setns', '-e', 'inject=setns:delay_enter=60000000'], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      let traced = '';
      strace.stderr!.on('data', (d) => (traced += d));
      const attachDeadline = Date.now() + 15_000;
      while (Date.now() < attachDeadline && !traced.includes('attached')) await sleep(50);
      assert.match(traced, /attached/, 'strace attached to the agent');
      const add = spawn('nsenter', [`--net=/run/netns/${node.nodeNs}`, '--', CNI_BIN], {
        env: { PATH: process.env.PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c-midadd', CNI_NETNS: nsPath, CNI_IFNAME: 'eth0', CNI_PATH: path.dirname(CNI_BIN) },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let out = '';
      add.stdout.on('data', (d) => (out += d));
      // 'close', not 'exit': the exit can be reported before the last of stdout is read.
      const exited = new Promise<number>((r) => add.on('close', (c) => r(c ?? -1)));
      add.stdin.end(JSON.stringify(node.conf));
      const ipamFile = path.join(node.stateDir, 'ipam.json');
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline && !fs.readFileSync(ipamFile, 'utf8').includes('c-midadd/eth0')) await sleep(50);
      assert.ok(fs.readFileSync(ipamFile, 'utf8').includes('c-midadd/eth0'), 'the ADD allocated its address');
      // SIGKILL takes effect once strace lets go of the stopped agent.
      node.agent!.kill('SIGKILL');
      strace.kill('SIGKILL');
      await node.stopAgent('SIGKILL');
      const code = await Promise.race([exited, sleep(20_000).then(() => -2)]);
      assert.equal(code, 1, out);
      const res = JSON.parse(out);
      assert.equal(res.code, 11, out);
      assert.match(res.msg, /try again/);
    } finally {
      strace.kill('SIGKILL');
      // Whatever failed above, the next tests need an agent.
      await node.stopAgent('SIGKILL');
      await node.startAgent();
    }
    const owners = allocations().map((a: any) => a.owner);
    assert.ok(!owners.includes('c-midadd/eth0'), `interrupted ADD's address reclaimed: ${owners}`);
    assert.deepEqual(allocations().map((a: any) => a.ip), [keep.ip], 'the existing endpoint keeps its address');
    assert.ok(ping(keep.ns, '10.200.0.1'), 'and its connectivity');
    // The runtime retries: the ADD now succeeds.
    const again = node.cni({ command: 'ADD', containerId: 'c-midadd', netns: nsPath, ifname: 'eth0' });
    assert.equal(again.code, 0, again.stdout);
    assert.equal(node.cni({ command: 'DEL', containerId: 'c-midadd', ifname: 'eth0' }).code, 0);
    assert.equal(node.cni({ command: 'DEL', containerId: keep.containerId, ifname: 'eth0' }).code, 0);
  });

  it('an interface already present in the pod is an error, and nothing is left behind', () => {
    const { ns, nsPath } = node.podNs('exists');
    assert.equal(tryRun('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'other0']).code, 0);
    const r = node.cni({ command: 'ADD', containerId: 'c-exists', netns: nsPath, ifname: 'eth0' });
    assert.equal(r.code, 1);
    assert.equal(r.json.code, 100);
    assert.match(r.json.msg, /eth0.*already exists/);
    assert.deepEqual(lxcLinks(), []);
    assert.deepEqual(allocations(), []);
    assert.deepEqual(node.cliJson(['endpoint', 'list']), []);
    // The runtime calls DEL after a failed ADD: it must succeed.
    assert.equal(node.cni({ command: 'DEL', containerId: 'c-exists', netns: nsPath, ifname: 'eth0' }).code, 0);
  });

  it('ADD undoes its partial work when a late step fails', () => {
    const { ns, nsPath } = node.podNs('partial');
    // A default route already in the pod makes ADD fail after the veth, the address and the first route exist.
    assert.equal(tryRun('ip', ['-n', ns, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up1']).code, 0);
    tryRun('ip', ['-n', ns, 'link', 'set', 'up0', 'up']);
    assert.equal(tryRun('ip', ['-n', ns, 'route', 'add', 'default', 'dev', 'up0']).code, 0);
    const r = node.cni({ command: 'ADD', containerId: 'c-partial', netns: nsPath, ifname: 'eth0' });
    assert.equal(r.code, 1, r.stdout);
    assert.notEqual(r.json.code, 0);
    assert.deepEqual(lxcLinks(), [], 'host veth removed');
    assert.equal(tryRun('ip', ['-n', ns, 'link', 'show', 'eth0']).code, 1, 'pod veth removed');
    assert.deepEqual(allocations(), [], 'address released');
    assert.deepEqual(node.cliJson(['endpoint', 'list']), []);
    assert.equal(node.cni({ command: 'DEL', containerId: 'c-partial', netns: nsPath, ifname: 'eth0' }).code, 0);
  });

  it('CNI_ARGS pod namespace and name are recorded; prevResult passes through when chained', () => {
    const { nsPath } = node.podNs('chained');
    const prevResult = { cniVersion: '1.1.0', interfaces: [{ name: 'bond0', mac: '02:00:00:00:00:01' }], ips: [{ address: '192.0.2.7/24', interface: 0 }], dns: { nameservers: ['192.0.2.53'] } };
    const r = node.cni({
      command: 'ADD',
      containerId: 'c-chained',
      netns: nsPath,
      ifname: 'eth0',
      args: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=c-chained',
      conf: { ...node.conf, prevResult },
    });
    assert.equal(r.code, 0, r.stdout);
    assert.equal(r.json.interfaces[0].name, 'bond0');
    assert.equal(r.json.ips[0].address, '192.0.2.7/24');
    assert.equal(r.json.ips[1].interface, 2);
    assert.deepEqual(r.json.dns, prevResult.dns);
    const ep = (node.cliJson(['endpoint', 'list']) as any[]).find((e) => e.containerId === 'c-chained');
    assert.equal(ep.namespace, 'shop');
    assert.equal(ep.podName, 'cart-1');
    assert.ok(ep.labels.includes('k8s:io.kubernetes.pod.namespace=shop'));
    assert.equal(node.cni({ command: 'DEL', containerId: 'c-chained', netns: nsPath, ifname: 'eth0' }).code, 0);
  });

  it('older cniVersion configs get results in their own shape', () => {
    const { nsPath } = node.podNs('old');
    const r = node.cni({ command: 'ADD', containerId: 'c-old', netns: nsPath, ifname: 'eth0', conf: { ...node.conf, cniVersion: '0.4.0' } });
    assert.equal(r.code, 0, r.stdout);
    assert.equal(r.json.cniVersion, '0.4.0');
    assert.equal(r.json.ips[0].version, '4');
    assert.equal(node.cni({ command: 'DEL', containerId: 'c-old', ifname: 'eth0', conf: { ...node.conf, cniVersion: '0.4.0' } }).code, 0);
  });

  it('CHECK passes on a healthy attachment and fails, naming the problem, when the pod address is gone', () => {
    const p = node.addPod('check');
    const conf = { ...node.conf, prevResult: p.result };
    assert.equal(node.cni({ command: 'CHECK', containerId: p.containerId, netns: p.nsPath, ifname: 'eth0', conf }).code, 0);
    inNs(p.ns, 'ip', ['addr', 'del', `${p.ip}/32`, 'dev', 'eth0']);
    const r = node.cni({ command: 'CHECK', containerId: p.containerId, netns: p.nsPath, ifname: 'eth0', conf });
    assert.equal(r.code, 1);
    assert.match(r.json.msg, new RegExp(p.ip.replace(/\./g, '\\.')));
    assert.equal(node.cni({ command: 'CHECK', containerId: 'unknown', netns: p.nsPath, ifname: 'eth0', conf }).code, 1);
    assert.equal(node.cni({ command: 'DEL', containerId: p.containerId, netns: p.nsPath, ifname: 'eth0' }).code, 0);
  });

  it('DEL is idempotent and works without a netns; it releases the address and removes the veth', () => {
    const p = node.addPod('del');
    assert.equal(lxcLinks().length, 1);
    assert.equal(node.cni({ command: 'DEL', containerId: p.containerId, ifname: 'eth0' }).code, 0);
    assert.equal(node.cni({ command: 'DEL', containerId: p.containerId, ifname: 'eth0' }).code, 0);
    assert.equal(node.cni({ command: 'DEL', containerId: p.containerId, netns: p.nsPath, ifname: 'eth0' }).code, 0);
    assert.equal(node.cni({ command: 'DEL', containerId: 'never-added', netns: '/run/netns/gone', ifname: 'eth0' }).code, 0);
    assert.deepEqual(lxcLinks(), []);
    assert.deepEqual(allocations(), []);
    assert.equal(tryRun('ip', ['-n', p.ns, 'link', 'show', 'eth0']).code, 1);
  });

  it('GC removes endpoints, addresses and veths of attachments that are not valid', () => {
    const keep = node.addPod('gckeep');
    const drop = node.addPod('gcdrop');
    const r = node.cni({ command: 'GC', conf: { ...node.conf, 'cni.dev/valid-attachments': [{ containerID: keep.containerId, ifname: 'eth0' }] } });
    assert.equal(r.code, 0, r.stdout);
    assert.equal(r.stdout.trim(), '');
    const eps: any[] = node.cliJson(['endpoint', 'list']);
    assert.deepEqual(eps.map((e) => e.containerId), [keep.containerId]);
    assert.equal(lxcLinks().length, 1);
    assert.deepEqual(allocations().map((a) => a.ip), [keep.ip]);
    assert.equal(tryRun('ip', ['-n', drop.ns, 'link', 'show', 'eth0']).code, 1);
    assert.ok(ping(keep.ns, '10.200.0.1'));
    assert.equal(node.cni({ command: 'DEL', containerId: keep.containerId, ifname: 'eth0' }).code, 0);
  });

  it('STATUS succeeds while the agent serves and answers 50 when it is unreachable', () => {
    assert.equal(node.cni({ command: 'STATUS' }).code, 0);
    const r = node.cni({ command: 'STATUS', conf: { ...node.conf, socket: '/tmp/no-such-membrane.sock' } });
    assert.equal(r.code, 1);
    assert.equal(r.json.code, 50);
    assert.match(r.json.msg, /no-such-membrane/);
  });
});
