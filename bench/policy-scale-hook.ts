/**
 * Optional timing hook for the agent, used by `policy-scale` (never by
 * production): loaded with NODE_OPTIONS="--require <this file>" when the bench
 * starts its own agent. It wraps the methods a policy apply goes through
 * (API apply/delete, validation, store, repository, translation, selector
 * cache, identities, policy engine, map state, endpoint regeneration, map
 * tables, atomic file writes) with timers and, after each Agent.apply /
 * Agent.deleteResources, writes one JSON line to stderr (the agent's log):
 *   {"msg":"bench policy breakdown","op":"apply","objects":n,"totalMs":...,
 *    "paths":{"a > b":{"calls":n,"ms":x}},
 *    "regen":{"n":..,"p50":..,"p90":..,"p99":..,"max":..,"mean":..}}
 * `regen` is the distribution of the per-endpoint EndpointManager.regenerate
 * durations inside that apply. Only a few calls per endpoint are wrapped (no
 * per-entry or per-packet function), so the wrappers cost microseconds per
 * endpoint. Does nothing in any process other than membrane-agent.
 *
 * With MB_BENCH_CPU_PROF_DIR set, SIGUSR2 starts the V8 sampling profiler
 * (node:inspector; Node refuses --cpu-prof in NODE_OPTIONS) and the next
 * SIGUSR2 stops it and writes agent-<pid>-<ms>.cpuprofile into that
 * directory; "bench profiler started/stopped" lines go to the log. Only
 * around policy applies: the profiler's SIGPROF interrupts BPF program loads
 * (the verifier returns EAGAIN on a pending signal), so an endpoint ADD fails
 * while it runs. With MB_BENCH_NO_TIMERS=1 only the profiler and the
 * memory probe are set up.
 *
 * Memory probe (always): SIGWINCH runs two full garbage collections (V8's gc,
 * exposed here with --expose-gc set at run time) and logs
 *   {"msg":"bench memory","rss":..,"heapTotal":..,"heapUsed":..,"external":..,"arrayBuffers":..}
 * (process.memoryUsage() after the collections, bytes); with
 * MB_BENCH_HEAP_DIR set and a file named "take" in it, it also writes a heap
 * snapshot there (and removes "take") and names it in the line ("snapshot").
 * SIGWINCH is otherwise ignored by the agent.
 */
/* eslint-disable @typescript-eslint/no-explicit-any */
import * as fs from 'node:fs';
import * as inspector from 'node:inspector';
import * as path from 'node:path';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

const isAgent = /membrane-agent$/.test(process.argv[1] ?? '');

type Acc = Map<string, { calls: number; ms: number }>;
const stack: string[] = [];
let collect: Acc | undefined;
let regen: number[] = [];
const TOP = new Set(['Agent.apply', 'Agent.deleteResources']);

function wrap(owner: any, key: string, label: string): void {
  const orig = owner?.[key];
  if (typeof orig !== 'function' || orig.__benchWrapped) return;
  const top = TOP.has(label);
  const wrapped = function (this: any, ...args: any[]) {
    if (!collect && !top) return orig.apply(this, args);
    const parent = stack[stack.length - 1];
    const p = parent ? `${parent} > ${label}` : label;
    let mine: Acc | undefined;
    if (top && !collect) {
      mine = new Map();
      collect = mine;
      regen = [];
    }
    stack.push(p);
    const t0 = process.hrtime.bigint();
    const done = () => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      stack.pop();
      if (collect) {
        const e = collect.get(p) ?? { calls: 0, ms: 0 };
        e.calls++;
        e.ms += ms;
        collect.set(p, e);
        if (label === 'EndpointManager.regenerate') regen.push(ms);
      }
      if (mine) {
        collect = undefined;
        const s = [...regen].sort((a, b) => a - b);
        const pct = (q: number) => (s.length ? round(s[Math.min(s.length - 1, Math.max(0, Math.ceil((q / 100) * s.length) - 1))]) : null);
        const paths = Object.fromEntries([...mine].map(([k, v]) => [k, { calls: v.calls, ms: round(v.ms) }]));
        const objects = Array.isArray(args[0]) ? args[0].length : undefined;
        process.stderr.write(
          JSON.stringify({
            time: new Date().toISOString(),
            level: 'info',
            msg: 'bench policy breakdown',
            op: label.split('.')[1],
            objects,
            totalMs: round(ms),
            paths,
            regen: { n: s.length, p50: pct(50), p90: pct(90), p99: pct(99), max: s.length ? round(s[s.length - 1]) : null, mean: s.length ? round(s.reduce((a, b) => a + b, 0) / s.length) : null },
          }) + '\n',
        );
      }
    };
    try {
      const r = orig.apply(this, args);
      if (r && typeof r.then === 'function') return r.finally(done);
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

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

function wrapMethods(cls: any, name: string, methods: string[]): void {
  if (!cls?.prototype) return;
  for (const m of methods) wrap(cls.prototype, m, `${name}.${m}`);
}

function wrapModuleFns(mod: any, names: string[]): void {
  for (const n of names) {
    const d = Object.getOwnPropertyDescriptor(mod, n);
    if (d && typeof d.value === 'function' && d.writable) wrap(mod, n, n);
  }
}

function profilerOnSignal(dir: string): void {
  let session: inspector.Session | undefined;
  const note = (msg: string) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: 'info', msg }) + '\n');
  process.on('SIGUSR2', () => {
    if (!session) {
      session = new inspector.Session();
      session.connect();
      session.post('Profiler.enable');
      session.post('Profiler.setSamplingInterval', { interval: 500 });
      session.post('Profiler.start', () => note('bench profiler started'));
      return;
    }
    const s = session;
    session = undefined;
    s.post('Profiler.stop', (err, res) => {
      if (!err && res?.profile) fs.writeFileSync(path.join(dir, `agent-${process.pid}-${Date.now()}.cpuprofile`), JSON.stringify(res.profile));
      s.disconnect();
      note(err ? `bench profiler failed: ${err.message}` : 'bench profiler stopped');
    });
  });
}

if (isAgent && process.env.MB_BENCH_CPU_PROF_DIR) profilerOnSignal(process.env.MB_BENCH_CPU_PROF_DIR);

function memoryOnSignal(): void {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  process.on('SIGWINCH', () => {
    gc();
    gc();
    const dir = process.env.MB_BENCH_HEAP_DIR;
    let snapshot: string | undefined;
    if (dir && fs.existsSync(path.join(dir, 'take'))) {
      fs.rmSync(path.join(dir, 'take'), { force: true });
      snapshot = v8.writeHeapSnapshot(path.join(dir, `agent-${process.pid}-${Date.now()}.heapsnapshot`));
    }
    const m = process.memoryUsage();
    process.stderr.write(
      JSON.stringify({ time: new Date().toISOString(), level: 'info', msg: 'bench memory', rss: m.rss, heapTotal: m.heapTotal, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, snapshot }) + '\n',
    );
  });
}

if (isAgent) memoryOnSignal();

if (isAgent && process.env.MB_BENCH_NO_TIMERS !== '1') {
  const dist = path.resolve(__dirname, '..', 'src');
  const load = (rel: string): any => {
    try {
      return require(path.join(dist, rel));
    } catch (e) {
      process.stderr.write(JSON.stringify({ level: 'warn', msg: `bench policy hook: cannot load ${rel}: ${(e as Error).message}` }) + '\n');
      return {};
    }
  };
  wrapMethods(load('agent/agent').Agent, 'Agent', ['apply', 'deleteResources', 'flushChanges', 'onStoreEvent']);
  wrapModuleFns(load('store/kinds'), ['validateResources']);
  wrapMethods(load('store/embedded').EmbeddedStore, 'Store', ['apply', 'delete', 'persist']);
  wrapMethods(load('policy/repository').PolicyRepository, 'Repository', ['upsert', 'delete', 'release', 'registerPeers', 'acquireCidr', 'releaseCidr', 'rulesSelecting']);
  wrapModuleFns(load('policy/translate'), ['translatePolicy']);
  wrapMethods(load('policy/selectorcache').SelectorCache, 'SelectorCache', ['add', 'release', 'identityAdded', 'identityRemoved']);
  wrapMethods(load('identity/identity').IdentityAllocator, 'Identity', ['acquire', 'release', 'save']);
  wrapMethods(load('policy/engine').PolicyEngine, 'PolicyEngine', ['compute', 'setPeerPorts']);
  wrapModuleFns(load('policy/mapstate'), ['computeMapState']);
  wrapMethods(load('endpoint/manager').EndpointManager, 'EndpointManager', ['regenerateAll', 'regenerate', 'refreshIdentities', 'updatePeerPorts', 'persist']);
  wrapMethods(load('datapath/reconciler').MapTable, 'MapTable', ['replaceAll', 'flush', 'clearAll']);
  wrapModuleFns(load('util/fsutil'), ['writeJsonAtomic']);
}
