/**
 * End-to-end: a node (netns + agent) with three pods attached through the CNI
 * plugin; real ICMP/TCP/UDP traffic between the pods and from the host; a
 * spoofing pod dropped by the datapath with the right reason; the agent killed
 * with -9 while a TCP stream flows.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { TestNode } from '../helpers/node';
import { NETKIT, inNs, ping, sleep } from '../helpers/sys';

describe('pod networking through the eBPF datapath', () => {
  const node = new TestNode('pn');
  let pods: ReturnType<TestNode['addPod']>[] = [];
  const servers: ReturnType<typeof spawn>[] = [];

  before(async () => {
    await node.start();
    pods = ['a', 'b', 'c'].map((n) => node.addPod(n));
  });

  after(async () => {
    for (const s of servers) s.kill('SIGKILL');
    await node.cleanup();
  });

  function startServer(ns: string, mode: 'tcp-echo' | 'udp-echo', port: number): Promise<void> {
    const p = spawn('ip', ['netns', 'exec', ns, process.execPath, NETKIT, mode, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
    servers.push(p);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${mode} in ${ns} did not start`)), 5000);
      p.stdout!.once('data', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  it('ADD returned a CNI 1.1 result with a /32 address, the router as gateway and the pod interface', () => {
    for (const p of pods) {
      const r = p.result;
      assert.equal(r.cniVersion, '1.1.0');
      assert.match(r.ips[0].address, /^10\.200\.0\.\d+\/32$/);
      assert.equal(r.ips[0].gateway, '10.200.0.1');
      const podIf = r.interfaces[r.ips[0].interface];
      assert.equal(podIf.name, 'eth0');
      assert.equal(podIf.sandbox, p.nsPath);
      assert.match(r.interfaces[0].name, /^lxc[0-9a-f]{12}$/);
    }
    assert.equal(new Set(pods.map((p) => p.ip)).size, 3, 'distinct addresses');
  });

  it('the endpoint list shows every pod with its pod name, and the kernel maps hold them', () => {
    const eps: any[] = node.cliJson(['endpoint', 'list']);
    assert.equal(eps.length, 3);
    for (const p of pods) {
      const ep = eps.find((e) => e.ipv4 === p.ip);
      assert.ok(ep, `endpoint for ${p.ip}`);
      assert.equal(ep.state, 'ready');
      assert.equal(ep.namespace, 'default');
      assert.equal(ep.podName, p.ns.split('-').pop());
    }
    const bpfEps: any[] = node.cliJson(['bpf', 'endpoint', 'list']);
    for (const p of pods) assert.ok(bpfEps.some((e) => e.address === p.ip && e.endpointId > 0), `mb_endpoints has ${p.ip}`);
    const ipc: any[] = node.cliJson(['bpf', 'ipcache', 'list']);
    for (const p of pods) assert.ok(ipc.some((e) => e.prefix === `${p.ip}/32` && e.identity >= 256), `mb_ipcache has ${p.ip}`);
    assert.ok(ipc.some((e) => e.prefix === '10.200.0.1/32' && e.identity === 1), 'router address is identity host');
  });

  it('ICMP: every pod reaches every other pod, the router, and the host reaches every pod', () => {
    for (const src of pods) {
      assert.ok(ping(src.ns, '10.200.0.1'), `${src.ns} -> router`);
      for (const dst of pods) if (dst !== src) assert.ok(ping(src.ns, dst.ip), `${src.ns} -> ${dst.ip}`);
    }
    for (const dst of pods) assert.ok(node.nodeExec('ping', ['-c', '2', '-i', '0.2', '-W', '1', dst.ip]).code === 0, `host -> ${dst.ip}`);
  });

  it('TCP and UDP: pod to pod and host to pod', async () => {
    await startServer(pods[1].ns, 'tcp-echo', 8080);
    await startServer(pods[1].ns, 'udp-echo', 5353);
    for (const src of [pods[0], pods[2]]) {
      const t = inNs(src.ns, process.execPath, [NETKIT, 'tcp-req', pods[1].ip, '8080', `hello-from-${src.ns}`]);
      assert.equal(t.code, 0, t.stderr);
      assert.equal(t.stdout.trim(), `hello-from-${src.ns}`);
      const u = inNs(src.ns, process.execPath, [NETKIT, 'udp-req', pods[1].ip, '5353', 'udp-ping']);
      assert.equal(u.code, 0, u.stderr);
      assert.equal(u.stdout.trim(), 'udp-ping');
    }
    const ht = node.nodeExec(process.execPath, [NETKIT, 'tcp-req', pods[1].ip, '8080', 'from-host']);
    assert.equal(ht.code, 0, ht.stderr);
    const hu = node.nodeExec(process.execPath, [NETKIT, 'udp-req', pods[1].ip, '5353', 'from-host-udp']);
    assert.equal(hu.code, 0, hu.stderr);
  });

  it('a pod sending from an address that is not its own is dropped with INVALID_SIP (132)', () => {
    const [a, b] = pods;
    const before = node.metric(132, 'egress');
    // A second address inside the pod: packets from it leave eth0 with a forged source.
    assert.equal(inNs(a.ns, 'ip', ['addr', 'add', '10.200.0.250/32', 'dev', 'eth0']).code, 0);
    try {
      assert.equal(ping(a.ns, b.ip, { count: 3, source: '10.200.0.250' }), false, 'spoofed ping must not get through');
    } finally {
      inNs(a.ns, 'ip', ['addr', 'del', '10.200.0.250/32', 'dev', 'eth0']);
    }
    const afterCount = node.metric(132, 'egress');
    assert.ok(afterCount >= before + 3, `INVALID_SIP drops counted: before ${before}, after ${afterCount}`);
    assert.ok(ping(a.ns, b.ip), 'the pod still works from its own address');
  });

  it('agent killed with -9 while a TCP stream runs: the stream keeps flowing; after restart the endpoints are the same', async () => {
    const [a, b] = pods;
    await startServer(b.ns, 'tcp-echo', 9000);
    const listBefore = node.cliJson(['endpoint', 'list']);
    const stream = spawn('ip', ['netns', 'exec', a.ns, process.execPath, NETKIT, 'tcp-stream', b.ip, '9000', '4000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let errText = '';
    stream.stdout!.on('data', (d) => lines.push(...d.toString().trim().split('\n')));
    stream.stderr!.on('data', (d) => (errText += d.toString()));
    const done = new Promise<number>((r) => stream.once('exit', (c) => r(c ?? -1)));
    await sleep(800);
    const atKill = Number((lines.at(-1) ?? '0 0').split(' ')[1]);
    await node.stopAgent('SIGKILL');
    await sleep(1500);
    const whileDown = Number((lines.at(-1) ?? '0 0').split(' ')[1]);
    assert.ok(whileDown > atKill + 20, `echoes kept arriving while the agent was dead (${atKill} -> ${whileDown})`);
    await node.startAgent();
    const code = await done;
    assert.equal(code, 0, `stream failed: ${errText}`);
    const [sent, echoed] = (lines.at(-1) ?? '0 0').split(' ').map(Number);
    assert.ok(sent > 100 && echoed >= sent - 5, `stream complete: sent ${sent}, echoed ${echoed}`);
    const listAfter = node.cliJson(['endpoint', 'list']);
    const strip = (l: any[]) => l.map((e) => ({ id: e.id, ipv4: e.ipv4, identity: e.identity, hostIfname: e.hostIfname, state: e.state, containerId: e.containerId }));
    assert.deepEqual(strip(listAfter), strip(listBefore));
    assert.ok(ping(a.ns, b.ip), 'connectivity after restart');
  });
});
