/**
 * The node's change pipeline: store events mark what must be recomputed, and
 * one serialized run applies it in the order data flows — identities (pods and
 * namespaces may relabel endpoints), then the ipcache, then every endpoint's
 * policy, then services — so each step sees the results of the one before.
 * Callers that changed something wait for the run (`flush()`), and
 * `waitForRevision` resolves when every endpoint enforces a policy revision.
 */
import { isPolicyKind } from '../policy/translate';
import type { WatchEvent } from '../store/types';
import type { Logger } from '../util/log';

const GATEWAY_KINDS = new Set(['GatewayClass', 'Gateway', 'HTTPRoute', 'ReferenceGrant']);

export interface PipelineSteps {
  /** Store policy objects into the repository; true if the repository changed. */
  policyEvent(ev: WatchEvent): boolean;
  /** Re-resolve toServices peers; true if policy changed. */
  servicePeersChanged(): boolean;
  /** Re-derive endpoint labels; the number of endpoints whose identity changed. */
  refreshIdentities(): Promise<number>;
  /** Write pending ipcache changes. */
  flushIpcache(): void;
  /** Send the L7 proxy the rules of every endpoint (before the policy maps redirect anything to it). */
  syncProxy(): void;
  /** Bring every endpoint's policy map to the current revision. */
  regenerateAll(): { endpoints: number; failed: number; ms: number; revision: number };
  /** Recompute services into the load-balancing maps. */
  syncServices(): void;
  /** Recompute Gateways (their routes name Services, so after them) and send their listeners to the proxy. */
  syncGateways(): void;
  /** Persist what the steps changed (identities). */
  done(): void;
  /** The lowest policy revision enforced by every endpoint (-1: some endpoint failed). */
  enforcedRevision(): number;
}

export class ChangePipeline {
  private pending = { refresh: false, regen: false, services: false, ipcache: false, gateways: false };
  private running?: Promise<void>;
  private again = false;
  private scheduled = false;
  private waiters: { revision: number; resolve: (ok: boolean) => void }[] = [];

  constructor(
    private readonly steps: PipelineSteps,
    private readonly log: Logger,
  ) {}

  mark(what: Partial<ChangePipeline['pending']>): void {
    for (const [k, v] of Object.entries(what) as [keyof ChangePipeline['pending'], boolean][]) if (v) this.pending[k] = true;
    this.schedule();
  }

  /** A store change: what it affects is marked and a run is scheduled. */
  onStoreEvent(ev: WatchEvent): void {
    const o = ev.object;
    if (isPolicyKind(o.kind)) {
      if (this.steps.policyEvent(ev)) this.pending.regen = true;
    } else if (o.kind === 'Pod' || o.kind === 'Namespace') {
      this.pending.refresh = true;
      this.pending.services = true;
    } else if (o.kind === 'Service' || o.kind === 'EndpointSlice') {
      this.pending.services = true;
      try {
        if (this.steps.servicePeersChanged()) this.pending.regen = true;
      } catch (e) {
        this.log.error('re-resolving toServices failed', { error: e });
      }
    } else if (GATEWAY_KINDS.has(o.kind)) {
      this.pending.gateways = true;
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  /** Apply everything pending; resolves when the kernel reflects it. Runs never overlap. */
  flush(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.runOnce();
      } while (this.again || Object.values(this.pending).some(Boolean));
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async runOnce(): Promise<void> {
    const p = this.pending;
    this.pending = { refresh: false, regen: false, services: false, ipcache: false, gateways: false };
    try {
      if (p.refresh && (await this.steps.refreshIdentities()) > 0) p.regen = true;
      if (p.ipcache || p.regen) this.steps.flushIpcache();
      if (p.regen || p.services) this.steps.syncProxy();
      if (p.regen) {
        const r = this.steps.regenerateAll();
        this.log.info('endpoints regenerated', r);
      }
      if (p.services) this.steps.syncServices();
    } catch (e) {
      this.log.error('applying changes failed', { error: e });
    }
    try {
      if (p.services || p.gateways) this.steps.syncGateways();
    } catch (e) {
      this.log.error('applying gateway changes failed', { error: e });
    }
    this.steps.done();
    this.wake();
  }

  private wake(): void {
    const reached = this.steps.enforcedRevision();
    this.waiters = this.waiters.filter((w) => {
      if (w.revision > reached) return true;
      w.resolve(true);
      return false;
    });
  }

  /** Resolve true when every endpoint has reached `revision`, false on timeout. */
  waitForRevision(revision: number, timeoutMs: number): Promise<boolean> {
    if (this.steps.enforcedRevision() >= revision) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = { revision, resolve };
      this.waiters.push(w);
      setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) {
          this.waiters.splice(i, 1);
          resolve(false);
        }
      }, timeoutMs).unref();
    });
  }
}
