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
