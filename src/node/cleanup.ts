/**
 * `membrane-agent --cleanup`: remove everything an agent started with the same
 * flags left on this node, for good: the endpoint veths it created (and with
 * them the pods' interfaces), its host device pair (and with it the router
 * address and the pod-CIDR and service-CIDR routes), its programs on the
 * --devices and the socket-LB cgroup (detached), every pin under --bpf-root,
 * the L7 proxy process, and the state directory. Stopping the agent leaves all of this in place on
 * purpose (pods keep working); this is the way to take it away.
 *
 * Endpoint veths are found from every trace an agent leaves, so a node whose
 * state directory is already gone is cleaned too: the endpoint records, the
 * veths whose tc ingress runs this root's pinned shared programs, the endpoints
 * map, and the IPAM owners of interrupted ADDs. Only veths named like
 * Membrane's (lxc + 12 hex) are deleted.
 * Refuses while an agent serves on the socket; idempotent.
 */
import { recordedPodCidr } from '../ipam/ipam';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AgentConfig } from '../agent/config';
import { overlayDevice } from '../overlay/overlay';
import { hostVethName } from '../agent/config';
import { BPF_LINK_TYPE_TCX, BpfLink, BpfMap, BpfProgram, isOnBpffs } from '../bpf';
import { RtNetlink, tcBpfList } from '../netlink';
import { endpointKeyCodec, endpointInfoCodec } from '../datapath/maps.gen';
import { ENDPOINT_F_HOST } from '../datapath/constants';
import { readJson } from '../util/fsutil';
import { socketServing } from '../util/unixsock';
import { stopProxy } from '../proxy/stop';

export interface CleanupReport {
  removed: string[];
  errors: string[];
}

export class CleanupRefused extends Error {}

const VETH_RE = /^lxc[0-9a-f]{12}$/;

/** Is an agent answering on this Unix socket? */
export { socketServing };

/** The kernel's fdinfo of a BPF object names links by link_id (maps by map_id, programs by prog_id). */
function isLinkFd(fd: number): boolean {
  return /^link_id:/m.test(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
}

/** Every file under dir (depth first), for pins. */
function walk(dir: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

export async function cleanupNode(cfg: AgentConfig): Promise<CleanupReport> {
  if (await socketServing(cfg.socket)) {
    throw new CleanupRefused(`an agent is serving on ${cfg.socket}: stop it first (cleanup removes the datapath its pods depend on)`);
  }
  const report: CleanupReport = { removed: [], errors: [] };
  const step = (what: string, fn: () => boolean | void) => {
    try {
      if (fn() !== false) report.removed.push(what);
    } catch (e) {
      report.errors.push(`${what}: ${(e as Error).message}`);
    }
  };
  // 0. The L7 proxy, which outlives the agent by design.
  try {
    const pid = await stopProxy(path.join(cfg.stateDir, 'proxy'));
    if (pid) report.removed.push(`L7 proxy (pid ${pid})`);
  } catch (e) {
    report.errors.push(`L7 proxy: ${(e as Error).message}`);
  }
  const nl = RtNetlink.open(null);
  try {
    // 1. Endpoint veths, from every trace the agent leaves.
    const veths = new Set<string>();
    const ifindexes = new Set<number>();
    const epDir = path.join(cfg.stateDir, 'endpoints');
    for (const f of fs.existsSync(epDir) ? fs.readdirSync(epDir) : []) {
      if (!/^\d+\.json$/.test(f)) continue;
      try {
        const ep = readJson<{ hostIfname?: string }>(path.join(epDir, f));
        if (ep?.hostIfname) veths.add(ep.hostIfname);
      } catch (e) {
        report.errors.push(`endpoint record ${f}: ${(e as Error).message}`);
      }
    }
    try {
      const ipam = readJson<{ allocations?: { owner: string }[] }>(path.join(cfg.stateDir, 'ipam.json'));
      for (const a of ipam?.allocations ?? []) {
        const slash = a.owner.lastIndexOf('/');
        if (slash > 0) veths.add(hostVethName(cfg, a.owner.slice(0, slash), a.owner.slice(slash + 1)));
      }
    } catch (e) {
      report.errors.push(`ipam.json: ${(e as Error).message}`);
    }
    const bpfRoot = isOnBpffs(cfg.bpfRoot) && fs.existsSync(cfg.bpfRoot) ? cfg.bpfRoot : undefined;
    if (bpfRoot) {
      // Veths whose clsact ingress runs one of this root's shared from_container programs.
      const progIds = new Set<number>();
      for (const pin of walk(path.join(bpfRoot, 'programs')).filter((p) => path.basename(p) === 'from_container')) {
        try {
          const prog = BpfProgram.fromPin(pin);
          try {
            progIds.add(prog.info().id);
          } finally {
            prog.close();
          }
        } catch {
          /* not a program */
        }
      }
      for (const l of nl.linkList()) {
        if (l.kind !== 'veth' || !VETH_RE.test(l.name) || !progIds.size) continue;
        if (tcBpfList(nl, l.index, 'ingress').some((f) => progIds.has(f.progId))) ifindexes.add(l.index);
      }
      try {
        const m = BpfMap.fromPin(path.join(bpfRoot, 'mb_endpoints'), 'mb_endpoints').withCodecs(endpointKeyCodec, endpointInfoCodec);
        try {
          for (const [, v] of m.entries()) if (!(v.flags & ENDPOINT_F_HOST) && v.ifindex) ifindexes.add(v.ifindex);
        } finally {
          m.close();
        }
      } catch {
        /* no endpoints map */
      }
    }
    for (const i of ifindexes) {
      const l = nl.linkGet(i);
      if (l) veths.add(l.name);
    }
    for (const name of [...veths].sort()) {
      const l = nl.linkGet(name);
      if (!l || l.kind !== 'veth' || !VETH_RE.test(name)) continue;
      step(`endpoint veth ${name}`, () => nl.linkDel(l.index));
    }

    // 2. Links under the root: NodePort programs on --devices, socket LB, the host program.
    if (bpfRoot) {
      for (const pin of walk(bpfRoot)) {
        let link: BpfLink;
        let info;
        try {
          link = BpfLink.fromPin(pin);
        } catch {
          continue;
        }
        try {
          if (!isLinkFd(link.fd)) throw new Error('not a link');
          info = link.info();
        } catch {
          link.close();
          continue; // a map or a program, not a link
        }
        if (info.type === BPF_LINK_TYPE_TCX && !info.ifindex) {
          link.close(); // its device is gone (an endpoint veth above): the pin is all that is left
          continue;
        }
        try {
          step(`link ${path.relative(bpfRoot, pin)}`, () => link.detach());
        } finally {
          link.close();
        }
      }
    }

    // 3. The host device pair: its address and the routes via it (other nodes' pod CIDRs too) go with it.
    for (const dev of [cfg.hostDevice, cfg.netDevice]) {
      const l = nl.linkGet(dev);
      if (l) step(`device ${dev} (and the routes to ${cfg.podCidr || recordedPodCidr(cfg.stateDir) || 'the pod CIDR'} and ${cfg.serviceCidr} via it)`, () => nl.linkDel(l.index));
    }
    // The overlay's VXLAN device (cluster mode).
    const vx = nl.linkGet(overlayDevice(cfg));
    if (vx && vx.kind === 'vxlan') step(`overlay device ${vx.name}`, () => nl.linkDel(vx.index));
  } finally {
    nl.close();
  }

  // 4. Pins, then state.
  if (fs.existsSync(cfg.bpfRoot)) {
    if (!isOnBpffs(cfg.bpfRoot)) report.errors.push(`bpf-root ${cfg.bpfRoot} is not on a bpf filesystem; not removed`);
    else step(`pins under ${cfg.bpfRoot}`, () => fs.rmSync(cfg.bpfRoot, { recursive: true, force: true }));
  }
  if (fs.existsSync(cfg.stateDir)) step(`state directory ${cfg.stateDir}`, () => fs.rmSync(cfg.stateDir, { recursive: true, force: true }));
  if (fs.existsSync(cfg.socket)) step(`socket ${cfg.socket}`, () => fs.rmSync(cfg.socket, { force: true }));
  return report;
}
