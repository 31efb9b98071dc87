/**
 * HTTP clients for the L7 tests, run inside a pod's network namespace.
 *
 *   httpc raw IP PORT BASE64
 *     writes the bytes on one connection, prints everything received (as
 *     text) once the server closes or 2 s pass without data.
 *   httpc hold IP PORT PATH N
 *     opens N keep-alive connections, one GET on each, prints "held N" (or
 *     "held K of N" after 30 s) and keeps them open, idle, until killed.
 *   httpc stream IP PORT PATH COUNT INTERVAL_MS [fresh]
 *     COUNT GET requests, INTERVAL_MS apart, on one keep-alive connection
 *     (or a new connection each with "fresh"); one JSON line per request:
 *     {i, t, status, lport, body} or {i, t, error} (t: when the request was
 *     sent, ms since the epoch). Each request has a 5 s timeout.
 */
import * as http from 'node:http';
import * as net from 'node:net';

function raw(ip: string, port: number, b64: string): void {
  const c = net.connect(port, ip, () => c.write(Buffer.from(b64, 'base64')));
  let out = '';
  let t = setTimeout(() => c.destroy(), 2000);
  c.on('data', (d) => {
    out += d.toString('latin1');
    clearTimeout(t);
    t = setTimeout(() => c.destroy(), 2000);
  });
  c.on('close', () => {
    clearTimeout(t);
    process.stdout.write(out);
  });
  c.on('error', (e) => process.stderr.write(`error: ${e.message}\n`));
}

async function stream(ip: string, port: number, path: string, count: number, interval: number, fresh: boolean): Promise<void> {
  const agent = new http.Agent({ keepAlive: !fresh, maxSockets: 1 });
  for (let i = 0; i < count; i++) {
    const started = Date.now();
    const line = await new Promise<Record<string, unknown>>((resolve) => {
      const req = http.get({ host: ip, port, path, agent, timeout: 5000, headers: fresh ? { connection: 'close' } : {} }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ i, t: started, status: res.statusCode, lport: req.socket?.localPort, body: body.trim() }));
        res.on('error', (e) => resolve({ i, t: started, error: e.message }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => resolve({ i, t: started, error: e.message }));
    });
    process.stdout.write(JSON.stringify(line) + '\n');
    const wait = interval - (Date.now() - started);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  agent.destroy();
}

async function hold(ip: string, port: number, path: string, n: number): Promise<void> {
  const sockets: net.Socket[] = [];
  let ok = 0;
  const one = () =>
    new Promise<void>((resolve) => {
      const c = net.connect(port, ip, () => c.write(`GET ${path} HTTP/1.1\r\nHost: ${ip}\r\n\r\n`));
      sockets.push(c);
      let got = '';
      const t = setTimeout(resolve, 30_000);
      c.on('data', (d) => {
        got += d.toString('latin1');
        if (/\r\n\r\n/.test(got)) {
          clearTimeout(t);
          ok++;
          resolve();
        }
      });
      c.on('error', () => resolve());
    });
  for (let i = 0; i < n; i += 50) await Promise.all(Array.from({ length: Math.min(50, n - i) }, one));
  process.stdout.write(ok === n ? `held ${n}\n` : `held ${ok} of ${n}\n`);
  setInterval(() => {}, 1 << 30);
}

const [mode, ip, port, ...rest] = process.argv.slice(2);
if (mode === 'raw') raw(ip, Number(port), rest[0]);
else if (mode === 'hold') void hold(ip, Number(port), rest[0], Number(rest[1]));
else if (mode === 'stream') void stream(ip, Number(port), rest[0], Number(rest[1]), Number(rest[2]), rest[3] === 'fresh');
else {
  process.stderr.write('usage: httpc raw IP PORT BASE64 | httpc hold IP PORT PATH N | httpc stream IP PORT PATH COUNT INTERVAL_MS [fresh]\n');
  process.exit(2);
}
