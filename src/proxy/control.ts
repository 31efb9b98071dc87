/**
 * The control channel between the agent and the proxy: newline-delimited JSON
 * over the proxy's owner-only Unix socket (<proxy-dir>/control.sock). The
 * agent connects; either side may restart and the agent reconnects.
 *
 *   agent -> proxy   {type: 'config', config}   the whole configuration
 *                    {type: 'status'}           ask for a status message
 *   proxy -> agent   {type: 'hello', status}    on connect
 *                    {type: 'applied', generation, status, error?}
 *                    {type: 'records', records, dropped}  L7 flow records, oldest first
 *                    {type: 'status', status}   every few seconds and on request
 */
import type * as net from 'node:net';
import type { ProxyConfig } from './config';
import type { L7Record } from './records';

export interface ListenerStatus {
  name: string;
  kind: string;
  port: number;
  direction?: string;
  state: string;
  error?: string;
  connections: number;
}

export interface ProxyStatus {
  pid: number;
  startedAt: string;
  /** Generation of the configuration in force (null: none yet). */
  generation: number | null;
  listeners: ListenerStatus[];
  connections: number;
  requests: { forwarded: number; denied: number; error: number };
  records: { queued: number; dropped: number; delivered: number };
  /** The DNS proxy: queries handled, and answers released before the agent had learned their addresses. */
  dns?: { queries: number; denied: number; forwarded: number; errors: number; learnLate: number; learnNoAgent: number };
  rssBytes: number;
}

export type AgentMessage = { type: 'config'; config: ProxyConfig } | { type: 'status' } | { type: 'fqdn-ack'; seq: number };

/** Addresses an allowed DNS answer carried for a name a toFQDNs selector matches (the agent acks once they are in the maps). */
export interface FqdnLearn {
  type: 'fqdn';
  seq: number;
  /** The endpoint that asked. */
  endpoint: number;
  name: string;
  addresses: { ip: string; ttl: number }[];
  /** ms since epoch when the answer arrived (TTLs count from there). */
  time: number;
}

export type ProxyMessage =
  | { type: 'hello'; status: ProxyStatus }
  | { type: 'applied'; generation: number; status: ProxyStatus; error?: string }
  | { type: 'records'; records: L7Record[]; dropped: number }
  | { type: 'status'; status: ProxyStatus }
  | FqdnLearn;

/** Largest message accepted (a configuration for many identities is big, but not unbounded). */
export const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

/** NDJSON framing on a stream socket. */
export class LineChannel<In, Out> {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  closed = false;

  constructor(
    readonly socket: net.Socket,
    private readonly onMessage: (m: In) => void,
    private readonly onProblem: (e: Error) => void,
  ) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('close', () => (this.closed = true));
  }

  private onData(d: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = d.indexOf(10, start);
      if (nl < 0) break;
      const part = d.subarray(start, nl);
      const line = this.pending.length ? Buffer.concat([...this.pending, part]) : part;
      this.pending = [];
      this.pendingBytes = 0;
      start = nl + 1;
      if (line.length === 0) continue;
      let msg: In;
      try {
        msg = JSON.parse(line.toString('utf8')) as In;
      } catch (e) {
        this.onProblem(new Error(`control channel: message is not JSON: ${(e as Error).message}`));
        continue;
      }
      this.onMessage(msg);
    }
    if (start < d.length) {
      this.pending.push(d.subarray(start));
      this.pendingBytes += d.length - start;
      if (this.pendingBytes > MAX_MESSAGE_BYTES) {
        this.onProblem(new Error(`control channel: message larger than ${MAX_MESSAGE_BYTES} bytes`));
        this.socket.destroy();
      }
    }
  }

  /** Queue a message; false when the socket's buffer is over its high-water mark (back off). */
  send(m: Out): boolean {
    if (this.closed || this.socket.destroyed) return false;
    return this.socket.write(JSON.stringify(m) + '\n');
  }

  /** Bytes written but not yet taken by the kernel. */
  get backlog(): number {
    return this.socket.writableLength;
  }

  close(): void {
    this.closed = true;
    this.socket.destroy();
  }
}
