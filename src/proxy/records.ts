/**
 * L7 flow records: what the proxy tells the agent about every request and
 * response it handled. The shape is the agent's (Monitor.ingestL7); the proxy
 * keeps them in a bounded queue until the agent has read them, so a stalled or
 * absent agent costs at most `capacity` records of memory (the oldest are
 * dropped and counted) and a restart of either side loses nothing queued.
 */
export interface L7Endpoint {
  ip: string;
  port: number;
  identity: number;
  endpointId?: number;
}

export interface L7Record {
  time: number;
  kind: 'request' | 'response';
  direction: 'ingress' | 'egress';
  verdict: 'forwarded' | 'denied' | 'error';
  policy?: string;
  src: L7Endpoint;
  dst: L7Endpoint;
  http?: { method: string; url: string; protocol: string; host?: string; code?: number; latencyNs?: number; headers?: Record<string, string> };
  dns?: { query: string; qtypes: string[]; rcode?: string; ips?: string[]; ttls?: number[]; cnames?: string[] };
  route?: { gateway: string; route: string; backend?: string };
}

export class RecordQueue {
  private buf: L7Record[] = [];
  private head = 0;
  /** Records dropped because the queue was full, since the proxy started. */
  dropped = 0;
  /** Records handed out, since the proxy started. */
  delivered = 0;

  constructor(readonly capacity: number) {}

  push(r: L7Record): void {
    if (this.length >= this.capacity) {
      this.head++;
      this.dropped++;
    }
    this.buf.push(r);
    if (this.head > 4096 && this.head * 2 > this.buf.length) {
      this.buf = this.buf.slice(this.head);
      this.head = 0;
    }
  }

  get length(): number {
    return this.buf.length - this.head;
  }

  /** Take up to n records, oldest first. */
  take(n: number): L7Record[] {
    const out = this.buf.slice(this.head, this.head + n);
    this.head += out.length;
    this.delivered += out.length;
    if (this.head === this.buf.length) {
      this.buf = [];
      this.head = 0;
    }
    return out;
  }
}
