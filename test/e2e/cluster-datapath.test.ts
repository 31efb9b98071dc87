/**
 * Traffic between nodes (the lab: two nodes on an underlay bridge, etcd):
 * pod-to-pod over the VXLAN overlay in every direction, L3/L4 policy across
 * nodes (egress on the source node, ingress on the destination, the VNI
 * carrying the identity), entities, named ports, Services with backends on
 * the other node, and packets from the underlay that do not fit dropped with
 * their reason.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EXT_IP, Lab, LabPod } from '../helpers/lab';
import type { TestNode } from '../helpers/node';
import { ip4, ipv4Frame, mac } from '../helpers/packet';
import { NETKIT, tryRun } from '../helpers/sys';

const DROP_POLICY = 133;
const DROP_POLICY_DENY = 181;
const DROP_INVALID_IDENTITY = 171;
const DROP_UNKNOWN_SENDER = 172;

describe('cluster: traffic over the overlay', { timeout: 600_000 }, () => {
  // eth0 (the underlay uplink) takes NodePort traffic on every node.
  const lab = new Lab({ nodes: 2, leaseTtl: 10, agentArgs: ['--devices', 'eth0'] });
  let n1: TestNode;
  let n2: TestNode;
  let client: LabPod; // n1, app=client
  let other: LabPod; // n1, app=other
  let server: LabPod; // n2, app=server, named port http 8080
  let peer: LabPod; // n2, app=peer

  /** Apply on `on`, then wait until every node holds the policies and every endpoint enforces them. */
  async function applyEverywhere(on: TestNode, objects: any[]): Promise<void> {
    on.apply(objects, { wait: false });
    await settled(objects.filter((o) => /Policy$/.test(o.kind)).map((o) => o.metadata.name), true);
  }
  async function deleteEverywhere(on: TestNode, objects: any[]): Promise<void> {
    on.delete(objects);
    await settled(objects.filter((o) => /Policy$/.test(o.kind)).map((o) => o.metadata.name), false);
  }
  async function settled(names: string[], present: boolean): Promise<void> {
    for (const n of lab.nodes) {
      await lab.until(`policies ${names.join(',')} ${present ? 'enforced' : 'gone'} on ${n.nodeName}`, () => {
        const have: string[] = n.cliJson(['policy', 'get']).policies.map((p: any) => p.metadata.name);
        const st = n.cliJson(['status']);
        return names.every((x) => have.includes(x) === present) && st.policy.endpointsBehind === 0;
      });
    }
  }
  const metric = (n: TestNode, reason: number, dir: 'ingress' | 'egress') => n.metric(reason, dir);

  before(async () => {
    await lab.up();
    [n1, n2] = lab.nodes;
    n1.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'default', labels: { team: 'blue' } } }], { wait: false });
    client = lab.addPod(0, 'client', { app: 'client' });
    other = lab.addPod(0, 'other', { app: 'other' });
    server = lab.addPod(1, 'server', { app: 'server' }, { ports: [{ name: 'http', containerPort: 8080 }] });
    peer = lab.addPod(1, 'peer', { app: 'peer' });
    for (const p of [client, other, server, peer]) await lab.serve(p.ns, 'tcp:8080,udp:5353,tcp:9090', p.name);
    // Every node knows every pod before traffic starts.
    await lab.until('both ipcaches to hold all four pods', () =>
      lab.nodes.every((n) => {
        const prefixes = new Set(n.cliJson(['bpf', 'ipcache', 'list']).map((e: any) => e.prefix));
        return [client, other, server, peer].every((p) => prefixes.has(`${p.ip}/32`));
      }),
    );
  });
  after(async () => {
    await lab.cleanup();
  });

  it('pods on different nodes reach each other over TCP, UDP and ICMP, both ways; the host and pods reach remote pods and nodes', () => {
    assert.deepEqual(lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }, { ip: server.ip, port: 5353, proto: 'udp' }]), [true, true]);
    assert.deepEqual(lab.probe(peer.ns, [{ ip: other.ip, port: 8080, proto: 'tcp' }, { ip: client.ip, port: 5353, proto: 'udp' }]), [true, true]);
    assert.equal(lab.ping(client.ns, server.ip), true);
    assert.equal(lab.ping(server.ns, client.ip), true);
    assert.equal(lab.ping(n1.nodeNs, server.ip), true, 'node 1 itself reaches a pod on node 2');
    assert.equal(lab.ping(client.ns, '198.18.0.2'), true, 'a pod reaches another node');
    assert.equal(lab.tcp(n1.nodeNs, peer.ip, 9090), true);
    const tunnel = n1.cliJson(['bpf', 'ipcache', 'list']).find((e: any) => e.prefix === `${server.ip}/32`);
    assert.equal(tunnel.tunnelEndpoint, '198.18.0.2');
  });

  it('pods get the underlay MTU minus the 50 bytes of encapsulation, and full-size packets cross', () => {
    const eps: any[] = n1.cliJson(['endpoint', 'list']);
    assert.ok(eps.every((e) => e.mtu === 1450), `pod MTU ${eps.map((e) => e.mtu)}`);
    assert.equal(lab.ping(client.ns, server.ip, ['-M', 'do', '-s', String(1450 - 28)]), true, 'a 1450-byte packet with DF crosses');
  });

  it('ingress policy is enforced on the destination node with the identity the VNI carries', async () => {
    const pol = {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'server-ingress', namespace: 'default' },
      spec: { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: 'http', protocol: 'TCP' }] }] }] },
    };
    await applyEverywhere(n1, [pol]);
    try {
    const before = metric(n2, DROP_POLICY, 'ingress');
    assert.deepEqual(lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }, { ip: server.ip, port: 9090, proto: 'tcp' }]), [true, false], 'named port http only');
    assert.equal(lab.tcp(other.ns, server.ip, 8080), false);
    assert.ok(metric(n2, DROP_POLICY, 'ingress') >= before + 2, 'dropped at ingress on the destination node');
    // The drop names the identity the VNI carried: other's, allocated on node 1.
    const otherId = n1.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'other').identity;
    const out = n2.cli(['observe', '--verdict', 'DROPPED', '--to-pod', 'default/server', '--last', '20', '-o', 'json']).stdout;
    const flows = out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.ok(flows.some((f: any) => f.source?.identity === otherId), `a drop from identity ${otherId}: ${out.slice(0, 400)}`);
    } finally {
      await deleteEverywhere(n1, [pol]);
    }
    assert.equal(lab.tcp(other.ns, server.ip, 8080), true);
  });

  it('egress policy and deny rules are enforced on the source node; named ports resolve on the remote pod', async () => {
    const pols = [
      {
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'client-egress', namespace: 'default' },
        spec: { endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ toEndpoints: [{ matchLabels: { app: 'server' } }], toPorts: [{ ports: [{ port: 'http', protocol: 'TCP' }] }] }] },
      },
      {
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'other-deny', namespace: 'default' },
        spec: { endpointSelector: { matchLabels: { app: 'other' } }, egress: [{ toEntities: ['all'] }], egressDeny: [{ toEndpoints: [{ matchLabels: { app: 'peer' } }] }] },
      },
    ];
    await applyEverywhere(n2, pols);
    try {
    const eg = metric(n1, DROP_POLICY, 'egress');
    const deny = metric(n1, DROP_POLICY_DENY, 'egress');
    assert.deepEqual(
      lab.probe(client.ns, [
        { ip: server.ip, port: 8080, proto: 'tcp' },
        { ip: server.ip, port: 9090, proto: 'tcp' },
        { ip: peer.ip, port: 8080, proto: 'tcp' },
      ]),
      [true, false, false],
    );
    assert.deepEqual(lab.probe(other.ns, [{ ip: peer.ip, port: 8080, proto: 'tcp' }, { ip: server.ip, port: 8080, proto: 'tcp' }]), [false, true]);
    assert.ok(metric(n1, DROP_POLICY, 'egress') >= eg + 2, 'default deny at egress on the source node');
    assert.ok(metric(n1, DROP_POLICY_DENY, 'egress') >= deny + 1, 'the deny rule at egress on the source node');
    } finally {
      await deleteEverywhere(n2, pols);
    }
  });

  it('entities across nodes: remote-node is the other node\'s host, cluster every pod of every node', async () => {
    const pol = (name: string, entities: string[]) => ({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name, namespace: 'default' },
      spec: { endpointSelector: { matchLabels: { app: 'peer' } }, ingress: [{ fromEntities: entities }] },
    });
    await applyEverywhere(n1, [pol('peer-entities', ['remote-node'])]);
    try {
    assert.equal(lab.tcp(n1.nodeNs, peer.ip, 8080), true, 'node 1 is a remote node for node 2');
    assert.equal(lab.tcp(client.ns, peer.ip, 8080), false, 'a pod is not');
    await applyEverywhere(n1, [pol('peer-entities', ['cluster'])]);
    assert.equal(lab.tcp(client.ns, peer.ip, 8080), true, 'a pod of another node is in the cluster');
    assert.equal(lab.tcp(server.ns, peer.ip, 8080), true);
    } finally {
      await deleteEverywhere(n1, [pol('peer-entities', [])]);
    }
  });

  it('Kubernetes NetworkPolicy and clusterwide policy select peers on other nodes by namespace and labels', async () => {
    const knp = {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { name: 'server-knp', namespace: 'default' },
      spec: { podSelector: { matchLabels: { app: 'server' } }, ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'blue' } }, podSelector: { matchLabels: { app: 'other' } } }], ports: [{ port: 9090 }] }] },
    };
    const ccnp = {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumClusterwideNetworkPolicy',
      metadata: { name: 'client-ccnp' },
      spec: { endpointSelector: { matchLabels: { app: 'client' } }, ingress: [{ fromEntities: ['all'] }], ingressDeny: [{ fromEndpoints: [{ matchLabels: { app: 'peer' } }] }] },
    };
    await applyEverywhere(n1, [knp, ccnp]);
    try {
    assert.deepEqual(lab.probe(other.ns, [{ ip: server.ip, port: 9090, proto: 'tcp' }, { ip: server.ip, port: 8080, proto: 'tcp' }]), [true, false]);
    assert.equal(lab.tcp(client.ns, server.ip, 9090), false);
    assert.equal(lab.tcp(peer.ns, client.ip, 8080), false, 'clusterwide deny from the other node');
    assert.equal(lab.tcp(server.ns, client.ip, 8080), true);
    } finally {
      await deleteEverywhere(n1, [knp, ccnp]);
    }
  });

  it('a Service load-balances to backends on both nodes from a pod, with replies reversed on the client node', async () => {
    n2.apply(
      [
        {
          apiVersion: 'v1',
          kind: 'Service',
          metadata: { name: 'idents', namespace: 'default' },
          spec: { selector: { tier: 'backend' }, ports: [{ name: 'tcp', port: 80, targetPort: 8080 }, { name: 'udp', port: 53, targetPort: 5353, protocol: 'UDP' }] },
        },
        ...[server, peer, other].map((p) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: p.name, namespace: 'default', labels: { app: p.name, tier: 'backend' } }, spec: { containers: [{ name: 'c', ports: p === server ? [{ name: 'http', containerPort: 8080 }] : [] }] } })),
      ],
      { wait: false },
    );
    const ip = await (async () => {
      let v = '';
      await lab.until('the ClusterIP on node 1 with three backends', () => {
        const s = n1.cliJson(['service', 'list']).find((x: any) => x.service === 'default/idents' && x.frontend.endsWith(':80/TCP'));
        v = s?.frontend.split(':')[0] ?? '';
        return s?.backends.length === 3;
      });
      return v;
    })();
    const tcp = lab.who(client.ns, 'tcp', ip, 80, 40);
    const udp = lab.who(client.ns, 'udp', ip, 53, 40);
    for (const [what, got] of [['tcp', tcp], ['udp', udp]] as const) {
      assert.ok(got.every((x) => ['server', 'peer', 'other'].includes(x)), `${what}: every flow answered by a backend, from the frontend's address (${got.join(',')})`);
      assert.ok(got.includes('server') && got.includes('peer'), `${what}: backends on the other node are used`);
    }
  });

  it('NodePort on any node: a client outside the cluster reaches a backend on the other node, with conntrack and reverse NAT on both ends', async () => {
    const svc = (name: string, policy: 'Cluster' | 'Local') => ({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name, namespace: 'default' },
      spec: { type: 'NodePort', selector: { app: 'server' }, externalTrafficPolicy: policy, ports: [{ name: 'tcp', port: 80, targetPort: 8080 }, { name: 'udp', port: 53, targetPort: 5353, protocol: 'UDP' }] },
    });
    n1.apply([svc('np-cluster', 'Cluster'), svc('np-local', 'Local')], { wait: false });
    const ports: Record<string, { tcp: number; udp: number }> = {};
    await lab.until('both NodePort services on node 1 with their backend', () => {
      const list: any[] = n1.cliJson(['service', 'list']);
      for (const name of ['np-cluster', 'np-local']) {
        const tcp = list.find((x) => x.service === `default/${name}` && x.type === 'NodePort' && x.frontend.startsWith('198.18.0.1:') && x.frontend.endsWith('/TCP'));
        const udp = list.find((x) => x.service === `default/${name}` && x.type === 'NodePort' && x.frontend.startsWith('198.18.0.1:') && x.frontend.endsWith('/UDP'));
        if (!tcp || !udp || !tcp.backends.length) return false;
        ports[name] = { tcp: Number(tcp.frontend.split(':')[1].split('/')[0]), udp: Number(udp.frontend.split(':')[1].split('/')[0]) };
      }
      return true;
    });
    // Node 1 has no backend: Cluster crosses the overlay (SNAT to node 1), Local answers nothing.
    assert.deepEqual(lab.who(lab.extNs, 'tcp', '198.18.0.1', ports['np-cluster'].tcp, 6), Array(6).fill('server'));
    assert.deepEqual(lab.who(lab.extNs, 'udp', '198.18.0.1', ports['np-cluster'].udp, 6), Array(6).fill('server'));
    assert.deepEqual(lab.who(lab.extNs, 'tcp', '198.18.0.2', ports['np-cluster'].tcp, 3), Array(3).fill('server'), 'and on the backend\'s own node');
    assert.ok(lab.who(lab.extNs, 'tcp', '198.18.0.1', ports['np-local'].tcp, 2, 1000).every((x) => x !== 'server'), 'Local: no backend on node 1');
    assert.deepEqual(lab.who(lab.extNs, 'tcp', '198.18.0.2', ports['np-local'].tcp, 2), ['server', 'server']);
    // A long flow keeps its translation on both ends (conntrack): a stream through node 1.
    const r = tryRun('ip', ['netns', 'exec', lab.extNs, process.execPath, NETKIT, 'tcp-stream', '198.18.0.1', String(ports['np-cluster'].tcp), '1500'], { timeoutMs: 20_000 });
    const [sent, echoed] = r.stdout.trim().split('\n').pop()!.split(' ').map(Number);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(sent > 20 && echoed >= sent - 2, `${sent} sent, ${echoed} echoed`);
    n1.delete([svc('np-cluster', 'Cluster'), svc('np-local', 'Local')]);
  });

  it('drops packets from the underlay whose VNI is not an identity or whose inner source is not the sender\'s', () => {
    // Crafted VXLAN from a host on the underlay that is not a node (198.18.0.200).
    const inner = (src: string) => ipv4Frame({ srcMac: mac('02:00:00:00:00:01'), dstMac: mac('02:00:00:00:00:02'), src: ip4(src), dst: ip4(client.ip), l4: 'tcp', sport: 40000, dport: 8080 });
    const vxlan = (vni: number, frame: Buffer) => {
      const h = Buffer.alloc(8);
      h[0] = 0x08;
      h.writeUIntBE(vni, 4, 3);
      return Buffer.concat([h, frame]);
    };
    const badId = metric(n1, DROP_INVALID_IDENTITY, 'ingress');
    const unknown = metric(n1, DROP_UNKNOWN_SENDER, 'ingress');
    const serverId = n2.cliJson(['endpoint', 'list']).find((e: any) => e.podName === 'server').identity;
    lab.udpSend(lab.extNs, '198.18.0.1', 8472, vxlan(0x12345, inner(server.ip)));
    lab.udpSend(lab.extNs, '198.18.0.1', 8472, vxlan(serverId, inner(server.ip)));
    lab.udpSend(lab.extNs, '198.18.0.1', 8472, vxlan(serverId, inner(EXT_IP)));
    return lab.until('the drops to be counted', () => metric(n1, DROP_INVALID_IDENTITY, 'ingress') >= badId + 1 && metric(n1, DROP_UNKNOWN_SENDER, 'ingress') >= unknown + 2, 10_000);
  });
});
