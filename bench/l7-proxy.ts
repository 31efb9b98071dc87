/**
 * L7 proxy benchmark: HTTP through the proxy versus direct, between the same
 * two pods, in one run.
 *
 *   node dist/bench/l7-proxy.js [--quick] [--rounds N] [--idle N]
 *
 * One TestNode (agent, plugin, proxy), pods client and server; the server runs
 * test/helpers/httpd on 8080 (an L7 rule allows GET /ok.*: every request goes
 * through bin/membrane-proxy) and 8081 (the same server, an L4 rule only:
 * direct). wrk (Debian's) in the client pod, keep-alive connections, runs
 * interleaved direct/proxy for N rounds (median [min-max]):
 *   - requests/s and p50/p99 latency with 1 connection and with 50;
 *   - requests/s of the 403 path (GET /denied through the proxy, 50 connections);
 *   - proxy memory per 1,000 idle keep-alive connections (RSS of the proxy
 *     process before and after N idle client connections, each with its
 *     upstream connection).
 * Targets (issue 11): proxy/direct requests/s >= 0.5 with 50 connections;
 * added p50 latency <= 200 us with one connection. Prints figures and ratios;
 * never asserts timings.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TestNode, hasCmd } from '../test/helpers/node';
import { REPO } from '../test/helpers/sys';
import { argValue, background, fmt, hasArg, median, mustRoot, onCleanup, run, runBench, sleep, spread, stopBackground, table, wrk } from './lib';
import type { Wrk } from './lib';

const HTTPD = path.join(REPO, 'dist/test/helpers/httpd.js');
const HTTPC = path.join(REPO, 'dist/test/helpers/httpc.js');

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

async function main(): Promise<void> {
  mustRoot();
  if (!hasCmd('wrk')) throw new Error('wrk is not installed (bash scripts/setup.sh --test)');
  const quick = hasArg('--quick');
  const rounds = argValue('--rounds', quick ? 2 : 3, 1, 20);
  const secs = quick ? 2 : 4;
  const idle = argValue('--idle', 1000, 10, 20000);
  console.log(`l7-proxy: kernel ${os.release()}, ${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`wrk -t1, keep-alive, ${secs} s per run, ${rounds} rounds interleaved direct/proxy; median [min-max]\n`);

  const node = new TestNode('bl');
  onCleanup(`TestNode ${node.prefix}`, () => node.cleanup());
  await node.start();
  node.apply([
    { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'client', namespace: 'default', labels: { app: 'client' } } },
    { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'server', namespace: 'default', labels: { app: 'server' } } },
  ]);
  const client = node.addPod('client');
  const server = node.addPod('server');
  const httpd = background('ip', ['netns', 'exec', server.ns, process.execPath, HTTPD, '8080', '8081']);
  onCleanup('httpd', () => stopBackground(httpd));
  node.apply([
    {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'bench', namespace: 'default' },
      spec: {
        endpointSelector: { matchLabels: { app: 'server' } },
        ingress: [
          {
            fromEndpoints: [{ matchLabels: { app: 'client' } }],
            toPorts: [{ ports: [{ port: '8080', protocol: 'TCP' }], rules: { http: [{ method: 'GET', path: '/ok.*' }] } }, { ports: [{ port: '8081', protocol: 'TCP' }] }],
          },
        ],
      },
    },
  ]);
  const direct = `http://${server.ip}:8081/ok`;
  const proxied = `http://${server.ip}:8080/ok`;
  for (let i = 0; i < 50; i++) {
    const a = await run('ip', ['netns', 'exec', client.ns, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2', direct]);
    const b = await run('ip', ['netns', 'exec', client.ns, 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2', proxied]);
    if (a.stdout === '200' && b.stdout === '200') break;
    if (i === 49) throw new Error(`servers not reachable: direct ${a.stdout}, proxied ${b.stdout}`);
    await sleep(100);
  }
  const pid = node.cliJson(['status']).proxy.pid as number;

  // Warm-up (uncounted), then interleaved rounds.
  await wrk(client.ns, direct, 10, 1);
  await wrk(client.ns, proxied, 10, 1);
  const res: Record<string, Wrk[]> = { d1: [], p1: [], d50: [], p50: [], deny: [] };
  for (let r = 0; r < rounds; r++) {
    res.d1.push(await wrk(client.ns, direct, 1, secs));
    res.p1.push(await wrk(client.ns, proxied, 1, secs));
    res.d50.push(await wrk(client.ns, direct, 50, secs));
    res.p50.push(await wrk(client.ns, proxied, 50, secs));
    res.deny.push(await wrk(client.ns, `http://${server.ip}:8080/denied`, 50, secs));
    console.log(
      `round ${r + 1}: 1 conn ${fmt(res.d1[r].rps, 0)} vs ${fmt(res.p1[r].rps, 0)} req/s; 50 conns ${fmt(res.d50[r].rps, 0)} vs ${fmt(res.p50[r].rps, 0)} req/s; 403 path ${fmt(res.deny[r].rps, 0)} req/s`,
    );
  }
  const errors = Object.values(res).flat().reduce((s, w) => s + w.errors, 0);
  const non2xxAllowed = [...res.d1, ...res.p1, ...res.d50, ...res.p50].reduce((s, w) => s + w.non2xx, 0);
  const denyNon403 = res.deny.reduce((s, w) => s + (w.non2xx === 0 ? 1 : 0), 0);

  // Memory per 1,000 idle keep-alive connections.
  await sleep(500);
  const rss0 = rssBytes(pid);
  const holder = background('ip', ['netns', 'exec', client.ns, process.execPath, HTTPC, 'hold', server.ip, '8080', '/ok/idle', String(idle)]);
  onCleanup('idle connections', () => stopBackground(holder));
  let held = 0;
  for (let i = 0; i < 600; i++) {
    held = node.cliJson(['status']).proxy.connections;
    if (held >= idle) break;
    await sleep(100);
  }
  await sleep(1000);
  const rss1 = rssBytes(pid);
  await stopBackground(holder);
  const perK = ((rss1 - rss0) / held) * 1000;

  const med = (xs: Wrk[], k: keyof Wrk) => median(xs.map((x) => x[k]));
  const sp = (xs: Wrk[], k: keyof Wrk, d = 0) => spread(xs.map((x) => x[k]), d);
  const ratio50 = med(res.p50, 'rps') / med(res.d50, 'rps');
  const added = med(res.p1, 'p50us') - med(res.d1, 'p50us');
  console.log('');
  console.log(
    table([
      ['metric', 'direct (L4 rule)', 'through the proxy (L7 rule)', 'ratio P/D', 'target'],
      ['requests/s, 1 connection', sp(res.d1, 'rps'), sp(res.p1, 'rps'), fmt(med(res.p1, 'rps') / med(res.d1, 'rps'), 3), ''],
      ['p50 latency, 1 connection (us)', sp(res.d1, 'p50us'), sp(res.p1, 'p50us'), fmt(med(res.p1, 'p50us') / med(res.d1, 'p50us'), 3), `added ${fmt(added, 0)} us, <= 200 us  ${added <= 200 ? 'meets' : 'MISSES'}`],
      ['p99 latency, 1 connection (us)', sp(res.d1, 'p99us'), sp(res.p1, 'p99us'), fmt(med(res.p1, 'p99us') / med(res.d1, 'p99us'), 3), ''],
      ['requests/s, 50 connections', sp(res.d50, 'rps'), sp(res.p50, 'rps'), fmt(ratio50, 3), `>= 0.5  ${ratio50 >= 0.5 ? 'meets' : 'MISSES'}`],
      ['p50 latency, 50 connections (us)', sp(res.d50, 'p50us'), sp(res.p50, 'p50us'), fmt(med(res.p50, 'p50us') / med(res.d50, 'p50us'), 3), ''],
      ['p99 latency, 50 connections (us)', sp(res.d50, 'p99us'), sp(res.p50, 'p99us'), fmt(med(res.p50, 'p99us') / med(res.d50, 'p99us'), 3), ''],
      ['403 path requests/s, 50 connections', '', sp(res.deny, 'rps'), fmt(med(res.deny, 'rps') / med(res.d50, 'rps'), 3), '(vs direct allowed)'],
    ]),
  );
  console.log(`\nproxy memory: ${fmt(perK / (1024 * 1024), 1)} MiB per 1,000 idle keep-alive connections (RSS ${fmt(rss0 / 1048576, 1)} -> ${fmt(rss1 / 1048576, 1)} MiB with ${held} held, each with its upstream connection)`);
  console.log(`checks: socket errors ${errors}; non-2xx on allowed paths ${non2xxAllowed}; 403 runs without 403s ${denyNon403}`);
}

runBench('l7-proxy', main);
