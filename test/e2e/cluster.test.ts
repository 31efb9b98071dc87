/**
 * A cluster of nodes on etcd (the lab: node namespaces on an underlay bridge,
 * one agent each, etcd on the underlay): registration, the shared resource
 * store, cluster-wide identities, refusals, and a node that leaves and comes
 * back.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Lab } from '../helpers/lab';

describe('cluster: nodes, resources and identities on etcd', { timeout: 300_000 }, () => {
  const lab = new Lab({ nodes: 2, leaseTtl: 4 });

  before(async () => {
    await lab.up();
  });
  after(async () => {
    await lab.cleanup();
  });

  it('every node registers under its lease and sees the others alive', async () => {
    for (const n of lab.nodes) {
      await lab.until(`node list on ${n.nodeName}`, () => n.cliJson(['node', 'list']).filter((x: any) => x.alive).length === 2);
      const nodes: any[] = n.cliJson(['node', 'list']);
      assert.deepEqual(
        nodes.map((x) => [x.name, x.podCIDRs.join(','), x.addresses.find((a: any) => a.type === 'InternalIP').ip, x.self]),
        [
          ['n1', '10.210.1.0/24', '198.18.0.1', n.nodeName === 'n1'],
          ['n2', '10.210.2.0/24', '198.18.0.2', n.nodeName === 'n2'],
        ],
      );
      const st = n.cliJson(['status']);
      assert.equal(st.cluster.mode, 'kvstore');
      assert.equal(st.cluster.connected, true);
    }
  });

  it('resources applied on one node are the cluster\'s: read and deleted from any node', async () => {
    const [n1, n2] = lab.nodes;
    const ns = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shared', labels: { team: 'a' } } };
    n2.apply([ns], { wait: false });
    // The answer came after n2's own cache saw the write.
    assert.equal(n2.cliJson(['get', 'ns', 'shared']).metadata.name, 'shared');
    await lab.until('n1 to see it', () => n1.cli(['get', 'ns', 'shared']).code === 0);
    assert.equal(n1.cliJson(['get', 'ns', 'shared']).metadata.labels.team, 'a');
    n1.delete([{ kind: 'Namespace', metadata: { name: 'shared' } }]);
    await lab.until('n2 to see the deletion', () => n2.cli(['get', 'ns', 'shared']).code !== 0);
  });

  it('a Service gets one ClusterIP for the whole cluster, kept across re-applies', async () => {
    const [n1, n2] = lab.nodes;
    const svc = (name: string) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'default' }, spec: { selector: { app: name }, ports: [{ port: 80 }], type: 'NodePort' } });
    n1.apply([svc('alpha')], { wait: false });
    n2.apply([svc('beta')], { wait: false });
    await lab.until('both services on both nodes', () => [n1, n2].every((n) => n.cliJson(['get', 'svc']).items.length === 2));
    const a1 = n1.cliJson(['get', 'svc', 'alpha']).spec;
    const a2 = n2.cliJson(['get', 'svc', 'alpha']).spec;
    const b1 = n1.cliJson(['get', 'svc', 'beta']).spec;
    assert.ok(a1.clusterIP && a1.clusterIP === a2.clusterIP, 'the same ClusterIP on every node');
    assert.notEqual(a1.clusterIP, b1.clusterIP);
    assert.notEqual(a1.ports[0].nodePort, b1.ports[0].nodePort);
    n2.apply([svc('alpha')], { wait: false });
    assert.equal(n2.cliJson(['get', 'svc', 'alpha']).spec.clusterIP, a1.clusterIP, 're-applied without clusterIP: kept');
    const taken = { ...svc('gamma'), spec: { ...svc('gamma').spec, clusterIP: a1.clusterIP } };
    const bad = (() => {
      try {
        n1.apply([taken], { wait: false });
        return '';
      } catch (e) {
        return (e as Error).message;
      }
    })();
    assert.match(bad, new RegExp(`spec.clusterIP ${a1.clusterIP.replace(/\./g, '\\.')} is already used by default/alpha`));
    n1.delete([svc('alpha'), svc('beta')]);
  });

  it('the same label set gets the same identity on every node, even when two nodes attach at once', async () => {
    const [n1] = lab.nodes;
    n1.apply(
      ['twin-a', 'twin-b'].map((name) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels: { app: 'twin', tier: 'race' } } })),
      { wait: false },
    );
    await lab.until('n2 to see both pods', () => lab.nodes[1].cliJson(['get', 'pod']).items.filter((p: any) => p.metadata.name.startsWith('twin')).length === 2);
    const [a, b] = await Promise.all([lab.addPodAsync(0, 'twin-a'), lab.addPodAsync(1, 'twin-b')]);
    const ida = lab.nodes[0].cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'twin-a').identity;
    const idb = lab.nodes[1].cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'twin-b').identity;
    assert.equal(ida, idb, 'one identity for one label set');
    assert.ok(ida >= 256 && ida <= 65535);
    // Each node knows the other's pod: address, identity, tunnel endpoint.
    await lab.until('n1 ipcache to hold twin-b', () => lab.nodes[0].cliJson(['bpf', 'ipcache', 'list']).some((e: any) => e.prefix === `${b.ip}/32` && e.identity === idb && e.tunnelEndpoint === '198.18.0.2'));
    await lab.until('n2 ipcache to hold twin-a', () => lab.nodes[1].cliJson(['bpf', 'ipcache', 'list']).some((e: any) => e.prefix === `${a.ip}/32` && e.identity === ida && e.tunnelEndpoint === '198.18.0.1'));
    const list = (n: number) => lab.nodes[n].cliJson(['identity', 'list']).filter((i: any) => i.id >= 256 && i.id < 65536).map((i: any) => `${i.id}:${i.labels.join(',')}`).sort();
    await lab.until('both nodes to know the same identities', () => JSON.stringify(list(0)) === JSON.stringify(list(1)));
  });

  it('refuses a node whose pod CIDR overlaps another node\'s, and a second agent with a live node\'s name', async () => {
    const clash = lab.extraNode(2, '10.210.1.128/25');
    await assert.rejects(clash.start(), /pod-cidr: 10\.210\.1\.128\/25 of node \\?"n3\\?" overlaps 10\.210\.1\.0\/24 of node \\?"n1\\?"/);
    const same = lab.extraNode(3, '10.210.9.0/24');
    same.agentArgs.push('--node-name', 'n1');
    await assert.rejects(same.start(), /node-name: \\?"n1\\?" is already registered by another live agent/);
  });

  it('a node whose agent dies leaves every other node\'s maps within the lease TTL and comes back with it', async () => {
    const [n1, n2] = lab.nodes;
    const cidr = '10.210.2.0/24';
    const has = () => n1.cliJson(['bpf', 'ipcache', 'list']).some((e: any) => e.prefix === cidr);
    assert.equal(has(), true);
    const t0 = Date.now();
    await n2.stopAgent('SIGKILL');
    await lab.until('n2 to leave n1\'s ipcache', () => !has(), 30_000, 200);
    const gone = Date.now() - t0;
    assert.ok(gone >= 1000, `not before the lease could expire (${gone} ms)`);
    const nodes: any[] = n1.cliJson(['node', 'list']);
    assert.equal(nodes.find((x) => x.name === 'n2').alive, false);
    await n2.startAgent();
    await lab.until('n2 back in n1\'s ipcache', () => has(), 30_000, 200);
    assert.equal(n1.cliJson(['node', 'list']).find((x: any) => x.name === 'n2').alive, true);
  });
});
