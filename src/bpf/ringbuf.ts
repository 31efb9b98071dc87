/**
 * RingBufReader: delivers records of a BPF_MAP_TYPE_RINGBUF map to a callback
 * from the Node event loop (libbpf ring_buffer epoll fd watched by a uv_poll).
 * Each record is a fresh Buffer. While open, the reader keeps the event loop
 * alive. If onRecord throws, the error goes to onError (default: rethrown as an
 * uncaught exception); the reader stays open.
 */
import { bpfUsageError, wrap } from './errors';
import { BPF_MAP_TYPE, BpfMap } from './map';
import { native } from './native';

export interface RingBufReaderOpts {
  onError?: (err: unknown) => void;
}

export class RingBufReader {
  private handle: number;
  readonly mapName: string;

  constructor(map: BpfMap<unknown, unknown>, onRecord: (record: Buffer) => void, opts: RingBufReaderOpts = {}) {
    this.mapName = map.name;
    if (map.type !== BPF_MAP_TYPE.RINGBUF) throw bpfUsageError({ op: 'open ring buffer', map: map.name }, `map type ${map.type} is not RINGBUF (27)`);
    const onError = opts.onError;
    const cb = onError
      ? (b: Buffer) => {
          try {
            onRecord(b);
          } catch (e) {
            onError(e);
          }
        }
      : onRecord;
    this.handle = wrap({ op: 'open ring buffer', map: map.name }, () => native().ringbufOpen(map.fd, cb));
  }

  get closed(): boolean {
    return this.handle < 0;
  }

  /** Stop polling and free the reader (safe inside onRecord). Idempotent. The map fd is not closed. */
  close(): void {
    if (this.handle < 0) return;
    native().ringbufClose(this.handle);
    this.handle = -1;
  }
}

export interface RingBufBatchOpts {
  /** Size of the batch buffer (bytes); default 1 MiB. */
  bufferBytes?: number;
  /** Records per turn of the event loop at most (the rest is read on the next turn); default 4096. */
  maxRecords?: number;
  /**
   * Drain the kernel ring on a thread of its own into a staging ring of this
   * many bytes, so a busy event loop never makes the kernel drop events (only
   * a loop behind by more than the staging ring holds loses any, counted in
   * stats().dropped). Without it, the ring is read on the event loop.
   */
  stagingBytes?: number;
  onError?: (err: unknown) => void;
}

/** Header of each record in a batch: u32 length, u32 flags. */
export const RINGBUF_BATCH_HDR = 8;
/** Flag of a record cut short because it did not fit the batch buffer. */
export const RINGBUF_BATCH_TRUNCATED = 1;

/**
 * RingBufBatchReader: the ring buffer read in batches. Per turn of the event
 * loop, the addon copies up to maxRecords records into one preallocated buffer
 * and calls onBatch(buf, count, bytes) once, so a flood of events costs no JS
 * object per record and never starves the rest of the event loop (what is
 * left is read on the next turn). Records in `buf`: at offset o, u32 length
 * (buf.readUInt32LE(o)), u32 flags, then the record at o + 8; the next record
 * starts at o + 8 + length rounded up to 8. The buffer is reused: copy what
 * must outlive the callback.
 */
export class RingBufBatchReader {
  private handle: number;
  readonly mapName: string;
  readonly buffer: Buffer;

  constructor(map: BpfMap<unknown, unknown>, onBatch: (buf: Buffer, count: number, bytes: number) => void, opts: RingBufBatchOpts = {}) {
    this.mapName = map.name;
    if (map.type !== BPF_MAP_TYPE.RINGBUF) throw bpfUsageError({ op: 'open ring buffer', map: map.name }, `map type ${map.type} is not RINGBUF (27)`);
    const buf = Buffer.alloc(opts.bufferBytes ?? 1 << 20);
    this.buffer = buf;
    const onError = opts.onError;
    const cb = (count: number, bytes: number) => {
      if (!onError) return onBatch(buf, count, bytes);
      try {
        onBatch(buf, count, bytes);
      } catch (e) {
        onError(e);
      }
    };
    this.threaded = opts.stagingBytes !== undefined;
    this.handle = wrap({ op: 'open ring buffer', map: map.name }, () =>
      this.threaded ? native().ringbufThreadOpen(map.fd, cb, buf, opts.maxRecords ?? 4096, opts.stagingBytes!) : native().ringbufOpen(map.fd, cb, buf, opts.maxRecords ?? 4096),
    );
  }

  private readonly threaded: boolean;

  get closed(): boolean {
    return this.handle < 0;
  }

  /** With a reader thread: records staged, delivered, and dropped because the staging ring was full. */
  stats(): { staged: number; delivered: number; dropped: number } | undefined {
    return this.threaded && this.handle > 0 ? native().ringbufThreadStats(this.handle) : undefined;
  }

  /** Stop reading (and join the reader thread) and free the reader (safe inside onBatch). Idempotent. The map fd is not closed. */
  close(): void {
    if (this.handle < 0) return;
    if (this.threaded) native().ringbufThreadClose(this.handle);
    else native().ringbufClose(this.handle);
    this.handle = -1;
  }
}
