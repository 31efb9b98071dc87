/**
 * The overlay between nodes: one VXLAN device in collect-metadata ("external")
 * mode on UDP 8472 per node. Nothing in it is configured per peer: Membrane's
 * programs pick the remote node and the VNI (the source's security identity)
 * for every packet with bpf_skb_set_tunnel_key, and from_overlay (at the
 * device's tcx ingress) reads them back on arrival.
 *
 * The host reaches remote pods through the host device like local ones: each
 * remote node's pod CIDR is routed via the host device (with the pod MTU),
 * where from_host finds the ipcache entry's tunnel endpoint and encapsulates.
 * These routes are the overlay's desired state; resync() repairs drift.
 */
import { LinkInfo, RtNetlink, setSysctl } from '../netlink';
import { formatCidr, parseCidr } from '../util/ip';
import type { Logger } from '../util/log';

export const VXLAN_PORT = 8472;
/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;

export interface OverlayOptions {
  /** VXLAN device name (mb_vxlan, or mbv_<instance> for a non-default agent). */
  device: string;
  port: number;
  /** MTU of the underlay device: the VXLAN device's own MTU. */
  underlayMtu: number;
  /** Host device (host side of the pair): remote pod CIDRs are routed through it. */
  hostIfindex: number;
  routerIp: string;
  /** MTU of routes to remote pods (underlay MTU - 50). */
  podMtu: number;
}

export class OverlayError extends Error {}

export class Overlay {
  private link?: LinkInfo;
  private readonly remote = new Set<string>();

  constructor(
    private readonly nl: RtNetlink,
    readonly opts: OverlayOptions,
    private readonly log: Logger,
  ) {}

  get ifindex(): number {
    if (!this.link) throw new OverlayError('overlay: the VXLAN device is not set up');
    return this.link.index;
  }

  get mac(): string {
    return this.link?.mac ?? '';
  }

  /** Create (or adopt) the VXLAN device and bring it up. Idempotent: an agent restart keeps it. */
  ensureDevice(): LinkInfo {
    const { device, port, underlayMtu } = this.opts;
    let link = this.nl.linkGet(device);
    if (link && link.kind !== 'vxlan') {
      throw new OverlayError(`overlay: device ${device} exists and is not a VXLAN device (kind ${link.kind ?? 'none'}); remove it or start the agent with other --state-dir/--bpf-root`);
    }
    if (!link) {
      try {
        link = this.nl.linkAddVxlan({ name: device, external: true, dstPort: port, mtu: underlayMtu });
      } catch (e) {
        throw new OverlayError(
          `overlay: cannot create VXLAN device ${device} on UDP ${port} (${(e as Error).message}); only one collect-metadata VXLAN device per port can exist in a network namespace`,
        );
      }
      this.log.info('created the overlay device', { device, port, mtu: underlayMtu });
    } else if (link.mtu !== underlayMtu) {
      this.nl.linkSet(link.index, { mtu: underlayMtu });
    }
    // Decapsulated packets come from other nodes' pod CIDRs, which are routed
    // via the host device, not this one: no reverse-path filter here.
    for (const [k, v] of [
      [`net.ipv4.conf.${device}.rp_filter`, '0'],
      [`net.ipv6.conf.${device}.disable_ipv6`, '1'],
    ]) {
      try {
        setSysctl(null, k, v);
      } catch {
        /* missing knob */
      }
    }
    this.nl.linkSet(link.index, { up: true });
    this.link = this.nl.linkGet(link.index) ?? link;
    return this.link;
  }

  /** The pod CIDRs of the other nodes (routes via the host device). */
  setRemoteCidrs(cidrs: Iterable<string>): void {
    const want = new Set([...cidrs].map((c) => formatCidr(parseCidr(c))));
    for (const c of [...this.remote]) {
      if (want.has(c)) continue;
      this.remote.delete(c);
      try {
        this.nl.routeDel({ dst: c, dev: this.opts.hostIfindex });
      } catch (e) {
        this.log.warn('could not remove the route to a departed node\'s pods', { cidr: c, error: e });
      }
    }
    for (const c of want) {
      if (this.remote.has(c)) continue;
      this.remote.add(c);
      this.addRoute(c);
    }
  }

  private addRoute(c: string): void {
    try {
      this.nl.routeAdd({ dst: c, dev: this.opts.hostIfindex, src: this.opts.routerIp, scope: 'link', mtu: this.opts.podMtu, replace: true });
    } catch (e) {
      this.log.error('could not route a remote node\'s pods via the host device', { cidr: c, error: e });
    }
  }

  /** Repair drift: missing routes are added back, the device is brought up again. */
  resync(): { routes: number } {
    const present = new Set(
      this.nl
        .routeList({ family: 4 })
        .filter((r) => r.dev === this.opts.hostIfindex)
        .map((r) => r.dst),
    );
    let fixed = 0;
    for (const c of this.remote) {
      if (present.has(c)) continue;
      this.addRoute(c);
      fixed++;
    }
    if (this.link && !this.nl.linkGet(this.link.index)?.up) this.nl.linkSet(this.link.index, { up: true });
    return { routes: fixed };
  }

  remoteCidrs(): string[] {
    return [...this.remote].sort();
  }
}

/**
 * Cluster mode: the node's VXLAN device with from_overlay at its ingress and
 * its ifindex in the node configuration (so from_container/from_host
 * encapsulate), and a route via the host device to every other node's pod
 * CIDRs, following the node registry.
 */
export function startOverlay(o: {
  dp: { attachOverlay(ifindex: number): void; hostIfindex: number };
  nodes: { remote(): { podCIDRs: string[] }[]; onChange(fn: () => void): void };
  device: string;
  underlayMtu: number;
  podMtu: number;
  routerIp: string;
  resyncMs: number;
  log: Logger;
}): Overlay {
  const nl = RtNetlink.open(null);
  const ov = new Overlay(nl, { device: o.device, port: VXLAN_PORT, underlayMtu: o.underlayMtu, hostIfindex: o.dp.hostIfindex, routerIp: o.routerIp, podMtu: o.podMtu }, o.log);
  const link = ov.ensureDevice();
  o.dp.attachOverlay(link.index);
  const sync = () => ov.setRemoteCidrs(o.nodes.remote().flatMap((n) => n.podCIDRs));
  o.nodes.onChange(sync);
  sync();
  if (o.resyncMs > 0) {
    const t = setInterval(() => {
      try {
        ov.resync();
      } catch (e) {
        o.log.error('overlay resync failed', { error: e });
      }
    }, o.resyncMs);
    t.unref();
  }
  return ov;
}

/** The VXLAN device of an agent: mb_vxlan, or mbv_<instance> beside the other per-agent names. */
export function overlayDevice(cfg: { instance: string }): string {
  return cfg.instance ? `mbv_${cfg.instance}` : 'mb_vxlan';
}

/** Pod MTU in cluster mode: the underlay's minus the encapsulation, unless --mtu says otherwise. */
export function podMtu(cfg: { mtu: number; mtuExplicit: boolean }, underlay: { mtu: number; ifname: string }, log: Logger): number {
  const fit = underlay.mtu - VXLAN_OVERHEAD;
  if (!cfg.mtuExplicit) return fit;
  if (cfg.mtu > fit) log.warn('--mtu leaves no room for the overlay: cross-node packets of that size will not fit', { mtu: cfg.mtu, underlay: underlay.ifname, underlayMtu: underlay.mtu, fits: fit });
  return cfg.mtu;
}
