/**
 * Tiny traffic tool run inside pod namespaces by the tests (`ip netns exec`):
 *   tcp-echo PORT | udp-echo PORT                     echo servers, print "ready"
 *   tcp-req HOST PORT MSG [TIMEOUT_MS]                one request, prints the reply, exit 1 on failure
 *   udp-req HOST PORT MSG [TIMEOUT_MS]
 *   tcp-stream HOST PORT [DURATION_MS]                 sends a line every 20 ms, prints "<sent> <echoed>" each 100 ms
 *   udp-burst HOST PORT COUNT [SPORT]                  exactly COUNT datagrams
 *   udp-flood HOST PORT SECONDS                        datagrams as fast as possible for SECONDS; prints the count
 *   ident NAME tcp:8080,udp:53                         servers that answer with NAME (which backend answered)
 *   who tcp|udp HOST PORT COUNT [TIMEOUT_MS]           COUNT new flows; prints the names that answered
 *   serve tcp:80,udp:80,...                            echo servers on several ports in one process
 *   udp-send HOST PORT HEX                             one datagram with these bytes (crafted payloads)
 *   probe '[{"ip":..,"port":..,"proto":"tcp"|"udp"}]' [TIMEOUT_MS]
 *                                                      all probes at once; prints a JSON array of booleans
 * Every client is bounded in time.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';

const [mode, ...args] = process.argv.slice(2);

function fail(msg: string): never {
  process.stderr.write(msg + '\n');
  process.exit(1);
}

switch (mode) {
  case 'tcp-echo': {
    const srv = net.createServer((s) => {
      s.on('error', () => {});
      s.pipe(s);
    });
    srv.listen(Number(args[0]), () => process.stdout.write('ready\n'));
    break;
  }
  case 'udp-echo': {
    const sock = dgram.createSocket('udp4');
    sock.on('message', (m, r) => sock.send(m, r.port, r.address));
    sock.bind(Number(args[0]), () => process.stdout.write('ready\n'));
    break;
  }
  case 'tcp-req': {
    const [host, port, msg, t] = args;
    const timer = setTimeout(() => fail(`tcp ${host}:${port}: timeout`), Number(t ?? 2000));
    const s = net.connect(Number(port), host, () => s.write(msg));
    let got = '';
    s.on('data', (d) => {
      got += d.toString();
      if (got.length >= msg.length) {
        clearTimeout(timer);
        process.stdout.write(got + '\n');
        s.destroy();
      }
    });
    s.on('error', (e) => fail(`tcp ${host}:${port}: ${e.message}`));
    break;
  }
  case 'udp-req': {
    const [host, port, msg, t] = args;
    const sock = dgram.createSocket('udp4');
    const timer = setTimeout(() => fail(`udp ${host}:${port}: timeout`), Number(t ?? 2000));
    sock.on('message', (m) => {
      clearTimeout(timer);
      process.stdout.write(m.toString() + '\n');
      sock.close();
    });
    sock.send(msg, Number(port), host);
    break;
  }
  case 'tcp-stream': {
    const [host, port, d] = args;
    let sent = 0;
    let echoed = 0;
    const s = net.connect(Number(port), host);
    s.setNoDelay(true);
    s.on('data', (b) => (echoed += b.toString().split('\n').length - 1));
    s.on('error', (e) => fail(`stream error after ${sent} sent, ${echoed} echoed: ${e.message}`));
    const tx = setInterval(() => {
      s.write(`${sent}\n`);
      sent++;
    }, 20);
    const report = setInterval(() => process.stdout.write(`${sent} ${echoed}\n`), 100);
    setTimeout(() => {
      clearInterval(tx);
      clearInterval(report);
      process.stdout.write(`${sent} ${echoed}\n`);
      s.destroy();
    }, Number(d ?? 10000));
    break;
  }
  case 'udp-flood': {
    // udp-flood HOST PORT SECONDS: as many datagrams as the socket takes (64 in flight), for SECONDS.
    const [host, port, secs] = args;
    const sock = dgram.createSocket('udp4');
    const end = Date.now() + Number(secs) * 1000;
    const payload = Buffer.alloc(32, 120);
    let sent = 0;
    let inFlight = 0;
    let done = false;
    const pump = () => {
      while (!done && inFlight < 64) {
        if (Date.now() >= end) {
          done = true;
          const wait = () => (inFlight ? setTimeout(wait, 10) : (process.stdout.write(`${sent}\n`), sock.close()));
          return wait();
        }
        inFlight++;
        sock.send(payload, Number(port), host, () => {
          inFlight--;
          sent++;
          pump();
        });
      }
    };
    sock.bind(0, pump);
    break;
  }
  case 'udp-burst': {
    // udp-burst HOST PORT COUNT [SPORT]: exactly COUNT datagrams, no reply expected.
    const [host, port, count, sport] = args;
    const sock = dgram.createSocket('udp4');
    sock.bind(Number(sport ?? 0), () => {
      let left = Number(count);
      const next = () => {
        if (left-- <= 0) return setTimeout(() => sock.close(), 50);
        sock.send(`burst-${left}`, Number(port), host, next);
      };
      next();
    });
    break;
  }
  case 'ident': {
    // ident NAME tcp:8080,udp:5353: TCP answers "NAME\n" then echoes; UDP answers NAME to every datagram.
    const [name, spec] = args;
    let pending = 0;
    for (const sp of spec.split(',')) {
      const [proto, port] = sp.split(':');
      pending++;
      const done = () => {
        if (--pending === 0) process.stdout.write('ready\n');
      };
      if (proto === 'tcp') {
        net
          .createServer((s) => {
            s.on('error', () => {});
            s.write(`${name}\n`);
            s.pipe(s);
          })
          .listen(Number(port), done);
      } else {
        const sock = dgram.createSocket('udp4');
        sock.on('message', (_m, r) => sock.send(name, r.port, r.address));
        sock.bind(Number(port), done);
      }
    }
    break;
  }
  case 'who': {
    // who tcp|udp HOST PORT COUNT [TIMEOUT_MS]: COUNT separate connections/datagrams (new source port each);
    // prints a JSON array of the names that answered ("" for no answer).
    const [proto, host, port, count, t] = args;
    const timeout = Number(t ?? 1500);
    const one = () =>
      new Promise<string>((resolve) => {
        let done = false;
        const finish = (v: string) => {
          if (!done) {
            done = true;
            clearTimeout(timer);
            cleanup();
            resolve(v);
          }
        };
        const timer = setTimeout(() => finish(''), timeout);
        let cleanup = () => {};
        if (proto === 'tcp') {
          const s = net.connect(Number(port), host);
          let buf = '';
          s.on('data', (d) => {
            buf += d.toString();
            if (buf.includes('\n')) finish(buf.split('\n')[0]);
          });
          s.on('error', (e: NodeJS.ErrnoException) => finish(`!${e.code}`));
          cleanup = () => s.destroy();
        } else {
          const sock = dgram.createSocket('udp4');
          sock.on('message', (m) => finish(m.toString()));
          sock.on('error', () => finish(''));
          sock.send('who', Number(port), host);
          cleanup = () => sock.close();
        }
      });
    (async () => {
      const out: string[] = [];
      const n = Number(count);
      for (let i = 0; i < n; i += 10) out.push(...(await Promise.all(Array.from({ length: Math.min(10, n - i) }, one))));
      process.stdout.write(JSON.stringify(out) + '\n');
    })();
    break;
  }
  case 'udp-send': {
    const [host, port, hex] = args;
    const sock = dgram.createSocket('udp4');
    sock.send(Buffer.from(hex, 'hex'), Number(port), host, (e) => {
      sock.close();
      if (e) fail(`udp-send ${host}:${port}: ${e.message}`);
    });
    break;
  }
  case 'serve': {
    let pending = 0;
    for (const spec of args[0].split(',')) {
      const [proto, port] = spec.split(':');
      pending++;
      const done = () => {
        if (--pending === 0) process.stdout.write('ready\n');
      };
      if (proto === 'tcp') {
        const srv = net.createServer((s) => {
          s.on('error', () => {});
          s.pipe(s);
        });
        srv.listen(Number(port), done);
      } else {
        const sock = dgram.createSocket('udp4');
        sock.on('message', (m, r) => sock.send(m, r.port, r.address));
        sock.bind(Number(port), done);
      }
    }
    break;
  }
  case 'probe': {
    const targets: { ip: string; port: number; proto: 'tcp' | 'udp' }[] = JSON.parse(args[0]);
    const timeout = Number(args[1] ?? 1500);
    const one = (t: (typeof targets)[number]) =>
      new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => finish(false), timeout);
        let finished = false;
        let cleanup = () => {};
        const finish = (ok: boolean) => {
          if (finished) return;
          finished = true;
          clearTimeout(timer);
          cleanup();
          resolve(ok);
        };
        if (t.proto === 'tcp') {
          const s = net.connect(t.port, t.ip, () => s.write('probe'));
          s.on('data', () => finish(true));
          s.on('error', () => finish(false));
          cleanup = () => s.destroy();
        } else {
          const sock = dgram.createSocket('udp4');
          sock.on('message', () => finish(true));
          sock.on('error', () => finish(false));
          sock.send('probe', t.port, t.ip);
          cleanup = () => sock.close();
        }
      });
    Promise.all(targets.map(one)).then((r) => process.stdout.write(JSON.stringify(r) + '\n'));
    break;
  }
  default:
    fail(`netkit: unknown mode ${mode}`);
}
