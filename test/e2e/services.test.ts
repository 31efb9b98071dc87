/**
 * Services load-balanced in eBPF: ClusterIP spread over backends (TCP and UDP),
 * backends leaving (new flows avoid them, established ones finish), Maglev
 * remapping only about 1/N of flows, session affinity, NodePort from the world,
 * hairpin, an empty service rejecting at once, and policy on the backend.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { TestNode } from '../helpers/node';
import * as fs from 'node:fs';
import { NETKIT, inNs, sleep, tryRun } from '../helpers/sys';

const NS = 'svc';
const pod = (name: string, labels: Record<string, string>) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: NS, labels },
  spec: { containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }, { name: 'dns', containerPort: 5353, protocol: 'UDP' }] }] },
});
const service = (name: string, spec: any, annotations?: Record<string, string>) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: NS, annotations }, spec });
const slice = (name: string, svc: string, endpoints: { ip: string; ready?: boolean; terminating?: boolean }[], protocol = 'TCP') => ({
  apiVersion: 'discovery.k8s.io/v1',
  kind: 'EndpointSlice',
  metadata: { name, namespace: NS, labels: { 'kubernetes.io/service-name': svc } },
  addressType: 'IPv4',
  ports: [{ name: 'http', port: 8080, protocol }],
  endpoints: endpoints.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready ?? true, serving: true, terminating: e.terminating ?? false } })),
});

describe('services (eBPF load balancing)', () => {
  const node = new TestNode('sv');
  const ip: Record<string, string> = {};
  const nsOf: Record<string, string> = {};
  const podCgroup = `/sys/fs/cgroup/unified/${node.prefix}-pods`;

  before(async () => {
    await node.start({ world: true, agentArgs: ['--devices', 'wld0', '--socket-lb-cgroup', podCgroup] });
    const pods = [pod('echo-a', { app: 'echo' }), pod('echo-b', { app: 'echo' }), pod('echo-c', { app: 'echo' }), pod('client', { app: 'client' })];
    node.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } }, ...pods]);
    for (const p of pods) {
      const name = p.metadata.name;
      const r = node.addPod(name, { args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${NS};K8S_POD_NAME=${name}` });
      ip[name] = r.ip;
      nsOf[name] = r.ns;
    }
    for (const n of ['echo-a', 'echo-b', 'echo-c']) await identServer(n);
    node.apply([service('echo', { selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 'http' }, { name: 'dns', port: 53, targetPort: 5353, protocol: 'UDP' }] })]);
  });
  after(async () => {
    await node.cleanup();
    try {
      fs.rmdirSync(podCgroup);
    } catch {
      /* gone or busy: nothing of ours runs there any more */
    }
  });

  const servers: ReturnType<typeof spawn>[] = [];
  after(() => servers.forEach((s) => s.kill('SIGKILL')));
  function identServer(name: string): Promise<void> {
    const p = spawn('ip', ['netns', 'exec', nsOf[name], process.execPath, NETKIT, 'ident', name, 'tcp:8080,udp:5353'], { stdio: ['ignore', 'pipe', 'inherit'] });
    servers.push(p);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('ident server did not start')), 10_000);
      p.stdout!.once('data', () => (clearTimeout(t), resolve()));
    });
  }
  const who = (from: string, proto: 'tcp' | 'udp', host: string, port: number, count: number, timeoutMs = 1500): string[] => {
    const r = inNs(nsOf[from] ?? from, process.execPath, [NETKIT, 'who', proto, host, String(port), String(count), String(timeoutMs)], 120_000);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const clusterIP = (name: string): string => {
    const svcs: any[] = node.cliJson(['service', 'list']);
    const f = svcs.find((s) => s.service === `${NS}/${name}` && s.type === 'ClusterIP');
    assert.ok(f, `frontend of ${name}`);
    return f.frontend.split(':')[0];
  };
  const tally = (names: string[]) => names.reduce((m, n) => m.set(n, (m.get(n) ?? 0) + 1), new Map<string, number>());

  it('a ClusterIP spreads TCP and UDP over its three backends', () => {
    const vip = clusterIP('echo');
    assert.match(vip, /^10\.96\./);
    for (const [proto, port] of [['tcp', 80], ['udp', 53]] as const) {
      const got = who('client', proto, vip, port, 90);
      const t = tally(got);
      assert.equal(t.get('') ?? 0, 0, `${proto}: every flow answered (${JSON.stringify([...t])})`);
      for (const n of ['echo-a', 'echo-b', 'echo-c']) assert.ok((t.get(n) ?? 0) >= 12, `${proto}: ${n} got ${t.get(n) ?? 0} of 90`);
    }
    const lb = node.cli(['bpf', 'lb', 'list']);
    assert.match(lb.stdout, new RegExp(`${vip.replace(/\./g, '\\.')}:80/TCP`));
    const svc = (node.cliJson(['service', 'list']) as any[]).find((s) => s.frontend === `${vip}:80/TCP`);
    assert.equal(svc.backends.length, 3);
    const ct: any[] = node.cliJson(['bpf', 'ct', 'list']);
    assert.ok(ct.some((e) => e.service && e.backendId > 0), 'service conntrack entries exist');
    const maps = node.cliJson(['bpf', 'lb', 'list']);
    const ids = maps.backends.map((b: any) => b.id);
    assert.equal(new Set(ids).size, ids.length, `the kernel's backends decode as distinct entries: ${JSON.stringify(maps.backends)}`);
    for (const n of ['echo-a', 'echo-b', 'echo-c']) assert.ok(maps.backends.some((b: any) => b.backend.startsWith(`${ip[n]}:8080/`)), `backend ${n} in the kernel map`);
  });

  it('a terminating backend gets no new flows while its established flow continues', async () => {
    node.apply([service('single', { ports: [{ name: 'http', port: 80 }] }), slice('single-1', 'single', [{ ip: ip['echo-a'] }])]);
    const vip = clusterIP('single');
    const stream = spawn('ip', ['netns', 'exec', nsOf.client, process.execPath, NETKIT, 'tcp-stream', vip, '80', '3000'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    stream.stdout!.on('data', (d) => lines.push(...d.toString().trim().split('\n')));
    const done = new Promise<number>((r) => stream.once('exit', (c) => r(c ?? -1)));
    await sleep(600);
    node.apply([slice('single-1', 'single', [{ ip: ip['echo-a'], ready: false, terminating: true }, { ip: ip['echo-b'] }])]);
    const fresh = tally(who('client', 'tcp', vip, 80, 20));
    assert.equal(fresh.get('echo-b'), 20, `new flows go to the ready backend only: ${JSON.stringify([...fresh])}`);
    const mid = Number((lines.at(-1) ?? '0 0').split(' ')[1]);
    assert.equal(await done, 0, 'the established stream finished cleanly');
    const [sent, echoed] = (lines.at(-1) ?? '0 0').split(' ').map(Number);
    assert.ok(echoed > mid && echoed >= sent - 5, `the stream kept flowing to the terminating backend (${mid} -> ${echoed} of ${sent})`);
    node.delete([service('single', {}), slice('single-1', 'single', [])] as any);
  });

  it('Maglev: when one of ten backends leaves, about 1/10 of 1,000 flows move', () => {
    const ten = Array.from({ length: 10 }, (_, i) => ({ ip: `10.200.0.${200 + i}` }));
    node.apply([service('maglev', { ports: [{ name: 'http', port: 80, protocol: 'UDP' }] }, { 'membrane.io/lb-algorithm': 'maglev' }), slice('maglev-1', 'maglev', ten, 'UDP')]);
    const vip = clusterIP('maglev');
    const picks = () => {
      node.cli(['bpf', 'ct', 'flush', '--services']);
      // 1,000 flows with fixed source ports: the backends do not exist, only the choice matters.
      const sent = inNs(nsOf.client, process.execPath, ['-e', `
        const d = require('dgram'); let n = 0;
        (function next(i) { if (i >= 1000) return setTimeout(() => process.exit(0), 200);
          const s = d.createSocket('udp4'); s.bind(20000 + i, () => s.send('x', 80, '${vip}', () => { s.close(); next(i + 1); })); })(0);`], 60_000);
      assert.equal(sent.code, 0, `sender: ${sent.stderr}`);
      const ct: any[] = node.cliJson(['bpf', 'ct', 'list']);
      const be = new Map<number, number>();
      for (const e of ct) if (e.service && e.destination.startsWith(`${vip}:`)) be.set(Number(e.source.split(':')[1]), e.backendId);
      return be;
    };
    const before = picks();
    assert.ok(before.size >= 990, `1,000 flows tracked (${before.size})`);
    node.apply([slice('maglev-1', 'maglev', ten.slice(0, 9), 'UDP')]);
    const after = picks();
    let moved = 0;
    for (const [sport, b] of before) if (after.get(sport) !== undefined && after.get(sport) !== b) moved++;
    assert.ok(moved <= 100 + 50, `${moved} of 1,000 flows moved`);
    assert.ok(moved >= 50, `the leaving backend's flows did move (${moved})`);
    node.delete([service('maglev', {}), slice('maglev-1', 'maglev', [])] as any);
  });

  it('session affinity keeps a client on one backend', () => {
    node.apply([service('sticky', { selector: { app: 'echo' }, sessionAffinity: 'ClientIP', ports: [{ name: 'http', port: 80, targetPort: 8080 }] })]);
    const got = tally(who('client', 'tcp', clusterIP('sticky'), 80, 20));
    assert.equal(got.size, 1, `one backend for all 20 connections: ${JSON.stringify([...got])}`);
    node.delete([service('sticky', {})] as any);
  });

  it('NodePort: reachable from the world namespace through the node address', () => {
    node.apply([service('np', { type: 'NodePort', selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30080 }] })]);
    const got = who(node.worldNs!, 'tcp', '192.0.2.1', 30080, 9);
    assert.ok(got.every((n) => n.startsWith('echo-')), `answers from backends: ${JSON.stringify(got)}`);
    node.delete([service('np', {})] as any);
  });

  it('hairpin: a pod reaches itself through its own service', () => {
    node.apply([service('self', { ports: [{ name: 'http', port: 80 }] }), slice('self-1', 'self', [{ ip: ip['echo-a'] }])]);
    const got = who('echo-a', 'tcp', clusterIP('self'), 80, 3);
    assert.deepEqual(got, ['echo-a', 'echo-a', 'echo-a']);
    node.delete([service('self', {}), slice('self-1', 'self', [])] as any);
  });

  it('a service without backends rejects at once (NO_SERVICE 158), not a timeout', () => {
    node.apply([service('empty', { selector: { app: 'nobody' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] })]);
    const before = node.metric(158);
    const t0 = Date.now();
    const got = who('client', 'tcp', clusterIP('empty'), 80, 1, 3000);
    assert.ok(Date.now() - t0 < 1500, 'answered well before the timeout');
    assert.match(got[0], /^!(ECONNREFUSED|EHOSTUNREACH)/);
    assert.ok(node.metric(158) > before, 'NO_SERVICE counted');
    node.delete([service('empty', {})] as any);
  });

  it('socket-level load balancing for processes in the dedicated cgroup: translated at connect(), no packet-level service entries', () => {
    const vip = clusterIP('echo');
    const serviceEntries = () => (node.cliJson(['bpf', 'ct', 'list']) as any[]).filter((e) => e.service && e.source.startsWith(`${ip.client}:`)).length;
    node.cli(['bpf', 'ct', 'flush', '--services']);
    const before = serviceEntries();
    const r = tryRun('sh', ['-c', `echo $$ > ${podCgroup}/cgroup.procs && exec ip netns exec ${nsOf.client} ${process.execPath} ${NETKIT} who tcp ${vip} 80 9`], { timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.stderr);
    const got: string[] = JSON.parse(r.stdout);
    assert.ok(got.every((n) => n.startsWith('echo-')), `answered by backends: ${r.stdout}`);
    assert.equal(serviceEntries(), before, 'no packet-level service translation happened');
    const status = node.cliJson(['status']);
    assert.equal(status.services.socketLbCgroup, podCgroup);
  });

  it('policy applies to the backend after translation', () => {
    const pol = {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'client-to-a', namespace: NS },
      spec: { endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ toEndpoints: [{ matchLabels: { 'io.kubernetes.pod.name': 'never' } }] }, { toCIDR: ['192.0.2.0/24'] }] },
    };
    node.apply([pol]);
    try {
      const before = node.metric(133, 'egress');
      const got = who('client', 'tcp', clusterIP('echo'), 80, 3, 800);
      assert.deepEqual(got, ['', '', ''], 'the backends are not allowed: dropped after translation');
      assert.ok(node.metric(133, 'egress') >= before + 3, 'each of the three SYNs was dropped by egress policy (133) after translation');
      const obs = node.cli(['observe', '--from-pod', `${NS}/client`, '--type', 'drop', '--drop-reason', '133', '--last', '20', '-o', 'json']);
      const lines = obs.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
      assert.ok(lines.some((f: any) => f.destination?.pod_name?.startsWith('echo-') && f.l4?.TCP?.destination_port === 8080), 'the drop names the backend pod and port, not the ClusterIP');
    } finally {
      node.delete([pol]);
    }
    assert.ok(who('client', 'tcp', clusterIP('echo'), 80, 3).every((n) => n.startsWith('echo-')));
  });
});
