/**
 * The internal rule model. CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy
 * and Kubernetes NetworkPolicy objects are all translated into these rules
 * (translate.ts), each with its own system's semantics made explicit here:
 * namespace scoping is already folded into selectors, "allow all" forms are
 * already expanded, so the engine needs no knowledge of where a rule came from.
 */

/** A label requirement, matched against an identity's labels. */
export interface Requirement {
  /** Label key without source, e.g. "app" or "io.kubernetes.pod.namespace". */
  key: string;
  /** Label source to match ("k8s", "reserved", ...); undefined = any source. */
  source?: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  values: string[];
}

/** A label selector: all requirements must hold. No requirements = matches every identity. */
export interface Selector {
  requirements: Requirement[];
}

/** ICMP (reference system toPorts): the port is the ICMP type. */
export type Protocol = 'TCP' | 'UDP' | 'SCTP' | 'ANY' | 'ICMP';

export interface PortSpec {
  /** Port number, or a named port resolved on the destination pod. 0 = all ports. */
  port: number | string;
  endPort?: number;
  protocol: Protocol;
  /**
   * L7 rules of the toPorts entry this port belongs to: flows to the port are
   * redirected to the proxy, which allows a request when one rule matches.
   */
  l7?: L7Rules;
}

/** What to do when a headerMatches entry does not match (absent: deny the request). */
export type HeaderMismatchAction = 'LOG' | 'ADD' | 'DELETE' | 'REPLACE';

export interface HeaderMatch {
  name: string;
  /** Exact value; absent = the header must be present. */
  value?: string;
  mismatch?: HeaderMismatchAction;
}

/**
 * One HTTP rule; every field present must match. method, path and host are
 * regular expressions (RE2 syntax, as the reference system's proxy) matched
 * against the whole method, request target and Host header.
 */
export interface HttpRule {
  method?: string;
  path?: string;
  host?: string;
  /** Headers that must be present: "Name" or "Name: value" (exact value). */
  headers?: string[];
  headerMatches?: HeaderMatch[];
}

/**
 * One DNS rule (toPorts[].rules.dns[]): exactly one of matchName (the whole
 * name) or matchPattern ('*' within one label, a bare '*' for every name);
 * see src/fqdn/pattern.ts.
 */
export interface DnsRule {
  matchName?: string;
  matchPattern?: string;
}

/** A toFQDNs selector: the addresses learned from allowed answers for the names it matches. */
export type FqdnSelector = DnsRule;

/** L7 rules of one toPorts entry; the rules of a list are alternatives. A port has HTTP or DNS rules, not both. */
export interface L7Rules {
  http: HttpRule[];
  dns?: DnsRule[];
}

export interface IcmpSpec {
  family: 'IPv4' | 'IPv6';
  type: number;
}

export type Entity =
  | 'all'
  | 'world'
  | 'world-ipv4'
  | 'world-ipv6'
  | 'cluster'
  | 'host'
  | 'remote-node'
  | 'kube-apiserver'
  | 'init'
  | 'ingress'
  | 'unmanaged'
  | 'health'
  | 'none';

export interface CidrPeer {
  cidr: string;
  except: string[];
  /**
   * Match by address, whoever holds it (Kubernetes NetworkPolicy ipBlock: pods
   * and nodes too). Without it the prefix selects CIDR identities only, which
   * never stand for pods or nodes (CiliumNetworkPolicy toCIDR semantics).
   */
  byAddress?: boolean;
}

/**
 * The peers of one rule: the union of selectors, entities and CIDRs.
 * `any: true` means every peer (an L3 wildcard, identity 0 in the map).
 */
/** A service named by toServices: by name, or by a selector over Service labels. */
export interface ServicePeer {
  namespace: string;
  name?: string;
  selector?: Selector;
}

export interface Peers {
  any?: boolean;
  selectors: Selector[];
  entities: Entity[];
  cidrs: CidrPeer[];
  /** toServices: resolved to the services' backends by the repository. */
  services?: ServicePeer[];
  /** toFQDNs: the identities of addresses learned from DNS answers for matching names. */
  fqdns?: FqdnSelector[];
}

/**
 * One allow or deny rule in one direction: peers x (ports or ICMP types).
 * `ports` undefined and `icmps` undefined = all ports and protocols.
 */
export interface PeerRule {
  peers: Peers;
  ports?: PortSpec[];
  icmps?: IcmpSpec[];
}

export type Direction = 'ingress' | 'egress';

export interface PolicySource {
  kind: 'CiliumNetworkPolicy' | 'CiliumClusterwideNetworkPolicy' | 'NetworkPolicy';
  namespace?: string;
  name: string;
  /** Index of the rule within the object (CNP `specs` gives several). */
  index: number;
}

export interface Rule {
  source: PolicySource;
  /** Which endpoints the rule applies to. */
  subject: Selector;
  ingress: PeerRule[];
  ingressDeny: PeerRule[];
  egress: PeerRule[];
  egressDeny: PeerRule[];
  /**
   * Whether the rule turns default deny on for a direction when it selects an
   * endpoint. CNP/CCNP: true where the rule has rules in that direction, unless
   * enableDefaultDeny says false. KNP: from policyTypes.
   */
  defaultDeny: { ingress: boolean; egress: boolean };
}

export const ALL_PROTOCOLS: Exclude<Protocol, 'ANY'>[] = ['TCP', 'UDP', 'SCTP'];

export const PROTO_NUMBER: Record<string, number> = { ICMP: 1, TCP: 6, UDP: 17, ICMPV6: 58, SCTP: 132, ANY: 0 };

export const ENTITIES: Entity[] = [
  'all',
  'world',
  'world-ipv4',
  'world-ipv6',
  'cluster',
  'host',
  'remote-node',
  'kube-apiserver',
  'init',
  'ingress',
  'unmanaged',
  'health',
  'none',
];
