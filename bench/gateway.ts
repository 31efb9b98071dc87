/**
 * Gateway API benchmark (issue 13): HTTP through a Gateway versus straight to
 * the backend pod, in one run.
 *
 *   node dist/bench/gateway.js [--quick] [--rounds N]
 *
 * One TestNode (agent, plugin, proxy) with a world namespace; a backend pod
 * runs test/helpers/httpd on 8080 behind Service echo; a Gateway (default
 * pool address, port 80) with an HTTPRoute to it. wrk (Debian's) in the world
 * namespace, 50 keep-alive connections, interleaved direct (the pod address)
 * and through the Gateway, N rounds (median [min-max]): requests/s, p50 and
 * p99. Target: Gateway/direct requests/s >= 0.5. Prints figures and ratios;
 * never asserts timings.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { TestNode, hasCmd } from '../test/helpers/node';
import { REPO, sh } from '../test/helpers/sys';
import { argValue, background, fmt, hasArg, median, mustRoot, onCleanup, reportRow, run, runBench, sleep, spread, stopBackground, table, wrk } from './lib';
import type { Wrk } from './lib';

const HTTPD = path.join(REPO, 'dist/test/helpers/httpd.js');
const TARGET_RATIO = 0.5;

async function main(): Promise<void> {
  mustRoot();
  if (!hasCmd('wrk')) throw new Error('wrk is not installed (bash scripts/setup.sh --test)');
  const quick = hasArg('--quick');
  const rounds = argValue('--rounds', quick ? 2 : 3, 1, 20);
  const secs = quick ? 2 : 4;
  console.log(`gateway: kernel ${os.release()}, ${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`wrk -t1 -c50 from a world namespace, keep-alive, ${secs} s per run, ${rounds} rounds interleaved direct/Gateway; median [min-max]\n`);

  const node = new TestNode('bgw');
  onCleanup(`TestNode ${node.prefix}`, () => node.cleanup());
  await node.start({ world: true });
  node.apply([
    { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'echo', namespace: 'default', labels: { app: 'echo' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'default' }, spec: { selector: { app: 'echo' }, ports: [{ port: 80, targetPort: 8080 }] } },
  ]);
  const server = node.addPod('echo');
  const httpd = background('ip', ['netns', 'exec', server.ns, process.execPath, HTTPD, '8080']);
  onCleanup('httpd', () => stopBackground(httpd));
  node.apply([
    { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GatewayClass', metadata: { name: 'membrane' }, spec: { controllerName: 'membrane.io/gateway-controller' } },
    { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', metadata: { name: 'web', namespace: 'default' }, spec: { gatewayClassName: 'membrane', listeners: [{ name: 'http', port: 80, protocol: 'HTTP' }] } },
    { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'echo', namespace: 'default' }, spec: { parentRefs: [{ name: 'web' }], rules: [{ backendRefs: [{ name: 'echo', port: 80 }] }] } },
  ]);
  const gw = node.cliJson(['get', 'gateway', 'web']).status.addresses[0].value as string;
  sh('ip', ['-n', node.worldNs!, 'route', 'add', '10.199.0.0/24', 'via', '192.0.2.1']);
  const direct = `http://${server.ip}:8080/ok`;
  const viaGw = `http://${gw}/ok`;
  for (let i = 0; i < 50; i++) {
    const a = await run('ip', ['netns', 'exec', node.worldNs!, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2', direct]);
    const b = await run('ip', ['netns', 'exec', node.worldNs!, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2', viaGw]);
    if (a.stdout === '200' && b.stdout === '200') break;
    if (i === 49) throw new Error(`not reachable: direct ${a.stdout}, Gateway ${b.stdout}`);
    await sleep(100);
  }

  await wrk(node.worldNs!, direct, 10, 1);
  await wrk(node.worldNs!, viaGw, 10, 1);
  const res: Record<'d' | 'g', Wrk[]> = { d: [], g: [] };
  for (let r = 0; r < rounds; r++) {
    res.d.push(await wrk(node.worldNs!, direct, 50, secs));
    res.g.push(await wrk(node.worldNs!, viaGw, 50, secs));
    console.log(`round ${r + 1}: direct ${fmt(res.d[r].rps, 0)} req/s, Gateway ${fmt(res.g[r].rps, 0)} req/s`);
  }
  const med = (xs: Wrk[], k: keyof Wrk) => median(xs.map((x) => x[k]));
  const sp = (xs: Wrk[], k: keyof Wrk) => spread(xs.map((x) => x[k]), 0);
  const ratio = med(res.g, 'rps') / med(res.d, 'rps');
  console.log('');
  console.log(
    table([
      ['metric (50 connections)', 'direct to the pod', 'through the Gateway', 'ratio G/D', 'target'],
      ['requests/s', sp(res.d, 'rps'), sp(res.g, 'rps'), fmt(ratio, 3), `>= ${TARGET_RATIO}  ${ratio >= TARGET_RATIO ? 'meets' : 'MISSES'}`],
      ['p50 latency (us)', sp(res.d, 'p50us'), sp(res.g, 'p50us'), fmt(med(res.g, 'p50us') / med(res.d, 'p50us'), 3), ''],
      ['p99 latency (us)', sp(res.d, 'p99us'), sp(res.g, 'p99us'), fmt(med(res.g, 'p99us') / med(res.d, 'p99us'), 3), ''],
    ]),
  );
  const errors = [...res.d, ...res.g].reduce((s, w) => s + w.errors + w.non2xx, 0);
  console.log(`\nchecks: socket errors and non-2xx ${errors}`);
  reportRow({ row: 'Gateway / direct requests/s, 50 keep-alive connections', figure: med(res.g, 'rps'), unit: 'req/s', reference: { what: 'direct to the backend pod', value: med(res.d, 'rps') }, target: { on: 'ratio', op: '>=', value: TARGET_RATIO } });
  reportRow({ row: 'Gateway p50 latency, 50 connections', figure: med(res.g, 'p50us') / 1000, unit: 'ms', reference: { what: 'direct to the backend pod', value: med(res.d, 'p50us') / 1000 } });
  reportRow({ row: 'Gateway p99 latency, 50 connections', figure: med(res.g, 'p99us') / 1000, unit: 'ms', reference: { what: 'direct to the backend pod', value: med(res.d, 'p99us') / 1000 } });
}

runBench('gateway', main);
