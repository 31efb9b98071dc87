/**
 * The CNI 1.1 plugin's logic (ADD, DEL, CHECK, STATUS, GC, VERSION), run in
 * the agent.
 *
 * bin/membrane-cni is a small C program (native/cni/membrane-cni.c) that
 * forwards the runtime's CNI_* environment and stdin to the agent
 * (POST /v1/cni) and prints the answer with its exit code. Everything a CNI
 * plugin decides happens here: configuration and environment validation with
 * the spec's error codes, the result in the shape of the requested
 * cniVersion, prevResult when chained, and the mapping of endpoint errors to
 * codes. The endpoint work itself is done by a CniBackend (the endpoint
 * manager in the agent, src/cni/backend.ts), so this module stays pure and
 * unit-testable.
 */
import { EndpointError } from '../endpoint/manager';
import { ifnameProblem } from '../netlink/ifname';

export const SUPPORTED_VERSIONS = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
export const DEFAULT_SOCKET = '/var/run/membrane/membrane.sock';
export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'] as const;
/** The CNI variables the plugin forwards (the rest of the runtime's environment stays with it). */
export const CNI_ENV = ['CNI_COMMAND', 'CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_ARGS', 'CNI_PATH'] as const;
/** A Unix socket path holds at most this many bytes (sun_path minus its NUL). */
const MAX_SOCKET_PATH = 107;
const MAX_CONTAINER_ID = 256;
const MAX_NETNS_PATH = 4096;

/** Error codes of the CNI spec, plus Membrane's own (100+). */
export const Code = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnv: 4,
  IoFailure: 5,
  DecodeFailure: 6,
  InvalidConfig: 7,
  TryAgainLater: 11,
  NotAvailable: 50,
  EndpointConflict: 100,
  AddressExhausted: 101,
  AgentFailure: 102,
  CheckFailed: 103,
} as const;

export class CniError extends Error {
  constructor(readonly code: number, msg: string, readonly details = '') {
    super(msg);
  }
}

export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  socket?: string;
  mtu?: number;
  prevResult?: any;
  runtimeConfig?: Record<string, unknown>;
  dns?: Record<string, unknown>;
  'cni.dev/valid-attachments'?: { containerID: string; ifname: string }[];
  [k: string]: unknown;
}

export interface Invocation {
  env: Partial<Record<string, string>>;
  stdin: string;
}

export interface Outcome {
  /** What the plugin prints (without the trailing newline; nothing when empty). */
  stdout: string;
  exitCode: number;
  /** The CNI error code of a failure (for logs and metrics). */
  code?: number;
}

/** What ADD needs from the agent's answer. */
export interface AddedEndpoint {
  endpoint: { id: number; ifname: string; ipv4: string; mac: string; hostIfname: string; hostMac: string; mtu: number; netns: string };
  router: string;
}

/**
 * The endpoint work behind the commands. Implementations throw EndpointError
 * (its kind and field decide the CNI code) or any other error (code 102).
 */
export interface CniBackend {
  add(req: { containerId: string; ifname: string; netns: string; args: Record<string, string>; mtu?: number }): Promise<AddedEndpoint>;
  del(containerId: string, ifname: string): Promise<void>;
  /** The problems found (none: healthy). */
  check(containerId: string, ifname: string, netns: string): Promise<string[]>;
  /** Resolves when the node can serve ADD. */
  status(): Promise<void>;
  gc(valid: { containerId: string; ifname: string }[]): Promise<{ removed: string[]; errors: string[] }>;
}

function versionAtLeast(v: string, min: string): boolean {
  const a = v.split('.').map(Number);
  const b = min.split('.').map(Number);
  for (let i = 0; i < 3; i++) if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  return true;
}

export function parseConf(stdin: string, command: string): NetConf {
  let conf: unknown;
  try {
    conf = JSON.parse(stdin);
  } catch (e) {
    throw new CniError(Code.DecodeFailure, `failed to decode network configuration from stdin: ${(e as Error).message}`);
  }
  if (!conf || typeof conf !== 'object' || Array.isArray(conf)) throw new CniError(Code.DecodeFailure, 'network configuration must be a JSON object');
  const c = conf as NetConf;
  if (typeof c.cniVersion !== 'string' || c.cniVersion === '') throw new CniError(Code.InvalidConfig, 'network configuration: field "cniVersion" is required (a string such as "1.1.0")');
  if (!SUPPORTED_VERSIONS.includes(c.cniVersion)) {
    throw new CniError(Code.IncompatibleVersion, `network configuration: cniVersion "${c.cniVersion}" is not supported (supported: ${SUPPORTED_VERSIONS.join(', ')})`);
  }
  if (command === 'VERSION') return c;
  if (typeof c.name !== 'string' || c.name === '') throw new CniError(Code.InvalidConfig, 'network configuration: field "name" is required');
  if (c.socket !== undefined && (typeof c.socket !== 'string' || !c.socket.startsWith('/') || c.socket.includes('\0'))) {
    throw new CniError(Code.InvalidConfig, `network configuration: field "socket" must be an absolute path, got ${JSON.stringify(c.socket)}`);
  }
  if (typeof c.socket === 'string' && Buffer.byteLength(c.socket) > MAX_SOCKET_PATH) {
    throw new CniError(Code.InvalidConfig, `network configuration: field "socket": ${JSON.stringify(c.socket)} is longer than the ${MAX_SOCKET_PATH} bytes a Unix socket path can have`);
  }
  if (c.mtu !== undefined && (!Number.isInteger(c.mtu) || (c.mtu as number) < 576 || (c.mtu as number) > 65535)) {
    throw new CniError(Code.InvalidConfig, `network configuration: field "mtu" must be an integer between 576 and 65535, got ${JSON.stringify(c.mtu)}`);
  }
  if ((command === 'STATUS' || command === 'GC') && !versionAtLeast(c.cniVersion, '1.1.0')) {
    throw new CniError(Code.IncompatibleVersion, `${command} needs cniVersion 1.1.0 or later, the configuration says "${c.cniVersion}"`);
  }
  return c;
}

function requireEnv(env: Invocation['env'], names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of names) {
    const v = env[n];
    if (v === undefined || v === '') throw new CniError(Code.InvalidEnv, `environment variable ${n} is required for ${env.CNI_COMMAND}`);
    out[n] = v;
  }
  const badIfname = out.CNI_IFNAME !== undefined ? ifnameProblem(out.CNI_IFNAME) : undefined;
  if (badIfname) throw new CniError(Code.InvalidEnv, `environment variable CNI_IFNAME: ${badIfname}`);
  if (out.CNI_CONTAINERID !== undefined && out.CNI_CONTAINERID.length > MAX_CONTAINER_ID) {
    throw new CniError(Code.InvalidEnv, `environment variable CNI_CONTAINERID: ${out.CNI_CONTAINERID.length} characters long (at most ${MAX_CONTAINER_ID})`);
  }
  if (out.CNI_NETNS !== undefined && !out.CNI_NETNS.startsWith('/')) {
    throw new CniError(Code.InvalidEnv, `environment variable CNI_NETNS: "${out.CNI_NETNS}" must be an absolute path`);
  }
  if (out.CNI_NETNS !== undefined && out.CNI_NETNS.length > MAX_NETNS_PATH) {
    throw new CniError(Code.InvalidEnv, `environment variable CNI_NETNS: ${out.CNI_NETNS.length} characters long (at most ${MAX_NETNS_PATH})`);
  }
  return out;
}

const KNOWN_ARGS = ['IgnoreUnknown', 'K8S_POD_NAMESPACE', 'K8S_POD_NAME', 'K8S_POD_UID', 'K8S_POD_INFRA_CONTAINER_ID'];

export function parseCniArgs(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!text) return out;
  for (const pair of text.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CniError(Code.InvalidEnv, `environment variable CNI_ARGS: "${pair}" is not KEY=VALUE`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const ignore = /^(1|true)$/i.test(out.IgnoreUnknown ?? '');
  if (!ignore) {
    for (const k of Object.keys(out)) {
      if (!KNOWN_ARGS.includes(k)) throw new CniError(Code.InvalidEnv, `environment variable CNI_ARGS: unknown key "${k}" (set IgnoreUnknown=1 to ignore it)`);
    }
  }
  delete out.IgnoreUnknown;
  return out;
}

/** The ADD result in the requested version's shape (chained: appended to prevResult). */
export function buildResult(conf: NetConf, r: AddedEndpoint): any {
  const prev = conf.prevResult && typeof conf.prevResult === 'object' ? conf.prevResult : undefined;
  const interfaces = [...(prev?.interfaces ?? [])];
  const base = interfaces.length;
  interfaces.push({ name: r.endpoint.hostIfname, mac: r.endpoint.hostMac, mtu: r.endpoint.mtu });
  interfaces.push({ name: r.endpoint.ifname, mac: r.endpoint.mac, mtu: r.endpoint.mtu, sandbox: r.endpoint.netns });
  const ips = [...(prev?.ips ?? []), { address: `${r.endpoint.ipv4}/32`, gateway: r.router, interface: base + 1 }];
  const routes = [...(prev?.routes ?? []), { dst: '0.0.0.0/0', gw: r.router }];
  const dns = prev?.dns ?? conf.dns ?? {};
  return convertResult({ cniVersion: conf.cniVersion, interfaces, ips, routes, dns }, conf.cniVersion);
}

export function convertResult(res: any, version: string): any {
  if (versionAtLeast(version, '1.0.0')) return { ...res, cniVersion: version };
  if (versionAtLeast(version, '0.3.0')) {
    return { ...res, cniVersion: version, ips: res.ips.map((ip: any) => ({ version: ip.address.includes(':') ? '6' : '4', ...ip })) };
  }
  const v4 = res.ips.find((ip: any) => !ip.address.includes(':'));
  return {
    cniVersion: version,
    ip4: v4 ? { ip: v4.address, gateway: v4.gateway, routes: res.routes } : undefined,
    dns: res.dns,
  };
}

/** Which CNI variable an endpoint request field came from. */
const ENV_OF_FIELD: Record<string, string> = { containerId: 'CNI_CONTAINERID', ifname: 'CNI_IFNAME', netns: 'CNI_NETNS', args: 'CNI_ARGS' };

/** An endpoint error as the CNI code and message the runtime sees. */
export function mapEndpointError(e: unknown): CniError {
  if (e instanceof CniError) return e;
  if (e instanceof EndpointError) {
    const msg = `membrane agent: ${e.message}`;
    if (e.kind === 'conflict') return new CniError(Code.EndpointConflict, msg);
    if (e.kind === 'exhausted') return new CniError(Code.AddressExhausted, msg);
    if (e.kind === 'invalid') {
      const env = e.field ? ENV_OF_FIELD[e.field] : undefined;
      const prefix = `${e.field}: `;
      if (env) return new CniError(Code.InvalidEnv, `environment variable ${env}: ${e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message}`);
      return new CniError(Code.InvalidConfig, msg);
    }
    return new CniError(Code.AgentFailure, msg);
  }
  return new CniError(Code.AgentFailure, `membrane agent: ${(e as Error)?.message ?? String(e)}`);
}

/** The VERSION answer: the configuration's cniVersion when it names one, whatever else is wrong with it. */
export function versionAnswer(stdin: string): string {
  let v = '1.1.0';
  try {
    const c = JSON.parse(stdin || '{}');
    if (typeof c.cniVersion === 'string' && c.cniVersion) v = c.cniVersion;
  } catch {
    /* VERSION answers even without a config */
  }
  return JSON.stringify({ cniVersion: v, supportedVersions: SUPPORTED_VERSIONS });
}

/** Run one CNI invocation against the backend. Never throws: failures are CNI error outcomes. */
export async function run(inv: Invocation, backend: CniBackend): Promise<Outcome> {
  const env = inv.env;
  const command = env.CNI_COMMAND;
  let cniVersion = '1.1.0';
  try {
    if (!command) throw new CniError(Code.InvalidEnv, 'environment variable CNI_COMMAND is required (ADD, DEL, CHECK, STATUS, GC or VERSION)');
    if (!(COMMANDS as readonly string[]).includes(command)) {
      throw new CniError(Code.InvalidEnv, `environment variable CNI_COMMAND: ${JSON.stringify(command)} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION`);
    }
    if (command === 'VERSION') return { stdout: versionAnswer(inv.stdin), exitCode: 0 };
    const conf = parseConf(inv.stdin, command);
    cniVersion = conf.cniVersion;
    try {
      switch (command) {
        case 'ADD': {
          const e = requireEnv(env, ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME']);
          const args = parseCniArgs(env.CNI_ARGS);
          const r = await backend.add({ containerId: e.CNI_CONTAINERID, ifname: e.CNI_IFNAME, netns: e.CNI_NETNS, args, ...(conf.mtu ? { mtu: conf.mtu } : {}) });
          return { stdout: JSON.stringify(buildResult(conf, r)), exitCode: 0 };
        }
        case 'DEL': {
          const e = requireEnv(env, ['CNI_CONTAINERID', 'CNI_IFNAME']);
          await backend.del(e.CNI_CONTAINERID, e.CNI_IFNAME);
          return { stdout: '', exitCode: 0 };
        }
        case 'CHECK': {
          const e = requireEnv(env, ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME']);
          if (!conf.prevResult) throw new CniError(Code.InvalidConfig, 'network configuration: field "prevResult" is required for CHECK');
          const problems = await backend.check(e.CNI_CONTAINERID, e.CNI_IFNAME, e.CNI_NETNS);
          if (problems.length) throw new CniError(Code.CheckFailed, `CHECK failed: ${problems.join('; ')}`);
          return { stdout: '', exitCode: 0 };
        }
        case 'STATUS': {
          await backend.status();
          return { stdout: '', exitCode: 0 };
        }
        case 'GC': {
          const valid = conf['cni.dev/valid-attachments'] ?? [];
          if (!Array.isArray(valid)) throw new CniError(Code.InvalidConfig, 'network configuration: field "cni.dev/valid-attachments" must be an array');
          const attachments = valid.map((a, i) => {
            if (!a || typeof a.containerID !== 'string' || typeof a.ifname !== 'string') {
              throw new CniError(Code.InvalidConfig, `network configuration: "cni.dev/valid-attachments[${i}]" needs string fields containerID and ifname`);
            }
            return { containerId: a.containerID, ifname: a.ifname };
          });
          const r = await backend.gc(attachments);
          if (r.errors.length) throw new CniError(Code.AgentFailure, `GC finished with errors: ${r.errors.join('; ')}`);
          return { stdout: '', exitCode: 0 };
        }
      }
    } catch (e) {
      throw mapEndpointError(e);
    }
    throw new CniError(Code.InvalidEnv, `unhandled command ${command}`);
  } catch (e) {
    const err = e instanceof CniError ? e : new CniError(Code.AgentFailure, (e as Error).message);
    return { stdout: JSON.stringify({ cniVersion, code: err.code, msg: err.message, ...(err.details ? { details: err.details } : {}) }), exitCode: 1, code: err.code };
  }
}
