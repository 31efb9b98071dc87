/**
 * Fixed-size binary codecs for BPF map keys/values. Generated struct codecs live
 * in src/datapath/maps.gen.ts (scripts/gen-codecs.js).
 *
 * encode(v) returns a new Buffer of exactly `size` bytes; encode(v, out, offset)
 * writes into out at offset (zeroing the region first) and returns out.
 * decode(b, offset) reads `size` bytes at offset.
 */
export interface Codec<T> {
  size: number;
  encode(v: T, out?: Buffer, offset?: number): Buffer;
  decode(b: Buffer, offset?: number): T;
}

function target(size: number, out?: Buffer, offset = 0): Buffer {
  if (!out) return Buffer.alloc(size);
  if (offset < 0 || offset + size > out.length) throw new RangeError(`codec: ${size} bytes at offset ${offset} do not fit a ${out.length}-byte buffer`);
  out.fill(0, offset, offset + size);
  return out;
}

/** Raw bytes: encode requires exactly `size` bytes; decode returns a copy. */
export function rawCodec(size: number): Codec<Buffer> {
  return {
    size,
    encode(v: Buffer, out?: Buffer, offset = 0): Buffer {
      if (!((v as unknown) instanceof Uint8Array)) throw new TypeError(`rawCodec(${size}): value must be a Buffer`);
      if (v.length !== size) throw new RangeError(`rawCodec(${size}): got ${v.length} bytes, expected ${size}`);
      const b = target(size, out, offset);
      b.set(v, offset);
      return b;
    },
    decode(b: Buffer, offset = 0): Buffer {
      return Buffer.from(b.subarray(offset, offset + size));
    },
  };
}

function intCodec<T>(size: number, write: (b: Buffer, v: T, o: number) => void, read: (b: Buffer, o: number) => T): Codec<T> {
  return {
    size,
    encode(v: T, out?: Buffer, offset = 0): Buffer {
      const b = target(size, out, offset);
      write(b, v, offset);
      return b;
    },
    decode(b: Buffer, offset = 0): T {
      return read(b, offset);
    },
  };
}

/** Host (little-endian) integers. */
export const u8Codec: Codec<number> = intCodec(1, (b, v, o) => b.writeUInt8(v, o), (b, o) => b.readUInt8(o));
export const u16Codec: Codec<number> = intCodec(2, (b, v, o) => b.writeUInt16LE(v, o), (b, o) => b.readUInt16LE(o));
export const u32Codec: Codec<number> = intCodec(4, (b, v, o) => b.writeUInt32LE(v, o), (b, o) => b.readUInt32LE(o));
export const u64Codec: Codec<bigint> = intCodec(8, (b, v, o) => b.writeBigUInt64LE(BigInt(v), o), (b, o) => b.readBigUInt64LE(o));
/** Network-order 16/32-bit values (__be16/__be32): host numbers, big-endian bytes. */
export const be16Codec: Codec<number> = intCodec(2, (b, v, o) => b.writeUInt16BE(v, o), (b, o) => b.readUInt16BE(o));
export const be32Codec: Codec<number> = intCodec(4, (b, v, o) => b.writeUInt32BE(v, o), (b, o) => b.readUInt32BE(o));

/** A value that is a file descriptor when written and a kernel object id when read (PROG_ARRAY, *_OF_MAPS). */
export interface FdRefValue {
  fd: number;
  id: number;
}

/** fd-valued maps: encode writes the fd, decode returns the id the kernel reports (fd -1). */
export const fdRefCodec: Codec<FdRefValue> = intCodec(
  4,
  (b, v, o) => b.writeUInt32LE(v.fd, o),
  (b, o) => ({ fd: -1, id: b.readUInt32LE(o) }),
);
