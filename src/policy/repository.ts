/**
 * The policy repository: the rules in force, with a revision number bumped on
 * every change. Each rule's subject and peers are registered as selectors in
 * the selector cache; entities and CIDRs are expressed as selectors too:
 *  - entities select reserved identities (and, for cluster, every pod identity),
 *  - each CIDR prefix a rule names gets a local identity labelled with the
 *    prefix and all its super-prefixes, so "cidr:C" selects every prefix inside
 *    C, and an ipcache entry; `except` prefixes get identities of their own.
 */
import { cidrContains, formatCidr, maskIp, parseCidr, parseIp } from '../util/ip';
import type { IdentityAllocator } from '../identity/identity';
import { NAMESPACE_LABEL } from '../identity/labels';
import { LabelSet, isWildcard, matches } from './selector';
import { SelectorCache } from './selectorcache';
import { translatePolicy } from './translate';
import type { CidrPeer, Entity, FqdnSelector, PeerRule, Requirement, Rule, Selector, ServicePeer } from './types';
import { selectorKey as fqdnSelectorKey } from '../fqdn/pattern';

/** What a toServices peer stands for now: selectors over the backends' pods and/or backend addresses. */
export type ServiceResolver = (peer: ServicePeer) => { selectors: Selector[]; cidrs: string[] };
import type { Resource } from '../store/types';

const reserved = (name: string): Selector => ({ requirements: [{ key: name, source: 'reserved', operator: 'Exists', values: [] }] });

export const ENTITY_SELECTORS: Record<Exclude<Entity, 'all'>, Selector[]> = {
  world: [reserved('world'), reserved('world-ipv4'), reserved('world-ipv6')],
  'world-ipv4': [reserved('world-ipv4'), reserved('world')],
  'world-ipv6': [reserved('world-ipv6')],
  cluster: [
    { requirements: [{ key: NAMESPACE_LABEL, source: 'k8s', operator: 'Exists', values: [] }] },
    reserved('host'),
    reserved('remote-node'),
    reserved('init'),
    reserved('health'),
    reserved('unmanaged'),
    reserved('kube-apiserver'),
    reserved('ingress'),
  ],
  host: [reserved('host')],
  'remote-node': [reserved('remote-node')],
  'kube-apiserver': [reserved('kube-apiserver')],
  init: [reserved('init')],
  ingress: [reserved('ingress')],
  unmanaged: [reserved('unmanaged')],
  health: [reserved('health')],
  none: [],
};

interface PeerSelection {
  any: boolean;
  selectors: Selector[];
  /** toFQDNs selectors (their identities come from the FQDN cache) */
  fqdns: FqdnSelector[];
}

interface StoredPolicy {
  key: string;
  object: Resource;
  rules: Rule[];
  cidrs: string[];
  /** address-block prefixes (NetworkPolicy ipBlock) */
  blocks: string[];
  /** Whether a rule names services (re-resolved when services change). */
  usesServices: boolean;
}

/**
 * Labels of an address-block identity (NetworkPolicy ipBlock): "ipblock:P" for
 * the prefix and each super-prefix. These identities live in mb_ipblock,
 * looked up by address whatever the address's own identity is.
 */
export function ipblockLabels(prefix: string): string[] {
  return cidrLabels(prefix).map((l) => `ipblock:${l.slice('cidr:'.length)}`);
}

/** Labels of the CIDR identity for a prefix: the prefix and every super-prefix. */
export function cidrLabels(prefix: string): string[] {
  const c = parseCidr(prefix);
  const out = ['reserved:world'];
  for (let len = c.prefixLen; len >= 0; len--) out.push(`cidr:${formatCidr({ addr: maskIp(c.addr, len), prefixLen: len })}`);
  return out;
}

function cidrSelector(p: CidrPeer): Selector {
  const source = p.byAddress ? 'ipblock' : 'cidr';
  const reqs: Requirement[] = [{ key: p.cidr, source, operator: 'Exists', values: [] }];
  for (const e of p.except) reqs.push({ key: e, source, operator: 'DoesNotExist', values: [] });
  return { requirements: reqs };
}

export class PolicyRepository {
  revision = 1;
  private readonly policies = new Map<string, StoredPolicy>();
  private readonly peerSel = new WeakMap<PeerRule, PeerSelection>();
  /** prefix -> {identity, refs} */
  private readonly cidrIds = new Map<string, { id: number; refs: number }>();
  /** Address-block identities (NetworkPolicy ipBlock), by prefix. */
  private readonly blockIds = new Map<string, { id: number; refs: number }>();
  private readonly blockIdSet = new Set<number>();
  /** Called when an address-block identity appears (id) or goes (undefined): the mb_ipblock entries. */
  onAddressBlock: (prefix: string, identity: number | undefined) => void = () => {};

  /** toFQDNs selectors in use, by key, with the number of rules naming each. */
  private readonly fqdnSels = new Map<string, { sel: FqdnSelector; refs: number }>();
  /** The identities of the addresses learned for a toFQDNs selector (set by the agent's FQDN cache; none by default). */
  fqdnIdentities: (sel: FqdnSelector) => number[] = () => [];
  /** Called when the set of toFQDNs selectors in use changes. */
  onFqdnSelectors: () => void = () => {};

  /** Resolves toServices peers; set by the agent (no services known: nothing). */
  serviceResolver: ServiceResolver = () => ({ selectors: [], cidrs: [] });

  constructor(
    readonly cache: SelectorCache,
    private readonly identities: IdentityAllocator,
    private readonly onCidr: (prefix: string, identity: number | undefined) => void,
  ) {}

  static keyOf(o: Resource): string {
    return `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
  }

  /** Add or replace a policy object (already validated). Returns the new revision. */
  upsert(o: Resource): number {
    const key = PolicyRepository.keyOf(o);
    const rules = translatePolicy(o);
    const old = this.policies.get(key);
    const cidrs = new Set<string>();
    const blocks = new Set<string>();
    let usesServices = false;
    for (const r of rules) {
      this.cache.add(r.subject);
      for (const pr of [...r.ingress, ...r.ingressDeny, ...r.egress, ...r.egressDeny]) {
        // toServices: the services' backends as they are now (re-resolved on service changes).
        for (const svc of pr.peers.services ?? []) {
          usesServices = true;
          const res = this.serviceResolver(svc);
          pr.peers.selectors.push(...res.selectors);
          pr.peers.cidrs.push(...res.cidrs.map((c) => ({ cidr: c, except: [] })));
        }
        for (const c of pr.peers.cidrs) {
          const set = c.byAddress ? blocks : cidrs;
          set.add(c.cidr);
          c.except.forEach((e) => set.add(e));
        }
      }
    }
    for (const c of cidrs) this.acquirePrefix(this.cidrIds, c, cidrLabels, this.onCidr);
    for (const c of blocks) this.acquirePrefix(this.blockIds, c, ipblockLabels, this.onAddressBlock, this.blockIdSet);
    for (const r of rules) for (const pr of [...r.ingress, ...r.ingressDeny, ...r.egress, ...r.egressDeny]) this.registerPeers(pr);
    this.policies.set(key, { key, object: o, rules, cidrs: [...cidrs], blocks: [...blocks], usesServices });
    this.loadErrors.delete(key);
    if (old) this.release(old);
    return ++this.revision;
  }

  delete(o: { kind: string; metadata: { namespace?: string; name: string } }): number | undefined {
    const key = PolicyRepository.keyOf(o as Resource);
    this.loadErrors.delete(key);
    const old = this.policies.get(key);
    if (!old) return undefined;
    this.policies.delete(key);
    this.release(old);
    return ++this.revision;
  }

  private release(p: StoredPolicy): void {
    for (const r of p.rules) {
      this.cache.release(r.subject);
      for (const pr of [...r.ingress, ...r.ingressDeny, ...r.egress, ...r.egressDeny]) {
        for (const s of this.peerSel.get(pr)?.selectors ?? []) this.cache.release(s);
      }
    }
    let fqdnChanged = false;
    for (const r of p.rules) {
      for (const pr of r.egress) {
        for (const f of pr.peers.fqdns ?? []) {
          const k = fqdnSelectorKey(f);
          const cur = this.fqdnSels.get(k);
          if (cur && --cur.refs <= 0) {
            this.fqdnSels.delete(k);
            fqdnChanged = true;
          }
        }
      }
    }
    if (fqdnChanged) this.onFqdnSelectors();
    for (const c of p.cidrs) this.releasePrefix(this.cidrIds, c, this.onCidr);
    for (const c of p.blocks) this.releasePrefix(this.blockIds, c, this.onAddressBlock, this.blockIdSet);
  }

  private registerPeers(pr: PeerRule): void {
    const sel: PeerSelection = { any: !!pr.peers.any, selectors: [], fqdns: pr.peers.fqdns ?? [] };
    let fqdnAdded = false;
    for (const f of sel.fqdns) {
      const k = fqdnSelectorKey(f);
      const cur = this.fqdnSels.get(k);
      if (cur) cur.refs++;
      else {
        this.fqdnSels.set(k, { sel: f, refs: 1 });
        fqdnAdded = true;
      }
    }
    if (fqdnAdded) this.onFqdnSelectors();
    for (const s of pr.peers.selectors) {
      if (isWildcard(s)) sel.any = true;
      else sel.selectors.push(s);
    }
    for (const e of pr.peers.entities) if (e !== 'all') sel.selectors.push(...ENTITY_SELECTORS[e]);
    for (const c of pr.peers.cidrs) {
      sel.selectors.push(cidrSelector(c));
      if (!c.byAddress && parseCidr(c.cidr).prefixLen === 0) sel.selectors.push(...ENTITY_SELECTORS[parseCidr(c.cidr).addr.family === 4 ? 'world-ipv4' : 'world-ipv6']);
    }
    for (const s of sel.selectors) this.cache.add(s);
    this.peerSel.set(pr, sel);
  }

  private acquirePrefix(
    ids: Map<string, { id: number; refs: number }>,
    prefix: string,
    labels: (p: string) => string[],
    notify: (prefix: string, identity: number | undefined) => void,
    idSet?: Set<number>,
  ): void {
    const cur = ids.get(prefix);
    if (cur) {
      cur.refs++;
      return;
    }
    const ident = this.identities.acquireLocal(labels(prefix));
    ids.set(prefix, { id: ident.id, refs: 1 });
    idSet?.add(ident.id);
    notify(prefix, ident.id);
  }

  private releasePrefix(ids: Map<string, { id: number; refs: number }>, prefix: string, notify: (prefix: string, identity: number | undefined) => void, idSet?: Set<number>): void {
    const cur = ids.get(prefix);
    if (!cur) return;
    if (--cur.refs > 0) return;
    ids.delete(prefix);
    idSet?.delete(cur.id);
    notify(prefix, undefined);
    this.identities.release(cur.id);
  }

  /** Is this an address-block identity (matched by address in mb_ipblock)? */
  isAddressBlockIdentity(id: number): boolean {
    return this.blockIdSet.has(id);
  }

  /** The address-block identity the datapath finds for an address (longest prefix), if any. */
  addressBlockIdentity(ip: string): number | undefined {
    let best: { len: number; id: number } | undefined;
    const a = parseIp(ip);
    for (const [prefix, v] of this.blockIds) {
      const c = parseCidr(prefix);
      if (c.addr.family === a.family && cidrContains(c, a) && (!best || c.prefixLen > best.len)) best = { len: c.prefixLen, id: v.id };
    }
    return best?.id;
  }

  /** Re-resolve the policies that name services (a Service or EndpointSlice changed). Returns how many. */
  refreshServicePeers(): number {
    const stale = [...this.policies.values()].filter((p) => p.usesServices);
    for (const p of stale) this.upsert(p.object);
    return stale.length;
  }

  /** Identities a peer rule selects; [0] means any peer. */
  peerIdentities(pr: PeerRule): number[] {
    const sel = this.peerSel.get(pr);
    if (!sel) return [];
    if (sel.any) return [0];
    const ids = new Set<number>();
    for (const s of sel.selectors) for (const id of this.cache.get(s)?.ids ?? []) ids.add(id);
    for (const f of sel.fqdns) for (const id of this.fqdnIdentities(f)) ids.add(id);
    return [...ids];
  }

  /** The toFQDNs selectors some rule names now. */
  fqdnSelectors(): FqdnSelector[] {
    return [...this.fqdnSels.values()].map((v) => v.sel);
  }

  /** Rules whose subject selects an identity with these labels. */
  rulesSelecting(labels: LabelSet): Rule[] {
    const out: Rule[] = [];
    for (const p of this.policies.values()) for (const r of p.rules) if (matches(r.subject, labels)) out.push(r);
    return out;
  }

  /** Objects whose latest version failed to load (translation error), by keyOf: the generation and the error. */
  readonly loadErrors = new Map<string, { generation: number; error: string }>();

  /** Record that `o` could not be loaded (the previous version, if any, stays in force). */
  loadFailed(o: Resource, e: unknown): void {
    this.loadErrors.set(PolicyRepository.keyOf(o), { generation: o.metadata.generation ?? 1, error: e instanceof Error ? e.message : String(e) });
  }

  /** What the repository holds, by keyOf. */
  loaded(): Map<string, { object: Resource; rules: Rule[] }> {
    return this.policies;
  }

  objects(): Resource[] {
    return [...this.policies.values()].map((p) => p.object);
  }

  rules(): Rule[] {
    return [...this.policies.values()].flatMap((p) => p.rules);
  }

  cidrIdentities(): { prefix: string; identity: number }[] {
    return [...this.cidrIds].map(([prefix, v]) => ({ prefix, identity: v.id }));
  }
}

