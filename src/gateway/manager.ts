/**
 * The agent's Gateway manager: from the store's Gateway API objects and the
 * Services' backends to the proxy's Gateway listeners, the Gateways'
 * addresses on the node, and status.
 *
 * Addresses come from --gateway-address-pool (default 10.199.0.0/24): the
 * pool's first address is the *ingress address* the proxy's upstream
 * connections come from (never on a device; the ipcache gives it the reserved
 * identity `ingress`), the others are assigned to Gateways (a Gateway's
 * `spec.addresses[0]` is honoured when it lies in the pool and is free), kept
 * in state-dir/gateway/addresses.json, and added as /32 to the node's host
 * device, so they are local addresses of the node: reachable from outside
 * through any device that routes to it, and from pods like any node address.
 *
 * Status (GatewayClass, Gateway, HTTPRoute; see translate.ts) is written by
 * this agent in single-node mode; in cluster mode it is not written (one
 * writer per object is the operator's job, not implemented yet).
 */
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { RtNetlink } from '../netlink';
import type { ListenerConfig } from '../proxy/config';
import type { Frontend } from '../service/manager';
import type { Resource, ResourceRef, Store } from '../store/types';
import { stableJson } from '../store/types';
import { cidrContains, cidrSize, formatCidr, formatIp, ipAtOffset, parseCidr, parseIp, type Cidr } from '../util/ip';
import { mkdirp, readJson, writeJsonAtomic } from '../util/fsutil';
import type { Logger } from '../util/log';
import type { GatewayTable } from './model';
import { carryTransitions, translateGateways } from './translate';

export interface GatewayManagerOptions {
  stateDir: string;
  pool: string;
  /** The node's host device: Gateway addresses are added to it. */
  hostDevice: string;
  log: Logger;
}

type StatusStore = Pick<Store, 'list' | 'get'> & { setStatus?(ref: ResourceRef, status: unknown): void };

export class GatewayManager {
  readonly pool: Cidr;
  readonly ingressAddress: string;
  private readonly file: string;
  private addresses: Record<string, string>;
  private tables: GatewayTable[] = [];
  private statusWarned = false;
  /** The addresses last put on the host device (undefined: not yet checked). */
  private deviceState?: string;
  errors: string[] = [];
  /** Called when Gateway addresses were added to or removed from the host device (with the removed ones). */
  onAddressesChanged?: (removed: string[]) => void;

  constructor(
    private readonly opts: GatewayManagerOptions,
    private readonly store: StatusStore,
  ) {
    this.pool = parseCidr(opts.pool, 'gateway-address-pool');
    if (cidrSize(this.pool) < 4) throw new Error(`gateway-address-pool: "${opts.pool}" is too small (need at least a /30)`);
    this.ingressAddress = formatIp(ipAtOffset(this.pool, 1));
    const dir = path.join(opts.stateDir, 'gateway');
    mkdirp(dir);
    this.file = path.join(dir, 'addresses.json');
    this.addresses = readJson<Record<string, string>>(this.file) ?? {};
  }

  private assign(gateway: string, requested?: string): string | { reason: 'AddressNotAssigned' | 'AddressNotUsable'; message: string } {
    const cur = this.addresses[gateway];
    if (cur && (!requested || requested === cur)) return cur;
    const taken = new Set(Object.entries(this.addresses).filter(([k]) => k !== gateway).map(([, v]) => v));
    let ip: string | undefined;
    const refuse = (reason: 'AddressNotAssigned' | 'AddressNotUsable', message: string) => {
      // No address: the Gateway is not programmed, and gives back the one it had.
      if (cur) {
        delete this.addresses[gateway];
        writeJsonAtomic(this.file, this.addresses);
      }
      return { reason, message };
    };
    if (requested) {
      const pool = formatCidr(this.pool);
      if (!cidrContains(this.pool, parseIp(requested)) || requested === this.ingressAddress) return refuse('AddressNotUsable', `spec.addresses[0]: ${requested} is not an address of the Gateway pool ${pool} (--gateway-address-pool; its first address is the ingress address)`);
      if (taken.has(requested)) return refuse('AddressNotUsable', `spec.addresses[0]: ${requested} is used by another Gateway`);
      ip = requested;
    }
    const last = cidrSize(this.pool) - 2;
    for (let off = 2; !ip && off <= last; off++) {
      const c = formatIp(ipAtOffset(this.pool, off));
      if (!taken.has(c)) ip = c;
    }
    if (!ip) return refuse('AddressNotAssigned', `no address left in the Gateway pool ${formatCidr(this.pool)} (--gateway-address-pool)`);
    this.addresses[gateway] = ip;
    writeJsonAtomic(this.file, this.addresses);
    return ip;
  }

  /** Recompute every Gateway from the store and the Services' frontends; returns the proxy's Gateway listeners and their tables. */
  sync(frontends: Frontend[]): { listeners: ListenerConfig[]; gateways: Record<string, GatewayTable> } {
    const s = this.store;
    const gateways = s.list('Gateway');
    const t = translateGateways({
      classes: s.list('GatewayClass'),
      gateways,
      routes: s.list('HTTPRoute'),
      grants: s.list('ReferenceGrant'),
      namespaces: s.list('Namespace'),
      services: s.list('Service'),
      endpoints: (ns, name, port) => {
        const f = frontends.find((x) => x.type === 'ClusterIP' && x.service === `${ns}/${name}` && x.port === port);
        return f ? f.backends.filter((b) => !b.terminating).map((b) => ({ ip: b.ip, port: b.port })) : undefined;
      },
      address: (key) => {
        const gw = gateways.find((g) => `${g.metadata.namespace ?? 'default'}/${g.metadata.name}` === key);
        const req = gw?.spec?.addresses?.[0]?.value;
        return this.assign(key, typeof req === 'string' ? req : undefined);
      },
    });
    // Gateways that are gone (or no longer ours) give their address back.
    let released = false;
    for (const k of Object.keys(this.addresses)) {
      if (!t.gateways.includes(k)) {
        delete this.addresses[k];
        released = true;
      }
    }
    if (released) writeJsonAtomic(this.file, this.addresses);
    this.syncDevice();
    this.writeStatus(t.status);
    this.tables = t.tables;
    const listeners: ListenerConfig[] = [];
    const tables: Record<string, GatewayTable> = {};
    for (const tb of t.tables) {
      const name = `gw-${crypto.createHash('sha256').update(`${tb.gateway}:${tb.port}`).digest('hex').slice(0, 16)}`;
      listeners.push({ name, kind: 'http-gateway', address: tb.address, port: tb.port, protocol: 'tcp', transparent: false, sourceAddress: this.ingressAddress });
      tables[name] = tb;
    }
    return { listeners, gateways: tables };
  }

  /** The host device holds exactly the assigned Gateway addresses of the pool (as /32). */
  private syncDevice(): void {
    const want = new Set(Object.values(this.addresses));
    // Runs at every Service or Pod change: netlink only when the addresses changed (or the last attempt failed).
    const key = [...want].sort().join(',');
    if (key === this.deviceState && !this.errors.length) return;
    const errors: string[] = [];
    let changed = false;
    const removed: string[] = [];
    let nl: RtNetlink | undefined;
    try {
      nl = RtNetlink.open(null);
      const dev = nl.linkGet(this.opts.hostDevice);
      if (!dev) throw new Error(`host device ${this.opts.hostDevice} not found`);
      const have = new Set(
        nl
          .addrList(dev.index)
          .filter((a) => a.family === 4 && a.prefixLen === 32 && cidrContains(this.pool, parseIp(a.address)))
          .map((a) => a.address),
      );
      for (const a of want) {
        if (have.has(a)) continue;
        nl.addrAdd(dev.index, `${a}/32`, { noPrefixRoute: true });
        changed = true;
      }
      for (const a of have) {
        if (want.has(a)) continue;
        nl.addrDel(dev.index, `${a}/32`);
        removed.push(a);
        changed = true;
      }
    } catch (e) {
      errors.push(`Gateway addresses on ${this.opts.hostDevice}: ${(e as Error).message}`);
    } finally {
      nl?.close();
    }
    if (errors.join() !== this.errors.join()) for (const e of errors) this.opts.log.error('gateway addresses could not be set up', { error: e });
    this.errors = errors;
    if (!errors.length) this.deviceState = key;
    if (changed) {
      this.opts.log.info('gateway addresses', { addresses: [...want] });
      this.onAddressesChanged?.(removed);
    }
  }

  /** At the periodic resync: the next sync compares the host device with the addresses again (drift repair). */
  recheck(): void {
    this.deviceState = undefined;
  }

  private writeStatus(updates: ReturnType<typeof translateGateways>['status']): void {
    const set = this.store.setStatus?.bind(this.store);
    if (!set) {
      if (!this.statusWarned && updates.length) this.opts.log.info('gateway status is not written in cluster mode');
      this.statusWarned = true;
      return;
    }
    const now = new Date().toISOString();
    for (const u of updates) {
      const ref = { kind: u.kind, namespace: u.namespace, name: u.name };
      const cur: Resource | undefined = this.store.get(ref);
      if (!cur) continue;
      const next = carryTransitions(u.status, cur.status, now);
      if (stableJson(next) !== stableJson(cur.status)) set(ref, next);
    }
  }

  status() {
    return {
      pool: `${formatIp(this.pool.addr)}/${this.pool.prefixLen}`,
      ingressAddress: this.ingressAddress,
      gateways: Object.entries(this.addresses).map(([gateway, address]) => ({ gateway, address, ports: this.tables.filter((t) => t.gateway === gateway).map((t) => t.port), routes: [...new Set(this.tables.filter((t) => t.gateway === gateway).flatMap((t) => t.entries.map((e) => e.route)))] })),
      errors: this.errors,
    };
  }
}
