/**
 * The policy engine: repository + selector cache -> per-endpoint map state.
 * Endpoints with the same identity and the same named ports share one
 * computation per revision.
 */
import type { Identity, IdentityAllocator } from '../identity/identity';
import { computeMapState, ComputedPolicy, NamedPort } from './mapstate';
import { PolicyRepository } from './repository';
import { LabelSet } from './selector';
import { SelectorCache } from './selectorcache';
import type { Direction, PeerRule } from './types';

export type EnforcementMode = 'default' | 'always' | 'never';

export interface PolicySubject {
  identity: number;
  labels: string[];
  /** name -> ports declared by this pod's containers */
  namedPorts: Record<string, NamedPort[]>;
}

export class PolicyEngine {
  readonly cache = new SelectorCache();
  /** The proxy's listener port per direction (set by the agent; L7 rules cannot be installed without it). */
  proxyPorts?: (egress: boolean, kind: 'http' | 'dns') => number;
  readonly repo: PolicyRepository;
  private memo = new Map<string, ComputedPolicy>();
  private memoRevision = -1;
  private memoCacheVersion = -1;
  /** identity -> named ports of the pods that have it (for egress named ports) */
  private peerPorts = new Map<number, Record<string, NamedPort[]>>();

  constructor(
    identities: IdentityAllocator,
    onCidr: (prefix: string, identity: number | undefined) => void,
    public mode: EnforcementMode = 'default',
    public allowLocalhost = true,
  ) {
    this.repo = new PolicyRepository(this.cache, identities, onCidr);
    for (const i of identities.list()) this.cache.identityAdded(i);
    identities.onChange((ev) => {
      if (ev.type === 'add') this.identityAdded(ev.identity);
      else this.cache.identityRemoved(ev.identity.id);
    });
  }

  get revision(): number {
    return this.repo.revision;
  }

  private identityAdded(i: Identity): void {
    this.cache.identityAdded(i);
  }

  /** The named ports of every local pod, by identity (egress named ports resolve on the peer). */
  setPeerPorts(byIdentity: Map<number, Record<string, NamedPort[]>>): void {
    this.peerPorts = byIdentity;
    this.memo.clear();
  }

  compute(s: PolicySubject): ComputedPolicy {
    if (this.memoRevision !== this.repo.revision || this.memoCacheVersion !== this.cache.version) {
      this.memo.clear();
      this.memoRevision = this.repo.revision;
      this.memoCacheVersion = this.cache.version;
    }
    const key = `${s.identity}|${JSON.stringify(s.namedPorts)}`;
    const hit = this.memo.get(key);
    if (hit) return hit;
    const labels = this.cache.labelsOf(s.identity) ?? new LabelSet(s.labels);
    const rules = this.repo.rulesSelecting(labels);
    const computed = computeMapState({
      identity: s.identity,
      rules,
      peerIdentities: (pr) => this.repo.peerIdentities(pr),
      namedPorts: (dir: Direction, pr: PeerRule, name: string) => {
        if (dir === 'ingress') return s.namedPorts[name] ?? [];
        const ids = this.repo.peerIdentities(pr);
        const out: NamedPort[] = [];
        const add = (ports?: Record<string, NamedPort[]>) => {
          for (const np of ports?.[name] ?? []) if (!out.some((o) => o.port === np.port && o.protocol === np.protocol)) out.push(np);
        };
        if (ids.includes(0)) for (const p of this.peerPorts.values()) add(p);
        else for (const id of ids) add(this.peerPorts.get(id));
        return out;
      },
      mode: this.mode,
      allowLocalhost: this.allowLocalhost,
      proxyPort: this.proxyPorts,
    });
    for (const e of computed.entries.values()) {
      if (this.repo.isAddressBlockIdentity(e.identity)) {
        computed.addressRules = true;
        break;
      }
    }
    this.memo.set(key, computed);
    return computed;
  }
}
