/**
 * Address blocks: the prefixes Kubernetes NetworkPolicy ipBlocks name, each
 * with an identity that stands for "this address" whoever holds it (pods and
 * nodes included). The desired state of mb_ipblock (LPM, same key as the
 * ipcache); the datapath consults it for endpoints whose policy names such
 * identities, when the peer's own identity found no entry.
 */
import { IpcacheKey, ipcacheKey } from '../datapath/datapath';
import type { MapTable } from '../datapath/reconciler';
import { parseCidr } from '../util/ip';

export class AddressBlocks {
  constructor(private readonly table: MapTable<IpcacheKey, number>) {}

  /** The identity of `prefix` (undefined: the prefix is no longer named by any policy). */
  set(prefix: string, identity: number | undefined): void {
    const c = parseCidr(prefix);
    const key = ipcacheKey(c.addr, c.prefixLen);
    if (identity === undefined) this.table.delete(key);
    else this.table.upsert(key, identity);
  }
}
