/**
 * Streaming clients that do not keep up cannot grow the agent: three stalled
 * readers (connected, never reading: `GET /v1/flows?follow=1`, `GET /v1/monitor`
 * and the UI's stream through `membrane ui`) and a flood of traffic traced at
 * every packet. The agent stays under 300 MiB and keeps answering; the flows
 * dropped for the readers are counted (status, metrics); a slow reader that
 * catches up is told how many it missed (`membrane observe --follow` prints
 * "N flows dropped: client too slow"); readers stalled past
 * --flows-stream-timeout are disconnected and the agent logs it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { CLI_BIN, TestNode } from '../helpers/node';
import { NETKIT, REPO, sleep } from '../helpers/sys';

const STALL_S = 6;
const FLOOD_S = 9;

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

function get(socket: string, p: string, timeoutMs = 15_000): Promise<{ status: number; body: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path: p, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, ms: Date.now() - t0 }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${p}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** A client that sends one GET and then never reads (its socket paused). */
function stalled(connect: () => net.Socket, p: string, host: string): net.Socket {
  const s = connect();
  s.on('error', () => {});
  s.write(`GET ${p} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
  s.pause();
  return s;
}

describe('slow flow readers', () => {
  const node = new TestNode('sr');
  let a: ReturnType<TestNode['addPod']>;
  let b: ReturnType<TestNode['addPod']>;
  const procs: ChildProcess[] = [];
  const sockets: net.Socket[] = [];

  before(async () => {
    await node.start({ agentArgs: ['--monitor-aggregation', 'none', '--flows-stream-timeout', String(STALL_S)] });
    a = node.addPod('a');
    b = node.addPod('b');
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    for (const p of procs) p.kill('SIGKILL');
    await node.cleanup();
  });

  it('three stalled readers and a flood: under 300 MiB, the API answers, drops counted and told, stalled readers disconnected', async () => {
    const pid = node.agent!.pid!;
    // The UI server, run by the CLI as users run it.
    const ui = spawn(process.execPath, [CLI_BIN, '--socket', node.socket, 'ui', '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(ui);
    const uiPort = await new Promise<number>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('membrane ui did not print its URL in 20 s')), 20_000);
      let out = '';
      ui.stdout!.on('data', (d) => {
        out += d;
        const m = /http:\/\/127\.0\.0\.1:(\d+)\//.exec(out);
        if (m) {
          clearTimeout(t);
          resolve(Number(m[1]));
        }
      });
    });
    sockets.push(stalled(() => net.connect(node.socket), '/v1/flows?follow=1', 'agent'));
    sockets.push(stalled(() => net.connect(node.socket), '/v1/monitor', 'agent'));
    sockets.push(stalled(() => net.connect(uiPort, '127.0.0.1'), '/api/flows/stream', `127.0.0.1:${uiPort}`));
    const clients = async () => JSON.parse((await get(node.socket, '/v1/status')).body).monitor.streams.clients as number;
    for (let i = 0; i < 100 && (await clients()) < 3; i++) await sleep(100);
    assert.equal(await clients(), 3, 'three streaming clients connected');

    // A slow reader that catches up: observe --follow whose output is not read for a while (its stdout pipe fills).
    const observe = spawn(process.execPath, [CLI_BIN, '--socket', node.socket, 'observe', '--follow', '--to-pod', 'default/b'], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(observe);
    observe.stdout!.pause();

    const rss0 = rssMiB(pid);
    const flood = spawn('ip', ['netns', 'exec', a.ns, process.execPath, NETKIT, 'udp-flood', b.ip, '9000', String(FLOOD_S)], { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(flood);
    let sent = '';
    flood.stdout!.on('data', (d) => (sent += d));
    const floodDone = new Promise<void>((r) => flood.on('exit', () => r()));

    let rssMax = rss0;
    const lat: number[] = [];
    let failed = 0;
    const t0 = Date.now();
    let resumed = false;
    let observed = '';
    while (Date.now() - t0 < FLOOD_S * 1000 + 500) {
      rssMax = Math.max(rssMax, rssMiB(pid));
      try {
        const r = await get(node.socket, '/v1/healthz');
        if (r.status === 200) lat.push(r.ms);
        else failed++;
      } catch {
        failed++;
      }
      if (!resumed && Date.now() - t0 > 3000) {
        resumed = true; // the slow reader catches up after 3 s, before the stall bound
        observe.stdout!.on('data', (d) => (observed += d));
        observe.stdout!.resume();
      }
      await sleep(200);
    }
    await floodDone;
    await sleep(500);
    rssMax = Math.max(rssMax, rssMiB(pid));
    const st = JSON.parse((await get(node.socket, '/v1/status')).body).monitor;
    lat.sort((x, y) => x - y);
    console.log(
      `agent RSS ${rss0.toFixed(0)} MiB before, ${rssMax.toFixed(0)} MiB at most during the flood (${Number(sent.trim()).toLocaleString('en-US')} datagrams, ${st.flowsSeen.toLocaleString('en-US')} flows seen, ${st.lostEvents.toLocaleString('en-US')} lost in the kernel); ` +
        `/v1/healthz answered ${lat.length} times, p50 ${lat[Math.floor(lat.length / 2)]} ms, max ${lat[lat.length - 1]} ms, ${failed} failed; ` +
        `dropped for slow clients: flows ${st.streams.flows?.dropped}, monitor ${st.streams.monitor?.dropped}; disconnected: flows ${st.streams.flows?.disconnected}, monitor ${st.streams.monitor?.disconnected}`,
    );
    assert.ok(rssMax < 300, `agent RSS ${rssMax.toFixed(0)} MiB (bound 300 MiB)`);
    assert.equal(failed, 0, 'the agent answered every request during the flood');
    assert.ok(lat.length >= 10, `answered ${lat.length} health checks`);
    assert.ok(st.flowsSeen > 20_000, `a flood: ${st.flowsSeen} flows seen`);
    assert.ok(st.streams.flows.dropped > 0 && st.streams.monitor.dropped > 0, 'flows were dropped for the stalled readers and counted');
    // Stalled past the bound while flows were dropped for them: all three disconnected (the UI's through its server).
    assert.equal(st.streams.flows.disconnected, 2, 'the stalled flow reader and the UI stream were disconnected');
    assert.equal(st.streams.monitor.disconnected, 1, 'the stalled monitor reader was disconnected');
    const logFile = path.join(REPO, 'test-artifacts', `${node.prefix}-agent.log`);
    const disconnects = fs.readFileSync(logFile, 'utf8').split('\n').filter((l) => l.includes('stream client stayed behind: disconnected'));
    assert.equal(disconnects.length, 3, 'each disconnect logged');
    const metrics = (await get(node.socket, '/v1/metrics')).body;
    assert.match(metrics, /^membrane_flows_stream_dropped_total\{stream="flows"\} [1-9]\d*$/m);
    assert.match(metrics, /^membrane_flows_stream_disconnects_total\{stream="monitor"\} 1$/m);
    // The slow reader was told what it missed, in its own stream.
    assert.match(observed, /^\d+ flows dropped: client too slow$/m, `observe --follow printed the drops:\n${observed.slice(0, 2000)}`);
    assert.match(observed, /default\/a:\d+ \(ID:\d+\) -> default\/b:9000/);
    assert.equal(observe.exitCode, null, 'the slow reader that caught up is still connected');
    // And the agent still serves flows.
    const last = await get(node.socket, '/v1/flows?last=3&to_port=9000');
    assert.equal(last.body.trim().split('\n').length, 3);
  });
});
