/**
 * membrane: the command-line client of the agent.
 *   membrane [--socket PATH] [-o json] <command>
 * The socket defaults to $MEMBRANE_SOCKET, then /var/run/membrane/membrane.sock.
 */
import { nameProblems, patternProblems, selectorMatches } from '../fqdn/pattern';
import * as fs from 'node:fs';
import * as path from 'node:path';
import YAML from 'yaml';
import { AgentClient, AgentUnreachable, ApiError } from '../agent/client';
import { table } from './table';
import { flowCompact, flowRow, lostLine, monitorLine } from './flowfmt';
import { isBareRule, isRuleList, rulesToPolicy, RuleImportError } from '../policy/import';
import { MAX_DEPTH, tooDeep } from '../util/depth';

/** Columns of `get` for the Gateway API kinds: what their status says. */
function gatewayColumns(kind: string | undefined): { head: string[]; row: (o: any) => string[] } | undefined {
  const cond = (conds: any[] | undefined, type: string) => conds?.find((c) => c.type === type)?.status ?? 'Unknown';
  if (kind === 'GatewayClass') return { head: ['CONTROLLER', 'ACCEPTED'], row: (o) => [o.spec?.controllerName ?? '', cond(o.status?.conditions, 'Accepted')] };
  if (kind === 'Gateway') return { head: ['CLASS', 'ADDRESS', 'PROGRAMMED'], row: (o) => [o.spec?.gatewayClassName ?? '', o.status?.addresses?.map((a: any) => a.value).join(',') || '<none>', cond(o.status?.conditions, 'Programmed')] };
  if (kind === 'HTTPRoute') {
    return {
      head: ['HOSTNAMES', 'PARENTS'],
      row: (o) => [
        (o.spec?.hostnames ?? []).join(',') || '*',
        (o.status?.parents ?? []).map((p: any) => `${p.parentRef.name}${p.parentRef.sectionName ? `/${p.parentRef.sectionName}` : ''}:${p.conditions.filter((c: any) => c.status !== 'True').map((c: any) => c.reason).join('+') || 'Accepted'}`).join(',') || '<none>',
      ],
    };
  }
  return undefined;
}

const DEFAULT_SOCKET = '/var/run/membrane/membrane.sock';

const HELP = `Usage: membrane [--socket PATH] [-o json] COMMAND

Commands:
  status                     agent and datapath status
  apply -f FILE|DIR|-        create or update resources (multi-document YAML or JSON)
  get KIND [NAME] [-n NS]    list resources (-o yaml|json); kinds: ns, pod, svc, endpointslice, netpol, cnp, ccnp,
                             gatewayclass, gateway, httproute, referencegrant
  delete -f FILE|DIR|-       delete the resources a file describes
  delete KIND NAME [-n NS]   delete one resource
  policy get                 the policies in force and the policy revision
  policy import -f FILE [--name NAME]
                             apply policy objects only; a file holding a JSON list of plain rules
                             (the reference system's format) becomes one CiliumClusterwideNetworkPolicy
                             named after the rules' name label, else the file (or --name)
  policy delete NAME [-n NS] [--kind K] | --all
  policy wait REVISION       wait until every endpoint enforces REVISION (--timeout S)
  policy trace --src S --dst D --dport N[/PROTO] [--http-method M --http-path P [--http-host H] [--http-header 'K: V']...]
                             explain the verdict; S, D: endpoint id, pod [ns/]name, or labels k=v,...
  policy selectors           the selector cache
  fqdn cache list [--endpoint ID] [--matchname NAME] [--matchpattern PATTERN]
                             addresses learned from DNS answers (toFQDNs): name, address, identity,
                             TTL, expiry and the endpoints that asked
  monitor [-t drop|trace|policy-verdict|l7]... [--related-to ID] [-v] [-o json]
                             the datapath's event stream (and the proxies' L7 records), live
  observe [FILTERS] [--follow] [--last N] [--since T] [--until T] [-o compact|table|json]
          [--node NAME]... [--all-nodes]   (cluster mode: ask those nodes' agents, merged by time)
                             flows with pod names and labels; FILTERS: --pod, --from-pod, --to-pod,
                             --namespace, --label, --ip, --identity (each also --from-/--to-),
                             --verdict, --drop-reason, --type, --protocol, --port, --tcp-flags,
                             --traffic-direction, --http-method, --http-path REGEX,
                             --http-status CODE|MIN-MAX|4+, --dns-query NAME (* any characters);
                             --type drop|trace|policy-verdict|l7; --not negates the next filter
  metrics                    Prometheus metrics of the agent and the datapath
  ui [--port N] [--all-nodes]              the service map in a browser: http://127.0.0.1:N/ (default 12000), live
  bpf policy get ENDPOINT    the endpoint's policy map in the kernel
  service list | get ID      service frontends and their backends
  bpf lb list [--frontends|--backends|--revnat|--maglev]
                             the kernel's load-balancing maps
  endpoint list              endpoints on this node
  endpoint get ID            one endpoint
  identity list              security identities
  node list                  the cluster's nodes: addresses, pod CIDRs, identities in use, alive
  identity get ID            one identity
  ipam list                  address allocations
  bpf endpoint list          the kernel's endpoints map (mb_endpoints)
  bpf ct flush [--services]  remove conntrack entries (only service entries with --services)
  bpf ipcache list           the kernel's ipcache map (mb_ipcache)
  bpf metrics list           forwarded/dropped packets by reason and direction
  bpf ct list                connection tracking entries

Flags:
  --socket PATH   agent API socket (env MEMBRANE_SOCKET; default ${DEFAULT_SOCKET})
  -o, --output F  output format: table (default), json, or yaml (get)
  -n, --namespace NS   namespace (default: default; get lists all namespaces without it)
  -f, --filename F     file, directory or - (stdin)
`;

export class UsageError extends Error {}

interface Opts {
  socket: string;
  output: 'table' | 'json' | 'yaml' | 'compact';
  args: string[];
  flags: Record<string, string | true>;
  /** Every flag in command-line order (repeatable flags, --not). */
  flagList: [string, string | true][];
  outputGiven: boolean;
}

export function parseCli(argv: string[], env: NodeJS.ProcessEnv): Opts | 'help' {
  let socket = env.MEMBRANE_SOCKET || DEFAULT_SOCKET;
  let output: Opts['output'] = 'table';
  const args: string[] = [];
  const flags: Record<string, string | true> = {};
  const flagList: [string, string | true][] = [];
  let outputGiven = false;
  const valued: Record<string, string> = { '-n': 'namespace', '--namespace': 'namespace', '-f': 'filename', '--filename': 'filename', '--src': 'src', '--dst': 'dst', '--dport': 'dport', '--timeout': 'timeout', '--kind': 'kind', '--name': 'name', '-t': 'type', '--type': 'type', '--related-to': 'related-to', '--last': 'last', '--since': 'since', '--until': 'until', '--port': 'port', '--ui-port': 'port', '--node': 'node' };
  for (const f of ['pod', 'label', 'ip', 'identity', 'port']) {
    for (const side of ['', 'from-', 'to-']) valued[`--${side}${f}`] = `${side}${f}`;
  }
  for (const f of ['verdict', 'drop-reason', 'protocol', 'tcp-flags', 'traffic-direction', 'from-namespace', 'to-namespace', 'node-name', 'http-method', 'http-path', 'http-status', 'dns-query']) valued[`--${f}`] = f;
  for (const f of ['http-host', 'http-header', 'endpoint', 'matchname', 'matchpattern']) valued[`--${f}`] = f;
  const booleans: Record<string, string> = { '--services': 'services', '--frontends': 'frontends', '--backends': 'backends', '--revnat': 'revnat', '--maglev': 'maglev', '--all': 'all', '-A': 'all-namespaces', '--all-namespaces': 'all-namespaces', '--follow': 'follow', '--not': 'not', '-v': 'verbose', '--verbose': 'verbose', '--all-nodes': 'all-nodes' };
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
      if (v !== 'json' && v !== 'table' && v !== 'yaml' && v !== 'compact') throw new UsageError(`-o: unknown output format "${v}" (table, json, yaml or compact)`);
      output = v;
      outputGiven = true;
    } else if (valued[a.split('=')[0]]) {
      const name = valued[a.split('=')[0]];
      const v = value(a.split('=')[0]);
      flags[name] = v;
      flagList.push([name, v]);
    } else if (booleans[a]) {
      flags[booleans[a]] = true;
      flagList.push([booleans[a], true]);
    }
    else if (a.startsWith('-') && a !== '-') throw new UsageError(`unknown flag ${a}`);
    else args.push(a);
  }
  if (!args.length) return 'help';
  return { socket, output, args, flags, flagList, outputGiven };
}

type Handler = (c: AgentClient, o: Opts, rest: string[]) => Promise<string>;

const json = (v: unknown) => JSON.stringify(v, null, 2) + '\n';

function proxyLine(p: any): string {
  if (!p || (!p.needed && p.state === 'stopped')) return 'not needed (no L7 rules)';
  const parts = [p.state + (p.pid ? ` (pid ${p.pid}${p.adopted ? ', adopted' : ''})` : '')];
  parts.push(`restarts ${p.restarts}`);
  if (p.lastExit) parts.push(`last exit ${p.lastExit.reason} at ${p.lastExit.at}`);
  parts.push(`config ${p.generation.applied ?? '-'}/${p.generation.desired ?? '-'}`);
  parts.push(`requests ${p.requests.forwarded} forwarded, ${p.requests.denied} denied, ${p.requests.error} errors`);
  if (p.recordsDropped) parts.push(`${p.recordsDropped} flow records dropped`);
  if (p.lastError) parts.push(`error: ${p.lastError}`);
  return parts.join('; ');
}

function needId(rest: string[], what: string): number {
  const id = Number(rest[0]);
  if (!rest[0] || !Number.isInteger(id) || id < 0) throw new UsageError(`${what} get: expected a numeric id, got ${rest[0] === undefined ? 'nothing' : `"${rest[0]}"`}`);
  return id;
}

/** The documents of a file, a directory (*.yaml, *.yml, *.json) or stdin ("-"), by source. */
export function readDocuments(target: string): { name: string; docs: unknown[] }[] {
  const sources: { name: string; text: string }[] = [];
  if (target === '-') sources.push({ name: 'stdin', text: fs.readFileSync(0, 'utf8') });
  else {
    let st: fs.Stats;
    try {
      st = fs.statSync(target);
    } catch {
      throw new UsageError(`-f: ${target} does not exist`);
    }
    if (st.isDirectory()) {
      for (const f of fs.readdirSync(target).sort()) {
        if (/\.(ya?ml|json)$/.test(f)) sources.push({ name: path.join(target, f), text: fs.readFileSync(path.join(target, f), 'utf8') });
      }
    } else sources.push({ name: target, text: fs.readFileSync(target, 'utf8') });
  }
  return sources.map((src) => {
    const docs: unknown[] = [];
    let parsed;
    try {
      parsed = YAML.parseAllDocuments(src.text);
    } catch (e) {
      // The parser recurses per nesting level: a document nested thousands deep overflows the stack.
      if (e instanceof RangeError) throw new UsageError(`${src.name}: a document is nested too deeply (more than ${MAX_DEPTH} levels)`);
      throw e;
    }
    for (const [i, doc] of (Array.isArray(parsed) ? parsed : [parsed]).entries()) {
      if (doc.errors.length) {
        const e = doc.errors[0];
        // The parser reports the stack it ran out of (a document nested thousands deep) as RESOURCE_EXHAUSTION.
        if (e.code === 'RESOURCE_EXHAUSTION') throw new UsageError(`${src.name}: document ${i + 1} is nested too deeply (more than ${MAX_DEPTH} levels) or too large (line ${e.linePos?.[0].line ?? '?'})`);
        throw new UsageError(`${src.name}: ${e.message.split('\n')[0]}`);
      }
      let v;
      try {
        v = doc.toJS({ maxAliasCount: 100 });
      } catch (e) {
        if (e instanceof RangeError) throw new UsageError(`${src.name}: document ${i + 1} is nested too deeply (more than ${MAX_DEPTH} levels)`);
        throw e;
      }
      if (v === null || v === undefined) continue;
      const deep = tooDeep(v, MAX_DEPTH);
      if (deep) throw new UsageError(`${src.name}: document ${i + 1}: ${deep}: nested more than ${MAX_DEPTH} levels deep`);
      docs.push(v);
    }
    return { name: src.name, docs };
  });
}

/** Kubernetes-shaped objects (a `kind: List` is unpacked); a list of plain policy rules is pointed to `policy import`. */
export function readResources(target: string): unknown[] {
  const out: unknown[] = [];
  for (const src of readDocuments(target)) {
    src.docs.forEach((v: any, i) => {
      if (isRuleList(v) || isBareRule(v)) {
        throw new UsageError(
          `${src.name}: document ${i + 1} is a list of plain policy rules (the reference system's \`policy import\` format), not Kubernetes objects; import it with \`membrane policy import -f ${src.name === 'stdin' ? '- --name NAME' : src.name}\``,
        );
      }
      if (typeof v === 'object' && !Array.isArray(v) && v.kind === 'List' && Array.isArray(v.items)) out.push(...v.items);
      else out.push(v);
    });
  }
  return out;
}

/** Policy objects for `policy import`: objects as they are, each file's plain rules as one CiliumClusterwideNetworkPolicy. */
export function readPolicyImport(target: string, name?: string): unknown[] {
  const out: unknown[] = [];
  for (const src of readDocuments(target)) {
    const rules: unknown[] = [];
    for (const v of src.docs as any[]) {
      if (isRuleList(v)) rules.push(...v);
      else if (isBareRule(v)) rules.push(v);
      else if (typeof v === 'object' && !Array.isArray(v) && v?.kind === 'List' && Array.isArray(v.items)) out.push(...v.items);
      else out.push(v);
    }
    if (rules.length) {
      try {
        out.push(rulesToPolicy(rules, { name, fileName: src.name === 'stdin' ? undefined : src.name }));
      } catch (e) {
        if (e instanceof RuleImportError) throw new UsageError(`policy import: ${src.name}: ${e.message}`);
        throw e;
      }
    }
  }
  return out;
}

function appliedLines(results: { kind: string; namespace?: string; name: string; action: string }[]): string {
  return results.map((r) => `${r.kind.toLowerCase()}/${r.name}${r.namespace ? ` (namespace ${r.namespace})` : ''} ${r.action}`).join('\n') + '\n';
}

function parseDport(v: string | true | undefined): { dport: number; protocol: string } {
  if (typeof v !== 'string') throw new UsageError('policy trace: --dport N[/PROTO] is required');
  const [p, proto] = v.split('/');
  const dport = Number(p);
  if (!Number.isInteger(dport) || dport < 0 || dport > 65535) throw new UsageError(`--dport: "${v}" is not a port number`);
  return { dport, protocol: (proto ?? 'TCP').toUpperCase() };
}

/** Observe filters in command-line order -> the /v1/flows query string. */
export function flowQuery(o: Opts): URLSearchParams {
  const q = new URLSearchParams();
  const filterNames = new Set([
    ...['pod', 'label', 'ip', 'identity', 'port', 'namespace'].flatMap((f) => [f, `from-${f}`, `to-${f}`]),
    'verdict',
    'drop-reason',
    'type',
    'protocol',
    'tcp-flags',
    'traffic-direction',
    'node-name',
    'http-method',
    'http-path',
    'http-status',
    'dns-query',
  ]);
  let negate = false;
  for (const [name, v] of o.flagList) {
    if (name === 'not') {
      negate = true;
      continue;
    }
    if (!filterNames.has(name) || v === true) continue;
    const key = name.replace(/-/g, '_');
    q.append(negate ? `not.${key}` : key, v);
    negate = false;
  }
  if (negate) throw new UsageError('--not must be followed by a filter');
  for (const k of ['since', 'until']) if (typeof o.flags[k] === 'string') q.set(k, o.flags[k] as string);
  if (o.flags.follow) q.set('follow', '1');
  for (const [name, v] of o.flagList) if (name === 'node' && typeof v === 'string') q.append('node', v);
  if (o.flags['all-nodes']) q.set('all_nodes', '1');
  const last = typeof o.flags.last === 'string' ? o.flags.last : o.flags.follow || o.flags.since ? undefined : '20';
  if (last !== undefined) q.set('last', last);
  return q;
}

/** "1,234/65,536 stored (1.2 MiB of 64.0 MiB), 5,678 seen, 0 lost; 2 stream clients, 150 dropped for slow clients" */
function flowsStatus(m: any): string {
  const n = (x: number) => Number(x ?? 0).toLocaleString('en-US');
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const streams = Object.entries(m.streams ?? {}).filter(([k]) => k !== 'clients') as [string, { dropped: number; disconnected: number }][];
  const dropped = streams.reduce((t, [, v]) => t + v.dropped, 0);
  const disc = streams.reduce((t, [, v]) => t + v.disconnected, 0);
  return (
    `${n(m.flowsStored)}/${n(m.flowsBuffer)} stored (${mib(m.memory.bytes)} of ${mib(m.memory.limitBytes)}), ${n(m.flowsSeen)} seen, ${n(m.lostEvents)} lost; ` +
    `${n(m.streams?.clients)} stream clients, ${n(dropped)} dropped for slow clients${disc ? `, ${n(disc)} disconnected` : ''}`
  );
}

/** Stream lines until the stream ends or the process is interrupted. */
async function streamUntilDone(c: AgentClient, path: string, onLine: (l: string) => void): Promise<void> {
  const s = c.stream(path, onLine);
  const stop = () => s.close();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    await s.done;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

const commands: Record<string, Handler> = {
  async monitor(c, o) {
    const q = new URLSearchParams();
    for (const [name, v] of o.flagList) if (name === 'type' && typeof v === 'string') q.append('type', v);
    if (typeof o.flags['related-to'] === 'string') q.set('related_to', o.flags['related-to'] as string);
    if (o.output !== 'json') process.stdout.write('Listening for events... Press Ctrl-C to quit\n');
    await streamUntilDone(c, `/v1/monitor?${q}`, (line) => {
      const rec = JSON.parse(line);
      if (rec.lost_events && o.output !== 'json') process.stdout.write(lostLine(rec, 'events') + '\n');
      else process.stdout.write((o.output === 'json' ? JSON.stringify(rec) : monitorLine(rec, !!o.flags.verbose)) + '\n');
    });
    return '';
  },
  async observe(c, o) {
    const q = flowQuery(o);
    const fmt = o.outputGiven ? o.output : 'compact';
    const manyNodes = q.has('node') || q.has('all_nodes');
    if (fmt === 'table' && !o.flags.follow) {
      const text = await new Promise<string>((resolve, reject) => {
        const rows: string[][] = [];
        const s = c.stream(`/v1/flows?${q}`, (l) => {
          const f = JSON.parse(l);
          if (f.node_error) process.stderr.write(`membrane: node ${f.node_error.node}: ${f.node_error.error}\n`);
          else if (f.lost_events) process.stdout.write(lostLine(f, 'flows') + '\n');
          else rows.push(flowRow(f));
        });
        s.done.then(() => resolve(table(['TIME', 'SOURCE', 'DESTINATION', 'TYPE', 'VERDICT', 'SUMMARY'], rows)), reject);
      });
      return text;
    }
    await streamUntilDone(c, `/v1/flows?${q}`, (line) => {
      const f = JSON.parse(line);
      if (f.node_error) process.stderr.write(`membrane: node ${f.node_error.node}: ${f.node_error.error}\n`);
      else if (f.lost_events && fmt !== 'json') process.stdout.write(lostLine(f, 'flows') + '\n');
      else process.stdout.write((fmt === 'json' ? line : fmt === 'table' ? flowRow(f).join('\t') : `${manyNodes ? `${f.node_name}: ` : ''}${flowCompact(f)}`) + '\n');
    });
    return '';
  },
  async ui(c, o) {
    return (await import('../ui/server')).runUi(o.socket, o.flags.port, process.stdout, !!o.flags['all-nodes']);
  },
  async metrics(c) {
    return await new Promise<string>((resolve, reject) => {
      const lines: string[] = [];
      const s = c.stream('/v1/metrics', (l) => lines.push(l));
      s.done.then(() => resolve(lines.join('\n') + '\n'), reject);
    });
  },
  async apply(c, o) {
    if (typeof o.flags.filename !== 'string') throw new UsageError('apply: -f FILE|DIR|- is required');
    const objects = readResources(o.flags.filename);
    const r: any = await c.request('POST', '/v1/apply', { objects });
    if (o.output === 'json') return json(r);
    return appliedLines(r.results) + `policy revision ${r.policyRevision}\n`;
  },
  async get(c, o, rest) {
    const [kind, name] = rest;
    if (!kind) throw new UsageError('get: which kind? (ns, pod, netpol, cnp, ccnp)');
    const ns = typeof o.flags.namespace === 'string' ? o.flags.namespace : undefined;
    const q = new URLSearchParams();
    if (ns) q.set('namespace', ns);
    if (name) q.set('name', name);
    const items: any[] = await c.get(`/v1/resources/${encodeURIComponent(kind)}?${q}`);
    if (o.output === 'json') return json(name ? items[0] : { apiVersion: 'v1', kind: 'List', items });
    if (o.output === 'yaml') return YAML.stringify(name ? items[0] : { apiVersion: 'v1', kind: 'List', items });
    const namespaced = items.some((i) => i.metadata.namespace);
    const gw = gatewayColumns(items[0]?.kind);
    if (gw) return table([...(namespaced ? ['NAMESPACE'] : []), 'NAME', ...gw.head], items.map((i) => [...(namespaced ? [i.metadata.namespace] : []), i.metadata.name, ...gw.row(i)]));
    // Policies in cluster mode carry the operator's status: its conditions as columns.
    const withStatus = items.some((i) => Array.isArray(i.status?.conditions));
    const cond = (i: any, type: string) => {
      const c = (i.status?.conditions ?? []).find((x: any) => x.type === type);
      if (!c) return '-';
      return type === 'Enforced' && i.status.nodes ? `${c.status} (${i.status.nodes.enforcing}/${i.status.nodes.total})` : c.status;
    };
    return table(
      [...(namespaced ? ['NAMESPACE'] : []), 'NAME', 'LABELS', ...(withStatus ? ['VALID', 'ENFORCED'] : []), 'CREATED'],
      items.map((i) => [
        ...(namespaced ? [i.metadata.namespace] : []),
        i.metadata.name,
        Object.entries(i.metadata.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(',') || '<none>',
        ...(withStatus ? [cond(i, 'Valid'), cond(i, 'Enforced')] : []),
        i.metadata.creationTimestamp,
      ]),
    );
  },
  async delete(c, o, rest) {
    let refs: { kind: string; namespace?: string; name: string }[];
    if (typeof o.flags.filename === 'string') {
      refs = readResources(o.flags.filename).map((x: any, i) => {
        if (!x?.kind || !x?.metadata?.name) throw new UsageError(`delete: object ${i + 1} has no kind or metadata.name`);
        return { kind: x.kind, namespace: x.metadata.namespace, name: x.metadata.name };
      });
    } else {
      const [kind, name] = rest;
      if (!kind || !name) throw new UsageError('delete: use -f FILE or KIND NAME');
      refs = [{ kind, name, namespace: typeof o.flags.namespace === 'string' ? o.flags.namespace : undefined }];
    }
    const r: any = await c.request('POST', '/v1/delete', { refs });
    if (o.output === 'json') return json(r);
    return appliedLines(r.results);
  },
  async 'policy get'(c, o) {
    const r: any = await c.get('/v1/policy');
    if (o.output === 'json') return json(r);
    if (o.output === 'yaml') return YAML.stringify(r);
    return (
      `Revision: ${r.revision}\n` +
      table(['KIND', 'NAMESPACE', 'NAME'], r.policies.map((p: any) => [p.kind, p.metadata.namespace ?? '', p.metadata.name]))
    );
  },
  async 'policy import'(c, o) {
    if (typeof o.flags.filename !== 'string') throw new UsageError('policy import: -f FILE|DIR|- is required');
    const name = typeof o.flags.name === 'string' ? o.flags.name : undefined;
    const r: any = await c.request('PUT', '/v1/policy', { objects: readPolicyImport(o.flags.filename, name) });
    if (o.output === 'json') return json(r);
    return appliedLines(r.results) + `Revision: ${r.policyRevision}\n`;
  },
  async 'policy delete'(c, o, rest) {
    let body: unknown;
    if (o.flags.all) body = { all: true };
    else {
      if (!rest[0]) throw new UsageError('policy delete: NAME or --all');
      const kind = typeof o.flags.kind === 'string' ? o.flags.kind : 'CiliumNetworkPolicy';
      body = { refs: [{ kind, name: rest[0], namespace: typeof o.flags.namespace === 'string' ? o.flags.namespace : undefined }] };
    }
    const r: any = await c.request('DELETE', '/v1/policy', body);
    if (o.output === 'json') return json(r);
    return appliedLines(r.results) + `Revision: ${r.policyRevision}\n`;
  },
  async 'policy wait'(c, o, rest) {
    const rev = Number(rest[0]);
    if (!rest[0] || !Number.isInteger(rev)) throw new UsageError('policy wait: REVISION (a number) is required');
    const timeout = typeof o.flags.timeout === 'string' ? o.flags.timeout : '30';
    const r: any = await c.get(`/v1/policy/wait/${rev}?timeout=${encodeURIComponent(timeout)}`);
    return o.output === 'json' ? json(r) : `every endpoint enforces policy revision ${rev} or later\n`;
  },
  async 'policy trace'(c, o) {
    if (typeof o.flags.src !== 'string' || typeof o.flags.dst !== 'string') throw new UsageError('policy trace: --src and --dst are required');
    const { dport, protocol } = parseDport(o.flags.dport);
    const method = o.flags['http-method'];
    const hpath = o.flags['http-path'];
    if ((method === undefined) !== (hpath === undefined)) throw new UsageError('policy trace: --http-method and --http-path go together');
    const headers = o.flagList.filter(([k]) => k === 'http-header').map(([, v]) => String(v));
    const httpReq =
      typeof method === 'string' && typeof hpath === 'string'
        ? { method, path: hpath, ...(typeof o.flags['http-host'] === 'string' ? { host: o.flags['http-host'] } : {}), ...(headers.length ? { headers } : {}) }
        : undefined;
    const r: any = await c.request('POST', '/v1/policy/trace', { src: o.flags.src, dst: o.flags.dst, dport, protocol, ...(httpReq ? { http: httpReq } : {}) });
    if (o.output === 'json') return json(r);
    const side = (name: string, s: any) => {
      let out = `${name}: ${s.verdict}${s.dropReason ? ` (drop reason ${s.dropReason})` : ''}, enforcement ${s.enforced ? 'on' : 'off'}\n  ${s.reason}\n`;
      if (s.redirect) {
        const rules = s.redirect.rules.map((h: any) => `${[h.method, h.path, h.host].filter(Boolean).join(' ') || '(any request)'}${h.headers?.length ? ` headers ${h.headers.join(', ')}` : ''} [${h.policy}]`);
        const kind = s.redirect.dns ? 'DNS' : 'HTTP';
        const shown = s.redirect.dns ? s.redirect.dns.map((d: any) => `${d.matchName !== undefined ? `matchName ${d.matchName}` : `matchPattern ${d.matchPattern}`} [${d.policy}]`) : rules;
        out += `  redirected to the ${s.redirect.dns ? 'DNS' : 'L7'} proxy (listener ${s.redirect.listener}, port ${s.redirect.proxyPort}); ${kind} rules: ${shown.join('; ') || 'none'}${s.redirect.allowAll.length ? `; every ${s.redirect.dns ? 'query' : 'request'} allowed by ${s.redirect.allowAll.join(', ')}` : ''}\n`;
      }
      if (s.l7) out += `  HTTP ${httpReq?.method} ${httpReq?.path}: ${s.l7.verdict}${s.l7.verdict === 'DENIED' ? ' (403)' : ''}${s.l7.by.length ? ` by ${s.l7.by.join(', ')}` : ''}\n`;
      return out;
    };
    return (
      `Tracing ${r.source.describe} (identity ${r.source.identity}) -> ${r.destination.describe} (identity ${r.destination.identity}) port ${r.port}/${r.protocol}, policy revision ${r.policyRevision}\n` +
      side('Egress from source', r.egress) +
      side('Ingress to destination', r.ingress) +
      `Final verdict: ${r.verdict}\n`
    );
  },
  async 'policy selectors'(c, o) {
    const r: any[] = await c.get('/v1/policy/selectors');
    if (o.output === 'json') return json(r);
    return table(['SELECTOR', 'USERS', 'IDENTITIES'], r.map((s) => [s.selector, s.users, s.identities.join(',')]));
  },
  async 'fqdn cache list'(c, o) {
    let r: any[] = await c.get('/v1/fqdn/cache');
    const { endpoint, matchname, matchpattern } = o.flags;
    if (endpoint !== undefined) {
      if (typeof endpoint !== 'string' || !/^\d+$/.test(endpoint)) throw new UsageError(`--endpoint: expected an endpoint id, got "${endpoint}"`);
      r = r.filter((e) => e.endpoints.includes(Number(endpoint)));
    }
    for (const [flag, v] of [['matchname', matchname], ['matchpattern', matchpattern]] as const) {
      if (v === undefined) continue;
      const bad = typeof v !== 'string' ? ['needs a value'] : flag === 'matchname' ? nameProblems(v) : patternProblems(v);
      if (bad.length) throw new UsageError(`--${flag}: "${v}" ${bad.join('; ')}`);
      const sel = flag === 'matchname' ? { matchName: v as string } : { matchPattern: v as string };
      r = r.filter((e) => selectorMatches(sel, e.name));
    }
    if (o.output === 'json') return json(r);
    return table(
      ['NAME', 'ADDRESS', 'IDENTITY', 'TTL', 'EXPIRES', 'ENDPOINTS', 'SELECTORS'],
      r.map((e) => [e.name, e.ip, e.identity, e.ttl, `${e.expires}${e.remaining < 0 ? ' (expired, in use)' : ` (${e.remaining}s)`}`, e.endpoints.join(','), e.selectors.join('; ')]),
    );
  },
  async 'service list'(c, o) {
    const r: any[] = await c.get('/v1/service');
    if (o.output === 'json') return json(r);
    return table(
      ['ID', 'FRONTEND', 'SERVICE', 'TYPE', 'BACKENDS'],
      r.map((f) => [f.id, f.frontend, `${f.service}${f.portName ? ` (${f.portName})` : ''}`, f.type + (f.algorithm === 'maglev' ? ' maglev' : ''), f.backends.map((b: any, i: number) => `${i + 1}) ${b.address} (${b.state})`).join(', ') || '(none)']),
    );
  },
  async 'service get'(c, o, rest) {
    return json(await c.get(`/v1/service/${needId(rest, 'service')}`));
  },
  async 'bpf lb list'(c, o) {
    const want = (['frontends', 'backends', 'revnat', 'maglev'] as const).filter((k) => o.flags[k]);
    const show = want.length ? want : (['frontends'] as const);
    const out: string[] = [];
    const svc: any = await c.get('/v1/map/mb_lb_services');
    const be: any = await c.get('/v1/map/mb_lb_backends');
    const backends = new Map<number, string>(be.entries.map((b: any) => [b.id, `${b.backend} (${b.state})`]));
    if (o.output === 'json') {
      const rev: any = await c.get('/v1/map/mb_lb_revnat');
      return json({ services: svc.entries, backends: be.entries, revnat: rev.entries });
    }
    for (const k of show) {
      if (k === 'frontends') {
        const masters = svc.entries.filter((e: any) => e.slot === 0);
        out.push(
          table(
            ['SERVICE ADDRESS', 'BACKEND ADDRESS (REVNAT_ID) (SLOT)'],
            masters.flatMap((m: any) => {
              const slots = svc.entries.filter((e: any) => e.frontend === m.frontend && e.slot > 0).sort((a: any, b: any) => a.slot - b.slot);
              const rows: string[][] = [[m.frontend, `0.0.0.0:0 (${m.revNatIndex}) (0) [${m.count} slots${m.flags & 4 ? ', maglev' : ''}${m.affinityTimeout ? `, affinity ${m.affinityTimeout}s` : ''}]`]];
              if (!(m.flags & 4)) for (const sl of slots) rows.push(['', `${backends.get(sl.backendId) ?? `backend ${sl.backendId}`} (${m.revNatIndex}) (${sl.slot})`]);
              return rows;
            }),
          ),
        );
      } else if (k === 'backends') {
        out.push(table(['ID', 'BACKEND', 'STATE'], be.entries.map((b: any) => [b.id, b.backend, b.state])));
      } else if (k === 'revnat') {
        const rev: any = await c.get('/v1/map/mb_lb_revnat');
        out.push(table(['ID', 'FRONTEND'], rev.entries.map((r: any) => [r.index, r.frontend])));
      } else if (k === 'maglev') {
        const masters = svc.entries.filter((e: any) => e.slot === 0 && e.flags & 4);
        for (const m of masters) {
          const slots = svc.entries.filter((e: any) => e.frontend === m.frontend && e.slot > 0).sort((a: any, b: any) => a.slot - b.slot);
          const counts = new Map<number, number>();
          for (const sl of slots) counts.set(sl.backendId, (counts.get(sl.backendId) ?? 0) + 1);
          out.push(`${m.frontend} (revnat ${m.revNatIndex}): ${slots.length} slots\n` + table(['BACKEND', 'SLOTS'], [...counts].map(([id, n]) => [backends.get(id) ?? String(id), n])) + `[${slots.map((sl: any) => sl.backendId).join(',')}]\n`);
        }
      }
    }
    return out.join('\n');
  },
  async 'bpf policy get'(c, o, rest) {
    const id = needId(rest, 'bpf policy');
    const r: any = await c.get(`/v1/endpoint/${id}/policy`);
    if (o.output === 'json') return json(r);
    return (
      `Endpoint ${r.endpoint} (identity ${r.identity}), policy revision ${r.revision}\n` +
      table(
        ['POLICY', 'DIRECTION', 'IDENTITY', 'LABELS', 'PORT/PROTO', 'PROXY PORT', 'PACKETS', 'BYTES'],
        r.entries.map((e: any) => [e.verdict, e.direction, e.identity, e.labels.join(' '), e.port === 'ANY' && e.protocol === 'ANY' ? 'ANY' : `${e.port}/${e.protocol}`, e.proxyPort || 'NONE', e.packets, e.bytes]),
      )
    );
  },
  async status(c, o) {
    const s: any = await c.get('/v1/status');
    if (o.output === 'json') return json(s);
    if (s.state === 'waiting-for-pod-cidr') {
      const ipam = s.cluster?.ipam ?? {};
      return (
        [
          `Node:          ${s.node}`,
          `Version:       ${s.version}`,
          `State:         waiting for its pod CIDR from the operator (cluster pool) since ${ipam.since ?? '?'}`,
          ...(ipam.error ? [`IPAM error:    ${ipam.error}`] : []),
          `Cluster:       ${s.cluster?.endpoints?.join(',') ?? '?'} (${s.cluster?.connected ? 'connected' : 'not connected'})`,
        ].join('\n') + '\n'
      );
    }
    const lines = [
      `Node:          ${s.node}`,
      `Version:       ${s.version}`,
      `Uptime:        ${s.uptimeSeconds}s`,
      `Pod CIDR:      ${s.podCidr} (router ${s.router})${s.podCidrSource === 'cluster-pool' ? ', allocated by the operator (cluster pool)' : ''}`,
      `Devices:       ${s.devices.host} / ${s.devices.net}`,
      `BPF root:      ${s.bpfRoot}`,
      `Endpoints:     ${s.endpoints.ready}/${s.endpoints.total} ready`,
      `Identities:    ${s.identities}`,
      `IPAM:          ${s.ipam.allocated} allocated`,
      `Maps:          ${s.maps.map((m: any) => `${m.map} ${m.desired} desired${m.pending ? `, ${m.pending} pending` : ''}${m.lastError ? ` (error: ${m.lastError})` : ''}`).join('; ')}`,
      `Endpoint ADD:  p50 ${s.endpointCreateMs.p50 ?? '-'} ms, p99 ${s.endpointCreateMs.p99 ?? '-'} ms (${s.endpointCreateMs.count} created)`,
    ];
    if (s.cluster?.mode === 'kvstore') {
      const c = s.cluster;
      lines.push(`Cluster:       ${c.nodes} nodes, ${c.connected ? 'connected' : `NOT connected${c.lastError ? ` (${c.lastError})` : ''}`} (${c.endpoints.join(',')}, prefix ${c.prefix})`);
      lines.push(`Operator:      ${c.operator ? `${c.operator.id} acts (since ${c.operator.since})` : 'none running (pod CIDRs from the pool, garbage collection and policy status wait for one)'}`);
    }
    if (s.monitor?.memory) lines.push(`Flows:         ${flowsStatus(s.monitor)}`);
    lines.push(`L7 proxy:      ${proxyLine(s.proxy)}`);
    for (const l of s.proxy?.listeners ?? []) lines.push(`  listener ${l.name} port ${l.port} ${l.state}${l.error ? ` (${l.error})` : ''}, ${l.connections} connections`);
    if (s.gateways) {
      lines.push(`Gateways:      ${s.gateways.gateways.length} (pool ${s.gateways.pool}, upstreams from ${s.gateways.ingressAddress})${s.gateways.errors?.length ? `; ${s.gateways.errors.join('; ')}` : ''}`);
      for (const g of s.gateways.gateways) lines.push(`  ${g.gateway} ${g.address} ports ${g.ports.join(',') || '-'}, routes ${g.routes.join(',') || '-'}`);
    }
    if (s.proxy?.dns) {
      const d = s.proxy.dns;
      lines.push(`DNS proxy:     ${d.queries} queries (${d.forwarded} forwarded, ${d.denied} refused, ${d.errors} errors), ${d.learnLate} answers released before their addresses were in the maps`);
    }
    if (s.fqdn) {
      const f = s.fqdn;
      lines.push(`FQDN cache:    ${f.addresses} addresses (learned ${f.learned}, expired ${f.expired}, kept in use ${f.keptInUse}, limit hits ${f.limitPerName} per name / ${f.limitPerEndpoint} per endpoint); answer to maps p50 ${f.learnMs?.p50 ?? '-'} ms, p99 ${f.learnMs?.p99 ?? '-'} ms`);
    }
    for (const nr of s.endpoints.notReady) lines.push(`  endpoint ${nr.id} ${nr.state}: ${(nr.problems ?? []).join('; ')}`);
    return lines.join('\n') + '\n';
  },
  async 'endpoint list'(c, o) {
    const eps: any[] = await c.get('/v1/endpoint');
    if (o.output === 'json') return json(eps);
    return table(
      ['ENDPOINT', 'POLICY (ingress)', 'POLICY (egress)', 'REVISION', 'IDENTITY', 'IPv4', 'STATE', 'INTERFACE', 'POD'],
      eps.map((e) => [
        e.id,
        e.policy?.ingress ? 'Enabled' : 'Disabled',
        e.policy?.egress ? 'Enabled' : 'Disabled',
        e.policy?.revision ?? '',
        e.identity,
        e.ipv4,
        e.state,
        `${e.hostIfname}/${e.ifname}`,
        `${e.namespace}/${e.podName ?? ''}`,
      ]),
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
  async 'node list'(c, o) {
    const nodes: any[] = await c.get('/v1/node');
    if (o.output === 'json') return json(nodes);
    return table(
      ['NAME', 'ADDRESSES', 'POD CIDRS', 'IDENTITIES', 'ALIVE', 'HEALTH'],
      nodes.map((n) => [
        `${n.name}${n.self ? ' (this node)' : ''}`,
        n.addresses.map((a: any) => `${a.type}:${a.ip}`).join(','),
        n.podCIDRs.join(','),
        n.identities ?? '?',
        n.alive ? 'yes' : `no (gone ${n.lastSeen})`,
        n.health,
      ]),
    );
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
  async 'bpf ct flush'(c, o) {
    const r: any = await c.request('DELETE', `/v1/map/mb_ct${o.flags.services ? '?services=1' : ''}`);
    return o.output === 'json' ? json(r) : `deleted ${r.deleted} conntrack entries\n`;
  },
  async 'bpf ct list'(c, o) {
    const r: any = await c.get('/v1/map/mb_ct');
    if (o.output === 'json') return json(r.entries);
    return table(
      ['SOURCE', 'DESTINATION', 'PROTO', 'FLAGS', 'LIFETIME', 'TX', 'RX', 'SRC IDENTITY', 'SERVICE'],
      r.entries.map((e: any) => [e.source, e.destination, e.nexthdr, ['out', 'in', 'related'][e.flags & 3] + (e.service ? ' service' : ''), e.lifetime, e.txPackets, e.rxPackets, e.srcIdentity, e.service ? `backend ${e.backendId} revnat ${e.revNatIndex ?? 0}` : e.revNatIndex ? `revnat ${e.revNatIndex}` : '']),
    );
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
