/**
 * BpfObject: a libbpf bpf_object (ELF) through open -> setConst/reuseMap -> load.
 * program()/map() hand out *dup'd* fds (new BpfProgram/BpfMap the caller owns
 * and must close); close() releases the object itself. Pinned maps, pinned or
 * attached links and fds handed out stay alive after close().
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bpfUsageError, wrap } from './errors';
import { BpfMap } from './map';
import { native } from './native';
import { BpfProgram } from './prog';

export interface BpfObjectOpenOpts {
  /** directory for maps declared with LIBBPF_PIN_BY_NAME (default /sys/fs/bpf) */
  pinRoot?: string;
}

export class BpfObject {
  private handle: number;
  private loaded = false;
  /** basename of the ELF, for messages */
  readonly name: string;

  private constructor(
    handle: number,
    readonly path: string,
    readonly pinRoot: string | undefined,
  ) {
    this.handle = handle;
    this.name = pathBase(path);
  }

  static open(objPath: string, opts: BpfObjectOpenOpts = {}): BpfObject {
    const h = wrap({ op: 'open', object: objPath, path: objPath }, () => native().objOpen(objPath, opts.pinRoot ?? null));
    return new BpfObject(h, objPath, opts.pinRoot);
  }

  private h(op: string): number {
    if (this.handle < 0) throw bpfUsageError({ op, object: this.name }, 'object is closed', 'EBADF', 9);
    return this.handle;
  }

  /** Set a `volatile const` (.rodata) variable before load; value must be exactly its size. */
  setConst(varName: string, value: Buffer): this {
    const h = this.h('setConst');
    wrap({ op: `setConst '${varName}'`, object: this.name }, () => native().objSetRodata(h, varName, value));
    return this;
  }

  /** Use an existing map (fd or BpfMap; not consumed) instead of creating one at load. */
  reuseMap(name: string, fdOrMap: number | BpfMap<unknown, unknown>): this {
    const h = this.h('reuseMap');
    const fd = typeof fdOrMap === 'number' ? fdOrMap : fdOrMap.fd;
    wrap({ op: 'reuseMap', map: name }, () => native().objReuseMap(h, name, fd));
    return this;
  }

  /** Create maps (or reuse pinned ones), load and verify programs. Errors carry the verifier log tail. */
  load(): this {
    const h = this.h('load');
    wrap({ op: 'load', object: this.name, path: this.path }, () => native().objLoad(h));
    this.loaded = true;
    return this;
  }

  get isLoaded(): boolean {
    return this.loaded;
  }

  /** A new BpfProgram with its own fd (the caller closes it). */
  program(name: string): BpfProgram {
    const h = this.h('program');
    const fd = wrap({ op: 'get program fd', program: name }, () => native().objProgFd(h, name));
    return new BpfProgram(fd, name);
  }

  /** A new BpfMap with its own fd (the caller closes it). */
  map(name: string): BpfMap {
    const h = this.h('map');
    const fd = wrap({ op: 'get map fd', map: name }, () => native().objMapFd(h, name));
    try {
      return BpfMap.fromFd(fd, name);
    } catch (e) {
      native().close(fd);
      throw e;
    }
  }

  programNames(): string[] {
    return native().objProgNames(this.h('programNames'));
  }

  /** Definitions of the object's maps (before load) and where libbpf pins them. */
  mapDefs() {
    return native().objMapDefs(this.h('mapDefs'));
  }

  /**
   * Remove pins of maps whose layout no longer matches this object's
   * definition (an upgrade changed a map): libbpf would refuse to reuse them.
   * Returns the names of the maps whose pins were removed (they are created
   * anew, empty, at load).
   */
  dropIncompatiblePins(): string[] {
    const dropped: string[] = [];
    for (const d of this.mapDefs()) {
      if (!d.pinPath || !fs.existsSync(d.pinPath)) continue;
      let info;
      try {
        const fd = native().objGet(d.pinPath);
        try {
          info = native().mapInfo(fd);
        } finally {
          native().close(fd);
        }
      } catch {
        continue; // not a map we can inspect: let load report it
      }
      // Inner-map templates (maps of maps) are compared by the kernel itself; the rest field by field.
      const same = info.type === d.type && info.keySize === d.keySize && info.valueSize === d.valueSize && info.maxEntries === d.maxEntries && info.flags === d.flags;
      if (!same) {
        fs.unlinkSync(d.pinPath);
        dropped.push(d.name);
      }
    }
    return dropped;
  }

  /** Includes internal maps such as '<obj>.rodata'. */
  mapNames(): string[] {
    return native().objMapNames(this.h('mapNames'));
  }

  /** Idempotent. */
  close(): void {
    if (this.handle < 0) return;
    native().objClose(this.handle);
    this.handle = -1;
  }
}

function pathBase(p: string): string {
  return path.basename(p);
}
