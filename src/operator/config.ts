/** membrane-operator flags. */
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { parseEndpoints } from '../kvstore/kvstore';
import { CidrPool, PoolConfigError } from './pool';

export interface OperatorConfig {
  endpoints: string[];
  prefix: string;
  /** Cluster-pool IPAM (undefined: nodes bring their own --pod-cidr). */
  pool?: { cidr: string; maskSize: number };
  nodeGcGraceSeconds: number;
  identityGcGraceSeconds: number;
  identityGcIntervalSeconds: number;
  leaderLeaseTtl: number;
  id: string;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
}

export class OperatorConfigError extends Error {}

export const OPERATOR_USAGE = `Usage: membrane-operator --kvstore-endpoints URL[,URL] [flags]
  --kvstore-endpoints URL[,URL]     etcd client URLs of the cluster (required)
  --kvstore-prefix P                the cluster's key prefix (membrane/<cluster-name>/)
  --cluster-name NAME               cluster name (default)
  --cluster-pool-ipv4-cidr CIDR     hand each node without --pod-cidr a pod CIDR from this pool
  --cluster-pool-ipv4-mask-size N   prefix length of each node's pod CIDR (24)
  --node-gc-grace S                 a gone node's pod CIDR returns to the pool after S seconds (300)
  --identity-gc-grace S             an identity no node references is deleted after S seconds (300)
  --identity-gc-interval S          how often identities are checked (60)
  --leader-lease-ttl S              leader election lease: a killed leader is replaced within S seconds (15)
  --id NAME                         this operator's name in the election (<hostname>-<pid>)
  --log-level LEVEL                 debug|info|warn|error (info)
`;

function seconds(v: string | undefined, def: number, field: string, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !Number.isFinite(n) || n < min || n > max) throw new OperatorConfigError(`${field}: "${v}" must be a number of seconds between ${min} and ${max}`);
  return n;
}

export function parseOperatorArgs(argv: string[]): OperatorConfig | 'help' {
  let values;
  try {
    values = parseArgs({
      args: argv,
      options: {
        'kvstore-endpoints': { type: 'string' },
        'kvstore-prefix': { type: 'string' },
        'cluster-name': { type: 'string' },
        'cluster-pool-ipv4-cidr': { type: 'string' },
        'cluster-pool-ipv4-mask-size': { type: 'string' },
        'node-gc-grace': { type: 'string' },
        'identity-gc-grace': { type: 'string' },
        'identity-gc-interval': { type: 'string' },
        'leader-lease-ttl': { type: 'string' },
        id: { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (e) {
    throw new OperatorConfigError((e as Error).message);
  }
  if (values.help) return 'help';
  if (!values['kvstore-endpoints']) throw new OperatorConfigError('kvstore-endpoints: required (the etcd of the cluster, e.g. http://127.0.0.1:2379)');
  let endpoints: string[];
  try {
    endpoints = parseEndpoints(values['kvstore-endpoints']);
  } catch (e) {
    throw new OperatorConfigError((e as Error).message);
  }
  const clusterName = values['cluster-name'] ?? 'default';
  if (!/^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$/.test(clusterName)) throw new OperatorConfigError(`cluster-name: "${clusterName}" must be 1-32 lowercase letters, digits or dashes`);
  const prefix = values['kvstore-prefix'] ?? `membrane/${clusterName}/`;
  if (!/^[A-Za-z0-9._/-]{1,200}$/.test(prefix) || prefix.startsWith('/') || prefix.includes('//')) {
    throw new OperatorConfigError(`kvstore-prefix: "${prefix}" must be 1-200 characters of letters, digits, ".", "_", "-" and single "/" (not leading)`);
  }
  let pool: OperatorConfig['pool'];
  const maskText = values['cluster-pool-ipv4-mask-size'];
  if (values['cluster-pool-ipv4-cidr'] !== undefined) {
    const maskSize = maskText === undefined ? 24 : Number(maskText);
    if (maskText !== undefined && !/^\d{1,2}$/.test(maskText)) throw new OperatorConfigError(`cluster-pool-ipv4-mask-size: "${maskText}" is not a prefix length`);
    try {
      const p = new CidrPool(values['cluster-pool-ipv4-cidr'], maskSize);
      pool = { cidr: p.text, maskSize };
    } catch (e) {
      if (e instanceof PoolConfigError) throw new OperatorConfigError(e.message);
      throw e;
    }
  } else if (maskText !== undefined) {
    throw new OperatorConfigError('cluster-pool-ipv4-mask-size: only meaningful with --cluster-pool-ipv4-cidr');
  }
  const logLevel = values['log-level'] ?? 'info';
  if (!['debug', 'info', 'warn', 'error'].includes(logLevel)) throw new OperatorConfigError(`log-level: "${logLevel}" must be debug, info, warn or error`);
  const id = values.id ?? `${os.hostname()}-${process.pid}`;
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(id)) throw new OperatorConfigError(`id: "${id}" must be 1-64 letters, digits, ".", "_" or "-"`);
  return {
    endpoints,
    prefix: prefix.endsWith('/') ? prefix : `${prefix}/`,
    pool,
    nodeGcGraceSeconds: seconds(values['node-gc-grace'], 300, 'node-gc-grace', 0, 7 * 86400),
    identityGcGraceSeconds: seconds(values['identity-gc-grace'], 300, 'identity-gc-grace', 0, 7 * 86400),
    identityGcIntervalSeconds: seconds(values['identity-gc-interval'], 60, 'identity-gc-interval', 0.1, 86400),
    leaderLeaseTtl: seconds(values['leader-lease-ttl'], 15, 'leader-lease-ttl', 2, 3600),
    id,
    logLevel: logLevel as OperatorConfig['logLevel'],
  };
}
