/**
 * Real client: podman 4.3 with its CNI backend drives the Membrane plugin.
 *
 * podman creates each container's netns under /run/netns in the host and calls
 * the plugin in the host network namespace, so the agent runs in the host netns
 * too (HostNetnsNode: unique state dir, socket, bpffs root, pod CIDR and host
 * device pair). podman gets a private root/runroot/tmp_dir and a hand-written
 * .conflist named after this run's network; the image is busybox-static
 * imported from a rootfs (no registry).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hasCmd } from '../helpers/node';
import { tryRun } from '../helpers/sys';
import { cniArgsMap, formatTrace, installTracedPlugin, readTrace } from './lib/cni-trace';
import { HostNetnsNode } from './lib/host-node';
import { mountsUnder, removeCgroup, removeTree } from './lib/mounts';
import { PodmanEnv, busyboxRootfs } from './lib/podman';

const BUSYBOX = '/bin/busybox';
const missing = ['podman', 'runc'].filter((c) => !hasCmd(c));
if (!fs.existsSync(BUSYBOX)) missing.push(`${BUSYBOX} (busybox-static)`);
const skip = missing.length ? `not available on this machine: ${missing.join(', ')} (bash scripts/setup.sh --test installs them)` : false;

describe('podman (CNI backend) with the Membrane plugin', { skip, timeout: 90_000 }, () => {
  let node: HostNetnsNode;
  let podman: PodmanEnv;
  let tmp: string;
  let trace: string;
  let network: string;
  const image = 'localhost/mbt-busybox:latest';
  const names = { c1: '', c2: '' };
  const ctr: Record<'c1' | 'c2', { id: string; ip: string; netns: string }> = {} as any;

  before(async () => {
    node = new HostNetnsNode('pm');
    network = node.prefix;
    names.c1 = `${node.prefix}-c1`;
    names.c2 = `${node.prefix}-c2`;
    tmp = fs.mkdtempSync(`/tmp/${node.prefix}-podman-`);
    trace = path.join(tmp, 'cni-calls.tsv');
    const binDir = path.join(tmp, 'cni-bin');
    const confDir = path.join(tmp, 'cni-conf');
    installTracedPlugin(binDir, trace);
    fs.mkdirSync(confDir, { recursive: true });
    podman = new PodmanEnv(path.join(tmp, 'podman'), { cniPluginDir: binDir, networkConfigDir: confDir });
    await node.start();
    fs.writeFileSync(
      path.join(confDir, `${network}.conflist`),
      JSON.stringify({ cniVersion: '1.0.0', name: network, plugins: [{ type: 'membrane-cni', socket: node.socket }] }, null, 2),
    );
    podman.importRootfs(busyboxRootfs(path.join(tmp, 'rootfs'), BUSYBOX), image, ['CMD ["/bin/sh"]']);
  }, { timeout: 60_000 });

  after(async () => {
    try {
      if (podman) podman.cleanup();
    } finally {
      if (node) await node.cleanup();
      if (node) removeCgroup(`/${node.prefix}`);
      if (tmp) removeTree(tmp);
    }
  }, { timeout: 60_000 });

  it('podman sees the hand-written network by name', () => {
    const nets = podman.must(['network', 'ls', '--format', '{{.Name}} {{.Driver}}']);
    assert.match(nets, new RegExp(`^${network} membrane-cni$`, 'm'));
  });

  it('two containers on the Membrane network get addresses from the agent', () => {
    for (const c of ['c1', 'c2'] as const) {
      const id = podman.must(['run', '-d', '--name', names[c], '--network', network, '--cgroup-parent', `/${node.prefix}`, image, '/bin/busybox', 'sleep', '600']).trim();
      const nets = JSON.parse(podman.must(['inspect', id, '--format', '{{json .NetworkSettings.Networks}}']));
      const ns = podman.must(['inspect', id, '--format', '{{.NetworkSettings.SandboxKey}}']).trim();
      const ip = nets[network]?.IPAddress;
      assert.ok(ip, `container ${c} has an address on ${network}: ${JSON.stringify(nets)}`);
      assert.equal(nets[network].Gateway, node.podCidr.replace(/0\/24$/, '1'));
      ctr[c] = { id, ip, netns: ns };
    }
    assert.notEqual(ctr.c1.ip, ctr.c2.ip);
    for (const c of [ctr.c1, ctr.c2]) {
      const [a, b, cc] = node.podCidr.split('.');
      assert.ok(c.ip.startsWith(`${a}.${b}.${cc}.`), `${c.ip} in ${node.podCidr}`);
      assert.match(c.netns, /^\/run\/netns\/netns-/);
    }
  });

  it('c1 pings c2 through the datapath (podman exec)', () => {
    const r = podman.run(['exec', names.c1, '/bin/busybox', 'ping', '-c', '2', '-W', '2', ctr.c2.ip], 20_000);
    assert.equal(r.code, 0, `ping ${ctr.c2.ip} from c1: ${r.stdout} ${r.stderr}`);
    assert.match(r.stdout, /2 packets received/);
    const h = node.nodeExec('ping', ['-c', '1', '-W', '2', ctr.c1.ip]);
    assert.equal(h.code, 0, `host -> c1 ${ctr.c1.ip}: ${h.stdout}`);
  });

  it('c1 reaches c2 through a Service ClusterIP, load-balanced in eBPF', () => {
    // busybox wget crashes in this minimal rootfs (static resolver); nc speaks HTTP well enough.
    const httpGet = (ip: string, port: number) =>
      podman.run(['exec', names.c1, '/bin/busybox', 'sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 3 ${ip} ${port}`], 20_000);
    podman.must(['exec', names.c2, '/bin/busybox', 'sh', '-c', 'mkdir -p /www && echo membrane-service > /www/index.html']);
    podman.must(['exec', '-d', names.c2, '/bin/busybox', 'httpd', '-f', '-p', '8080', '-h', '/www']);
    node.apply([
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'default' }, spec: { ports: [{ name: 'http', port: 80 }] } },
      {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: { name: 'web-1', namespace: 'default', labels: { 'kubernetes.io/service-name': 'web' } },
        addressType: 'IPv4',
        ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
        endpoints: [{ addresses: [ctr.c2.ip], conditions: { ready: true } }],
      },
    ]);
    let direct = { stdout: '', stderr: '' } as { stdout: string; stderr: string };
    for (let i = 0; i < 20 && !direct.stdout.includes('membrane-service'); i++) {
      if (i) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 250); // the server starts in the background
      direct = httpGet(ctr.c2.ip, 8080);
    }
    if (!direct.stdout.includes('membrane-service')) {
      const diag = [
        podman.run(['exec', names.c2, '/bin/busybox', 'netstat', '-ltn']),
        podman.run(['exec', names.c2, '/bin/busybox', 'ls', '-la', '/www']),
        httpGet(ctr.c2.ip, 8080),
      ];
      assert.fail(`c1 -> c2:8080 directly failed: ${JSON.stringify(diag)}`);
    }
    const vip = (node.cliJson(['service', 'list']) as any[]).find((s) => s.service === 'default/web').frontend.split(':')[0];
    let r = { stdout: '', stderr: '' } as { stdout: string; stderr: string };
    for (let i = 0; i < 5 && !r.stdout.includes('membrane-service'); i++) {
      r = httpGet(vip, 80);
    }
    assert.match(r.stdout, /membrane-service/, `c1 -> ${vip}:80 -> c2:8080: ${r.stderr} ${node.cli(['bpf', 'lb', 'list']).stdout} ${node.cli(['observe', '--last', '10']).stdout}`);
  });

  it('the endpoints are listed with the pod name podman passes in CNI_ARGS', () => {
    const eps: any[] = node.cliJson(['endpoint', 'list']);
    assert.equal(eps.length, 2);
    for (const c of ['c1', 'c2'] as const) {
      const ep = eps.find((e) => e.containerId === ctr[c].id);
      assert.ok(ep, `endpoint for ${c} (${ctr[c].id})`);
      assert.equal(ep.ipv4, ctr[c].ip);
      assert.equal(ep.podName, names[c]);
      assert.equal(ep.netns, ctr[c].netns);
      assert.equal(ep.ifname, 'eth0');
      assert.equal(ep.state, 'ready');
      assert.equal(tryRun('ip', ['link', 'show', ep.hostIfname]).code, 0, `host veth ${ep.hostIfname} exists`);
    }
    const calls = readTrace(trace).filter((t) => t.command === 'ADD');
    assert.equal(calls.length, 2, formatTrace(readTrace(trace)));
    for (const t of calls) {
      const args = cniArgsMap(t.args);
      assert.equal(args.IgnoreUnknown, '1');
      assert.ok([names.c1, names.c2].includes(args.K8S_POD_NAME), t.args);
      assert.equal(t.exitCode, 0);
    }
  });

  it('podman rm -f calls DEL: endpoints, veths and netns are gone', (t) => {
    const veths = (node.cliJson(['endpoint', 'list']) as any[]).map((e) => e.hostIfname);
    podman.must(['rm', '-f', '-t', '0', names.c1, names.c2], 60_000);
    assert.deepEqual(node.cliJson(['endpoint', 'list']), []);
    for (const v of veths) assert.notEqual(tryRun('ip', ['link', 'show', v]).code, 0, `veth ${v} removed`);
    for (const c of [ctr.c1, ctr.c2]) assert.equal(fs.existsSync(c.netns), false, `${c.netns} removed`);
    assert.deepEqual(mountsUnder(podman.root).filter((m) => /overlay\/[0-9a-f]{64}\/merged$/.test(m)), [], 'container rootfs unmounted');

    const calls = readTrace(trace);
    const log = formatTrace(calls);
    // Order per container: (VERSION) ADD ... DEL; every DEL carries the ADD result as prevResult.
    for (const c of [ctr.c1, ctr.c2]) {
      const mine = calls.filter((r) => r.containerId === c.id);
      const add = mine.findIndex((r) => r.command === 'ADD');
      const del = mine.findIndex((r) => r.command === 'DEL');
      assert.ok(add >= 0 && del > add, `ADD then DEL for ${c.id}:\n${log}`);
      assert.equal(mine[del].prevResult, true, `DEL has prevResult:\n${log}`);
      assert.equal(mine[del].exitCode, 0);
      assert.equal(mine[del].netns, c.netns);
    }
    const firstAdd = calls.findIndex((r) => r.command === 'ADD');
    const versions = calls.filter((r) => r.command === 'VERSION');
    assert.ok(versions.length > 0 && calls.findIndex((r) => r.command === 'VERSION') < firstAdd, `VERSION before the first ADD:\n${log}`);
    t.diagnostic("CNI calls made by podman:");
    for (const l of log.split("\n")) t.diagnostic(l);
  });
});
