/**
 * Policy status: what every node enforces of every policy, aggregated into the
 * policy's `status`.
 *
 * Each agent reports, per policy object, the generation it enforces or the
 * error that stopped it, at policies/v1/reports/<Kind>/<ns|_>/<name>/<node>
 * (on its lease: a dead node's reports go with it). The operator turns them,
 * with the live nodes (nodes/v1/), into policies/v1/status/<Kind>/<ns|_>/<name>:
 *
 *   observedGeneration  the policy's generation the counts are about
 *   conditions          Valid (the policy translates) and Enforced (True: every
 *                       live node enforces this generation; False: some node
 *                       failed, named in the message; Unknown: some still pending)
 *   nodes               {total, enforcing, failed, pending}
 *   failedNodes         [{node, error}]
 *
 * The status lives beside the object, not in it, so writing it never changes
 * the object the agents compute policy from; `membrane get` shows them together.
 */
import { Kvstore, Reflector } from '../kvstore';
import { POLICY_REPORTS, POLICY_STATUS, RESOURCES, parseResourceKey, policyStatusKey, unescapeSegment } from '../kvstore/keys';
import { translatePolicy } from '../policy/translate';
import type { Resource } from '../store/types';
import { POLICY_KINDS, PolicyReport } from '../policy/status';
import type { Logger } from '../util/log';


export interface Condition {
  type: 'Valid' | 'Enforced';
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime: string;
}

export interface PolicyStatus {
  observedGeneration: number;
  conditions: Condition[];
  nodes: { total: number; enforcing: number; failed: number; pending: number };
  failedNodes: { node: string; error: string }[];
  pendingNodes?: string[];
}

/** Aggregate the reports of the live nodes into a status (pure; `prev` keeps transition times). */
export function aggregateStatus(object: Resource, liveNodes: string[], reports: Map<string, PolicyReport>, prev: PolicyStatus | undefined, now = new Date().toISOString()): PolicyStatus {
  const gen = object.metadata.generation ?? 1;
  let valid: Pick<Condition, 'status' | 'reason' | 'message'>;
  try {
    translatePolicy(object as Parameters<typeof translatePolicy>[0]);
    valid = { status: 'True', reason: 'Valid', message: 'Policy validation succeeded' };
  } catch (e) {
    valid = { status: 'False', reason: 'Invalid', message: (e as Error).message };
  }
  const failed: { node: string; error: string }[] = [];
  const pending: string[] = [];
  let enforcing = 0;
  for (const node of [...liveNodes].sort()) {
    const r = reports.get(node);
    if (!r || r.generation < gen) pending.push(node);
    else if (r.error || !r.enforcing) failed.push({ node, error: r.error ?? 'not enforced' });
    else enforcing++;
  }
  let enforced: Pick<Condition, 'status' | 'reason' | 'message'>;
  if (failed.length) {
    enforced = { status: 'False', reason: 'Failed', message: `failed on ${failed.length} of ${liveNodes.length} nodes: ${failed.map((f) => `${f.node}: ${f.error}`).join('; ')}` };
  } else if (pending.length || !liveNodes.length) {
    enforced = { status: 'Unknown', reason: 'Pending', message: `${enforcing} of ${liveNodes.length} nodes enforce generation ${gen}${pending.length ? `; waiting for ${pending.join(', ')}` : ''}` };
  } else {
    enforced = { status: 'True', reason: 'Enforced', message: `enforced on all ${liveNodes.length} nodes (generation ${gen})` };
  }
  const cond = (type: Condition['type'], c: Pick<Condition, 'status' | 'reason' | 'message'>): Condition => {
    const old = prev?.conditions.find((x) => x.type === type);
    return { type, ...c, lastTransitionTime: old && old.status === c.status ? old.lastTransitionTime : now };
  };
  const out: PolicyStatus = {
    observedGeneration: gen,
    conditions: [cond('Valid', valid), cond('Enforced', enforced)],
    nodes: { total: liveNodes.length, enforcing, failed: failed.length, pending: pending.length },
    failedNodes: failed,
  };
  if (pending.length) out.pendingNodes = pending;
  return out;
}

/** The status without its times (to decide whether it changed). */
function sig(s: PolicyStatus | undefined): string {
  if (!s) return '';
  return JSON.stringify({ ...s, conditions: s.conditions.map((c) => ({ ...c, lastTransitionTime: '' })) });
}

export class PolicyStatusAggregator {
  private readonly policies: Reflector[];
  private readonly reports: Reflector;
  private readonly statuses: Reflector;
  private active = false;
  private timer?: NodeJS.Timeout;
  private running = false;
  private again = false;
  readonly stats = { writes: 0, deletes: 0, lastError: undefined as string | undefined };

  constructor(
    private readonly kv: Kvstore,
    private readonly nodes: Reflector,
    private readonly log: Logger,
  ) {
    this.policies = POLICY_KINDS.map((k) => new Reflector(kv, `${RESOURCES}${k}/`, log.child({ component: 'policy-watch', kind: k })));
    this.reports = new Reflector(kv, POLICY_REPORTS, log.child({ component: 'policy-reports-watch' }));
    this.statuses = new Reflector(kv, POLICY_STATUS, log.child({ component: 'policy-status-watch' }));
    for (const r of [...this.policies, this.reports, this.nodes]) r.subscribe(() => this.kick());
  }

  async start(): Promise<void> {
    await Promise.all([...this.policies.map((p) => p.start()), this.reports.start(), this.statuses.start()]);
  }

  stop(): void {
    this.setActive(false);
    for (const r of [...this.policies, this.reports, this.statuses]) r.stop();
  }

  setActive(on: boolean): void {
    this.active = on;
    if (on) this.kick();
    else if (this.timer) clearTimeout(this.timer);
  }

  private kick(delayMs = 5): void {
    if (!this.active) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, delayMs);
  }

  private async run(): Promise<void> {
    if (this.running || !this.active) return;
    this.running = true;
    let retry = false;
    try {
      do {
        this.again = false;
        await this.reconcile();
      } while (this.again && this.active);
      this.stats.lastError = undefined;
    } catch (e) {
      this.stats.lastError = (e as Error).message;
      this.log.warn('policy status: writing failed; retrying', { error: e });
      retry = true;
    } finally {
      this.running = false;
    }
    if (this.again) this.kick();
    else if (retry) this.kick(1000);
  }

  private async reconcile(): Promise<void> {
    // Nodes that enforce policy: those with pod CIDRs (one still waiting for its allocation runs no endpoints yet).
    const live: string[] = [];
    for (const [k, v] of this.nodes.entries()) {
      try {
        if ((JSON.parse(v.value) as { podCIDRs?: string[] }).podCIDRs?.length) live.push(unescapeSegment(k));
      } catch {
        /* ignored */
      }
    }
    // reports: "<Kind>/<ns>/<name>/<node>" -> report
    const byPolicy = new Map<string, Map<string, PolicyReport>>();
    for (const [k, v] of this.reports.entries()) {
      const cut = k.lastIndexOf('/');
      const p = k.slice(0, cut);
      const node = unescapeSegment(k.slice(cut + 1));
      try {
        const m = byPolicy.get(p) ?? new Map<string, PolicyReport>();
        m.set(node, JSON.parse(v.value) as PolicyReport);
        byPolicy.set(p, m);
      } catch {
        /* ignored */
      }
    }
    const want = new Set<string>();
    for (const refl of this.policies) {
      for (const [k, v] of refl.entries()) {
        const kind = refl.prefix.slice(RESOURCES.length, -1);
        const ref = parseResourceKey(`${kind}/${k}`);
        if (!ref) continue;
        let object: Resource;
        try {
          object = JSON.parse(v.value) as Resource;
        } catch {
          continue;
        }
        const path = `${kind}/${k}`;
        want.add(path);
        const key = policyStatusKey(ref.kind, ref.namespace, ref.name);
        const cur = this.statuses.get(path);
        let prev: PolicyStatus | undefined;
        try {
          prev = cur ? (JSON.parse(cur.value) as PolicyStatus) : undefined;
        } catch {
          prev = undefined;
        }
        const next = aggregateStatus(object, live, byPolicy.get(path) ?? new Map(), prev);
        if (sig(next) === sig(prev)) continue;
        const r = await this.kv.txn([cur ? { key, target: 'mod', op: '==', value: cur.modRevision } : { key, target: 'create', op: '==', value: 0 }], [{ type: 'put', key, value: JSON.stringify(next) }]);
        if (r.succeeded) {
          this.stats.writes++;
          const enforced = next.conditions.find((c) => c.type === 'Enforced')!;
          const before = prev?.conditions.find((c) => c.type === 'Enforced');
          if (enforced.status !== before?.status) this.log.info('policy status changed', { policy: path, enforced: enforced.status, reason: enforced.reason, message: enforced.message });
        }
        await this.statuses.waitForRevision(r.revision, 5000);
      }
    }
    for (const [k, v] of this.statuses.entries()) {
      if (want.has(k)) continue;
      const key = `${POLICY_STATUS}${k}`;
      await this.kv.txn([{ key, target: 'mod', op: '==', value: v.modRevision }], [{ type: 'delete', key }]);
      this.stats.deletes++;
    }
  }
}
