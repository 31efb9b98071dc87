/**
 * Agent configuration: flags > config file > defaults. Every name the agent
 * creates in the kernel (devices, routes, pins) is derived from these values, so
 * two agents started with different flags never collide.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { parseCidr, formatCidr, formatIp, parseIp } from '../util/ip';
import { parseEndpoints } from '../kvstore/kvstore';
import { MB_POLICY_MAX_ENTRIES } from '../datapath/constants';

export interface AgentConfig {
  stateDir: string;
  bpfRoot: string;
  socket: string;
  podCidr: string;
  nodeName: string;
  mtu: number;
  bpfObjDir: string;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  /** Policy enforcement mode: default (once a rule selects an endpoint), always, never. */
  policyEnforcement: 'default' | 'always' | 'never';
  /** Flow observation: off (drops only) or the aggregation level of trace events. */
  monitorAggregation: 'off' | 'none' | 'low' | 'medium' | 'max';
  monitorReportInterval: number;
  flowsBuffer: number;
  /** Bytes the flow store may take, everything included (--flows-memory). */
  flowsMemory: number;
  /** Seconds a streaming client may take nothing while flows are dropped for it before it is disconnected. */
  flowsStreamTimeout: number;
  /** host:port for a Prometheus listener; none unless asked for. */
  metricsAddress?: string;
  serviceCidr: string;
  /** Gateway API: addresses for programmed Gateways (--gateway-address-pool). */
  gatewayAddressPool: string;
  lbAlgorithm: 'random' | 'maglev';
  /** External devices that receive NodePort traffic. */
  devices: string[];
  /** Dedicated cgroup v2 directory holding the pods' processes, for socket-level load balancing. */
  socketLbCgroup?: string;
  /** Host device pair names (host side carries the router address). */
  hostDevice: string;
  netDevice: string;
  /** Short tag that scopes per-agent names (veth names, ...). */
  instance: string;
  /** Seconds between full comparisons of every map with its desired state (drift repair); 0 = never. */
  resyncInterval: number;
  /** --cleanup: remove this node's devices, programs, pins and state instead of running. */
  cleanup?: boolean;
  /** Cluster mode (--kvstore-endpoints): resources, identities, nodes and pods shared through etcd. */
  cluster?: ClusterSettings;
  /** The underlay address other nodes tunnel to (--node-ip; default: the default route device's address). */
  nodeIp?: string;
  /** Name of the cluster (the pods' io.cilium.k8s.policy.cluster label). */
  clusterName: string;
  /** --mtu was given (otherwise cluster mode derives the pod MTU from the underlay). */
  mtuExplicit: boolean;
  /** DNS-aware policy (src/fqdn, the DNS proxy). */
  fqdn: FqdnSettings;
  /**
   * Cluster mode without --pod-cidr: the operator's cluster pool allocates the
   * pod CIDR; `podCidr` is empty until the agent has received it.
   */
  podCidrFromPool: boolean;
  /** Entries one endpoint's policy may take (--policy-map-max-entries, at most the map's size). */
  policyMapMaxEntries: number;
  /** Serve this node's flows to the cluster's agents on HOST:PORT (cluster mode; none unless given). */
  relayAddress?: string;
  /** The cluster's relay token (a file only its owner can read). */
  relayTokenFile?: string;
}

export interface FqdnSettings {
  /** --tofqdns-min-ttl: seconds a learned address is kept at least (0: the answer's TTL). */
  minTtl: number;
  /** --tofqdns-proxy-response-max-delay: ms an answer is held at most while its addresses are learned. */
  maxDelayMs: number;
  /** --tofqdns-dns-reject-response-code: refused (REFUSED) or nameError (NXDOMAIN). */
  rejectRcode: 'REFUSED' | 'NXDOMAIN';
  /** --tofqdns-endpoint-max-ip-per-hostname */
  maxIpsPerName: number;
  /** --tofqdns-endpoint-max-ips */
  maxIpsPerEndpoint: number;
}

export interface ClusterSettings {
  endpoints: string[];
  /** Key prefix of this cluster in etcd. */
  prefix: string;
  /** TTL in seconds of the agent's lease (its node, pods and identity references live on it). */
  leaseTtl: number;
}

export const DEFAULTS = {
  stateDir: '/var/run/membrane',
  bpfRoot: '/sys/fs/bpf/membrane',
  socket: '/var/run/membrane/membrane.sock',
  podCidr: '10.200.0.0/24',
  mtu: 1500,
};

/** Directories the agent must never take as its state directory. */
const SYSTEM_DIRS = ['/', '/bin', '/boot', '/dev', '/etc', '/home', '/lib', '/lib64', '/media', '/mnt', '/opt', '/proc', '/root', '/run', '/sbin', '/srv', '/sys', '/tmp', '/usr', '/var', '/var/lib', '/var/run', '/var/tmp', '/var/log'];

export function repoRoot(): string {
  // dist/src/agent -> repo root
  return path.resolve(__dirname, '..', '..', '..');
}

const USAGE = `Usage: membrane-agent [flags]
  --state-dir DIR     state directory (${DEFAULTS.stateDir})
  --bpf-root DIR      bpffs directory for pinned maps and links (${DEFAULTS.bpfRoot})
  --socket PATH       API Unix socket (${DEFAULTS.socket})
  --pod-cidr CIDR     this node's pod CIDR (${DEFAULTS.podCidr}; in cluster mode without it, the
                      operator's cluster pool allocates one and the agent waits for it)
  --node-name NAME    node name (hostname)
  --mtu N             pod interface MTU (${DEFAULTS.mtu})
  --config FILE       YAML or JSON file with any of the above (camelCase or kebab-case keys)
  --log-level LEVEL   debug|info|warn|error (info)
  --policy-enforcement MODE   default|always|never (default)
  --monitor-aggregation LEVEL off|none|low|medium|max (medium): off = drop events only
  --monitor-report-interval S periodic flow report for level low (5)
  --flows-buffer N            flows kept for observe, at most (65536)
  --flows-memory SIZE         memory for kept flows, at most, e.g. 64Mi, 1Gi, 500M (64Mi)
  --flows-stream-timeout S    a streaming client (observe --follow, monitor, UI) that takes nothing
                              for S seconds while flows are dropped for it is disconnected (30)
  --metrics-address HOST:PORT also serve Prometheus /metrics on TCP (off unless given)
  --service-cidr CIDR         ClusterIPs are allocated from it (10.96.0.0/16)
  --gateway-address-pool CIDR Gateway API: each programmed Gateway gets an address from it, added to the
                              node's host device (10.199.0.0/24)
  --lb-algorithm ALG          random|maglev, default backend selection (random)
  --devices DEV[,DEV]         external devices where NodePort traffic arrives (none)
  --socket-lb-cgroup DIR      also load-balance at the socket (connect/sendmsg) for processes in this
                              dedicated cgroup v2 directory (never the cgroup root); off unless given
  --resync-interval S         compare every map with its desired state and repair drift every S seconds (30; 0 = never)
  --cleanup                   do not run: remove what an agent with the same flags left on this node
                              (endpoint veths, host devices and routes, programs on --devices, pins
                              under --bpf-root, the state directory); refused while an agent serves
  --kvstore-endpoints URL[,URL] cluster mode: etcd client URLs (resources, identities, nodes and pods are
                              shared through etcd; without it the embedded store serves one node)
  --kvstore-prefix P          key prefix of this cluster in etcd (membrane/<cluster-name>/)
  --kvstore-lease-ttl S       lease of this node's keys: a node that stops renewing it leaves every
                              other node's maps after S seconds (20)
  --cluster-name NAME         cluster name (default)
  --node-ip IP                underlay address other nodes tunnel to (the default route device's address)
  --relay-address HOST:PORT   cluster mode: serve this node's flows to the other nodes' agents (for
                              observe --node/--all-nodes) on TCP; no listener unless given
  --relay-token-file FILE     the cluster's relay token (>= 16 characters, file mode 0600): required to
                              serve and to ask other nodes
  --policy-map-max-entries N  entries one endpoint's policy may take (${MB_POLICY_MAX_ENTRIES}, the map's size); a policy
                              needing more fails on that endpoint (fails closed) and is reported
DNS-aware policy (toFQDNs, DNS rules):
  --tofqdns-min-ttl S         keep learned addresses at least S seconds (0: the answer's TTL)
  --tofqdns-proxy-response-max-delay D
                              hold an answer at most D (100ms) while its addresses reach the maps
  --tofqdns-dns-reject-response-code refused|nameError
                              answer to a denied query: REFUSED (refused) or NXDOMAIN (nameError)
  --tofqdns-endpoint-max-ip-per-hostname N
                              addresses kept per name (50; the one expiring first makes room)
  --tofqdns-endpoint-max-ips N
                              addresses kept per endpoint (1000; further ones are not learned)
`;

export class ConfigError extends Error {}

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1e3, K: 1e3, M: 1e6, G: 1e9, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, KB: 1e3, MB: 1e6, GB: 1e9, B: 1 };

/** A size in bytes: a number, or with a unit as Kubernetes quantities (64Mi, 1Gi, 500M, 2G; also MiB, MB). */
export function parseByteSize(v: string | number, field: string): number {
  if (typeof v === 'number') {
    if (Number.isInteger(v) && v >= 0) return v;
    throw new ConfigError(`${field}: ${v} is not a number of bytes`);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(v);
  const unit = m ? SIZE_UNITS[m[2]] : undefined;
  if (!m || unit === undefined) throw new ConfigError(`${field}: "${v}" is not a size (bytes, or with a unit: Ki, Mi, Gi, K, M, G)`);
  return Math.floor(Number(m[1]) * unit);
}

export function parseAgentArgs(argv: string[]): AgentConfig | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      'state-dir': { type: 'string' },
      'bpf-root': { type: 'string' },
      socket: { type: 'string' },
      'pod-cidr': { type: 'string' },
      'node-name': { type: 'string' },
      mtu: { type: 'string' },
      config: { type: 'string' },
      'log-level': { type: 'string' },
      'bpf-obj-dir': { type: 'string' },
      'policy-enforcement': { type: 'string' },
      'monitor-aggregation': { type: 'string' },
      'monitor-report-interval': { type: 'string' },
      'flows-buffer': { type: 'string' },
      'flows-memory': { type: 'string' },
      'flows-stream-timeout': { type: 'string' },
      'metrics-address': { type: 'string' },
      'service-cidr': { type: 'string' },
      'gateway-address-pool': { type: 'string' },
      'lb-algorithm': { type: 'string' },
      devices: { type: 'string' },
      'socket-lb-cgroup': { type: 'string' },
      'resync-interval': { type: 'string' },
      cleanup: { type: 'boolean' },
      'kvstore-endpoints': { type: 'string' },
      'kvstore-prefix': { type: 'string' },
      'kvstore-lease-ttl': { type: 'string' },
      'cluster-name': { type: 'string' },
      'node-ip': { type: 'string' },
      'tofqdns-min-ttl': { type: 'string' },
      'tofqdns-proxy-response-max-delay': { type: 'string' },
      'tofqdns-dns-reject-response-code': { type: 'string' },
      'tofqdns-endpoint-max-ip-per-hostname': { type: 'string' },
      'tofqdns-endpoint-max-ips': { type: 'string' },
      'policy-map-max-entries': { type: 'string' },
      'relay-address': { type: 'string' },
      'relay-token-file': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return 'help';
  let file: Record<string, unknown> = {};
  if (values.config) {
    let text: string;
    try {
      text = fs.readFileSync(values.config, 'utf8');
    } catch (e) {
      throw new ConfigError(`--config: cannot read ${values.config}: ${(e as Error).message}`);
    }
    const parsed = YAML.parse(text);
    if (parsed !== null && (typeof parsed !== 'object' || Array.isArray(parsed))) {
      throw new ConfigError(`--config: ${values.config} must hold a mapping of settings`);
    }
    for (const [k, v] of Object.entries(parsed ?? {})) file[k.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = v;
    const known = ['stateDir', 'bpfRoot', 'socket', 'podCidr', 'nodeName', 'mtu', 'logLevel', 'bpfObjDir', 'policyEnforcement', 'monitorAggregation', 'monitorReportInterval', 'flowsBuffer', 'flowsMemory', 'flowsStreamTimeout', 'metricsAddress', 'serviceCidr', 'gatewayAddressPool', 'lbAlgorithm', 'devices', 'socketLbCgroup', 'resyncInterval', 'kvstoreEndpoints', 'kvstorePrefix', 'kvstoreLeaseTtl', 'clusterName', 'nodeIp', 'tofqdnsMinTtl', 'tofqdnsProxyResponseMaxDelay', 'tofqdnsDnsRejectResponseCode', 'tofqdnsEndpointMaxIpPerHostname', 'tofqdnsEndpointMaxIps', 'policyMapMaxEntries', 'relayAddress', 'relayTokenFile'];
    for (const k of Object.keys(file)) {
      if (!known.includes(k)) throw new ConfigError(`--config: unknown setting "${k}" in ${values.config} (known: ${known.join(', ')})`);
    }
  }
  const pick = (flag: string | undefined, key: string, def: string): string => {
    const v = flag ?? (file[key] as string | undefined) ?? def;
    if (typeof v !== 'string' && typeof v !== 'number') throw new ConfigError(`${key}: expected a string, got ${JSON.stringify(v)}`);
    return String(v);
  };
  const cfg = buildConfig({
    stateDir: pick(values['state-dir'], 'stateDir', DEFAULTS.stateDir),
    bpfRoot: pick(values['bpf-root'], 'bpfRoot', DEFAULTS.bpfRoot),
    socket: values.socket ?? (file.socket as string | undefined),
    podCidr: values['pod-cidr'] ?? (file.podCidr as string | undefined),
    nodeName: pick(values['node-name'], 'nodeName', os.hostname()),
    mtu: pick(values.mtu, 'mtu', String(DEFAULTS.mtu)),
    logLevel: pick(values['log-level'], 'logLevel', 'info'),
    bpfObjDir: pick(values['bpf-obj-dir'], 'bpfObjDir', path.join(repoRoot(), 'bpf')),
    policyEnforcement: pick(values['policy-enforcement'], 'policyEnforcement', 'default'),
    monitorAggregation: pick(values['monitor-aggregation'], 'monitorAggregation', 'medium'),
    monitorReportInterval: pick(values['monitor-report-interval'], 'monitorReportInterval', '5'),
    flowsBuffer: pick(values['flows-buffer'], 'flowsBuffer', '65536'),
    flowsMemory: pick(values['flows-memory'], 'flowsMemory', '64Mi'),
    flowsStreamTimeout: pick(values['flows-stream-timeout'], 'flowsStreamTimeout', '30'),
    metricsAddress: values['metrics-address'] ?? (file.metricsAddress as string | undefined),
    serviceCidr: pick(values['service-cidr'], 'serviceCidr', '10.96.0.0/16'),
    gatewayAddressPool: pick(values['gateway-address-pool'], 'gatewayAddressPool', DEFAULT_GATEWAY_POOL),
    lbAlgorithm: pick(values['lb-algorithm'], 'lbAlgorithm', 'random'),
    devices: values.devices ?? (Array.isArray(file.devices) ? (file.devices as string[]).join(',') : (file.devices as string | undefined)) ?? '',
    socketLbCgroup: values['socket-lb-cgroup'] ?? (file.socketLbCgroup as string | undefined),
    resyncInterval: pick(values['resync-interval'], 'resyncInterval', '30'),
    kvstoreEndpoints: values['kvstore-endpoints'] ?? (Array.isArray(file.kvstoreEndpoints) ? (file.kvstoreEndpoints as string[]).join(',') : (file.kvstoreEndpoints as string | undefined)),
    kvstorePrefix: values['kvstore-prefix'] ?? (file.kvstorePrefix as string | undefined),
    kvstoreLeaseTtl: values['kvstore-lease-ttl'] ?? (file.kvstoreLeaseTtl as string | number | undefined),
    clusterName: values['cluster-name'] ?? (file.clusterName as string | undefined),
    nodeIp: values['node-ip'] ?? (file.nodeIp as string | undefined),
    mtuExplicit: values.mtu !== undefined || file.mtu !== undefined,
    tofqdnsMinTtl: pick(values['tofqdns-min-ttl'], 'tofqdnsMinTtl', '0'),
    tofqdnsProxyResponseMaxDelay: pick(values['tofqdns-proxy-response-max-delay'], 'tofqdnsProxyResponseMaxDelay', '100ms'),
    tofqdnsDnsRejectResponseCode: pick(values['tofqdns-dns-reject-response-code'], 'tofqdnsDnsRejectResponseCode', 'refused'),
    tofqdnsEndpointMaxIpPerHostname: pick(values['tofqdns-endpoint-max-ip-per-hostname'], 'tofqdnsEndpointMaxIpPerHostname', '50'),
    tofqdnsEndpointMaxIps: pick(values['tofqdns-endpoint-max-ips'], 'tofqdnsEndpointMaxIps', '1000'),
    policyMapMaxEntries: values['policy-map-max-entries'] ?? (file.policyMapMaxEntries as string | number | undefined),
    relayAddress: values['relay-address'] ?? (file.relayAddress as string | undefined),
    relayTokenFile: values['relay-token-file'] ?? (file.relayTokenFile as string | undefined),
  });
  return values.cleanup ? { ...cfg, cleanup: true } : cfg;
}

export function buildConfig(o: {
  stateDir: string;
  bpfRoot: string;
  socket?: string;
  /** Absent: the default, or in cluster mode the operator's cluster pool. */
  podCidr?: string;
  nodeName: string;
  mtu: string | number;
  logLevel: string;
  bpfObjDir: string;
  policyEnforcement?: string;
  monitorAggregation?: string;
  monitorReportInterval?: string | number;
  flowsBuffer?: string | number;
  flowsMemory?: string | number;
  flowsStreamTimeout?: string | number;
  metricsAddress?: string;
  serviceCidr?: string;
  gatewayAddressPool?: string;
  lbAlgorithm?: string;
  devices?: string;
  socketLbCgroup?: string;
  resyncInterval?: string | number;
  kvstoreEndpoints?: string;
  kvstorePrefix?: string;
  kvstoreLeaseTtl?: string | number;
  clusterName?: string;
  nodeIp?: string;
  mtuExplicit?: boolean;
  tofqdnsMinTtl?: string | number;
  tofqdnsProxyResponseMaxDelay?: string | number;
  tofqdnsDnsRejectResponseCode?: string;
  tofqdnsEndpointMaxIpPerHostname?: string | number;
  tofqdnsEndpointMaxIps?: string | number;
  policyMapMaxEntries?: string | number;
  relayAddress?: string;
  relayTokenFile?: string;
}): AgentConfig {
  const stateDir = path.resolve(o.stateDir);
  // The agent owns its state directory (it is made 0700 and removed by --cleanup): never a shared system directory.
  if (SYSTEM_DIRS.includes(stateDir)) throw new ConfigError(`state-dir: "${o.stateDir}" is a system directory; give Membrane a directory of its own (e.g. ${DEFAULTS.stateDir})`);
  const bpfRoot = path.resolve(o.bpfRoot);
  const podCidrFromPool = o.podCidr === undefined && o.kvstoreEndpoints !== undefined;
  let podCidr = '';
  if (!podCidrFromPool) {
    try {
      podCidr = formatCidr(parseCidr(o.podCidr ?? DEFAULTS.podCidr, 'pod-cidr'));
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
  }
  const policyMapMaxEntries = Number(o.policyMapMaxEntries ?? MB_POLICY_MAX_ENTRIES);
  if (!Number.isInteger(policyMapMaxEntries) || policyMapMaxEntries < 1 || policyMapMaxEntries > MB_POLICY_MAX_ENTRIES) {
    throw new ConfigError(`policy-map-max-entries: "${o.policyMapMaxEntries}" must be 1..${MB_POLICY_MAX_ENTRIES} (the policy map's size)`);
  }
  const mtu = Number(o.mtu);
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > 65535) throw new ConfigError(`mtu: "${o.mtu}" must be an integer between 576 and 65535`);
  if (!['debug', 'info', 'warn', 'error'].includes(o.logLevel)) throw new ConfigError(`log-level: "${o.logLevel}" must be debug, info, warn or error`);
  const pe = o.policyEnforcement ?? 'default';
  if (!['default', 'always', 'never'].includes(pe)) throw new ConfigError(`policy-enforcement: "${pe}" must be default, always or never`);
  const agg = o.monitorAggregation ?? 'medium';
  if (!['off', 'none', 'low', 'medium', 'max'].includes(agg)) throw new ConfigError(`monitor-aggregation: "${agg}" must be off, none, low, medium or max`);
  const interval = Number(o.monitorReportInterval ?? 5);
  if (!Number.isInteger(interval) || interval < 1 || interval > 3600) throw new ConfigError(`monitor-report-interval: "${o.monitorReportInterval}" must be 1..3600 seconds`);
  const flowsBuffer = Number(o.flowsBuffer ?? 65536);
  if (!Number.isInteger(flowsBuffer) || flowsBuffer < 1 || flowsBuffer > 10_000_000) throw new ConfigError(`flows-buffer: "${o.flowsBuffer}" must be 1..10000000`);
  const flowsMemory = parseByteSize(o.flowsMemory ?? '64Mi', 'flows-memory');
  if (flowsMemory < 1 << 20 || flowsMemory > 64 * 2 ** 30) throw new ConfigError(`flows-memory: "${o.flowsMemory}" must be between 1Mi and 64Gi`);
  const flowsStreamTimeout = Number(o.flowsStreamTimeout ?? 30);
  if (!Number.isFinite(flowsStreamTimeout) || flowsStreamTimeout < 1 || flowsStreamTimeout > 3600) throw new ConfigError(`flows-stream-timeout: "${o.flowsStreamTimeout}" must be 1..3600 seconds`);
  if (o.metricsAddress !== undefined && !/^[^\s:]+:\d{1,5}$/.test(o.metricsAddress)) throw new ConfigError(`metrics-address: "${o.metricsAddress}" must be HOST:PORT`);
  let serviceCidr: string;
  try {
    serviceCidr = formatCidr(parseCidr(o.serviceCidr ?? '10.96.0.0/16', 'service-cidr'));
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  let gatewayAddressPool: string;
  try {
    gatewayAddressPool = formatCidr(parseCidr(o.gatewayAddressPool ?? DEFAULT_GATEWAY_POOL, 'gateway-address-pool'));
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  if (parseCidr(gatewayAddressPool).addr.family !== 4) throw new ConfigError(`gateway-address-pool: "${o.gatewayAddressPool}" must be IPv4 (IPv6 is not wired yet)`);
  const resyncInterval = Number(o.resyncInterval ?? 30);
  if (!Number.isInteger(resyncInterval) || resyncInterval < 0 || resyncInterval > 86400) throw new ConfigError(`resync-interval: "${o.resyncInterval}" must be 0..86400 seconds`);
  const lbAlgorithm = o.lbAlgorithm ?? 'random';
  if (lbAlgorithm !== 'random' && lbAlgorithm !== 'maglev') throw new ConfigError(`lb-algorithm: "${lbAlgorithm}" must be random or maglev`);
  const devices = (o.devices ?? '').split(',').map((d) => d.trim()).filter(Boolean);
  for (const d of devices) if (!/^[^/\s:]{1,15}$/.test(d)) throw new ConfigError(`devices: "${d}" is not an interface name`);
  const clusterName = o.clusterName ?? 'default';
  if (!/^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$/.test(clusterName)) throw new ConfigError(`cluster-name: "${clusterName}" must be 1-32 lowercase letters, digits or dashes`);
  let cluster: ClusterSettings | undefined;
  if (o.kvstoreEndpoints !== undefined) {
    let endpoints: string[];
    try {
      endpoints = parseEndpoints(o.kvstoreEndpoints);
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
    const prefix = o.kvstorePrefix ?? `membrane/${clusterName}/`;
    if (!/^[A-Za-z0-9._/-]{1,200}$/.test(prefix) || prefix.startsWith('/') || prefix.includes('//')) {
      throw new ConfigError(`kvstore-prefix: "${prefix}" must be 1-200 characters of letters, digits, ".", "_", "-" and single "/" (not leading)`);
    }
    const leaseTtl = Number(o.kvstoreLeaseTtl ?? 20);
    if (!Number.isInteger(leaseTtl) || leaseTtl < 2 || leaseTtl > 3600) throw new ConfigError(`kvstore-lease-ttl: "${o.kvstoreLeaseTtl}" must be 2..3600 seconds`);
    cluster = { endpoints, prefix: prefix.endsWith('/') ? prefix : `${prefix}/`, leaseTtl };
  } else {
    for (const [flag, v] of [['kvstore-prefix', o.kvstorePrefix], ['kvstore-lease-ttl', o.kvstoreLeaseTtl]] as const) {
      if (v !== undefined) throw new ConfigError(`${flag}: only meaningful with --kvstore-endpoints (cluster mode)`);
    }
  }
  if (o.relayAddress !== undefined) {
    if (!cluster) throw new ConfigError('relay-address: only meaningful with --kvstore-endpoints (cluster mode)');
    if (!/^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}$/.test(o.relayAddress)) throw new ConfigError(`relay-address: "${o.relayAddress}" must be HOST:PORT`);
    if (o.relayTokenFile === undefined) throw new ConfigError('relay-token-file: required with --relay-address (the cluster\'s agents authenticate each other with it)');
  }
  if (o.relayTokenFile !== undefined && !cluster) throw new ConfigError('relay-token-file: only meaningful with --kvstore-endpoints (cluster mode)');
  let nodeIp: string | undefined;
  if (o.nodeIp !== undefined) {
    try {
      nodeIp = formatIp(parseIp(o.nodeIp, 'node-ip'));
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
  }
  if (!bpfRoot.startsWith('/sys/fs/bpf/')) throw new ConfigError(`bpf-root: "${o.bpfRoot}" must be a directory under /sys/fs/bpf`);
  const isDefault = stateDir === DEFAULTS.stateDir && bpfRoot === DEFAULTS.bpfRoot;
  const instance = isDefault ? '' : crypto.createHash('sha256').update(`${bpfRoot}\0${stateDir}`).digest('hex').slice(0, 6);
  return {
    stateDir,
    bpfRoot,
    socket: path.resolve(o.socket ?? path.join(stateDir, 'membrane.sock')),
    podCidr,
    nodeName: o.nodeName,
    mtu,
    bpfObjDir: path.resolve(o.bpfObjDir),
    logLevel: o.logLevel as AgentConfig['logLevel'],
    policyEnforcement: pe as AgentConfig['policyEnforcement'],
    monitorAggregation: agg as AgentConfig['monitorAggregation'],
    monitorReportInterval: interval,
    flowsBuffer,
    flowsMemory,
    flowsStreamTimeout,
    metricsAddress: o.metricsAddress,
    serviceCidr,
    gatewayAddressPool,
    lbAlgorithm,
    devices,
    socketLbCgroup: o.socketLbCgroup ? path.resolve(o.socketLbCgroup) : undefined,
    hostDevice: isDefault ? 'mb_host' : `mbh_${instance}`,
    netDevice: isDefault ? 'mb_net' : `mbn_${instance}`,
    instance,
    resyncInterval,
    cluster,
    nodeIp,
    clusterName,
    mtuExplicit: o.mtuExplicit ?? o.mtu !== undefined,
    fqdn: fqdnSettings(o),
    podCidrFromPool,
    policyMapMaxEntries,
    relayAddress: o.relayAddress,
    relayTokenFile: o.relayTokenFile ? path.resolve(o.relayTokenFile) : undefined,
  };
}

function fqdnSettings(o: {
  tofqdnsMinTtl?: string | number;
  tofqdnsProxyResponseMaxDelay?: string | number;
  tofqdnsDnsRejectResponseCode?: string;
  tofqdnsEndpointMaxIpPerHostname?: string | number;
  tofqdnsEndpointMaxIps?: string | number;
}): FqdnSettings {
  const int = (v: string | number | undefined, def: number, flag: string, min: number, max: number, what: string): number => {
    const n = v === undefined ? def : Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`${flag}: "${v}" must be ${min}..${max} ${what}`);
    return n;
  };
  const delayText = String(o.tofqdnsProxyResponseMaxDelay ?? '100ms');
  const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(delayText);
  const maxDelayMs = m ? Number(m[1]) * (m[2] === 's' ? 1000 : 1) : NaN;
  if (!Number.isFinite(maxDelayMs) || maxDelayMs < 0 || maxDelayMs > 60_000) {
    throw new ConfigError(`tofqdns-proxy-response-max-delay: "${delayText}" must be a duration of 0..60s (e.g. 100ms, 1s; a number is milliseconds)`);
  }
  const rc = String(o.tofqdnsDnsRejectResponseCode ?? 'refused');
  const rejectRcode = ({ refused: 'REFUSED', nameerror: 'NXDOMAIN', nxdomain: 'NXDOMAIN' } as const)[rc.toLowerCase() as 'refused'];
  if (!rejectRcode) throw new ConfigError(`tofqdns-dns-reject-response-code: "${rc}" must be refused or nameError`);
  return {
    minTtl: int(o.tofqdnsMinTtl, 0, 'tofqdns-min-ttl', 0, 7 * 86400, 'seconds'),
    maxDelayMs,
    rejectRcode,
    maxIpsPerName: int(o.tofqdnsEndpointMaxIpPerHostname, 50, 'tofqdns-endpoint-max-ip-per-hostname', 1, 100_000, 'addresses'),
    maxIpsPerEndpoint: int(o.tofqdnsEndpointMaxIps, 1000, 'tofqdns-endpoint-max-ips', 1, 1_000_000, 'addresses'),
  };
}

/** Gateway addresses when --gateway-address-pool is not given: a single node works out of the box. */
export const DEFAULT_GATEWAY_POOL = '10.199.0.0/24';

export function usage(): string {
  return USAGE;
}

/** Host-side veth name for an attachment: "lxc" + 12 hex chars (IFNAMSIZ-safe). */
export function hostVethName(cfg: AgentConfig, containerId: string, ifname: string): string {
  return 'lxc' + crypto.createHash('sha256').update(`${cfg.instance}\0${containerId}\0${ifname}`).digest('hex').slice(0, 12);
}
