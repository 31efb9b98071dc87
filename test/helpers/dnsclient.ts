/**
 * DNS clients run inside pod namespaces by the tests (`ip netns exec`), with
 * Node's resolver (c-ares, UDP) against one server:
 *   resolve-connect SERVER PORT NAME...   for each name: resolve A, then at once a TCP
 *                                         connection to the first address; prints JSON
 *                                         [{name, ip, ok, connectMs, error}]
 *   loop SERVER NAME SECONDS              one query after another for SECONDS; prints
 *                                         JSON {answered, failed, errors}
 *   load SERVER NAME RATE SECONDS         RATE queries/s (paced, 8 sockets) for SECONDS; prints
 *                                         JSON {sent, answered, lost, latenciesUs (sorted)}
 *   flood SERVER NAME WINDOW SECONDS      WINDOW queries outstanding at all times (closed loop);
 *                                         prints JSON {answered, lost, qps}
 * Every query and connection is bounded in time.
 */
import { promises as dns } from 'node:dns';
import * as dgram from 'node:dgram';
import * as dnsPacket from 'dns-packet';
import * as net from 'node:net';

const [mode, server, ...args] = process.argv.slice(2);

function resolver(timeout = 2000, tries = 1): dns.Resolver {
  const r = new dns.Resolver({ timeout, tries });
  r.setServers([server]);
  return r;
}

function connect(ip: string, port: number, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = net.connect({ host: ip, port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`connect ${ip}:${port} timed out`));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.destroy();
      resolve(Number(process.hrtime.bigint() - t0) / 1e6);
    });
    s.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

async function main(): Promise<void> {
  if (mode === 'resolve-connect') {
    const [port, ...names] = args;
    const r = resolver();
    const out: { name: string; ip?: string; ok: boolean; connectMs?: number; error?: string }[] = [];
    for (const name of names) {
      try {
        const ips = await r.resolve4(name);
        const ms = await connect(ips[0], Number(port), 3000);
        out.push({ name, ip: ips[0], ok: true, connectMs: ms });
      } catch (e) {
        out.push({ name, ok: false, error: (e as Error).message });
      }
    }
    process.stdout.write(JSON.stringify(out) + '\n');
  } else if (mode === 'loop') {
    const [name, seconds] = args;
    const r = resolver(1000, 3);
    const end = Date.now() + Number(seconds) * 1000;
    let answered = 0;
    let failed = 0;
    const errors: string[] = [];
    while (Date.now() < end) {
      try {
        await r.resolve4(name);
        answered++;
      } catch (e) {
        failed++;
        if (errors.length < 5) errors.push((e as Error).message);
      }
      await new Promise((res) => setTimeout(res, 20));
    }
    process.stdout.write(JSON.stringify({ answered, failed, errors }) + '\n');
  } else if (mode === 'load' || mode === 'flood') {
    const [name, num, seconds] = args;
    const n = Number(num);
    const socks = Array.from({ length: 8 }, () => dgram.createSocket('udp4'));
    const pending = new Map<number, bigint>();
    const lat: number[] = [];
    let sent = 0;
    let answered = 0;
    let nextId = 1;
    const send = () => {
      const id = nextId;
      nextId = (nextId % 65535) + 1;
      pending.set(id, process.hrtime.bigint());
      const q = dnsPacket.encode({ id, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
      socks[sent % socks.length].send(q, 53, server);
      sent++;
    };
    const start = Date.now();
    const end = start + Number(seconds) * 1000;
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    for (const s of socks) {
      s.on('message', (b) => {
        const id = b.readUInt16BE(0);
        const t = pending.get(id);
        if (t === undefined) return;
        pending.delete(id);
        answered++;
        lat.push(Number(process.hrtime.bigint() - t) / 1000);
        if (mode === 'flood' && Date.now() < end) send();
      });
    }
    if (mode === 'flood') {
      for (let i = 0; i < n; i++) send();
      // Lost queries would shrink the window: refill what timed out (1 s).
      const refill = setInterval(() => {
        const now = process.hrtime.bigint();
        for (const [id, t] of pending) if (now - t > 1_000_000_000n) {
          pending.delete(id);
          if (Date.now() < end) send();
        }
      }, 200);
      setTimeout(() => {
        clearInterval(refill);
        setTimeout(done, 300);
      }, end - start);
    } else {
      // Paced: every millisecond, what is due.
      const tick = setInterval(() => {
        const due = Math.floor(((Date.now() - start) * n) / 1000);
        while (sent < due && Date.now() < end) send();
        if (Date.now() >= end) {
          clearInterval(tick);
          setTimeout(done, 1000);
        }
      }, 1);
    }
    await finished;
    for (const s of socks) s.close();
    lat.sort((a, b) => a - b);
    const secs = Number(seconds);
    process.stdout.write(JSON.stringify({ sent, answered, lost: sent - answered, qps: answered / secs, latenciesUs: mode === 'load' ? lat.map((x) => Math.round(x)) : undefined }) + '\n');
  } else {
    process.stderr.write(`unknown mode ${mode}\n`);
    process.exit(2);
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exit(1);
});
