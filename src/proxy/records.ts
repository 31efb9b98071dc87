import type { L7Record } from '../monitor/l7';

/**
 * L7 flow records: what the proxy tells the agent about every request and
 * response it handled. The shape is the agent's (src/monitor/l7.ts,
 * Monitor.ingestL7); the proxy
 * keeps them in a bounded queue until the agent has read them, so a stalled or
 * absent agent costs at most `capacity` records of memory (the oldest are
 * dropped and counted) and a restart of either side loses nothing queued.
 */
export type { L7Record } from '../monitor/l7';

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
