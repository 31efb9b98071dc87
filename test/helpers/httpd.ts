/**
 * A small HTTP server for the L7 tests, run inside a pod's network namespace:
 *   node dist/test/helpers/httpd.js PORT [PORT...]
 * prints "ready" once every port listens. Each response is JSON describing
 * what the server received: method, url, the client's address and port as the
 * server sees them, headers (raw pairs) and the body length. GET /chunked
 * answers in two chunks (Transfer-Encoding: chunked); /big?n=N with N bytes.
 * Idle keep-alive connections stay open for a minute. Stops on SIGTERM/SIGKILL.
 * With HTTPD_NAME set, each answer names it (`pod`); `host` is the Host header.
 */
import * as http from 'node:http';

let served = 0;
const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
  let n = 0;
  req.on('data', (d: Buffer) => (n += d.length));
  req.on('end', () => {
    served++;
    const url = new URL(req.url ?? '/', 'http://x');
    const info = {
      method: req.method,
      url: req.url,
      remote: `${(req.socket.remoteAddress ?? '').replace(/^::ffff:/, '')}:${req.socket.remotePort}`,
      headers: req.rawHeaders,
      bodyBytes: n,
      served,
      // The pod that answered (HTTPD_NAME), and the request's host as the server saw it.
      ...(process.env.HTTPD_NAME ? { pod: process.env.HTTPD_NAME } : {}),
      host: req.headers.host,
    };
    if (url.pathname.endsWith('/chunked')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write(JSON.stringify(info).slice(0, 10));
      setTimeout(() => res.end(JSON.stringify(info).slice(10) + '\n'), 20);
      return;
    }
    if (url.pathname.endsWith('/big')) {
      const size = Number(url.searchParams.get('n') ?? '1000');
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
      res.end(Buffer.alloc(size, 0x61));
      return;
    }
    const body = JSON.stringify(info) + '\n';
    if (url.pathname.endsWith('/slow')) {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      }, Number(url.searchParams.get('ms') ?? '300'));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
};

async function main(): Promise<void> {
  const ports = process.argv.slice(2).map(Number);
  if (!ports.length || ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) {
    process.stderr.write('usage: httpd PORT [PORT...]\n');
    process.exit(2);
  }
  for (const port of ports) {
    const s = http.createServer(handler);
    s.keepAliveTimeout = 60_000;
    s.headersTimeout = 65_000;
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, () => resolve());
    });
  }
  process.stdout.write('ready\n');
}

void main();
