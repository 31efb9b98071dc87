/**
 * Seeing every flow: drops and verdicts from the kernel become flows with pod
 * names, `observe` filters return exactly the matching flows, `monitor` lines
 * parse back to the packets sent, and metrics counters move by the number of
 * packets sent.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { CLI_BIN, TestNode } from '../helpers/node';
import { NETKIT, inNs, sleep, tryRun } from '../helpers/sys';

const NS = 'obs';
const pod = (name: string, app: string) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: NS, labels: { app } } });
const cnp = (name: string, spec: unknown) => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name, namespace: NS }, spec });

describe('flows, monitor and metrics', () => {
  const node = new TestNode('ob');
  const metricsPort = 19000 + Math.floor(Math.random() * 1000);
  let web: ReturnType<TestNode['addPod']>;
  let client: ReturnType<TestNode['addPod']>;
  let rogue: ReturnType<TestNode['addPod']>;
  const policy = [
    cnp('web-ingress', {
      endpointSelector: { matchLabels: { app: 'web' } },
      ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }, { port: '5353', protocol: 'UDP' }] }] }],
      ingressDeny: [{ fromEndpoints: [{ matchLabels: { app: 'rogue' } }], toPorts: [{ ports: [{ port: '9999', protocol: 'UDP' }] }] }],
    }),
  ];

  before(async () => {
    await node.start({ agentArgs: ['--metrics-address', `127.0.0.1:${metricsPort}`] });
    node.apply([{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS } }, pod('web', 'web'), pod('client', 'client'), pod('rogue', 'rogue')]);
    const args = (n: string) => ({ args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${NS};K8S_POD_NAME=${n}` });
    web = node.addPod('web', args('web'));
    client = node.addPod('client', args('client'));
    rogue = node.addPod('rogue', args('rogue'));
    await node.serve(web.ns, 'tcp:8080,udp:5353');
    node.apply(policy);
  });
  after(async () => {
    await node.cleanup();
  });

  const flows = (args: string[]): any[] => {
    const r = node.cli(['observe', '--last', '100000', ...args, '-o', 'json']);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim() ? r.stdout.trim().split('\n').map((l) => JSON.parse(l)) : [];
  };

  it('a connection denied by policy is a DROPPED flow with reason 133 and the pod names; a deny rule gives 181', async () => {
    assert.equal(node.tcp(rogue.ns, web.ip, 8080, 800), false);
    assert.ok(node.tcp(client.ns, web.ip, 8080));
    inNs(rogue.ns, process.execPath, [NETKIT, 'udp-burst', web.ip, '9999', '2']);
    await sleep(300);
    const drops = flows(['--verdict', 'DROPPED', '--from-pod', `${NS}/rogue`]);
    const d133 = drops.find((f) => f.drop_reason === 133 && f.l4?.TCP?.destination_port === 8080 && f.event_type.type === 1);
    assert.ok(d133, 'a drop flow with reason 133');
    assert.equal(d133.source.pod_name, 'rogue');
    assert.equal(d133.source.namespace, NS);
    assert.equal(d133.destination.pod_name, 'web');
    assert.equal(d133.traffic_direction, 'INGRESS');
    assert.ok(d133.destination.labels.includes('k8s:app=web'));
    assert.ok(d133.l4.TCP.flags.SYN);
    assert.ok(drops.some((f) => f.drop_reason === 181 && f.l4?.UDP?.destination_port === 9999), 'a drop flow with reason 181');
    const fwd = flows(['--from-pod', `${NS}/client`, '--to-pod', `${NS}/web`, '--verdict', 'FORWARDED']);
    assert.ok(fwd.some((f) => f.trace_observation_point === 'TO_ENDPOINT' && f.l4?.TCP?.destination_port === 8080), 'the allowed connection is traced to the endpoint');
    const verdicts = flows(['--type', 'policy-verdict', '--to-pod', `${NS}/web`]);
    assert.ok(verdicts.some((f) => f.verdict === 'FORWARDED' && f.policy_match_type === 'L3-L4' && f.source.pod_name === 'client'));
    assert.ok(verdicts.some((f) => f.verdict === 'DROPPED' && f.drop_reason === 133 && f.source.pod_name === 'rogue'));
  });

  it('observe filters return exactly the matching flows', async () => {
    node.tcp(client.ns, web.ip, 8080);
    inNs(client.ns, process.execPath, [NETKIT, 'udp-req', web.ip, '5353', 'hi']);
    await sleep(300);
    const all = flows([]);
    assert.ok(all.length > 5);
    const check = (args: string[], pred: (f: any) => boolean) => {
      const got = flows(args).map((f) => f.uuid).sort();
      const want = all.filter(pred).map((f) => f.uuid).sort();
      // flows that arrived after `all` was taken may appear in `got` only
      const known = new Set(all.map((f) => f.uuid));
      assert.deepEqual(got.filter((u) => known.has(u)), want, `observe ${args.join(' ')}`);
      assert.ok(want.length > 0, `observe ${args.join(' ')} matches something`);
    };
    check(['--from-pod', `${NS}/client`], (f) => f.source.pod_name === 'client' && f.source.namespace === NS);
    check(['--pod', 'rogue'], (f) => f.source.pod_name?.startsWith('rogue') || f.destination.pod_name?.startsWith('rogue'));
    check(['--verdict', 'DROPPED'], (f) => f.verdict === 'DROPPED');
    check(['--not', '--verdict', 'FORWARDED'], (f) => f.verdict !== 'FORWARDED');
    check(['--protocol', 'udp'], (f) => !!f.l4?.UDP);
    check(['--port', '5353'], (f) => f.l4?.UDP?.source_port === 5353 || f.l4?.UDP?.destination_port === 5353 || f.l4?.TCP?.source_port === 5353 || f.l4?.TCP?.destination_port === 5353);
    check(['--tcp-flags', 'SYN'], (f) => !!f.l4?.TCP?.flags?.SYN);
    check(['--traffic-direction', 'ingress'], (f) => f.traffic_direction === 'INGRESS');
    check(['--label', 'app=rogue'], (f) => f.source.labels.includes('k8s:app=rogue') || f.destination.labels.includes('k8s:app=rogue'));
    check(['--ip', web.ip], (f) => f.IP?.source === web.ip || f.IP?.destination === web.ip);
    check(['--type', 'drop'], (f) => f.event_type.type === 1);
    check(['--drop-reason', '181'], (f) => f.drop_reason === 181);
    check(['--from-pod', `${NS}/rogue`, '--verdict', 'DROPPED', '--protocol', 'tcp'], (f) => f.source.pod_name === 'rogue' && f.verdict === 'DROPPED' && !!f.l4?.TCP);
    check(['--verdict', 'DROPPED', '--verdict', 'FORWARDED', '--protocol', 'udp'], (f) => !!f.l4?.UDP);
    const last = flows(['--last', '3']);
    assert.equal(last.length, 3);
    const status = node.cli(['status']);
    assert.match(status.stdout, /^Flows: +[\d,]+\/65,536 stored \([\d.]+ MiB of 64\.0 MiB\), [\d,]+ seen, 0 lost; \d+ stream clients, 0 dropped for slow clients$/m);
    const compact = node.cli(['observe', '--from-pod', `${NS}/rogue`, '--verdict', 'DROPPED', '--last', '5']);
    assert.match(compact.stdout, new RegExp(`${NS}/rogue:\\d+ \\(ID:\\d+\\) -> ${NS}/web:(8080|9999) \\(ID:\\d+\\) .*DROPPED`));
    const bad = node.cli(['observe', '--verdict', 'MAYBE']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /verdict: "MAYBE"/);
  });

  it('monitor lines parse back to the events sent', async () => {
    const mon = spawn(process.execPath, [CLI_BIN, '--socket', node.socket, 'monitor', '-t', 'drop'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    mon.stdout!.on('data', (d) => lines.push(...d.toString().split('\n').filter(Boolean)));
    try {
      await sleep(700);
      const sport = 40000 + Math.floor(Math.random() * 1000);
      inNs(rogue.ns, process.execPath, [NETKIT, 'udp-burst', web.ip, '9999', '3', String(sport)]);
      await sleep(700);
    } finally {
      mon.kill('SIGINT');
    }
    const re = /^xx drop \(([^)]+)\) flow 0x[0-9a-f]+ to endpoint (\d+), .*identity (\S+)->(\S+): (\S+):(\d+) -> (\S+):(\d+) (udp|tcp)/;
    const parsed = lines.map((l) => re.exec(l)).filter((m): m is RegExpExecArray => !!m);
    const ours = parsed.filter((m) => m[5] === rogue.ip && m[7] === web.ip && m[8] === '9999');
    assert.equal(ours.length, 3, `three drop lines for the three datagrams:\n${lines.join('\n')}`);
    for (const m of ours) {
      assert.equal(m[1], 'Policy denied by denylist');
      assert.equal(m[9], 'udp');
      const eps: any[] = node.cliJson(['endpoint', 'list']);
      assert.equal(Number(m[2]), eps.find((e) => e.podName === 'web').id);
      assert.equal(Number(m[3]), eps.find((e) => e.podName === 'rogue').identity);
    }
  });

  it('metrics count exactly the packets sent, on the socket and on the TCP address asked for', () => {
    const scrape = () => node.cli(['metrics']).stdout;
    const value = (text: string, re: RegExp) => {
      const line = text.split('\n').find((l) => re.test(l));
      return line ? Number(line.split(' ').pop()) : 0;
    };
    const deny181 = /^membrane_drop_count_total\{[^}]*reason_code="181"[^}]*direction="ingress"/;
    const before = value(scrape(), deny181);
    inNs(rogue.ns, process.execPath, [NETKIT, 'udp-burst', web.ip, '9999', '7']);
    const text = scrape();
    assert.equal(value(text, deny181), before + 7, 'the drop counter moved by exactly the 7 datagrams');
    for (const name of ['membrane_forward_count_total', 'membrane_endpoints', 'membrane_identities', 'membrane_policy_revision', 'membrane_endpoint_regeneration_duration_seconds_bucket', 'membrane_api_request_duration_seconds_bucket', 'membrane_flows_seen_total', 'membrane_flows_lost_total', 'membrane_policy_verdicts_total']) {
      assert.match(text, new RegExp(`^${name}`, 'm'), `${name} is exported`);
    }
    assert.equal(value(text, /^membrane_endpoints\{state="ready"\}/), 3);
    const tcp = node.nodeExec(process.execPath, ['-e', `require('http').get('http://127.0.0.1:${metricsPort}/metrics', r => { let b=''; r.on('data', d => b += d); r.on('end', () => { process.stdout.write(b); }); }).on('error', e => { console.error(e.message); process.exit(1); })`]);
    assert.equal(tcp.code, 0, tcp.stderr);
    assert.match(tcp.stdout, /^membrane_drop_count_total/m);
    assert.equal(tryRun('sh', ['-c', `ss -ltn | grep -c ':${metricsPort} '`]).stdout.trim(), '0', 'no listener in the host namespace');
  });
});
