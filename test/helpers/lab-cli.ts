/**
 * scripts/lab.sh drives this: the multi-node lab of test/helpers/lab.ts as a
 * command a user runs.
 *   up [--nodes N] [--pods N] [--no-demo]   bring the lab up, attach pods, show it working
 *   down                                    remove everything the lab created
 *   status                                  nodes, pods, how to reach them
 * The lab's state (prefix, pids) is kept in /run/membrane-lab/state.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { Lab, LabState, removeByPrefix } from './lab';
import { CLI_BIN } from './node';
import { tryRun } from './sys';

const STATE_DIR = '/run/membrane-lab';
const STATE = path.join(STATE_DIR, 'state.json');

function readState(): LabState | undefined {
  try {
    return JSON.parse(fs.readFileSync(STATE, 'utf8')) as LabState;
  } catch {
    return undefined;
  }
}

function say(s = ''): void {
  process.stdout.write(s + '\n');
}

function cli(socket: string, args: string[]): string {
  const r = tryRun(process.execPath, [CLI_BIN, '--socket', socket, ...args]);
  return (r.stdout + r.stderr).trimEnd();
}

async function demo(lab: Lab): Promise<void> {
  const [n1, n2] = [lab.nodes[0], lab.nodes[1] ?? lab.nodes[0]];
  say('\n== Nodes (membrane node list on n1)');
  say(cli(n1.socket, ['node', 'list']));
  const server = lab.pod('server');
  const client = lab.pod('client');
  const other = lab.pod('other');
  say(`\n== Cross-node connectivity: ${client.name} (n${client.node + 1}, ${client.ip}) and ${other.name} (n${other.node + 1}, ${other.ip}) -> ${server.name} (n${server.node + 1}, ${server.ip}:8080)`);
  const before = lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]);
  const before2 = lab.probe(other.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]);
  say(`  client -> server: ${before[0] ? 'connected' : 'FAILED'}`);
  say(`  other  -> server: ${before2[0] ? 'connected' : 'FAILED'}`);
  say('\n== A policy: only app=client may reach app=server on 8080 (applied on n1, enforced on every node)');
  const rev = n1.apply(
    [
      {
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'server-from-client', namespace: 'default' },
        spec: { endpointSelector: { matchLabels: { app: 'server' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] }] },
      },
    ],
    { wait: false },
  );
  const serverNode = lab.nodes[server.node];
  await lab.until('the policy on the server node', () => serverNode.cli(['policy', 'wait', String(rev), '--timeout', '1']).code === 0, 20_000).catch(() => undefined);
  await lab
    .until('the policy enforced on every node', () => {
      const r = n1.cli(['get', 'cnp', 'server-from-client', '-o', 'json']);
      return r.code === 0 && JSON.parse(r.stdout).status?.conditions?.some((c: any) => c.type === 'Enforced' && c.status === 'True');
    }, 20_000)
    .catch(() => undefined);
  say('  its status, aggregated by the operator (membrane get cnp server-from-client -o yaml):');
  const yaml = cli(n1.socket, ['get', 'cnp', 'server-from-client', '-o', 'yaml']);
  say(yaml.slice(yaml.indexOf('status:')).split('\n').map((l) => `    ${l}`).join('\n'));
  const after = lab.probe(client.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]);
  const after2 = lab.probe(other.ns, [{ ip: server.ip, port: 8080, proto: 'tcp' }]);
  say(`  client -> server: ${after[0] ? 'connected (allowed)' : 'FAILED'}`);
  say(`  other  -> server: ${after2[0] ? 'connected (NOT dropped!)' : 'dropped (policy denied)'}`);
  say(`\n== The drop, seen on n${server.node + 1} (membrane observe --verdict DROPPED --last 2)`);
  say(cli(serverNode.socket, ['observe', '--verdict', 'DROPPED', '--last', '2']));
  say(`\n== The cluster-wide view from n1 (membrane observe --all-nodes --to-pod default/server --last 6)`);
  say(cli(n1.socket, ['observe', '--all-nodes', '--to-pod', 'default/server', '--last', '6']));
  void n2;
}

async function up(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { nodes: { type: 'string' }, pods: { type: 'string' }, 'no-demo': { type: 'boolean' } }, strict: true });
  const nodes = Number(values.nodes ?? 2);
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 20) throw new Error(`--nodes: "${values.nodes}" must be 1..20`);
  const podsPerNode = Number(values.pods ?? 2);
  if (!Number.isInteger(podsPerNode) || podsPerNode < 0 || podsPerNode > 50) throw new Error(`--pods: "${values.pods}" must be 0..50`);
  const existing = readState();
  if (existing) throw new Error(`a lab is already up (prefix ${existing.prefix}); run scripts/lab.sh down first`);
  fs.mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 });
  // The operator hands out the nodes' pod CIDRs from 10.210.0.0/16 (one /24 each).
  const lab = new Lab({ nodes, detached: true, relay: true, operator: { pool: { cidr: '10.210.0.0/16', maskSize: 24 } } });
  const save = () => fs.writeFileSync(STATE, JSON.stringify(lab.state(), null, 2) + '\n', { mode: 0o600 });
  save();
  try {
    say(`lab ${lab.prefix}: underlay 198.18.0.0/24, etcd on ${lab.endpoint}, the operator (cluster pool 10.210.0.0/16), ${nodes} node(s)`);
    await lab.up();
    save();
    // The demo's pods: a server on the last node, a client and another pod on the first.
    const last = nodes - 1;
    lab.addPod(last, 'server', { app: 'server' }, { ports: [{ name: 'http', containerPort: 8080 }] });
    await lab.serve(lab.pod('server').ns, 'tcp:8080');
    lab.addPod(0, 'client', { app: 'client' });
    lab.addPod(0, 'other', { app: 'other' });
    for (let i = 0; i < nodes; i++) {
      for (let j = 0; j < podsPerNode; j++) {
        const p = lab.addPod(i, `web-n${i + 1}-${j}`, { app: 'web' });
        await lab.serve(p.ns, 'tcp:8080');
      }
    }
    save();
    if (!values['no-demo']) await demo(lab);
    save();
    say('\n== The lab');
    status();
  } catch (e) {
    save();
    process.stderr.write(`lab up failed: ${(e as Error).message}\n(run scripts/lab.sh down to remove what was created)\n`);
    process.exit(1);
  }
  process.exit(0);
}

function status(): void {
  const st = readState();
  if (!st) {
    say('no lab is up (scripts/lab.sh up)');
    return;
  }
  say(`prefix ${st.prefix}; etcd ${st.etcd.endpoint} in netns ${st.underlayNs}; operator log test-artifacts/${st.prefix}-op1.log`);
  for (const n of st.nodes) {
    say(`  ${n.name}: ${n.ip}, pods ${n.podCidr}, netns ${n.nodeNs}`);
    say(`      bin/membrane --socket ${n.socket} status`);
    say(`      nsenter --net=/run/netns/${n.nodeNs} bash`);
  }
  for (const p of st.pods) say(`  pod ${p.namespace}/${p.name} on n${p.node + 1}: ${p.ip} (ip netns exec ${p.ns} ...)`);
  say('remove everything: scripts/lab.sh down');
}

function down(): void {
  const st = readState();
  if (!st) {
    say('no lab is up');
    return;
  }
  const removed = removeByPrefix(st.prefix, [...st.pids, ...st.nodes.map((n) => n.pid ?? 0).filter(Boolean), st.etcd.pid ?? 0].filter(Boolean));
  fs.rmSync(STATE, { force: true });
  say(`lab ${st.prefix} removed (${removed.length} objects: processes, namespaces, pins, directories)`);
}

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  try {
    if (cmd === 'up') await up(rest);
    else if (cmd === 'down') down();
    else if (cmd === 'status') status();
    else {
      process.stderr.write('usage: scripts/lab.sh up [--nodes N] [--pods N] [--no-demo] | down | status\n');
      process.exit(2);
    }
  } catch (e) {
    process.stderr.write(`lab: ${(e as Error).message}\n`);
    process.exit(1);
  }
}

void main();
