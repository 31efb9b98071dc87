/**
 * Typed loader for the Membrane native addon (native/build/Release/membrane.node).
 *
 * The addon is resolved from env MEMBRANE_NATIVE (absolute path to a .node file)
 * or from the repository root (this file compiles to dist/src/bpf, three levels
 * below the root). Every function throws an Error carrying {errno, code, syscall}
 * and a message naming the operation and the object/map/program involved.
 *
 * fd ownership: every fd returned (objProgFd, objMapFd, objGet, linkCreateTcx,
 * nsOpen, nsCurrent, nlOpen) is owned by the caller and must be closed with close().
 */
import * as path from 'node:path';

export interface MapInfo {
  id: number;
  /** BPF_MAP_TYPE_* */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
  btfId: number;
  btfKeyTypeId: number;
  btfValueTypeId: number;
}

export interface ProgInfo {
  id: number;
  /** BPF_PROG_TYPE_* */
  type: number;
  name: string;
  /** 8-byte program tag, hex */
  tag: string;
  /** Cumulative nanoseconds spent running it (counted only while kernel.bpf_stats_enabled = 1). */
  runTimeNs: number;
  /** Cumulative runs (same condition). */
  runCount: number;
}

export interface LinkInfo {
  id: number;
  /** BPF_LINK_TYPE_* (tcx = 11) */
  type: number;
  progId: number;
  /** tcx, netkit and xdp links */
  ifindex?: number;
  /** tcx/netkit/netns links (BPF_TCX_INGRESS = 46, BPF_TCX_EGRESS = 47) */
  attachType?: number;
}

export interface NativeTestRunOpts {
  data: Buffer;
  /** program context, e.g. a struct __sk_buff for tc programs (see skbCtx) */
  ctx?: Buffer;
  repeat?: number;
  /** output packet buffer size; default data.length + 512 */
  dataSizeOut?: number;
  /** output ctx buffer size; default ctx.length */
  ctxSizeOut?: number;
}

export interface TestRunResult {
  retval: number;
  data: Buffer;
  ctx: Buffer | null;
  /** average ns per run */
  duration: number;
}

export type BtfKind =
  | 'void' | 'int' | 'ptr' | 'array' | 'struct' | 'union' | 'enum' | 'fwd' | 'func'
  | 'func_proto' | 'var' | 'datasec' | 'float' | 'decl_tag' | 'unknown';

/** A BTF type after resolving typedef/volatile/const/restrict/type_tag. */
export interface BtfType {
  kind: BtfKind;
  /** '' for anonymous types; the C name otherwise ('unsigned int', 'ep_config') */
  name: string;
  size: number;
  /** typedef names passed while resolving, outermost first (e.g. ['__be16', '__u16']) */
  typedefs?: string[];
  /** int and enum */
  signed?: boolean;
  /** int: number of bits */
  bits?: number;
  bool?: boolean;
  char?: boolean;
  /** array */
  elemType?: BtfType;
  nelems?: number;
  /** anonymous struct/union only (named ones are listed by btfStructs) */
  members?: BtfMember[];
}

export interface BtfMember {
  name: string;
  bitOffset: number;
  /** 0 unless a bitfield */
  bitSize: number;
  type: BtfType;
}

export interface BtfStruct {
  name: string;
  size: number;
  members: BtfMember[];
}

export interface BtfDatasecVar {
  name: string;
  offset: number;
  size: number;
  /** first named type under const/volatile: '__u32', 'ep_config', ... */
  typeName: string;
  type: BtfType;
}

export interface MembraneNative {
  // ---- util ----
  close(fd: number): void;

  // ---- objects (handle table of open bpf_object*) ----
  objOpen(path: string, pinRoot: string | null): number;
  /** memcpy into the .rodata initial value; the Buffer must be exactly the variable's size. */
  objSetRodata(handle: number, varName: string, value: Buffer): void;
  /** bpf_map__reuse_fd: libbpf dups fd, the caller keeps ownership of its fd. */
  objReuseMap(handle: number, mapName: string, fd: number): void;
  objLoad(handle: number): void;
  /** A dup of the program fd, owned by the caller (survives objClose). */
  objProgFd(handle: number, progName: string): number;
  /** A dup of the map fd, owned by the caller (survives objClose). */
  objMapFd(handle: number, mapName: string): number;
  objProgNames(handle: number): string[];
  objMapNames(handle: number): string[];
  /** Idempotent. */
  objClose(handle: number): void;
  objPin(fd: number, path: string): void;
  /** Throws code ENOENT if nothing is pinned there. */
  /** fileFlags: e.g. BPF_F_RDONLY (8) for a read-only map fd. */
  objGet(path: string, fileFlags?: number): number;
  /** The maps an opened (not yet loaded) object defines, with the pin path libbpf will use. */
  objMapDefs(handle: number): { name: string; type: number; keySize: number; valueSize: number; maxEntries: number; flags: number; pinPath: string | null }[];
  /** mount -t bpf bpf <path> */
  mountBpffs(path: string): void;

  // ---- maps ----
  mapInfo(fd: number): MapInfo;
  /** bpf(BPF_MAP_CREATE); name <= 15 chars. */
  mapCreate(type: number, name: string, keySize: number, valueSize: number, maxEntries: number, flags: number): number;
  mapLookup(fd: number, key: Buffer, valueLen: number): Buffer | null;
  mapUpdate(fd: number, key: Buffer, value: Buffer, flags: number): void;
  /** The same update on a libuv worker thread (for updates that wait for an RCU grace period). */
  mapUpdateAsync(fd: number, key: Buffer, value: Buffer, flags: number): Promise<void>;
  mapDelete(fd: number, key: Buffer): boolean;
  mapNextKey(fd: number, key: Buffer | null, keyLen: number): Buffer | null;
  /** Whole map (maxCount caps the count, 0 = no cap); falls back to next-key iteration for map types without batch ops. */
  mapLookupBatch(fd: number, keyLen: number, valueLen: number, maxCount: number): { keys: Buffer; values: Buffer; count: number };
  /** The same read on a libuv worker thread. */
  mapLookupBatchAsync(fd: number, keyLen: number, valueLen: number, maxCount: number): Promise<{ keys: Buffer; values: Buffer; count: number }>;
  /** Falls back to per-element updates for map types without batch ops. */
  mapUpdateBatch(fd: number, keys: Buffer, values: Buffer, count: number, flags?: number): void;
  /** BPF_MAP_UPDATE_BATCH on a libuv worker thread (element by element where unsupported). */
  mapUpdateBatchAsync(fd: number, keys: Buffer, values: Buffer, count: number, flags?: number): Promise<void>;
  /** BPF_MAP_DELETE_ELEM on a libuv worker thread: false when the key was absent. */
  mapDeleteAsync(fd: number, key: Buffer): Promise<boolean>;
  /** Throws (ENOENT) on the first absent key; falls back to per-element deletes. */
  /** missingOk: keys already absent are skipped (ENOENT is not an error). */
  mapDeleteBatch(fd: number, keys: Buffer, count: number, missingOk?: boolean): void;
  numPossibleCpus(): number;

  // ---- links ----
  linkCreateTcx(progFd: number, ifindex: number, direction: 'ingress' | 'egress'): number;
  linkDetach(fd: number): void;
  /** BPF_LINK_UPDATE: replace the link's program atomically. */
  linkUpdate(linkFd: number, progFd: number): void;
  /** BPF_LINK_CREATE on a cgroup v2 directory (cgroup/connect4 and friends). */
  linkCreateCgroup(progFd: number, cgroupPath: string, attachType: number): number;
  linkInfo(fd: number): LinkInfo;

  // ---- programs ----
  progInfo(fd: number): ProgInfo;
  progTestRun(progFd: number, opts: NativeTestRunOpts): TestRunResult;

  // ---- BTF ----
  btfStructs(objPath: string): BtfStruct[];
  btfDatasecVars(objPath: string, secName: string): BtfDatasecVar[];

  // ---- ring buffer ----
  /** The callback runs on the JS thread from the event loop, once per record (a copy). */
  ringbufOpen(mapFd: number, callback: (record: Buffer) => void): number;
  /**
   * Batch mode: per turn of the event loop, up to maxRecords records are copied
   * back to back into `batch` (u32 length, u32 flags (1 = truncated), bytes
   * padded to 8) and callback(count, bytes) is called once.
   */
  ringbufOpen(mapFd: number, callback: (count: number, bytes: number) => void, batch: Buffer, maxRecords: number): number;
  /** Idempotent; may be called from inside the callback. */
  ringbufClose(handle: number): void;
  /**
   * Batch mode with a reader thread: the thread drains the kernel ring into a
   * staging ring of stagingBytes; per turn of the event loop up to maxRecords
   * staged records are copied into `batch` (same layout as ringbufOpen's batch
   * mode) and callback(count, bytes) is called once.
   */
  ringbufThreadOpen(mapFd: number, callback: (count: number, bytes: number) => void, batch: Buffer, maxRecords: number, stagingBytes: number): number;
  /** Stops and joins the thread; idempotent; may be called from inside the callback. */
  ringbufThreadClose(handle: number): void;
  /** Records staged by the thread, delivered to the callback, and dropped because the staging ring was full. */
  ringbufThreadStats(handle: number): { staged: number; delivered: number; dropped: number } | undefined;

  // ---- netns / netlink (native/src/netns.c, netlink.c) ----
  nsOpen(path: string): number;
  nsCurrent(): number;
  nsRun<T>(fd: number, fn: () => T): T;
  nsIdentity(fd: number): { dev: number; ino: number };
  nlOpen(protocol: number, netnsFd: number): number;
  nlSend(fd: number, buf: Buffer): void;
  nlRecv(fd: number, timeoutMs: number): Buffer | null;
}

let cached: MembraneNative | undefined;

/** Path of the addon that native() loads. */
export function nativePath(): string {
  const env = process.env.MEMBRANE_NATIVE;
  if (env) return path.resolve(env);
  // dist/src/bpf -> repo root
  return path.resolve(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'membrane.node');
}

/** The addon, loaded on first use. */
export function native(): MembraneNative {
  if (!cached) {
    const p = nativePath();
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      cached = require(p) as MembraneNative;
    } catch (e) {
      const err = new Error(`cannot load the Membrane native addon from ${p} (build it with: npx node-gyp rebuild --directory native): ${(e as Error).message}`);
      (err as Error & { cause?: unknown }).cause = e;
      throw err;
    }
  }
  return cached;
}
