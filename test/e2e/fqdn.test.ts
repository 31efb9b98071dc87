/**
 * DNS-aware policy end to end: the real agent, plugin and proxy; dnsmasq (Debian's
 * dnsmasq-base) in a namespace standing for the world, serving a test zone with
 * short TTLs and answers that change; pods resolve with dig, the system resolver
 * (/etc/netns/<ns>/resolv.conf) and Node's resolver, then connect with TCP to
 * servers at the resolved addresses (also in the world namespace).
 *
 * Policy: the client may ask 192.0.2.10:53 (UDP and TCP) for *.example.com and
 * a.pattern.test, and may connect to port 8080 of what *.example.com resolved to.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TestNode } from '../helpers/node';
import { REPO, inNs, sh, sleep } from '../helpers/sys';

const DNSCLIENT = path.join(REPO, 'dist/test/helpers/dnsclient.js');
const NETKIT = path.join(REPO, 'dist/test/helpers/netkit.js');
const DNS = '192.0.2.10';
/** Names for the 200-lookups case: n<i>.example.com -> 198.51.100.<i+1> */
const MANY = 200;

const pod = (name: string, labels: Record<string, string>) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'default', labels } });

const POLICY = {
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name: 'client-dns', namespace: 'default' },
  spec: {
    endpointSelector: { matchLabels: { app: 'client' } },
    egress: [
      { toCIDR: [`${DNS}/32`], toPorts: [{ ports: [{ port: '53', protocol: 'ANY' }], rules: { dns: [{ matchPattern: '*.example.com' }, { matchName: 'a.pattern.test' }, { matchName: 'cdn.pattern.test' }] } }] },
      { toFQDNs: [{ matchPattern: '*.example.com' }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }] }] },
    ],
  },
};

function hostsFile(overrides: Record<string, string> = {}): string {
  const names: Record<string, string> = {
    'api.example.com': '192.0.2.20',
    'web.example.com': '192.0.2.21',
    'evil.example.org': '192.0.2.22',
    'a.pattern.test': '192.0.2.23',
    'x.y.example.com': '192.0.2.24',
    'web2.example.com': '192.0.2.26',
    ...overrides,
  };
  for (let i = 0; i < MANY; i++) names[`n${i}.example.com`] = `198.51.100.${i + 1}`;
  return Object.entries(names).map(([n, ip]) => `${ip} ${n}`).join('\n') + '\n';
}

describe('DNS-aware policy: DNS proxy, toFQDNs, DNS rules', () => {
  const node = new TestNode('fq');
  let client: ReturnType<TestNode['addPod']>;
  let dnsmasq: ChildProcess;
  let hosts: string;
  const resolvConfDirs: string[] = [];

  const dig = (args: string[]) => {
    const r = inNs(client.ns, 'dig', ['@' + DNS, '+tries=1', '+time=3', ...args], 15_000);
    return { out: r.stdout, status: /status: ([A-Z]+)/.exec(r.stdout)?.[1], answers: r.stdout.split('\n').filter((l) => /\sIN\s+A\s/.test(l) && !l.startsWith(';')).map((l) => l.trim().split(/\s+/).pop()!) };
  };
  const tcp = (ip: string) => node.tcp(client.ns, ip, 8080, 1500);
  const cache = (): any[] => node.cliJson(['fqdn', 'cache', 'list']);
  const setHosts = (overrides: Record<string, string>) => {
    fs.writeFileSync(hosts, hostsFile(overrides));
    dnsmasq.kill('SIGHUP');
  };

  before(async () => {
    // The machine is shared (CI, other tests): a generous bound on holding answers, so a busy moment cannot release one early.
    await node.start({ world: true, agentArgs: ['--tofqdns-min-ttl', '0', '--tofqdns-proxy-response-max-delay', '2s'] });
    const world = node.worldNs!;
    // The world's servers: 192.0.2.20-29 on its link, 198.51.100.0/24 behind it.
    const batch = [`addr add 192.0.2.20/24 dev eth0`];
    for (let i = 21; i < 30; i++) batch.push(`addr add 192.0.2.${i}/24 dev eth0`);
    for (let i = 1; i <= MANY; i++) batch.push(`addr add 198.51.100.${i}/32 dev lo`);
    sh('ip', ['-n', world, '-batch', '-'], { input: batch.join('\n') + '\n' });
    sh('ip', ['-n', world, 'link', 'set', 'lo', 'up']);
    sh('ip', ['-n', node.nodeNs, 'route', 'add', '198.51.100.0/24', 'via', DNS]);
    await node.serve(world, 'tcp:8080');
    hosts = path.join(node.dir, 'hosts');
    fs.writeFileSync(hosts, hostsFile());
    dnsmasq = node.own(
      spawn('ip', ['netns', 'exec', world, 'dnsmasq', '-k', '-u', 'root', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', `--addn-hosts=${hosts}`, '--local-ttl=2', '--cname=cdn.pattern.test,web2.example.com', `--listen-address=${DNS}`, '--bind-interfaces', `--pid-file=${path.join(node.dir, 'dnsmasq.pid')}`, '--log-facility=-'], {
        stdio: ['ignore', 'ignore', 'pipe'],
      }),
    );
    let up = false;
    for (let i = 0; i < 50 && !up; i++) {
      up = /192\.0\.2\.20/.test(inNs(world, 'dig', ['@' + DNS, '+short', '+tries=1', '+time=1', 'api.example.com']).stdout);
      if (!up) await sleep(100);
    }
    assert.ok(up, 'dnsmasq answers in the world namespace');
    node.apply([pod('client', { app: 'client' })]);
    client = node.addPod('client');
    // The system resolver of the pod (ip netns exec binds /etc/netns/<ns>/resolv.conf).
    const dir = `/etc/netns/${client.ns}`;
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'resolv.conf'), `nameserver ${DNS}\noptions timeout:3 attempts:1\n`);
    resolvConfDirs.push(dir);
    node.apply([POLICY]);
  });
  after(async () => {
    for (const d of resolvConfDirs) fs.rmSync(d, { recursive: true, force: true });
    await node.cleanup();
  });

  it('an allowed name resolves (dig, the system resolver) and its address is reachable; the cache lists it with the endpoint', () => {
    const r = dig(['api.example.com']);
    assert.equal(r.status, 'NOERROR', r.out);
    assert.deepEqual(r.answers, ['192.0.2.20']);
    assert.match(r.out, /SERVER: 192\.0\.2\.10#53/, 'the answer comes from the address the pod asked');
    assert.ok(tcp('192.0.2.20'), 'connects to the resolved address');
    assert.ok(!tcp('192.0.2.21'), 'web.example.com was not resolved yet: unreachable');
    const g = inNs(client.ns, 'getent', ['ahostsv4', 'web.example.com']);
    assert.equal(g.code, 0, g.stderr);
    assert.match(g.stdout, /^192\.0\.2\.21\s/m);
    assert.ok(tcp('192.0.2.21'), 'reachable once resolved through the system resolver');
    const rows = cache();
    const api = rows.find((e) => e.name === 'api.example.com.' && e.ip === '192.0.2.20');
    assert.ok(api, JSON.stringify(rows));
    assert.ok(api.identity >= 256 && api.endpoints.length === 1, JSON.stringify(api));
    assert.deepEqual(api.selectors, ['matchPattern: *.example.com']);
    const only = (args: string[]) => (node.cliJson(['fqdn', 'cache', 'list', ...args]) as any[]).map((e) => e.name);
    assert.deepEqual([...new Set(only(['--matchname', 'WEB.example.com']))], ['web.example.com.']);
    assert.ok(only(['--matchpattern', '*.example.com']).includes('api.example.com.'));
    assert.deepEqual(only(['--endpoint', '99999']), []);
    assert.ok(only(['--endpoint', String(api.endpoints[0])]).includes('api.example.com.'));
    const bad = node.cli(['fqdn', 'cache', 'list', '--matchpattern', 'a b']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--matchpattern: "a b" is not a DNS name pattern/);
    const text = node.cli(['fqdn', 'cache', 'list']).stdout;
    assert.match(text, /NAME\s+ADDRESS\s+IDENTITY\s+TTL\s+EXPIRES\s+ENDPOINTS\s+SELECTORS/);
  });

  it('a denied name gets REFUSED from the proxy (the server would answer) and its address stays unreachable; both are flows', async () => {
    assert.match(inNs(node.worldNs!, 'dig', ['@' + DNS, '+short', 'evil.example.org']).stdout, /192\.0\.2\.22/, 'the server itself answers');
    const r = dig(['evil.example.org']);
    assert.equal(r.status, 'REFUSED', r.out);
    assert.deepEqual(r.answers, []);
    assert.ok(!tcp('192.0.2.22'));
    assert.deepEqual(dig(['api.example.com']).answers, ['192.0.2.20']);
    /** DNS flows of a query name, waiting (bounded) for at least `want`: records reach the agent in batches. */
    const dnsFlows = async (name: string, want: number) => {
      let flows: any[] = [];
      for (let i = 0; i < 50 && flows.length < want; i++) {
        const o = node.cli(['observe', '--type', 'l7', '--dns-query', name, '--last', '1000', '-o', 'json']);
        flows = o.stdout.trim() ? o.stdout.trim().split('\n').map((l) => JSON.parse(l)) : [];
        if (flows.length < want) await sleep(100);
      }
      return flows;
    };
    const flows = await dnsFlows('evil.example.org', 2);
    const resp = flows.find((f) => f.l7?.type === 'RESPONSE');
    assert.ok(resp, JSON.stringify(flows));
    assert.equal(resp.verdict, 'DROPPED');
    assert.equal(resp.l7.dns.rcode, 'Refused');
    assert.equal(resp.destination.pod_name, 'client');
    const req = flows.find((f) => f.l7?.type === 'REQUEST');
    assert.deepEqual(req.l7.dns.qtypes, ['A']);
    const ok = await dnsFlows('api.example.com', 2);
    const answer = ok.find((f) => f.l7?.type === 'RESPONSE' && f.verdict === 'FORWARDED');
    assert.ok(answer, JSON.stringify(ok));
    assert.deepEqual(answer.l7.dns.ips, ['192.0.2.20']);
    const m = node.cli(['metrics']).stdout;
    assert.match(m, /membrane_l7_dns_responses_total\{verdict="denied",rcode="Refused"\} [1-9]/);
    assert.match(m, /membrane_l7_dns_requests_total\{verdict="forwarded"\} [1-9]/);
    assert.match(m, /^membrane_fqdn_addresses [1-9]/m);
    assert.match(m, /^membrane_fqdn_addresses_learned_total [1-9]/m);
    assert.match(m, /^membrane_fqdn_limit_hits_total\{limit="per-name"\} 0/m);
  });

  it('patterns: * stays within one label; a name the DNS rule allows but no toFQDNs selects resolves and stays unreachable', () => {
    assert.equal(dig(['x.y.example.com']).status, 'REFUSED', '*.example.com does not match two labels');
    const p = dig(['a.pattern.test']);
    assert.equal(p.status, 'NOERROR');
    assert.deepEqual(p.answers, ['192.0.2.23']);
    assert.ok(!tcp('192.0.2.23'), 'not selected by toFQDNs');
    assert.ok(!cache().some((e) => e.name === 'a.pattern.test.'), 'names no toFQDNs selector matches are not learned');
    // A CNAME chain: the target's name matches toFQDNs, the query name does not.
    const c = dig(['cdn.pattern.test']);
    assert.equal(c.status, 'NOERROR', c.out);
    assert.deepEqual(c.answers, ['192.0.2.26']);
    assert.ok(tcp('192.0.2.26'), 'reachable: web2.example.com (the CNAME target) is selected');
    assert.ok(cache().some((e) => e.name === 'web2.example.com.' && e.ip === '192.0.2.26'));
  });

  it('DNS over TCP: decided and answered the same way', () => {
    const r = dig(['+tcp', 'n150.example.com']);
    assert.equal(r.status, 'NOERROR', r.out);
    assert.deepEqual(r.answers, ['198.51.100.151']);
    assert.ok(tcp('198.51.100.151'));
    assert.equal(dig(['+tcp', 'evil.example.org']).status, 'REFUSED');
  });

  it('through a ClusterIP Service (as pods reach kube-dns): decided by the backend, answered from the ClusterIP', () => {
    node.apply([
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'dns', namespace: 'default' }, spec: { clusterIP: '10.96.0.53', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }] } },
      {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: { name: 'dns-1', namespace: 'default', labels: { 'kubernetes.io/service-name': 'dns' } },
        addressType: 'IPv4',
        ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }],
        endpoints: [{ addresses: [DNS], conditions: { ready: true } }],
      },
    ]);
    const viaSvc = (args: string[]) => {
      const r = inNs(client.ns, 'dig', ['@10.96.0.53', '+tries=1', '+time=3', ...args], 15_000);
      return { out: r.stdout, status: /status: ([A-Z]+)/.exec(r.stdout)?.[1] };
    };
    const ok = viaSvc(['n42.example.com']);
    assert.equal(ok.status, 'NOERROR', ok.out);
    assert.match(ok.out, /SERVER: 10\.96\.0\.53#53/);
    assert.match(ok.out, /198\.51\.100\.43/);
    assert.ok(tcp('198.51.100.43'));
    assert.equal(viaSvc(['evil.example.org']).status, 'REFUSED');
    assert.equal(viaSvc(['+tcp', 'n43.example.com']).status, 'NOERROR');
  });

  it(`the first connection after a resolution is never dropped (${MANY} lookups, 0 drops)`, () => {
    const drops = node.metric(133, 'egress');
    const before: any[] = node.cliJson(['bpf', 'metrics', 'list']);
    const names = Array.from({ length: MANY }, (_, i) => `n${i}.example.com`);
    const r = inNs(client.ns, process.execPath, [DNSCLIENT, 'resolve-connect', DNS, '8080', ...names], 120_000);
    assert.equal(r.code, 0, r.stderr);
    const res: { name: string; ok: boolean; connectMs?: number; error?: string }[] = JSON.parse(r.stdout);
    const failed = res.filter((x) => !x.ok);
    assert.deepEqual(failed, [], 'every lookup resolved and connected');
    // A dropped SYN would be retransmitted after a second: the connection would still succeed, slowly.
    const slow = res.filter((x) => (x.connectMs ?? 0) > 900);
    const afterM: any[] = node.cliJson(['bpf', 'metrics', 'list']);
    const diff = afterM.filter((m) => m.reason !== 0).map((m) => ({ ...m, packets: m.packets - (before.find((b) => b.reason === m.reason && b.direction === m.direction)?.packets ?? 0) })).filter((m) => m.packets);
    const dropped = () => node.cli(['observe', '--verdict', 'DROPPED', '--last', '20']).stdout;
    assert.deepEqual(slow, [], `no first SYN was dropped; drops: ${JSON.stringify(diff)}; proxy: ${JSON.stringify(node.cliJson(['status']).proxy.dns)}; ${dropped()}`);
    assert.equal(node.metric(133, 'egress') - drops, 0, 'no policy drop on egress');
    const st = node.cliJson(['status']);
    assert.ok(st.proxy.dns && st.proxy.dns.queries >= MANY, JSON.stringify(st.proxy));
    assert.equal(st.proxy.dns.learnLate, 0, 'no answer was released before its addresses were in the maps');
    assert.ok(st.fqdn.learnMs.count >= MANY, JSON.stringify(st.fqdn));
  });

  it('TTL expiry: an address no longer resolved becomes unreachable, an open connection to an expired one keeps working; new answers are learned', async () => {
    assert.deepEqual(dig(['api.example.com']).answers, ['192.0.2.20']);
    assert.deepEqual(dig(['web.example.com']).answers, ['192.0.2.21']);
    // A connection to api's address stays open through the expiry.
    const stream = node.own(spawn('ip', ['netns', 'exec', client.ns, process.execPath, NETKIT, 'tcp-stream', '192.0.2.20', '8080', '7000'], { stdio: ['ignore', 'pipe', 'pipe'] }));
    let last = '';
    stream.stdout!.on('data', (d) => (last = d.toString().trim().split('\n').pop() ?? last));
    const exited = new Promise<number>((r) => stream.once('exit', (c) => r(c ?? -1)));
    // The answers change: web.example.com now points elsewhere.
    setHosts({ 'web.example.com': '192.0.2.25' });
    let rows: any[] = [];
    for (let i = 0; i < 60; i++) {
      await sleep(250);
      rows = cache();
      if (!rows.some((e) => e.ip === '192.0.2.21')) break;
    }
    assert.ok(!rows.some((e) => e.ip === '192.0.2.21'), `web's old address expired: ${JSON.stringify(rows.filter((e) => e.name.startsWith('web')))}`);
    assert.ok(!tcp('192.0.2.21'), 'a new connection to the expired address is dropped');
    const api = rows.find((e) => e.ip === '192.0.2.20');
    assert.ok(api && api.remaining < 0, `api's address is kept past its TTL while a connection uses it: ${JSON.stringify(api)}`);
    assert.equal(await exited, 0, 'the open connection kept working');
    const [sent, echoed] = last.split(' ').map(Number);
    assert.ok(sent > 100 && echoed >= sent - 5, `stream ${last}`);
    assert.deepEqual(dig(['web.example.com']).answers, ['192.0.2.25']);
    assert.ok(tcp('192.0.2.25'), 'the new answer is learned');
    setHosts({});
  });

  it('agent kill -9 during lookups: the proxy keeps answering; learned addresses survive the restart', async () => {
    assert.deepEqual(dig(['api.example.com']).answers, ['192.0.2.20']);
    const loop = node.own(spawn('ip', ['netns', 'exec', client.ns, process.execPath, DNSCLIENT, 'loop', DNS, 'api.example.com', '6'], { stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    loop.stdout!.on('data', (d) => (out += d.toString()));
    const done = new Promise<void>((r) => loop.once('exit', () => r()));
    await sleep(1000);
    await node.stopAgent('SIGKILL');
    // While the agent is down: answers still come, and a newly resolved name is answered too.
    const during = dig(['n7.example.com']);
    assert.equal(during.status, 'NOERROR', during.out);
    await sleep(1000);
    // The restarted agent keeps what it learns for at least 30 s (the zone's TTL is 2 s).
    // ... and answers denied queries with NXDOMAIN.
    node.agentArgs.splice(node.agentArgs.indexOf('--tofqdns-min-ttl'), 2, '--tofqdns-min-ttl', '30', '--tofqdns-dns-reject-response-code', 'nameError');
    await node.startAgent();
    await done;
    const res = JSON.parse(out.trim());
    assert.ok(res.answered > 20, JSON.stringify(res));
    assert.equal(res.failed, 0, JSON.stringify(res));
    const rows = cache();
    assert.ok(rows.some((e) => e.ip === '192.0.2.20'), 'restored');
    assert.ok(tcp('192.0.2.20'), 'the restored address is reachable after the restart');
    let learned = false;
    for (let i = 0; i < 40 && !learned; i++) {
      learned = cache().some((e) => e.ip === '198.51.100.8');
      if (!learned) await sleep(100);
    }
    assert.ok(learned, 'the answer given while the agent was down was learned by the restarted agent');
    assert.ok(tcp('198.51.100.8'));
    let status: string | undefined;
    for (let i = 0; i < 20 && status !== 'NXDOMAIN'; i++) {
      status = dig(['evil.example.org']).status;
      if (status !== 'NXDOMAIN') await sleep(200);
    }
    assert.equal(status, 'NXDOMAIN', 'a denied query gets NXDOMAIN with --tofqdns-dns-reject-response-code nameError');
    assert.match(node.cli(['status']).stdout, /DNS proxy: +\d+ queries .*\nFQDN cache: +\d+ addresses/);
  });
});
