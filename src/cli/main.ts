/**
 * membrane: the command-line client of the agent.
 *   membrane [--socket PATH] [-o json] <command>
 * The socket defaults to $MEMBRANE_SOCKET, then /var/run/membrane/membrane.sock.
 */
import { AgentClient, AgentUnreachable, ApiError } from '../agent/client';
import { table } from './table';

const DEFAULT_SOCKET = '/var/run/membrane/membrane.sock';

const HELP = `Usage: membrane [--socket PATH] [-o json] COMMAND

Commands:
  status                     agent and datapath status
  endpoint list              endpoints on this node
  endpoint get ID            one endpoint
  identity list              security identities
  identity get ID            one identity
  ipam list                  address allocations
  bpf endpoint list          the kernel's endpoints map (mb_endpoints)
  bpf ipcache list           the kernel's ipcache map (mb_ipcache)
  bpf metrics list           forwarded/dropped packets by reason and direction
  bpf ct list                connection tracking entries

Flags:
  --socket PATH   agent API socket (env MEMBRANE_SOCKET; default ${DEFAULT_SOCKET})
  -o, --output F  output format: table (default) or json
`;

export class UsageError extends Error {}

interface Opts {
  socket: string;
  output: 'table' | 'json';
  args: string[];
}

export function parseCli(argv: string[], env: NodeJS.ProcessEnv): Opts | 'help' {
  let socket = env.MEMBRANE_SOCKET || DEFAULT_SOCKET;
  let output: Opts['output'] = 'table';
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (name: string) => {
      const eq = a.indexOf('=');
      if (eq > 0) return a.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`flag ${name} needs a value`);
      return v;
    };
    if (a === '-h' || a === '--help' || a === 'help') return 'help';
    else if (a === '--socket' || a.startsWith('--socket=')) socket = value('--socket');
    else if (a === '-o' || a === '--output' || a.startsWith('--output=') || a.startsWith('-o=')) {
      const v = value('-o');
      if (v !== 'json' && v !== 'table') throw new UsageError(`-o: unknown output format "${v}" (json or table)`);
      output = v;
    } else if (a.startsWith('-')) throw new UsageError(`unknown flag ${a}`);
    else args.push(a);
  }
  if (!args.length) return 'help';
  return { socket, output, args };
}

type Handler = (c: AgentClient, o: Opts, rest: string[]) => Promise<string>;

const json = (v: unknown) => JSON.stringify(v, null, 2) + '\n';

function needId(rest: string[], what: string): number {
  const id = Number(rest[0]);
  if (!rest[0] || !Number.isInteger(id) || id < 0) throw new UsageError(`${what} get: expected a numeric id, got ${rest[0] === undefined ? 'nothing' : `"${rest[0]}"`}`);
  return id;
}

const commands: Record<string, Handler> = {
  async status(c, o) {
    const s: any = await c.get('/v1/status');
    if (o.output === 'json') return json(s);
    const lines = [
      `Node:          ${s.node}`,
      `Version:       ${s.version}`,
      `Uptime:        ${s.uptimeSeconds}s`,
      `Pod CIDR:      ${s.podCidr} (router ${s.router})`,
      `Devices:       ${s.devices.host} / ${s.devices.net}`,
      `BPF root:      ${s.bpfRoot}`,
      `Endpoints:     ${s.endpoints.ready}/${s.endpoints.total} ready`,
      `Identities:    ${s.identities}`,
      `IPAM:          ${s.ipam.allocated} allocated`,
      `Maps:          ${s.maps.map((m: any) => `${m.map} ${m.desired} desired${m.pending ? `, ${m.pending} pending` : ''}${m.lastError ? ` (error: ${m.lastError})` : ''}`).join('; ')}`,
      `Endpoint ADD:  p50 ${s.endpointCreateMs.p50 ?? '-'} ms, p99 ${s.endpointCreateMs.p99 ?? '-'} ms (${s.endpointCreateMs.count} created)`,
    ];
    for (const nr of s.endpoints.notReady) lines.push(`  endpoint ${nr.id} ${nr.state}: ${(nr.problems ?? []).join('; ')}`);
    return lines.join('\n') + '\n';
  },
  async 'endpoint list'(c, o) {
    const eps: any[] = await c.get('/v1/endpoint');
    if (o.output === 'json') return json(eps);
    return table(
      ['ENDPOINT', 'IDENTITY', 'IPv4', 'STATE', 'INTERFACE', 'NAMESPACE', 'POD', 'CONTAINER'],
      eps.map((e) => [e.id, e.identity, e.ipv4, e.state, `${e.hostIfname}/${e.ifname}`, e.namespace, e.podName ?? '', e.containerId.slice(0, 12)]),
    );
  },
  async 'endpoint get'(c, o, rest) {
    return json(await c.get(`/v1/endpoint/${needId(rest, 'endpoint')}`));
  },
  async 'identity list'(c, o) {
    const ids: any[] = await c.get('/v1/identity');
    if (o.output === 'json') return json(ids);
    return table(['ID', 'LABELS'], ids.map((i) => [i.id, i.labels.join(' ')]));
  },
  async 'identity get'(c, o, rest) {
    return json(await c.get(`/v1/identity/${needId(rest, 'identity')}`));
  },
  async 'ipam list'(c, o) {
    const r: any = await c.get('/v1/ipam');
    if (o.output === 'json') return json(r);
    return table(['IP', 'OWNER', 'ALLOCATED'], r.allocations.map((a: any) => [a.ip, a.owner, a.allocatedAt]));
  },
  async 'bpf endpoint list'(c, o) {
    const r: any = await c.get('/v1/map/mb_endpoints');
    if (o.output === 'json') return json(r.entries);
    return table(
      ['IP ADDRESS', 'LOCAL ENDPOINT INFO'],
      r.entries.map((e: any) => [e.address, e.flags.includes('host') ? '(localhost)' : `id=${e.endpointId} sec_id=${e.identity} flags=0x0 ifindex=${e.ifindex} mac=${e.mac} nodemac=${e.nodeMac}`]),
    );
  },
  async 'bpf ipcache list'(c, o) {
    const r: any = await c.get('/v1/map/mb_ipcache');
    if (o.output === 'json') return json(r.entries);
    return table(['IP PREFIX/ADDRESS', 'IDENTITY'], r.entries.map((e: any) => [e.prefix, `identity=${e.identity}${e.tunnelEndpoint ? ` tunnelendpoint=${e.tunnelEndpoint}` : ''}`]));
  },
  async 'bpf metrics list'(c, o) {
    const r: any = await c.get('/v1/map/mb_metrics');
    if (o.output === 'json') return json(r.entries);
    return table(['REASON', 'DIRECTION', 'PACKETS', 'BYTES', 'DESCRIPTION'], r.entries.map((e: any) => [e.reason, e.direction, e.packets, e.bytes, e.description]));
  },
  async 'bpf ct list'(c, o) {
    const r: any = await c.get('/v1/map/mb_ct');
    if (o.output === 'json') return json(r.entries);
    return table(['SOURCE', 'DESTINATION', 'PROTO', 'FLAGS', 'LIFETIME', 'TX', 'RX', 'SRC IDENTITY'], r.entries.map((e: any) => [e.source, e.destination, e.nexthdr, e.flags, e.lifetime, e.txPackets, e.rxPackets, e.srcIdentity]));
  },
};

export async function runCli(argv: string[], env: NodeJS.ProcessEnv): Promise<{ out: string; err: string; code: number }> {
  let opts: Opts | 'help';
  try {
    opts = parseCli(argv, env);
  } catch (e) {
    return { out: '', err: `membrane: ${(e as Error).message}\n\n${HELP}`, code: 2 };
  }
  if (opts === 'help') return { out: HELP, err: '', code: 0 };
  // Longest command name that prefixes the arguments.
  for (let n = Math.min(3, opts.args.length); n > 0; n--) {
    const name = opts.args.slice(0, n).join(' ');
    const h = commands[name];
    if (!h) continue;
    try {
      const out = await h(new AgentClient(opts.socket), opts, opts.args.slice(n));
      return { out, err: '', code: 0 };
    } catch (e) {
      if (e instanceof UsageError) return { out: '', err: `membrane: ${e.message}\n`, code: 2 };
      if (e instanceof AgentUnreachable) return { out: '', err: `membrane: ${e.message}\n`, code: 1 };
      if (e instanceof ApiError) return { out: '', err: `membrane: ${e.message}\n`, code: 1 };
      return { out: '', err: `membrane: ${(e as Error).message}\n`, code: 1 };
    }
  }
  return { out: '', err: `membrane: unknown command "${opts.args.join(' ')}"\n\n${HELP}`, code: 2 };
}

if (require.main === module) {
  runCli(process.argv.slice(2), process.env).then(({ out, err, code }) => {
    if (out) process.stdout.write(out);
    if (err) process.stderr.write(err);
    process.exitCode = code;
  });
}
