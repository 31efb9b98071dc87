import * as fs from 'node:fs';
import * as net from 'node:net';

/** Is something accepting connections on this Unix socket? (A stale socket file is not.) */
export function socketServing(sock: string): Promise<boolean> {
  if (!fs.existsSync(sock)) return Promise.resolve(false);
  return new Promise<boolean>((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}
