/**
 * The flow store: the last N events as compact records in preallocated
 * typed-array columns (no JS object per flow), in chunks of CHUNK slots
 * allocated as the ring first fills. A slot holds the reception time, 32-bit
 * references to the interned contexts of both ends and of the interface
 * (context.ts), and the datapath's record as it came from the ring buffer
 * (headers and the first bytes of the packet); an L7 record from a proxy is
 * kept as a (string-interned) object beside its slot. Flows are built from a
 * slot only when read (flow.ts).
 *
 * Every record has a sequence number (0, 1, ...); slot = seq % capacity. The
 * ring holds seq in [oldest, head). Bounds: a count (`--flows-buffer`) and
 * memory (`--flows-memory`): the slots take at most 7/8 of the memory bound,
 * and the variable part (context snapshots and L7 records) the rest; when it
 * exceeds its share the oldest flows are evicted.
 */

/** Slots per chunk. */
export const CHUNK = 4096;
const CHUNK_SHIFT = 12;
/** Bytes kept of a datapath record: the largest event (drop_event, 164 bytes), rounded to 8. */
export const RAW_BYTES = 168;
/** Bytes of one slot in the columns: time (8), src/dst/ifc/aux (4 x 4), raw length (2), raw record. */
export const SLOT_BYTES = 8 + 16 + 2 + RAW_BYTES;

export interface StoreLimits {
  /** At most this many flows. */
  count: number;
  /** At most this many bytes for the whole store (slots, context snapshots, L7 records). */
  memory: number;
}

export class Chunk {
  readonly time: Float64Array;
  readonly src: Uint32Array;
  readonly dst: Uint32Array;
  readonly ifc: Uint32Array;
  /** Kind-specific: for L7 flows, nothing (the object is in `objs`). */
  readonly aux: Uint32Array;
  readonly len: Uint16Array;
  readonly raw: Buffer;
  /** L7 records (and other object-backed flows), created on first use. */
  objs?: unknown[];
  constructor(readonly slots: number) {
    this.time = new Float64Array(slots);
    this.src = new Uint32Array(slots);
    this.dst = new Uint32Array(slots);
    this.ifc = new Uint32Array(slots);
    this.aux = new Uint32Array(slots);
    this.len = new Uint16Array(slots);
    this.raw = Buffer.alloc(slots * RAW_BYTES);
  }
}

/** Release hook: called for a slot's references before it is overwritten or evicted. */
export type ReleaseFn = (c: Chunk, i: number) => void;

export class FlowRing {
  readonly capacity: number;
  readonly memory: number;
  /** Bytes the variable part (contexts, L7 records) may take. */
  readonly extraBudget: number;
  readonly chunks: Chunk[] = [];
  /** Sequence number of the next record. */
  head = 0;
  /** Sequence number of the oldest record kept. */
  oldest = 0;
  /** Bytes of L7 records (and other objects) held by slots. */
  objBytes = 0;

  constructor(limits: StoreLimits, private readonly release: ReleaseFn, private readonly extraBytes: () => number) {
    if (!(limits.count >= 1)) throw new RangeError(`flows buffer: ${limits.count} must be at least 1`);
    const bySlots = Math.floor((limits.memory * 7) / 8 / SLOT_BYTES);
    if (bySlots < 1) throw new RangeError(`flows memory: ${limits.memory} bytes hold no flow (at least ${Math.ceil((SLOT_BYTES * 8) / 7)})`);
    this.capacity = Math.min(limits.count, bySlots);
    this.memory = limits.memory;
    this.extraBudget = limits.memory - this.capacity * SLOT_BYTES;
  }

  get count(): number {
    return this.head - this.oldest;
  }

  /** Bytes the store holds now: allocated slots, context snapshots, L7 records. */
  bytes(): number {
    let slots = 0;
    for (const c of this.chunks) slots += c.slots;
    return slots * SLOT_BYTES + this.extraBytes() + this.objBytes;
  }

  /** The chunk and index of a slot. */
  chunkOf(seq: number): Chunk {
    return this.chunks[(seq % this.capacity) >>> CHUNK_SHIFT];
  }

  indexOf(seq: number): number {
    return (seq % this.capacity) & (CHUNK - 1);
  }

  has(seq: number): boolean {
    return seq >= this.oldest && seq < this.head;
  }

  /**
   * Take the next slot (evicting the oldest record when full) and return its
   * sequence number; the caller fills chunkOf(seq) at indexOf(seq).
   */
  next(): number {
    const seq = this.head;
    const pos = seq % this.capacity;
    const ci = pos >>> CHUNK_SHIFT;
    if (ci >= this.chunks.length) this.chunks.push(new Chunk(Math.min(CHUNK, this.capacity - ci * CHUNK)));
    if (this.head - this.oldest === this.capacity) {
      this.release(this.chunks[ci], pos & (CHUNK - 1));
      this.oldest++;
    }
    this.head++;
    return seq;
  }

  /** Evict the oldest records while the variable part is over its budget. */
  trim(): number {
    let n = 0;
    while (this.oldest < this.head && this.extraBytes() + this.objBytes > this.extraBudget) {
      const pos = this.oldest % this.capacity;
      this.release(this.chunks[pos >>> CHUNK_SHIFT], pos & (CHUNK - 1));
      this.oldest++;
      n++;
    }
    return n;
  }
}
