/**
 * A long-running node's kernel state stays exactly what the agent wants:
 *   - 1,000 endpoint ADD/DEL cycles and 100 identity changes under a
 *     300-descriptor limit leave the agent's descriptors, its kernel maps,
 *     programs, pins and table slots where they started (no EMFILE);
 *   - entries deleted or changed behind the agent's back (bpftool) in the
 *     ipcache, endpoints, policy, load-balancing and prog-array maps are
 *     restored by the periodic resync, and counted;
 *   - a policy naming the router's or a pod's /32 never displaces the host or
 *     endpoint ipcache entry, and deleting it leaves the address as it was.
 * Real agent, real veths and traffic in the test's own namespaces.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildConfig } from '../../src/agent/config';
import * as gen from '../../src/datapath/maps.gen';
import { TestNode } from '../helpers/node';
import { sleep, tryRun } from '../helpers/sys';

function bpftoolJson(args: string[]): any {
  const r = tryRun('bpftool', ['-j', ...args]);
  if (r.code !== 0) throw new Error(`bpftool ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout || '[]');
}

function hex(b: Buffer): string[] {
  return [...b].map((x) => x.toString(16).padStart(2, '0'));
}

function pinTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(path.relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

/** Everything of one agent that could leak: its descriptors, its kernel maps, programs it holds, pins, slots. */
function snapshot(node: TestNode) {
  const pid = node.agent!.pid!;
  const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
  const progIds = new Set<number>();
  const mapIds = new Set<number>();
  for (const f of fs.readdirSync(`/proc/${pid}/fdinfo`)) {
    let info = '';
    try {
      info = fs.readFileSync(`/proc/${pid}/fdinfo/${f}`, 'utf8');
    } catch {
      continue;
    }
    const p = /^prog_id:\s+(\d+)/m.exec(info);
    if (p) progIds.add(Number(p[1]));
    const m = /^map_id:\s+(\d+)/m.exec(info);
    if (m) mapIds.add(Number(m[1]));
  }
  const inst = buildConfig({ stateDir: node.stateDir, bpfRoot: node.bpfRoot, podCidr: node.podCidr, nodeName: 'x', mtu: 1500, logLevel: 'info', bpfObjDir: '/' }).instance;
  const policyMaps = bpftoolJson(['map', 'show']).filter((m: any) => typeof m.name === 'string' && m.name.startsWith(`mbp${inst}_`)).length;
  const slots = (name: string) => bpftoolJson(['map', 'dump', 'pinned', path.join(node.bpfRoot, name)]).length;
  return {
    fds,
    progIds: [...progIds].sort(),
    mapFds: mapIds.size,
    policyMaps,
    pins: pinTree(node.bpfRoot),
    callPolicy: slots('mb_call_policy'),
    policyMapSlots: slots('mb_policy_maps'),
    lxc: slots('mb_lxc'),
  };
}

/** A snapshot once the agent's descriptors are stable (no request in flight, closed connections reaped). */
async function settled(node: TestNode) {
  let prev = snapshot(node);
  for (let i = 0; i < 50; i++) {
    await sleep(200);
    const cur = snapshot(node);
    if (cur.fds === prev.fds) return cur;
    prev = cur;
  }
  return prev;
}

describe('node state under churn, drift and overlapping claims', () => {
  const node = new TestNode('ns');
  let a: ReturnType<TestNode['addPod']>;
  let b: ReturnType<TestNode['addPod']>;

  before(async () => {
    await node.start({ agentArgs: ['--resync-interval', '1'], limits: { nofile: 300 } });
    node.apply([
      { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a', namespace: 'default', labels: { app: 'a' } }, spec: { containers: [{ name: 'c' }] } },
      { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'b', namespace: 'default', labels: { app: 'b' } }, spec: { containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 80 }] }] } },
    ]);
    a = node.addPod('a');
    b = node.addPod('b');
    await node.serve(b.ns, 'tcp:80');
  });

  after(() => node.cleanup());

  it('1,000 ADD/DEL cycles and 100 relabels under a 300-descriptor limit: descriptors, maps, programs, pins and slots return to where they started', async () => {
    const churn = node.podNs('churn');
    const cycle = async (i: number) => {
      const add = await node.api('PUT', '/v1/endpoint', { containerId: `churn-${i}`, ifname: 'eth0', netns: churn.nsPath });
      assert.equal(add.status, 201, `ADD ${i}: ${JSON.stringify(add.json)}`);
      const del = await node.api('DELETE', '/v1/endpoint', { containerId: `churn-${i}`, ifname: 'eth0' });
      assert.equal(del.status, 200, `DEL ${i}: ${JSON.stringify(del.json)}`);
    };
    for (let i = 0; i < 10; i++) await cycle(i); // warm up (lazy allocations)
    const before = await settled(node);
    const t0 = Date.now();
    for (let i = 10; i < 1010; i++) await cycle(i);
    const cyclesMs = Date.now() - t0;
    for (let i = 0; i < 100; i++) {
      node.apply([{ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a', namespace: 'default', labels: { app: 'a', round: String(i) } }, spec: { containers: [{ name: 'c' }] } }]);
    }
    const ep = node.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'a');
    assert.ok(ep.labels.includes('k8s:round=99'), 'the last relabel is in force');
    assert.equal(node.tcp(a.ns, b.ip, 80), true, 'a still reaches b after all that');
    const now = await settled(node);
    console.log(`# churn: 1000 ADD/DEL cycles in ${cyclesMs} ms; agent fds ${before.fds} -> ${now.fds}; policy maps ${before.policyMaps} -> ${now.policyMaps}; programs held ${before.progIds.length} -> ${now.progIds.length}`);
    assert.equal(now.fds, before.fds, 'agent descriptors');
    assert.deepEqual(now.progIds, before.progIds, 'programs the agent holds');
    assert.equal(now.mapFds, before.mapFds, 'maps the agent holds');
    assert.equal(now.policyMaps, before.policyMaps, "the agent's policy maps in the kernel");
    assert.deepEqual(now.pins, before.pins, 'pins under the bpf root');
    assert.deepEqual([now.callPolicy, now.policyMapSlots, now.lxc], [before.callPolicy, before.policyMapSlots, before.lxc], 'table slots');
  });

  it('entries removed or changed behind the agent (bpftool) are restored by the periodic resync and counted', async () => {
    node.apply([
      {
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'b-from-a', namespace: 'default' },
        spec: { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'a' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] },
      },
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'b', namespace: 'default' }, spec: { selector: { app: 'b' }, ports: [{ port: 8080, targetPort: 80, protocol: 'TCP' }] } },
    ]);
    const svc = node.cliJson(['service', 'list'])[0];
    const vip = String(svc.frontend ?? svc.address ?? '').split(':')[0];
    assert.match(vip, /^\d+\.\d+\.\d+\.\d+$/, `service address: ${JSON.stringify(svc)}`);
    assert.equal(node.tcp(a.ns, b.ip, 80), true);
    assert.equal(node.tcp(a.ns, vip, 8080), true);
    const eps = node.cliJson(['endpoint', 'list']);
    const epB = eps.find((e: any) => e.podName === 'b');
    const statusBefore = node.cliJson(['status']);
    const repairedBefore = statusBefore.maps.reduce((s: number, m: any) => s + m.driftRepaired, 0);

    const ip = (t: string) => Buffer.from(t.split('.').map(Number));
    const addr16 = (t: string) => Buffer.concat([ip(t), Buffer.alloc(12)]);
    const pin = (n: string) => path.join(node.bpfRoot, n);
    const del = (map: string, key: Buffer) => {
      const r = tryRun('bpftool', ['map', 'delete', 'pinned', map, 'key', 'hex', ...hex(key)]);
      assert.equal(r.code, 0, `bpftool delete in ${map}: ${r.stderr}`);
    };
    // ipcache: a's /32; endpoints: b's entry; b's policy map: everything; service: its frontend's slot 0; prog array: b's slot.
    del(pin('mb_ipcache'), gen.ipcacheKeyCodec.encode({ prefixlen: 64, family: 4, addr: addr16(a.ip) } as any));
    del(pin('mb_endpoints'), gen.endpointKeyCodec.encode({ addr: addr16(b.ip), family: 4 } as any));
    const pol = bpftoolJson(['map', 'dump', 'pinned', pin(`endpoints/${epB.id}/policy`)]);
    assert.ok(pol.length > 0);
    for (const e of pol) del(pin(`endpoints/${epB.id}/policy`), Buffer.from(e.key.map((x: string) => parseInt(x, 16))));
    del(pin('mb_lb_services'), gen.lbServiceKeyCodec.encode({ addr: addr16(vip), dport: 8080, slot: 0, proto: 6, family: 4, scope: 0 } as any));
    const idKey = Buffer.alloc(4);
    idKey.writeUInt32LE(epB.id);
    del(pin('mb_call_policy'), idKey);
    // ...and one entry changed: a's ipcache identity is now "world".
    const worldVal = gen.ipcacheValueCodec.encode({ sec_id: 2, tunnel_family: 0, flags: 0, tunnel_addr: Buffer.alloc(16) } as any);
    const bKey = gen.ipcacheKeyCodec.encode({ prefixlen: 64, family: 4, addr: addr16(b.ip) } as any);
    assert.equal(tryRun('bpftool', ['map', 'update', 'pinned', pin('mb_ipcache'), 'key', 'hex', ...hex(bKey), 'value', 'hex', ...hex(worldVal)]).code, 0);

    let repaired = 0;
    for (let i = 0; i < 100; i++) {
      await sleep(100);
      const st = node.cliJson(['status']);
      repaired = st.maps.reduce((s: number, m: any) => s + m.driftRepaired, 0) - repairedBefore;
      if (repaired >= 5 + pol.length) break;
    }
    assert.ok(repaired >= 5 + pol.length, `drift repaired and counted (${repaired})`);
    assert.equal(node.tcp(a.ns, b.ip, 80), true, 'a reaches b again: policy, ipcache, endpoint and tail call restored');
    assert.equal(node.tcp(a.ns, vip, 8080), true, 'the service works again');
    const metrics = node.cli(['metrics']).stdout;
    assert.match(metrics, /membrane_map_drift_repaired_total\{map="mb_ipcache"\} [1-9]/);
    node.delete([
      { kind: 'CiliumNetworkPolicy', metadata: { name: 'b-from-a', namespace: 'default' } },
      { kind: 'Service', metadata: { name: 'b', namespace: 'default' } },
    ]);
  });

  it("a policy naming the router's or a pod's /32 never displaces their ipcache entries; deleting it restores nothing it did not own", () => {
    const router = node.cliJson(['status']).router as string;
    // b only accepts a: the host may still reach it (host identity), which depends on the router's ipcache entry.
    node.apply([
      {
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'b-from-a', namespace: 'default' },
        spec: { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'a' } }] }] },
      },
    ]);
    assert.equal(node.tcp(node.nodeNs, b.ip, 80), true, 'host -> b before');
    // CIDR identities of CiliumNetworkPolicy toCIDR are ipcache claims (NetworkPolicy ipBlocks live in mb_ipblock).
    const cidrs = {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'to-router', namespace: 'other' },
      spec: { endpointSelector: {}, egress: [{ toCIDR: [`${router}/32`, `${a.ip}/32`] }] },
    };
    node.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'other' } }, cidrs]);
    const ipcache = () => new Map<string, number>(node.cliJson(['bpf', 'ipcache', 'list']).map((e: any) => [e.prefix, e.identity]));
    assert.equal(ipcache().get(`${router}/32`), 1, 'router stays host');
    const epA = node.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'a');
    assert.equal(ipcache().get(`${a.ip}/32`), epA.identity, 'a stays itself');
    assert.equal(node.tcp(node.nodeNs, b.ip, 80), true, 'host -> b while the policy exists');
    assert.equal(node.tcp(a.ns, b.ip, 80), true, 'a -> b while the policy exists');
    node.delete([cidrs]);
    assert.equal(ipcache().get(`${router}/32`), 1, 'router still host after the delete');
    assert.equal(ipcache().get(`${a.ip}/32`), epA.identity);
    assert.equal(node.tcp(node.nodeNs, b.ip, 80), true, 'host -> b after');
    node.delete([{ kind: 'CiliumNetworkPolicy', metadata: { name: 'b-from-a', namespace: 'default' } }]);
  });
});
