/**
 * DNS clients run inside pod namespaces by the tests (`ip netns exec`), with
 * Node's resolver (c-ares, UDP) against one server:
 *   resolve-connect SERVER PORT NAME...   for each name: resolve A, then at once a TCP
 *                                         connection to the first address; prints JSON
 *                                         [{name, ip, ok, connectMs, error}]
 *   loop SERVER NAME SECONDS              one query after another for SECONDS; prints
 *                                         JSON {answered, failed, errors}
 * Every query and connection is bounded in time.
 */
import { promises as dns } from 'node:dns';
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
  } else {
    process.stderr.write(`unknown mode ${mode}\n`);
    process.exit(2);
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exit(1);
});
