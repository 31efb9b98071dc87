/**
 * Optional timing hook for the agent, used by `cni-add-latency --breakdown`
 * (never by production): loaded with NODE_OPTIONS="--require <this file>" when
 * the bench starts its own agent. It wraps the methods of the classes an
 * endpoint ADD/DEL goes through (endpoint manager, IPAM, identities, datapath,
 * netlink, BPF objects/maps/links, atomic file writes) with timers, and after
 * each EndpointManager.create/delete writes one JSON line to stderr (the
 * agent's log) with the inclusive time of every call path:
 *   {"msg":"bench breakdown","op":"create","containerId":...,"totalMs":...,"paths":{"a > b": {"calls":n,"ms":x}}}
 * The wrappers cost a few microseconds per call. Does nothing in any process
 * other than membrane-agent.
 */
/* eslint-disable @typescript-eslint/no-explicit-any */
import * as path from 'node:path';

const isAgent = /membrane-agent$/.test(process.argv[1] ?? '');

interface Frame {
  path: string;
}

const stack: Frame[] = [];
let collect: Map<string, { calls: number; ms: number }> | undefined;

function wrap(owner: any, key: string, label: string): void {
  const orig = owner[key];
  if (typeof orig !== 'function' || orig.__benchWrapped) return;
  const top = label === 'EndpointManager.create' || label === 'EndpointManager.delete';
  const wrapped = function (this: any, ...args: any[]) {
    if (!collect && !top) return orig.apply(this, args);
    const parent = stack[stack.length - 1];
    const p = parent ? `${parent.path} > ${label}` : label;
    let mine: Map<string, { calls: number; ms: number }> | undefined;
    if (top && !collect) {
      mine = new Map();
      collect = mine;
    }
    stack.push({ path: p });
    const t0 = process.hrtime.bigint();
    const done = () => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      stack.pop();
      const c = collect;
      if (c) {
        const e = c.get(p) ?? { calls: 0, ms: 0 };
        e.calls++;
        e.ms += ms;
        c.set(p, e);
      }
      if (mine) {
        collect = undefined;
        const containerId = typeof args[0] === 'string' ? args[0] : args[0]?.containerId;
        const paths = Object.fromEntries([...mine].map(([k, v]) => [k, { calls: v.calls, ms: Math.round(v.ms * 1000) / 1000 }]));
        process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: 'info', msg: 'bench breakdown', op: label.split('.')[1], containerId, totalMs: Math.round(ms * 1000) / 1000, paths }) + '\n');
      }
    };
    try {
      const r = orig.apply(this, args);
      if (r && typeof r.then === 'function') {
        // Not expected on these synchronous paths; time to settlement if it happens.
        return r.finally(done);
      }
      done();
      return r;
    } catch (e) {
      done();
      throw e;
    }
  };
  (wrapped as any).__benchWrapped = true;
  owner[key] = wrapped;
}

function wrapClass(cls: any, name: string): void {
  if (!cls) return;
  for (const k of Object.getOwnPropertyNames(cls.prototype)) {
    if (k === 'constructor') continue;
    const d = Object.getOwnPropertyDescriptor(cls.prototype, k);
    if (d && typeof d.value === 'function') wrap(cls.prototype, k, `${name}.${k}`);
  }
  for (const k of Object.getOwnPropertyNames(cls)) {
    if (['length', 'name', 'prototype'].includes(k)) continue;
    const d = Object.getOwnPropertyDescriptor(cls, k);
    if (d && typeof d.value === 'function' && d.writable) wrap(cls, k, `${name}.${k}`);
  }
}

function wrapModuleFns(mod: any, names: string[], prefix: string): void {
  for (const n of names) {
    const d = Object.getOwnPropertyDescriptor(mod, n);
    if (d && typeof d.value === 'function' && d.writable) wrap(mod, n, `${prefix}${n}`);
  }
}

if (isAgent) {
  const dist = path.resolve(__dirname, '..', 'src');
  const load = (rel: string): any => {
    try {
      return require(path.join(dist, rel));
    } catch (e) {
      process.stderr.write(JSON.stringify({ level: 'warn', msg: `bench timing hook: cannot load ${rel}: ${(e as Error).message}` }) + '\n');
      return {};
    }
  };
  wrapClass(load('endpoint/manager').EndpointManager, 'EndpointManager');
  wrapClass(load('ipam/ipam').Ipam, 'Ipam');
  wrapClass(load('identity/identity').IdentityAllocator, 'Identity');
  wrapClass(load('datapath/datapath').Datapath, 'Datapath');
  wrapClass(load('datapath/reconciler').MapTable, 'MapTable');
  wrapClass(load('netlink/rtnetlink').RtNetlink, 'RtNetlink');
  wrapClass(load('netlink/netns').Netns, 'Netns');
  wrapModuleFns(load('netlink/sysctl'), ['setSysctl', 'getSysctl'], '');
  wrapClass(load('bpf/object').BpfObject, 'BpfObject');
  wrapClass(load('bpf/map').BpfMap, 'BpfMap');
  wrapClass(load('bpf/link').BpfLink, 'BpfLink');
  wrapClass(load('bpf/prog').BpfProgram, 'BpfProgram');
  wrapModuleFns(load('bpf/link'), ['attachTcx'], '');
  wrapModuleFns(load('util/fsutil'), ['writeJsonAtomic', 'writeFileAtomic', 'readJson', 'mkdirp'], '');
}
