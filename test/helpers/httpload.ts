/**
 * A keep-alive HTTP load client for the Gateway tests and bench, run inside a
 * network namespace:
 *   node dist/test/helpers/httpload.js URL [--requests N | --seconds S] [--connections C] [--host H] [--header 'K: V']...
 * prints one JSON line: requests, errors (transport failures), codes (by
 * status), pods (by the echo server's `pod`), rps, p50Ms, p99Ms.
 */
import * as http from 'node:http';

interface Opts {
  url: URL;
  requests: number;
  seconds: number;
  connections: number;
  headers: Record<string, string>;
}

function parse(argv: string[]): Opts {
  const o: Opts = { url: new URL(argv[0]), requests: 0, seconds: 0, connections: 10, headers: {} };
  for (let i = 1; i < argv.length; i += 2) {
    const v = argv[i + 1];
    if (argv[i] === '--requests') o.requests = Number(v);
    else if (argv[i] === '--seconds') o.seconds = Number(v);
    else if (argv[i] === '--connections') o.connections = Number(v);
    else if (argv[i] === '--host') o.headers.host = v;
    else if (argv[i] === '--header') {
      const c = v.indexOf(':');
      o.headers[v.slice(0, c).trim()] = v.slice(c + 1).trim();
    } else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!o.requests && !o.seconds) o.requests = 100;
  return o;
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  const agent = new http.Agent({ keepAlive: true, maxSockets: o.connections });
  const codes: Record<string, number> = {};
  const pods: Record<string, number> = {};
  const lat: number[] = [];
  let sent = 0;
  let errors = 0;
  const firstError: string[] = [];
  const deadline = o.seconds ? Date.now() + o.seconds * 1000 : Infinity;
  const more = () => (o.requests ? sent < o.requests : Date.now() < deadline);
  const one = () =>
    new Promise<void>((resolve) => {
      const t0 = process.hrtime.bigint();
      const req = http.request({ agent, host: o.url.hostname, port: o.url.port || 80, path: o.url.pathname + o.url.search, headers: o.headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => {
          lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
          codes[res.statusCode ?? 0] = (codes[res.statusCode ?? 0] ?? 0) + 1;
          try {
            const pod = JSON.parse(Buffer.concat(chunks).toString()).pod;
            if (pod) pods[pod] = (pods[pod] ?? 0) + 1;
          } catch {
            /* not an echo answer */
          }
          resolve();
        });
      });
      req.on('error', (e) => {
        errors++;
        if (firstError.length < 3) firstError.push(e.message);
        resolve();
      });
      req.end();
    });
  const started = Date.now();
  await Promise.all(
    Array.from({ length: o.connections }, async () => {
      while (more()) {
        sent++;
        await one();
      }
    }),
  );
  const secs = (Date.now() - started) / 1000;
  lat.sort((a, b) => a - b);
  const pct = (p: number) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))] : 0);
  agent.destroy();
  process.stdout.write(JSON.stringify({ requests: sent, errors, firstError, codes, pods, rps: Math.round(lat.length / secs), p50Ms: pct(50), p99Ms: pct(99) }) + '\n');
}

void main();
