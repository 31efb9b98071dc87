/**
 * Real client: containerd 1.6's CRI plugin drives the Membrane plugin, and the
 * test plays kubelet over the CRI runtime.v1 gRPC API.
 *
 * Where things run: a TestNode network namespace is the node. The agent runs
 * there (nsenter, as in every e2e test) and so does containerd (nsenter --net):
 * containerd creates each pod netns under /var/run/netns (mount namespace is
 * shared) and calls the plugin from its own netns, i.e. the node's, which is
 * exactly where the agent puts the host side of the pod veth. The node's
 * routes and devices never touch the host netns, so the default pod CIDR is
 * safe and cleanup is deleting one netns.
 *
 * The sandbox image is a static C pause program (test/fixtures/clients/pause.c)
 * imported into a throwaway podman store, saved as an OCI archive and imported
 * with `ctr -n k8s.io images import`.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TestNode, hasCmd } from '../helpers/node';
import { REPO, tryRun } from '../helpers/sys';
import { cniArgsMap, formatTrace, installTracedPlugin, readTrace } from './lib/cni-trace';
import { Containerd } from './lib/containerd';
import { CriClient } from './lib/cri';
import { removeCgroup, removeTree } from './lib/mounts';
import { PodmanEnv } from './lib/podman';

const LOOPBACK = '/usr/lib/cni/loopback';
const missing = ['containerd', 'ctr', 'runc', 'gcc', 'podman'].filter((c) => !hasCmd(c));
if (!fs.existsSync(LOOPBACK)) missing.push(`${LOOPBACK} (containernetworking-plugins)`);
const skip = missing.length ? `not available on this machine: ${missing.join(', ')} (bash scripts/setup.sh --test installs them)` : false;

/** Build the pause image and return the path of its OCI archive. */
function buildPauseArchive(dir: string, ref: string): string {
  const rootfs = path.join(dir, 'pause-rootfs');
  fs.mkdirSync(rootfs, { recursive: true });
  const cc = tryRun('gcc', ['-static', '-O2', '-s', '-o', path.join(rootfs, 'pause'), path.join(REPO, 'test/fixtures/clients/pause.c')], { timeoutMs: 60_000 });
  if (cc.code !== 0) throw new Error(`gcc -static pause.c: ${cc.stderr}`);
  const podman = new PodmanEnv(path.join(dir, 'podman'));
  const archive = path.join(dir, 'pause.oci.tar');
  try {
    podman.importRootfs(rootfs, ref, ['ENTRYPOINT ["/pause"]']);
    podman.must(['save', '--format', 'oci-archive', '-o', archive, ref]);
  } finally {
    podman.cleanup();
  }
  return archive;
}

describe('containerd CRI with the Membrane plugin', { skip, timeout: 90_000 }, () => {
  let node: TestNode;
  let tmp: string;
  let trace: string;
  let containerd: Containerd | undefined;
  let cri: CriClient | undefined;
  let pauseRef: string;
  const pod = { name: 'web-0', namespace: '', uid: crypto.randomUUID() };
  let sandboxId = '';
  let podIp = '';
  let podNetns = '';

  before(async () => {
    node = new TestNode('cd');
    pod.namespace = `${node.prefix}-ns`;
    pauseRef = `localhost/mbt-pause:${node.prefix}`;
    tmp = fs.mkdtempSync(`/tmp/${node.prefix}-cri-`);
    trace = path.join(tmp, 'cni-calls.tsv');
    const binDir = path.join(tmp, 'cni-bin');
    const confDir = path.join(tmp, 'cni-conf');
    installTracedPlugin(binDir, trace);
    fs.symlinkSync(LOOPBACK, path.join(binDir, 'loopback')); // containerd always sets up lo with this plugin
    fs.mkdirSync(confDir, { recursive: true });
    fs.writeFileSync(
      path.join(confDir, '10-membrane.conflist'),
      JSON.stringify({ cniVersion: '1.0.0', name: node.prefix, plugins: [{ type: 'membrane-cni', socket: node.socket }] }, null, 2),
    );
    const archive = buildPauseArchive(tmp, pauseRef);
    await node.start();
    containerd = new Containerd(path.join(tmp, 'containerd'), {
      cniBinDir: binDir,
      cniConfDir: confDir,
      sandboxImage: pauseRef,
      netnsPath: `/run/netns/${node.nodeNs}`,
      logFile: path.join(REPO, 'test-artifacts', `${node.prefix}-containerd.log`),
    });
    await containerd.start();
    const imp = containerd.ctr(['-n', 'k8s.io', 'images', 'import', archive]);
    if (imp.code !== 0) throw new Error(`ctr images import: ${imp.stderr}`);
    const ls = containerd.ctr(['-n', 'k8s.io', 'images', 'ls', '-q']);
    if (!ls.stdout.split('\n').includes(pauseRef)) throw new Error(`pause image ${pauseRef} not in containerd after import: ${ls.stdout}`);
    cri = new CriClient(containerd.address);
  }, { timeout: 60_000 });

  after(async () => {
    try {
      if (cri) {
        // Whatever a failed test left: stop (DEL) and remove every sandbox of this containerd.
        const items = await cri.listPodSandbox().catch(() => []);
        for (const s of items) {
          await cri.stopPodSandbox(s.id).catch(() => {});
          await cri.removePodSandbox(s.id).catch(() => {});
        }
        cri.close();
      }
    } finally {
      if (containerd) {
        await containerd.stop();
        containerd.cleanup();
      }
      if (node) removeCgroup(`/${node.prefix}`);
      if (node) await node.cleanup();
      if (tmp) removeTree(tmp);
    }
  }, { timeout: 60_000 });

  it('Version answers over the CRI runtime.v1 API', async () => {
    const v = await cri!.version();
    assert.equal(v.runtimeName, 'containerd');
    assert.equal(v.runtimeApiVersion, 'v1');
  });

  it('RunPodSandbox: the sandbox is ready and its status shows the address Membrane assigned', async () => {
    const t0 = Date.now();
    sandboxId = await cri!.runPodSandbox(pod, { logDirectory: path.join(tmp, 'pod-logs'), cgroupParent: `/${node.prefix}`, labels: { app: 'web' } });
    const runMs = Date.now() - t0;
    assert.match(sandboxId, /^[0-9a-f]{64}$/);
    const st = (await cri!.podSandboxStatus(sandboxId, true)).status;
    assert.equal(st.state, 'SANDBOX_READY');
    assert.deepEqual({ name: st.metadata.name, namespace: st.metadata.namespace, uid: st.metadata.uid }, pod);
    podIp = st.network?.ip ?? '';
    assert.match(podIp, /^10\.200\.0\.\d+$/, `pod IP in ${node.podCidr}: ${JSON.stringify(st.network)}`);
    assert.notEqual(podIp, '10.200.0.1');
    assert.ok(runMs < 30_000, `RunPodSandbox took ${runMs} ms`);
  });

  it('the endpoint is listed with the namespace, name and UID from the sandbox metadata', () => {
    const eps: any[] = node.cliJson(['endpoint', 'list']);
    assert.equal(eps.length, 1, JSON.stringify(eps));
    const ep = eps[0];
    assert.equal(ep.containerId, sandboxId);
    assert.equal(ep.ipv4, podIp);
    assert.equal(ep.namespace, pod.namespace);
    assert.equal(ep.podName, pod.name);
    if ('podUid' in ep) assert.equal(ep.podUid, pod.uid);
    assert.equal(ep.ifname, 'eth0');
    assert.equal(ep.state, 'ready');
    assert.match(ep.netns, /^\/var\/run\/netns\/cni-[0-9a-f-]+$/);
    podNetns = ep.netns;

    const adds = readTrace(trace).filter((t) => t.command === 'ADD');
    assert.equal(adds.length, 1, formatTrace(readTrace(trace)));
    const args = cniArgsMap(adds[0].args);
    assert.equal(args.K8S_POD_NAMESPACE, pod.namespace);
    assert.equal(args.K8S_POD_NAME, pod.name);
    assert.equal(args.K8S_POD_UID, pod.uid);
    assert.equal(args.K8S_POD_INFRA_CONTAINER_ID, sandboxId);
    assert.equal(adds[0].netns, podNetns);
  });

  it('the pod answers a ping from the node (the agent\'s netns) and reaches the router', () => {
    const r = node.nodeExec('ping', ['-c', '2', '-i', '0.2', '-W', '2', podIp]);
    assert.equal(r.code, 0, `node -> ${podIp}: ${r.stdout} ${r.stderr}`);
    const back = tryRun('nsenter', [`--net=${podNetns}`, '--', 'ping', '-c', '1', '-W', '2', '10.200.0.1'], { timeoutMs: 10_000 });
    assert.equal(back.code, 0, `pod -> router: ${back.stdout} ${back.stderr}`);
  });

  it('StopPodSandbox removes the endpoint (DEL); RemovePodSandbox removes the sandbox', async (t) => {
    const veth = (node.cliJson(['endpoint', 'list']) as any[])[0].hostIfname;
    await cri!.stopPodSandbox(sandboxId);
    assert.deepEqual(node.cliJson(['endpoint', 'list']), [], 'endpoint gone after StopPodSandbox');
    assert.notEqual(node.nodeExec('ip', ['link', 'show', veth]).code, 0, `host veth ${veth} removed`);
    assert.equal((await cri!.podSandboxStatus(sandboxId)).status.state, 'SANDBOX_NOTREADY');
    await cri!.removePodSandbox(sandboxId);
    assert.deepEqual(node.cliJson(['endpoint', 'list']), []);
    const items = await cri!.listPodSandbox();
    assert.ok(!items.some((s) => s.id === sandboxId), 'sandbox no longer listed');
    assert.equal(fs.existsSync(podNetns), false, `${podNetns} removed`);
    const calls = readTrace(trace);
    const log = formatTrace(calls);
    const mine = calls.filter((c) => c.containerId === sandboxId);
    assert.equal(mine[0]?.command, 'ADD', log);
    const dels = mine.filter((c) => c.command === 'DEL');
    assert.ok(dels.length >= 1, `DEL after ADD:\n${log}`);
    for (const d of dels) assert.equal(d.exitCode, 0, `DEL succeeded:\n${log}`);
    t.diagnostic("CNI calls made by containerd:");
    for (const l of log.split("\n")) t.diagnostic(l);
    assert.equal(containerd!.shimPids().length, 0, 'no shim left for this containerd');
  });
});
